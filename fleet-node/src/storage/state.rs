//! The in-memory index of every group: the tip of its log, its hard state and snapshot, and a
//! cache of recent entries that covers everything not yet checkpointed into the segments.

use std::collections::VecDeque;

use fleet_core::{Entry, GroupId, HardState, Index, SnapshotMeta, Term};

use super::codec::{GroupRecord, ReplicaRecord, WalOp};

/// One group's state as of the last durable commit.
///
/// Invariants (checked by [`GroupState::check`]):
/// - `first_index == snapshot.index + 1` (or 1 without a snapshot) and
///   `first_index <= last_index + 1`;
/// - `snapshot_index <= flushed_last <= last_index`: the segments hold `[first_index,
///   flushed_last]`, the write-ahead table holds `(flushed_last, last_index]`;
/// - the cache is contiguous, ends at `last_index` when not empty, and covers
///   `(flushed_last, last_index]`: every entry not yet in a segment is in memory.
#[derive(Debug, Clone)]
pub(crate) struct GroupState {
    pub replica: ReplicaRecord,
    pub hard_state: HardState,
    pub snapshot: Option<SnapshotMeta>,
    pub first_index: Index,
    pub last_index: Index,
    pub last_term: Term,
    /// The last index the segments hold for this log.
    pub flushed_last: Index,
    /// The segments may hold entries from this index on that the log no longer has (a truncated
    /// suffix or a discarded log); the next checkpoint of the group deletes them.
    pub segments_stale_from: Option<Index>,
    pub cache: VecDeque<Entry>,
    pub cache_bytes: usize,
    /// The oldest write-ahead record holding an operation of this group not yet checkpointed.
    pub oldest_unflushed_seq: Option<u64>,
    /// Every write-ahead operation up to this sequence number is checkpointed.
    pub flushed_seq: u64,
}

impl GroupState {
    /// A new, empty group.
    pub fn new(replica: ReplicaRecord, flushed_seq: u64) -> Self {
        Self::from_record(
            replica,
            &GroupRecord {
                flushed_seq,
                hard_state: HardState::default(),
                snapshot: None,
                flushed_last_index: 0,
                flushed_last_term: 0,
            },
        )
    }

    /// The state a checkpointed record describes, before the write-ahead records after it are
    /// replayed.
    pub fn from_record(replica: ReplicaRecord, rec: &GroupRecord) -> Self {
        let first_index = rec.snapshot.as_ref().map_or(1, |s| s.index + 1);
        GroupState {
            replica,
            hard_state: rec.hard_state,
            snapshot: rec.snapshot.clone(),
            first_index,
            last_index: rec.flushed_last_index,
            last_term: rec.flushed_last_term,
            flushed_last: rec.flushed_last_index,
            segments_stale_from: None,
            cache: VecDeque::new(),
            cache_bytes: 0,
            oldest_unflushed_seq: None,
            flushed_seq: rec.flushed_seq,
        }
    }

    /// The record a checkpoint writes for this state.
    pub fn to_record(&self, flushed_seq: u64) -> GroupRecord {
        GroupRecord {
            flushed_seq,
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            flushed_last_index: self.last_index,
            flushed_last_term: self.last_term,
        }
    }

    /// The snapshot's index, or 0.
    pub fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |s| s.index)
    }

    /// The index of the first cached entry, if any.
    pub fn cache_first(&self) -> Option<Index> {
        self.cache.front().map(|e| e.index)
    }

    /// The term of `index` if this state knows it without reading a segment.
    pub fn term_in_memory(&self, index: Index) -> Option<Term> {
        if index == self.last_index {
            return Some(self.last_term);
        }
        if let Some(s) = &self.snapshot
            && s.index == index
        {
            return Some(s.term);
        }
        if index == 0 {
            return Some(0);
        }
        let first = self.cache_first()?;
        if index >= first && index <= self.last_index {
            return Some(self.cache[(index - first) as usize].term);
        }
        None
    }

    /// Applies one durable (or replayed) write-ahead operation of sequence number `seq`.
    ///
    /// The caller has validated it ([`super::writer`] before the commit, recovery during the
    /// replay), so a broken rule here is a bug.
    pub fn apply(&mut self, op: WalOp, seq: u64) {
        if let Some(meta) = &op.snapshot {
            assert!(
                meta.index > self.snapshot_index(),
                "group {}: snapshot at {} does not advance the snapshot at {}",
                op.group,
                meta.index,
                self.snapshot_index()
            );
            if op.discard_log || meta.index >= self.last_index {
                self.mark_stale(meta.index + 1);
                self.cache.clear();
                self.cache_bytes = 0;
                self.last_index = meta.index;
                self.last_term = meta.term;
                self.flushed_last = meta.index;
            } else {
                while let Some(e) = self.cache.front()
                    && e.index <= meta.index
                {
                    self.cache_bytes -= e.size_bytes();
                    self.cache.pop_front();
                }
                self.flushed_last = self.flushed_last.max(meta.index);
            }
            self.first_index = meta.index + 1;
            self.snapshot = Some(meta.clone());
        }
        if let Some(first) = op.entries.first() {
            let start = first.index;
            assert!(
                start >= self.first_index && start <= self.last_index + 1,
                "group {}: append at {start} outside [{}, {}]",
                op.group,
                self.first_index,
                self.last_index + 1
            );
            if start <= self.last_index {
                self.truncate_from(start);
            }
            if self.cache_first().is_none() && start != self.flushed_last + 1 {
                unreachable!("group {}: cache must cover the unflushed suffix", op.group);
            }
            let last = op.entries.last().expect("non-empty");
            self.last_index = last.index;
            self.last_term = last.term;
            for e in op.entries {
                self.cache_bytes += e.size_bytes();
                self.cache.push_back(e);
            }
        }
        if let Some(hs) = op.hard_state {
            self.hard_state = hs;
        }
        if self.oldest_unflushed_seq.is_none() {
            self.oldest_unflushed_seq = Some(seq);
        }
        self.check(op.group);
    }

    fn mark_stale(&mut self, from: Index) {
        self.segments_stale_from = Some(self.segments_stale_from.map_or(from, |s| s.min(from)));
    }

    /// Drops the entries from `index` on (a conflicting suffix).
    fn truncate_from(&mut self, index: Index) {
        while let Some(e) = self.cache.back()
            && e.index >= index
        {
            self.cache_bytes -= e.size_bytes();
            self.cache.pop_back();
        }
        if index <= self.flushed_last {
            self.mark_stale(index);
            self.flushed_last = index - 1;
        }
        // Appends always follow a truncation, so `last_term` is set again at once; it may be
        // unknown here when the cache does not reach back to `index - 1`.
        self.last_index = index - 1;
    }

    /// Records that a checkpoint moved everything into the segments, and trims the cache to
    /// `cache_flushed_bytes_max` of already flushed entries.
    pub fn checkpointed(&mut self, flushed_seq: u64, cache_flushed_bytes_max: usize) {
        self.flushed_last = self.last_index;
        self.segments_stale_from = None;
        self.oldest_unflushed_seq = None;
        self.flushed_seq = flushed_seq;
        while self.cache_bytes > cache_flushed_bytes_max {
            let e = self.cache.pop_front().expect("cache bytes without entries");
            self.cache_bytes -= e.size_bytes();
        }
    }

    /// The entries the next checkpoint writes to the segments: `(flushed_last, last_index]`.
    pub fn unflushed_entries(&self) -> impl Iterator<Item = &Entry> {
        let from = self.flushed_last + 1;
        let skip = self
            .cache_first()
            .map_or(0, |f| from.saturating_sub(f) as usize);
        self.cache.iter().skip(skip)
    }

    /// Asserts the invariants of the type's docs.
    pub fn check(&self, group: GroupId) {
        assert_eq!(
            self.first_index,
            self.snapshot_index() + 1,
            "group {group}: first index"
        );
        assert!(
            self.first_index <= self.last_index + 1,
            "group {group}: first > last + 1"
        );
        assert!(
            self.snapshot_index() <= self.flushed_last && self.flushed_last <= self.last_index,
            "group {group}: flushed_last {} outside [{}, {}]",
            self.flushed_last,
            self.snapshot_index(),
            self.last_index
        );
        if let (Some(front), Some(back)) = (self.cache.front(), self.cache.back()) {
            assert_eq!(back.index, self.last_index, "group {group}: cache end");
            assert_eq!(
                back.index - front.index + 1,
                self.cache.len() as u64,
                "group {group}: cache not contiguous"
            );
            assert!(
                front.index <= self.flushed_last + 1,
                "group {group}: cache gap"
            );
        } else {
            assert_eq!(
                self.flushed_last, self.last_index,
                "group {group}: unflushed entries not cached"
            );
        }
    }
}
