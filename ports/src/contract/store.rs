//! Scenarios for the store contract.
