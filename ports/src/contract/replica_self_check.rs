//! The replica suite checked against itself: a tiny correct replica passes every scenario,
//! and the same replica with one deliberate bug fails the scenario that names that bug.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use domain::RideParams;

use super::ReplicaFactory;
use crate::{Replica, ReplicaError, RideRow};

/// A deliberate bug of [`MapReplica`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// Coordinates are stored as `f32`.
    RoundsCoordinates,
    /// An upsert keeps the fields the new row has as `None` (a merge, not a replace).
    MergesFields,
    /// An upsert leaves an existing row unchanged.
    KeepsOldRows,
    /// The first row of a batch wins over a later one for the same id.
    FirstInBatchWins,
    /// `delete` also removes the id after each given one.
    DeletesTheNeighbour,
    /// `page` returns rows in upsert order, not id order.
    PagesInUpsertOrder,
    /// `count` counts upserts, not rows.
    CountsUpserts,
    /// `rides_for_user` lists rides oldest first.
    ListsOldestFirst,
    /// `rides_for_user` keeps listing deleted rides.
    ListsDeletedRides,
    /// A reopen loses everything.
    ForgetsOnReopen,
}

/// Rides by id, plus the upsert order and the per-user lists the bugs need.
#[derive(Default)]
struct State {
    rides: BTreeMap<i64, RideRow>,
    /// Ids in first-upsert order.
    order: Vec<i64>,
    /// Every ride ever upserted, deleted or not (for [`Bug::ListsDeletedRides`]).
    ever: BTreeMap<i64, RideRow>,
    upserts: u64,
}

struct MapReplica {
    bug: Bug,
    state: Mutex<State>,
}

impl MapReplica {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `p` with every coordinate rounded through `f32`.
fn rounded(p: &RideParams) -> RideParams {
    let r = |v: f64| f64::from(v as f32);
    RideParams::new(
        r(p.origin_lat()),
        r(p.origin_lon()),
        r(p.target_lat()),
        r(p.target_lon()),
    )
    .unwrap_or(*p)
}

#[async_trait]
impl Replica for MapReplica {
    fn describe(&self) -> String {
        "map://self-check".into()
    }

    async fn ping(&self) -> Result<(), ReplicaError> {
        Ok(())
    }

    async fn upsert(&self, rides: &[RideRow]) -> Result<(), ReplicaError> {
        let mut s = self.lock();
        let mut seen = std::collections::BTreeSet::new();
        for ride in rides {
            let mut row = ride.clone();
            if self.bug == Bug::RoundsCoordinates {
                row.params = rounded(&row.params);
            }
            s.upserts += 1;
            if !seen.insert(row.id) && self.bug == Bug::FirstInBatchWins {
                continue;
            }
            if let Some(old) = s.rides.get(&row.id).cloned() {
                match self.bug {
                    Bug::KeepsOldRows => continue,
                    Bug::MergesFields => {
                        row.idempotency_key_id = row.idempotency_key_id.or(old.idempotency_key_id);
                        row.charge_id = row.charge_id.or(old.charge_id);
                    }
                    _ => {}
                }
            } else if !s.order.contains(&row.id) {
                s.order.push(row.id);
            }
            s.ever.insert(row.id, row.clone());
            s.rides.insert(row.id, row);
        }
        Ok(())
    }

    async fn delete(&self, ids: &[i64]) -> Result<(), ReplicaError> {
        let mut s = self.lock();
        for id in ids {
            s.rides.remove(id);
            if self.bug == Bug::DeletesTheNeighbour {
                s.rides.remove(&(id + 1));
            }
        }
        let State { rides, order, .. } = &mut *s;
        order.retain(|id| rides.contains_key(id));
        Ok(())
    }

    async fn page(&self, after_id: i64, limit: usize) -> Result<Vec<RideRow>, ReplicaError> {
        let s = self.lock();
        let rows: Vec<RideRow> = if self.bug == Bug::PagesInUpsertOrder {
            s.order
                .iter()
                .filter(|id| **id > after_id)
                .filter_map(|id| s.rides.get(id).cloned())
                .take(limit)
                .collect()
        } else {
            s.rides
                .range((Bound::Excluded(after_id), Bound::Unbounded))
                .take(limit)
                .map(|(_, r)| r.clone())
                .collect()
        };
        Ok(rows)
    }

    async fn count(&self) -> Result<u64, ReplicaError> {
        let s = self.lock();
        Ok(if self.bug == Bug::CountsUpserts {
            s.upserts
        } else {
            s.rides.len() as u64
        })
    }

    async fn rides_for_user(
        &self,
        user_id: i64,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RideRow>, ReplicaError> {
        let s = self.lock();
        let source = if self.bug == Bug::ListsDeletedRides {
            &s.ever
        } else {
            &s.rides
        };
        let mine = source
            .values()
            .filter(|r| r.user_id == user_id && before_id.is_none_or(|b| r.id < b));
        let rows: Vec<RideRow> = if self.bug == Bug::ListsOldestFirst {
            mine.take(limit).cloned().collect()
        } else {
            let mut all: Vec<RideRow> = mine.cloned().collect();
            all.reverse();
            all.truncate(limit);
            all
        };
        Ok(rows)
    }
}

/// Makes [`MapReplica`]s with one bug (or none).
struct MapReplicas(Bug);

#[async_trait]
impl ReplicaFactory for MapReplicas {
    async fn fresh(&self) -> Arc<dyn Replica> {
        Arc::new(MapReplica {
            bug: self.0,
            state: Mutex::new(State::default()),
        })
    }
    async fn reopen(&self, replica: Arc<dyn Replica>) -> Option<Arc<dyn Replica>> {
        if self.0 == Bug::ForgetsOnReopen {
            return Some(self.fresh().await);
        }
        // Keeps the same replica: a "restart" that keeps everything.
        Some(replica)
    }
}

mod correct_replica_passes {
    use super::{Bug, MapReplicas};
    crate::replica_contract_tests!(MapReplicas(Bug::None));
}

/// Runs `scenario` against a replica with `bug` and expects it to fail (panic).
async fn must_fail<F, Fut>(bug: Bug, scenario: F)
where
    F: FnOnce(MapReplicas) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::FutureExt;
    let run = std::panic::AssertUnwindSafe(scenario(MapReplicas(bug))).catch_unwind();
    let outcome = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("the scenario hung on {bug:?}"));
    assert!(
        outcome.is_err(),
        "a replica with bug {bug:?} passed the scenario that should catch it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_replicas_fail_the_scenario_that_names_their_bug() {
    use super::replica;
    must_fail(Bug::RoundsCoordinates, |f| async move {
        replica::upsert_then_page_returns_identical_rows(&f).await
    })
    .await;
    must_fail(Bug::MergesFields, |f| async move {
        replica::upsert_is_idempotent_and_updates(&f).await
    })
    .await;
    must_fail(Bug::KeepsOldRows, |f| async move {
        replica::upsert_is_idempotent_and_updates(&f).await
    })
    .await;
    must_fail(Bug::FirstInBatchWins, |f| async move {
        replica::upsert_is_idempotent_and_updates(&f).await
    })
    .await;
    must_fail(Bug::DeletesTheNeighbour, |f| async move {
        replica::delete_is_idempotent_and_exact(&f).await
    })
    .await;
    must_fail(Bug::PagesInUpsertOrder, |f| async move {
        replica::page_paginates_in_id_order(&f).await
    })
    .await;
    must_fail(Bug::CountsUpserts, |f| async move {
        replica::count_counts_rows(&f).await
    })
    .await;
    must_fail(Bug::ListsOldestFirst, |f| async move {
        replica::rides_for_user_newest_first_and_forgets_deleted(&f).await
    })
    .await;
    must_fail(Bug::ListsDeletedRides, |f| async move {
        replica::rides_for_user_newest_first_and_forgets_deleted(&f).await
    })
    .await;
    must_fail(Bug::ForgetsOnReopen, |f| async move {
        replica::reopen_keeps_rows(&f).await
    })
    .await;
}
