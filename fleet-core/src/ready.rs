//! What a replica hands its driver: the [`Ready`] batch of work.

use crate::message::Message;
use crate::types::{Entry, HardState, Index, ReplicaId, Snapshot, Term};

/// A replica's role (thesis Figure 3.3, plus the pre-candidate of §9.6).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader, or waits for one.
    Follower,
    /// Asks for pre-votes before it disturbs anyone (§9.6).
    PreCandidate,
    /// Asks for votes in a new term.
    Candidate,
    /// Leads the group.
    Leader,
}

/// The volatile state worth telling the runtime about when it changes: who leads, and our role.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// The leader this replica knows of in `term`, if any.
    pub leader: Option<ReplicaId>,
    /// This replica's role.
    pub role: Role,
    /// The current term.
    pub term: Term,
}

/// A confirmed linearizable read (thesis §6.4): once the state machine has applied `index`, the
/// query identified by `ctx` may run against it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's id for the read, as given to `read_index`.
    pub ctx: u64,
    /// The commit index the read must wait for.
    pub index: Index,
}

/// A batch of work from a replica: state to persist, messages to send, entries to apply.
///
/// The driver's duties, in order (as in etcd-raft's `doc.go`):
///
/// 1. Send `messages` at once: they never depend on anything not yet durable (they are the
///    leader's appends and heartbeats, which thesis §10.2.1 allows in parallel with its own write,
///    and answers that promise nothing).
/// 2. Persist `snapshot` (if any), then `entries` (the first entry may overwrite a suffix of the
///    stored log: truncate from its index first), then `hard_state`, atomically enough that a crash
///    never leaves the hard state ahead of the log it describes.
/// 3. Only once that is durable, send `messages_after_persist` (votes and append acknowledgements,
///    which promise durable state), then call [`Replica::persisted`](crate::Replica::persisted)
///    with `number`.
/// 4. If `snapshot` is set, restore the state machine from it and call
///    [`Replica::snapshot_installed`](crate::Replica::snapshot_installed).
/// 5. Apply `committed_entries` in order and report progress with
///    [`Replica::applied`](crate::Replica::applied); answer `read_states` once applied reaches
///    their index.
///
/// Steps 4 and 5 need not wait for step 2: committed entries are durable on a quorum already
/// (a leader counts its own log only once it is durable), so a driver may restore and apply them
/// as soon as it takes the Ready, before its own write finishes, as long as it does so in the
/// order the Readys were taken. A crash before the write loses nothing: the state machine is
/// rebuilt from what is durable and the rest is learned again from the leader.
///
/// Several Readys may be in flight at once, as long as they are persisted in the order they were
/// taken.
#[derive(Debug, Default)]
#[must_use = "a Ready carries state that must be persisted and messages that must be sent"]
pub struct Ready {
    /// Pass to [`Replica::persisted`](crate::Replica::persisted) once this Ready is durable.
    pub number: u64,
    /// Set when the role, leader or term changed.
    pub soft_state: Option<SoftState>,
    /// Set when term or vote changed, or when the commit index changed and there are entries or a
    /// snapshot to write anyway. A commit index alone is never a reason to write: it is volatile
    /// (thesis Figure 3.1); a restart that finds an older one learns the rest from the leader.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader, to persist and restore before anything else.
    pub snapshot: Option<Snapshot>,
    /// Entries to append to the stored log.
    pub entries: Vec<Entry>,
    /// Messages that may be sent now.
    pub messages: Vec<Message>,
    /// Messages that may be sent only after this Ready's state is durable. When the write
    /// completes, send only those [`Replica::keeps_promise`](crate::Replica::keeps_promise)
    /// accepts then: a later Ready of a newer term may have replaced what an older one promised.
    pub messages_after_persist: Vec<Message>,
    /// Entries that are committed and may be applied, in log order.
    pub committed_entries: Vec<Entry>,
    /// Reads confirmed by a quorum.
    pub read_states: Vec<ReadState>,
    /// Commands this follower forwarded that the leader refused (`Body::ProposeRefused`).
    pub refused_forwards: Vec<RefusedForward>,
}

/// A forwarded command the leader did not append: nothing of it will appear in the log through
/// that copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusedForward {
    /// The command's client session.
    pub client_id: u64,
    /// The command's sequence number.
    pub seq: u64,
    /// Refused for a limit (back off) rather than for leadership (retry with the leader).
    pub busy: bool,
}

impl Ready {
    /// Whether there is anything to persist.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }

    /// Whether the Ready holds no work at all.
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && !self.must_persist()
            && self.messages.is_empty()
            && self.messages_after_persist.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.refused_forwards.is_empty()
    }
}
