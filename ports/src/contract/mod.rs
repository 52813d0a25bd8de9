//! Contract suites: one per port, run unchanged against every adapter.
//!
//! An adapter's test file implements a factory ([`LogFactory`], [`StoreFactory`],
//! [`PaymentFactory`], [`ReplicaFactory`]) and stamps one `#[tokio::test]` per scenario with
//! the matching macro:
//!
//! ```text
//! struct Sqlite;
//! #[ports::contract::async_trait]
//! impl ports::contract::StoreFactory for Sqlite { /* ... */ }
//! ports::store_contract_tests!(Sqlite);
//! ```
//!
//! | macro | factory | suites |
//! |---|---|---|
//! | [`log_contract_tests!`](crate::log_contract_tests) | [`LogFactory`] | [`log`] |
//! | [`store_contract_tests!`](crate::store_contract_tests) | [`StoreFactory`] | [`store`] (store + outbox), [`consumer`] |
//! | [`payment_contract_tests!`](crate::payment_contract_tests) | [`PaymentFactory`] | [`payment`] |
//! | [`replica_contract_tests!`](crate::replica_contract_tests) | [`ReplicaFactory`] | [`replica`] |
//! | [`event_store_contract_tests!`](crate::event_store_contract_tests) | [`EventStoreFactory`] | [`event_store`] |
//! | [`reactor_store_contract_tests!`](crate::reactor_store_contract_tests) | [`ReactorStoreFactory`] | [`reactor_store`] |
//!
//! Scenarios are plain `pub async fn name(factory: &dyn Factory)` functions that panic with a
//! message naming the broken rule. Each one documents its preconditions.
//!
//! # Design choices
//!
//! - **Backend-neutral.** Scenarios use the port traits only. They never assume one lane, a
//!   position encoding, or that a read returns everything at once: they read in a loop until
//!   they have what they expect, and check order per `(producer, lane)`.
//! - **Isolated.** Every scenario takes a `fresh()` log or store from the factory, so tests
//!   run in parallel against one server without seeing each other.
//! - **Bounded.** Every wait has an upper bound ([`fixtures::WAIT_LIMIT`]) and every scenario
//!   one more ([`fixtures::SCENARIO_LIMIT`]), so a broken adapter fails instead of hanging.
//!   Timing assertions are upper bounds only ("woke well before the 30 s timeout").
//! - **One copy of the fixtures** ([`fixtures`]), shared by every backend.

use std::sync::Arc;

pub use async_trait::async_trait;

use crate::{
    ConsumerStore, EventStore, Log, Outbox, PaymentGateway, ReactorStore, Replica, RideStore,
};

pub mod consumer;
pub mod event_store;
#[cfg(test)]
mod event_store_self_check;
pub mod fixtures;
pub mod log;
pub mod payment;
pub mod reactor_store;
pub mod replica;
#[cfg(test)]
mod replica_self_check;
#[cfg(test)]
mod self_check;
pub mod store;

/// Makes logs for the log contract.
#[async_trait]
pub trait LogFactory: Send + Sync + 'static {
    /// A fresh, empty log in its own namespace (directory, key prefix, schema or topic), so
    /// that tests running in parallel never see each other's records.
    async fn fresh(&self) -> Arc<dyn Log>;
    /// Opens `log` again as a restarted process would (the caller has dropped every other
    /// clone); `None` for a backend that keeps nothing across restarts (memory).
    async fn reopen(&self, log: Arc<dyn Log>) -> Option<Arc<dyn Log>>;
}

/// A store under test: the three views one backend offers.
#[derive(Clone)]
pub struct StoreUnderTest {
    /// The canonical store.
    pub store: Arc<dyn RideStore>,
    /// Its outbox.
    pub outbox: Arc<dyn Outbox>,
    /// Its consumer state store.
    pub consumers: Arc<dyn ConsumerStore>,
}

/// Makes stores for the store, outbox and consumer-store contracts.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// A fresh store in its own namespace (file, database or schema), with the two reference
    /// users and nothing else.
    async fn fresh(&self) -> StoreUnderTest;
    /// Opens the same store again as a restarted process would (the caller has dropped every
    /// other clone); `None` for a backend that keeps nothing (memory).
    async fn reopen(&self, store: StoreUnderTest) -> Option<StoreUnderTest>;
}

/// Makes payment gateways for the payment contract.
pub trait PaymentFactory: Send + Sync + 'static {
    /// A gateway whose transient-error rate is zero.
    fn gateway(&self) -> Arc<dyn PaymentGateway>;
}

/// Makes replicas for the replica contract.
#[async_trait]
pub trait ReplicaFactory: Send + Sync + 'static {
    /// A fresh, empty replica in its own namespace (file, schema or key prefix), so that
    /// tests running in parallel never see each other's rows.
    async fn fresh(&self) -> Arc<dyn Replica>;
    /// Opens `replica` again as a restarted process would (the caller has dropped every
    /// other clone); `None` for a backend that keeps nothing across restarts (memory).
    async fn reopen(&self, replica: Arc<dyn Replica>) -> Option<Arc<dyn Replica>>;
}

/// An event store under test, with the outbox of the store it lives in (the suite checks
/// that appended messages are staged there).
#[derive(Clone)]
pub struct EventStoreUnderTest {
    /// The event store.
    pub events: Arc<dyn EventStore>,
    /// The outbox of the same store.
    pub outbox: Arc<dyn Outbox>,
}

/// Makes event stores for the event-store contract.
#[async_trait]
pub trait EventStoreFactory: Send + Sync + 'static {
    /// A fresh, empty event store (and its store's outbox) in its own namespace (file,
    /// schema or table prefix), so that tests running in parallel never see each other.
    async fn fresh(&self) -> EventStoreUnderTest;
    /// Opens the same event store again as a restarted process would (the caller has
    /// dropped every other clone); `None` (the default) for a backend that keeps nothing
    /// across restarts (memory).
    async fn reopen(&self, store: EventStoreUnderTest) -> Option<EventStoreUnderTest> {
        let _ = store;
        None
    }
}

/// Makes reactor stores for the reactor-store contract.
#[async_trait]
pub trait ReactorStoreFactory: Send + Sync + 'static {
    /// A fresh, empty reactor store in its own namespace (file or schema), so that tests
    /// running in parallel never see each other.
    async fn fresh(&self) -> Arc<dyn ReactorStore>;
}

/// Stamps one test per `suite::scenario`; the common body of the public macros.
#[doc(hidden)]
#[macro_export]
macro_rules! __contract_tests {
    ($factory:expr; $($suite:ident :: $name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let factory = $factory;
                $crate::contract::fixtures::bounded(
                    ::core::stringify!($name),
                    $crate::contract::$suite::$name(&factory),
                )
                .await;
            }
        )*
    };
}

/// Stamps one `#[tokio::test]` per scenario of [`contract::log`](crate::contract::log) for a
/// [`LogFactory`](crate::contract::LogFactory) expression.
///
/// The calling crate needs `tokio` (features `macros`, `rt-multi-thread`) as a dev-dependency.
///
/// ```text
/// ports::log_contract_tests!(MemoryLogs);
/// ```
#[macro_export]
macro_rules! log_contract_tests {
    ($factory:expr $(,)?) => {
        $crate::__contract_tests!($factory;
            log::append_then_read_in_order,
            log::read_resumes_from_a_position,
            log::lanes_read_separately_cover_the_log,
            log::read_respects_max,
            log::read_waits_and_wakes_on_append,
            log::read_on_empty_log_times_out_empty,
            log::duplicates_are_kept,
            log::lag_counts_records_after_a_position,
            log::len_counts_records,
            log::trim_never_removes_unread,
            log::invalid_position_is_an_error,
            log::double_send_leaves_fold_unchanged,
            log::consumer_crash_before_commit_never_applies_twice,
            log::concurrent_appenders_keep_per_producer_order,
            log::reopen_keeps_records_and_positions,
        );
    };
}

/// Stamps one `#[tokio::test]` per scenario of [`contract::store`](crate::contract::store)
/// (canonical store and outbox) and [`contract::consumer`](crate::contract::consumer) for a
/// [`StoreFactory`](crate::contract::StoreFactory) expression.
///
/// The calling crate needs `tokio` (features `macros`, `rt-multi-thread`) as a dev-dependency.
///
/// ```text
/// ports::store_contract_tests!(SqliteStores::default());
/// ```
#[macro_export]
macro_rules! store_contract_tests {
    ($factory:expr $(,)?) => {
        $crate::__contract_tests!($factory;
            store::fresh_store_has_the_reference_users,
            store::begin_creates_a_locked_key_with_its_ride,
            store::seventeen_digit_coordinates_replay,
            store::keys_left_by_an_older_version_resume,
            store::begin_decisions,
            store::concurrent_begins_with_one_key_have_one_winner,
            store::phases_chain_to_finished,
            store::run_phase_at_the_wrong_recovery_point_conflicts_and_writes_nothing,
            store::run_phase_on_an_unknown_key_is_not_found,
            store::charging_a_missing_ride_is_not_found_and_writes_nothing,
            store::unlock_clears_the_lock_only,
            store::completer_eligibility,
            store::reaper_deletes_old_keys_and_keeps_their_rides,
            store::rides_for_user_newest_first_with_paging,
            store::ride_by_id,
            store::rides_by_ids_reloads_current_rows,
            store::forget_user_deletes_and_stages_one_change_per_ride,
            store::truth_counts_rides_distance_and_unfinished_keys,
            store::outbox_peek_is_in_seq_order_and_remove_is_exact,
            store::peek_after_resumes_after_a_cursor,
            store::wait_staged_wakes_on_a_phase,
            store::stage_sequences_like_a_phase,
            store::removed_records_are_indexed_and_restage_keeps_their_sequence,
            store::route_is_durable_and_peek_starts_after_it,
            store::concurrent_writers_nothing_skipped_nothing_phantom,
            store::store_survives_reopen,
            consumer::register_is_idempotent_and_starts_at_start,
            consumer::save_then_load,
            consumer::save_with_a_stale_version_conflicts_and_changes_nothing,
            consumer::list_returns_every_registered_consumer,
            consumer::cursor_round_trips,
            consumer::park_and_save_are_atomic_and_parked_is_oldest_first,
            consumer::unpark_in_a_save_drops_exactly_those_ids,
            consumer::a_conflicting_save_parks_nothing,
            consumer::remove_deregisters_and_drops_parked_records,
            consumer::a_lease_expires_and_another_holder_gets_a_higher_epoch,
            consumer::a_lease_renews_for_its_holder,
            consumer::a_live_lease_is_refused_to_another_holder,
            consumer::release_frees_the_lease_at_once,
            consumer::a_fenced_save_fails_and_changes_nothing,
            consumer::concurrent_acquirers_get_exactly_one_lease,
        );
    };
}

/// Stamps one `#[tokio::test]` per scenario of [`contract::payment`](crate::contract::payment)
/// for a [`PaymentFactory`](crate::contract::PaymentFactory) expression.
///
/// The calling crate needs `tokio` (features `macros`, `rt-multi-thread`) as a dev-dependency.
///
/// ```text
/// ports::payment_contract_tests!(FakeProcessor);
/// ```
#[macro_export]
macro_rules! payment_contract_tests {
    ($factory:expr $(,)?) => {
        $crate::__contract_tests!($factory;
            payment::success_returns_a_charge,
            payment::same_key_same_charge,
            payment::different_keys_different_charges,
            payment::declined_card_for_the_bad_source_user,
        );
    };
}

/// Stamps one `#[tokio::test]` per scenario of [`contract::replica`](crate::contract::replica)
/// for a [`ReplicaFactory`](crate::contract::ReplicaFactory) expression.
///
/// The calling crate needs `tokio` (features `macros`, `rt-multi-thread`) as a dev-dependency.
///
/// ```text
/// ports::replica_contract_tests!(SqliteReplicas::default());
/// ```
#[macro_export]
macro_rules! replica_contract_tests {
    ($factory:expr $(,)?) => {
        $crate::__contract_tests!($factory;
            replica::upsert_then_page_returns_identical_rows,
            replica::upsert_is_idempotent_and_updates,
            replica::delete_is_idempotent_and_exact,
            replica::page_paginates_in_id_order,
            replica::count_counts_rows,
            replica::rides_for_user_newest_first_and_forgets_deleted,
            replica::concurrent_upserts_end_consistent,
            replica::reopen_keeps_rows,
        );
    };
}

/// Stamps one `#[tokio::test]` per scenario of
/// [`contract::event_store`](crate::contract::event_store) for an
/// [`EventStoreFactory`](crate::contract::EventStoreFactory) expression.
///
/// The calling crate needs `tokio` (features `macros`, `rt-multi-thread`) as a dev-dependency.
///
/// ```text
/// ports::event_store_contract_tests!(MemoryEventStores);
/// ```
#[macro_export]
macro_rules! event_store_contract_tests {
    ($factory:expr $(,)?) => {
        $crate::__contract_tests!($factory;
            event_store::append_to_stream_then_read_back_equal,
            event_store::append_to_stream_conflicts_and_invalid_appends_write_nothing,
            event_store::a_message_id_is_stored_once,
            event_store::append_next_assigns_the_next_seqs,
            event_store::racing_append_next_gives_contiguous_seqs,
            event_store::read_stream_after_and_upto,
            event_store::read_correlation_batch_follows_a_command,
            event_store::commit_appends_to_several_streams_and_writes_documents,
            event_store::a_failed_commit_leaves_nothing,
            event_store::recent_streams_most_recent_first,
            event_store::stats_count_streams_and_messages,
            event_store::read_all_is_gap_safe_under_concurrent_commits,
            event_store::read_all_pages_in_global_order,
            event_store::a_sync_only_commit_writes_documents,
            event_store::messages_and_documents_survive_reopen,
        );
    };
}

/// Stamps one `#[tokio::test]` per scenario of
/// [`contract::reactor_store`](crate::contract::reactor_store) for a
/// [`ReactorStoreFactory`](crate::contract::ReactorStoreFactory) expression.
///
/// ```text
/// ports::reactor_store_contract_tests!(MemoryReactorStores);
/// ```
#[macro_export]
macro_rules! reactor_store_contract_tests {
    ($factory:expr $(,)?) => {
        $crate::__contract_tests!($factory;
            reactor_store::claims_one_stream_per_worker_in_order_of_arrival,
            reactor_store::a_group_starting_later_skips_older_messages,
            reactor_store::reset_replays_with_flags,
            reactor_store::actions_commit_with_the_acknowledgement,
            reactor_store::append_after_conflict_writes_nothing,
            reactor_store::batches_and_partial_acknowledgement,
            reactor_store::a_parked_stream_does_not_block_the_others,
            reactor_store::pause_stop_and_start,
            reactor_store::scheduled_messages_are_promoted_when_due,
            reactor_store::concurrent_promoters_append_each_once,
            reactor_store::stale_claims_are_released_after_the_ttl,
            reactor_store::concurrent_workers_never_share_a_stream,
            reactor_store::commit_with_schedules_and_acknowledges_atomically,
        );
    };
}
