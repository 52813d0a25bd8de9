//! The ride service.
