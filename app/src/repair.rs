//! `rides log repair`: re-stages what a log lost, from the canonical store (DESIGN
//! invariant 8, "loss is loud").
//!
//! Consumers note the records their log lost as gaps in their cursors ([`domain::gaps`]).
//! A repair:
//!
//! 1. collects every consumer's gaps (an open-ended gap runs up to the producer's last
//!    published record);
//! 2. looks each missing sequence up in the store's `published` index ([`ports::Published`]:
//!    which kind of record about which entity the sequence was);
//! 3. rebuilds what the canonical data can rebuild ([`domain::gaps::rebuild`]: `ride.created`,
//!    `ride.charged`, `receipt.requested` of rides that still exist) and re-stages it under
//!    its ORIGINAL producer and sequence ([`ports::Outbox::restage`]). The streamer publishes
//!    it like any staged record; a consumer that misses that sequence handles it (it fills
//!    the gap), one that has it already skips it as a duplicate. So every consumer ends exact.
//! 4. reports what it could not rebuild (`ride.declined`, `ride.deleted`, records of rides
//!    deleted since, sequences the index has no trace of: another store's records, or
//!    records published before the index existed). Those stay reported in the consumers'
//!    gaps, and the verdict disagrees, until an operator acknowledges them
//!    (`--acknowledge`): then they are taken out of the gaps, and the loss is accepted.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use domain::Gap;
use domain::gaps::{self, RideFacts};
use ports::{ConsumerStoreError, Published, Save};
use serde::Serialize;

use crate::wiring::Stores;

/// Rides loaded per query, records re-staged per transaction.
const CHUNK: usize = 1000;
/// Unrecoverable sequences listed one by one at most (the rest are counted).
const LISTED: usize = 100;
/// Missing sequences without a trace in the index that a repair still lists one by one.
const MAX_UNKNOWN: u64 = 10_000_000;

/// A missing record that cannot be rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unrecoverable {
    /// Its producer.
    pub producer: String,
    /// Its sequence.
    pub seq: u64,
    /// Its kind, when the store's index knows it.
    pub kind: Option<String>,
    /// Its entity key, when the store's index knows it.
    pub key: Option<String>,
    /// Why it cannot be rebuilt.
    pub why: String,
}

/// What a repair did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RepairReport {
    /// The gaps found, per consumer.
    pub gaps: Vec<(String, Gap)>,
    /// Records re-staged under their original sequence, per kind.
    pub restaged: BTreeMap<String, u64>,
    /// How many missing records cannot be rebuilt.
    pub unrecoverable: u64,
    /// The first of them (at most 100), with the reason.
    pub unrecoverable_listed: Vec<Unrecoverable>,
    /// Whether the unrecoverable ones were acknowledged (taken out of the gaps).
    pub acknowledged: bool,
}

impl RepairReport {
    /// Records re-staged in all.
    pub fn restaged_total(&self) -> u64 {
        self.restaged.values().sum()
    }

    /// A human-readable summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.gaps.is_empty() {
            out.push_str("no consumer reports lost records\n");
            return out;
        }
        for (name, gap) in &self.gaps {
            out.push_str(&format!("consumer {name} is missing {gap}\n"));
        }
        for (kind, n) in &self.restaged {
            out.push_str(&format!(
                "re-staged {n} {kind} record(s) under their original sequences\n"
            ));
        }
        for u in &self.unrecoverable_listed {
            out.push_str(&format!(
                "UNRECOVERABLE: {} seq {} ({} {}): {}\n",
                u.producer,
                u.seq,
                u.kind.as_deref().unwrap_or("?"),
                u.key.as_deref().unwrap_or("?"),
                u.why
            ));
        }
        if self.unrecoverable > self.unrecoverable_listed.len() as u64 {
            out.push_str(&format!(
                "... {} unrecoverable record(s) in all\n",
                self.unrecoverable
            ));
        }
        if self.unrecoverable > 0 {
            out.push_str(if self.acknowledged {
                "the unrecoverable records were acknowledged: consumers no longer report them\n"
            } else {
                "consumers keep reporting the unrecoverable records until `rides log repair --acknowledge`\n"
            });
        }
        out.push_str(
            "the streamer publishes the re-staged records; consumers fill their gaps as they read them\n",
        );
        out
    }
}

/// The ride id of an entity key `ride:N`.
fn ride_id(key: &str) -> Option<i64> {
    key.strip_prefix("ride:")?.parse().ok()
}

/// Runs a repair (see the module docs) at `now_ms`.
///
/// # Errors
/// When the store or the consumer store cannot be read or written.
pub async fn repair(
    stores: &Stores,
    acknowledge: bool,
    now_ms: i64,
) -> anyhow::Result<RepairReport> {
    let mut report = RepairReport::default();
    for (name, cp) in stores.consumers.list().await.context("listing consumers")? {
        report
            .gaps
            .extend(cp.cursor.gaps.into_iter().map(|g| (name.clone(), g)));
    }
    // Every missing (producer, seq), once, with what the index knows of it.
    let mut missing: BTreeMap<(String, u64), Option<Published>> = BTreeMap::new();
    let mut unknown_ranges: Vec<(String, u64, u64)> = Vec::new();
    for (_, gap) in &report.gaps {
        let to = gap.to_seq.unwrap_or(u64::MAX);
        let known = stores
            .outbox
            .published(&gap.producer, gap.from_seq, to)
            .await
            .context("reading the published index")?;
        let mut next = gap.from_seq;
        for p in known {
            if p.seq > next {
                unknown_ranges.push((gap.producer.clone(), next, p.seq - 1));
            }
            next = p.seq + 1;
            missing.insert((p.producer.clone(), p.seq), Some(p));
        }
        if let Some(to) = gap.to_seq
            && next <= to
        {
            unknown_ranges.push((gap.producer.clone(), next, to));
        }
    }
    let unknown: u64 = unknown_ranges.iter().map(|(_, f, t)| t - f + 1).sum();
    if unknown > MAX_UNKNOWN {
        anyhow::bail!(
            "{unknown} missing sequences are not in the store's published index: nothing to \
             rebuild them from (another store's records, or published before the index existed)"
        );
    }
    for (producer, from, to) in unknown_ranges {
        for seq in from..=to {
            missing.entry((producer.clone(), seq)).or_insert(None);
        }
    }

    // The rides the records are about.
    let ids: Vec<i64> = missing
        .values()
        .flatten()
        .filter_map(|p| ride_id(&p.key))
        .collect();
    let mut rides = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        for r in stores
            .store
            .rides_by_ids(chunk)
            .await
            .context("reading rides")?
        {
            rides.insert(r.id, r);
        }
    }

    // Records at or below the route's cutover were published on an earlier log: re-staged,
    // they would never be published again.
    let cutover_at = stores
        .outbox
        .route()
        .await
        .context("reading the route")?
        .map_or(0, |r| r.after_seq);
    let own = stores.outbox.producer();
    let mut rebuilt = Vec::new();
    let mut lost: Vec<Unrecoverable> = Vec::new();
    for ((producer, seq), entry) in &missing {
        if *producer == own && *seq <= cutover_at {
            lost.push(Unrecoverable {
                producer: producer.clone(),
                seq: *seq,
                kind: entry.as_ref().map(|p| p.kind.clone()),
                key: entry.as_ref().map(|p| p.key.clone()),
                why: format!(
                    "published on an earlier log (before the cutover at seq {cutover_at})"
                ),
            });
            continue;
        }
        let Some(p) = entry else {
            lost.push(Unrecoverable {
                producer: producer.clone(),
                seq: *seq,
                kind: None,
                key: None,
                why: "the store has no trace of this sequence (another store's record, or \
                      published before the index existed)"
                    .into(),
            });
            continue;
        };
        let facts = ride_id(&p.key)
            .and_then(|id| rides.get(&id))
            .map(|r| RideFacts {
                ride_id: r.id,
                user_id: r.user_id,
                distance_mm: r.distance_mm,
                charge_id: r.charge_id.clone(),
            });
        let draft = match (ride_id(&p.key), gaps::rebuild(&p.kind, facts.as_ref())) {
            (Some(id), Ok(draft)) => draft.build(id, now_ms),
            (_, Err(why)) => {
                lost.push(Unrecoverable {
                    producer: producer.clone(),
                    seq: *seq,
                    kind: Some(p.kind.clone()),
                    key: Some(p.key.clone()),
                    why,
                });
                continue;
            }
            (None, Ok(_)) => {
                lost.push(Unrecoverable {
                    producer: producer.clone(),
                    seq: *seq,
                    kind: Some(p.kind.clone()),
                    key: Some(p.key.clone()),
                    why: format!("{}: the key {} names no ride", p.kind, p.key),
                });
                continue;
            }
        };
        *report.restaged.entry(p.kind.clone()).or_default() += 1;
        rebuilt.push(draft.sequenced(producer.clone(), *seq));
    }
    for chunk in rebuilt.chunks(CHUNK) {
        stores
            .outbox
            .restage(chunk)
            .await
            .context("re-staging rebuilt records")?;
    }
    if !rebuilt.is_empty() {
        tracing::warn!(
            records = rebuilt.len(),
            "log repair: re-staged records the log lost under their original sequences"
        );
    }
    report.unrecoverable = lost.len() as u64;
    if !lost.is_empty() {
        tracing::error!(
            records = lost.len(),
            "log repair: records the log lost cannot be rebuilt from the store"
        );
    }
    if acknowledge {
        acknowledge_lost(stores, &lost, now_ms).await?;
        report.acknowledged = true;
    }
    report.unrecoverable_listed = lost.into_iter().take(LISTED).collect();
    Ok(report)
}

/// Takes the unrecoverable sequences out of every consumer's gaps, and drops open-ended gaps
/// (what the index knew of them is re-staged above the consumers' marks, so it is read as
/// new records anyway). Retries a save that conflicts with the running consumer.
async fn acknowledge_lost(
    stores: &Stores,
    lost: &[Unrecoverable],
    now_ms: i64,
) -> anyhow::Result<()> {
    for (name, _) in stores.consumers.list().await.context("listing consumers")? {
        for attempt in 0.. {
            let Some(cp) = stores.consumers.load(&name).await? else {
                break;
            };
            if cp.cursor.gaps.is_empty() {
                break;
            }
            let mut cursor = cp.cursor.clone();
            cursor.gaps.retain(|g| g.to_seq.is_some());
            for u in lost {
                let lanes: Vec<u32> = cursor
                    .gaps
                    .iter()
                    .filter(|g| g.holds(&u.producer, g.lane, u.seq))
                    .map(|g| g.lane)
                    .collect();
                for lane in lanes {
                    gaps::fill(&mut cursor.gaps, &u.producer, lane, u.seq);
                }
            }
            if cursor == cp.cursor {
                break;
            }
            let save = Save::new(cp.version, &cp.position, &cursor, &cp.state, now_ms);
            match stores.consumers.save(&name, &save).await {
                Ok(_) => {
                    tracing::warn!(consumer = %name, "log repair: lost records acknowledged");
                    break;
                }
                Err(ConsumerStoreError::Conflict(_)) if attempt < 50 => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("saving consumer {name}")),
            }
        }
    }
    Ok(())
}
