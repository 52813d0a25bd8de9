//! The one place where Redis errors become [`LogError`]s (and [`ReplicaError`]s).
//!
//! `impl From<redis::RedisError> for LogError` is not allowed here (both types are foreign to
//! this crate: the orphan rule), so the mapping is a function used as `.map_err(log_error)`.

use ports::{LogError, ReplicaError};
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Maps a Redis error: connection and I/O trouble (and the server's "try again later"
/// answers) is [`LogError::Unavailable`], so callers retry; anything else is
/// [`LogError::Other`].
pub(crate) fn log_error(e: RedisError) -> LogError {
    let transient = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Io
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                )
        );
    if transient {
        LogError::Unavailable(format!("redis: {e}"))
    } else {
        LogError::Other(format!("redis: {e}"))
    }
}

/// Maps a Redis error for the replica, with [`log_error`]'s classification: transient
/// trouble is [`ReplicaError::Unavailable`], anything else [`ReplicaError::Other`].
pub(crate) fn replica_error(e: RedisError) -> ReplicaError {
    match log_error(e) {
        LogError::Unavailable(m) => ReplicaError::Unavailable(m),
        LogError::InvalidPosition(m) | LogError::Other(m) => ReplicaError::Other(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_unavailable_and_others_are_not() {
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert!(matches!(log_error(io), LogError::Unavailable(_)));
        let parse = RedisError::from((ErrorKind::Parse, "bad reply"));
        assert!(matches!(log_error(parse), LogError::Other(_)));
    }
}
