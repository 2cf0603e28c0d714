//! fleet-core: a sans-IO Raft replica for one consensus group.
#![deny(missing_docs)]

mod error;
pub mod message;
pub mod ready;
mod state_machine;
pub mod types;

pub use error::Error;
pub use message::{Body, Message};
pub use ready::{ReadState, Ready, Role, SoftState};
pub use state_machine::{SnapshotError, StateMachine};
pub use types::*;
