//! A seeded simulator that runs whole clusters of [`Replica`]s on one thread (feature `sim`).
//!
//! Everything is driven from one seed: a virtual clock in milliseconds, a network that drops,
//! duplicates, delays (and so reorders) and partitions messages (symmetric and one-way), disks that
//! lose or tear unsynced writes when a node crashes, restarts, tick-rate skew between nodes,
//! membership changes, leadership transfers, snapshots every few dozen entries, and clients that
//! retry with exactly-once sessions. After every step the invariants in [`invariants`] are checked
//! (one per file); after the faults stop, liveness is checked. A failure carries its seed and the
//! tail of a trace; the same seed replays byte for byte (the trace's hash is part of the report).
//!
//! ```
//! use fleet_core::sim::{run, SimOptions};
//! let report = run(7, &SimOptions::for_seed(7)).expect("seed 7 passes");
//! assert!(report.acked > 0);
//! ```

pub mod invariants;
mod world;

pub use world::{SimFailure, SimOptions, SimReport, run};
