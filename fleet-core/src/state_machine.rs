//! The user's state machine, and what happens when a snapshot cannot be restored.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A snapshot could not be turned back into a state machine.
#[derive(Debug, thiserror::Error)]
#[error("cannot restore state machine from snapshot: {0}")]
pub struct SnapshotError(pub String);

/// A deterministic state machine replicated by a group (DESIGN.md section 1).
///
/// Implementations must be deterministic: the same commands in the same order produce the same
/// state and the same outputs on every replica. No clocks, no randomness, no I/O, and no iteration
/// over unordered collections whose order can differ between processes.
pub trait StateMachine: Send + 'static {
    /// A command that changes the state.
    type Command: Serialize + DeserializeOwned + Send;
    /// A query that reads the state.
    type Query: Serialize + DeserializeOwned + Send;
    /// The answer to a command or a query.
    type Output: Serialize + DeserializeOwned + Send;

    /// The empty state.
    fn new() -> Self;
    /// Applies a committed command.
    fn command(&mut self, cmd: Self::Command) -> Self::Output;
    /// Answers a query without changing the state.
    fn query(&self, q: &Self::Query) -> Self::Output;
    /// The whole state, to be restored by [`StateMachine::restore`].
    fn snapshot(&self) -> Vec<u8>;
    /// Rebuilds the state from [`StateMachine::snapshot`]'s bytes.
    fn restore(snapshot: &[u8]) -> Result<Self, SnapshotError>
    where
        Self: Sized;
}
