//! The messages replicas of one group exchange (thesis Figure 3.1, §4.2.1, §6.4, chapter 9's
//! pre-vote, and §3.10's leadership transfer).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{Command, Entry, Index, ReplicaId, SnapshotMeta, Term};

/// A message from one replica of a group to another. The runtime adds the group id on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: ReplicaId,
    /// The receiver.
    pub to: ReplicaId,
    /// The sender's term (for pre-votes, the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: Body,
}

/// The body of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// RequestVote (§3.4). With `pre_vote`, a PreVote (§9.6): asks whether the receiver would vote,
    /// without anyone changing term. `transfer` marks a campaign started by `TimeoutNow`, which
    /// voters grant even while they hear from a leader (§3.10).
    Vote {
        /// A pre-vote rather than a vote.
        pre_vote: bool,
        /// A campaign started by leadership transfer.
        transfer: bool,
        /// The index of the candidate's last entry.
        last_index: Index,
        /// The term of the candidate's last entry.
        last_term: Term,
    },
    /// The answer to a `Vote`.
    VoteResponse {
        /// Answers a pre-vote.
        pre_vote: bool,
        /// The vote is granted.
        granted: bool,
    },
    /// AppendEntries (§3.5).
    Append {
        /// The index before the first entry.
        prev_index: Index,
        /// The term of the entry at `prev_index`.
        prev_term: Term,
        /// New entries, possibly none.
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: Index,
    },
    /// The answer to an `Append`.
    AppendResponse {
        /// On success, the follower's log matches the leader's up to this index. On rejection, the
        /// index of the `Append` that did not match.
        index: Index,
        /// The append did not match.
        reject: bool,
        /// On rejection, the follower's hint for a faster back-off: the last index at which its
        /// log may match (its last index, or the start of the conflicting term) and that entry's term.
        hint_index: Index,
        /// The term of the follower's entry at `hint_index`.
        hint_term: Term,
    },
    /// A heartbeat: asserts leadership, carries the commit index and the read context being
    /// confirmed (§6.4). `quiesce` tells followers the group is idle and they may stop their
    /// election timers while the leader's node is alive.
    Heartbeat {
        /// The leader's commit index, capped at what the follower is known to hold.
        commit: Index,
        /// The newest read-index round this heartbeat confirms, or 0.
        read_round: u64,
        /// The group goes quiet after this heartbeat.
        quiesce: bool,
    },
    /// The answer to a `Heartbeat`.
    HeartbeatResponse {
        /// The read round being acknowledged.
        read_round: u64,
    },
    /// One chunk of an InstallSnapshot (§5.3).
    Snapshot {
        /// What the whole snapshot covers.
        meta: SnapshotMeta,
        /// The chunk's offset in the snapshot data.
        offset: u64,
        /// The total size of the snapshot data.
        total_bytes: u64,
        /// The chunk.
        data: Bytes,
    },
    /// The answer to a `Snapshot` chunk: the receiver has everything before `next_offset`
    /// (or, with `reject`, has restarted and needs the snapshot from the beginning).
    SnapshotResponse {
        /// The snapshot's index.
        index: Index,
        /// The next byte the receiver wants.
        next_offset: u64,
        /// The transfer failed at the receiver; start again.
        reject: bool,
    },
    /// Leadership transfer (§3.10): the receiver should campaign at once.
    TimeoutNow,
    /// Commands a follower hands to its leader (etcd-raft's `MsgProp`): the leader appends them
    /// as if they had been proposed to it, and refuses them if it cannot (it no longer leads, a
    /// transfer is under way, a limit is reached) with `ProposeRefused`. An appended command gets
    /// no answer: the proposer learns the outcome by applying the log, and retries with the same
    /// session if it does not see it (the refusal, too, may be lost).
    Propose {
        /// The commands, in order.
        commands: Vec<Command>,
    },
    /// The receiver did not append these forwarded commands (those with a session, named by
    /// `(client id, seq)`), so their proposer can tell its callers at once rather than after a
    /// timeout.
    ProposeRefused {
        /// `(client_id, seq)` of each refused command.
        sessions: Vec<(u64, u64)>,
        /// Refused for a limit (the uncommitted log is full, or a command is too large): the
        /// callers should back off. Otherwise the receiver does not lead (or is handing its
        /// leadership over): the callers should retry with the leader.
        busy: bool,
    },
}

impl Body {
    /// A short name for logs and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Vote { pre_vote: true, .. } => "PreVote",
            Body::Vote { .. } => "Vote",
            Body::VoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            Body::VoteResponse { .. } => "VoteResponse",
            Body::Append { .. } => "Append",
            Body::AppendResponse { .. } => "AppendResponse",
            Body::Heartbeat { .. } => "Heartbeat",
            Body::HeartbeatResponse { .. } => "HeartbeatResponse",
            Body::Snapshot { .. } => "Snapshot",
            Body::SnapshotResponse { .. } => "SnapshotResponse",
            Body::TimeoutNow => "TimeoutNow",
            Body::Propose { .. } => "Propose",
            Body::ProposeRefused { .. } => "ProposeRefused",
        }
    }
}
