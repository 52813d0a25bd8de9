//! The one place where sqlx errors become port errors.
//!
//! Internal functions return [`Error`], which is either a raw [`sqlx::Error`] or a port error
//! decided by the adapter itself (a key not at its expected recovery point, a missing row).
//! `?` works on both, and the trait methods convert once at the boundary with `.map_err(Into::into)`.
//! (A direct `impl From<sqlx::Error> for StoreError` would break the orphan rule: both types
//! are foreign to this crate.)
//!
//! | SQLite outcome                                   | port error     | why                                  |
//! |--------------------------------------------------|----------------|--------------------------------------|
//! | unique / primary-key violation                   | `Conflict`     | a concurrent request won a race      |
//! | `SQLITE_BUSY_SNAPSHOT`, `SQLITE_LOCKED`          | `Conflict`     | a concurrent transaction won         |
//! | `SQLITE_BUSY` (busy timeout expired), pool timeout, I/O | `Unavailable` | overloaded or unreachable: retry |
//! | anything else (bad data, schema, bug)            | `Other`        | a retry will not help                |

use ports::{ConsumerStoreError, StoreError};

/// `SQLITE_BUSY`: another connection held the lock for the whole busy timeout.
const SQLITE_BUSY: i64 = 5;
/// `SQLITE_LOCKED`: a conflict inside one shared-cache database (in-memory stores).
const SQLITE_LOCKED: i64 = 6;
/// `SQLITE_BUSY_SNAPSHOT`: a read transaction could not be upgraded because another
/// connection wrote since its snapshot (cannot happen with `BEGIN IMMEDIATE`, mapped anyway).
const SQLITE_BUSY_SNAPSHOT: i64 = 517;

/// An adapter-internal failure: either sqlx's, or a port error the adapter decided on.
#[derive(Debug)]
pub(crate) enum Error {
    /// A database error, translated once, by `From<Error> for StoreError`.
    Sqlx(sqlx::Error),
    /// A decision of the adapter (conflict, not found, bad stored data).
    Store(StoreError),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Sqlx(e)
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
            Error::Sqlx(e) => translate(e),
        }
    }
}

impl From<Error> for ConsumerStoreError {
    fn from(e: Error) -> Self {
        match StoreError::from(e) {
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::Unavailable(m) => Self::Unavailable(m),
            StoreError::NotFound(m) | StoreError::Other(m) => Self::Other(m),
        }
    }
}

fn translate(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            if db.is_unique_violation() {
                return StoreError::Conflict(db.message().to_owned());
            }
            let code = db.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
            match code {
                SQLITE_BUSY_SNAPSHOT | SQLITE_LOCKED => {
                    StoreError::Conflict(format!("SQLite: {}", db.message()))
                }
                // Primary code 5 covers every extended BUSY code not matched above.
                c if c & 0xff == SQLITE_BUSY => StoreError::Unavailable(format!(
                    "SQLite stayed busy for the whole busy timeout: {}",
                    db.message()
                )),
                _ => StoreError::Other(format!("SQLite: {}", db.message())),
            }
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::RowNotFound => StoreError::NotFound(e.to_string()),
        _ => StoreError::Other(e.to_string()),
    }
}
