//! Where the integration suites get their services.
//!
//! 1. `RIDES_TEST_POSTGRES_URL` / `RIDES_TEST_REDIS_URL` when set (CI and machines without
//!    Docker: `scripts/test.sh` exports them for the services it starts or finds).
//! 2. Otherwise a container started once per test binary with testcontainers (needs Docker).
//! 3. With neither, the test fails with a message that says how to provide them.
//!
//! Every test then isolates itself: its own Postgres schema, its own Redis key prefix.

#![allow(dead_code, unreachable_pub)]

use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::redis::{REDIS_PORT, Redis};
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};
use tokio::sync::OnceCell;

static PG: OnceCell<(String, Option<ContainerAsync<Postgres>>)> = OnceCell::const_new();
static REDIS: OnceCell<(String, Option<ContainerAsync<Redis>>)> = OnceCell::const_new();

fn how_to(what: &str, var: &str, err: &dyn std::fmt::Display) -> String {
    format!(
        "no {what} for the integration tests: set {var} (e.g. run `eval \"$(scripts/services.sh)\"`, \
         which starts or reuses local services, or use scripts/test.sh), or make a Docker engine \
         available for testcontainers (it said: {err})"
    )
}

/// A Postgres URL (a database the tests may create schemas in).
pub async fn postgres_url() -> String {
    PG.get_or_init(|| async {
        if let Ok(url) = std::env::var("RIDES_TEST_POSTGRES_URL") {
            return (url, None);
        }
        match Postgres::default().with_tag("15-alpine").start().await {
            Ok(c) => {
                let port = c
                    .get_host_port_ipv4(5432)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                (
                    format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres"),
                    Some(c),
                )
            }
            Err(e) => panic!("{}", how_to("Postgres", "RIDES_TEST_POSTGRES_URL", &e)),
        }
    })
    .await
    .0
    .clone()
}

/// A Redis URL (tests use their own key prefixes).
pub async fn redis_url() -> String {
    REDIS
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("RIDES_TEST_REDIS_URL") {
                return (url, None);
            }
            match Redis::default().with_tag("7.2").start().await {
                Ok(c) => {
                    let port = c
                        .get_host_port_ipv4(REDIS_PORT)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    (format!("redis://127.0.0.1:{port}"), Some(c))
                }
                Err(e) => panic!("{}", how_to("Redis", "RIDES_TEST_REDIS_URL", &e)),
            }
        })
        .await
        .0
        .clone()
}

/// A unique, SQL-safe name for a test's schema, stream or key prefix.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

static KAFKA: OnceCell<(
    String,
    Option<ContainerAsync<testcontainers_modules::kafka::apache::Kafka>>,
)> = OnceCell::const_new();

/// Kafka bootstrap servers (`host:port[,host:port]`); tests use their own topics.
pub async fn kafka_brokers() -> String {
    use testcontainers_modules::kafka::apache;
    KAFKA
        .get_or_init(|| async {
            if let Ok(brokers) = std::env::var("RIDES_TEST_KAFKA_BROKERS") {
                return (brokers, None);
            }
            match apache::Kafka::default().start().await {
                Ok(c) => {
                    let port = c
                        .get_host_port_ipv4(apache::KAFKA_PORT)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    (format!("127.0.0.1:{port}"), Some(c))
                }
                Err(e) => panic!(
                    "{}",
                    how_to(
                        "Kafka broker",
                        "RIDES_TEST_KAFKA_BROKERS (scripts/services.sh starts tansu)",
                        &e
                    )
                ),
            }
        })
        .await
        .0
        .clone()
}

/// A database of its own on the test Postgres server, dropped by [`FreshDb::drop_now`].
pub struct FreshDb {
    /// Its URL.
    pub url: String,
    admin: String,
    name: String,
}

/// Replaces the database name of a Postgres URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

impl FreshDb {
    /// Creates `rides_it_<uuid>` on the test server.
    pub async fn create() -> Self {
        use sqlx::Connection;
        let admin = postgres_url().await;
        let name = unique("rides_it");
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to the test Postgres");
        // `name` is generated here from a UUID: safe to splice.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        Self {
            url: with_database(&admin, &name),
            admin,
            name,
        }
    }

    /// Drops the database (connections still open to it are terminated).
    pub async fn drop_now(self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await;
        }
    }
}
