//! `rides bench`: the project's own benchmarks ("performance is a feature: measure it").
//!
//! Six benchmarks, each a few seconds long with the defaults, each next to a baseline
//! measured in the same run on the same backend, so that a ratio can be read even on a busy
//! machine:
//!
//! | command | what runs | baseline |
//! |---|---|---|
//! | [`bench log`](log) | one [`ports::Log`] through the port: append, read, end-to-end latency | the backend without the adapter (raw pipelined `XADD`, `psql` multi-row `INSERT`) |
//! | [`bench store`](store) | [`RideService::create_ride`](crate::rides::RideService::create_ride) from C concurrent tasks, no HTTP | the reference design (rocket-rides-atomic's four transactions per ride), same database, driver and concurrency |
//! | [`bench relay`](relay) | the real streamer moving N staged records from the store's outbox to the log | the store side's limit: one `DELETE … RETURNING` per 1000 records |
//! | [`bench fleet`](fleet) | the whole in-process fleet (API over HTTP, streamer, consumers, …) at a fixed request rate | none: CPU milliseconds per ride (this process, and local `postgres`/`redis-server`) and commit-to-consumed latency |
//! | [`bench stats`](stats) | `POST /rides` at a fixed rate while 16 clients flood `GET /stats` | the same load without the flood: the latency ratio |
//! | [`bench slowloris`](slowloris) | slow-header and idle connections against a running API, and a normal client beside them | none: how long the server kept them, and the normal client's latency |
//!
//! With `--json` the last line of stdout is the report as one JSON object; the table goes to
//! stderr.
//!
//! # Fresh namespaces
//!
//! A benchmark never touches existing data: Redis gets a unique stream (`?stream=`), Postgres
//! a fresh schema (created by the adapter through its `?schema=` option, dropped with
//! `psql`), and a sled log or SQLite store that was not named explicitly lives in a fresh
//! temporary directory. Everything created is removed at the end. An explicit `sled://PATH`
//! or `sqlite://PATH` is used as given: pass a fresh path. When `--log` is the same Postgres
//! URL as `--store`, the log stays the store's own outbox (the Postgres-only log).
//!
//! # Design choices
//!
//! - Adapters and baselines are opened through [`wiring`], like every other process, so the
//!   numbers are those of the real configuration.
//! - The app does not depend on the drivers (`redis`, `sqlx`, `sled`) itself. The SQL
//!   baselines of `bench store` and `bench relay` must use the store's driver, so they live in
//!   `adapters` (`adapters::baseline`); the log baselines use what needs no driver: the Redis
//!   wire protocol (RESP) spoken directly over TCP, and `psql` for Postgres.
//! - Timings are reported, never asserted: the unit tests only check that the benchmarks run
//!   and count what they did.

use std::path::PathBuf;
use std::time::Duration;

use domain::{LogRecord, NewRecord, RecordDraft, RideEvent};
use ports::{Clock, SystemClock};
use serde::Serialize;
use uuid::Uuid;

use crate::wiring::{self, split_scheme};

mod cpu;
pub mod fleet;
pub mod log;
pub mod relay;
pub mod slowloris;
pub mod stats;
pub mod store;

pub use fleet::{FleetBenchOptions, FleetBenchReport, bench_fleet};
pub use log::{Baseline, LogBenchOptions, LogBenchReport, bench_log};
pub use relay::{RelayBenchOptions, RelayBenchReport, bench_relay};
pub use slowloris::{SlowlorisOptions, SlowlorisReport, bench_slowloris};
pub use stats::{StatsBenchOptions, StatsBenchReport, bench_stats};
pub use store::{StoreBenchOptions, StoreBenchReport, bench_store};

/// A throughput measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throughput {
    /// Records moved.
    pub records: u64,
    /// Bytes of record JSON moved.
    pub bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Records per second.
    pub records_per_s: f64,
    /// Megabytes (10^6 bytes) of record JSON per second.
    pub mb_per_s: f64,
}

impl Throughput {
    fn new(records: u64, bytes: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Self {
            records,
            bytes,
            seconds,
            records_per_s: records as f64 / seconds,
            mb_per_s: bytes as f64 / seconds / 1e6,
        }
    }
}

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    /// How many samples.
    pub samples: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Worst.
    pub max_ms: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let pick = |q: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            ms(samples[rank - 1])
        };
        Self {
            samples: samples.len() as u64,
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            max_ms: samples.last().copied().map_or(0.0, ms),
        }
    }
}

/// `ours / baseline`, when there is a baseline and it moved anything.
fn ratio(ours: f64, baseline: Option<f64>) -> Option<f64> {
    baseline.filter(|b| *b > 0.0).map(|b| ours / b)
}

/// A unique, identifier-safe suffix for benchmark namespaces.
fn unique_suffix() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

/// What a benchmark created and must remove at the end.
#[derive(Debug, Default)]
struct Scratch {
    /// A temporary directory holding the SQLite store and the sled log that were not named.
    dir: Option<PathBuf>,
    /// Postgres schemas: (connection URL for `psql`, schema name).
    pg_schemas: Vec<(String, String)>,
    /// Redis keys: (connection URL, keys).
    redis_keys: Option<(String, Vec<String>)>,
}

impl Scratch {
    /// The benchmark's temporary directory (made on first use) joined with `name`.
    fn temp(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = match &self.dir {
            Some(d) => d.clone(),
            None => {
                let d = std::env::temp_dir().join(format!("rides-bench-{}", unique_suffix()));
                std::fs::create_dir_all(&d)
                    .map_err(|e| anyhow::anyhow!("creating {}: {e}", d.display()))?;
                self.dir = Some(d.clone());
                d
            }
        };
        Ok(dir.join(name))
    }

    async fn clean(self) {
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(&dir);
        }
        for (url, schema) in self.pg_schemas {
            if let Err(e) = psql(&url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE;")).await {
                progress(&format!("could not drop schema {schema}: {e:#}"));
            }
        }
        if let Some((url, keys)) = self.redis_keys {
            let result = async {
                let mut conn = Resp::connect(&url).await?;
                let mut cmd = vec![b"DEL".to_vec()];
                cmd.extend(keys.iter().map(|k| k.as_bytes().to_vec()));
                conn.send(&[cmd]).await?;
                conn.replies(1).await
            }
            .await;
            if let Err(e) = result {
                progress(&format!("could not delete the bench streams: {e:#}"));
            }
        }
    }
}

/// `url` with the query parameter `pair` added.
fn with_query(url: &str, pair: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{pair}")
}

/// The scheme of `url`, lower case (empty when it has none).
fn scheme(url: &str) -> String {
    split_scheme(url).map(|(s, _)| s).unwrap_or_default()
}

/// A fresh Postgres schema; returns the URL that selects it (the store's and the log's
/// `?schema=` option, with which the adapter creates it) and its name. `psql`, which drops
/// it at the end, must be there.
async fn fresh_pg_schema(url: &str, scratch: &mut Scratch) -> anyhow::Result<(String, String)> {
    let schema = format!("rides_bench_{}", unique_suffix());
    tokio::task::spawn_blocking(|| std::process::Command::new("psql").arg("--version").output())
        .await?
        .map_err(|e| anyhow::anyhow!("cannot run psql (the Postgres benches need it): {e}"))?;
    scratch.pg_schemas.push((url.to_owned(), schema.clone()));
    Ok((with_query(url, &format!("schema={schema}")), schema))
}

/// The URL the benchmark uses for the store `url`: a temporary SQLite file when not
/// `explicit`, a fresh schema on Postgres, `url` itself otherwise.
async fn fresh_store(url: &str, explicit: bool, scratch: &mut Scratch) -> anyhow::Result<String> {
    if !explicit {
        return Ok(format!("sqlite://{}", scratch.temp("rides.db")?.display()));
    }
    Ok(match scheme(url).as_str() {
        "postgres" | "postgresql" => fresh_pg_schema(url, scratch).await?.0,
        _ => url.to_owned(),
    })
}

/// The URL the benchmark uses for the log `url`: a temporary sled log when not `explicit`, a
/// fresh stream on Redis (and its `-raw` sibling for the log bench's baseline), a fresh
/// schema on Postgres, `url` itself otherwise.
async fn fresh_log(url: &str, explicit: bool, scratch: &mut Scratch) -> anyhow::Result<String> {
    if !explicit {
        return Ok(format!("sled://{}", scratch.temp("log")?.display()));
    }
    Ok(match scheme(url).as_str() {
        "redis" | "rediss" => {
            let (_, conn) = wiring::redis_stream(url);
            let stream = format!("rides-bench-{}", unique_suffix());
            scratch.redis_keys =
                Some((conn.clone(), vec![stream.clone(), format!("{stream}-raw")]));
            with_query(&conn, &format!("stream={stream}"))
        }
        "postgres" | "postgresql" => fresh_pg_schema(url, scratch).await?.0,
        _ => url.to_owned(),
    })
}

/// A store and a log for the benchmarks that run both. A log given as the store's own
/// Postgres URL stays the store's outbox (the Postgres-only log).
#[derive(Debug, Clone)]
pub struct Urls {
    /// The store.
    pub store: String,
    /// Whether `--store` was given (else a temporary SQLite file).
    pub store_explicit: bool,
    /// The log.
    pub log: String,
    /// Whether `--log` was given (else a temporary sled log).
    pub log_explicit: bool,
}

impl Urls {
    /// The fresh store and log URLs (see [`fresh_store`], [`fresh_log`]).
    async fn fresh(&self, scratch: &mut Scratch) -> anyhow::Result<(String, String)> {
        let store = fresh_store(&self.store, self.store_explicit, scratch).await?;
        let same = self.store_explicit && self.log_explicit && self.log == self.store;
        let log = if same && matches!(scheme(&self.store).as_str(), "postgres" | "postgresql") {
            store.clone()
        } else {
            fresh_log(&self.log, self.log_explicit, scratch).await?
        };
        Ok((store, log))
    }
}

/// `n` realistic `ride.created` records, unsequenced (as a phase stages them).
fn ride_drafts(n: usize) -> Vec<NewRecord> {
    let now_ms = SystemClock.now_ms();
    (1..=n as u64)
        .map(|i| {
            let event = RideEvent::Requested {
                user_id: (i % 997) as i64 + 1,
                distance_mm: 1_000 + (i * 7_919) % 25_000_000,
            };
            RecordDraft::from_event(&event, Some(Uuid::new_v4())).build(i as i64, now_ms)
        })
        .collect()
}

/// `n` realistic `ride.created` records of the producer `producer`, sequenced from 1.
fn ride_records(producer: &str, n: usize) -> Vec<LogRecord> {
    ride_drafts(n)
        .into_iter()
        .zip(1..)
        .map(|(r, seq)| r.sequenced(producer, seq))
        .collect()
}

/// Runs `sql` with `psql` (statements stop at the first error). Blocking, so it runs on
/// tokio's blocking pool.
async fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run psql (the Postgres bench needs it): {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(sql.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    })
    .await?
}

/// The Redis wire protocol over one plain TCP connection, just enough for the baseline.
struct Resp {
    stream: tokio::io::BufStream<tokio::net::TcpStream>,
}

impl Resp {
    /// Connects to `redis://host[:port][/db]` (no TLS, no AUTH).
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let rest = rest.split('?').next().unwrap_or_default();
        let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
        let addr = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:6379")
        };
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to redis at {addr}: {e}"))?;
        tcp.set_nodelay(true)?;
        let mut conn = Self {
            stream: tokio::io::BufStream::new(tcp),
        };
        if !db.is_empty() {
            conn.send(&[vec![b"SELECT".to_vec(), db.as_bytes().to_vec()]])
                .await?;
            conn.replies(1).await?;
        }
        Ok(conn)
    }

    /// Writes `cmds` in one go (a pipeline).
    async fn send(&mut self, cmds: &[Vec<Vec<u8>>]) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut buf = Vec::new();
        for cmd in cmds {
            buf.extend_from_slice(format!("*{}\r\n", cmd.len()).as_bytes());
            for arg in cmd {
                buf.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                buf.extend_from_slice(arg);
                buf.extend_from_slice(b"\r\n");
            }
        }
        self.stream.write_all(&buf).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Reads `n` simple replies (status, integer, bulk string); an error reply is an error.
    async fn replies(&mut self, n: usize) -> anyhow::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut line = String::new();
        for _ in 0..n {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let kind = line.chars().next();
            match kind {
                Some('+' | ':') => {}
                Some('-') => anyhow::bail!("redis: {}", line.trim_end()),
                Some('$') => {
                    let len: i64 = line[1..].trim_end().parse()?;
                    if len >= 0 {
                        let mut body = vec![0; len as usize + 2];
                        self.stream.read_exact(&mut body).await?;
                    }
                }
                _ => anyhow::bail!("redis: unexpected reply {:?}", line.trim_end()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let l = Latency::of((1..=100).map(Duration::from_millis).collect());
        assert_eq!(l.samples, 100);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        assert_eq!(Latency::of(Vec::new()).samples, 0);
    }

    #[test]
    fn bench_records_are_realistic_ride_created_records() {
        let records = ride_records("p", 3);
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].seq, 3);
        assert!(records.iter().all(|r| r.kind == "ride.created"));
        let size = records[0].to_json().len();
        assert!((150..400).contains(&size), "{size} bytes");
    }

    #[test]
    fn ratios_need_a_baseline_that_moved() {
        assert_eq!(ratio(3.0, Some(2.0)), Some(1.5));
        assert_eq!(ratio(3.0, Some(0.0)), None);
        assert_eq!(ratio(3.0, None), None);
    }

    #[test]
    fn queries_are_appended_to_urls() {
        assert_eq!(with_query("redis://h", "stream=s"), "redis://h?stream=s");
        assert_eq!(
            with_query("postgres://h/db?x=1", "options=y"),
            "postgres://h/db?x=1&options=y"
        );
    }
}
