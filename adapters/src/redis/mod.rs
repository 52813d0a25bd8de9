//! The log on a [Redis stream](https://redis.io/docs/latest/develop/data-types/streams/).
//! The replica ([`RedisReplica`], `replica.rs`) keeps rides in hashes and sorted sets.
//!
//! # Layout
//!
//! One stream key per log. Every record is one entry with a single field `data` holding
//! [`LogRecord::to_json`] (the field name of the reference streamer). One lane.
//!
//! # Positions
//!
//! A [`Position`] is the id (`<ms>-<seq>`) of the last entry read; [`Position::start`] is
//! `0-0`. Ids are compared numerically as `(ms, seq)`, never as strings (`"10-0" < "9-0"` as
//! strings). Anything that is not two `u64`s joined by `-` is [`LogError::InvalidPosition`].
//!
//! # Connections
//!
//! - A shared [`ConnectionManager`] (multiplexed, reconnects by itself) carries every short
//!   command: `XADD` pipelines, `XLEN`, `XTRIM`, the lag script, non-blocking reads.
//! - A waiting read runs `XREAD BLOCK` on a *dedicated* connection taken from a small pool:
//!   a blocking command on a multiplexed connection would stall every other command queued
//!   behind it. A connection goes back to the pool only after its command completed; one
//!   whose read was cancelled or failed is dropped, so a late reply can never be read by the
//!   next borrower.
//!
//! # Appends
//!
//! A batch is one pipelined `MULTI`/`XADD…`/`EXEC` round trip, so a batch is appended whole
//! and in order. There is no `MAXLEN`: a blind cap drops entries a slow consumer has not read
//! yet. The log shrinks only through [`Log::trim`], which removes what every checkpoint has
//! passed (`XTRIM MINID`, exact).
//!
//! # Lag
//!
//! Redis cannot count the entries of a stream range without walking them, and a script
//! walking them blocks the whole server, so [`Log::lag`] walks at most 1000 entries
//! (`LAG_COUNT_BOUND`) on each side of the position, in one script:
//!
//! - nothing at or before the position (the start, or a position the log was trimmed past):
//!   everything held is after it, the lag is `XLEN`: exact, O(log n);
//! - fewer than 1000 entries after the position: counted, exact;
//! - fewer than 1000 entries at or before it: `XLEN` minus those, exact;
//! - otherwise (more than the bound on both sides) it is an *estimate*: `XLEN` times the
//!   share of the stream's time span (the millisecond parts of the first and last ids) that
//!   lies after the position, clamped to `[1000, XLEN - 1000]`, the range the true count is
//!   known to lie in. It assumes evenly spread appends.
//!
//! So the lag is exact for a consumer within 1000 entries of the head or of the oldest
//! entry held (the slowest consumer sits there once the trimmer has run), and one call
//! costs at most about 2000 walked entries of server time (2–4 ms), whatever the length.
//! This needs no `XINFO STREAM` counters (`entries-added` only tells where the oldest
//! entry is, never how many entries lie after an arbitrary id).
//!
//! # Durability
//!
//! "Durable when `append` returns" means "acknowledged by Redis"; whether it survives a
//! Redis restart depends on the server's persistence (`appendonly`, `save`).
//! [`RedisLog::connect`] checks it and warns when both are off; [`RedisLog::persistence`]
//! tells the CLI what was found.

mod error;
mod replica;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use domain::LogRecord;
use ports::{Batch, Delivery, Log, LogError, Position};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, Script};

use self::error::log_error;

pub use self::replica::RedisReplica;

/// The field of a stream entry that holds the record's JSON.
const DATA_FIELD: &str = "data";
/// Idle dedicated reader connections kept for reuse; more are closed after use.
const MAX_IDLE_READERS: usize = 8;
/// How long a short command on the shared connection may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time a blocking read gets beyond its `BLOCK` before it is abandoned.
const BLOCK_GRACE: Duration = Duration::from_secs(5);
/// The longest `BLOCK` sent to Redis (longer waits are cut to this).
const MAX_BLOCK: Duration = Duration::from_secs(24 * 3600);

/// How many entries [`Log::lag`] walks at most on each side of the position (see the
/// [module docs](self#lag)). Walking an entry in a script costs 1.5–3 µs of blocked server
/// on a small machine; 10 000 of them blocked Redis 20–30 ms in a measurement, 1000 about
/// 1.5 ms.
const LAG_COUNT_BOUND: u64 = 1000;

/// The bounded lag count: `KEYS[1]` the stream, `ARGV[1]` the position's id (`0-0` for the
/// start), `ARGV[2]` the bound. Returns `{1, count, '', ''}` when the count is exact, and
/// `{0, XLEN, first id, last id}` when more than the bound lie on both sides of the position.
/// Only reads the first entry, at most `bound` entries after the position and at most
/// `bound` entries up to it.
const LAG_SCRIPT: &str = r"
local len = redis.call('XLEN', KEYS[1])
if len == 0 then return {1, 0, '', ''} end
local pos = ARGV[1]
if #redis.call('XRANGE', KEYS[1], '-', pos, 'COUNT', 1) == 0 then
  return {1, len, '', ''}
end
local bound = tonumber(ARGV[2])
local after = #redis.call('XRANGE', KEYS[1], '(' .. pos, '+', 'COUNT', bound)
if after < bound then return {1, after, '', ''} end
local upto = #redis.call('XRANGE', KEYS[1], '-', pos, 'COUNT', bound)
if upto < bound then return {1, len - upto, '', ''} end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1]
return {0, len, first, last}
";

/// Estimates how many of `len` entries (ids `first..=last`) lie after `at`, when more than
/// `bound` lie on each side of it: the share of the time span after `at`, by the ids'
/// millisecond parts, clamped to `[bound, len - bound]` (where the true count lies).
fn estimate_after(at: EntryId, first: EntryId, last: EntryId, len: u64, bound: u64) -> u64 {
    let (low, high) = (bound, len.saturating_sub(bound).max(bound));
    let span = last.ms.saturating_sub(first.ms);
    let share = if span == 0 {
        0.5
    } else {
        last.ms.saturating_sub(at.ms.max(first.ms)) as f64 / span as f64
    };
    let estimate = (len as f64 * share).round() as u64;
    estimate.clamp(low, high)
}

/// The stream's `last-generated-id` (from `XINFO STREAM`, which survives trims), or `''`
/// when the stream key does not exist: `KEYS[1]` the stream.
const LAST_ID_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return '' end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return info[i + 1] end
end
return ''
";

/// What [`RedisLog::connect`] found out about the server's persistence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// At least one of AOF (`appendonly yes`) and RDB snapshots (`save` rules) is on.
    On {
        /// Whether the append-only file is on.
        appendonly: bool,
        /// The `save` rules (empty when RDB snapshots are off).
        save: String,
    },
    /// Both are off: a Redis restart loses every record still in the stream.
    Off,
    /// `CONFIG GET` is not allowed (common on managed Redis); the reason given.
    Unknown(String),
}

impl fmt::Display for Persistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::On { appendonly, save } => write!(
                f,
                "on (appendonly {}, save '{save}')",
                if *appendonly { "yes" } else { "no" }
            ),
            Self::Off => f.write_str(
                "off (appendonly no, save ''): a Redis restart loses every record not yet consumed",
            ),
            Self::Unknown(why) => write!(f, "unknown (CONFIG GET refused: {why})"),
        }
    }
}

/// A stream entry id, ordered numerically as `(ms, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EntryId {
    ms: u64,
    seq: u64,
}

impl EntryId {
    /// Before every entry.
    const ZERO: Self = Self { ms: 0, seq: 0 };
    /// The largest id there is.
    const MAX: Self = Self {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// Parses `<ms>-<seq>`, each a decimal `u64` (digits only).
    fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        let number = |part: &str| {
            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                part.parse::<u64>().ok()
            } else {
                None
            }
        };
        Some(Self {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }

    /// Parses a position of this log ([`Position::start`] is `0-0`).
    fn from_position(position: &Position) -> Result<Self, LogError> {
        if position.is_start() {
            return Ok(Self::ZERO);
        }
        Self::parse(position.as_str())
            .ok_or_else(|| LogError::InvalidPosition(position.as_str().to_owned()))
    }

    /// The smallest id after this one (`XTRIM MINID` keeps ids `>=` it).
    fn successor(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => Self { ms: self.ms, seq },
            None => Self {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A [`Log`] on one Redis stream. See the [module docs](self).
pub struct RedisLog {
    client: Client,
    shared: ConnectionManager,
    /// Idle dedicated connections for blocking reads.
    readers: Mutex<Vec<MultiplexedConnection>>,
    stream: String,
    described: String,
    persistence: Persistence,
    lag_script: Script,
    last_id_script: Script,
}

impl fmt::Debug for RedisLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLog")
            .field("log", &self.described)
            .field("persistence", &self.persistence)
            .finish_non_exhaustive()
    }
}

/// `redis://host:port/<stream>`, never with the password.
fn describe_addr(client: &Client, stream: &str) -> String {
    let info = client.get_connection_info();
    let db = match info.redis_settings().db() {
        0 => String::new(),
        n => format!(" (db {n})"),
    };
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{stream}{db}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}/{stream}{db}"),
        ConnectionAddr::Unix(path) => format!("redis+unix://{}/{stream}{db}", path.display()),
        _ => format!("redis://?/{stream}{db}"),
    }
}

/// Reads one `CONFIG GET <name>` value; `Err` with the reason when CONFIG is refused.
async fn config_get(conn: &mut ConnectionManager, name: &str) -> Result<Option<String>, String> {
    let map: HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(map.get(name).cloned())
}

/// Asks the server whether it persists anything.
async fn check_persistence(conn: &mut ConnectionManager) -> Persistence {
    let appendonly = match config_get(conn, "appendonly").await {
        Ok(v) => v,
        Err(why) => return Persistence::Unknown(why),
    };
    let save = match config_get(conn, "save").await {
        Ok(v) => v,
        Err(why) => return Persistence::Unknown(why),
    };
    match (appendonly, save) {
        (Some(aof), Some(save)) => {
            let appendonly = aof.eq_ignore_ascii_case("yes");
            let save = save.trim().to_owned();
            if !appendonly && save.is_empty() {
                Persistence::Off
            } else {
                Persistence::On { appendonly, save }
            }
        }
        _ => Persistence::Unknown("CONFIG GET returned no value".to_owned()),
    }
}

impl RedisLog {
    /// Connects to the Redis at `url` and uses the stream key `stream` as the log.
    ///
    /// Checks the server's persistence on the way (see [`RedisLog::persistence`]) and logs a
    /// warning when a Redis restart would lose the stream.
    ///
    /// # Errors
    /// [`LogError::Other`] for a malformed URL or an empty stream name;
    /// [`LogError::Unavailable`] when the server cannot be reached.
    pub async fn connect(url: &str, stream: &str) -> Result<RedisLog, LogError> {
        if stream.is_empty() {
            return Err(LogError::Other(
                "redis log: the stream name is empty".into(),
            ));
        }
        let client = Client::open(url)
            .map_err(|e| LogError::Other(format!("redis log: invalid URL: {e}")))?;
        let described = describe_addr(&client, stream);
        let config = ConnectionManagerConfig::new().set_response_timeout(Some(COMMAND_TIMEOUT));
        let mut shared = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| match log_error(e) {
                LogError::Unavailable(m) => {
                    LogError::Unavailable(format!("cannot connect to {described}: {m}"))
                }
                other => other,
            })?;
        let persistence = check_persistence(&mut shared).await;
        match &persistence {
            Persistence::Off => tracing::warn!(
                log = %described,
                "Redis persistence is off (appendonly no, save ''): a Redis restart loses \
                 every record not yet consumed; turn on appendonly (or save rules) for a \
                 durable log"
            ),
            Persistence::Unknown(why) => tracing::info!(
                log = %described,
                reason = %why,
                "cannot check Redis persistence (CONFIG GET refused); make sure the server \
                 persists the stream"
            ),
            Persistence::On { .. } => {
                tracing::debug!(log = %described, persistence = %persistence, "Redis persistence");
            }
        }
        Ok(RedisLog {
            client,
            shared,
            readers: Mutex::new(Vec::new()),
            stream: stream.to_owned(),
            described,
            persistence,
            lag_script: Script::new(LAG_SCRIPT),
            last_id_script: Script::new(LAST_ID_SCRIPT),
        })
    }

    /// What the server's persistence was at connect time.
    pub fn persistence(&self) -> Persistence {
        self.persistence.clone()
    }

    /// The stream key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Takes an idle dedicated reader connection, or opens one (no response timeout: the
    /// caller bounds the blocking command itself).
    async fn take_reader(&self) -> Result<MultiplexedConnection, LogError> {
        let idle = self.readers.lock().ok().and_then(|mut pool| pool.pop());
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(log_error)
    }

    /// Returns a reader connection whose last command completed.
    fn give_back(&self, conn: MultiplexedConnection) {
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < MAX_IDLE_READERS
        {
            pool.push(conn);
        }
    }

    /// Turns an `XREAD` reply into a batch.
    fn to_batch(&self, from: &Position, reply: Option<StreamReadReply>) -> Result<Batch, LogError> {
        let entries = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .filter(|k| k.key == self.stream)
            .flat_map(|k| k.ids);
        let mut deliveries = Vec::new();
        let mut next = from.clone();
        for entry in entries {
            let data: Vec<u8> = entry.get(DATA_FIELD).ok_or_else(|| {
                LogError::Other(format!(
                    "{}: entry {} has no `{DATA_FIELD}` field",
                    self.described, entry.id
                ))
            })?;
            let record = LogRecord::from_json(&data).map_err(|e| {
                LogError::Other(format!("{}: entry {}: {e}", self.described, entry.id))
            })?;
            deliveries.push(Delivery { lane: 0, record });
            next = Position::new(entry.id);
        }
        Ok(Batch { deliveries, next })
    }
}

#[async_trait]
impl Log for RedisLog {
    fn describe(&self) -> String {
        self.described.clone()
    }

    async fn ping(&self) -> Result<(), LogError> {
        let mut conn = self.shared.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(log_error)
    }

    async fn append(&self, records: &[LogRecord]) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for record in records {
            pipe.cmd("XADD")
                .arg(&self.stream)
                .arg("*")
                .arg(DATA_FIELD)
                .arg(record.to_json())
                .ignore();
        }
        let mut conn = self.shared.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(log_error)
    }

    async fn read(&self, from: &Position, max: usize, wait: Duration) -> Result<Batch, LogError> {
        let after = EntryId::from_position(from)?;
        if max == 0 {
            return Ok(Batch {
                deliveries: Vec::new(),
                next: from.clone(),
            });
        }
        let mut xread = redis::cmd("XREAD");
        xread.arg("COUNT").arg(max);
        let wait = wait.min(MAX_BLOCK);
        let block_ms = wait.as_millis().try_into().unwrap_or(u64::MAX);
        // BLOCK 0 would mean "forever"; a wait under 1 ms rounds up to 1 ms.
        let block_ms = if wait.is_zero() { 0 } else { block_ms.max(1) };
        if block_ms > 0 {
            xread.arg("BLOCK").arg(block_ms);
        }
        xread
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(after.to_string());
        let reply: Option<StreamReadReply> = if block_ms == 0 {
            let mut conn = self.shared.clone();
            xread.query_async(&mut conn).await.map_err(log_error)?
        } else {
            let mut conn = self.take_reader().await?;
            let reply = tokio::time::timeout(wait + BLOCK_GRACE, xread.query_async(&mut conn))
                .await
                .map_err(|_| {
                    LogError::Unavailable(format!(
                        "{}: XREAD BLOCK got no answer in {:?}",
                        self.described,
                        wait + BLOCK_GRACE
                    ))
                })?
                .map_err(log_error)?;
            self.give_back(conn);
            reply
        };
        self.to_batch(from, reply)
    }

    /// Bounded: exact within `LAG_COUNT_BOUND` entries of either end of the stream, an
    /// estimate in between (see the [module docs](self#lag)).
    async fn lag(&self, from: &Position) -> Result<u64, LogError> {
        let after = EntryId::from_position(from)?;
        if after == EntryId::MAX {
            // Nothing can come after it (and `(` cannot be put before it).
            return Ok(0);
        }
        let mut conn = self.shared.clone();
        let (exact, n, first, last): (u8, u64, String, String) = self
            .lag_script
            .key(&self.stream)
            .arg(after.to_string())
            .arg(LAG_COUNT_BOUND)
            .invoke_async(&mut conn)
            .await
            .map_err(log_error)?;
        if exact == 1 {
            return Ok(n);
        }
        let id = |s: &str| {
            EntryId::parse(s).ok_or_else(|| {
                LogError::Other(format!("{}: lag script returned id {s:?}", self.described))
            })
        };
        Ok(estimate_after(
            after,
            id(&first)?,
            id(&last)?,
            n,
            LAG_COUNT_BOUND,
        ))
    }

    async fn trim(&self, checkpoints: &[Position]) -> Result<u64, LogError> {
        if checkpoints.is_empty() || checkpoints.iter().any(Position::is_start) {
            return Ok(0);
        }
        let mut min: Option<EntryId> = None;
        for cp in checkpoints {
            let id = EntryId::from_position(cp)?;
            min = Some(min.map_or(id, |m| m.min(id)));
        }
        let Some(min) = min else { return Ok(0) };
        // MINID keeps ids >= its argument: the successor of `min` removes `min` itself too.
        // No `~`: an approximate trim could keep more, but never remove less, than asked;
        // exact keeps the count honest.
        let mut conn = self.shared.clone();
        redis::cmd("XTRIM")
            .arg(&self.stream)
            .arg("MINID")
            .arg(min.successor().to_string())
            .query_async(&mut conn)
            .await
            .map_err(log_error)
    }

    async fn len(&self) -> Result<u64, LogError> {
        let mut conn = self.shared.clone();
        redis::cmd("XLEN")
            .arg(&self.stream)
            .query_async(&mut conn)
            .await
            .map_err(log_error)
    }

    /// Beyond the stream's `last-generated-id` (kept by trims, lost by a restart without
    /// persistence, a `DEL` or `FLUSHALL`), or any position but the start when the stream
    /// key is gone. New entries after such a loss get ids from the server's clock, which can
    /// lie below the position (a server whose clock is behind the old one's): a reader must
    /// not wait there.
    async fn beyond_end(&self, from: &Position) -> Result<bool, LogError> {
        let at = EntryId::from_position(from)?;
        if at == EntryId::ZERO {
            return Ok(false);
        }
        let mut conn = self.shared.clone();
        let last: String = self
            .last_id_script
            .key(&self.stream)
            .invoke_async(&mut conn)
            .await
            .map_err(log_error)?;
        if last.is_empty() {
            return Ok(true);
        }
        let last = EntryId::parse(&last).ok_or_else(|| {
            LogError::Other(format!(
                "{}: XINFO STREAM returned last-generated-id {last:?}",
                self.described
            ))
        })?;
        Ok(at > last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_compare_numerically_not_as_strings() {
        let nine = EntryId::parse("9-0").unwrap();
        let ten = EntryId::parse("10-0").unwrap();
        assert!(nine < ten);
        assert!(EntryId::parse("10-2").unwrap() < EntryId::parse("10-10").unwrap());
    }

    #[test]
    fn malformed_positions_are_rejected() {
        for bad in [
            "", "1", "1-", "-1", "a-1", "1-b", "1-2-3", "+1-0", "1 -0", "✗",
        ] {
            assert_eq!(EntryId::parse(bad), None, "{bad:?}");
        }
        assert!(matches!(
            EntryId::from_position(&Position::new("x")),
            Err(LogError::InvalidPosition(_))
        ));
        assert_eq!(
            EntryId::from_position(&Position::start()).unwrap(),
            EntryId::ZERO
        );
    }

    #[test]
    fn successor_rolls_over_the_sequence() {
        let id = EntryId {
            ms: 5,
            seq: u64::MAX,
        };
        assert_eq!(id.successor(), EntryId { ms: 6, seq: 0 });
        assert_eq!(
            EntryId::parse("5-1").unwrap().successor().to_string(),
            "5-2"
        );
    }

    #[test]
    fn a_lag_estimate_stays_within_what_the_counts_proved() {
        let id = |ms| EntryId { ms, seq: 0 };
        // 10 000 entries over 1 000 ms; the position at 250 ms has ~7 500 after it.
        let est = estimate_after(id(1250), id(1000), id(2000), 10_000, 1000);
        assert_eq!(est, 7500);
        // Near the ends the counts proved at least `bound` on each side.
        assert_eq!(
            estimate_after(id(1999), id(1000), id(2000), 10_000, 1000),
            1000
        );
        assert_eq!(
            estimate_after(id(1000), id(1000), id(2000), 10_000, 1000),
            9000
        );
        // All in one millisecond: the middle of what is possible.
        assert_eq!(estimate_after(id(5), id(5), id(5), 4000, 1000), 2000);
    }

    #[test]
    fn persistence_reads_clearly() {
        assert!(Persistence::Off.to_string().contains("loses every record"));
        let on = Persistence::On {
            appendonly: true,
            save: String::new(),
        };
        assert_eq!(on.to_string(), "on (appendonly yes, save '')");
    }
}
