//! Storage integration tests.
