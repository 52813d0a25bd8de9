//! memory adapter.
