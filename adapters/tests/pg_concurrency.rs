//! Postgres-only log under many concurrent writers.
