//! Scenarios for the log contract.
