//! One translation from rdkafka errors to [`LogError`].
//!
//! The orphan rule forbids `impl From<KafkaError> for LogError` in this crate (both types are
//! foreign), so the classification is one function, [`log_error`], applied with
//! `.map_err(log_error)` wherever an rdkafka call can fail:
//!
//! | cause                                                                 | becomes       |
//! |-----------------------------------------------------------------------|---------------|
//! | transport failure, all brokers down, resolve, timeouts, leader moves   | `Unavailable` |
//! | client dropped (`Canceled`), a blocking task that died                  | `Unavailable` |
//! | anything else (bad config, unknown topic, policy, unsupported request) | `Other`       |
//!
//! Messages never contain credentials: rdkafka's messages name codes, not configs.

use ports::LogError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Codes after which retrying the same call can help: the broker is unreachable, slow, or
/// moving a partition's leadership.
const TRANSIENT: [RDKafkaErrorCode; 13] = [
    RDKafkaErrorCode::BrokerTransportFailure,
    RDKafkaErrorCode::AllBrokersDown,
    RDKafkaErrorCode::Resolve,
    RDKafkaErrorCode::MessageTimedOut,
    RDKafkaErrorCode::OperationTimedOut,
    RDKafkaErrorCode::RequestTimedOut,
    RDKafkaErrorCode::NetworkException,
    RDKafkaErrorCode::LeaderNotAvailable,
    RDKafkaErrorCode::NotLeaderForPartition,
    RDKafkaErrorCode::NotEnoughReplicas,
    RDKafkaErrorCode::NotEnoughReplicasAfterAppend,
    RDKafkaErrorCode::NotCoordinator,
    RDKafkaErrorCode::CoordinatorNotAvailable,
];

/// Whether `code` means "retrying can help".
fn is_transient(code: RDKafkaErrorCode) -> bool {
    TRANSIENT.contains(&code)
}

/// Classifies an rdkafka error (see the module docs).
pub(crate) fn log_error(e: KafkaError) -> LogError {
    let code = match &e {
        KafkaError::AdminOp(code) => Some(*code),
        KafkaError::Canceled => return LogError::Unavailable(format!("kafka: {e}")),
        other => other.rdkafka_error_code(),
    };
    match code {
        Some(code) if is_transient(code) => LogError::Unavailable(format!("kafka: {e}")),
        _ => LogError::Other(format!("kafka: {e}")),
    }
}

/// A `spawn_blocking` task that panicked or was cancelled (the runtime is shutting down).
pub(crate) fn join_error(e: tokio::task::JoinError) -> LogError {
    LogError::Unavailable(format!("kafka: a blocking broker call did not finish: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_and_timeouts_are_unavailable() {
        for e in [
            KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure),
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut),
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            KafkaError::Canceled,
        ] {
            assert!(
                matches!(log_error(e.clone()), LogError::Unavailable(_)),
                "{e} must be Unavailable"
            );
        }
    }

    #[test]
    fn everything_else_is_other() {
        for e in [
            KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition),
            KafkaError::AdminOp(RDKafkaErrorCode::PolicyViolation),
            KafkaError::ClientCreation("bad config".into()),
        ] {
            assert!(
                matches!(log_error(e.clone()), LogError::Other(_)),
                "{e} must be Other"
            );
        }
    }
}
