//! sled adapter.
