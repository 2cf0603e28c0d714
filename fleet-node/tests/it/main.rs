//! Integration tests of fleet-node (one binary; see the workspace README).

mod storage;
mod transport;
