//! `rides bench`: the project's own benchmarks ("performance is a feature: measure it").
//!
//! Two benchmarks, each a few seconds long with the defaults:
//!
//! - **`bench log`** drives one [`Log`] through the port, exactly as the streamer and the
//!   consumers do:
//!   1. *append*: N realistic `ride.created` records (~250 B of JSON each) in batches of B;
//!   2. *read*: one reader from the start in batches of 1000;
//!   3. *latency*: a reader blocked in `read(.., wait = 5 s)` while a writer appends one
//!      record every 5 ms; the time from the start of each append to its delivery shows the
//!      adapter's wake-ups (a polling adapter would show its poll interval here);
//!   4. *baseline*: what the backend allows without the adapter, next to the adapter's
//!      append number: Redis with the same batches as raw pipelined `XADD`s (one round trip
//!      per batch), Postgres with raw multi-row `INSERT`s through `psql`.
//! - **`bench store`** drives [`RideService::create_ride`] directly (no HTTP) from C
//!   concurrent tasks with fresh idempotency keys, a fake processor that never fails and no
//!   faults: rides/s and the request latency.
//!
//! # Fresh namespaces
//!
//! A benchmark never touches existing data: Redis gets a unique stream (`?stream=`), Postgres
//! a fresh schema (created and dropped with `psql`, selected with the connection's
//! `options=-c search_path=…`), and a sled log or SQLite store that was not named explicitly
//! lives in a fresh temporary directory. Everything created is removed at the end. An
//! explicit `sled://PATH` or `sqlite://PATH` is used as given: pass a fresh path.
//!
//! # Design choices
//!
//! - Adapters are opened through [`wiring`], like every other process, so the numbers are
//!   those of the real configuration.
//! - The app does not depend on the drivers (`redis`, `sqlx`, `sled`) itself, so the
//!   baselines use what needs no driver: the Redis wire protocol (RESP) spoken directly over
//!   TCP (the rawest client there is), and `psql` for Postgres (its time includes one
//!   connection set-up, a few ms). sled and memory have no baseline.
//! - Timings are reported, never asserted: the unit tests only check that the benchmarks run
//!   and count what they did.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use domain::{IdempotencyKey, LogRecord, RecordDraft, RideEvent, RideParams, RideRequest};
use ports::{Clock, Log, Position, SystemClock, User};
use serde::Serialize;
use uuid::Uuid;

use crate::rides::{RideService, RideServiceConfig};
use crate::wiring::{self, split_scheme};

/// Settings of `rides bench log`.
#[derive(Debug, Clone)]
pub struct LogBenchOptions {
    /// The log URL, as for `--log`.
    pub url: String,
    /// Whether the URL was given explicitly (otherwise a temporary sled log is used).
    pub explicit: bool,
    /// Records appended (and read back).
    pub records: usize,
    /// Records per append.
    pub batch: usize,
    /// Single-record appends measured for the end-to-end latency.
    pub latency_samples: usize,
    /// The pause between two of those appends.
    pub latency_interval: Duration,
    /// Whether to run the raw-driver baseline when the backend has one.
    pub baseline: bool,
}

impl LogBenchOptions {
    /// The defaults: 100 000 records in batches of 1000, 200 latency samples 5 ms apart.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            explicit: true,
            records: 100_000,
            batch: 1000,
            latency_samples: 200,
            latency_interval: Duration::from_millis(5),
            baseline: true,
        }
    }
}

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

/// A raw-driver baseline next to the adapter's append throughput.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baseline {
    /// What was measured, e.g. `raw pipelined XADD (RESP over TCP)`.
    pub what: String,
    /// Its throughput.
    pub append: Throughput,
}

/// The result of `rides bench log`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogBenchReport {
    /// The benchmark's name (`log`).
    pub bench: &'static str,
    /// The log, as it describes itself.
    pub log: String,
    /// Records per append.
    pub batch: u64,
    /// Mean size of one record's JSON (bytes).
    pub record_bytes: u64,
    /// Append throughput through the adapter.
    pub append: Throughput,
    /// Read throughput through the adapter (from the start, batches of 1000).
    pub read: Throughput,
    /// Append-start-to-delivery latency of single-record appends to a blocked reader.
    pub latency: Latency,
    /// The raw-driver baseline, when the backend has one.
    pub baseline: Option<Baseline>,
    /// Why there is no baseline, when there is none.
    pub baseline_note: Option<String>,
}

impl LogBenchReport {
    /// A small text table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "rides bench log: {} (batch {}, {} B/record)\n",
            self.log, self.batch, self.record_bytes
        );
        out.push_str(&format!(
            "{:<40} {:>9} {:>8} {:>12} {:>9}\n",
            "phase", "records", "seconds", "records/s", "MB/s"
        ));
        let mut row = |name: &str, t: &Throughput| {
            out.push_str(&format!(
                "{:<40} {:>9} {:>8.3} {:>12.0} {:>9.2}\n",
                name, t.records, t.seconds, t.records_per_s, t.mb_per_s
            ));
        };
        row("append (adapter)", &self.append);
        if let Some(b) = &self.baseline {
            row(&format!("append baseline: {}", b.what), &b.append);
        }
        row("read (adapter, batches of 1000)", &self.read);
        let l = &self.latency;
        out.push_str(&format!(
            "end-to-end latency ({} single appends): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
            l.samples, l.p50_ms, l.p99_ms, l.max_ms
        ));
        if let Some(note) = &self.baseline_note {
            out.push_str(&format!("baseline: {note}\n"));
        }
        out
    }
}

/// Settings of `rides bench store`.
#[derive(Debug, Clone)]
pub struct StoreBenchOptions {
    /// The store URL, as for `--store`.
    pub url: String,
    /// Whether the URL was given explicitly (otherwise a temporary SQLite file is used).
    pub explicit: bool,
    /// Rides to create.
    pub rides: u64,
    /// Concurrent tasks.
    pub concurrency: usize,
}

impl StoreBenchOptions {
    /// The defaults: 2000 rides from 16 tasks.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            explicit: true,
            rides: 2000,
            concurrency: 16,
        }
    }
}

/// The result of `rides bench store`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreBenchReport {
    /// The benchmark's name (`store`).
    pub bench: &'static str,
    /// The store, as it describes itself.
    pub store: String,
    /// Concurrent tasks.
    pub concurrency: u64,
    /// Requests answered 201.
    pub created: u64,
    /// Rides that did not end in a 201 after every attempt.
    pub failed: u64,
    /// Requests answered 409 (a conflict with a concurrent transaction) and retried with the
    /// same key, as a client does.
    pub retried: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Created rides per second.
    pub rides_per_s: f64,
    /// Latency per ride, from the first attempt to the final reply (retries included).
    pub latency: Latency,
}

impl StoreBenchReport {
    /// A small text table.
    pub fn table(&self) -> String {
        format!(
            "rides bench store: {} ({} tasks)\n\
             {:<10} {:>8} {:>8} {:>8} {:>10} {:>9} {:>9} {:>9}\n\
             {:<10} {:>8} {:>8} {:>8} {:>10.3} {:>9.0} {:>9.2} {:>9.2}\n",
            self.store,
            self.concurrency,
            "phase",
            "created",
            "failed",
            "409s",
            "seconds",
            "rides/s",
            "p50 ms",
            "p99 ms",
            "create",
            self.created,
            self.failed,
            self.retried,
            self.seconds,
            self.rides_per_s,
            self.latency.p50_ms,
            self.latency.p99_ms,
        )
    }
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
    /// A temporary directory or file (and its SQLite side files).
    path: Option<PathBuf>,
    /// A Postgres schema: (connection URL for `psql`, schema name).
    pg_schema: Option<(String, String)>,
    /// Redis keys: (connection URL, keys).
    redis_keys: Option<(String, Vec<String>)>,
}

impl Scratch {
    async fn clean(self) {
        if let Some(path) = self.path {
            if path.is_dir() {
                let _ = std::fs::remove_dir_all(&path);
            } else {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        if let Some((url, schema)) = self.pg_schema
            && let Err(e) = psql(&url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE;")).await
        {
            progress(&format!("could not drop schema {schema}: {e:#}"));
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

/// A fresh Postgres schema; returns the URL that selects it.
async fn fresh_pg_schema(url: &str, scratch: &mut Scratch) -> anyhow::Result<(String, String)> {
    let schema = format!("rides_bench_{}", unique_suffix());
    psql(url, &format!("CREATE SCHEMA {schema};")).await?;
    scratch.pg_schema = Some((url.to_owned(), schema.clone()));
    Ok((
        with_query(url, &format!("options=-c%20search_path%3D{schema}")),
        schema,
    ))
}

/// The fresh log URL for `opts`, and what to clean up.
async fn fresh_log_url(opts: &LogBenchOptions, scratch: &mut Scratch) -> anyhow::Result<String> {
    if !opts.explicit {
        let dir = std::env::temp_dir().join(format!("rides-bench-log-{}", unique_suffix()));
        scratch.path = Some(dir.clone());
        return Ok(format!("sled://{}", dir.display()));
    }
    let scheme = split_scheme(&opts.url).map(|(s, _)| s).unwrap_or_default();
    Ok(match scheme.as_str() {
        "redis" | "rediss" => {
            let (_, conn) = wiring::redis_stream(&opts.url);
            let stream = format!("rides-bench-{}", unique_suffix());
            scratch.redis_keys =
                Some((conn.clone(), vec![stream.clone(), format!("{stream}-raw")]));
            with_query(&conn, &format!("stream={stream}"))
        }
        "postgres" | "postgresql" => fresh_pg_schema(&opts.url, scratch).await?.0,
        _ => opts.url.clone(),
    })
}

/// `n` realistic `ride.created` records of the producer `producer`, sequenced from 1.
fn ride_records(producer: &str, n: usize) -> Vec<LogRecord> {
    let now_ms = SystemClock.now_ms();
    (1..=n as u64)
        .map(|i| {
            let event = RideEvent::Requested {
                user_id: (i % 997) as i64 + 1,
                distance_mm: 1_000 + (i * 7_919) % 25_000_000,
            };
            RecordDraft::from_event(&event, Some(Uuid::new_v4()))
                .build(i as i64, now_ms)
                .sequenced(producer, i)
        })
        .collect()
}

/// Runs `rides bench log`.
///
/// # Errors
/// When the log cannot be opened or fails during the benchmark, or when a baseline's backend
/// refuses the scratch namespace.
pub async fn bench_log(opts: LogBenchOptions) -> anyhow::Result<LogBenchReport> {
    anyhow::ensure!(opts.records > 0, "--records must be at least 1");
    anyhow::ensure!(opts.batch > 0, "--batch must be at least 1");
    let mut scratch = Scratch::default();
    let result = run_log_bench(&opts, &mut scratch).await;
    scratch.clean().await;
    result
}

async fn run_log_bench(
    opts: &LogBenchOptions,
    scratch: &mut Scratch,
) -> anyhow::Result<LogBenchReport> {
    let url = fresh_log_url(opts, scratch).await?;
    let stores = wiring::open_store("memory://").await?;
    let log = wiring::open_log(&url, &stores).await?.log;
    log.ping().await?;
    let described = log.describe();
    progress(&format!("log {described}"));

    let records = ride_records("bench", opts.records);
    let payloads: Vec<Vec<u8>> = records.iter().map(LogRecord::to_json).collect();
    let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    let n = records.len() as u64;

    progress(&format!("append: {n} records in batches of {}", opts.batch));
    let started = Instant::now();
    for chunk in records.chunks(opts.batch) {
        log.append(chunk).await?;
    }
    let append = Throughput::new(n, bytes, started.elapsed());

    progress("read: everything from the start in batches of 1000");
    let (read, end) = read_all(log.as_ref(), n, bytes).await?;

    progress(&format!(
        "latency: {} single-record appends, one every {:?}, to a reader blocked in read(wait = 5 s)",
        opts.latency_samples, opts.latency_interval
    ));
    let latency = end_to_end(log.clone(), end, opts).await?;
    drop(log);

    let (baseline, baseline_note) = if opts.baseline {
        progress("baseline: the same payloads without the adapter");
        baseline(&url, &payloads, opts.batch, scratch).await?
    } else {
        (None, Some("skipped".to_owned()))
    };
    Ok(LogBenchReport {
        bench: "log",
        log: described,
        batch: opts.batch as u64,
        record_bytes: bytes / n.max(1),
        append,
        read,
        latency,
        baseline,
        baseline_note,
    })
}

/// Reads `n` records from the start; returns the throughput and the position after them.
async fn read_all(log: &dyn Log, n: u64, bytes: u64) -> anyhow::Result<(Throughput, Position)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut pos = Position::start();
    let mut got = 0u64;
    while got < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "read: only {got} of {n} records came back"
        );
        let batch = log.read(&pos, 1000, Duration::from_secs(1)).await?;
        got += batch.deliveries.len() as u64;
        pos = batch.next;
    }
    Ok((Throughput::new(got, bytes, started.elapsed()), pos))
}

/// The append-start-to-delivery latencies of single-record appends to a blocked reader.
async fn end_to_end(
    log: Arc<dyn Log>,
    from: Position,
    opts: &LogBenchOptions,
) -> anyhow::Result<Latency> {
    let n = opts.latency_samples;
    if n == 0 {
        return Ok(Latency::of(Vec::new()));
    }
    let producer = format!("latency-{}", unique_suffix());
    let records = ride_records(&producer, n);
    let reader_log = log.clone();
    let reader_producer = producer.clone();
    // The reader notes when each of the writer's records (by seq) was delivered.
    let reader = tokio::spawn(async move {
        let mut delivered = vec![None; n];
        let mut seen = 0usize;
        let mut pos = from;
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen < n && Instant::now() < deadline {
            let batch = reader_log.read(&pos, 1000, Duration::from_secs(5)).await?;
            let at = Instant::now();
            for d in &batch.deliveries {
                if d.record.producer == reader_producer
                    && let Some(slot) = delivered.get_mut(d.record.seq as usize - 1)
                    && slot.is_none()
                {
                    *slot = Some(at);
                    seen += 1;
                }
            }
            pos = batch.next;
        }
        Ok::<_, anyhow::Error>(delivered)
    });
    // Let the reader block before the first append.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut starts = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(opts.latency_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for record in &records {
        tick.tick().await;
        starts.push(Instant::now());
        log.append(std::slice::from_ref(record)).await?;
    }
    let delivered = reader.await??;
    let missing = delivered.iter().filter(|d| d.is_none()).count();
    anyhow::ensure!(
        missing == 0,
        "latency: {missing} of {n} records were not delivered within 60 s"
    );
    Ok(Latency::of(
        starts
            .iter()
            .zip(delivered.iter().flatten())
            .map(|(s, d)| d.saturating_duration_since(*s))
            .collect(),
    ))
}

type BaselineResult = (Option<Baseline>, Option<String>);

/// The raw-driver baseline for the backend of `url`.
async fn baseline(
    url: &str,
    payloads: &[Vec<u8>],
    batch: usize,
    scratch: &Scratch,
) -> anyhow::Result<BaselineResult> {
    let scheme = split_scheme(url).map(|(s, _)| s).unwrap_or_default();
    match scheme.as_str() {
        "redis" | "rediss" => {
            let Some((conn, keys)) = &scratch.redis_keys else {
                return Ok((None, Some("no scratch stream".to_owned())));
            };
            if scheme == "rediss" || conn.contains('@') {
                return Ok((
                    None,
                    Some("the RESP baseline speaks plain TCP without AUTH".to_owned()),
                ));
            }
            let append = redis_baseline(conn, &keys[1], payloads, batch).await?;
            Ok((
                Some(Baseline {
                    what: "raw pipelined XADD".to_owned(),
                    append,
                }),
                None,
            ))
        }
        "postgres" | "postgresql" => {
            let Some((conn, schema)) = &scratch.pg_schema else {
                return Ok((None, Some("no scratch schema".to_owned())));
            };
            let append = pg_baseline(conn, schema, payloads, batch).await?;
            Ok((
                Some(Baseline {
                    what: "psql multi-row INSERT".to_owned(),
                    append,
                }),
                None,
            ))
        }
        "sled" => Ok((
            None,
            Some("none (the app does not link the sled crate itself)".to_owned()),
        )),
        _ => Ok((None, Some("none for this backend".to_owned()))),
    }
}

/// The same payloads as raw `XADD key * data <json>`, one pipelined round trip per batch.
async fn redis_baseline(
    url: &str,
    stream: &str,
    payloads: &[Vec<u8>],
    batch: usize,
) -> anyhow::Result<Throughput> {
    let mut conn = Resp::connect(url).await?;
    let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    let started = Instant::now();
    for chunk in payloads.chunks(batch) {
        let cmds: Vec<Vec<Vec<u8>>> = chunk
            .iter()
            .map(|p| {
                vec![
                    b"XADD".to_vec(),
                    stream.as_bytes().to_vec(),
                    b"*".to_vec(),
                    b"data".to_vec(),
                    p.clone(),
                ]
            })
            .collect();
        conn.send(&cmds).await?;
        conn.replies(cmds.len()).await?;
    }
    Ok(Throughput::new(
        payloads.len() as u64,
        bytes,
        started.elapsed(),
    ))
}

/// The same payloads as multi-row `INSERT`s into a scratch table, one statement (and one
/// commit) per batch, run by `psql` over one connection.
async fn pg_baseline(
    url: &str,
    schema: &str,
    payloads: &[Vec<u8>],
    batch: usize,
) -> anyhow::Result<Throughput> {
    let table = format!("{schema}.bench_raw");
    psql(
        url,
        &format!("CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, payload JSONB NOT NULL);"),
    )
    .await?;
    let mut script = String::new();
    for chunk in payloads.chunks(batch) {
        script.push_str(&format!("INSERT INTO {table} (payload) VALUES "));
        for (i, p) in chunk.iter().enumerate() {
            if i > 0 {
                script.push(',');
            }
            script.push_str("('");
            script.push_str(&String::from_utf8_lossy(p).replace('\'', "''"));
            script.push_str("')");
        }
        script.push_str(";\n");
    }
    let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    let started = Instant::now();
    psql(url, &script).await?;
    Ok(Throughput::new(
        payloads.len() as u64,
        bytes,
        started.elapsed(),
    ))
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

/// Runs `rides bench store`.
///
/// # Errors
/// When the store cannot be opened, or a scratch namespace cannot be made.
pub async fn bench_store(opts: StoreBenchOptions) -> anyhow::Result<StoreBenchReport> {
    anyhow::ensure!(opts.rides > 0, "--rides must be at least 1");
    let mut scratch = Scratch::default();
    let result = run_store_bench(&opts, &mut scratch).await;
    scratch.clean().await;
    result
}

async fn run_store_bench(
    opts: &StoreBenchOptions,
    scratch: &mut Scratch,
) -> anyhow::Result<StoreBenchReport> {
    let scheme = split_scheme(&opts.url).map(|(s, _)| s).unwrap_or_default();
    let url = if !opts.explicit {
        let file = std::env::temp_dir().join(format!("rides-bench-{}.db", unique_suffix()));
        scratch.path = Some(file.clone());
        format!("sqlite://{}", file.display())
    } else if scheme == "postgres" || scheme == "postgresql" {
        fresh_pg_schema(&opts.url, scratch).await?.0
    } else {
        opts.url.clone()
    };
    let stores = wiring::open_store(&url).await?;
    stores.store.ping().await?;
    let described = stores.store.describe();
    progress(&format!("store {described}"));
    let concurrency = opts.concurrency.max(1);
    let service = Arc::new(RideService::new(
        stores.store.clone(),
        Arc::new(adapters::payment::FakeProcessor::new(0.0, 7)),
        Arc::new(SystemClock),
        RideServiceConfig::default(),
    ));
    let mut users = Vec::with_capacity(concurrency);
    let run = unique_suffix();
    for t in 0..concurrency {
        users.push(
            stores
                .store
                .ensure_user(&format!("bench-{run}-{t}@example.com"))
                .await?,
        );
    }
    progress(&format!(
        "create: {} rides from {concurrency} tasks",
        opts.rides
    ));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for user in users {
        tasks.push(tokio::spawn(create_rides(
            service.clone(),
            user,
            next.clone(),
            opts.rides,
        )));
    }
    let (mut created, mut failed, mut retried) = (0, 0, 0);
    let mut samples = Vec::with_capacity(opts.rides as usize);
    for task in tasks {
        let t = task.await?;
        created += t.created;
        failed += t.failed;
        retried += t.retried;
        samples.extend(t.samples);
    }
    let elapsed = started.elapsed();
    let seconds = elapsed.as_secs_f64().max(1e-9);
    Ok(StoreBenchReport {
        bench: "store",
        store: described,
        concurrency: concurrency as u64,
        created,
        failed,
        retried,
        seconds,
        rides_per_s: created as f64 / seconds,
        latency: Latency::of(samples),
    })
}

/// Attempts per ride in the store bench (the first one and the retries after a 409).
const MAX_ATTEMPTS: u64 = 10;

/// What one task of the store bench did.
struct Tally {
    created: u64,
    failed: u64,
    retried: u64,
    samples: Vec<Duration>,
}

/// One task of the store bench: takes ride numbers until `total`.
async fn create_rides(
    service: Arc<RideService>,
    user: User,
    next: Arc<AtomicU64>,
    total: u64,
) -> Tally {
    let (mut created, mut failed, mut retried, mut samples) = (0, 0, 0, Vec::new());
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        let wobble = (i % 1000) as f64 / 10_000.0;
        let Ok(params) = RideParams::new(48.85 + wobble, 2.35, 48.80, 2.30 + wobble) else {
            failed += 1;
            continue;
        };
        let request = RideRequest {
            params,
            raise_error: false,
        };
        let Ok(key) = IdempotencyKey::parse(Some(&Uuid::new_v4().to_string())) else {
            failed += 1;
            continue;
        };
        // Like a real client (and the simulator): a 409 conflict is retried with the same key,
        // which is safe because the key makes the request idempotent.
        let started = Instant::now();
        let mut attempt = 1;
        let reply = loop {
            let reply = service
                .create_ride(&user, &key, &request, "127.0.0.1")
                .await;
            if reply.status != 409 || attempt >= MAX_ATTEMPTS {
                break reply;
            }
            retried += 1;
            tokio::time::sleep(Duration::from_millis(2 * attempt)).await;
            attempt += 1;
        };
        samples.push(started.elapsed());
        if reply.status == 201 {
            created += 1;
        } else {
            failed += 1;
        }
    }
    Tally {
        created,
        failed,
        retried,
        samples,
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

    #[tokio::test]
    async fn the_log_bench_runs_on_the_memory_log_and_counts_everything() {
        let mut opts = LogBenchOptions::new("memory://");
        opts.records = 2_500;
        opts.batch = 100;
        opts.latency_samples = 20;
        opts.latency_interval = Duration::from_millis(1);
        let report = bench_log(opts).await.unwrap();
        assert_eq!(report.append.records, 2_500);
        assert_eq!(report.read.records, 2_500);
        assert!(report.append.bytes > 0 && report.record_bytes > 0);
        assert!(report.append.records_per_s > 0.0 && report.read.records_per_s > 0.0);
        assert_eq!(report.latency.samples, 20);
        assert!(report.baseline.is_none());
        assert!(report.table().contains("append (adapter)"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["append"]["records"], 2_500);
    }

    #[tokio::test]
    async fn the_store_bench_runs_on_the_memory_store_and_creates_every_ride() {
        let mut opts = StoreBenchOptions::new("memory://");
        opts.rides = 50;
        opts.concurrency = 4;
        let report = bench_store(opts).await.unwrap();
        assert_eq!(report.created, 50);
        assert_eq!(report.failed, 0);
        assert_eq!(report.latency.samples, 50);
        assert!(report.rides_per_s > 0.0);
        assert!(report.table().contains("create"));
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
