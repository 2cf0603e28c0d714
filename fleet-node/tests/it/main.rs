//! Integration tests of fleet-node (one binary; see the workspace README).

mod daemon;
mod demo;
mod runtime;
mod storage;
mod transport;
