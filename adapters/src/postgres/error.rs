//! One translation from sqlx errors to the ports' error enums.
//!
//! The orphan rule forbids `impl From<sqlx::Error> for StoreError` here (both types are
//! foreign), so every internal function returns [`PgError`], which converts into
//! [`StoreError`], [`LogError`] and [`ConsumerStoreError`] with `?`. The classification is
//! done once, in [`PgError::from`]:
//!
//! | cause                                                    | becomes        |
//! |----------------------------------------------------------|----------------|
//! | SQLSTATE 40001 (serialization failure), 40P01 (deadlock) | `Conflict`     |
//! | unique violation (`is_unique_violation()`)               | `Conflict`     |
//! | I/O, TLS, pool timeout/closed, SQLSTATE class 08, 57P0x, 53300 | `Unavailable` |
//! | anything else                                            | `Other`        |
//!
//! Messages never contain the connection URL (and so never a password).

use ports::{ConsumerStoreError, LogError, StoreError};
use thiserror::Error;

/// An error of the Postgres adapter, already classified.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum PgError {
    /// A concurrent transaction won, or the row is not in the expected state.
    #[error("{0}")]
    Conflict(String),
    /// The server cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A bad URL or option.
    #[error("{0}")]
    Config(String),
    /// Anything else (bad data, schema problem, bug).
    #[error("{0}")]
    Other(String),
}

/// SQLSTATEs that mean "a concurrent transaction won; retrying can help".
const CONFLICT_CODES: [&str; 2] = ["40001", "40P01"];
/// SQLSTATEs that mean "the server is going away or full; retrying later can help".
const UNAVAILABLE_CODES: [&str; 4] = ["57P01", "57P02", "57P03", "53300"];

impl From<sqlx::Error> for PgError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                if db.is_unique_violation() || CONFLICT_CODES.contains(&code.as_ref()) {
                    Self::Conflict(db.message().to_owned())
                } else if code.starts_with("08") || UNAVAILABLE_CODES.contains(&code.as_ref()) {
                    Self::Unavailable(format!("postgres: {} ({code})", db.message()))
                } else {
                    Self::Other(format!("postgres: {} ({code})", db.message()))
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => Self::Unavailable(format!("postgres: {e}")),
            sqlx::Error::Configuration(_) => Self::Config(format!("postgres: {e}")),
            sqlx::Error::Migrate(m) => Self::Other(format!("postgres migration failed: {m}")),
            _ => Self::Other(format!("postgres: {e}")),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for PgError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(e) => match Self::from(e) {
                Self::Unavailable(m) => Self::Unavailable(m),
                other => Self::Other(format!("postgres migration failed: {other}")),
            },
            other => Self::Other(format!("postgres migration failed: {other}")),
        }
    }
}

impl From<serde_json::Error> for PgError {
    fn from(e: serde_json::Error) -> Self {
        Self::Other(format!("bad JSON in the database: {e}"))
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Conflict(m) => Self::Conflict(m),
            PgError::Unavailable(m) => Self::Unavailable(m),
            PgError::Config(m) | PgError::Other(m) => Self::Other(m),
        }
    }
}

impl From<PgError> for LogError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Unavailable(m) => Self::Unavailable(m),
            // A conflict on the log's own statements (sequencer) is transient as well.
            PgError::Conflict(m) => Self::Unavailable(format!("concurrent update: {m}")),
            PgError::Config(m) | PgError::Other(m) => Self::Other(m),
        }
    }
}

impl From<PgError> for ConsumerStoreError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Conflict(m) => Self::Conflict(m),
            PgError::Unavailable(m) => Self::Unavailable(m),
            PgError::Config(m) | PgError::Other(m) => Self::Other(m),
        }
    }
}
