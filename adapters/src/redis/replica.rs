//! The replica ([`ports::Replica`]) on Redis: a hash per ride and sorted sets that serve
//! "my rides" and the verification scan.
//!
//! # Layout (`P` is the prefix given to [`RedisReplica::connect`])
//!
//! | key                      | type       | content                                       |
//! |--------------------------|------------|-----------------------------------------------|
//! | `P:ride:{id}`            | hash       | the ride's fields (below)                     |
//! | `P:user:{user_id}:rides` | sorted set | the user's ride ids, scored by id             |
//! | `P:rides`                | sorted set | every ride id, scored by id (page, count)     |
//!
//! Hash fields: `id`, `user_id`, `idempotency_key_id` (absent when `None`), `origin_lat`,
//! `origin_lon`, `target_lat`, `target_lon`, `distance_mm`, `charge_id` (absent when
//! `None`), `created_at_ms`. Numbers are decimal text; coordinates are Rust's shortest text
//! that parses back to the same `f64` (`37.760634058469556`, `5e-324`), so they round-trip
//! bit for bit.
//!
//! Scores are ids, not creation times, so "newest first" is the store's order (decreasing
//! ids) and ties cannot happen. A score is an `f64`: ids beyond ±2^53 are refused.
//!
//! # Atomicity and round trips
//!
//! Every call is ONE Lua script (`EVALSHA`, loaded on first use): a ride's hash, its user's
//! set and the set of all ids change together, and a batch of [`SCRIPT_RIDES`] rides costs
//! one round trip. An upsert replaces the hash whole (`DEL` + `HSET`, so a field that became
//! `None` disappears) and moves the id to the new user's set if the owner changed. The
//! scripts compute the per-ride keys from the prefix, which a standalone Redis (or one
//! cluster slot, with a `{hash tag}` prefix) allows.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use domain::RideParams;
use ports::{Replica, ReplicaError, RideRow};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::error::replica_error;
use super::{COMMAND_TIMEOUT, describe_addr};

/// Rides (or ids) per script call: bounds the time one call blocks the server.
const SCRIPT_RIDES: usize = 1_000;

/// The largest id magnitude a score holds exactly.
const MAX_ID: i64 = 1 << 53;

/// `KEYS[1]` the set of all ids; `ARGV[1]` the prefix, then per ride: id, user id, the
/// number `n` of hash arguments, and `n` field/value arguments.
const UPSERT_SCRIPT: &str = r"
local prefix = ARGV[1]
local i = 2
while i <= #ARGV do
  local id, user, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local key = prefix .. ':ride:' .. id
  local old = redis.call('HGET', key, 'user_id')
  if old and old ~= user then
    redis.call('ZREM', prefix .. ':user:' .. old .. ':rides', id)
  end
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(ARGV, i + 3, i + 2 + n))
  redis.call('ZADD', prefix .. ':user:' .. user .. ':rides', id, id)
  redis.call('ZADD', KEYS[1], id, id)
  i = i + 3 + n
end
return 0
";

/// `KEYS[1]` the set of all ids; `ARGV[1]` the prefix, then the ids.
const DELETE_SCRIPT: &str = r"
local prefix = ARGV[1]
for i = 2, #ARGV do
  local id = ARGV[i]
  local key = prefix .. ':ride:' .. id
  local user = redis.call('HGET', key, 'user_id')
  if user then
    redis.call('ZREM', prefix .. ':user:' .. user .. ':rides', id)
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], id)
end
return 0
";

/// `KEYS[1]` a sorted set of ids; `ARGV[1]` the prefix, `ARGV[2]` `asc` or `desc`, `ARGV[3]`
/// and `ARGV[4]` the score bounds in that direction, `ARGV[5]` the limit. Returns one array
/// per ride: its id, then its hash as field/value pairs (nothing more when the hash is
/// missing, which the caller reports).
const RANGE_SCRIPT: &str = r"
local cmd = 'ZRANGEBYSCORE'
if ARGV[2] == 'desc' then cmd = 'ZREVRANGEBYSCORE' end
local ids = redis.call(cmd, KEYS[1], ARGV[3], ARGV[4], 'LIMIT', 0, ARGV[5])
local out = {}
for _, id in ipairs(ids) do
  local row = {id}
  for _, v in ipairs(redis.call('HGETALL', ARGV[1] .. ':ride:' .. id)) do
    row[#row + 1] = v
  end
  out[#out + 1] = row
end
return out
";

/// The replica in Redis under one key prefix. Cheap to clone (a multiplexed connection
/// inside).
#[derive(Clone)]
pub struct RedisReplica {
    conn: ConnectionManager,
    prefix: String,
    described: String,
    upsert: Script,
    delete: Script,
    range: Script,
}

impl fmt::Debug for RedisReplica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplica")
            .field("replica", &self.described)
            .finish_non_exhaustive()
    }
}

impl RedisReplica {
    /// Connects to the Redis at `url` and keeps the replica under the keys `prefix:…`.
    ///
    /// # Errors
    /// [`ReplicaError::Other`] for a malformed URL or an empty prefix;
    /// [`ReplicaError::Unavailable`] when the server cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, ReplicaError> {
        if prefix.is_empty() {
            return Err(ReplicaError::Other(
                "redis replica: the key prefix is empty".into(),
            ));
        }
        let client = Client::open(url)
            .map_err(|e| ReplicaError::Other(format!("redis replica: invalid URL: {e}")))?;
        let described = describe_addr(&client, prefix);
        let config = ConnectionManagerConfig::new().set_response_timeout(Some(COMMAND_TIMEOUT));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| match replica_error(e) {
                ReplicaError::Unavailable(m) => {
                    ReplicaError::Unavailable(format!("cannot connect to {described}: {m}"))
                }
                other => other,
            })?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            described,
            upsert: Script::new(UPSERT_SCRIPT),
            delete: Script::new(DELETE_SCRIPT),
            range: Script::new(RANGE_SCRIPT),
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The set of all ids.
    fn all_key(&self) -> String {
        format!("{}:rides", self.prefix)
    }

    /// Up to `limit` rides of the sorted set `key` between two score bounds, in the order of
    /// `direction`, in one script call.
    async fn range(
        &self,
        key: &str,
        direction: &str,
        bounds: (String, String),
        limit: usize,
    ) -> Result<Vec<RideRow>, ReplicaError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let rows: Vec<Vec<String>> = self
            .range
            .key(key)
            .arg(&self.prefix)
            .arg(direction)
            .arg(bounds.0)
            .arg(bounds.1)
            .arg(limit)
            .invoke_async(&mut conn)
            .await
            .map_err(replica_error)?;
        rows.into_iter().map(|r| self.decode(r)).collect()
    }

    /// A ride from its id followed by its hash's field/value pairs.
    fn decode(&self, row: Vec<String>) -> Result<RideRow, ReplicaError> {
        let mut items = row.into_iter();
        let id = items.next().unwrap_or_default();
        let corrupt = |what: String| {
            ReplicaError::Other(format!(
                "corrupt replica hash {}:ride:{id}: {what}",
                self.prefix
            ))
        };
        let mut fields = Fields(HashMap::new());
        while let (Some(f), Some(v)) = (items.next(), items.next()) {
            fields.0.insert(f, v);
        }
        if fields.0.is_empty() {
            return Err(corrupt("listed in a sorted set, but missing".to_owned()));
        }
        let ride = fields.ride().map_err(&corrupt)?;
        if ride.id.to_string() != id {
            return Err(corrupt(format!("its id field is {}", ride.id)));
        }
        Ok(ride)
    }
}

/// A ride's hash.
struct Fields(HashMap<String, String>);

impl Fields {
    /// An optional field, parsed.
    fn optional<T: FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        self.0
            .get(name)
            .map(|v| v.parse().map_err(|_| format!("bad {name} {v:?}")))
            .transpose()
    }

    /// A required field, parsed.
    fn required<T: FromStr>(&self, name: &str) -> Result<T, String> {
        self.optional(name)?.ok_or_else(|| format!("no {name}"))
    }

    /// The ride, validated like every stored ride (the domain refuses bad coordinates).
    fn ride(&self) -> Result<RideRow, String> {
        let params = RideParams::new(
            self.required("origin_lat")?,
            self.required("origin_lon")?,
            self.required("target_lat")?,
            self.required("target_lon")?,
        )
        .map_err(|e| e.to_string())?;
        Ok(RideRow {
            id: self.required("id")?,
            user_id: self.required("user_id")?,
            idempotency_key_id: self.optional("idempotency_key_id")?,
            params,
            distance_mm: self.required("distance_mm")?,
            charge_id: self.0.get("charge_id").cloned(),
            created_at_ms: self.required("created_at_ms")?,
        })
    }
}

/// Refuses an id a score cannot hold exactly.
fn check_id(id: i64) -> Result<(), ReplicaError> {
    if id.unsigned_abs() > MAX_ID.unsigned_abs() {
        return Err(ReplicaError::Other(format!(
            "redis replica: ride id {id} is beyond ±2^53, which a sorted-set score cannot hold"
        )));
    }
    Ok(())
}

/// A coordinate as the shortest text that parses back to the same `f64`.
fn coordinate(v: f64) -> String {
    format!("{v:?}")
}

/// The upsert script's arguments for one ride: id, user id, `n`, then `n` hash arguments.
fn upsert_args(r: &RideRow) -> Vec<String> {
    let mut hash = vec![
        "id".to_owned(),
        r.id.to_string(),
        "user_id".to_owned(),
        r.user_id.to_string(),
        "origin_lat".to_owned(),
        coordinate(r.params.origin_lat()),
        "origin_lon".to_owned(),
        coordinate(r.params.origin_lon()),
        "target_lat".to_owned(),
        coordinate(r.params.target_lat()),
        "target_lon".to_owned(),
        coordinate(r.params.target_lon()),
        "distance_mm".to_owned(),
        r.distance_mm.to_string(),
        "created_at_ms".to_owned(),
        r.created_at_ms.to_string(),
    ];
    if let Some(k) = r.idempotency_key_id {
        hash.extend(["idempotency_key_id".to_owned(), k.to_string()]);
    }
    if let Some(c) = &r.charge_id {
        hash.extend(["charge_id".to_owned(), c.clone()]);
    }
    let mut args = vec![
        r.id.to_string(),
        r.user_id.to_string(),
        hash.len().to_string(),
    ];
    args.extend(hash);
    args
}

#[async_trait]
impl Replica for RedisReplica {
    fn describe(&self) -> String {
        self.described.clone()
    }

    async fn ping(&self) -> Result<(), ReplicaError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(replica_error)
    }

    async fn upsert(&self, rides: &[RideRow]) -> Result<(), ReplicaError> {
        for r in rides {
            check_id(r.id)?;
        }
        let mut conn = self.conn.clone();
        for chunk in rides.chunks(SCRIPT_RIDES) {
            let mut call = self.upsert.key(self.all_key());
            call.arg(&self.prefix);
            for r in chunk {
                call.arg(upsert_args(r));
            }
            call.invoke_async::<()>(&mut conn)
                .await
                .map_err(replica_error)?;
        }
        Ok(())
    }

    async fn delete(&self, ids: &[i64]) -> Result<(), ReplicaError> {
        let mut conn = self.conn.clone();
        for chunk in ids.chunks(SCRIPT_RIDES) {
            let mut call = self.delete.key(self.all_key());
            call.arg(&self.prefix);
            for id in chunk {
                call.arg(id.to_string());
            }
            call.invoke_async::<()>(&mut conn)
                .await
                .map_err(replica_error)?;
        }
        Ok(())
    }

    async fn page(&self, after_id: i64, limit: usize) -> Result<Vec<RideRow>, ReplicaError> {
        let bounds = (format!("({after_id}"), "+inf".to_owned());
        self.range(&self.all_key(), "asc", bounds, limit).await
    }

    async fn count(&self) -> Result<u64, ReplicaError> {
        let mut conn = self.conn.clone();
        redis::cmd("ZCARD")
            .arg(self.all_key())
            .query_async(&mut conn)
            .await
            .map_err(replica_error)
    }

    async fn rides_for_user(
        &self,
        user_id: i64,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RideRow>, ReplicaError> {
        let key = format!("{}:user:{user_id}:rides", self.prefix);
        let max = before_id.map_or_else(|| "+inf".to_owned(), |b| format!("({b}"));
        self.range(&key, "desc", (max, "-inf".to_owned()), limit)
            .await
    }
}
