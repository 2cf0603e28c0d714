//! The errors of fleet-core: a caller's misuse or a request the replica cannot take now.
//!
//! A broken invariant is never an `Err`: it is an `assert!` with context.

use crate::types::{Index, ReplicaId};

/// Why a request to a replica was refused. Nothing was appended or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This replica does not lead the group. Send the request to `hint`, the leader it knows of.
    #[error("not the leader of this group; the leader is {}", match .hint { Some(h) => h.to_string(), None => "unknown (an election may be under way; retry shortly)".into() })]
    NotLeader {
        /// The leader this replica knows of, if any.
        hint: Option<ReplicaId>,
    },
    /// The leader is handing leadership to another replica; retry there shortly.
    #[error("leadership is being transferred to {to}; retry shortly")]
    TransferInProgress {
        /// The transfer target.
        to: ReplicaId,
    },
    /// The leader has too many proposals that are not yet committed.
    #[error(
        "too many uncommitted proposals ({uncommitted_bytes} bytes pending, limit {limit_bytes}); slow down and retry"
    )]
    Busy {
        /// Bytes of uncommitted entries.
        uncommitted_bytes: usize,
        /// The limit (`Config::uncommitted_bytes_max`).
        limit_bytes: usize,
    },
    /// The proposal is larger than an entry may be.
    #[error(
        "entry of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes (`Config::entry_bytes_max`); split the command"
    )]
    EntryTooLarge {
        /// The entry's size.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// Too many read requests are waiting for confirmation.
    #[error("too many pending reads (limit {limit}); retry shortly")]
    TooManyReads {
        /// The limit (`Config::pending_reads_max`).
        limit: usize,
    },
    /// A membership change is already in flight; only one may be uncommitted at a time (§4.1).
    #[error("a membership change at index {index} is not yet committed; retry when it is")]
    ChangeInProgress {
        /// The index of the uncommitted change.
        index: Index,
    },
    /// The leader has not yet committed an entry of its own term; membership changes and
    /// linearizable reads must wait for it (Ongaro, raft-dev 2015; thesis §6.4).
    #[error("the new leader has not yet committed an entry of its term; retry shortly")]
    LeaderNotReady,
    /// The replica is already a member.
    #[error("{0} is already a member of the group")]
    AlreadyMember(ReplicaId),
    /// Another replica on the same node is a member; remove it first.
    #[error("node of {0} already hosts a member of the group; remove that member first")]
    NodeAlreadyHosts(ReplicaId),
    /// Only learners can be promoted.
    #[error("{0} is not a learner of the group; add it as a learner first")]
    NotALearner(ReplicaId),
    /// The replica is not a member.
    #[error("{0} is not a member of the group")]
    NotAMember(ReplicaId),
    /// The last voter cannot be removed.
    #[error("{0} is the last voter of the group and cannot be removed")]
    LastVoter(ReplicaId),
    /// The learner has not caught up, so promoting it would weaken the group.
    #[error(
        "learner {id} is behind (matched {matched}, leader at {last}); wait until it catches up"
    )]
    LearnerBehind {
        /// The learner.
        id: ReplicaId,
        /// The last index it is known to hold.
        matched: Index,
        /// The leader's last index.
        last: Index,
    },
    /// Leadership can only go to a voter other than the leader.
    #[error("cannot transfer leadership to {0}: not a voter of the group other than the leader")]
    BadTransferTarget(ReplicaId),
    /// The replica's settings do not work together.
    #[error("invalid replica configuration: {0}")]
    ConfigInvalid(String),
    /// A snapshot or restore was asked for at an index the replica cannot use.
    #[error("snapshot at index {index} is not usable: {reason}")]
    BadSnapshot {
        /// The snapshot's index.
        index: Index,
        /// What is wrong.
        reason: &'static str,
    },
}
