//! Scenarios for the replica contract ([`crate::Replica`]).
//!
//! The sync consumer writes current rows reloaded from the store, so the scenarios check
//! what it relies on: rows read back exactly as written (coordinates bit for bit), writes
//! that can be repeated and reordered, and reads ("my rides", the verification scan) that
//! agree with the writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use domain::RideParams;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::ReplicaFactory;
use super::fixtures::{ride_row, within};
use crate::{Replica, RideRow};

/// The page size of [`scan`]: small, so that a scan takes several pages.
const SCAN_PAGE: usize = 7;

async fn upsert(replica: &Arc<dyn Replica>, rides: &[RideRow]) {
    within("replica upsert", replica.upsert(rides))
        .await
        .unwrap_or_else(|e| panic!("upsert of {} rides must succeed: {e}", rides.len()));
}

async fn delete(replica: &Arc<dyn Replica>, ids: &[i64]) {
    within("replica delete", replica.delete(ids))
        .await
        .unwrap_or_else(|e| panic!("delete of {ids:?} must succeed: {e}"));
}

async fn page(replica: &Arc<dyn Replica>, after_id: i64, limit: usize) -> Vec<RideRow> {
    within("replica page", replica.page(after_id, limit))
        .await
        .unwrap_or_else(|e| panic!("page({after_id}, {limit}) failed: {e}"))
}

async fn count(replica: &Arc<dyn Replica>) -> u64 {
    within("replica count", replica.count())
        .await
        .unwrap_or_else(|e| panic!("count failed: {e}"))
}

async fn rides_of(
    replica: &Arc<dyn Replica>,
    user_id: i64,
    before_id: Option<i64>,
    limit: usize,
) -> Vec<RideRow> {
    within(
        "replica rides_for_user",
        replica.rides_for_user(user_id, before_id, limit),
    )
    .await
    .unwrap_or_else(|e| panic!("rides_for_user({user_id}, {before_id:?}, {limit}) failed: {e}"))
}

/// Every row, by paging from the start as a verifier does; checks that every page respects
/// its limit and that ids strictly increase across pages.
async fn scan(replica: &Arc<dyn Replica>) -> Vec<RideRow> {
    let mut all: Vec<RideRow> = Vec::new();
    let mut after = i64::MIN;
    loop {
        let p = page(replica, after, SCAN_PAGE).await;
        assert!(
            p.len() <= SCAN_PAGE,
            "page must respect its limit: asked {SCAN_PAGE}, got {}",
            p.len()
        );
        let Some(last) = p.last() else { break };
        after = last.id;
        for row in p {
            if let Some(prev) = all.last() {
                assert!(
                    prev.id < row.id,
                    "page must return increasing ids: {} came after {}",
                    row.id,
                    prev.id
                );
            }
            all.push(row);
        }
    }
    all
}

/// The rows sorted by id, as the replica must list them.
fn by_id(rows: &[RideRow]) -> Vec<RideRow> {
    let map: BTreeMap<i64, RideRow> = rows.iter().map(|r| (r.id, r.clone())).collect();
    map.into_values().collect()
}

/// The coordinates' bit patterns: what "exact" means (`==` on `f64` also accepts `-0.0` for
/// `0.0`).
fn bits(p: &RideParams) -> [u64; 4] {
    [
        p.origin_lat().to_bits(),
        p.origin_lon().to_bits(),
        p.target_lat().to_bits(),
        p.target_lon().to_bits(),
    ]
}

/// Parameters with 17 significant digits (a real city), and extremes of the ranges.
fn awkward_params() -> Vec<RideParams> {
    let p = |a, b, c, d| {
        RideParams::new(a, b, c, d).unwrap_or_else(|e| panic!("fixture parameters: {e}"))
    };
    vec![
        p(
            37.760_634_058_469_556,
            -122.419_625_859_315_67,
            37.794_012_079_301_16,
            -122.395_083_461_852_9,
        ),
        p(
            0.1 + 0.2,
            -179.999_999_999_999_97,
            -89.999_999_999_999_99,
            1.0 / 3.0,
        ),
        p(90.0, 180.0, -90.0, -180.0),
        p(f64::MIN_POSITIVE, 5e-324, -5e-324, 1e-300),
    ]
}

/// Rule: rows read back from `page` exactly as upserted: every field, coordinates bit for
/// bit (17 significant digits, subnormals, range ends), a charge id `None` and `Some`, a key
/// id `None` and `Some`. An empty upsert does nothing.
/// Preconditions: a fresh, empty replica.
pub async fn upsert_then_page_returns_identical_rows(f: &dyn ReplicaFactory) {
    let replica = f.fresh().await;
    assert_eq!(scan(&replica).await, Vec::new(), "a fresh replica is empty");
    upsert(&replica, &[]).await;
    let rows: Vec<RideRow> = awkward_params()
        .into_iter()
        .enumerate()
        .map(|(i, params)| {
            let id = i64::try_from(i).unwrap_or_default() + 1;
            let mut row = ride_row(id, 1);
            row.params = params;
            if i % 2 == 1 {
                row.charge_id = Some(format!("ch_contract_{id}"));
            }
            if i == 2 {
                row.idempotency_key_id = None;
            }
            row.distance_mm = row.params.distance_mm();
            row
        })
        .collect();
    upsert(&replica, &rows).await;
    let read = scan(&replica).await;
    assert_eq!(read, rows, "page must return the upserted rows unchanged");
    for (got, want) in read.iter().zip(&rows) {
        assert_eq!(
            bits(&got.params),
            bits(&want.params),
            "ride {}: coordinates must round-trip bit for bit",
            want.id
        );
    }
}

/// Rule: upserting the same rows again changes nothing; upserting a changed row replaces it
/// whole (a charge id set later appears, a key id cleared by the reaper disappears); within
/// one batch a later row for the same id wins.
/// Preconditions: a fresh, empty replica.
pub async fn upsert_is_idempotent_and_updates(f: &dyn ReplicaFactory) {
    let replica = f.fresh().await;
    let rows: Vec<RideRow> = (1..=5).map(|id| ride_row(id, 1 + id % 2)).collect();
    upsert(&replica, &rows).await;
    upsert(&replica, &rows).await;
    assert_eq!(
        scan(&replica).await,
        rows,
        "a repeated upsert changes nothing"
    );
    assert_eq!(count(&replica).await, 5, "a repeated upsert adds no row");

    let mut charged = rows[2].clone();
    charged.charge_id = Some("ch_contract_later".to_owned());
    let mut reaped = rows[3].clone();
    reaped.idempotency_key_id = None;
    upsert(&replica, &[charged.clone(), reaped.clone()]).await;
    let mut expected = rows.clone();
    expected[2] = charged.clone();
    expected[3] = reaped;
    assert_eq!(
        scan(&replica).await,
        expected,
        "an upsert replaces the whole row: the charge id set, the key id cleared"
    );

    let mut first = rows[0].clone();
    first.charge_id = Some("ch_contract_first".to_owned());
    let mut last = rows[0].clone();
    last.charge_id = Some("ch_contract_last".to_owned());
    upsert(&replica, &[first, rows[1].clone(), last.clone()]).await;
    expected[0] = last;
    assert_eq!(
        scan(&replica).await,
        expected,
        "within one batch the later row for an id wins"
    );
    assert_eq!(
        rides_of(&replica, charged.user_id, None, 10)
            .await
            .into_iter()
            .find(|r| r.id == charged.id),
        Some(charged),
        "rides_for_user shows the updated row"
    );
}

/// Rule: `delete` removes exactly the given ids; missing ids, a repeated delete and an empty
/// slice are not errors and change nothing else.
/// Preconditions: a fresh, empty replica.
pub async fn delete_is_idempotent_and_exact(f: &dyn ReplicaFactory) {
    let replica = f.fresh().await;
    delete(&replica, &[1, 2]).await;
    let rows: Vec<RideRow> = (1..=6).map(|id| ride_row(id, 1)).collect();
    upsert(&replica, &rows).await;
    delete(&replica, &[]).await;
    assert_eq!(
        scan(&replica).await,
        rows,
        "an empty delete changes nothing"
    );
    delete(&replica, &[5, 2, 999, 2]).await;
    let kept: Vec<RideRow> = rows
        .iter()
        .filter(|r| ![2, 5].contains(&r.id))
        .cloned()
        .collect();
    assert_eq!(
        scan(&replica).await,
        kept,
        "delete removes exactly the given ids"
    );
    delete(&replica, &[2, 5]).await;
    assert_eq!(
        scan(&replica).await,
        kept,
        "a repeated delete changes nothing"
    );
    assert_eq!(count(&replica).await, 4, "count after deletes");
    upsert(&replica, &rows[1..2]).await;
    assert_eq!(
        page(&replica, 1, 1).await,
        rows[1..2].to_vec(),
        "a deleted ride can be upserted again"
    );
}

/// Rule: `page` returns rows with ids greater than `after_id`, in increasing id order, at
/// most `limit`, whatever order they were upserted in; after the last row, and with limit
/// 0, it returns nothing.
/// Preconditions: a fresh, empty replica.
pub async fn page_paginates_in_id_order(f: &dyn ReplicaFactory) {
    let replica = f.fresh().await;
    let mut rng = StdRng::seed_from_u64(7);
    // Sparse ids, as a store leaves them after deletions.
    let mut rows: Vec<RideRow> = (1..=40)
        .map(|n| ride_row(n * 3 + rng.random_range(0..3), n % 4))
        .collect();
    rows.shuffle(&mut rng);
    for chunk in rows.chunks(9) {
        upsert(&replica, chunk).await;
    }
    let expected = by_id(&rows);
    assert_eq!(
        scan(&replica).await,
        expected,
        "a scan by pages lists every row once, by id"
    );
    let middle = expected[19].id;
    assert_eq!(
        page(&replica, middle, 5).await,
        expected[20..25].to_vec(),
        "page starts strictly after `after_id`"
    );
    assert_eq!(
        page(&replica, middle - 1, 1).await,
        expected[19..20].to_vec(),
        "an `after_id` between two ids starts at the next one"
    );
    assert_eq!(
        page(&replica, i64::MIN, 1_000).await,
        expected,
        "one large page holds everything"
    );
    let last = expected[expected.len() - 1].id;
    assert_eq!(
        page(&replica, last, 10).await,
        Vec::new(),
        "nothing after the last"
    );
    assert_eq!(page(&replica, i64::MIN, 0).await, Vec::new(), "limit 0");
}

/// Rule: `count` is the number of distinct rides held: 0 when fresh, unchanged by repeated
/// upserts, lowered by deletes of existing ids only.
/// Preconditions: a fresh, empty replica.
pub async fn count_counts_rows(f: &dyn ReplicaFactory) {
    let replica = f.fresh().await;
    assert_eq!(count(&replica).await, 0, "a fresh replica counts 0");
    let rows: Vec<RideRow> = (1..=12).map(|id| ride_row(id, 1)).collect();
    upsert(&replica, &rows).await;
    assert_eq!(count(&replica).await, 12, "12 rides");
    upsert(&replica, &rows[..6]).await;
    assert_eq!(count(&replica).await, 12, "repeated upserts count once");
    delete(&replica, &[1, 2, 3, 1_000]).await;
    assert_eq!(count(&replica).await, 9, "3 existing rides deleted");
    delete(&replica, &rows.iter().map(|r| r.id).collect::<Vec<_>>()).await;
    assert_eq!(count(&replica).await, 0, "everything deleted");
}

/// Rule: `rides_for_user` lists one user's rides newest first (decreasing ids), only
/// theirs, at most `limit`, pages with `before_id` without duplicates or gaps, and forgets
/// deleted rides.
/// Preconditions: a fresh, empty replica.
pub async fn rides_for_user_newest_first_and_forgets_deleted(f: &dyn ReplicaFactory) {
    let replica = f.fresh().await;
    let mut rng = StdRng::seed_from_u64(11);
    let mut rows: Vec<RideRow> = (1..=30).map(|id| ride_row(id, 1 + id % 3)).collect();
    rows.shuffle(&mut rng);
    upsert(&replica, &rows).await;
    let newest_first = |user_id: i64, rows: &[RideRow]| {
        let mut mine: Vec<RideRow> = rows
            .iter()
            .filter(|r| r.user_id == user_id)
            .cloned()
            .collect();
        mine.sort_by_key(|r| std::cmp::Reverse(r.id));
        mine
    };
    for user_id in 1..=3 {
        assert_eq!(
            rides_of(&replica, user_id, None, 100).await,
            newest_first(user_id, &rows),
            "user {user_id}'s rides, newest first, and only theirs"
        );
    }
    assert_eq!(
        rides_of(&replica, 99, None, 10).await,
        Vec::new(),
        "a user without rides has none"
    );
    let expected = newest_first(2, &rows);
    assert_eq!(
        rides_of(&replica, 2, None, 3).await,
        expected[..3].to_vec(),
        "limit keeps the newest"
    );
    assert_eq!(rides_of(&replica, 2, None, 0).await, Vec::new(), "limit 0");
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let p = rides_of(&replica, 2, before, 4).await;
        assert!(p.len() <= 4, "rides_for_user must respect its limit");
        let Some(last) = p.last() else { break };
        before = Some(last.id);
        paged.extend(p);
    }
    assert_eq!(
        paged, expected,
        "paging with before_id lists every ride once"
    );

    let doomed: Vec<i64> = expected.iter().step_by(2).map(|r| r.id).collect();
    delete(&replica, &doomed).await;
    let left: Vec<RideRow> = expected
        .iter()
        .filter(|r| !doomed.contains(&r.id))
        .cloned()
        .collect();
    assert_eq!(
        rides_of(&replica, 2, None, 100).await,
        left,
        "deleted rides leave the user's list"
    );
    assert_eq!(
        rides_of(&replica, 1, None, 100).await,
        newest_first(1, &rows),
        "another user's list is untouched by the deletes"
    );
}

/// Rule: concurrent upserts and deletes never leave a ride half written: 8 tasks upserting
/// the same rows in different orders and batches end with exactly those rows, in `page`,
/// `count` and `rides_for_user` alike; 8 tasks deleting overlapping sets end with none.
/// Preconditions: a fresh, empty replica.
pub async fn concurrent_upserts_end_consistent(f: &dyn ReplicaFactory) {
    let replica = f.fresh().await;
    let rows: Vec<RideRow> = (1..=60)
        .map(|id| {
            let mut r = ride_row(id, 1 + id % 2);
            if id % 5 == 0 {
                r.charge_id = Some(format!("ch_contract_concurrent_{id}"));
            }
            r
        })
        .collect();
    let tasks: Vec<_> = (0..8_u64)
        .map(|t| {
            let replica = Arc::clone(&replica);
            let mut mine = rows.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(100 + t);
                mine.shuffle(&mut rng);
                let size = 1 + usize::try_from(t).unwrap_or_default() * 3;
                for chunk in mine.chunks(size) {
                    replica.upsert(chunk).await?;
                }
                Ok::<(), crate::ReplicaError>(())
            })
        })
        .collect();
    for task in tasks {
        within("concurrent upserts", task)
            .await
            .unwrap_or_else(|e| panic!("an upserting task panicked: {e}"))
            .unwrap_or_else(|e| panic!("a concurrent upsert failed: {e}"));
    }
    assert_eq!(
        scan(&replica).await,
        rows,
        "the rows after concurrent upserts"
    );
    assert_eq!(
        count(&replica).await,
        60,
        "the count after concurrent upserts"
    );
    for user_id in 1..=2 {
        let mut mine: Vec<RideRow> = rows
            .iter()
            .filter(|r| r.user_id == user_id)
            .cloned()
            .collect();
        mine.reverse();
        assert_eq!(
            rides_of(&replica, user_id, None, 100).await,
            mine,
            "user {user_id}'s list after concurrent upserts"
        );
    }

    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let tasks: Vec<_> = (0..8_usize)
        .map(|t| {
            let replica = Arc::clone(&replica);
            let mine: Vec<i64> = ids.iter().copied().skip(t * 5).collect();
            tokio::spawn(async move { replica.delete(&mine).await })
        })
        .collect();
    for task in tasks {
        within("concurrent deletes", task)
            .await
            .unwrap_or_else(|e| panic!("a deleting task panicked: {e}"))
            .unwrap_or_else(|e| panic!("a concurrent delete failed: {e}"));
    }
    assert_eq!(scan(&replica).await, Vec::new(), "every ride deleted");
    assert_eq!(count(&replica).await, 0, "count after concurrent deletes");
    for user_id in 1..=2 {
        assert_eq!(
            rides_of(&replica, user_id, None, 100).await,
            Vec::new(),
            "user {user_id}'s list after concurrent deletes"
        );
    }
}

/// Rule: a replica opened again (as a restarted sync consumer would) holds the same rows.
/// Preconditions: a fresh replica; skipped by backends that keep nothing (memory).
pub async fn reopen_keeps_rows(f: &dyn ReplicaFactory) {
    let replica = f.fresh().await;
    let mut rows: Vec<RideRow> = (1..=9).map(|id| ride_row(id, 1)).collect();
    rows[4].charge_id = Some("ch_contract_reopen".to_owned());
    rows[4].params = awkward_params()[0];
    upsert(&replica, &rows).await;
    delete(&replica, &[3]).await;
    rows.remove(2);
    let Some(replica) = f.reopen(replica).await else {
        return;
    };
    assert_eq!(scan(&replica).await, rows, "rows after reopening");
    assert_eq!(count(&replica).await, 8, "count after reopening");
    assert_eq!(
        bits(&scan(&replica).await[3].params),
        bits(&rows[3].params),
        "coordinates after reopening"
    );
}
