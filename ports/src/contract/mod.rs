//! Contract suites (filled in next).
