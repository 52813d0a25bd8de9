//! Contract suites against the postgres adapter.
