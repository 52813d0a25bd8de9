//! Scenarios for the consumer contract.
