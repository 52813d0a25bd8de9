//! Contract suites against the sqlite adapter.
