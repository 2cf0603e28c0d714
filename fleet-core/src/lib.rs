//! fleet-core: a sans-IO Raft replica for one consensus group.
#![deny(missing_docs)]

mod config;
mod error;
pub mod kv;
mod log;
pub mod message;
mod progress;
pub mod ready;
mod replica;
pub mod session;
mod state_machine;
pub mod types;

#[cfg(feature = "broken-variants")]
#[doc(hidden)]
pub use config::Broken;
pub use config::Config;
pub use error::Error;
pub use message::{Body, Message};
pub use progress::{Progress, ProgressState};
pub use ready::{ReadState, Ready, Role, SoftState};
pub use replica::{Replica, Restored};
pub use session::{Applied, Applier, SessionConfig, SessionError};
pub use state_machine::{SnapshotError, StateMachine};
pub use types::*;
#[cfg(feature = "sim")]
pub mod sim;
