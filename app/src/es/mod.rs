//! Event sourcing, the driving part: loading actors from an [`EventStore`] and handling a
//! command through a set of actors in one all-or-nothing commit ([`Unit`]).
//!
//! # Layout
//!
//! - [`unit`]: the unit of work (sourced's `Sourced::Unit`), plus `load` and
//!   `history_for` (sourced's `Sourced.load` / `history_for`).

pub mod unit;

pub use unit::{Unit, UnitError, UnitOutcome, history_for, load};
