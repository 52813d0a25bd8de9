//! The `rides` command line: one binary, one subcommand per process kind.
//!
//! Every flag also reads an environment variable (`RIDES_…`), so a Procfile or a container
//! can configure the fleet without arguments. `serve` runs everything in one process; `api`,
//! `streamer`, `consumer`, `completer`, `reaper` and `trimmer` each run one piece, for a
//! Procfile-style fleet. `demo` runs the whole thing with faults and prints a verdict;
//! `verify` prints the same verdict for existing data.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use domain::Thresholds;

use crate::bench::{
    self, FleetBenchOptions, LogBenchOptions, RelayBenchOptions, SlowlorisOptions,
    StatsBenchOptions, StoreBenchOptions, Urls,
};
use crate::demo::{self, DemoOptions};
use crate::faults::{FaultConfig, Faults};
use crate::http::ServeOptions;
use crate::runtime::{OnFailure, Policy};
use crate::services::{Fleet, FleetConfig};
use crate::simulator::{self, SimConfig, SimStats};
use crate::telemetry::{LogFormat, LogOptions};
use crate::wiring;

/// Rocket Rides: an idempotent ride API on a transactional outbox and a pluggable log.
#[derive(Debug, Parser)]
#[command(name = "rides", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Flags shared by every subcommand.
    #[command(flatten)]
    pub common: Common,
    /// Where each setting came from (filled by [`crate::config::resolve`]).
    #[arg(skip)]
    pub provenance: crate::config::Provenance,
}

/// Flags shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// A TOML config file: keys are the flags' names in snake case (`lease_ttl_ms = 2000`);
    /// environment variables and flags override it (`rides config show`).
    #[arg(long, global = true, env = "RIDES_CONFIG")]
    pub config: Option<PathBuf>,
    /// The canonical store: memory://, sqlite://PATH, postgres://…
    #[arg(
        long,
        global = true,
        env = "RIDES_STORE",
        default_value = "sqlite://./data/rides.db"
    )]
    pub store: String,
    /// The log: memory://, sled://PATH, postgres://…, redis://…, kafka://HOST:PORT/TOPIC
    #[arg(
        long,
        global = true,
        env = "RIDES_LOG",
        default_value = "sled://./data/log"
    )]
    pub log: String,
    /// Where the API listens.
    #[arg(
        long,
        global = true,
        env = "RIDES_LISTEN",
        default_value = "127.0.0.1:5000"
    )]
    pub listen: SocketAddr,
    /// A key lock older than this is abandoned (ms).
    #[arg(
        long,
        global = true,
        env = "RIDES_LOCK_TIMEOUT_MS",
        default_value_t = 90_000
    )]
    pub lock_timeout_ms: i64,
    /// The completer leaves younger keys to client retries (ms).
    #[arg(
        long,
        global = true,
        env = "RIDES_COMPLETER_GRACE_MS",
        default_value_t = 300_000
    )]
    pub completer_grace_ms: i64,
    /// The completer skips keys run more recently than this (ms).
    #[arg(
        long,
        global = true,
        env = "RIDES_COMPLETER_LAST_RUN_MS",
        default_value_t = 60_000
    )]
    pub completer_last_run_ms: i64,
    /// The reaper deletes keys older than this (ms).
    #[arg(
        long,
        global = true,
        env = "RIDES_REAP_AFTER_MS",
        default_value_t = 259_200_000
    )]
    pub reap_after_ms: i64,
    /// Probability that the streamer sends a batch twice (default 0; the demo uses 0.1).
    #[arg(long, global = true, env = "RIDES_DOUBLE_SEND_RATE")]
    pub double_send_rate: Option<f64>,
    /// Probability that a consumer crashes before a commit (default 0; the demo uses 0.1).
    #[arg(long, global = true, env = "RIDES_CONSUMER_CRASH_RATE")]
    pub consumer_crash_rate: Option<f64>,
    /// Probability that a request crashes after its charge (default 0; the demo uses 0.1).
    #[arg(long, global = true, env = "RIDES_API_CRASH_RATE")]
    pub api_crash_rate: Option<f64>,
    /// Seed of the faults, the simulator and the fake payment processor.
    #[arg(long, global = true, env = "RIDES_SEED")]
    pub seed: Option<u64>,
    /// How long the streamer lets staged records gather after a wake-up, or behind a batch
    /// that was not full, before it reads the outbox again (ms; 0: never waits). Like
    /// Kafka's linger.ms: fewer, fuller appends under load, for at most this much latency.
    #[arg(long, global = true, env = "RIDES_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u64,
    /// How records reach the log: `streamer` (the streamer sends what phases staged), or
    /// `direct` (the API appends them right after each commit, and the streamer only sweeps
    /// records still staged after `--sweep-delay-ms`, e.g. after a crash).
    #[arg(long, global = true, env = "RIDES_PUBLISH", default_value = "streamer", value_parser = ["streamer", "direct"])]
    pub publish: String,
    /// Under `--publish direct`: how long a staged record waits before the streamer sends
    /// it (ms).
    #[arg(
        long,
        global = true,
        env = "RIDES_SWEEP_DELAY_MS",
        default_value_t = 5000
    )]
    pub sweep_delay_ms: u64,
    /// The TTL of the leases that keep one instance of each service (each consumer name, the
    /// streamer, completer, reaper and trimmer) active per store while the others stand by
    /// (ms; 0 runs without leases).
    #[arg(
        long,
        global = true,
        env = "RIDES_LEASE_TTL_MS",
        default_value_t = 5_000
    )]
    pub lease_ttl_ms: u64,
    /// What a consumer does with a record its handler failed `--max-attempts` times: `stop`
    /// (the consumer stops, saying why) or `park` (the record and its entity's later records
    /// go to the consumer's dead-letter list, and it goes on).
    #[arg(long, global = true, env = "RIDES_ON_FAILURE", default_value = "stop")]
    pub on_failure: OnFailure,
    /// The secondary datastore the sync consumer keeps equal to the store's rides:
    /// memory://, sqlite://PATH, postgres://…[?schema=S], redis://…[/PREFIX]; `auto` (the
    /// default) is a SQLite file beside a SQLite store (`./data/replica.db` otherwise), `none`
    /// runs without one. `serve` and `sync` keep it; `verify` compares it with the store.
    #[arg(long, global = true, env = "RIDES_REPLICA", default_value = "auto")]
    pub replica: String,
    /// The trimmer stops waiting for a consumer whose checkpoint has not moved for this long
    /// (seconds) while no instance of it runs, and says so loudly (off by default: a
    /// consumer holds trimming back until `rides consumer remove NAME`).
    #[arg(long, global = true, env = "RIDES_CONSUMER_EXPIRY_S")]
    pub consumer_expiry_s: Option<u64>,
    /// Attempts per failing record (with exponential back-off) before `--on-failure`.
    #[arg(long, global = true, env = "RIDES_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// The payment processor: fake:// (in process, the default) or stripe:// (Stripe's API;
    /// build with --features stripe; secret key from STRIPE_SECRET_KEY; options
    /// ?base=URL&timeout_ms=N&connect_timeout_ms=N&retries=N&source=TOKEN).
    #[arg(long, global = true, env = "RIDES_PAYMENTS", default_value = "fake://")]
    pub payments: String,
    /// Serve `GET /metrics` (Prometheus) on this address, for the processes without the API
    /// (streamer, consumer, sync, completer, reaper, trimmer); `serve` and `api` also serve it
    /// on `--listen`.
    #[arg(long, global = true, env = "RIDES_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How log lines look: text, or one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "RIDES_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// `-v`: the demo also shows its service logs on the terminal; `-vv`: log at debug level
    /// (RUST_LOG overrides the level).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Cli {
    /// Where and how this command logs: the demo to a file in its data directory (and the
    /// terminal with `-v`), every other command to standard error.
    pub fn log_options(&self) -> LogOptions {
        LogOptions {
            format: self.common.log_format,
            verbose: self.common.verbose,
            to_file: matches!(self.command, Command::Demo { .. }),
        }
    }
}

impl Common {
    /// The replica URL (`None` for `none`); `auto` resolves beside the store. With
    /// `existing`, an `auto` SQLite replica whose file does not exist is `None` (a read-only
    /// command must not create one).
    pub fn replica_url(&self, existing: bool) -> Option<String> {
        match self.replica.as_str() {
            "none" => None,
            "auto" => {
                let url = wiring::default_replica(&self.store);
                let missing = url
                    .strip_prefix("sqlite://")
                    .is_some_and(|p| !std::path::Path::new(p).exists());
                let nothing_there = missing || url == "memory://";
                (!(existing && nothing_there)).then_some(url)
            }
            url => Some(url.to_owned()),
        }
    }

    /// The sweep delay under `--publish direct` (`None`: publishing through the streamer).
    pub fn publish_direct(&self) -> Option<Duration> {
        (self.publish == "direct").then(|| Duration::from_millis(self.sweep_delay_ms))
    }

    /// The lease TTL (`None`: no leases).
    pub fn lease_ttl(&self) -> Option<Duration> {
        (self.lease_ttl_ms > 0).then(|| Duration::from_millis(self.lease_ttl_ms))
    }

    /// The consumers' retry and failure strategy.
    pub fn policy(&self) -> Policy {
        Policy {
            max_attempts: self.max_attempts.max(1),
            on_failure: self.on_failure,
        }
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            lock_timeout_ms: self.lock_timeout_ms,
            completer_grace_ms: self.completer_grace_ms,
            completer_last_run_ms: self.completer_last_run_ms,
            reap_after_ms: self.reap_after_ms,
        }
    }

    /// Fault rates, with `defaults` for the flags not given.
    fn faults(&self, defaults: FaultConfig) -> anyhow::Result<FaultConfig> {
        let c = FaultConfig {
            double_send_rate: self.double_send_rate.unwrap_or(defaults.double_send_rate),
            consumer_crash_rate: self
                .consumer_crash_rate
                .unwrap_or(defaults.consumer_crash_rate),
            api_crash_rate: self.api_crash_rate.unwrap_or(defaults.api_crash_rate),
            seed: self.seed.unwrap_or(defaults.seed),
        };
        for (name, r) in [
            ("--double-send-rate", c.double_send_rate),
            ("--consumer-crash-rate", c.consumer_crash_rate),
            ("--api-crash-rate", c.api_crash_rate),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&r),
                "{name} must be between 0 and 1, got {r}"
            );
        }
        Ok(c)
    }
}

/// `rides admin …`: operations on the store's data.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Forgets a user (a right-to-erasure request): deletes the user's rides, idempotency
    /// keys, audit records and the user in one transaction, with one `ride.deleted` change
    /// record per ride, so the consumers' totals and the replica drop them too.
    ForgetUser {
        /// The user's email.
        email: String,
    },
}

/// `rides ledger …`.
#[derive(Debug, Subcommand)]
pub enum LedgerAction {
    /// Every 201 of the ledger exists exactly once in `--store`, with exactly one charge, and
    /// no charge belongs to two rides (exit 1 otherwise).
    Check {
        /// The ledger written by `rides simulate --ledger`.
        #[arg(long)]
        ledger: PathBuf,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `rides consumer …`: looking after consumers.
#[derive(Debug, Subcommand)]
pub enum ConsumerAction {
    /// Every registered consumer: kind, log, position, last save, duplicates, parked records
    /// and lease holder.
    List,
    /// A consumer's parked records (its dead-letter list), oldest first.
    Parked {
        /// The consumer.
        name: String,
    },
    /// Delivers a consumer's parked records again, oldest first, and drops those that
    /// succeed from its dead-letter list. Takes the consumer's lease first: stop the running
    /// instances (or wait for their lease to expire).
    RetryParked {
        /// The consumer.
        name: String,
    },
    /// Deregisters a consumer: its checkpoint, state and dead-letter list are deleted and it
    /// no longer holds back log trimming.
    Remove {
        /// The consumer.
        name: String,
    },
}

/// How the API treats its clients (`serve` and `api`).
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// A connection's first request head must arrive within this of its accept, a later
    /// head within this of its first byte; else the connection is closed (ms).
    #[arg(long, env = "RIDES_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// A request body must arrive within this of the end of its head; else 408 (ms).
    #[arg(long, env = "RIDES_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// How long a connection may stay idle between requests (ms).
    #[arg(long, env = "RIDES_KEEPALIVE_TIMEOUT_MS", default_value_t = 60_000)]
    pub keepalive_timeout_ms: u64,
    /// The most connections open at once (default: the file-descriptor limit minus a
    /// tenth, at least 64, kept for the store, the log and files). At the cap a new
    /// connection replaces the longest-open one without a request in flight, or is refused
    /// with a 503 when all have one.
    #[arg(long, env = "RIDES_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Honour `raise_error=true` (the reference's test switch: the charge phase fails with
    /// a 500). Without it such a request is a 400.
    #[arg(long, env = "RIDES_ALLOW_TEST_ERRORS")]
    pub allow_test_errors: bool,
}

impl HttpArgs {
    /// Puts these settings on `config`.
    fn apply(&self, config: &mut FleetConfig) -> anyhow::Result<()> {
        for (name, ms) in [
            ("--header-timeout-ms", self.header_timeout_ms),
            ("--body-timeout-ms", self.body_timeout_ms),
            ("--keepalive-timeout-ms", self.keepalive_timeout_ms),
        ] {
            anyhow::ensure!(ms > 0, "{name} must be positive");
        }
        anyhow::ensure!(
            self.max_connections != Some(0),
            "--max-connections must be positive"
        );
        config.http = ServeOptions {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms),
            max_connections: self.max_connections,
            ..ServeOptions::default()
        };
        config.allow_test_errors = self.allow_test_errors;
        Ok(())
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The API and every background service in one process.
    Serve {
        /// The distance consumers to run.
        #[arg(
            long,
            env = "RIDES_CONSUMERS",
            value_delimiter = ',',
            default_value = "distance-a,distance-b"
        )]
        consumers: Vec<String>,
        /// The API's timeouts, connection cap and test switch.
        #[command(flatten)]
        http: HttpArgs,
    },
    /// The HTTP API only.
    Api {
        /// The API's timeouts, connection cap and test switch.
        #[command(flatten)]
        http: HttpArgs,
    },
    /// The streamer only (outbox → log).
    Streamer,
    /// One distance consumer.
    #[command(args_conflicts_with_subcommands = true)]
    Consumer {
        /// Its name (its checkpoint's key).
        #[arg(long, env = "RIDES_CONSUMER_NAME")]
        name: Option<String>,
        /// Run it per lane of the log (Kafka partitions): one lease, checkpoint and marks
        /// per lane (`NAME/lane-k`), the lanes shared fairly by every instance started this
        /// way, so up to one instance per lane work in parallel. Choose once per consumer.
        #[arg(long, env = "RIDES_PER_LANE")]
        per_lane: bool,
        /// Look after consumers instead of running one.
        #[command(subcommand)]
        action: Option<ConsumerAction>,
    },
    /// The sync consumer only: keeps the replica (`--to URL`, or `--replica`) equal to the
    /// store's rides.
    Sync {
        /// The replica (overrides `--replica`).
        #[arg(long)]
        to: Option<String>,
    },
    /// Operations on the store's data (`forget-user`).
    Admin {
        /// What to do.
        #[command(subcommand)]
        what: AdminCommand,
    },
    /// The completer only.
    Completer,
    /// The reaper only.
    Reaper,
    /// The log trimmer only.
    Trimmer,
    /// The load generator, against a running API.
    Simulate {
        /// The API's base URL.
        #[arg(long, env = "RIDES_URL", default_value = "http://127.0.0.1:5000")]
        url: String,
        /// Rides to request.
        #[arg(long, env = "RIDES_RIDES", default_value_t = 100)]
        rides: u64,
        /// Concurrent clients.
        #[arg(long, env = "RIDES_CONCURRENCY", default_value_t = 4)]
        concurrency: usize,
        /// Record each ride's final answer (user, key, status) in this file, one JSON line
        /// each, for `rides ledger check`.
        #[arg(long)]
        ledger: Option<PathBuf>,
    },
    /// Checks a load run's client-side ledger against the store, key by key.
    Ledger {
        /// What to do.
        #[command(subcommand)]
        action: LedgerAction,
    },
    /// Creates or upgrades the store's and the log's schemas, then exits.
    Migrate,
    /// Compares every consumer with the store's truth; exit 0 iff all agree.
    Verify {
        /// Print the verdict as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The whole fleet with the simulator and faults, then a verdict.
    Demo {
        /// Rides to simulate.
        #[arg(long, env = "RIDES_RIDES", default_value_t = 2000)]
        rides: u64,
        /// Concurrent simulated clients.
        #[arg(long, env = "RIDES_CONCURRENCY", default_value_t = 32)]
        concurrency: usize,
        /// The data directory (default `./data/demo-<seed>`, wiped first if an earlier demo
        /// made it). --store/--log given explicitly win over it.
        #[arg(long, env = "RIDES_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The longest wait for convergence after the simulator is done (s).
        #[arg(long, env = "RIDES_SETTLE_TIMEOUT_S", default_value_t = 180)]
        settle_timeout_s: u64,
        /// Print the verdict as one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// The event-sourcing runtime: workers, consumer groups.
    Es {
        /// What to do.
        #[command(subcommand)]
        what: EsCommand,
    },
    /// Log operations: swap the log of a running system, or show where records go.
    Log {
        /// What to do.
        #[command(subcommand)]
        what: LogCommand,
    },
    /// The configuration: `show` prints the effective settings and their sources.
    Config {
        /// What to do.
        #[command(subcommand)]
        what: crate::config::ConfigCommand,
    },
    /// The project's own benchmarks (run them from a release build).
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        what: BenchCommand,
    },
}

/// The operations of `rides es`.
#[derive(Debug, Subcommand)]
pub enum EsCommand {
    /// Runs N workers and the housekeeper over the store's event store until Ctrl-C.
    Work {
        /// Workers in this process.
        #[arg(long, env = "RIDES_ES_WORKERS", default_value_t = 2)]
        workers: usize,
    },
    /// Handles every pending batch of every group once, then exits.
    Drain,
    /// The dispatch example's topology (commands → events → reactions → read models),
    /// declared in code.
    Topology {
        /// `json` or `mermaid`.
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// The ride dispatch example on the runtime with faults (workers killed, mailer
    /// failures, duplicate deliveries), then a verdict. On a fresh SQLite file by default;
    /// on Postgres when `--store` is a Postgres URL.
    Demo {
        /// Rides to request.
        #[arg(long, default_value_t = 40)]
        rides: usize,
        /// Pilots online.
        #[arg(long, default_value_t = 5)]
        pilots: usize,
        /// A ride waiting longer for a pilot is cancelled (ms).
        #[arg(long, default_value_t = 3_000)]
        timeout_ms: i64,
        /// The random seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Print the verdict as one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
    /// Every consumer group: status, oldest and newest processed positions, streams, lag,
    /// retry time, and its failing (backing-off or parked) streams.
    Groups {
        /// Print the groups as one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Stops a group (no more claims).
    Stop {
        /// The group.
        group: String,
        /// Why (shown by `groups`).
        #[arg(long, default_value = "stopped by an operator")]
        reason: String,
    },
    /// Starts a stopped (or paused) group.
    Start {
        /// The group.
        group: String,
    },
    /// Replays a group from the beginning; messages it had handled come with `replaying`.
    Reset {
        /// The group.
        group: String,
    },
    /// Resumes a parked (or backing-off) stream of a group.
    Retry {
        /// The group.
        group: String,
        /// The stream.
        stream: String,
    },
}

/// The operations of `rides log`.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Moves publishing from the current log to `--to` while everything keeps running: the
    /// streamer seals the old log, consumers finish it and continue on the new one.
    Cutover {
        /// The new log's URL (any `--log` URL; the store's own Postgres URL for the
        /// Postgres-only log).
        #[arg(long, env = "RIDES_CUTOVER_TO")]
        to: String,
    },
    /// Where records are published now, which log each consumer reads, and the records
    /// consumers found lost (exit code 3 when there are any).
    Status,
    /// Re-stages, from the canonical store, the records consumers found lost, under their
    /// original producer and sequence; reports what cannot be rebuilt (exit code 3 while
    /// such records are not acknowledged).
    Repair {
        /// Also accept the loss of what cannot be rebuilt: consumers stop reporting it.
        #[arg(long)]
        acknowledge: bool,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// The benchmarks of `rides bench`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append, read and end-to-end latency of the `--log`, next to a raw-driver baseline
    /// (Redis, Postgres). Without an explicit `--log`: a temporary sled log.
    Log {
        /// Records to append and read back.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Records per append.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Single-record appends measured for the end-to-end latency.
        #[arg(long, default_value_t = 200)]
        latency_samples: usize,
        /// Skip the raw-driver baseline.
        #[arg(long)]
        no_baseline: bool,
        /// Print the report as one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// `create_ride` throughput and latency on the `--store`, without HTTP, next to the
    /// reference design (rocket-rides-atomic's four transactions per ride) on the same
    /// database, driver, isolation and concurrency. Without an explicit `--store`: a
    /// temporary SQLite file.
    Store {
        /// Rides to create (per design).
        #[arg(long, default_value_t = 2000)]
        rides: u64,
        /// Concurrent tasks.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Skip the reference design.
        #[arg(long)]
        no_baseline: bool,
        /// Print the report as one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// The streamer moving `--records` staged records from the `--store`'s outbox to the
    /// `--log` until the outbox is empty, next to the store side's limit (one `DELETE …
    /// RETURNING` per 1000 records). Without explicit URLs: a temporary SQLite store and
    /// sled log.
    Relay {
        /// Records to stage and move.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Skip the store-side baseline.
        #[arg(long)]
        no_baseline: bool,
        /// Print the report as one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// The whole fleet as `rides serve` runs it (HTTP API, streamer, consumers, …) at a fixed
    /// request rate: CPU milliseconds per ride (this process, and local `postgres` /
    /// `redis-server` processes) and commit-to-consumed latency. Without explicit URLs: a
    /// temporary SQLite store and sled log.
    Fleet {
        /// Rides requested per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Seconds of load.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Print the report as one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// `POST /rides` latency of the whole fleet at a fixed rate, without and then with
    /// `--flooders` clients sending `GET /stats` back to back: the ratio shows what stats
    /// cost the API. Without explicit URLs: a temporary SQLite store and sled log.
    Stats {
        /// Rides requested per second in each run.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of load per run.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Clients flooding `GET /stats`.
        #[arg(long, default_value_t = 16)]
        flooders: usize,
        /// Print the report as one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
    },
    /// Slow-header and idle connections against a running API (`--target`), with a normal
    /// client beside them: how long the server keeps them, and how the normal client fares.
    /// One process holds at most its descriptor limit; scripts/slowloris.sh runs the full
    /// 3000 slow + 20 000 idle from several.
    Slowloris {
        /// The API's address.
        #[arg(long, default_value = "127.0.0.1:5000")]
        target: SocketAddr,
        /// Slow-header connections (a header line every --trickle-ms, never the end).
        #[arg(long, default_value_t = 3000)]
        slow: usize,
        /// Idle connections (they send nothing).
        #[arg(long, default_value_t = 20_000)]
        idle: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// How often a slow connection sends a header line (ms).
        #[arg(long, default_value_t = 1000)]
        trickle_ms: u64,
        /// How often the normal client sends `GET /healthz` on a new connection (ms).
        #[arg(long, default_value_t = 100)]
        probe_ms: u64,
        /// No normal client.
        #[arg(long)]
        no_probe: bool,
        /// The server's header timeout, to count the connections closed within it (ms).
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Print the report as one JSON object on the last line of stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Whether the flag `id` (e.g. `--store`) or the variable `env` was given explicitly.
fn explicit(id: &str, env: &str) -> bool {
    std::env::args().any(|a| a == id || a.starts_with(&format!("{id}=")))
        || std::env::var_os(env).is_some()
}

/// The store and the log of a benchmark that runs both, and whether each was given.
fn bench_urls(common: &Common) -> Urls {
    Urls {
        store: common.store.clone(),
        store_explicit: explicit("--store", "RIDES_STORE"),
        log: common.log.clone(),
        log_explicit: explicit("--log", "RIDES_LOG"),
    }
}

/// Prints a report: a table on stdout, or with `json` the table on stderr and one JSON object
/// on the last line of stdout.
fn print_report(table: &str, report: &impl serde::Serialize, json: bool) -> anyhow::Result<()> {
    if json {
        eprint!("{table}");
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

/// Waits for SIGINT or SIGTERM.
async fn signalled() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT: draining"),
        () = term => tracing::info!("SIGTERM: draining"),
    }
}

/// Runs a fleet until a signal (drain, exit 0) or until a task ends by itself (exit 1).
async fn run_fleet(common: &Common, mut config: FleetConfig) -> anyhow::Result<i32> {
    let mut stores = wiring::open_store(&common.store).await?;
    if config.sync
        && let Some(url) = common.replica_url(false)
    {
        stores = stores.with_replica(&url).await?;
    }
    let log = wiring::open_log(&common.log, &stores).await?;
    config.thresholds = common.thresholds();
    config.lease_ttl = common.lease_ttl();
    config.consumer_policy = common.policy();
    config.consumer_expiry = common.consumer_expiry_s.map(Duration::from_secs);
    config.intervals.streamer_linger = Duration::from_millis(common.linger_ms);
    config.metrics_listen = common.metrics_listen;
    config.publish_direct = common.publish_direct();
    let faults = common.faults(FaultConfig::none())?;
    config.seed = faults.seed;
    // Only the API and the completer charge (a consumer needs no Stripe key).
    if config.listen.is_some() || config.completer {
        config.payments = Some(wiring::open_payments(&common.payments, faults.seed)?);
    }
    config.faults = Arc::new(Faults::new(faults));
    let mut fleet = Fleet::start(&stores, &log, config).await?;
    if let Some(addr) = fleet.addr() {
        tracing::info!(%addr, store = %stores.store.describe(), log = %log.log.describe(), "listening");
    }
    if let Some(addr) = fleet.metrics_addr() {
        tracing::info!(%addr, "serving GET /metrics");
    }
    let ended = tokio::select! {
        () = signalled() => None,
        ended = fleet.wait() => ended,
    };
    fleet.stop(Duration::from_secs(30)).await;
    Ok(match ended {
        None => 0,
        Some(task) => {
            tracing::error!(%task, "a task stopped by itself");
            1
        }
    })
}

/// Runs the parsed command line; returns the process exit code.
///
/// # Errors
/// When the store or the log cannot be opened, or a service cannot start.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let common = &cli.common;
    let only = |f: fn(&mut FleetConfig)| {
        let mut c = FleetConfig::nothing();
        f(&mut c);
        c
    };
    match cli.command {
        Command::Serve { consumers, http } => {
            let mut config = FleetConfig {
                consumers,
                ..FleetConfig::everything(Some(common.listen))
            };
            http.apply(&mut config)?;
            run_fleet(common, config).await
        }
        Command::Api { http } => {
            let mut c = FleetConfig::nothing();
            c.listen = Some(common.listen);
            http.apply(&mut c)?;
            run_fleet(common, c).await
        }
        Command::Streamer => run_fleet(common, only(|c| c.streamer = true)).await,
        Command::Consumer {
            name: Some(name),
            action: None,
            per_lane,
        } => {
            let mut c = FleetConfig::nothing();
            c.consumers = vec![name];
            c.per_lane = per_lane;
            run_fleet(common, c).await
        }
        Command::Consumer {
            action: Some(action),
            ..
        } => crate::consumers::run(common, action).await,
        Command::Consumer {
            name: None,
            action: None,
            ..
        } => {
            anyhow::bail!(
                "rides consumer needs --name NAME (to run one) or a subcommand (list, parked, retry-parked, remove)"
            )
        }
        Command::Sync { to } => {
            let mut common = common.clone();
            if let Some(to) = to {
                common.replica = to;
            }
            anyhow::ensure!(
                common.replica != "none",
                "rides sync needs a replica: --to URL"
            );
            run_fleet(&common, only(|c| c.sync = true)).await
        }
        Command::Admin {
            what: AdminCommand::ForgetUser { email },
        } => {
            wiring::require_existing("store", &common.store, "rides admin forget-user")?;
            let stores = wiring::open_store(&common.store).await?;
            let now = ports::Clock::now_ms(&ports::SystemClock);
            let gone = stores.store.forget_user(&email, now).await?;
            tracing::warn!(
                user_id = gone.user_id,
                rides = gone.rides,
                keys = gone.keys,
                "user forgotten"
            );
            println!(
                "forgot {email}: {} rides and {} keys deleted; {} ride.deleted change records staged for the consumers and the replica",
                gone.rides, gone.keys, gone.rides
            );
            Ok(0)
        }
        Command::Completer => run_fleet(common, only(|c| c.completer = true)).await,
        Command::Reaper => run_fleet(common, only(|c| c.reaper = true)).await,
        Command::Trimmer => run_fleet(common, only(|c| c.trimmer = true)).await,
        Command::Ledger {
            action: LedgerAction::Check { ledger, json },
        } => {
            wiring::require_existing("store", &common.store, "ledger check")?;
            let stores = wiring::open_store(&common.store).await?;
            let report = crate::ledger::check(stores.store.as_ref(), &ledger).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "ledger {}: {} answers, {} created: {} missing, {} uncharged, {} charges shared by two rides, {} repeated keys: {}",
                    ledger.display(),
                    report.answers,
                    report.created,
                    report.missing,
                    report.uncharged,
                    report.shared_charges,
                    report.repeated_keys,
                    if report.ok { "OK" } else { "FAILED" }
                );
                for example in &report.examples {
                    println!("  {example}");
                }
            }
            Ok(if report.ok { 0 } else { 1 })
        }
        Command::Simulate {
            url,
            rides,
            concurrency,
            ledger,
        } => {
            let stop = tokio_util::sync::CancellationToken::new();
            let s = stop.clone();
            tokio::spawn(async move {
                signalled().await;
                s.cancel();
            });
            let mut config = SimConfig::new(url, rides, concurrency, common.seed.unwrap_or(0));
            if let Some(path) = &ledger {
                config.ledger = Some(Arc::new(crate::ledger::LedgerWriter::create(path)?));
            }
            let report = simulator::simulate(config, Arc::new(SimStats::default()), stop).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(0)
        }
        Command::Migrate => {
            let stores = wiring::open_store(&common.store).await?;
            let log = wiring::open_log(&common.log, &stores).await?;
            stores.store.ping().await?;
            log.log.ping().await?;
            println!(
                "migrated: store {}, log {}",
                stores.store.describe(),
                log.log.describe()
            );
            Ok(0)
        }
        Command::Verify { json } => {
            wiring::require_existing("store", &common.store, "verify")?;
            wiring::require_existing("log", &common.log, "verify")?;
            let mut stores = wiring::open_store(&common.store).await?;
            if let Some(url) = common.replica_url(true) {
                stores = stores.with_replica(&url).await?;
            }
            let log = wiring::open_log(&common.log, &stores).await?;
            let v = demo::collect_verdict(&stores, &log).await?;
            if json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                print!("{}", v.table());
            }
            Ok(if v.agree { 0 } else { 1 })
        }
        Command::Demo {
            rides,
            concurrency,
            data_dir,
            settle_timeout_s,
            json,
        } => {
            let seed = common.seed.unwrap_or(7);
            let mut opts = DemoOptions::new(rides, seed);
            opts.concurrency = concurrency.max(1);
            opts.data_dir = data_dir;
            opts.settle_timeout = Duration::from_secs(settle_timeout_s);
            opts.faults = common.faults(FaultConfig::demo(seed))?;
            opts.streamer_linger = Duration::from_millis(common.linger_ms);
            // Explicit URLs (flag or env) win over the data dir.
            let explicit =
                |id: &str| std::env::args().any(|a| a == id || a.starts_with(&format!("{id}=")));
            let from_file = |key: &str| cli.provenance.from_file(key);
            if explicit("--store")
                || std::env::var_os("RIDES_STORE").is_some()
                || from_file("store")
            {
                opts.store = Some(common.store.clone());
            }
            if explicit("--log") || std::env::var_os("RIDES_LOG").is_some() || from_file("log") {
                opts.log = Some(common.log.clone());
            }
            if common.replica != "auto" {
                opts.replica = Some(common.replica.clone());
            }
            opts.payments = Some(wiring::open_payments(&common.payments, seed)?);
            // With --json, the JSON line is all the demo prints (logs go to its file).
            opts.progress = !json;
            let v = demo::run_demo(opts).await?;
            if json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                print!("{}", v.table());
                if let Some(path) = &v.log_file {
                    let (warnings, errors) = crate::telemetry::counts();
                    println!("service logs: {path} ({warnings} warnings, {errors} errors)");
                }
            }
            Ok(if v.agree { 0 } else { 1 })
        }
        Command::Config {
            what: crate::config::ConfigCommand::Show,
        } => {
            print!("{}", cli.provenance.render());
            Ok(0)
        }
        Command::Es { what } => crate::es::cli::run(common, what).await,
        Command::Log { what } => {
            let command = match &what {
                LogCommand::Cutover { .. } => "log cutover",
                LogCommand::Status => "log status",
                LogCommand::Repair { .. } => "log repair",
            };
            wiring::require_existing("store", &common.store, command)?;
            if let LogCommand::Repair { acknowledge, json } = what {
                // Only the store: the log it repairs need not be reachable.
                let stores = wiring::open_store(&common.store).await?;
                let now = ports::Clock::now_ms(&ports::SystemClock);
                let report = crate::repair::repair(&stores, acknowledge, now).await?;
                print_report(&report.table(), &report, json)?;
                return Ok(if report.unrecoverable > 0 && !report.acknowledged {
                    3
                } else {
                    0
                });
            }
            wiring::require_existing("log", &common.log, command)?;
            let stores = wiring::open_store(&common.store).await?;
            let log = wiring::open_log(&common.log, &stores).await?;
            match what {
                LogCommand::Cutover { to } => {
                    let from =
                        crate::cutover::request(&stores, &log, &to, &ports::SystemClock).await?;
                    println!(
                        "cutover staged: records committed from now on go to {to}; the streamer seals {from} when it reaches the cutover record, and each consumer continues on {to} after the seal (watch with `rides log status`)"
                    );
                }
                LogCommand::Status => {
                    let s = crate::cutover::status(&stores, &log).await?;
                    println!(
                        "publishing on {} (after seq {})",
                        s.publishing_on, s.after_seq
                    );
                    for (name, on) in s.consumers {
                        println!("consumer {name} reads {on}");
                    }
                    for (name, gap) in &s.gaps {
                        println!(
                            "LOST RECORDS: consumer {name} is missing {gap} (detected at {} ms): run `rides log repair`",
                            gap.detected_at_ms
                        );
                    }
                    if !s.gaps.is_empty() {
                        return Ok(3);
                    }
                }
                LogCommand::Repair { .. } => unreachable!("handled above"),
            }
            Ok(0)
        }
        Command::Bench { what } => match what {
            BenchCommand::Log {
                records,
                batch,
                latency_samples,
                no_baseline,
                json,
            } => {
                let mut opts = LogBenchOptions::new(common.log.clone());
                opts.explicit = explicit("--log", "RIDES_LOG");
                opts.records = records;
                opts.batch = batch;
                opts.latency_samples = latency_samples;
                opts.baseline = !no_baseline;
                let report = bench::bench_log(opts).await?;
                print_report(&report.table(), &report, json)?;
                Ok(0)
            }
            BenchCommand::Store {
                rides,
                concurrency,
                no_baseline,
                json,
            } => {
                let mut opts = StoreBenchOptions::new(common.store.clone());
                opts.explicit = explicit("--store", "RIDES_STORE");
                opts.rides = rides;
                opts.concurrency = concurrency;
                opts.baseline = !no_baseline;
                let report = bench::bench_store(opts).await?;
                print_report(&report.table(), &report, json)?;
                let failed = report.failed + report.baseline_failed.unwrap_or(0);
                Ok(if failed == 0 { 0 } else { 1 })
            }
            BenchCommand::Relay {
                records,
                no_baseline,
                json,
            } => {
                let mut opts = RelayBenchOptions::new(bench_urls(common));
                opts.records = records;
                opts.baseline = !no_baseline;
                let report = bench::bench_relay(opts).await?;
                print_report(&report.table(), &report, json)?;
                Ok(0)
            }
            BenchCommand::Fleet {
                rate,
                seconds,
                json,
            } => {
                let mut opts = FleetBenchOptions::new(bench_urls(common));
                opts.rate = rate;
                opts.seconds = seconds;
                opts.publish_direct = common.publish_direct();
                let report = bench::bench_fleet(opts).await?;
                print_report(&report.table(), &report, json)?;
                Ok(if report.failed == 0 && report.settled && report.agree {
                    0
                } else {
                    1
                })
            }
            BenchCommand::Stats {
                rate,
                seconds,
                flooders,
                json,
            } => {
                let mut opts = StatsBenchOptions::new(bench_urls(common));
                opts.rate = rate;
                opts.seconds = seconds;
                opts.flooders = flooders;
                let report = bench::bench_stats(opts).await?;
                print_report(&report.table(), &report, json)?;
                Ok(if report.baseline.failed + report.flood.failed == 0 {
                    0
                } else {
                    1
                })
            }
            BenchCommand::Slowloris {
                target,
                slow,
                idle,
                seconds,
                trickle_ms,
                probe_ms,
                no_probe,
                timeout_ms,
                json,
            } => {
                let mut opts = SlowlorisOptions::new(target);
                opts.slow = slow;
                opts.idle = idle;
                opts.seconds = seconds;
                opts.trickle = Duration::from_millis(trickle_ms.max(1));
                opts.probe = (!no_probe).then(|| Duration::from_millis(probe_ms.max(1)));
                opts.timeout = Duration::from_millis(timeout_ms);
                let report = bench::bench_slowloris(opts).await?;
                print_report(&report.table(), &report, json)?;
                Ok(0)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults_and_consumer_list() {
        let cli = Cli::try_parse_from(["rides", "serve", "--consumers", "a,b,c"]).unwrap();
        assert!(
            matches!(cli.command, Command::Serve { ref consumers, .. } if consumers == &["a", "b", "c"])
        );
        assert_eq!(cli.common.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(cli.common.thresholds(), Thresholds::default());
    }

    #[test]
    fn the_linger_is_a_flag_in_milliseconds() {
        let cli = Cli::try_parse_from(["rides", "streamer", "--linger-ms", "0"]).unwrap();
        assert_eq!(cli.common.linger_ms, 0);
        let cli = Cli::try_parse_from(["rides", "serve", "--linger-ms", "20"]).unwrap();
        assert_eq!(cli.common.linger_ms, 20);
        if std::env::var_os("RIDES_LINGER_MS").is_none() {
            let cli = Cli::try_parse_from(["rides", "streamer"]).unwrap();
            assert_eq!(cli.common.linger_ms, 5);
        }
    }

    #[test]
    fn http_flags_reach_the_fleet_config() {
        let cli = Cli::try_parse_from([
            "rides",
            "api",
            "--header-timeout-ms",
            "2000",
            "--body-timeout-ms",
            "3000",
            "--keepalive-timeout-ms",
            "4000",
            "--max-connections",
            "500",
            "--allow-test-errors",
        ])
        .unwrap();
        let Command::Api { http } = cli.command else {
            panic!("api");
        };
        let mut config = FleetConfig::nothing();
        http.apply(&mut config).unwrap();
        assert_eq!(config.http.header_timeout, Duration::from_secs(2));
        assert_eq!(config.http.body_timeout, Duration::from_secs(3));
        assert_eq!(config.http.keepalive_timeout, Duration::from_secs(4));
        assert_eq!(config.http.max_connections, Some(500));
        assert!(config.allow_test_errors);
        if std::env::var_os("RIDES_ALLOW_TEST_ERRORS").is_none() {
            let cli = Cli::try_parse_from(["rides", "serve"]).unwrap();
            let Command::Serve { http, .. } = cli.command else {
                panic!("serve");
            };
            assert!(!http.allow_test_errors, "test errors are off by default");
            assert_eq!(http.max_connections, None);
        }
        let cli = Cli::try_parse_from(["rides", "api", "--max-connections", "0"]).unwrap();
        let Command::Api { http } = cli.command else {
            panic!("api");
        };
        assert!(http.apply(&mut FleetConfig::nothing()).is_err());
    }

    #[test]
    fn fault_rates_default_to_zero_outside_the_demo_and_are_checked() {
        let cli = Cli::try_parse_from(["rides", "api"]).unwrap();
        assert_eq!(
            cli.common.faults(FaultConfig::none()).unwrap(),
            FaultConfig::none()
        );
        let cli = Cli::try_parse_from(["rides", "api", "--api-crash-rate", "2"]).unwrap();
        assert!(cli.common.faults(FaultConfig::none()).is_err());
    }
}
