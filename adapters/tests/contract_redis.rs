//! Contract suites against the redis adapter.
