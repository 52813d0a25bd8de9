//! The replica contract against the Postgres replica.
//!
//! Needs a Postgres at `RIDES_TEST_POSTGRES_URL` (a database the tests may create schemas
//! in), e.g. `RIDES_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo test -p
//! adapters --features postgres --test contract_replica_postgres` (`scripts/services.sh`
//! starts or finds one). Every `fresh()` creates its own schema
//! (`rides_test_replica_<secs>_<random>`); the factory drops its schemas when the test ends,
//! and the first factory of a run drops those older than an hour that crashed runs left.

use std::sync::{Arc, Mutex};

use adapters::postgres::PostgresReplica;
use ports::contract::{ReplicaFactory, async_trait};
use ports::{Replica, ReplicaError};

/// The variable that names the test Postgres.
const URL_VAR: &str = "RIDES_TEST_POSTGRES_URL";
/// The prefix of the schemas these tests create.
const SCHEMA_PREFIX: &str = "rides_test_replica_";

fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!(
            "no Postgres for the replica tests: set {URL_VAR} (e.g. run \
             `eval \"$(scripts/services.sh)\"`, or use scripts/test.sh)"
        )
    })
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Replicas, each in a new schema, dropped with the factory.
#[derive(Default)]
struct PgReplicas {
    schemas: Mutex<Vec<String>>,
}

/// The schema named by a replica's description (`…?schema=<name>`).
fn schema_of(replica: &Arc<dyn Replica>) -> String {
    let describe = replica.describe();
    describe
        .rsplit("schema=")
        .next()
        .unwrap_or_else(|| panic!("describe() must name the schema: {describe}"))
        .to_owned()
}

#[async_trait]
impl ReplicaFactory for PgReplicas {
    async fn fresh(&self) -> Arc<dyn Replica> {
        static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
            sweep_old_schemas().await;
        }
        let random = uuid::Uuid::new_v4().simple().to_string();
        let schema = format!("{SCHEMA_PREFIX}{}_{}", now_secs(), &random[..12]);
        self.schemas
            .lock()
            .expect("the schema list is never poisoned")
            .push(schema.clone());
        let replica = PostgresReplica::connect(&url(), Some(&schema))
            .await
            .unwrap_or_else(|e| panic!("connect to a fresh schema ({URL_VAR}): {e}"));
        Arc::new(replica)
    }

    async fn reopen(&self, replica: Arc<dyn Replica>) -> Option<Arc<dyn Replica>> {
        let schema = schema_of(&replica);
        drop(replica);
        let replica = PostgresReplica::connect(&url(), Some(&schema))
            .await
            .unwrap_or_else(|e| panic!("reconnect to {schema}: {e}"));
        Some(Arc::new(replica))
    }
}

impl Drop for PgReplicas {
    fn drop(&mut self) {
        let schemas = std::mem::take(&mut *self.schemas.lock().unwrap_or_else(|e| e.into_inner()));
        if schemas.is_empty() {
            return;
        }
        // Drop runs inside the test's runtime: clean up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(drop_schemas(schemas));
        })
        .join();
    }
}

/// Drops `schemas` (best effort: a leftover schema is swept by a later run).
async fn drop_schemas(schemas: Vec<String>) {
    use sqlx::Connection;
    let Ok(mut conn) = sqlx::PgConnection::connect(&url()).await else {
        return;
    };
    for schema in schemas {
        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await;
    }
    let _ = conn.close().await;
}

/// Drops the schemas of earlier runs that are older than an hour (crashed runs leave them).
async fn sweep_old_schemas() {
    use sqlx::Connection;
    let Ok(mut conn) = sqlx::PgConnection::connect(&url()).await else {
        return;
    };
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'rides_test_replica_%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    let _ = conn.close().await;
    let old: Vec<String> = names
        .into_iter()
        .filter(|name| {
            name.strip_prefix(SCHEMA_PREFIX)
                .and_then(|rest| rest.split('_').next())
                .and_then(|secs| secs.parse::<u64>().ok())
                .is_some_and(|created| created + 3600 < now_secs())
        })
        .collect();
    drop_schemas(old).await;
}

ports::replica_contract_tests!(PgReplicas::default());

/// Adapter-specific: an unreachable server is a retryable error that never shows the
/// password; a bad schema name is a permanent one.
#[tokio::test]
async fn connect_errors_are_clear_and_hide_the_password() {
    let e = PostgresReplica::connect("postgres://rides:sup3rs3cret@127.0.0.1:1/nowhere", None)
        .await
        .expect_err("nothing listens on port 1");
    let text = e.to_string();
    assert!(
        e.retryable(),
        "an unreachable server is Unavailable: {text}"
    );
    assert!(!text.contains("sup3rs3cret"), "password leaked: {text}");

    let e = PostgresReplica::connect(&url(), Some("no; DROP TABLE rides"))
        .await
        .expect_err("a schema name that is not a plain identifier");
    assert!(matches!(e, ReplicaError::Other(_)), "{e}");
}

/// Adapter-specific: the description names the schema and never a password.
#[tokio::test]
async fn describe_names_the_schema() {
    let factory = PgReplicas::default();
    let replica = factory.fresh().await;
    let schema = schema_of(&replica);
    assert!(schema.starts_with(SCHEMA_PREFIX), "{}", replica.describe());
    assert!(replica.describe().starts_with("postgres://"));
}
