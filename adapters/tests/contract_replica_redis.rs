//! The replica contract against the Redis replica.
//!
//! Needs a Redis at `RIDES_TEST_REDIS_URL`, e.g. `RIDES_TEST_REDIS_URL=redis://127.0.0.1:6379
//! cargo test -p adapters --features redis --test contract_replica_redis`
//! (`scripts/services.sh` starts or finds one). Every replica lives under a fresh key prefix
//! `rides-test-replica-<uuid>`; the factory deletes its keys when the test ends.

use std::sync::{Arc, Mutex};

use adapters::redis::RedisReplica;
use ports::Replica;
use ports::contract::{ReplicaFactory, async_trait};

/// The variable that names the test Redis.
const URL_VAR: &str = "RIDES_TEST_REDIS_URL";

fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!(
            "no Redis for the replica tests: set {URL_VAR} (e.g. run \
             `eval \"$(scripts/services.sh)\"`, or use scripts/test.sh)"
        )
    })
}

/// Replicas under fresh key prefixes, whose keys are deleted with the factory.
#[derive(Default)]
struct RedisReplicas {
    prefixes: Mutex<Vec<String>>,
}

/// The prefix named by a replica's description (`redis://host:port/<prefix>`).
fn prefix_of(replica: &Arc<dyn Replica>) -> String {
    let described = replica.describe();
    described
        .rsplit('/')
        .next()
        .unwrap_or_else(|| panic!("describe() must end with /<prefix>: {described}"))
        .to_owned()
}

#[async_trait]
impl ReplicaFactory for RedisReplicas {
    async fn fresh(&self) -> Arc<dyn Replica> {
        let prefix = format!("rides-test-replica-{}", uuid::Uuid::new_v4().simple());
        self.prefixes
            .lock()
            .expect("the prefix list is never poisoned")
            .push(prefix.clone());
        let replica = RedisReplica::connect(&url(), &prefix)
            .await
            .unwrap_or_else(|e| panic!("connect to the test Redis ({URL_VAR}): {e}"));
        Arc::new(replica)
    }

    async fn reopen(&self, replica: Arc<dyn Replica>) -> Option<Arc<dyn Replica>> {
        let prefix = prefix_of(&replica);
        drop(replica);
        let replica = RedisReplica::connect(&url(), &prefix)
            .await
            .unwrap_or_else(|e| panic!("reconnect to {prefix}: {e}"));
        Some(Arc::new(replica))
    }
}

/// Every key under `prefix:` (SCAN, never KEYS).
fn keys_under(conn: &mut redis::Connection, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = 0_u64;
    loop {
        let Ok((next, batch)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query(conn)
        else {
            return keys;
        };
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

impl Drop for RedisReplicas {
    fn drop(&mut self) {
        let prefixes =
            std::mem::take(&mut *self.prefixes.lock().unwrap_or_else(|e| e.into_inner()));
        // Best effort: a leftover key only costs a little memory on the test server.
        let Ok(client) = redis::Client::open(url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        for prefix in prefixes {
            let keys = keys_under(&mut conn, &prefix);
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut conn);
            }
        }
    }
}

ports::replica_contract_tests!(RedisReplicas::default());

/// Adapter-specific: the layout the module documents (a hash per ride, a sorted set per user
/// and one of every id, scored by id), which other readers of the Redis may rely on; a
/// deleted ride leaves no key behind, and the factory's cleanup finds every key.
#[tokio::test]
async fn the_documented_layout() {
    let factory = RedisReplicas::default();
    let replica = factory.fresh().await;
    let prefix = prefix_of(&replica);
    let mut ride = ports::contract::fixtures::ride_row(42, 7);
    ride.charge_id = Some("ch_layout".to_owned());
    replica
        .upsert(std::slice::from_ref(&ride))
        .await
        .expect("upsert");
    let client = redis::Client::open(url()).expect("client");
    let mut conn = client.get_connection().expect("connect");
    let hash: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}:ride:42"))
        .query(&mut conn)
        .expect("HGETALL");
    assert_eq!(hash.get("user_id").map(String::as_str), Some("7"));
    assert_eq!(hash.get("charge_id").map(String::as_str), Some("ch_layout"));
    assert_eq!(
        hash.get("origin_lon").and_then(|v| v.parse::<f64>().ok()),
        Some(ride.params.origin_lon())
    );
    let mine: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(format!("{prefix}:user:7:rides"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut conn)
        .expect("ZRANGE");
    assert_eq!(mine, vec![("42".to_owned(), 42.0)]);
    let all: u64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}:rides"))
        .query(&mut conn)
        .expect("ZCARD");
    assert_eq!(all, 1);
    let mut keys = keys_under(&mut conn, &prefix);
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("{prefix}:ride:42"),
            format!("{prefix}:rides"),
            format!("{prefix}:user:7:rides"),
        ]
    );

    replica.delete(&[42]).await.expect("delete");
    assert_eq!(
        keys_under(&mut conn, &prefix),
        Vec::<String>::new(),
        "a deleted ride leaves no key (empty sorted sets disappear)"
    );
}

/// Adapter-specific: an id a sorted-set score cannot hold exactly is refused, not rounded.
#[tokio::test]
async fn ids_beyond_2_pow_53_are_refused() {
    let factory = RedisReplicas::default();
    let replica = factory.fresh().await;
    let ride = ports::contract::fixtures::ride_row((1 << 53) + 1, 1);
    let e = replica.upsert(&[ride]).await.expect_err("refused");
    assert!(!e.retryable(), "{e}");
    assert_eq!(replica.count().await.expect("count"), 0);
}
