//! Wake-ups: `LISTEN`/`NOTIFY` turned into a version counter that waiters watch.
//!
//! Every sequencer run that assigned seqs, and every staging outside a phase, runs
//! `SELECT pg_notify(<channel>, '')` in its own transaction, so the notification is delivered
//! at commit, to every process. Phases do not: a transaction that ran `NOTIFY` holds a lock
//! that is global to the database through its commit (WAL flush included), which serializes
//! every committing phase and defeats group commit. After a phase that staged records commits,
//! the store instead [`Wakeup::announce`]s: this process's waiters wake at once, and one
//! background task sends `pg_notify` outside any phase, one statement for however many
//! commits arrived while the previous one was in flight. A process that dies between its
//! commit and the announcement costs the other processes' waiters at most their wait timeout
//! (they re-check then): a wake-up is a hint, the outbox is the truth. One background task per store owns a [`PgListener`] on a
//! dedicated one-connection pool, created lazily on the first wait, and bumps a
//! [`tokio::sync::watch`] counter on every notification. Waiters subscribe *before* they
//! query, so a commit between their query and their wait is never missed. The task also bumps
//! the counter after every (re)connection, because notifications sent while it was not
//! listening are lost: waiters then re-check.
//!
//! In poll-only mode (`listen: false`) there is no task: waits re-check every 100 ms, and
//! commits made through this process still wake waiters at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Re-check interval of poll-only mode.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Pause before re-creating a listener that failed.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

pub(crate) struct Wakeup {
    tx: Arc<watch::Sender<u64>>,
    listen: bool,
    channel: String,
    listener_pool: PgPool,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// The pool the announcer sends its `pg_notify` through.
    pool: PgPool,
    /// Commits not announced yet (one permit however many).
    pending: Arc<Notify>,
    announcer: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Wakeup {
    pub(crate) fn new(listen: bool, channel: String, listener_pool: PgPool, pool: PgPool) -> Self {
        Self {
            tx: Arc::new(watch::channel(0).0),
            listen,
            channel,
            listener_pool,
            task: Mutex::new(None),
            pool,
            pending: Arc::new(Notify::new()),
            announcer: Mutex::new(None),
        }
    }

    /// After a commit that staged records without `NOTIFY`: wakes this process's waiters now,
    /// and every process's through the background announcer.
    pub(crate) fn announce(&self) {
        self.bump();
        self.ensure_announcer();
        self.pending.notify_one();
    }

    fn ensure_announcer(&self) {
        let Ok(mut task) = self.announcer.lock() else {
            return;
        };
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let join = handle.spawn(announce_loop(
            self.pool.clone(),
            self.channel.clone(),
            Arc::clone(&self.pending),
        ));
        *task = Some(join.abort_handle());
    }

    /// The `NOTIFY` channel.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// Wakes this process's waiters (after a commit that staged or sequenced records).
    pub(crate) fn bump(&self) {
        bump(&self.tx);
    }

    /// A receiver that has seen the current version: call before querying.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        if self.listen {
            self.ensure_listener();
        }
        self.tx.subscribe()
    }

    /// Waits for a wake-up after `rx` was last marked seen, or until `deadline`. In poll-only
    /// mode waits at most [`POLL_INTERVAL`]. Returns `true` when woken by a version change.
    pub(crate) async fn wait(&self, rx: &mut watch::Receiver<u64>, deadline: Instant) -> bool {
        let until = if self.listen {
            deadline
        } else {
            deadline.min(Instant::now() + POLL_INTERVAL)
        };
        match tokio::time::timeout_at(until, rx.changed()).await {
            Ok(Ok(())) => {
                rx.borrow_and_update();
                true
            }
            // The sender lives as long as `self`; never spin if that ever changes.
            Ok(Err(_)) => {
                tokio::time::sleep_until(until).await;
                false
            }
            Err(_) => false,
        }
    }

    fn ensure_listener(&self) {
        let Ok(mut task) = self.task.lock() else {
            return;
        };
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let join = handle.spawn(listen_loop(
            self.listener_pool.clone(),
            self.channel.clone(),
            Arc::clone(&self.tx),
        ));
        *task = Some(join.abort_handle());
    }
}

impl Drop for Wakeup {
    fn drop(&mut self) {
        for slot in [&self.task, &self.announcer] {
            if let Ok(mut task) = slot.lock()
                && let Some(t) = task.take()
            {
                t.abort();
            }
        }
    }
}

/// Sends one `pg_notify` per burst of announced commits, outside any phase.
async fn announce_loop(pool: PgPool, channel: String, pending: Arc<Notify>) {
    loop {
        pending.notified().await;
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(&channel)
            .execute(&pool)
            .await
        {
            // Other processes re-check at their wait timeout; nothing is lost.
            tracing::warn!(error = %e, channel, "postgres NOTIFY after a commit failed");
        }
    }
}

fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|v| *v = v.wrapping_add(1));
}

async fn listen_loop(pool: PgPool, channel: String, tx: Arc<watch::Sender<u64>>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "postgres LISTEN connection failed; retrying");
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(&channel).await {
            tracing::warn!(error = %e, channel, "postgres LISTEN failed; retrying");
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        }
        // Anything sent before we listened is lost: let waiters re-check.
        bump(&tx);
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => bump(&tx),
                // Connection lost and re-established (eagerly) by sqlx: re-check.
                Ok(None) => bump(&tx),
                Err(e) => {
                    tracing::warn!(error = %e, "postgres LISTEN connection lost; reconnecting");
                    bump(&tx);
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    break;
                }
            }
        }
    }
}
