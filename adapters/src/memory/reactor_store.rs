//! Consumer groups ([`ports::ReactorStore`]) in memory, inside the [`MemoryEventStore`]'s
//! state: one lock makes each call one atomic step, as a transaction would, and a settlement
//! commits its messages with [`super::event_store::commit_locked`] under the same lock as its
//! acknowledgement.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use domain::es::{GroupSpec, Message};
use ports::{
    Claim, ClaimedMessage, EventStoreError, FailingStream, GroupInfo, GroupStatus, ReactorStore,
    ScheduledMessage, Settlement, StoredMessage, reactor_store::PROMOTE_BATCH,
};
use uuid::Uuid;

use super::event_store::{EsState, commit_locked};
use super::{MemoryEventStore, lock};

#[derive(Debug, Clone)]
struct GroupRow {
    types: Vec<String>,
    created_after_ms: i64,
    batch_size: usize,
    status: GroupStatus,
    reason: Option<String>,
    retry_at_ms: Option<i64>,
    /// Messages up to this global seq were acknowledged before the last reset.
    replay_until: u64,
}

#[derive(Debug, Clone, Default)]
struct OffsetRow {
    acked: u64,
    claimed_by: Option<String>,
    claimed_at_ms: i64,
    retry_count: u32,
    retry_at_ms: Option<i64>,
    parked: bool,
    error: Option<String>,
    failed_message: Option<Uuid>,
}

/// The reactor tables, kept in the event store's state.
#[derive(Debug, Default)]
pub(crate) struct ReactorState {
    groups: BTreeMap<String, GroupRow>,
    /// (group, stream) → offset.
    offsets: HashMap<(String, String), OffsetRow>,
    workers: HashMap<String, i64>,
    /// id → scheduled message.
    scheduled: BTreeMap<u64, ScheduledMessage>,
    next_scheduled: u64,
}

fn unknown(group_id: &str) -> EventStoreError {
    EventStoreError::UnknownGroup(group_id.to_owned())
}

fn group_mut<'a>(
    r: &'a mut ReactorState,
    group_id: &str,
) -> Result<&'a mut GroupRow, EventStoreError> {
    r.groups.get_mut(group_id).ok_or_else(|| unknown(group_id))
}

/// The pending messages of `stream` for group `g` above `acked`, oldest first.
fn pending<'a>(
    es: &'a EsState,
    g: &'a GroupRow,
    stream: &str,
    acked: u64,
) -> impl Iterator<Item = (u64, &'a Message)> + 'a {
    let globals = es
        .streams
        .get(stream)
        .map_or(&[][..], |r| r.globals.as_slice());
    let from = globals.partition_point(|x| *x <= acked);
    globals[from..].iter().filter_map(move |gs| {
        let m = es.messages.get(gs)?;
        (g.types.iter().any(|t| t == m.kind()) && m.created_at_ms() > g.created_after_ms)
            .then_some((*gs, m))
    })
}

fn acked_max(row: &mut OffsetRow, gs: u64) {
    row.acked = row.acked.max(gs);
}

#[async_trait]
impl ReactorStore for MemoryEventStore {
    async fn register_group(&self, spec: &GroupSpec, now_ms: i64) -> Result<(), EventStoreError> {
        let mut inner = lock(&self.store().inner);
        let r = &mut inner.es.reactors;
        match r.groups.get_mut(&spec.group_id) {
            Some(g) => {
                g.types.clone_from(&spec.types);
                g.batch_size = spec.batch_size.max(1);
            }
            None => {
                r.groups.insert(
                    spec.group_id.clone(),
                    GroupRow {
                        types: spec.types.clone(),
                        created_after_ms: spec.start.created_after_ms(now_ms),
                        batch_size: spec.batch_size.max(1),
                        status: GroupStatus::Active,
                        reason: None,
                        retry_at_ms: None,
                        replay_until: 0,
                    },
                );
            }
        }
        Ok(())
    }

    async fn stop_group(&self, group_id: &str, reason: &str) -> Result<(), EventStoreError> {
        let mut inner = lock(&self.store().inner);
        let g = group_mut(&mut inner.es.reactors, group_id)?;
        g.status = GroupStatus::Stopped;
        g.reason = Some(reason.to_owned());
        g.retry_at_ms = None;
        Ok(())
    }

    async fn start_group(&self, group_id: &str) -> Result<(), EventStoreError> {
        {
            let mut inner = lock(&self.store().inner);
            let g = group_mut(&mut inner.es.reactors, group_id)?;
            g.status = GroupStatus::Active;
            g.reason = None;
            g.retry_at_ms = None;
        }
        self.committed();
        Ok(())
    }

    async fn pause_group(&self, group_id: &str, until_ms: i64) -> Result<(), EventStoreError> {
        let mut inner = lock(&self.store().inner);
        group_mut(&mut inner.es.reactors, group_id)?.retry_at_ms = Some(until_ms);
        Ok(())
    }

    async fn reset_group(&self, group_id: &str) -> Result<(), EventStoreError> {
        {
            let mut inner = lock(&self.store().inner);
            let r = &mut inner.es.reactors;
            if !r.groups.contains_key(group_id) {
                return Err(unknown(group_id));
            }
            let mut highest = 0;
            r.offsets.retain(|(g, _), o| {
                if g == group_id {
                    highest = highest.max(o.acked);
                    false
                } else {
                    true
                }
            });
            let g = group_mut(r, group_id)?;
            g.replay_until = g.replay_until.max(highest);
        }
        self.committed();
        Ok(())
    }

    async fn retry_stream(&self, group_id: &str, stream_id: &str) -> Result<(), EventStoreError> {
        {
            let mut inner = lock(&self.store().inner);
            let r = &mut inner.es.reactors;
            if !r.groups.contains_key(group_id) {
                return Err(unknown(group_id));
            }
            if let Some(o) = r
                .offsets
                .get_mut(&(group_id.to_owned(), stream_id.to_owned()))
            {
                o.parked = false;
                o.retry_at_ms = None;
            }
        }
        self.committed();
        Ok(())
    }

    async fn claim(
        &self,
        group_id: &str,
        worker_id: &str,
        now_ms: i64,
    ) -> Result<Option<Claim>, EventStoreError> {
        let mut inner = lock(&self.store().inner);
        let es = &inner.es;
        let g = es
            .reactors
            .groups
            .get(group_id)
            .ok_or_else(|| unknown(group_id))?;
        if g.status == GroupStatus::Stopped || g.retry_at_ms.is_some_and(|t| t > now_ms) {
            return Ok(None);
        }
        // The stream whose oldest pending message is oldest.
        let mut best: Option<(u64, &str)> = None;
        for stream in es.streams.keys() {
            let o = es
                .reactors
                .offsets
                .get(&(group_id.to_owned(), stream.clone()));
            if o.is_some_and(|o| {
                o.claimed_by.is_some() || o.parked || o.retry_at_ms.is_some_and(|t| t > now_ms)
            }) {
                continue;
            }
            let acked = o.map_or(0, |o| o.acked);
            if let Some((gs, _)) = pending(es, g, stream, acked).next()
                && best.is_none_or(|(b, _)| gs < b)
            {
                best = Some((gs, stream));
            }
        }
        let Some((_, stream)) = best else {
            return Ok(None);
        };
        let stream = stream.to_owned();
        let key = (group_id.to_owned(), stream.clone());
        let (acked, retry_count) = es
            .reactors
            .offsets
            .get(&key)
            .map_or((0, 0), |o| (o.acked, o.retry_count));
        let batch: Vec<ClaimedMessage> = pending(es, g, &stream, acked)
            .take(g.batch_size)
            .map(|(gs, m)| ClaimedMessage {
                stored: StoredMessage {
                    global_seq: gs,
                    message: m.clone(),
                },
                replaying: gs <= g.replay_until,
            })
            .collect();
        let o = inner.es.reactors.offsets.entry(key).or_default();
        o.claimed_by = Some(worker_id.to_owned());
        o.claimed_at_ms = now_ms;
        Ok(Some(Claim {
            group_id: group_id.to_owned(),
            stream_id: stream,
            worker_id: worker_id.to_owned(),
            acked,
            retry_count,
            batch,
        }))
    }

    async fn settle(
        &self,
        claim: &Claim,
        settlement: Settlement,
        _now_ms: i64,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        let out = {
            let mut inner = lock(&self.store().inner);
            let key = (claim.group_id.clone(), claim.stream_id.clone());
            let held = inner
                .es
                .reactors
                .offsets
                .get(&key)
                .is_some_and(|o| o.claimed_by.as_deref() == Some(claim.worker_id.as_str()));
            if !held {
                return Err(EventStoreError::ClaimLost(format!(
                    "{} no longer holds {} for {}",
                    claim.worker_id, claim.stream_id, claim.group_id
                )));
            }
            let producer = self.store().producer.clone();
            let out = commit_locked(&mut inner, &producer, &settlement.commit)?;
            let es = &mut inner.es;
            let r = &mut es.reactors;
            for s in settlement.schedule {
                r.next_scheduled += 1;
                r.scheduled.insert(r.next_scheduled, s);
            }
            for id in &settlement.also_ack {
                if let Some(gs) = es.by_id.get(id)
                    && let Some(m) = es.messages.get(gs)
                {
                    let row = r
                        .offsets
                        .entry((claim.group_id.clone(), m.stream_id().to_owned()))
                        .or_default();
                    acked_max(row, *gs);
                }
            }
            let o = r.offsets.entry(key).or_default();
            if let Some(gs) = settlement.ack {
                acked_max(o, gs);
            }
            o.claimed_by = None;
            match settlement.failure {
                Some(f) => {
                    o.retry_count = f.retry_count;
                    o.parked = f.retry_at_ms.is_none();
                    o.retry_at_ms = f.retry_at_ms;
                    o.error = Some(f.error);
                    o.failed_message = Some(f.message_id);
                }
                None if settlement.ack.is_some() => {
                    o.retry_count = 0;
                    o.retry_at_ms = None;
                    o.error = None;
                    o.failed_message = None;
                }
                None => {}
            }
            out
        };
        if !out.is_empty() {
            self.committed();
        }
        Ok(out)
    }

    async fn ack(&self, group_id: &str, message_id: Uuid) -> Result<bool, EventStoreError> {
        let mut inner = lock(&self.store().inner);
        let es = &mut inner.es;
        if !es.reactors.groups.contains_key(group_id) {
            return Err(unknown(group_id));
        }
        let Some(gs) = es.by_id.get(&message_id).copied() else {
            return Ok(false);
        };
        let Some(stream) = es.messages.get(&gs).map(|m| m.stream_id().to_owned()) else {
            return Ok(false);
        };
        let row = es
            .reactors
            .offsets
            .entry((group_id.to_owned(), stream))
            .or_default();
        acked_max(row, gs);
        Ok(true)
    }

    async fn commit_with(
        &self,
        commit: ports::Commit,
        schedule: &[ScheduledMessage],
        acks: &[(String, Uuid)],
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        let out = {
            let mut inner = lock(&self.store().inner);
            let producer = self.store().producer.clone();
            let out = commit_locked(&mut inner, &producer, &commit)?;
            let es = &mut inner.es;
            let r = &mut es.reactors;
            for s in schedule {
                r.next_scheduled += 1;
                r.scheduled.insert(r.next_scheduled, s.clone());
            }
            for (group, id) in acks {
                if !r.groups.contains_key(group) {
                    continue;
                }
                if let Some(gs) = es.by_id.get(id)
                    && let Some(m) = es.messages.get(gs)
                {
                    let row = r
                        .offsets
                        .entry((group.clone(), m.stream_id().to_owned()))
                        .or_default();
                    acked_max(row, *gs);
                }
            }
            out
        };
        if !out.is_empty() {
            self.committed();
        }
        Ok(out)
    }

    async fn schedule(&self, messages: &[ScheduledMessage]) -> Result<(), EventStoreError> {
        let mut inner = lock(&self.store().inner);
        let r = &mut inner.es.reactors;
        for s in messages {
            r.next_scheduled += 1;
            r.scheduled.insert(r.next_scheduled, s.clone());
        }
        Ok(())
    }

    async fn promote_due(&self, now_ms: i64) -> Result<Vec<StoredMessage>, EventStoreError> {
        let out = {
            let mut inner = lock(&self.store().inner);
            let due: Vec<(u64, Message)> = inner
                .es
                .reactors
                .scheduled
                .iter()
                .filter(|(_, s)| s.at_ms <= now_ms)
                .take(PROMOTE_BATCH)
                .map(|(id, s)| (*id, s.message.clone()))
                .collect();
            if due.is_empty() {
                return Ok(Vec::new());
            }
            let commit =
                ports::reactor_store::promotion(due.iter().map(|(_, m)| m.clone()), now_ms)?;
            let producer = self.store().producer.clone();
            let out = commit_locked(&mut inner, &producer, &commit)?;
            for (id, _) in due {
                inner.es.reactors.scheduled.remove(&id);
            }
            out
        };
        if !out.is_empty() {
            self.committed();
        }
        Ok(out)
    }

    async fn heartbeat(&self, worker_ids: &[String], now_ms: i64) -> Result<(), EventStoreError> {
        let mut inner = lock(&self.store().inner);
        for w in worker_ids {
            inner.es.reactors.workers.insert(w.clone(), now_ms);
        }
        Ok(())
    }

    async fn release_stale_claims(
        &self,
        ttl: Duration,
        now_ms: i64,
    ) -> Result<u64, EventStoreError> {
        let cutoff = now_ms.saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let mut inner = lock(&self.store().inner);
        let r = &mut inner.es.reactors;
        let mut n = 0;
        for o in r.offsets.values_mut() {
            let Some(w) = &o.claimed_by else { continue };
            let alive = r.workers.get(w).is_some_and(|seen| *seen > cutoff);
            if o.claimed_at_ms <= cutoff && !alive {
                o.claimed_by = None;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn groups(&self) -> Result<Vec<GroupInfo>, EventStoreError> {
        let inner = lock(&self.store().inner);
        let es = &inner.es;
        let r = &es.reactors;
        let mut out = Vec::new();
        for (id, g) in &r.groups {
            let mine: Vec<(&String, &OffsetRow)> = r
                .offsets
                .iter()
                .filter(|((gid, _), _)| gid == id)
                .map(|((_, s), o)| (s, o))
                .collect();
            let processed: Vec<u64> = mine
                .iter()
                .map(|(_, o)| o.acked)
                .filter(|a| *a > 0)
                .collect();
            let mut lag = 0;
            for stream in es.streams.keys() {
                let acked = mine
                    .iter()
                    .find(|(s, _)| *s == stream)
                    .map_or(0, |(_, o)| o.acked);
                lag += pending(es, g, stream, acked).count() as u64;
            }
            let mut failing: Vec<FailingStream> = mine
                .iter()
                .filter(|(_, o)| o.parked || o.error.is_some())
                .map(|(s, o)| FailingStream {
                    stream_id: (*s).clone(),
                    parked: o.parked,
                    retry_count: o.retry_count,
                    retry_at_ms: o.retry_at_ms,
                    error: o.error.clone(),
                    message_id: o.failed_message,
                })
                .collect();
            failing.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
            out.push(GroupInfo {
                group_id: id.clone(),
                status: g.status,
                reason: g.reason.clone(),
                retry_at_ms: g.retry_at_ms,
                oldest_processed: processed.iter().copied().min().unwrap_or(0),
                newest_processed: processed.iter().copied().max().unwrap_or(0),
                stream_count: processed.len() as u64,
                lag,
                failing,
            });
        }
        Ok(out)
    }

    fn wake_version(&self) -> u64 {
        *self.store().es_wake.borrow()
    }

    async fn wait_wake(&self, seen: u64, timeout: Duration) -> u64 {
        let mut rx = self.store().es_wake.subscribe();
        if *rx.borrow_and_update() != seen {
            return *rx.borrow();
        }
        let _ = tokio::time::timeout(timeout, rx.changed()).await;
        *rx.borrow()
    }
}
