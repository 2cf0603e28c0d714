//! What a leader knows of each follower's log (thesis §3.5's `nextIndex` and `matchIndex`, with
//! etcd-raft's probe / replicate / snapshot states and a bounded in-flight window).

use std::collections::VecDeque;

use crate::types::{Index, ReplicaId};

/// How the leader is currently sending to a follower.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches: one append at a time.
    Probe,
    /// The follower's log matches up to `match_index`: appends are pipelined up to the window.
    Replicate,
    /// The follower needs the snapshot at `index`; `offset` bytes of it are acknowledged.
    Snapshot {
        /// The index of the snapshot being sent.
        index: Index,
        /// Bytes acknowledged by the follower.
        offset: u64,
    },
}

/// The leader's view of one member.
///
/// Invariant: `match_index < next_index`.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to match the leader's log (and to be durable on the follower).
    pub match_index: Index,
    /// The next index to send.
    pub next_index: Index,
    /// The sending mode.
    pub state: ProgressState,
    /// In probe state: an append was sent and its answer is awaited.
    pub probe_sent: bool,
    /// Heard from since the last check-quorum round (thesis §6.2).
    pub recent_active: bool,
    /// The last index of each append in flight, with its bytes (Replicate state).
    inflight: VecDeque<(Index, usize)>,
    inflight_bytes: usize,
    /// The commit index this member was last told.
    pub commit_sent: Index,
    /// The newest read round this member acknowledged.
    pub read_round_acked: u64,
    /// Ticks since the last snapshot chunk was sent (to resend a lost one).
    pub snapshot_idle_ticks: u32,
    /// The leader's tick when this member last made progress (or when appends started flowing
    /// to it), to notice appends that were lost.
    pub(crate) progress_tick: u64,
}

impl Progress {
    pub(crate) fn new(next_index: Index) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            recent_active: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            commit_sent: 0,
            read_round_acked: 0,
            snapshot_idle_ticks: 0,
            progress_tick: 0,
        }
    }

    /// Whether the leader may send another append now.
    pub(crate) fn can_send(&self, inflight_max: usize, inflight_bytes_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => !self.probe_sent,
            ProgressState::Replicate => {
                self.inflight.len() < inflight_max && self.inflight_bytes < inflight_bytes_max
            }
            ProgressState::Snapshot { .. } => false,
        }
    }

    /// Records an append sent with entries up to `last` (Replicate: optimistically advances
    /// `next_index`; Probe: pauses until an answer).
    pub(crate) fn sent(&mut self, last: Index, bytes: usize, entries: usize) {
        match self.state {
            ProgressState::Replicate => {
                if entries > 0 {
                    self.next_index = last + 1;
                    self.inflight.push_back((last, bytes));
                    self.inflight_bytes += bytes;
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => unreachable!("append sent in snapshot state"),
        }
    }

    /// An acknowledgement that the follower matches up to `index`. Returns whether it moved.
    pub(crate) fn acked(&mut self, index: Index) -> bool {
        let moved = index > self.match_index;
        if moved {
            self.match_index = index;
        }
        self.next_index = self.next_index.max(index + 1);
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
        self.probe_sent = false;
        moved
    }

    /// A rejection: restart probing at `next_index` (never below `match_index + 1`).
    pub(crate) fn back_off(&mut self, next_index: Index) {
        self.next_index = next_index.max(self.match_index + 1);
        self.become_probe();
    }

    pub(crate) fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.probe_sent = false;
        self.next_index = self.match_index + 1;
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    pub(crate) fn become_snapshot(&mut self, index: Index) {
        self.state = ProgressState::Snapshot { index, offset: 0 };
        self.probe_sent = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.snapshot_idle_ticks = 0;
    }

    /// Entries in flight.
    pub fn inflight_count(&self) -> usize {
        self.inflight.len()
    }
}

/// The leader's progress of every other member, kept sorted by id in one small vector: groups have
/// a handful of members, so a linear scan beats a tree, and an idle leader pays for exactly its
/// members (a `BTreeMap` node would reserve room for eleven).
#[derive(Clone, Debug, Default)]
pub(crate) struct ProgressMap {
    members: Vec<(ReplicaId, Progress)>,
}

impl ProgressMap {
    fn position(&self, id: &ReplicaId) -> Result<usize, usize> {
        self.members.binary_search_by(|(m, _)| m.cmp(id))
    }

    pub fn get(&self, id: &ReplicaId) -> Option<&Progress> {
        self.position(id).ok().map(|i| &self.members[i].1)
    }

    pub fn get_mut(&mut self, id: &ReplicaId) -> Option<&mut Progress> {
        self.position(id).ok().map(|i| &mut self.members[i].1)
    }

    pub fn contains_key(&self, id: &ReplicaId) -> bool {
        self.position(id).is_ok()
    }

    pub fn keys(&self) -> impl Iterator<Item = &ReplicaId> {
        self.members.iter().map(|(id, _)| id)
    }

    pub fn values(&self) -> impl Iterator<Item = &Progress> {
        self.members.iter().map(|(_, p)| p)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Progress> {
        self.members.iter_mut().map(|(_, p)| p)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ReplicaId, &Progress)> {
        self.members.iter().map(|(id, p)| (id, p))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&ReplicaId, &mut Progress)> {
        self.members.iter_mut().map(|(id, p)| (&*id, p))
    }

    pub fn clear(&mut self) {
        self.members = Vec::new();
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&ReplicaId, &Progress) -> bool) {
        self.members.retain(|(id, p)| keep(id, p));
    }

    /// Inserts a member's progress unless it is already tracked.
    pub fn insert_with(&mut self, id: ReplicaId, make: impl FnOnce() -> Progress) {
        if let Err(i) = self.position(&id) {
            self.members.insert(i, (id, make()));
        }
    }
}

impl FromIterator<(ReplicaId, Progress)> for ProgressMap {
    fn from_iter<I: IntoIterator<Item = (ReplicaId, Progress)>>(iter: I) -> Self {
        let mut members: Vec<(ReplicaId, Progress)> = iter.into_iter().collect();
        members.sort_by_key(|a| a.0);
        members.dedup_by(|a, b| a.0 == b.0);
        members.shrink_to_fit();
        ProgressMap { members }
    }
}

impl std::ops::Index<&ReplicaId> for ProgressMap {
    type Output = Progress;
    fn index(&self, id: &ReplicaId) -> &Progress {
        self.get(id)
            .unwrap_or_else(|| panic!("no progress for {id}"))
    }
}
