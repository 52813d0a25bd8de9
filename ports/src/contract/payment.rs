//! Scenarios for the payment contract.
