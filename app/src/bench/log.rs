//! `rides bench log`: append, read and end-to-end latency of one log, next to a raw-driver
//! baseline (see the module docs of [`super`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::LogRecord;
use ports::{Log, Position};
use serde::Serialize;

use super::{
    Latency, Resp, Scratch, Throughput, fresh_log, progress, psql, ride_records, scheme,
    unique_suffix,
};
use crate::wiring;

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
    let url = fresh_log(&opts.url, opts.explicit, scratch).await?;
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
    let scheme = scheme(url);
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
            let Some((conn, schema)) = scratch.pg_schemas.first() else {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
