//! The one place where sqlx errors become port errors.
//!
//! Internal functions return [`Error`], which is either a driver error, classified once by
//! [`kind`] into the shape both SQL adapters share ([`DbError`], which keeps sqlx's error as its
//! source), or a port error decided by the adapter itself (a missing row, bad stored data).
//! `?` works on both, and the trait methods convert once at the boundary with `.map_err(Into::into)`
//! (into [`StoreError`], [`ConsumerStoreError`], [`ReplicaError`] or [`EventStoreError`]).
//! (A direct `impl From<sqlx::Error> for StoreError` would break the orphan rule: both types
//! are foreign to this crate.)
//!
//! | SQLite outcome                                   | port error     | why                                  |
//! |--------------------------------------------------|----------------|--------------------------------------|
//! | unique / primary-key violation                   | `Conflict`     | a concurrent request won a race      |
//! | `SQLITE_BUSY_SNAPSHOT`, `SQLITE_LOCKED`          | `Conflict`     | a concurrent transaction won         |
//! | `SQLITE_BUSY` (busy timeout expired), pool timeout, I/O | `Unavailable` | overloaded or unreachable: retry |
//! | anything else (bad data, schema, bug)            | `Other`        | a retry will not help                |

use ports::{ConsumerStoreError, EventStoreError, ReplicaError, StoreError};

use crate::sql_error::{DbError, Kind};

/// `SQLITE_BUSY`: another connection held the lock for the whole busy timeout.
const SQLITE_BUSY: i64 = 5;
/// `SQLITE_LOCKED`: a conflict inside one shared-cache database (in-memory stores).
const SQLITE_LOCKED: i64 = 6;
/// `SQLITE_BUSY_SNAPSHOT`: a read transaction could not be upgraded because another
/// connection wrote since its snapshot (cannot happen with `BEGIN IMMEDIATE`, mapped anyway).
const SQLITE_BUSY_SNAPSHOT: i64 = 517;

/// An adapter-internal failure: a classified driver error (in the shared shape, which keeps
/// sqlx's error as its source), or a port error the adapter decided on.
#[derive(Debug)]
pub(crate) enum Error {
    /// A database error, classified once by [`kind`].
    Db(DbError),
    /// A decision of the adapter (conflict, not found, bad stored data).
    Store(StoreError),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(DbError::new(kind(&e), "SQLite", e))
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::Store(StoreError::Other(format!("bad JSON in the store: {e}")))
    }
}

/// Shorthand for data that the store holds but cannot decode.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Store(StoreError::Other(format!(
        "corrupt data in the store: {what}"
    )))
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Store(e) => e,
            Error::Db(e) => e.into(),
        }
    }
}

impl From<Error> for ConsumerStoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Db(e) => e.into(),
            Error::Store(e) => match e {
                StoreError::Conflict(m) => Self::Conflict(m),
                StoreError::Unavailable(m) => Self::Unavailable(m),
                StoreError::NotFound(m) | StoreError::Other(m) => Self::Other(m),
            },
        }
    }
}

impl From<Error> for ReplicaError {
    fn from(e: Error) -> Self {
        match e {
            Error::Db(e) => e.into(),
            Error::Store(StoreError::Unavailable(m)) => Self::Unavailable(m),
            Error::Store(
                StoreError::Conflict(m) | StoreError::NotFound(m) | StoreError::Other(m),
            ) => Self::Other(m),
        }
    }
}

impl From<Error> for EventStoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Db(e) => e.into(),
            Error::Store(StoreError::Unavailable(m)) => Self::Unavailable(m),
            Error::Store(
                StoreError::Conflict(m) | StoreError::NotFound(m) | StoreError::Other(m),
            ) => Self::Other(m),
        }
    }
}

/// The classification of a driver error.
fn kind(e: &sqlx::Error) -> Kind {
    match e {
        sqlx::Error::Database(db) => {
            if db.is_unique_violation() {
                return Kind::Conflict;
            }
            let code = db.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
            match code {
                SQLITE_BUSY_SNAPSHOT | SQLITE_LOCKED => Kind::Conflict,
                // Primary code 5 covers every extended BUSY code not matched above: the busy
                // timeout expired.
                c if c & 0xff == SQLITE_BUSY => Kind::Unavailable,
                _ => Kind::Other,
            }
        }
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => Kind::Unavailable,
        sqlx::Error::RowNotFound => Kind::NotFound,
        sqlx::Error::Configuration(_) => Kind::Config,
        _ => Kind::Other,
    }
}
