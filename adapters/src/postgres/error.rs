//! One translation from sqlx errors to the ports' error enums.
//!
//! The orphan rule forbids `impl From<sqlx::Error> for StoreError` here (both types are
//! foreign), so every internal function returns [`PgError`], which converts into
//! [`StoreError`], [`LogError`], [`ConsumerStoreError`], [`ReplicaError`] and
//! [`EventStoreError`] with `?`. A driver error is
//! classified once, in [`PgError::from`], into the shared shape [`DbError`] (which keeps the
//! driver's error as its source):
//!
//! | cause                                                    | kind           |
//! |----------------------------------------------------------|----------------|
//! | SQLSTATE 40001 (serialization failure), 40P01 (deadlock) | `Conflict`     |
//! | unique violation (`is_unique_violation()`)               | `Conflict`     |
//! | I/O, TLS, pool timeout/closed, SQLSTATE class 08, 57P0x, 53300 | `Unavailable` |
//! | configuration                                            | `Config`       |
//! | `RowNotFound` (a `fetch_one` without a row)              | `NotFound`     |
//! | anything else                                            | `Other`        |
//!
//! Messages never contain the connection URL (and so never a password).

use ports::{ConsumerStoreError, EventStoreError, LogError, ReplicaError, StoreError};
use thiserror::Error;

use crate::sql_error::{DbError, Kind};

/// An error of the Postgres adapter: a classified driver error, or the adapter's own finding.
#[derive(Debug, Error)]
pub(crate) enum PgError {
    /// A driver error (its source is sqlx's).
    #[error(transparent)]
    Db(#[from] DbError),
    /// A bad URL or option.
    #[error("{0}")]
    Config(String),
    /// Data the adapter cannot use (bad JSON, a missing row it needs).
    #[error("{0}")]
    Other(String),
    /// JSON in the database that does not decode; the decoder's error is the source.
    #[error("bad JSON in the database")]
    Json(#[source] serde_json::Error),
}

/// SQLSTATEs that mean "a concurrent transaction won; retrying can help".
const CONFLICT_CODES: [&str; 2] = ["40001", "40P01"];
/// SQLSTATEs that mean "the server is going away or full; retrying later can help".
const UNAVAILABLE_CODES: [&str; 4] = ["57P01", "57P02", "57P03", "53300"];

/// The classification of a driver error.
fn kind(e: &sqlx::Error) -> Kind {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db.is_unique_violation() || CONFLICT_CODES.contains(&code.as_ref()) {
                Kind::Conflict
            } else if code.starts_with("08") || UNAVAILABLE_CODES.contains(&code.as_ref()) {
                Kind::Unavailable
            } else {
                Kind::Other
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Kind::Unavailable,
        sqlx::Error::Configuration(_) => Kind::Config,
        sqlx::Error::RowNotFound => Kind::NotFound,
        _ => Kind::Other,
    }
}

impl PgError {
    /// The classification (adapter findings are `Other`, bad options `Config`).
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Self::Db(e) => e.kind(),
            Self::Config(_) => Kind::Config,
            Self::Other(_) | Self::Json(_) => Kind::Other,
        }
    }

    /// The same error with `what` said first.
    pub(crate) fn context(self, what: impl std::fmt::Display) -> Self {
        match self {
            Self::Db(e) => Self::Db(e.context(what)),
            Self::Config(m) => Self::Config(format!("{what}: {m}")),
            Self::Other(m) => Self::Other(format!("{what}: {m}")),
            Self::Json(e) => Self::Other(format!("{what}: bad JSON in the database: {e}")),
        }
    }
}

impl From<sqlx::Error> for PgError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(DbError::new(kind(&e), "postgres", e))
    }
}

impl From<sqlx::migrate::MigrateError> for PgError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        let kind = match &e {
            sqlx::migrate::MigrateError::Execute(inner) if kind(inner) == Kind::Unavailable => {
                Kind::Unavailable
            }
            _ => Kind::Other,
        };
        Self::Db(DbError::migration(kind, "postgres migration failed", e))
    }
}

impl From<serde_json::Error> for PgError {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(e)
    }
}

/// The message of an adapter finding, with its cause when it has one.
fn message(e: &PgError) -> String {
    match e {
        PgError::Json(j) => format!("{e}: {j}"),
        other => other.to_string(),
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Db(db) => db.into(),
            other => Self::Other(message(&other)),
        }
    }
}

impl From<PgError> for LogError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Db(db) => db.into(),
            other => Self::Other(message(&other)),
        }
    }
}

impl From<PgError> for ConsumerStoreError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Db(db) => db.into(),
            other => Self::Other(message(&other)),
        }
    }
}

impl From<PgError> for ReplicaError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Db(db) => db.into(),
            other => Self::Other(message(&other)),
        }
    }
}

impl From<PgError> for EventStoreError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Db(db) => db.into(),
            other => Self::Other(message(&other)),
        }
    }
}
