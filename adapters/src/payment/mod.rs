//! payment adapter.
