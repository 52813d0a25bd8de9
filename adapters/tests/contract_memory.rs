//! Contract suites against the memory adapter.
