//! `rides consumer list|parked|retry-parked|remove`: looking after consumers.
//!
//! Everything here reads checkpoints, dead letters and leases through the consumer-store
//! port; nothing reads a consumer's own state, except `retry-parked`, which runs the
//! consumer's handler (only distance consumers live in this binary).

use std::sync::Arc;

use anyhow::Context as _;
use ports::{Clock, SystemClock};

use crate::cli::{Common, ConsumerAction};
use crate::faults::Faults;
use crate::metrics::Metrics;
use crate::runtime::lease::{DEFAULT_TTL, LeaseKeeper, holder_id};
use crate::services::consumer::{self, distance_consumer};
use crate::wiring;

/// One consumer as `rides consumer list` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConsumerInfo {
    /// Its name.
    pub name: String,
    /// Its kind (`distance`...), if it ever saved.
    pub kind: Option<String>,
    /// The log it reads (`None`: the log it was started with).
    pub log: Option<String>,
    /// Its position.
    pub position: String,
    /// Its last save (ms), 0 if never.
    pub updated_at_ms: i64,
    /// Duplicates it skipped.
    pub duplicates: u64,
    /// Records in its dead-letter list.
    pub parked: usize,
    /// Who holds its lease now, if anyone.
    pub lease_holder: Option<String>,
    /// Records its log lost (see [`domain::gaps`]), until repaired or acknowledged.
    pub gaps: Vec<domain::Gap>,
}

/// Every registered consumer, with its lease holder and dead-letter count.
///
/// # Errors
/// When the consumer store cannot be read.
pub async fn list(stores: &wiring::Stores, now_ms: i64) -> anyhow::Result<Vec<ConsumerInfo>> {
    let consumers = stores.consumers.list().await.context("listing consumers")?;
    let leases = stores.consumers.leases().await.context("listing leases")?;
    let mut out = Vec::with_capacity(consumers.len());
    for (name, cp) in consumers {
        let scope = format!("consumer:{name}");
        let lease_holder = leases
            .iter()
            .find(|l| l.scope == scope && l.expires_at_ms > now_ms)
            .map(|l| l.holder.clone());
        let parked = stores.consumers.parked(&name).await?.len();
        out.push(ConsumerInfo {
            kind: cp.cursor.kind.clone(),
            log: cp.cursor.log_url.clone(),
            position: cp.position.to_string(),
            updated_at_ms: cp.updated_at_ms,
            duplicates: cp.cursor.duplicates,
            parked,
            lease_holder,
            gaps: cp.cursor.gaps.clone(),
            name,
        });
    }
    Ok(out)
}

/// Runs one `rides consumer` subcommand; returns the exit code.
///
/// # Errors
/// When the store cannot be opened or read, or the consumer is unknown or running.
pub async fn run(common: &Common, action: ConsumerAction) -> anyhow::Result<i32> {
    wiring::require_existing("store", &common.store, "rides consumer")?;
    let stores = wiring::open_store(&common.store).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match action {
        ConsumerAction::List => {
            for c in list(&stores, clock.now_ms()).await? {
                println!(
                    "{}\tkind={}\tlog={}\tposition={}\tduplicates={}\tparked={}\tactive={}\tgaps={}",
                    c.name,
                    c.kind.as_deref().unwrap_or("-"),
                    c.log.as_deref().unwrap_or("(start log)"),
                    c.position,
                    c.duplicates,
                    c.parked,
                    c.lease_holder.as_deref().unwrap_or("-"),
                    c.gaps.len(),
                );
                for g in &c.gaps {
                    println!("  LOST RECORDS\t{g}\tdetected at {} ms", g.detected_at_ms);
                }
            }
            Ok(0)
        }
        ConsumerAction::Parked { name } => {
            known(&stores, &name).await?;
            let parked = stores.consumers.parked(&name).await?;
            for p in &parked {
                println!(
                    "#{}\tlane {}\t{} seq {} of {}\tkey {}\tparked at {}\t{}",
                    p.id,
                    p.lane,
                    p.record.kind,
                    p.record.seq,
                    p.record.producer,
                    p.record.key,
                    p.parked_at_ms,
                    p.error
                );
            }
            eprintln!("{} parked record(s) for consumer {name}", parked.len());
            Ok(0)
        }
        ConsumerAction::RetryParked { name } => {
            let cp = known(&stores, &name).await?;
            if cp
                .cursor
                .kind
                .as_deref()
                .is_some_and(|k| k != consumer::KIND)
            {
                anyhow::bail!(
                    "consumer {name} is a {} consumer: retry its parked records from the program that runs it (Consumer::retry_parked)",
                    cp.cursor.kind.unwrap_or_default()
                );
            }
            let lease = LeaseKeeper::new(
                stores.consumers.clone(),
                clock.clone(),
                format!("consumer:{name}"),
                holder_id(),
                DEFAULT_TTL,
            );
            if lease.hold().await?.is_none() {
                let holder = stores
                    .consumers
                    .leases()
                    .await?
                    .into_iter()
                    .find(|l| l.scope == lease.scope())
                    .map(|l| l.holder)
                    .unwrap_or_default();
                anyhow::bail!(
                    "consumer {name} is running (its lease is held by {holder}); stop it first, or wait for its lease to expire"
                );
            }
            let log = wiring::open_log(&common.log, &stores).await?;
            let c = distance_consumer(
                name.clone(),
                log.log.clone(),
                stores.consumers.clone(),
                clock.clone(),
                Arc::new(Faults::none()),
                Arc::new(Metrics::new()),
            )
            .with_lease(lease);
            let outcome = c.retry_parked().await;
            c.release_lease().await;
            let (done, left) = outcome?;
            println!("consumer {name}: {done} parked record(s) delivered, {left} still parked");
            Ok(i32::from(left > 0))
        }
        ConsumerAction::Remove { name } => {
            if stores.consumers.remove(&name).await? {
                tracing::warn!(consumer = %name, "consumer removed: its checkpoint and dead letters are deleted, and it no longer holds back trimming");
                println!("consumer {name} removed");
                Ok(0)
            } else {
                anyhow::bail!("no consumer named {name}")
            }
        }
    }
}

/// The checkpoint of a registered consumer, or a clear error.
async fn known(stores: &wiring::Stores, name: &str) -> anyhow::Result<ports::Checkpoint> {
    stores
        .consumers
        .load(name)
        .await?
        .with_context(|| format!("no consumer named {name}"))
}
