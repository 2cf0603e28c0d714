//! Integration tests of the placement crate: one binary (each file under `tests/` would link
//! everything again), one module per property.
//!
//! - `golden`: the checked-in vectors of `testdata/golden.json` never change;
//! - `spread`: zone spread, the contract of `place`, independence from node order;
//! - `balance`: members and desired leaders per node;
//! - `movement`: a node that comes or goes moves only its own members, and few of them;
//! - `plan`: plans keep a quorum of caught-up voters and the fault tolerance sizes allow;
//! - `summary`: summaries, moves, serde forms;
//! - `errors`: bad input and its messages.

mod balance;
mod errors;
mod golden;
mod movement;
mod plan;
mod spread;
mod summary;
mod support;
