//! Contract suites against the sled adapter.
