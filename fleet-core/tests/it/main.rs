//! fleet-core integration tests
