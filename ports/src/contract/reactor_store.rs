//! Scenarios for the reactor-store contract ([`crate::ReactorStore`]): consumer groups,
//! per-(group, stream) claims, settlements, scheduling, heartbeats.
//!
//! They port sourced's backend shared examples of part 2 (§4.19 of the behaviour
//! reference): `reserve_next_for_reactor` (claims per stream, order of arrival, per-group
//! cursors, stopped groups, handled types, time windows, stats), `reset_consumer_group`
//! (replay flags), actions (OK, RETRY, Ack, AppendNext, AppendAfter with its conflict, Sync,
//! empty actions), batches (limits, replay flags per message, partial acknowledgement),
//! `retry_at`, `ack_on`, scheduling with correlation ids, concurrent `update_schedule!`,
//! heartbeats and stale claims; plus what this product adds: parked streams that do not
//! block the others, retry counts that reset after a success, claims lost to a stale release,
//! and concurrent claimers that never share a stream.
//!
//! Differences from sourced's examples: a claim returns the batch instead of yielding it to
//! a block (the caller settles it), stats are [`crate::GroupInfo`]s, and failures are
//! recorded per stream.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::es::{Action, BatchResult, GroupSpec, Message, StartFrom, SyncOp};
use serde_json::json;
use uuid::Uuid;

use super::ReactorStoreFactory;
use super::fixtures::{now_ms, within};
use crate::{
    Claim, EventStoreError, GroupInfo, GroupStatus, ReactorStore, ScheduledMessage, Settlement,
    StreamFailure, plan_settlement,
};

/// A command of the fixtures (sourced's `Tests::DoSomething`).
pub const DO_SOMETHING: &str = "tests.do_something";
/// An event of the fixtures (sourced's `Tests::SomethingHappened1`).
pub const HAPPENED_1: &str = "tests.something_happened1";
/// Another event (sourced's `Tests::SomethingHappened2`).
pub const HAPPENED_2: &str = "tests.something_happened2";

type Store = Arc<dyn ReactorStore>;

fn stream(tag: &str) -> String {
    format!("{tag}-{}", Uuid::new_v4().simple())
}

fn cmd_at(stream_id: &str, account_id: u64, at_ms: i64) -> Message {
    Message::new(
        DO_SOMETHING,
        stream_id,
        json!({"account_id": account_id}),
        at_ms,
    )
    .unwrap_or_else(|e| panic!("fixture message: {e}"))
}

fn cmd(stream_id: &str, account_id: u64) -> Message {
    cmd_at(stream_id, account_id, now_ms())
}

fn evt(cause: &Message, kind: &str, account_id: u64) -> Message {
    cause.follow_raw(kind, json!({"account_id": account_id}))
}

async fn append_next(rs: &Store, msgs: &[Message]) -> Vec<crate::StoredMessage> {
    let s = msgs[0].stream_id().to_owned();
    within("append_next_to_stream", rs.append_next_to_stream(&s, msgs))
        .await
        .unwrap_or_else(|e| panic!("append_next_to_stream({s}): {e}"))
}

async fn register(rs: &Store, spec: GroupSpec) {
    within("register_group", rs.register_group(&spec, now_ms()))
        .await
        .unwrap_or_else(|e| panic!("register_group({}): {e}", spec.group_id));
}

fn group(id: &str, types: &[&str], batch: usize) -> GroupSpec {
    GroupSpec::new(id, types).batch_size(batch)
}

async fn claim_at(rs: &Store, g: &str, worker: &str, now: i64) -> Option<Claim> {
    within("claim", rs.claim(g, worker, now))
        .await
        .unwrap_or_else(|e| panic!("claim({g}, {worker}): {e}"))
}

async fn claim(rs: &Store, g: &str, worker: &str) -> Option<Claim> {
    claim_at(rs, g, worker, now_ms()).await
}

fn ids(c: &Claim) -> Vec<Uuid> {
    c.batch.iter().map(|m| m.stored.message.id()).collect()
}

fn flags(c: &Claim) -> Vec<bool> {
    c.batch.iter().map(|m| m.replaying).collect()
}

/// Settles `c` with `actions` for every message of the batch.
async fn settle_all(rs: &Store, c: &Claim, actions: Vec<Action>) -> Vec<crate::StoredMessage> {
    let result = BatchResult::all(ids(c).into_iter().map(|id| (id, actions.clone())).collect());
    let s = plan_settlement(c, &result).unwrap_or_else(|e| panic!("plan_settlement: {e}"));
    within("settle", rs.settle(c, s, now_ms()))
        .await
        .unwrap_or_else(|e| panic!("settle: {e}"))
}

async fn groups(rs: &Store) -> BTreeMap<String, GroupInfo> {
    within("groups", rs.groups())
        .await
        .unwrap_or_else(|e| panic!("groups: {e}"))
        .into_iter()
        .map(|g| (g.group_id.clone(), g))
        .collect()
}

fn processed(g: &GroupInfo) -> (u64, u64, u64) {
    (g.oldest_processed, g.newest_processed, g.stream_count)
}

async fn read(rs: &Store, s: &str) -> Vec<Message> {
    within("read_stream", rs.read_stream(s, 0, None))
        .await
        .unwrap_or_else(|e| panic!("read_stream: {e}"))
        .into_iter()
        .map(|m| m.message)
        .collect()
}

/// sourced: "appends messages and reserves them in order of arrival". Two claims of one
/// group get two different streams (never the same one twice); every group has its own
/// cursor; a stopped group gets nothing; acknowledging advances the cursor, releasing does
/// not; stats count positions; a group only sees its types.
pub async fn claims_one_stream_per_worker_in_order_of_arrival(f: &dyn ReactorStoreFactory) {
    let rs = f.fresh().await;
    let (s1, s2) = (stream("s1"), stream("s2"));
    let cmd_a = cmd(&s1, 1);
    let evt_a1 = evt(&cmd_a, HAPPENED_1, 1);
    let evt_a2 = evt(&evt_a1, HAPPENED_1, 1);
    let cmd_b = cmd(&s2, 2);
    let evt_b1 = evt(&cmd_b, HAPPENED_1, 2);
    append_next(&rs, &[cmd_a, evt_a1.clone(), evt_a2.clone()]).await;
    append_next(&rs, &[cmd_b, evt_b1.clone()]).await;
    for g in ["group1", "group2", "group3"] {
        register(&rs, group(g, &[HAPPENED_1], 1)).await;
    }
    register(&rs, group("group4", &[HAPPENED_2], 1)).await;
    within("stop", rs.stop_group("group3", "paused by test"))
        .await
        .unwrap_or_else(|e| panic!("stop_group: {e}"));

    let c1 = claim(&rs, "group1", "w1").await.expect("group1 has work");
    let c2 = claim(&rs, "group1", "w2")
        .await
        .expect("group1 has a second stream");
    assert_eq!(ids(&c1), vec![evt_a1.id()], "oldest pending message first");
    assert_eq!(
        ids(&c2),
        vec![evt_b1.id()],
        "the other stream, never the same one"
    );
    assert!(
        claim(&rs, "group1", "w3").await.is_none(),
        "both streams are claimed"
    );
    let g2 = claim(&rs, "group2", "w1")
        .await
        .expect("group2 has its own cursor");
    assert_eq!(ids(&g2), vec![evt_a1.id()]);
    assert!(
        claim(&rs, "group3", "w1").await.is_none(),
        "a stopped group"
    );
    assert!(
        claim(&rs, "group4", "w1").await.is_none(),
        "no message of its types"
    );

    settle_all(&rs, &c1, vec![Action::Ok]).await;
    settle_all(&rs, &c2, vec![Action::Ok]).await;
    settle_all(&rs, &g2, vec![Action::Retry]).await;
    let next = claim(&rs, "group1", "w1").await.expect("evt_a2 is pending");
    assert_eq!(ids(&next), vec![evt_a2.id()], "OK advanced the cursor");
    settle_all(&rs, &next, vec![Action::Ok]).await;
    assert!(claim(&rs, "group1", "w1").await.is_none(), "group1 is done");
    let again = claim(&rs, "group2", "w1")
        .await
        .expect("RETRY did not advance");
    assert_eq!(ids(&again), vec![evt_a1.id()]);
    settle_all(&rs, &again, vec![Action::Ok]).await;

    let stats = groups(&rs).await;
    // Global seqs: s1 = 1..=3, s2 = 4..=5.
    assert_eq!(processed(&stats["group1"]), (3, 5, 2));
    assert_eq!(processed(&stats["group2"]), (2, 2, 1));
    assert_eq!(processed(&stats["group3"]), (0, 0, 0));
    assert_eq!(stats["group3"].status, GroupStatus::Stopped);
    assert_eq!(stats["group3"].reason.as_deref(), Some("paused by test"));
    assert_eq!(stats["group2"].lag, 2, "evt_a2 and evt_b1");
    assert_eq!(stats["group1"].lag, 0);
    assert_eq!(processed(&stats["group4"]), (0, 0, 0));

    let evt_a3 = evt(&evt_a2, HAPPENED_2, 1);
    append_next(&rs, std::slice::from_ref(&evt_a3)).await;
    let c4 = claim(&rs, "group4", "w1")
        .await
        .expect("group4's type arrived");
    assert_eq!(ids(&c4), vec![evt_a3.id()]);
    settle_all(&rs, &c4, vec![]).await;
    assert_eq!(processed(&groups(&rs).await["group4"]), (6, 6, 1));
    assert!(
        matches!(
            rs.claim("nobody", "w1", now_ms()).await,
            Err(EventStoreError::UnknownGroup(_))
        ),
        "an unknown group is an error"
    );
}

/// sourced: "supports a time window": a group starting after a time only gets messages
/// created after it; `StartFrom::Now` is fixed at registration.
pub async fn a_group_starting_later_skips_older_messages(f: &dyn ReactorStoreFactory) {
    let rs = f.fresh().await;
    let s = stream("window");
    let now = now_ms();
    let old = cmd_at(&s, 1, now - 60_000);
    let old_evt = evt(&old, HAPPENED_1, 1);
    let recent = cmd_at(&s, 1, now - 3_000);
    let recent_evt = evt(&recent, HAPPENED_1, 1);
    append_next(&rs, &[old, old_evt]).await;
    append_next(&rs, &[recent, recent_evt.clone()]).await;
    register(
        &rs,
        group("window", &[HAPPENED_1], 10).starting(StartFrom::After(now - 5_000)),
    )
    .await;
    let c = claim(&rs, "window", "w").await.expect("the recent event");
    assert_eq!(ids(&c), vec![recent_evt.id()]);
    settle_all(&rs, &c, vec![]).await;
    assert!(claim(&rs, "window", "w").await.is_none());

    register(
        &rs,
        group("from-now", &[HAPPENED_1], 10).starting(StartFrom::Now),
    )
    .await;
    assert!(
        claim(&rs, "from-now", "w").await.is_none(),
        "nothing created before registration"
    );
    let later = cmd_at(&s, 1, now_ms() + 1_000);
    let later_evt = evt(&later, HAPPENED_1, 1);
    append_next(&rs, &[later, later_evt.clone()]).await;
    let c = claim(&rs, "from-now", "w").await.expect("a later event");
    assert_eq!(ids(&c), vec![later_evt.id()]);
}

/// sourced: "reserves again after reset" with replay flags, and in batch mode "[true, true,
/// false]" after a reset and a new event; reset forgets parked streams too.
pub async fn reset_replays_with_flags(f: &dyn ReactorStoreFactory) {
    let rs = f.fresh().await;
    let s = stream("reset");
    let c0 = cmd(&s, 1);
    let e1 = evt(&c0, HAPPENED_1, 1);
    let e2 = evt(&e1, HAPPENED_1, 1);
    append_next(&rs, &[c0, e1.clone(), e2.clone()]).await;
    register(&rs, group("proj", &[HAPPENED_1], 10)).await;
    let first = claim(&rs, "proj", "w").await.expect("work");
    assert_eq!(flags(&first), vec![false, false]);
    settle_all(&rs, &first, vec![Action::Ok]).await;
    assert!(claim(&rs, "proj", "w").await.is_none());
    within("reset", rs.reset_group("proj"))
        .await
        .unwrap_or_else(|e| panic!("reset_group: {e}"));
    let e3 = evt(&e2, HAPPENED_1, 1);
    append_next(&rs, std::slice::from_ref(&e3)).await;
    let replay = claim(&rs, "proj", "w").await.expect("replay after reset");
    assert_eq!(ids(&replay), vec![e1.id(), e2.id(), e3.id()]);
    assert_eq!(flags(&replay), vec![true, true, false]);
    settle_all(&rs, &replay, vec![Action::Ok]).await;
    // A second reset: everything acknowledged so far replays.
    within("reset", rs.reset_group("proj"))
        .await
        .unwrap_or_else(|e| panic!("reset_group: {e}"));
    let again = claim(&rs, "proj", "w").await.expect("replay");
    assert_eq!(flags(&again), vec![true, true, true]);
    assert!(matches!(
        rs.reset_group("nobody").await,
        Err(EventStoreError::UnknownGroup(_))
    ));
}

/// sourced's actions: AppendNext appends with the next seqs, correlated with the handled
/// message (causation, correlation, metadata) and acknowledges it; Ack acknowledges another
/// message; Sync writes in the acknowledging transaction; empty actions acknowledge.
pub async fn actions_commit_with_the_acknowledgement(f: &dyn ReactorStoreFactory) {
    let rs = f.fresh().await;
    let (s, other) = (stream("acts"), stream("other"));
    let mut meta = serde_json::Map::new();
    meta.insert("tid".into(), json!("evt1"));
    let c0 = cmd(&s, 1).with_metadata(meta);
    let e1 = evt(&c0, HAPPENED_1, 1);
    let e2 = evt(&e1, HAPPENED_1, 2);
    append_next(&rs, &[c0.clone(), e1.clone()]).await;
    let o1 = cmd(&other, 9);
    let o2 = evt(&o1, HAPPENED_1, 9);
    append_next(&rs, &[o1, o2.clone()]).await;
    register(&rs, group("acts", &[HAPPENED_1], 1)).await;
    let c = claim(&rs, "acts", "w").await.expect("e1");
    assert_eq!(ids(&c), vec![e1.id()]);
    let follow = cmd(&s, 2);
    let to_other = cmd(&other, 3);
    let stored = settle_all(
        &rs,
        &c,
        vec![
            Action::AppendNext(vec![follow.clone(), to_other.clone()]),
            Action::Ack(o2.id()),
            Action::Sync(vec![SyncOp::put("docs", "d1", json!({"seen": 1}))]),
        ],
    )
    .await;
    assert_eq!(stored.len(), 2);
    let on_s = read(&rs, &s).await;
    assert_eq!(
        on_s.iter().map(Message::seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let appended = &on_s[2];
    assert_eq!(appended.id(), follow.id());
    assert_eq!(
        appended.causation_id(),
        e1.id(),
        "caused by the handled message"
    );
    assert_eq!(appended.correlation_id(), c0.correlation_id());
    assert_eq!(appended.metadata().get("tid"), Some(&json!("evt1")));
    let on_other = read(&rs, &other).await;
    assert_eq!(on_other.last().map(Message::id), Some(to_other.id()));
    assert_eq!(
        within("document", rs.document("docs", "d1"))
            .await
            .ok()
            .flatten(),
        Some(json!({"seen": 1}))
    );
    // Ack(o2) acknowledged the other stream: nothing of it is pending.
    assert!(
        claim(&rs, "acts", "w").await.is_none(),
        "e1 and o2 acknowledged"
    );
    let stats = groups(&rs).await;
    assert_eq!(stats["acts"].stream_count, 2);
    // A standalone ack (sourced's ack_on) and one on an unknown message.
    append_next(&rs, std::slice::from_ref(&e2)).await;
    assert!(
        within("ack", rs.ack("acts", e2.id()))
            .await
            .unwrap_or_else(|e| panic!("ack: {e}"))
    );
    assert!(
        !within("ack", rs.ack("acts", Uuid::new_v4()))
            .await
            .unwrap_or(true)
    );
    assert!(
        claim(&rs, "acts", "w").await.is_none(),
        "e2 acknowledged by ack"
    );
}

/// sourced: AppendAfter appends when seqs follow and fails on a conflict; here the failed
/// settlement writes nothing (no message, no document, no acknowledgement) and the claim
/// is still held, to be released with the failure.
pub async fn append_after_conflict_writes_nothing(f: &dyn ReactorStoreFactory) {
    let rs = f.fresh().await;
    let s = stream("after");
    let c0 = cmd(&s, 1);
    let e1 = evt(&c0, HAPPENED_1, 1);
    append_next(&rs, &[c0.clone(), e1.clone()]).await;
    register(&rs, group("after", &[HAPPENED_1], 1)).await;
    let c = claim(&rs, "after", "w").await.expect("e1");
    let ok = Action::AppendAfter {
        stream_id: s.clone(),
        messages: vec![evt(&e1, HAPPENED_2, 1)],
    };
    let result = BatchResult::all(vec![(e1.id(), vec![ok])]);
    let plan = plan_settlement(&c, &result).unwrap_or_else(|e| panic!("{e}"));
    let stored = within("settle", rs.settle(&c, plan, now_ms()))
        .await
        .unwrap_or_else(|e| panic!("settle: {e}"));
    assert_eq!(stored[0].message.seq(), 3);

    let e4 = evt(&stored[0].message, HAPPENED_1, 1);
    append_next(&rs, std::slice::from_ref(&e4)).await;
    let c = claim(&rs, "after", "w").await.expect("e4");
    let stale = Action::AppendAfter {
        stream_id: s.clone(),
        messages: vec![cmd(&s, 5).with_seq(2)],
    };
    let result = BatchResult::all(vec![(
        e4.id(),
        vec![
            stale,
            Action::Sync(vec![SyncOp::put("docs", "x", json!(1))]),
        ],
    )]);
    let plan = plan_settlement(&c, &result).unwrap_or_else(|e| panic!("{e}"));
    let failed = within("settle", rs.settle(&c, plan, now_ms())).await;
    assert!(
        matches!(failed, Err(EventStoreError::Conflict { .. })),
        "{failed:?}"
    );
    assert_eq!(read(&rs, &s).await.len(), 4, "nothing appended");
    assert_eq!(
        within("document", rs.document("docs", "x"))
            .await
            .ok()
            .flatten(),
        None
    );
    assert!(
        claim(&rs, "after", "w2").await.is_none(),
        "the claim is still held after a failed settlement"
    );
    let release = Settlement {
        failure: Some(StreamFailure {
            message_id: e4.id(),
            error: "conflict".into(),
            retry_count: 1,
            retry_at_ms: Some(0),
        }),
        ..Settlement::default()
    };
    within("settle", rs.settle(&c, release, now_ms()))
        .await
        .unwrap_or_else(|e| panic!("release: {e}"));
    let again = claim(&rs, "after", "w2").await.expect("retried");
    assert_eq!(ids(&again), vec![e4.id()], "not acknowledged");
    assert_eq!(again.retry_count, 1);
}

/// sourced's batch cases: up to batch_size messages of one stream in one claim; all
/// acknowledged on success; RETRY makes all available again; only handled types; a partial
/// failure at message 3 acknowledges 1 and 2 (with their effects) and redelivers 3 on.
pub async fn batches_and_partial_acknowledgement(f: &dyn ReactorStoreFactory) {
    let rs = f.fresh().await;
    let s = stream("batch");
    let c0 = cmd(&s, 0);
    let mut msgs = vec![c0.clone()];
    let mut last = c0;
    for i in 1..=5 {
        let kind = if i == 2 { HAPPENED_2 } else { HAPPENED_1 };
        let e = evt(&last, kind, i);
        msgs.push(e.clone());
        last = e;
    }
    append_next(&rs, &msgs).await;
    let handled: Vec<Uuid> = msgs
        .iter()
        .filter(|m| m.kind() == HAPPENED_1)
        .map(Message::id)
        .collect();
    register(&rs, group("batch", &[HAPPENED_1], 3)).await;
    let c = claim(&rs, "batch", "w").await.expect("a batch");
    assert_eq!(
        ids(&c),
        handled[..3].to_vec(),
        "only handled types, limited to 3"
    );
    settle_all(&rs, &c, vec![Action::Retry]).await;
    let c = claim(&rs, "batch", "w")
        .await
        .expect("RETRY made them available");
    assert_eq!(ids(&c), handled[..3].to_vec());
    // Partial: 1 and 2 handled (2 with an effect), 3 failed.
    let result = BatchResult {
        handled: vec![
            (handled[0], vec![Action::Ok]),
            (
                handled[1],
                vec![Action::Sync(vec![SyncOp::put("docs", "p", json!(2))])],
            ),
        ],
        failed: Some((handled[2], "boom on 3".into())),
    };
    let mut plan = plan_settlement(&c, &result).unwrap_or_else(|e| panic!("{e}"));
    plan.failure = Some(StreamFailure {
        message_id: handled[2],
        error: "boom on 3".into(),
        retry_count: 1,
        retry_at_ms: Some(now_ms() + 60_000),
    });
    within("settle", rs.settle(&c, plan, now_ms()))
        .await
        .unwrap_or_else(|e| panic!("settle: {e}"));
    assert_eq!(
        within("document", rs.document("docs", "p"))
            .await
            .ok()
            .flatten(),
        Some(json!(2)),
        "the successful prefix's effects"
    );
    let stats = groups(&rs).await;
    let failing = &stats["batch"].failing;
    assert_eq!(failing.len(), 1);
    assert_eq!(failing[0].stream_id, s);
    assert!(!failing[0].parked);
    assert_eq!(failing[0].error.as_deref(), Some("boom on 3"));
    assert_eq!(failing[0].message_id, Some(handled[2]));
    assert!(
        claim(&rs, "batch", "w").await.is_none(),
        "the stream backs off until its retry time"
    );
    let c = claim_at(&rs, "batch", "w", now_ms() + 61_000)
        .await
        .expect("retried after its back-off");
    assert_eq!(ids(&c), handled[2..].to_vec(), "3 and the rest");
    assert_eq!(c.retry_count, 1);
    settle_all(&rs, &c, vec![Action::Ok]).await;
    let stats = groups(&rs).await;
    assert!(
        stats["batch"].failing.is_empty(),
        "a success resets the failure"
    );
    assert_eq!(stats["batch"].lag, 0);
    // Empty action pairs release without acknowledging (sourced: "empty action_pairs []").
    let e6 = evt(&last, HAPPENED_1, 6);
    append_next(&rs, std::slice::from_ref(&e6)).await;
    let c = claim(&rs, "batch", "w").await.expect("e6");
    let plan = plan_settlement(&c, &BatchResult::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.ack, None);
    within("settle", rs.settle(&c, plan, now_ms()))
        .await
        .unwrap_or_else(|e| panic!("settle: {e}"));
    assert_eq!(
        ids(&claim(&rs, "batch", "w").await.expect("e6 again")),
        vec![e6.id()]
    );
}

/// The improvement over sourced: a parked stream stops only itself; the group's other
/// streams flow; `retry_stream` resumes it.
pub async fn a_parked_stream_does_not_block_the_others(f: &dyn ReactorStoreFactory) {
    let rs = f.fresh().await;
    let (bad, good) = (stream("bad"), stream("good"));
    let b0 = cmd(&bad, 1);
    let b1 = evt(&b0, HAPPENED_1, 1);
    append_next(&rs, &[b0, b1.clone()]).await;
    let g0 = cmd(&good, 2);
    let g1 = evt(&g0, HAPPENED_1, 2);
    append_next(&rs, &[g0, g1.clone()]).await;
    register(&rs, group("park", &[HAPPENED_1], 10)).await;
    let c = claim(&rs, "park", "w").await.expect("bad first");
    assert_eq!(ids(&c), vec![b1.id()]);
    let park = Settlement {
        failure: Some(StreamFailure {
            message_id: b1.id(),
            error: "poison".into(),
            retry_count: 1,
            retry_at_ms: None,
        }),
        ..Settlement::default()
    };
    within("settle", rs.settle(&c, park, now_ms()))
        .await
        .unwrap_or_else(|e| panic!("park: {e}"));
    let c = claim_at(&rs, "park", "w", now_ms() + 3_600_000)
        .await
        .expect("the good stream flows");
    assert_eq!(ids(&c), vec![g1.id()]);
    settle_all(&rs, &c, vec![Action::Ok]).await;
    assert!(
        claim_at(&rs, "park", "w", now_ms() + 3_600_000)
            .await
            .is_none(),
        "parked until retried, however late"
    );
    let stats = groups(&rs).await;
    assert_eq!(stats["park"].status, GroupStatus::Active);
    assert!(stats["park"].failing[0].parked);
    within("retry_stream", rs.retry_stream("park", &bad))
        .await
        .unwrap_or_else(|e| panic!("retry_stream: {e}"));
    let c = claim(&rs, "park", "w").await.expect("resumed");
    assert_eq!(ids(&c), vec![b1.id()]);
    assert_eq!(c.retry_count, 1, "the count is kept until a success");
    settle_all(&rs, &c, vec![Action::Ok]).await;
    assert!(groups(&rs).await["park"].failing.is_empty());
}

/// sourced: "with retry_at": a paused group gets nothing until its time; start lifts stops
/// and pauses.
pub async fn pause_stop_and_start(f: &dyn ReactorStoreFactory) {
    let rs = f.fresh().await;
    let s = stream("pause");
    let c0 = cmd(&s, 1);
    let e1 = evt(&c0, HAPPENED_1, 1);
    append_next(&rs, &[c0, e1]).await;
    register(&rs, group("pause", &[HAPPENED_1], 1)).await;
    let now = now_ms();
    within("pause", rs.pause_group("pause", now + 4_000))
        .await
        .unwrap_or_else(|e| panic!("pause: {e}"));
    assert!(claim_at(&rs, "pause", "w", now).await.is_none());
    assert_eq!(groups(&rs).await["pause"].retry_at_ms, Some(now + 4_000));
    assert!(claim_at(&rs, "pause", "w", now + 5_000).await.is_some());
    let rs2 = Arc::clone(&rs);
    within("stop", rs2.stop_group("pause", "operator"))
        .await
        .unwrap_or_else(|e| panic!("stop: {e}"));
    within("start", rs.start_group("pause"))
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let g = &groups(&rs).await["pause"];
    assert_eq!(
        (g.status, g.reason.clone(), g.retry_at_ms),
        (GroupStatus::Active, None, None)
    );
    assert!(matches!(
        rs.stop_group("nobody", "x").await,
        Err(EventStoreError::UnknownGroup(_))
    ));
}

/// sourced: "schedules messages and handles them in the future, setting correlation IDs
/// properly" and "#schedule_messages and #update_schedule!": scheduled messages are not in
/// their stream until due, then appended in order with their correlation.
pub async fn scheduled_messages_are_promoted_when_due(f: &dyn ReactorStoreFactory) {
    let rs = f.fresh().await;
    let s = stream("sched");
    let c0 = cmd(&s, 1);
    append_next(&rs, std::slice::from_ref(&c0)).await;
    register(&rs, group("sched", &[DO_SOMETHING, HAPPENED_1], 1)).await;
    let c = claim(&rs, "sched", "w").await.expect("the command");
    let now = now_ms();
    let later = evt(&c0, HAPPENED_1, 2);
    let result = BatchResult::all(vec![(
        c0.id(),
        vec![Action::Schedule {
            at_ms: now + 10_000,
            messages: vec![later.clone()],
        }],
    )]);
    let plan = plan_settlement(&c, &result).unwrap_or_else(|e| panic!("{e}"));
    within("settle", rs.settle(&c, plan, now))
        .await
        .unwrap_or_else(|e| panic!("settle: {e}"));
    let direct = [
        ScheduledMessage {
            at_ms: now + 2_000,
            message: cmd(&s, 11),
        },
        ScheduledMessage {
            at_ms: now + 2_000,
            message: cmd(&s, 12),
        },
    ];
    within("schedule", rs.schedule(&direct))
        .await
        .unwrap_or_else(|e| panic!("schedule: {e}"));
    let promote = |at: i64| {
        let rs = Arc::clone(&rs);
        async move {
            within("promote_due", rs.promote_due(at))
                .await
                .unwrap_or_else(|e| panic!("promote_due: {e}"))
        }
    };
    assert!(promote(now).await.is_empty());
    assert_eq!(read(&rs, &s).await.len(), 1);
    assert!(
        claim(&rs, "sched", "w").await.is_none(),
        "only the command, acknowledged"
    );
    assert_eq!(promote(now + 3_000).await.len(), 2);
    assert_eq!(promote(now + 11_000).await.len(), 1);
    assert!(
        promote(now + 120_000).await.is_empty(),
        "each promoted once"
    );
    let on_s = read(&rs, &s).await;
    assert_eq!(
        on_s.iter().map(Message::seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        on_s.iter().map(Message::id).collect::<Vec<_>>(),
        vec![
            c0.id(),
            direct[0].message.id(),
            direct[1].message.id(),
            later.id()
        ]
    );
    let promoted = &on_s[3];
    assert_eq!(promoted.causation_id(), c0.id());
    assert_eq!(promoted.correlation_id(), c0.correlation_id());
    assert_eq!(
        promoted.created_at_ms(),
        now + 11_000,
        "created when promoted"
    );
    let c = claim(&rs, "sched", "w")
        .await
        .expect("the promoted messages");
    assert_eq!(ids(&c), vec![direct[0].message.id()]);
}

/// sourced (PG and SQLite extras): `update_schedule!` from two concurrent callers appends
/// each scheduled message exactly once, in order.
pub async fn concurrent_promoters_append_each_once(f: &dyn ReactorStoreFactory) {
    let rs = f.fresh().await;
    let s = stream("promote");
    let now = now_ms();
    let scheduled: Vec<ScheduledMessage> = (0..60)
        .map(|i| ScheduledMessage {
            at_ms: now - 1,
            message: cmd(&s, i),
        })
        .collect();
    within("schedule", rs.schedule(&scheduled))
        .await
        .unwrap_or_else(|e| panic!("schedule: {e}"));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let rs = Arc::clone(&rs);
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            loop {
                let got = rs.promote_due(now_ms()).await;
                match got {
                    Ok(v) if v.is_empty() => return n,
                    Ok(v) => n += v.len(),
                    Err(e) if e.retryable() => {}
                    Err(e) => panic!("promote_due: {e}"),
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += within("promoter", t)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(total, 60);
    let on_s = read(&rs, &s).await;
    assert_eq!(
        on_s.iter().map(Message::id).collect::<Vec<_>>(),
        scheduled.iter().map(|m| m.message.id()).collect::<Vec<_>>(),
        "each exactly once, in scheduling order"
    );
}

/// sourced: "worker heartbeats and stale claim reaping": a stale worker's claim is released
/// after the TTL and another worker takes the stream; the stale worker can no longer settle
/// it; a live worker's claim is kept; a worker that never sent a heartbeat is released too.
pub async fn stale_claims_are_released_after_the_ttl(f: &dyn ReactorStoreFactory) {
    let rs = f.fresh().await;
    let (s1, s2) = (stream("stale"), stream("live"));
    for s in [&s1, &s2] {
        let c0 = cmd(s, 1);
        let e1 = evt(&c0, HAPPENED_1, 1);
        append_next(&rs, &[c0, e1]).await;
    }
    register(&rs, group("ttl", &[HAPPENED_1], 10)).await;
    let t0 = now_ms();
    let ttl = Duration::from_secs(120);
    within(
        "heartbeat",
        rs.heartbeat(&["dead".into(), "live".into()], t0),
    )
    .await
    .unwrap_or_else(|e| panic!("heartbeat: {e}"));
    let dead = claim_at(&rs, "ttl", "dead", t0).await.expect("work");
    let live = claim_at(&rs, "ttl", "live", t0).await.expect("work");
    assert_ne!(dead.stream_id, live.stream_id);
    let later = t0 + 121_000;
    assert_eq!(
        within("release", rs.release_stale_claims(ttl, t0 + 60_000))
            .await
            .unwrap_or(9),
        0,
        "not before the TTL"
    );
    within("heartbeat", rs.heartbeat(&["live".into()], later - 1_000))
        .await
        .unwrap_or_else(|e| panic!("heartbeat: {e}"));
    assert_eq!(
        within("release", rs.release_stale_claims(ttl, later))
            .await
            .unwrap_or_else(|e| panic!("release: {e}")),
        1,
        "only the dead worker's claim"
    );
    let taken = claim_at(&rs, "ttl", "other", later)
        .await
        .expect("released stream");
    assert_eq!(taken.stream_id, dead.stream_id);
    let lost = rs
        .settle(
            &dead,
            Settlement {
                ack: Some(1_000),
                ..Settlement::default()
            },
            later,
        )
        .await;
    assert!(
        matches!(lost, Err(EventStoreError::ClaimLost(_))),
        "{lost:?}"
    );
    settle_all(&rs, &taken, vec![Action::Ok]).await;
    settle_all(&rs, &live, vec![Action::Ok]).await;
    assert_eq!(groups(&rs).await["ttl"].lag, 0);
    // A worker that never sent a heartbeat.
    let s3 = stream("silent");
    let c0 = cmd(&s3, 1);
    append_next(&rs, &[c0.clone(), evt(&c0, HAPPENED_1, 1)]).await;
    let silent = claim_at(&rs, "ttl", "silent", t0).await.expect("work");
    assert_eq!(silent.stream_id, s3);
    assert_eq!(
        within("release", rs.release_stale_claims(ttl, later))
            .await
            .unwrap_or_else(|e| panic!("release: {e}")),
        1
    );
}

/// sourced's concurrency case (3 workers, two interleaved streams): workers claiming and
/// settling in parallel never hold one stream at the same time, and every message is
/// acknowledged exactly once, per stream in order.
pub async fn concurrent_workers_never_share_a_stream(f: &dyn ReactorStoreFactory) {
    let rs = f.fresh().await;
    let streams: Vec<String> = (0..4).map(|i| stream(&format!("conc{i}"))).collect();
    let mut expected: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    let mut heads: Vec<Message> = streams.iter().map(|s| cmd(s, 0)).collect();
    for h in &heads {
        append_next(&rs, std::slice::from_ref(h)).await;
    }
    for round in 0..15 {
        for h in &mut heads {
            let e = evt(h, HAPPENED_1, round);
            append_next(&rs, std::slice::from_ref(&e)).await;
            expected
                .entry(e.stream_id().to_owned())
                .or_default()
                .push(e.id());
            *h = e;
        }
    }
    register(&rs, group("conc", &[HAPPENED_1], 4)).await;
    let held: Arc<Mutex<HashSet<String>>> = Arc::default();
    let seen: Arc<Mutex<BTreeMap<String, Vec<Uuid>>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..3 {
        let (rs, held, seen) = (Arc::clone(&rs), Arc::clone(&held), Arc::clone(&seen));
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut idle = 0;
            while idle < 5 {
                let c = match rs.claim("conc", &worker, now_ms()).await {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(e) if e.retryable() => continue,
                    Err(e) => panic!("claim: {e}"),
                };
                idle = 0;
                assert!(
                    held.lock()
                        .map(|mut h| h.insert(c.stream_id.clone()))
                        .unwrap_or(false),
                    "stream {} claimed twice at once",
                    c.stream_id
                );
                tokio::task::yield_now().await;
                if let Ok(mut s) = seen.lock() {
                    s.entry(c.stream_id.clone()).or_default().extend(ids(&c));
                }
                if let Ok(mut h) = held.lock() {
                    h.remove(&c.stream_id);
                }
                settle_all(&rs, &c, vec![Action::Ok]).await;
            }
        }));
    }
    for t in tasks {
        within("worker", t).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(seen, expected, "each message once, per stream in order");
}

/// `commit_with`: a commit, scheduled messages and acknowledgements in one transaction
/// (the unit of work's write); acknowledgements for unregistered groups are skipped, and a
/// failed commit writes none of it.
pub async fn commit_with_schedules_and_acknowledges_atomically(f: &dyn ReactorStoreFactory) {
    let rs = f.fresh().await;
    let s = stream("unit");
    register(&rs, group("Actor", &[DO_SOMETHING, HAPPENED_1], 10)).await;
    let c0 = cmd(&s, 1).with_seq(1);
    let e1 = evt(&c0, HAPPENED_1, 1).with_seq(2);
    let later = ScheduledMessage {
        at_ms: now_ms() + 1_000,
        message: cmd(&s, 2),
    };
    let commit = crate::Commit {
        appends: vec![crate::Append {
            stream_id: s.clone(),
            expected: crate::ExpectedSeq::Exactly(0),
            messages: vec![c0.clone(), e1.clone()],
        }],
        sync: Vec::new(),
    };
    let acks = vec![
        ("Actor".to_owned(), c0.id()),
        ("Actor".to_owned(), e1.id()),
        ("NotRegistered".to_owned(), e1.id()),
    ];
    let stored = within(
        "commit_with",
        rs.commit_with(commit.clone(), std::slice::from_ref(&later), &acks),
    )
    .await
    .unwrap_or_else(|e| panic!("commit_with: {e}"));
    assert_eq!(stored.len(), 2);
    assert!(
        claim(&rs, "Actor", "w").await.is_none(),
        "both acknowledged"
    );
    let stats = groups(&rs).await;
    assert_eq!(stats.len(), 1, "no group created by an acknowledgement");
    assert_eq!(processed(&stats["Actor"]), (2, 2, 1));
    // The same commit again conflicts: nothing scheduled twice.
    let again = rs
        .commit_with(commit, std::slice::from_ref(&later), &acks)
        .await;
    assert!(
        matches!(again, Err(EventStoreError::Conflict { .. })),
        "{again:?}"
    );
    let promoted = within("promote_due", rs.promote_due(now_ms() + 2_000))
        .await
        .unwrap_or_else(|e| panic!("promote_due: {e}"));
    assert_eq!(
        promoted.len(),
        1,
        "scheduled once, by the successful commit only"
    );
    let c = claim(&rs, "Actor", "w")
        .await
        .expect("the promoted command");
    assert_eq!(ids(&c), vec![later.message.id()]);
}
