//! Wiring: the ONLY place that turns URLs into adapters.
//!
//! Everything else in the app talks to `Arc<dyn Port>`s. A URL's scheme picks the backend:
//!
//! | scheme | store (`--store`) | log (`--log`) | feature |
//! |---|---|---|---|
//! | `memory://` | in-process, lost at exit | in-process | always |
//! | `sqlite://PATH` | SQLite file (+ outbox + consumer state) | - | `sqlite` |
//! | `sled://PATH` | - | embedded sled tree | `sled` |
//! | `postgres://…[?listen=false&migrate=false&schema=NAME]` | Postgres | outbox table (same URL: no streamer) or a log table | `postgres` |
//! | `redis://…[/STREAM][?stream=NAME]` | - | Redis stream (default `rides`) | `redis` |
//! | `kafka://HOST:PORT[,HOST:PORT]/TOPIC[?partitions=N]` | - | Kafka topic (created on connect) | `kafka` |
//!
//! The payment processor (`--payments`, [`open_payments`]) is chosen the same way:
//!
//! | scheme | processor | feature |
//! |---|---|---|
//! | `fake://` (default) | the in-process fake processor with the reference's outcomes | always |
//! | `stripe://[?base=URL&timeout_ms=N&connect_timeout_ms=N&retries=N&source=TOKEN]` | Stripe's HTTP API, secret key from `STRIPE_SECRET_KEY` | `stripe` |
//!
//! A scheme whose cargo feature is not compiled in is a typed error
//! ([`WiringError::FeatureNotEnabled`]) that says how to build it (STYLE rule 20: a
//! `#[cfg(feature)]` arm beside a `#[cfg(not(feature))]` arm).
//!
//! A `memory://` store and a `memory://` log share nothing: they are two independent objects,
//! exactly as a SQLite store and a sled log would be. When the log is Postgres and its URL is
//! the store's URL, the log *is* the store's outbox table (read in commit order), so no
//! streamer is needed.

use std::path::Path;
use std::sync::Arc;

use ports::{ConsumerStore, Log, LogError, Outbox, PaymentGateway, RideStore};
use thiserror::Error;

/// The producer name of the stores opened here (travels with every record's sequence).
pub const PRODUCER: &str = "rides";

/// Why a URL could not be wired.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WiringError {
    /// The scheme is known but its cargo feature was not compiled in.
    #[error(
        "the {role} URL {url} needs the `{feature}` feature: cargo run -p app --features {feature} -- …"
    )]
    FeatureNotEnabled {
        /// `store`, `log` or `payments`.
        role: &'static str,
        /// The URL, without its password.
        url: String,
        /// The cargo feature to enable.
        feature: &'static str,
    },
    /// The scheme is not one this build knows for that role.
    #[error("unsupported {role} URL {url}: expected one of {supported}")]
    UnknownScheme {
        /// `store`, `log` or `payments`.
        role: &'static str,
        /// The URL, without its password.
        url: String,
        /// The schemes that this role supports.
        supported: &'static str,
    },
    /// The URL has no path or is malformed.
    #[error("invalid {role} URL {url}: {why}")]
    Invalid {
        /// `store`, `log` or `payments`.
        role: &'static str,
        /// The URL, without its password.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
}

const STORE_SCHEMES: &str = "memory://, sqlite://PATH, postgres://…";
const PAYMENT_SCHEMES: &str = "fake://, stripe://";
/// The environment variable that holds Stripe's secret key (never a flag: flags show in `ps`).
pub const STRIPE_SECRET_KEY_ENV: &str = "STRIPE_SECRET_KEY";
const LOG_SCHEMES: &str = "memory://, sled://PATH, postgres://…, redis://…, kafka://…";
const REPLICA_SCHEMES: &str =
    "memory://, sqlite://PATH, postgres://…[?schema=S], redis://…[/PREFIX]";

/// The three views of one canonical store.
#[derive(Clone)]
pub struct Stores {
    /// The canonical store.
    pub store: Arc<dyn RideStore>,
    /// Its outbox (read by the streamer).
    pub outbox: Arc<dyn Outbox>,
    /// Its consumer state store.
    pub consumers: Arc<dyn ConsumerStore>,
    /// Its event store (the event-sourcing layer's streams, in the same database; appended
    /// messages are staged in this store's outbox in the same transaction).
    pub events: Arc<dyn ports::EventStore>,
    /// The same event store's consumer groups, claims and scheduled messages (the
    /// background runtime's port).
    pub reactors: Arc<dyn ports::ReactorStore>,
    /// The URL it was opened from.
    pub url: String,
    /// The secondary datastore kept in sync with it, when one is configured
    /// ([`Stores::with_replica`]): the fleet runs the sync consumer into it, and the verdict
    /// compares it with the store row by row.
    pub replica: Option<Replica>,
    #[cfg(feature = "postgres")]
    postgres: Option<Arc<adapters::postgres::PostgresStore>>,
}

/// A secondary datastore and the URL it was opened from.
#[derive(Clone)]
pub struct Replica {
    /// The replica.
    pub replica: Arc<dyn ports::Replica>,
    /// Its URL.
    pub url: String,
}

impl Stores {
    /// Opens the replica at `url` and keeps it with these stores.
    ///
    /// # Errors
    /// As [`open_replica`].
    pub async fn with_replica(mut self, url: &str) -> anyhow::Result<Self> {
        self.replica = Some(Replica {
            replica: open_replica(url).await?,
            url: url.to_owned(),
        });
        Ok(self)
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

/// An opened log, and whether a streamer must feed it from the outbox.
///
/// It also knows how to open the *other* logs a log cutover may lead to
/// ([`OpenedLog::follow`]): every log URL is opened once per process and kept (a sled log can
/// be opened by one handle per process only), so the streamer, the consumers, the trimmer and
/// the verdict all share one handle per log.
#[derive(Clone)]
pub struct OpenedLog {
    /// The log.
    pub log: Arc<dyn Log>,
    /// `false` when the log reads the store's outbox directly (Postgres log on the store).
    pub needs_streamer: bool,
    /// The URL it was opened from (the identity of the log in cutover records).
    pub url: String,
    registry: LogRegistry,
}

/// A log handle and whether a streamer must feed it.
type LogHandle = (Arc<dyn Log>, bool);

/// The logs of this process, by URL.
#[derive(Clone)]
struct LogRegistry {
    stores: Stores,
    opened: Arc<tokio::sync::Mutex<std::collections::HashMap<String, LogHandle>>>,
}

impl OpenedLog {
    /// The log at `url`: this one when `url` is its own URL, else the process's handle on
    /// that log, opened on first use.
    ///
    /// # Errors
    /// As [`open_log`].
    pub async fn follow(&self, url: &str) -> anyhow::Result<OpenedLog> {
        if url == self.url {
            return Ok(self.clone());
        }
        let mut opened = self.registry.opened.lock().await;
        let (log, needs_streamer) = match opened.get(url) {
            Some(found) => found.clone(),
            None => {
                let fresh = open_log_once(url, &self.registry.stores).await?;
                opened.insert(url.to_owned(), fresh.clone());
                fresh
            }
        };
        Ok(OpenedLog {
            log,
            needs_streamer,
            url: url.to_owned(),
            registry: self.registry.clone(),
        })
    }

    /// Whether `url` names this log (`None` names the log the process was started with,
    /// which consumers that never saw a cutover are on).
    pub fn is(&self, url: Option<&str>) -> bool {
        url.is_none_or(|u| u == self.url)
    }
}

impl std::fmt::Debug for OpenedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedLog")
            .field("log", &self.log.describe())
            .field("needs_streamer", &self.needs_streamer)
            .finish_non_exhaustive()
    }
}

/// The scheme of a URL (`sqlite` for `sqlite://x`), lower case, and what follows `://`.
pub(crate) fn split_scheme(url: &str) -> Option<(String, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+')
    {
        return None;
    }
    Some((scheme.to_ascii_lowercase(), rest))
}

/// The scheme (lower-cased) and the rest of `url`, or why the URL names no known scheme.
fn scheme_of<'a>(
    role: &'static str,
    url: &'a str,
    supported: &'static str,
) -> Result<(String, &'a str), WiringError> {
    split_scheme(url).ok_or_else(|| WiringError::UnknownScheme {
        role,
        url: redact(url),
        supported,
    })
}

/// The URL without the password of its user info, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A filesystem path from `scheme://PATH`, with its parent directory created when `create`.
fn file_path<'a>(role: &'static str, url: &'a str, rest: &'a str) -> Result<&'a str, WiringError> {
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() {
        return Err(WiringError::Invalid {
            role,
            url: redact(url),
            why: "the URL has no path",
        });
    }
    Ok(path)
}

#[allow(dead_code)] // used by the file-backed arms, which depend on features
fn create_parent(path: &str) -> anyhow::Result<()> {
    if let Some(parent) = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", parent.display()))?;
    }
    Ok(())
}

/// Refuses a store or log URL whose data does not exist, for commands that read or change an
/// existing system (`verify`, `log status`, `log cutover`): opening it would create a fresh,
/// empty one (a SQLite file, a sled directory) and report on that instead. `command` names the
/// command in the message. Servers (`serve`, `api`, …) and `migrate` create what is missing.
///
/// # Errors
/// When `url` is `memory://` (a new process's memory store is always empty) or a `sqlite://`
/// or `sled://` path that does not exist.
pub fn require_existing(role: &'static str, url: &str, command: &str) -> anyhow::Result<()> {
    let Some((scheme, rest)) = split_scheme(url) else {
        return Ok(()); // `open_store`/`open_log` explain unknown schemes
    };
    let missing = match scheme.as_str() {
        "memory" => Some("a memory:// store or log lives in one process only".to_owned()),
        "sqlite" | "sled" => {
            let path = file_path(role, url, rest)?;
            (path != ":memory:" && !Path::new(path).exists())
                .then(|| format!("nothing exists at {path}"))
        }
        _ => None,
    };
    match missing {
        Some(why) => Err(anyhow::anyhow!(
            "`rides {command}` reads an existing system, but the {role} {} does not exist ({why}); \
             pass --{role} (or RIDES_{}) with the URL the system runs on, or create it with \
             `rides migrate`",
            redact(url),
            role.to_uppercase()
        )),
        None => Ok(()),
    }
}

/// Opens the canonical store named by `url`.
///
/// # Errors
/// A [`WiringError`] for an unknown or not compiled-in scheme; the adapter's error when the
/// store cannot be opened.
pub async fn open_store(url: &str) -> anyhow::Result<Stores> {
    let role = "store";
    let (scheme, rest) = scheme_of(role, url, STORE_SCHEMES)?;
    match scheme.as_str() {
        "memory" => {
            let store = Arc::new(adapters::memory::MemoryStore::new(PRODUCER));
            Ok(Stores {
                store: store.clone(),
                events: Arc::new(store.event_store()),
                reactors: Arc::new(store.event_store()),
                outbox: store,
                consumers: Arc::new(adapters::memory::MemoryConsumerStore::new()),
                url: url.to_owned(),
                replica: None,
                #[cfg(feature = "postgres")]
                postgres: None,
            })
        }
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let path = file_path(role, url, rest)?;
            if path != ":memory:" {
                create_parent(path)?;
            }
            let store = Arc::new(
                adapters::sqlite::SqliteStore::connect(url)
                    .await
                    .map_err(|e| anyhow::anyhow!("opening {}: {e}", redact(url)))?,
            );
            Ok(Stores {
                store: store.clone(),
                events: Arc::new(store.event_store()),
                reactors: Arc::new(store.event_store()),
                outbox: store.clone(),
                consumers: store,
                url: url.to_owned(),
                replica: None,
                #[cfg(feature = "postgres")]
                postgres: None,
            })
        }
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => {
            let _ = rest;
            Err(feature_missing(role, url, "sqlite"))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            let (pg_url, opts) = pg_options(url)?;
            let store = Arc::new(
                adapters::postgres::PostgresStore::connect(&pg_url, opts)
                    .await
                    .map_err(|e| anyhow::anyhow!("opening {}: {e}", redact(url)))?,
            );
            Ok(Stores {
                store: store.clone(),
                events: Arc::new(store.event_store()),
                reactors: Arc::new(store.event_store()),
                outbox: store.clone(),
                consumers: store.clone(),
                url: url.to_owned(),
                replica: None,
                postgres: Some(store),
            })
        }
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(feature_missing(role, url, "postgres")),
        _ => Err(WiringError::UnknownScheme {
            role,
            url: redact(url),
            supported: STORE_SCHEMES,
        }
        .into()),
    }
}

/// Opens the benchmarks' SQL baselines on the store named by `url` (`rides bench`): the same
/// database, driver and connection settings as [`open_store`]. `None` for a store without
/// SQL (`memory://`).
///
/// # Errors
/// As [`open_store`].
pub async fn open_baseline(
    url: &str,
) -> anyhow::Result<Option<Box<dyn adapters::baseline::Baseline>>> {
    let role = "store";
    let (scheme, rest) = scheme_of(role, url, STORE_SCHEMES)?;
    let _ = rest;
    match scheme.as_str() {
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Some(
            adapters::sqlite::baseline::connect(url)
                .await
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", redact(url)))?,
        )),
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => Err(feature_missing(role, url, "sqlite")),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            let (pg_url, opts) = pg_options(url)?;
            Ok(Some(
                adapters::postgres::baseline::connect(&pg_url, &opts)
                    .map_err(|e| anyhow::anyhow!("opening {}: {e}", redact(url)))?,
            ))
        }
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(feature_missing(role, url, "postgres")),
        _ => Ok(None),
    }
}

#[allow(dead_code)] // only used when some feature is off
fn feature_missing(role: &'static str, url: &str, feature: &'static str) -> anyhow::Error {
    WiringError::FeatureNotEnabled {
        role,
        url: redact(url),
        feature,
    }
    .into()
}

/// Splits the options of this project out of a `postgres://` URL (the rest goes to the
/// driver): `listen=false` (poll-only, for poolers that break `LISTEN`), `migrate=false` (the
/// schema is managed elsewhere; `rides migrate` applies it), `schema=NAME` (the tables' schema).
///
/// # Errors
/// A [`WiringError::Invalid`] for a value that is not `true`/`false`.
#[cfg(feature = "postgres")]
fn pg_options(url: &str) -> anyhow::Result<(String, adapters::postgres::PgOptions)> {
    let mut opts = adapters::postgres::PgOptions::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), opts));
    };
    let flag = |v: &str| match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(WiringError::Invalid {
            role: "postgres",
            url: redact(url),
            why: "`listen` and `migrate` take true or false",
        }),
    };
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("listen", v) => opts.listen = flag(v)?,
            ("migrate", v) => opts.migrate = flag(v)?,
            ("schema", v) => opts.schema = Some(v.to_owned()),
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, opts))
}

/// The stream name and the connection URL of a `redis://` log URL: `?stream=NAME` wins, then
/// a non-numeric path (`redis://host/NAME`; a numeric path is Redis's database number), else
/// `rides`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn redis_stream(url: &str) -> (String, String) {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut rest_query = Vec::new();
    let mut stream = None;
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        match pair.split_once('=') {
            Some(("stream", v)) if !v.is_empty() => stream = Some(v.to_owned()),
            _ if !pair.is_empty() => rest_query.push(pair),
            _ => {}
        }
    }
    let mut base = base.to_owned();
    if let Some((_, rest)) = base.split_once("://")
        && let Some(slash) = rest.find('/')
    {
        let path = rest[slash + 1..].to_owned();
        if !path.is_empty() && !path.chars().all(|c| c.is_ascii_digit()) {
            let cut = base.len() - path.len() - 1;
            base.truncate(cut);
            stream.get_or_insert(path);
        }
    }
    if !rest_query.is_empty() {
        base = format!("{base}?{}", rest_query.join("&"));
    }
    (stream.unwrap_or_else(|| "rides".to_owned()), base)
}

/// Opens the log named by `url`, next to the store `stores` (a Postgres log on the store's
/// own URL reuses the store and needs no streamer).
///
/// # Errors
/// A [`WiringError`] for an unknown or not compiled-in scheme; the adapter's error when the
/// log cannot be opened.
pub async fn open_log(url: &str, stores: &Stores) -> anyhow::Result<OpenedLog> {
    let (log, needs_streamer) = open_log_once(url, stores).await?;
    let registry = LogRegistry {
        stores: stores.clone(),
        opened: Arc::new(tokio::sync::Mutex::new(std::collections::HashMap::from([
            (url.to_owned(), (log.clone(), needs_streamer)),
        ]))),
    };
    Ok(OpenedLog {
        log,
        needs_streamer,
        url: url.to_owned(),
        registry,
    })
}

/// Whether a log URL says `volatile=ok` (accepting a Redis that keeps nothing on disk), and
/// the URL without that option.
#[cfg_attr(not(feature = "redis"), allow(dead_code, reason = "Redis logs only"))]
pub(crate) fn take_volatile(url: &str) -> (bool, String) {
    let Some((base, query)) = url.split_once('?') else {
        return (false, url.to_owned());
    };
    let mut volatile = false;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("volatile", v)) => {
                volatile = matches!(v, "ok" | "true" | "1" | "yes");
                false
            }
            _ => !pair.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (volatile, url)
}

/// Refuses a Redis log whose server persists nothing (AOF and RDB off: a restart loses every
/// record not yet consumed, and consumers would not notice), unless the URL says
/// `?volatile=ok`. A server that does not answer `CONFIG GET` (managed Redis) is accepted
/// with a warning.
#[cfg(feature = "redis")]
fn refuse_volatile(
    log: &adapters::redis::RedisLog,
    url: &str,
    volatile_ok: bool,
) -> anyhow::Result<()> {
    use adapters::redis::Persistence;
    match log.persistence() {
        Persistence::Off if !volatile_ok => Err(anyhow::anyhow!(
            "refusing the log {}: its Redis keeps nothing on disk ({}). Turn on AOF \
             (appendonly yes) or RDB snapshots, or add volatile=ok to the log URL's query \
             (e.g. redis://host:6379/rides?volatile=ok) to accept losing records on a restart",
            redact(url),
            log.persistence()
        )),
        Persistence::Off => {
            tracing::warn!(log = %redact(url), "the log's Redis keeps nothing on disk (volatile=ok): a Redis restart loses every record not yet consumed");
            Ok(())
        }
        Persistence::Unknown(why) => {
            tracing::warn!(log = %redact(url), %why, "cannot tell whether the log's Redis persists its data: make sure AOF or RDB is on");
            Ok(())
        }
        Persistence::On { .. } => Ok(()),
    }
}

/// A log whose server could not be reached when the process started: it connects on first
/// use and again on every call until it succeeds, answering [`LogError::Unavailable`] in the
/// meantime. The API starts and takes rides while the log is down (records wait in the
/// outbox), and the services back off and retry with clear logs instead of the process
/// failing to start.
#[cfg_attr(
    not(any(feature = "redis", feature = "kafka", feature = "postgres")),
    allow(dead_code, reason = "only network logs are deferred")
)]
struct LazyLog {
    url: String,
    stores: Stores,
    inner: tokio::sync::OnceCell<Arc<dyn Log>>,
}

#[cfg_attr(
    not(any(feature = "redis", feature = "kafka", feature = "postgres")),
    allow(dead_code, reason = "only network logs are deferred")
)]
impl LazyLog {
    fn deferred(url: &str, stores: &Stores, why: &str) -> Arc<dyn Log> {
        tracing::warn!(log = %redact(url), error = %why, "the log is not reachable yet: starting without it; every use retries the connection");
        Arc::new(Self {
            url: url.to_owned(),
            stores: stores.clone(),
            inner: tokio::sync::OnceCell::new(),
        })
    }

    async fn get(&self) -> Result<&Arc<dyn Log>, LogError> {
        self.inner
            .get_or_try_init(|| async {
                let log = Box::pin(open_log_with(&self.url, &self.stores, false))
                    .await
                    .map_err(|e| LogError::Unavailable(format!("{e:#}")))?
                    .0;
                if log.ping().await.is_err() {
                    return Err(LogError::Unavailable(format!(
                        "the log {} is still not reachable",
                        redact(&self.url)
                    )));
                }
                tracing::info!(log = %redact(&self.url), "the log is reachable now");
                Ok(log)
            })
            .await
    }
}

#[async_trait::async_trait]
impl Log for LazyLog {
    fn describe(&self) -> String {
        self.inner
            .get()
            .map_or_else(|| redact(&self.url), |l| l.describe())
    }
    async fn ping(&self) -> Result<(), LogError> {
        self.get().await?.ping().await
    }
    async fn append(&self, records: &[domain::LogRecord]) -> Result<(), LogError> {
        self.get().await?.append(records).await
    }
    async fn read(
        &self,
        from: &ports::Position,
        max: usize,
        wait: std::time::Duration,
    ) -> Result<ports::Batch, LogError> {
        self.get().await?.read(from, max, wait).await
    }
    async fn lag(&self, from: &ports::Position) -> Result<u64, LogError> {
        self.get().await?.lag(from).await
    }
    async fn trim(&self, checkpoints: &[ports::Position]) -> Result<u64, LogError> {
        self.get().await?.trim(checkpoints).await
    }
    async fn held_back(&self) -> Result<Option<std::time::Duration>, LogError> {
        self.get().await?.held_back().await
    }
    async fn len(&self) -> Result<u64, LogError> {
        self.get().await?.len().await
    }
    async fn beyond_end(&self, from: &ports::Position) -> Result<bool, LogError> {
        self.get().await?.beyond_end(from).await
    }
    /// Whether the log's lanes are gap-free once it is open (`true` before, like its lanes).
    fn gap_free_lanes(&self) -> bool {
        self.inner.get().is_none_or(|l| l.gap_free_lanes())
    }
    /// The lanes of the log once it is open (1 before: ping it first to know).
    fn lanes(&self) -> u32 {
        self.inner.get().map_or(1, |l| l.lanes())
    }
    async fn read_lane(
        &self,
        lane: u32,
        from: &ports::Position,
        max: usize,
        wait: std::time::Duration,
    ) -> Result<ports::Batch, LogError> {
        self.get().await?.read_lane(lane, from, max, wait).await
    }
    async fn lag_lane(&self, lane: u32, from: &ports::Position) -> Result<u64, LogError> {
        self.get().await?.lag_lane(lane, from).await
    }
    fn merge_lanes(&self, lanes: &[ports::Position]) -> Result<ports::Position, LogError> {
        match self.inner.get() {
            Some(l) => l.merge_lanes(lanes),
            None => Err(LogError::Unavailable(format!(
                "{} is not reachable yet",
                redact(&self.url)
            ))),
        }
    }
}

async fn open_log_once(url: &str, stores: &Stores) -> anyhow::Result<(Arc<dyn Log>, bool)> {
    open_log_with(url, stores, true).await
}

/// Opens the log at `url`; with `defer`, a network log whose server cannot be reached is
/// returned as a [`LazyLog`] instead of an error.
async fn open_log_with(
    url: &str,
    stores: &Stores,
    defer: bool,
) -> anyhow::Result<(Arc<dyn Log>, bool)> {
    let role = "log";
    let _ = (stores, defer);
    let (scheme, rest) = scheme_of(role, url, LOG_SCHEMES)?;
    let _ = rest;
    let log: Arc<dyn Log> = match scheme.as_str() {
        "memory" => Arc::new(adapters::memory::MemoryLog::new()),
        #[cfg(feature = "sled")]
        "sled" => {
            let path = file_path(role, url, rest)?;
            create_parent(path)?;
            Arc::new(
                adapters::sled::SledLog::open(path)
                    .map_err(|e| anyhow::anyhow!("opening {}: {e}", redact(url)))?,
            )
        }
        #[cfg(not(feature = "sled"))]
        "sled" => return Err(feature_missing(role, url, "sled")),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            if let Some(pg) = stores.postgres.as_ref().filter(|_| stores.url == url) {
                return Ok((Arc::new(pg.log()), false));
            }
            let (pg_url, opts) = pg_options(url)?;
            match adapters::postgres::PostgresLog::connect(&pg_url, opts).await {
                Ok(log) => Arc::new(log),
                Err(LogError::Unavailable(why)) if defer => LazyLog::deferred(url, stores, &why),
                Err(e) => return Err(anyhow::anyhow!("opening {}: {e}", redact(url))),
            }
        }
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => return Err(feature_missing(role, url, "postgres")),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            let (volatile_ok, plain) = take_volatile(url);
            let (stream, conn) = redis_stream(&plain);
            match adapters::redis::RedisLog::connect(&conn, &stream).await {
                Ok(log) => {
                    refuse_volatile(&log, url, volatile_ok)?;
                    Arc::new(log)
                }
                Err(LogError::Unavailable(why)) if defer => LazyLog::deferred(url, stores, &why),
                Err(e) => return Err(anyhow::anyhow!("opening {}: {e}", redact(url))),
            }
        }
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" => return Err(feature_missing(role, url, "redis")),
        #[cfg(feature = "kafka")]
        "kafka" => match adapters::kafka::KafkaLog::connect(url).await {
            Ok(log) => Arc::new(log),
            Err(LogError::Unavailable(why)) if defer => LazyLog::deferred(url, stores, &why),
            Err(e) => return Err(anyhow::anyhow!("opening {}: {e}", redact(url))),
        },
        #[cfg(not(feature = "kafka"))]
        "kafka" => return Err(feature_missing(role, url, "kafka")),
        _ => {
            return Err(WiringError::UnknownScheme {
                role,
                url: redact(url),
                supported: LOG_SCHEMES,
            }
            .into());
        }
    };
    Ok((log, true))
}

/// The secondary datastore a sync consumer keeps (`rides sync --to URL`): `memory://`,
/// `sqlite://PATH` (a file of its own), `postgres://…[?schema=S]` (another database or
/// schema), `redis://HOST[:PORT][/PREFIX]` (hashes and sorted sets under `PREFIX:`, default
/// `rides-replica`).
///
/// # Errors
/// An unknown scheme, a backend not built in, or a replica that cannot be opened.
pub async fn open_replica(url: &str) -> anyhow::Result<Arc<dyn ports::Replica>> {
    let role = "replica";
    let (scheme, rest) = scheme_of(role, url, REPLICA_SCHEMES)?;
    let opened: Arc<dyn ports::Replica> = match scheme.as_str() {
        "memory" => Arc::new(adapters::memory::MemoryReplica::new()),
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let path = file_path(role, url, rest)?;
            create_parent(path)?;
            Arc::new(
                adapters::sqlite::SqliteReplica::open(url)
                    .await
                    .map_err(|e| anyhow::anyhow!("opening the replica {}: {e}", redact(url)))?,
            )
        }
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => return Err(feature_missing(role, url, "sqlite")),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            let (pg_url, opts) = pg_options(url)?;
            Arc::new(
                adapters::postgres::PostgresReplica::connect(&pg_url, opts.schema.as_deref())
                    .await
                    .map_err(|e| anyhow::anyhow!("opening the replica {}: {e}", redact(url)))?,
            )
        }
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => return Err(feature_missing(role, url, "postgres")),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            let (prefix, conn) = redis_stream(url);
            let prefix = if prefix == "rides" {
                "rides-replica".to_owned()
            } else {
                prefix
            };
            Arc::new(
                adapters::redis::RedisReplica::connect(&conn, &prefix)
                    .await
                    .map_err(|e| anyhow::anyhow!("opening the replica {}: {e}", redact(url)))?,
            )
        }
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" => return Err(feature_missing(role, url, "redis")),
        _ => {
            return Err(WiringError::UnknownScheme {
                role,
                url: redact(url),
                supported: REPLICA_SCHEMES,
            }
            .into());
        }
    };
    Ok(opened)
}

/// Where `rides serve` and `rides demo` keep their replica by default: a SQLite file beside
/// a SQLite store, in memory beside a memory store, and `./data/replica.db` otherwise.
pub fn default_replica(store_url: &str) -> String {
    match split_scheme(store_url) {
        Some((scheme, rest)) if scheme == "sqlite" => {
            let path = std::path::Path::new(rest.split('?').next().unwrap_or(rest));
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
            let file = dir.map_or_else(
                || std::path::PathBuf::from("replica.db"),
                |d| d.join("replica.db"),
            );
            format!("sqlite://{}", file.display())
        }
        Some((scheme, _)) if scheme == "memory" => "memory://".to_owned(),
        _ => "sqlite://./data/replica.db".to_owned(),
    }
}

/// A payment processor, and the URL it was opened from (without secrets).
#[derive(Clone)]
pub struct Payments {
    /// The processor.
    pub gateway: Arc<dyn PaymentGateway>,
    /// Its URL.
    pub url: String,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments").field("url", &self.url).finish()
    }
}

impl Payments {
    /// The fake processor seeded with `seed`, never failing transiently (the default).
    pub fn fake(seed: u64) -> Self {
        Self {
            gateway: Arc::new(adapters::payment::FakeProcessor::new(0.0, seed)),
            url: "fake://".to_owned(),
        }
    }
}

/// Opens the payment processor named by `url` (`fake://`, or `stripe://…` with the secret
/// key from [`STRIPE_SECRET_KEY_ENV`]); `seed` seeds the fake one.
///
/// # Errors
/// A [`WiringError`] for an unknown or not compiled-in scheme or a bad option; an error that
/// names [`STRIPE_SECRET_KEY_ENV`] when the key is missing.
pub fn open_payments(url: &str, seed: u64) -> anyhow::Result<Payments> {
    let role = "payments";
    let (scheme, rest) = scheme_of(role, url, PAYMENT_SCHEMES)?;
    match scheme.as_str() {
        "fake" => {
            anyhow::ensure!(
                rest.is_empty(),
                WiringError::Invalid {
                    role,
                    url: redact(url),
                    why: "fake:// takes no host, path or option",
                }
            );
            Ok(Payments::fake(seed))
        }
        #[cfg(feature = "stripe")]
        "stripe" => {
            let key = std::env::var(STRIPE_SECRET_KEY_ENV).ok();
            let config = stripe_config(url, key)?;
            let gateway = adapters::stripe::StripeGateway::new(config)?;
            tracing::info!(charges = gateway.charges_url(), "payments on Stripe");
            Ok(Payments {
                gateway: Arc::new(gateway),
                url: redact(url),
            })
        }
        #[cfg(not(feature = "stripe"))]
        "stripe" => Err(feature_missing(role, url, "stripe")),
        _ => Err(WiringError::UnknownScheme {
            role,
            url: redact(url),
            supported: PAYMENT_SCHEMES,
        }
        .into()),
    }
}

/// The Stripe configuration of a `stripe://[?base=URL&timeout_ms=N&connect_timeout_ms=N&
/// retries=N&source=TOKEN]` URL, with the secret key `key` (from the environment).
///
/// # Errors
/// A [`WiringError::Invalid`] for a host or path, an unknown option or a bad number; an
/// error naming [`STRIPE_SECRET_KEY_ENV`] when `key` is missing or empty.
#[cfg(feature = "stripe")]
fn stripe_config(url: &str, key: Option<String>) -> anyhow::Result<adapters::stripe::StripeConfig> {
    use std::time::Duration;
    let role = "payments";
    let invalid = |why: &'static str| WiringError::Invalid {
        role,
        url: redact(url),
        why,
    };
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let (target, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !target.is_empty() {
        return Err(
            invalid("stripe:// takes no host or path; a base URL goes in ?base=URL").into(),
        );
    }
    let key = key.filter(|k| !k.trim().is_empty()).ok_or_else(|| {
        anyhow::anyhow!(
            "--payments stripe:// needs Stripe's secret key in the environment variable {STRIPE_SECRET_KEY_ENV}"
        )
    })?;
    let mut c = adapters::stripe::StripeConfig::new(adapters::stripe::SecretKey::new(key));
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|_| invalid("the options are not a valid query string"))?;
    let number = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| invalid("timeout_ms, connect_timeout_ms and retries take whole numbers"))
    };
    for (name, value) in pairs {
        match name.as_str() {
            "base" => c.base_url = value,
            "timeout_ms" => c.timeout = Duration::from_millis(number(&value)?),
            "connect_timeout_ms" => c.connect_timeout = Duration::from_millis(number(&value)?),
            "retries" => {
                c.max_retries =
                    u32::try_from(number(&value)?).map_err(|_| invalid("retries is too large"))?;
            }
            "source" => c.default_source = value,
            _ => {
                return Err(invalid(
                    "unknown option; stripe:// takes base, timeout_ms, connect_timeout_ms, retries and source",
                )
                .into());
            }
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_ok_is_taken_out_of_the_url() {
        assert_eq!(
            take_volatile("redis://h:6379/rides?volatile=ok"),
            (true, "redis://h:6379/rides".into())
        );
        assert_eq!(
            take_volatile("redis://h?volatile=ok&stream=s"),
            (true, "redis://h?stream=s".into())
        );
        assert_eq!(
            take_volatile("redis://h?stream=s&volatile=no"),
            (false, "redis://h?stream=s".into())
        );
        assert_eq!(take_volatile("redis://h/1"), (false, "redis://h/1".into()));
    }

    #[test]
    fn the_default_replica_sits_beside_the_store() {
        assert_eq!(
            default_replica("sqlite://./data/rides.db"),
            "sqlite://./data/replica.db"
        );
        assert_eq!(
            default_replica("sqlite:///tmp/x/rides.db?mode=rwc"),
            "sqlite:///tmp/x/replica.db"
        );
        assert_eq!(default_replica("sqlite://rides.db"), "sqlite://replica.db");
        assert_eq!(default_replica("memory://"), "memory://");
        assert_eq!(
            default_replica("postgres://u@h/db"),
            "sqlite://./data/replica.db"
        );
    }

    fn wiring_error(e: anyhow::Error) -> WiringError {
        e.downcast::<WiringError>().expect("a WiringError")
    }

    #[test]
    fn schemes_are_split_and_lower_cased() {
        assert_eq!(
            split_scheme("SQLite://./x.db"),
            Some(("sqlite".into(), "./x.db"))
        );
        assert_eq!(split_scheme("memory://"), Some(("memory".into(), "")));
        assert_eq!(split_scheme("no-scheme"), None);
        assert_eq!(split_scheme("://x"), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("sled://./data/log"), "sled://./data/log");
    }

    #[test]
    fn redis_stream_names_come_from_the_query_or_the_path() {
        assert_eq!(
            redis_stream("redis://127.0.0.1:6379"),
            ("rides".into(), "redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            redis_stream("redis://127.0.0.1:6379/2"),
            ("rides".into(), "redis://127.0.0.1:6379/2".into())
        );
        assert_eq!(
            redis_stream("redis://h/orders"),
            ("orders".into(), "redis://h".into())
        );
        assert_eq!(
            redis_stream("redis://h/1?stream=s1&x=y"),
            ("s1".into(), "redis://h/1?x=y".into())
        );
    }

    #[tokio::test]
    async fn unknown_schemes_list_the_supported_ones() {
        let e = wiring_error(open_store("mysql://h/db").await.unwrap_err());
        assert!(matches!(
            e,
            WiringError::UnknownScheme { role: "store", .. }
        ));
        assert!(e.to_string().contains("sqlite://PATH"), "{e}");
        let stores = open_store("memory://").await.unwrap();
        let e = wiring_error(open_log("ftp://x", &stores).await.unwrap_err());
        assert!(e.to_string().contains("sled://PATH"), "{e}");
        let e = wiring_error(open_log("nonsense", &stores).await.unwrap_err());
        assert!(matches!(e, WiringError::UnknownScheme { role: "log", .. }));
    }

    #[cfg(not(feature = "kafka"))]
    #[tokio::test]
    async fn kafka_without_its_feature_names_the_feature() {
        let stores = open_store("memory://").await.unwrap();
        let e = open_log("kafka://localhost:9092/rides", &stores)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("`kafka` feature"), "{e}");
    }

    #[tokio::test]
    async fn memory_store_and_memory_log_are_independent() {
        let stores = open_store("memory://").await.unwrap();
        let log = open_log("memory://", &stores).await.unwrap();
        assert!(log.needs_streamer);
        assert_eq!(log.log.len().await.unwrap(), 0);
        assert_eq!(stores.outbox.staged().await.unwrap(), 0);
    }

    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn postgres_without_its_feature_names_the_feature() {
        let e = wiring_error(open_store("postgres://u:pw@h/db").await.unwrap_err());
        assert_eq!(
            e,
            WiringError::FeatureNotEnabled {
                role: "store",
                url: "postgres://u:***@h/db".into(),
                feature: "postgres"
            }
        );
        assert!(e.to_string().contains("--features postgres"), "{e}");
    }

    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn redis_without_its_feature_names_the_feature() {
        let stores = open_store("memory://").await.unwrap();
        let e = wiring_error(
            open_log("redis://127.0.0.1:6379", &stores)
                .await
                .unwrap_err(),
        );
        assert!(
            matches!(
                e,
                WiringError::FeatureNotEnabled {
                    feature: "redis",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn a_redis_url_is_not_a_store() {
        let e = wiring_error(open_store("redis://127.0.0.1:6379").await.unwrap_err());
        assert!(matches!(e, WiringError::UnknownScheme { .. }), "{e}");
    }

    #[test]
    fn the_fake_processor_is_the_default_and_unknown_processors_are_refused() {
        assert_eq!(open_payments("fake://", 7).unwrap().url, "fake://");
        let e = wiring_error(open_payments("paypal://", 7).unwrap_err());
        assert!(
            matches!(
                e,
                WiringError::UnknownScheme {
                    role: "payments",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("stripe://"), "{e}");
        let e = wiring_error(open_payments("fake://x", 7).unwrap_err());
        assert!(matches!(e, WiringError::Invalid { .. }), "{e}");
    }

    #[cfg(not(feature = "stripe"))]
    #[test]
    fn stripe_without_its_feature_names_the_feature() {
        let e = wiring_error(open_payments("stripe://", 7).unwrap_err());
        assert!(e.to_string().contains("--features stripe"), "{e}");
    }

    #[cfg(feature = "stripe")]
    #[test]
    fn stripe_urls_take_a_base_timeouts_retries_and_a_source() {
        let key = || Some("sk_test_abc".to_owned());
        let c = stripe_config("stripe://", key()).unwrap();
        assert_eq!(c.base_url, adapters::stripe::DEFAULT_BASE_URL);
        assert_eq!(c.max_retries, 2);
        let c = stripe_config(
            "stripe://?base=http://127.0.0.1:12111&timeout_ms=1500&connect_timeout_ms=200&retries=5&source=tok_mastercard",
            key(),
        )
        .unwrap();
        assert_eq!(c.base_url, "http://127.0.0.1:12111");
        assert_eq!(c.timeout, std::time::Duration::from_millis(1500));
        assert_eq!(c.connect_timeout, std::time::Duration::from_millis(200));
        assert_eq!(c.max_retries, 5);
        assert_eq!(c.default_source, "tok_mastercard");
        assert!(!format!("{c:?}").contains("sk_test_abc"));

        let e = stripe_config("stripe://", None).unwrap_err().to_string();
        assert!(e.contains("STRIPE_SECRET_KEY"), "{e}");
        let e = stripe_config("stripe://", Some(" ".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("STRIPE_SECRET_KEY"), "{e}");
        for bad in [
            "stripe://api.stripe.com",
            "stripe://?retries=many",
            "stripe://?timeout=5",
        ] {
            let e = wiring_error(stripe_config(bad, key()).unwrap_err());
            assert!(matches!(e, WiringError::Invalid { .. }), "{bad}: {e}");
        }
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_url_options_are_split_from_the_driver_url() {
        let (url, o) =
            pg_options("postgres://u@h/db?listen=false&sslmode=disable&migrate=0&schema=s1")
                .unwrap();
        assert_eq!(url, "postgres://u@h/db?sslmode=disable");
        assert!(!o.listen && !o.migrate);
        assert_eq!(o.schema.as_deref(), Some("s1"));
        let (url, o) = pg_options("postgres://u@h/db").unwrap();
        assert_eq!(url, "postgres://u@h/db");
        assert!(o.listen && o.migrate && o.schema.is_none());
        let e = pg_options("postgres://u:secret@h/db?listen=maybe")
            .unwrap_err()
            .to_string();
        assert!(e.contains("true or false") && !e.contains("secret"), "{e}");
    }
}
