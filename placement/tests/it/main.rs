//! placement integration tests
