//! postgres adapter.
