//! Transport integration tests.
