//! Helpers shared by the adapters' integration tests.

pub mod stripe_server;
