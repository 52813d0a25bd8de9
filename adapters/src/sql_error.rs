//! One shape for the errors of the SQL drivers, shared by the SQLite and Postgres adapters.
//!
//! Each dialect classifies a [`sqlx::Error`] once (its SQLSTATEs or result codes) into a
//! [`Kind`], and keeps the driver's error as the [`std::error::Error::source`]. The ports'
//! enums are converted from this one shape, here, once: their message is the whole chain.

use ports::{ConsumerStoreError, EventStoreError, LogError, ReplicaError, StoreError};
use thiserror::Error;

/// What a driver error means to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A concurrent transaction won (serialization failure, deadlock, unique race).
    Conflict,
    /// The database cannot be reached, is going away, or is overloaded; retrying can help.
    Unavailable,
    /// The row a call needed does not exist.
    NotFound,
    /// A bad URL or option.
    Config,
    /// Anything else (schema, bad data, bug); retrying will not help.
    Other,
}

/// A driver error, classified by its dialect; the driver's error is the source.
#[derive(Debug, Error)]
#[error("{context}")]
pub(crate) struct DbError {
    kind: Kind,
    /// What was going on, e.g. `postgres` or `cannot open SQLite database /x.db`.
    context: String,
    #[source]
    source: DriverError,
}

/// The driver's own error.
#[derive(Debug, Error)]
enum DriverError {
    #[error(transparent)]
    Sqlx(sqlx::Error),
    #[error(transparent)]
    Migrate(sqlx::migrate::MigrateError),
}

impl DbError {
    /// A driver error classified as `kind`.
    pub(crate) fn new(kind: Kind, context: impl Into<String>, source: sqlx::Error) -> Self {
        Self {
            kind,
            context: context.into(),
            source: DriverError::Sqlx(source),
        }
    }

    /// A failed migration, classified as `kind`.
    pub(crate) fn migration(
        kind: Kind,
        context: impl Into<String>,
        source: sqlx::migrate::MigrateError,
    ) -> Self {
        Self {
            kind,
            context: context.into(),
            source: DriverError::Migrate(source),
        }
    }

    /// The classification.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The same error, with `what` said first (`what: context`).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.context = format!("{what}: {}", self.context);
        self
    }

    /// The whole chain as one message: `context: driver error`.
    pub(crate) fn message(&self) -> String {
        format!("{}: {}", self.context, self.source)
    }
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        let m = e.message();
        match e.kind {
            Kind::Conflict => Self::Conflict(m),
            Kind::Unavailable => Self::Unavailable(m),
            Kind::NotFound => Self::NotFound(m),
            Kind::Config | Kind::Other => Self::Other(m),
        }
    }
}

impl From<DbError> for ConsumerStoreError {
    fn from(e: DbError) -> Self {
        let m = e.message();
        match e.kind {
            Kind::Conflict => Self::Conflict(m),
            Kind::Unavailable => Self::Unavailable(m),
            Kind::NotFound | Kind::Config | Kind::Other => Self::Other(m),
        }
    }
}

impl From<DbError> for LogError {
    fn from(e: DbError) -> Self {
        let m = e.message();
        match e.kind {
            Kind::Unavailable => Self::Unavailable(m),
            // A conflict on the log's own statements (sequencer) is transient as well.
            Kind::Conflict => Self::Unavailable(format!("concurrent update: {m}")),
            Kind::NotFound | Kind::Config | Kind::Other => Self::Other(m),
        }
    }
}

impl From<DbError> for ReplicaError {
    fn from(e: DbError) -> Self {
        let m = e.message();
        match e.kind {
            Kind::Unavailable => Self::Unavailable(m),
            // A deadlock or serialization failure between two writers: every replica write
            // is idempotent, so retrying the batch helps.
            Kind::Conflict => Self::Unavailable(format!("concurrent update: {m}")),
            Kind::NotFound | Kind::Config | Kind::Other => Self::Other(m),
        }
    }
}

impl From<DbError> for EventStoreError {
    fn from(e: DbError) -> Self {
        let m = e.message();
        match e.kind {
            Kind::Unavailable => Self::Unavailable(m),
            // A deadlock or serialization failure names no stream and no seq, so it cannot be
            // a `Conflict`; nothing was written, and retrying the commit helps.
            Kind::Conflict => Self::Unavailable(format!("concurrent update: {m}")),
            Kind::NotFound | Kind::Config | Kind::Other => Self::Other(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn the_driver_error_is_kept_as_the_source_and_in_the_message() {
        let e = DbError::new(Kind::Unavailable, "postgres", sqlx::Error::PoolTimedOut)
            .context("cannot connect");
        assert_eq!(e.to_string(), "cannot connect: postgres");
        let source = e.source().expect("the driver's error is the source");
        assert_eq!(source.to_string(), sqlx::Error::PoolTimedOut.to_string());
        assert_eq!(e.kind(), Kind::Unavailable);
        let port = StoreError::from(e);
        assert_eq!(
            port,
            StoreError::Unavailable(format!(
                "cannot connect: postgres: {}",
                sqlx::Error::PoolTimedOut
            ))
        );
    }
}
