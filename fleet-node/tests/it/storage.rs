//! Storage integration tests (issue 4): the API, a model-based property test, power loss at
//! hundreds of crash points, `kill -9` of a writing process, and corrupted files.

mod basic;
mod common;
mod corruption;
mod kill9;
mod model;
mod power_loss;
