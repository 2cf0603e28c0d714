//! Transport integration tests (issue 5): certificates and the CLI, who may connect, bad
//! frames, stream floods and silent streams, snapshots and requests, happy paths between real
//! nodes, and property tests of the frame decoder. Everything runs on 127.0.0.1, port 0.

mod certs;
mod cluster;
mod frames;
mod fuzz;
mod handshake;
mod streams;
mod support;
