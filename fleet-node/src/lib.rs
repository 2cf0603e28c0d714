//! The fleet runtime: the node event loop driving every group, durable storage, the QUIC transport,
//! the meta group and catalog, the reconciler and the leader cache (see DESIGN.md section 5).

pub mod admin;
pub mod catalog;
pub mod daemon;
pub mod demo;
pub mod metrics;
pub mod registry;
pub mod runtime;
pub mod storage;
pub mod transport;
