//! The in-memory log of one replica: the compacted prefix (a snapshot's metadata) and the entries
//! after it, with the commit, hand-out and persistence cursors.
//!
//! Design decision: the core keeps every entry after the last snapshot in memory, so the hot path
//! never waits on storage. The runtime bounds that memory by taking snapshots (compaction) once the
//! log passes a size; storage keeps the durable copy.

use std::collections::VecDeque;

use crate::types::{Configuration, Entry, Index, MembershipChange, Payload, SnapshotMeta, Term};

/// The log of one replica.
///
/// Invariants: `snapshot.index <= persisted <= last_index()` is not required (a new entry is not
/// persisted yet) but `committed <= last_index()`, `applied <= handed_out <= committed`, and
/// entries are contiguous from `snapshot.index + 1`.
#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The compacted prefix.
    pub snapshot: SnapshotMeta,
    /// Entries `snapshot.index + 1 ..= last_index()`.
    pub entries: VecDeque<Entry>,
    /// The highest index known to be committed.
    pub committed: Index,
    /// The highest index handed to the driver to apply.
    pub handed_out: Index,
    /// The highest index the driver reported applied.
    pub applied: Index,
    /// The first index not yet handed to the driver to persist.
    pub unsent_from: Index,
    /// The highest index known durable in local storage (with the term we hold there).
    pub persisted: Index,
}

impl RaftLog {
    pub fn new(snapshot: SnapshotMeta, entries: Vec<Entry>, committed: Index) -> Self {
        let first = snapshot.index + 1;
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index,
                first + i as u64,
                "log entries must be contiguous after the snapshot at {}",
                snapshot.index
            );
        }
        let last = snapshot.index + entries.len() as u64;
        assert!(
            committed >= snapshot.index && committed <= last,
            "commit {committed} outside [{}, {last}]",
            snapshot.index
        );
        RaftLog {
            handed_out: snapshot.index,
            applied: snapshot.index,
            unsent_from: last + 1,
            persisted: last,
            snapshot,
            entries: entries.into(),
            committed,
        }
    }

    pub fn first_index(&self) -> Index {
        self.snapshot.index + 1
    }

    pub fn last_index(&self) -> Index {
        self.snapshot.index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> Term {
        self.entries
            .back()
            .map_or(self.snapshot.term, |entry| entry.term)
    }

    /// The term of the entry at `index`, if the log knows it (the snapshot's own index counts).
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.snapshot.index {
            return None;
        }
        let entry = self.entries.get((index - self.first_index()) as usize)?;
        debug_assert_eq!(entry.index, index);
        Some(entry)
    }

    /// Entries in `[lo, hi]` up to `count_max` entries and `bytes_max` bytes (at least one entry if
    /// any is in range, so a large entry still moves).
    pub fn slice(&self, lo: Index, hi: Index, count_max: usize, bytes_max: usize) -> Vec<Entry> {
        assert!(lo > self.snapshot.index, "slice from compacted index {lo}");
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut index = lo;
        while index <= hi && out.len() < count_max {
            let Some(entry) = self.entry(index) else {
                break;
            };
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
            index += 1;
        }
        out
    }

    /// Whether a candidate with this last entry is at least as up to date as us (thesis §3.6.1).
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends a leader's own new entry.
    pub fn append(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "append must extend the log"
        );
        assert!(entry.term >= self.last_term(), "append of an older term");
        self.entries.push_back(entry);
    }

    /// Removes every entry from `index` on. Never below the commit index.
    pub fn truncate_from(&mut self, index: Index) {
        assert!(
            index > self.committed,
            "truncating committed entry {index} (commit {})",
            self.committed
        );
        let keep = (index - self.first_index()) as usize;
        self.entries.truncate(keep);
        self.unsent_from = self.unsent_from.min(index);
        self.persisted = self.persisted.min(index - 1);
    }

    /// Follower append (thesis §3.5 receiver rules 3 and 4): skips entries we already hold, truncates
    /// at the first conflict, appends the rest. Returns the index of the last entry of the append.
    pub fn maybe_append(&mut self, prev_index: Index, entries: Vec<Entry>) -> Index {
        let last_new = prev_index + entries.len() as u64;
        let mut iter = entries.into_iter().peekable();
        // Skip what we already hold, and anything inside our snapshot (already committed).
        while let Some(entry) = iter.peek() {
            if entry.index <= self.snapshot.index {
                iter.next();
                continue;
            }
            match self.term(entry.index) {
                Some(term) if term == entry.term => {
                    iter.next();
                }
                Some(_) => {
                    self.truncate_from(entry.index);
                    break;
                }
                None => break,
            }
        }
        for entry in iter {
            self.append_follower(entry);
        }
        last_new
    }

    fn append_follower(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "follower append must extend the log"
        );
        self.entries.push_back(entry);
    }

    /// Fast back-off (etcd's findConflictByTerm): the largest index `<= index` whose term is
    /// `<= term`, with that term.
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut index = index.min(self.last_index());
        loop {
            match self.term(index) {
                Some(t) if t > term => index -= 1,
                Some(t) => return (index, t),
                None => return (index.min(self.snapshot.index), self.snapshot.term),
            }
        }
    }

    pub fn commit_to(&mut self, index: Index) -> bool {
        if index > self.committed {
            assert!(
                index <= self.last_index(),
                "commit {index} beyond last index {}",
                self.last_index()
            );
            self.committed = index;
            return true;
        }
        false
    }

    /// The configuration in force after the entry at `index` (thesis §4.1: a server uses the latest
    /// configuration in its log, committed or not).
    pub fn config_at(&self, index: Index) -> (Configuration, Index) {
        assert!(index >= self.snapshot.index);
        let mut config = self.snapshot.config.clone();
        let mut config_index = self.snapshot.index;
        for entry in self.entries.iter().take_while(|e| e.index <= index) {
            match &entry.payload {
                Payload::Membership(change) => {
                    apply_logged_change(&mut config, *change, entry.index);
                    config_index = entry.index;
                }
                Payload::Bootstrap(initial) => {
                    config = initial.clone();
                    config_index = entry.index;
                }
                Payload::Noop | Payload::Command(_) | Payload::Register => {}
            }
        }
        (config, config_index)
    }

    /// Drops entries up to `index`, replacing them with a snapshot at `index`.
    pub fn compact(&mut self, meta: SnapshotMeta) {
        assert!(
            meta.index <= self.applied,
            "compacting unapplied entry {}",
            meta.index
        );
        assert!(meta.index > self.snapshot.index);
        assert_eq!(self.term(meta.index), Some(meta.term));
        let drop = (meta.index - self.snapshot.index) as usize;
        self.entries.drain(..drop);
        self.snapshot = meta;
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub fn restore(&mut self, meta: SnapshotMeta) {
        assert!(meta.index > self.committed, "restoring an older snapshot");
        self.entries.clear();
        self.committed = meta.index;
        self.handed_out = meta.index;
        self.unsent_from = meta.index + 1;
        self.persisted = self.persisted.min(meta.index);
        self.snapshot = meta;
    }
}

/// Applies a membership change taken from the log. The leader validated it before appending, so a
/// change that does not apply is a broken invariant.
pub(crate) fn apply_logged_change(
    config: &mut Configuration,
    change: MembershipChange,
    index: Index,
) {
    if let Err(e) = config.apply(change) {
        panic!("logged membership change at {index} ({change:?}) does not apply to {config}: {e}");
    }
}
