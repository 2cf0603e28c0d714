//! The vocabulary of the protocol: ids, log entries, hard state, configurations and snapshots.
//!
//! Every type here is encoded with postcard on the wire and on disk. The root types that are written
//! on their own (entries, hard state, snapshot metadata) are wrapped by their writers in a versioned
//! envelope; see [`FORMAT_VERSION`].

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The version of the encodings in this module. Writers put it in front of every root record they
/// store or send; readers refuse any other value with a clear error.
pub const FORMAT_VERSION: u16 = 2;

/// A Raft term (thesis §3.3): a logical clock that numbers leaderships. Never goes back.
pub type Term = u64;

/// A position in a group's log, starting at 1. Index 0 is the empty prefix.
pub type Index = u64;

/// The stable id of a consensus group. Group 0 is the fleet's meta group.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub u64);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// The id of a node of the fleet, assigned by the meta group when the node first joins.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// The id of one replica of one group: the node it lives on and an incarnation.
///
/// A member that is removed and later added again on the same node gets a new incarnation, so the
/// group treats it as a new replica with an empty log; messages addressed to the old incarnation
/// are dropped. This is what keeps a re-added member from acting on votes or acknowledgements it
/// gave in its previous life.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReplicaId {
    /// The node that hosts the replica.
    pub node: NodeId,
    /// Distinguishes successive lives of a member on the same node.
    pub incarnation: u32,
}

impl ReplicaId {
    /// A replica id from a node number and an incarnation.
    pub const fn new(node: u64, incarnation: u32) -> Self {
        ReplicaId {
            node: NodeId(node),
            incarnation,
        }
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.incarnation == 0 {
            write!(f, "{}", self.node.0)
        } else {
            write!(f, "{}.{}", self.node.0, self.incarnation)
        }
    }
}

/// The state a replica must have on disk before it speaks (thesis §3.8, Figure 3.1 "persistent
/// state"): the current term, the vote cast in it, and the commit index.
///
/// Persisting `commit` is not required for safety; it lets a restarted replica apply committed
/// entries before it hears from a leader.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this replica has seen.
    pub term: Term,
    /// The candidate this replica voted for in `term`, if any.
    pub vote: Option<ReplicaId>,
    /// The highest index known to be committed.
    pub commit: Index,
}

/// Log time: a leader-stamped clock carried in every entry, in ticks.
///
/// Leaders advance it by one per tick while they lead, and it never goes back along the log, so
/// every replica derives the same time from the same entries. Client sessions expire by it, never
/// by a local clock (thesis §6.3). It undercounts real time across leader changes, which only makes
/// sessions live a little longer.
pub type LogTime = u64;

/// One entry of a group's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position.
    pub index: Index,
    /// The log time at which the leader appended the entry.
    pub time: LogTime,
    /// What the entry carries.
    pub payload: Payload,
}

impl Entry {
    /// An approximation of the entry's encoded size, used for byte bounds on batches and windows.
    pub fn size_bytes(&self) -> usize {
        const OVERHEAD_BYTES: usize = 24;
        OVERHEAD_BYTES
            + match &self.payload {
                Payload::Noop | Payload::Register => 0,
                Payload::Command(c) => c.data.len() + 24,
                Payload::Membership(_) => 16,
                Payload::Bootstrap(c) => 16 * (c.voters.len() + c.learners.len()),
            }
    }
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// Appended by every new leader so that it can commit an entry of its own term (thesis §3.6.2)
    /// and serve reads (§6.4).
    Noop,
    /// A state machine command.
    Command(Command),
    /// A single-server membership change (thesis §4.1).
    Membership(MembershipChange),
    /// The group's initial configuration, the first entry (index 1, term 1) of every group. Every
    /// initial member starts with it committed; a member added later learns the configuration by
    /// replicating it like any entry.
    Bootstrap(Configuration),
    /// Opens a client session (thesis §6.3 RegisterClient). The session's client id is this
    /// entry's index, so every registration gets an id no other registration in the group had:
    /// a retried or late registration opens a new session and can never bring back one the group
    /// forgot, and a command whose client id the group does not know is refused as expired.
    Register,
}

/// A client command as it is stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The client session the command belongs to, for exactly-once application (thesis §6.3).
    /// Commands without a session are applied every time they are committed.
    pub session: Option<SessionRef>,
    /// The encoded command, opaque to the protocol.
    pub data: Bytes,
}

/// The session fields a client sends with each command (thesis §6.3).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionRef {
    /// The client's session: the index of the entry that registered it ([`Payload::Register`]).
    pub client_id: u64,
    /// The command's sequence number within the client's session, starting at 1.
    pub seq: u64,
    /// The client's lowest sequence number whose response it has not yet received. Responses
    /// below it may be forgotten.
    pub first_unacked: u64,
}

/// A single-server membership change (thesis §4.1, §4.2.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a non-voting member that receives the log until it catches up (§4.2.1).
    AddLearner(ReplicaId),
    /// Make a caught-up learner a voter.
    Promote(ReplicaId),
    /// Remove a voter or a learner. Removing the leader makes it step down once the change is
    /// committed (§4.2.2).
    Remove(ReplicaId),
}

impl MembershipChange {
    /// The replica the change is about.
    pub fn replica(&self) -> ReplicaId {
        match *self {
            MembershipChange::AddLearner(r)
            | MembershipChange::Promote(r)
            | MembershipChange::Remove(r) => r,
        }
    }
}

/// A group's configuration: who votes and who only listens.
///
/// Invariant: `voters` and `learners` are disjoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    /// Members whose acknowledgements count for commit and whose votes count for elections.
    pub voters: BTreeSet<ReplicaId>,
    /// Members that receive the log but do not vote.
    pub learners: BTreeSet<ReplicaId>,
}

impl Configuration {
    /// A configuration of the given voters and no learners.
    pub fn new(voters: impl IntoIterator<Item = ReplicaId>) -> Self {
        Configuration {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: ReplicaId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// The number of voters that form a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Applies a membership change, or says why it does not apply to this configuration.
    pub fn apply(&mut self, change: MembershipChange) -> Result<(), crate::Error> {
        use crate::Error as ChangeError;
        match change {
            MembershipChange::AddLearner(r) => {
                if self.contains(r) {
                    return Err(ChangeError::AlreadyMember(r));
                }
                if self.members().any(|m| m.node == r.node) {
                    return Err(ChangeError::NodeAlreadyHosts(r));
                }
                self.learners.insert(r);
            }
            MembershipChange::Promote(r) => {
                if !self.learners.remove(&r) {
                    return Err(ChangeError::NotALearner(r));
                }
                self.voters.insert(r);
            }
            MembershipChange::Remove(r) => {
                if self.voters.contains(&r) {
                    if self.voters.len() == 1 {
                        return Err(ChangeError::LastVoter(r));
                    }
                    self.voters.remove(&r);
                } else if !self.learners.remove(&r) {
                    return Err(ChangeError::NotAMember(r));
                }
            }
        }
        debug_assert!(self.voters.is_disjoint(&self.learners));
        Ok(())
    }
}

impl fmt::Display for Configuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "voters=(")?;
        for (i, v) in self.voters.iter().enumerate() {
            if i > 0 {
                write!(f, " ")?;
            }
            write!(f, "{v}")?;
        }
        write!(f, ")")?;
        if !self.learners.is_empty() {
            write!(f, " learners=(")?;
            for (i, v) in self.learners.iter().enumerate() {
                if i > 0 {
                    write!(f, " ")?;
                }
                write!(f, "{v}")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// What a snapshot covers: the state after applying every entry up to `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last index the snapshot includes.
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The configuration as of `index`.
    pub config: Configuration,
    /// The log time of the entry at `index`.
    pub time: LogTime,
}

/// A snapshot: its metadata and the state machine's bytes (including client sessions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The encoded state, opaque to the protocol.
    pub data: Bytes,
}
