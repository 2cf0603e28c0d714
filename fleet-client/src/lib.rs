//! The fleet client library and `fleet` CLI.
//!
//! This crate will hold: connecting to any node of a fleet over QUIC with mutual TLS, routing commands
//! and queries by group name through a leader cache, and retries that keep exactly-once semantics by
//! reusing `(client_id, seq)`. It is filled by the client issue; today it only compiles.
