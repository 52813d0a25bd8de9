//! The client-side ledger of a load run, checked key by key against the store
//! (`rides simulate --ledger FILE`, then `rides ledger check --ledger FILE`).
//!
//! The simulator writes one JSON line per ride when its final answer arrives: the user, the
//! idempotency key and the status. The check then asks the store, for every key answered
//! 201: does the key exist, finished, with exactly one ride, and is that ride charged? And
//! across all rides: does any charge id belong to two rides? A chaos run passes when every
//! 201 exists exactly once with exactly one charge, whatever was killed or restarted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use domain::RecoveryPoint;
use ports::RideStore;
use serde::{Deserialize, Serialize};

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The user (the `Authorization` the client sent).
    pub user: String,
    /// The idempotency key.
    pub key: String,
    /// The final HTTP status, or `connection error`.
    pub status: String,
}

/// Appends entries to a ledger file, one JSON line each.
pub struct LedgerWriter {
    out: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl std::fmt::Debug for LedgerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerWriter").finish_non_exhaustive()
    }
}

impl LedgerWriter {
    /// Creates (or truncates) the ledger at `path`.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating the ledger {}", path.display()))?;
        Ok(Self {
            out: Mutex::new(std::io::BufWriter::new(file)),
        })
    }

    /// Records one final answer.
    pub fn record(&self, entry: &Entry) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(line) = serde_json::to_string(entry) {
            let _ = writeln!(out, "{line}");
        }
    }

    /// Flushes what was recorded.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush()
            .context("writing the ledger")
    }
}

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LedgerReport {
    /// Lines read.
    pub answers: u64,
    /// Final answers by status.
    pub statuses: BTreeMap<String, u64>,
    /// 201 answers checked.
    pub created: u64,
    /// 201 answers whose key or ride the store does not have.
    pub missing: u64,
    /// 201 answers whose ride has no charge, or whose key is not finished.
    pub uncharged: u64,
    /// Charge ids held by more than one ride.
    pub shared_charges: u64,
    /// Keys that appear twice in the ledger (a simulator bug, not a store one).
    pub repeated_keys: u64,
    /// Up to 10 examples of what failed.
    pub examples: Vec<String>,
    /// Whether every 201 exists exactly once with exactly one charge.
    pub ok: bool,
}

impl LedgerReport {
    fn example(&mut self, what: String) {
        if self.examples.len() < 10 {
            self.examples.push(what);
        }
    }
}

/// Checks the ledger at `path` against `store`.
///
/// # Errors
/// When the ledger cannot be read or the store cannot be queried.
pub async fn check(store: &dyn RideStore, path: &Path) -> anyhow::Result<LedgerReport> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening the ledger {}", path.display()))?;
    let mut report = LedgerReport::default();
    let mut users: HashMap<String, Option<i64>> = HashMap::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut rides: Vec<(String, i64)> = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.context("reading the ledger")?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: Entry = serde_json::from_str(&line)
            .with_context(|| format!("ledger line {}: not a ledger entry", n + 1))?;
        report.answers += 1;
        *report.statuses.entry(entry.status.clone()).or_default() += 1;
        if !seen.insert((entry.user.clone(), entry.key.clone())) {
            report.repeated_keys += 1;
        }
        if entry.status != "201" {
            continue;
        }
        report.created += 1;
        let user_id = match users.get(&entry.user) {
            Some(id) => *id,
            None => {
                let id = store.user_by_email(&entry.user).await?.map(|u| u.id);
                users.insert(entry.user.clone(), id);
                id
            }
        };
        let key = match user_id {
            Some(id) => store.key(id, &entry.key).await?,
            None => None,
        };
        let Some(key) = key else {
            report.missing += 1;
            report.example(format!("{} {}: no such key", entry.user, entry.key));
            continue;
        };
        if key.recovery_point != RecoveryPoint::Finished {
            report.uncharged += 1;
            report.example(format!(
                "{} {}: answered 201 but the key is at {}",
                entry.user,
                entry.key,
                key.recovery_point.as_str()
            ));
        }
        match key.ride_id {
            Some(ride) => rides.push((entry.key.clone(), ride)),
            None => {
                report.missing += 1;
                report.example(format!("{} {}: the key has no ride", entry.user, entry.key));
            }
        }
    }
    let mut charges: HashMap<String, i64> = HashMap::new();
    for chunk in rides.chunks(1000) {
        let ids: Vec<i64> = chunk.iter().map(|(_, id)| *id).collect();
        let rows = store.rides_by_ids(&ids).await?;
        let found: HashMap<i64, &ports::RideRow> = rows.iter().map(|r| (r.id, r)).collect();
        for (key, id) in chunk {
            match found.get(id) {
                None => {
                    report.missing += 1;
                    report.example(format!("{key}: ride {id} is not in the store"));
                }
                Some(row) => match &row.charge_id {
                    None => {
                        report.uncharged += 1;
                        report.example(format!("{key}: ride {id} has no charge"));
                    }
                    Some(charge) => {
                        if let Some(other) = charges.insert(charge.clone(), *id)
                            && other != *id
                        {
                            report.shared_charges += 1;
                            report.example(format!("charge {charge}: rides {other} and {id}"));
                        }
                    }
                },
            }
        }
    }
    report.ok = report.missing == 0
        && report.uncharged == 0
        && report.shared_charges == 0
        && report.repeated_keys == 0;
    Ok(report)
}
