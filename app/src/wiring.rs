//! wiring.
