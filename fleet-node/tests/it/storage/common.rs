//! Shared pieces of the storage tests: a power-loss backend, an in-memory model of the store,
//! and a generator of valid Raft-like writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fleet_core::{
    Command, Configuration, Entry, GroupId, HardState, Index, Payload, ReplicaId, Snapshot,
    SnapshotMeta, Term,
};
use fleet_node::storage::{GroupWrite, Store, StoreConfig, WriteBatch};
use rand_chacha::ChaCha8Rng;
use rand_core::Rng;

/// redb writes in pages of this size; the crash model keeps or loses whole pages.
const PAGE_BYTES: usize = 4096;

#[derive(Debug, Default)]
struct Disk {
    /// What survives a power loss for sure.
    durable: Vec<u8>,
    /// What the process reads: durable plus every write since the last sync.
    current: Vec<u8>,
    /// Pages written since the last sync.
    dirty: BTreeSet<usize>,
}

/// A redb storage backend that simulates power loss: at a crash, only what was synced survives,
/// plus a random subset of the pages written since (each with its latest content), and the file
/// length either before or after the unsynced changes.
///
/// [`CrashBackend::freeze`] is the moment of the crash: every later write or sync fails, so the
/// process that owned the disk can do nothing more that a real power loss would have prevented
/// (such as removing an old snapshot file after a commit that never became durable).
#[derive(Debug, Clone, Default)]
pub struct CrashBackend {
    disk: Arc<Mutex<Disk>>,
    frozen: Arc<AtomicBool>,
    /// Makes the next syncs fail (a failed fsync).
    pub fail_sync: Arc<AtomicBool>,
    /// Makes writes fail with "no space left on device".
    pub full: Arc<AtomicBool>,
}

impl CrashBackend {
    /// A backend whose durable content is `image`.
    pub fn from_image(image: Vec<u8>) -> Self {
        let b = CrashBackend::default();
        {
            let mut d = b.disk.lock().unwrap();
            d.current = image.clone();
            d.durable = image;
        }
        b
    }

    /// Two backends on one power supply (a database file and its commit journal): a crash of
    /// either freezes both, as a power loss stops every file at once.
    pub fn pair() -> (CrashBackend, CrashBackend) {
        let a = CrashBackend::default();
        let b = CrashBackend {
            frozen: a.frozen.clone(),
            ..CrashBackend::default()
        };
        (a, b)
    }

    /// Like [`CrashBackend::from_image`], for two files on one power supply.
    pub fn pair_from_images(a: Vec<u8>, b: Vec<u8>) -> (CrashBackend, CrashBackend) {
        let a = CrashBackend::from_image(a);
        let b = CrashBackend {
            frozen: a.frozen.clone(),
            ..CrashBackend::from_image(b)
        };
        (a, b)
    }

    /// Pulls the plug: freezes the backend and returns what the disk holds after the power loss.
    pub fn crash(&self, rng: &mut ChaCha8Rng, keep_probability_percent: u64) -> Vec<u8> {
        let d = self.disk.lock().unwrap();
        self.frozen.store(true, Ordering::SeqCst);
        let len = if rng.next_u64().is_multiple_of(2) {
            d.current.len()
        } else {
            d.durable.len()
        };
        let mut img = d.durable.clone();
        img.resize(len.max(d.durable.len()), 0);
        for &p in &d.dirty {
            if rng.next_u64() % 100 < keep_probability_percent {
                let s = p * PAGE_BYTES;
                let e = ((p + 1) * PAGE_BYTES).min(d.current.len());
                if s < e {
                    if img.len() < e {
                        img.resize(e, 0);
                    }
                    img[s..e].copy_from_slice(&d.current[s..e]);
                }
            }
        }
        img.truncate(len);
        img
    }

    fn check_writable(&self) -> std::io::Result<()> {
        if self.frozen.load(Ordering::SeqCst) {
            return Err(std::io::Error::other(
                "simulated power loss: the disk is gone",
            ));
        }
        Ok(())
    }
}

impl redb::StorageBackend for CrashBackend {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.disk.lock().unwrap().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let d = self.disk.lock().unwrap();
        let s = offset as usize;
        let e = s + out.len();
        if e > d.current.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&d.current[s..e]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check_writable()?;
        let mut d = self.disk.lock().unwrap();
        let old = d.current.len();
        d.current.resize(len as usize, 0);
        if (len as usize) > old {
            let (first, last) = (old / PAGE_BYTES, (len as usize).div_ceil(PAGE_BYTES));
            d.dirty.extend(first..last);
        }
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.check_writable()?;
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("simulated fsync failure (EIO)"));
        }
        let mut d = self.disk.lock().unwrap();
        let len = d.current.len();
        d.durable.resize(len, 0);
        let dirty = std::mem::take(&mut d.dirty);
        for p in dirty {
            let s = p * PAGE_BYTES;
            let e = ((p + 1) * PAGE_BYTES).min(len);
            if s < e {
                let (cur, dur) = (&d.current[s..e].to_vec(), &mut d.durable);
                dur[s..e].copy_from_slice(cur);
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check_writable()?;
        if self.full.load(Ordering::SeqCst) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "No space left on device",
            ));
        }
        let mut d = self.disk.lock().unwrap();
        let s = offset as usize;
        let e = s + data.len();
        if d.current.len() < e {
            d.current.resize(e, 0);
        }
        d.current[s..e].copy_from_slice(data);
        let (first, last) = (s / PAGE_BYTES, e.div_ceil(PAGE_BYTES));
        d.dirty.extend(first..last);
        Ok(())
    }
}

/// A store configuration with small bounds, so that checkpoints, segment splits, cache trimming
/// and bounded erasure all happen in short tests.
pub fn small_config(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.commit_bytes_max = 2 << 10;
    c.commit_entries_max = 256;
    c.wal_bytes_max = 4 << 10;
    c.checkpoint_groups_per_step_max = 3;
    c.checkpoint_bytes_per_step_max = 4 << 10;
    c.segment_bytes_max = 600;
    c.cache_flushed_bytes_max = 300;
    c.remove_rows_per_step_max = 2;
    c.redb_cache_bytes = 4 << 20;
    c.snapshot_chunk_bytes_max = 100;
    // Background work only when told to, so that tests are deterministic.
    c.idle_interval = Duration::from_secs(3600);
    c
}

/// An entry whose payload names its group, index and term.
pub fn entry(group: GroupId, index: Index, term: Term, time: u64) -> Entry {
    Entry {
        term,
        index,
        time,
        payload: Payload::Command(Command {
            session: None,
            data: Bytes::from(format!("g{}-i{index}-t{term}-payload", group.0)),
        }),
    }
}

/// The model of one group's durable state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupModel {
    pub hard_state: HardState,
    pub snapshot: Option<SnapshotMeta>,
    pub snapshot_data: Option<Bytes>,
    /// The log from the first index on.
    pub entries: Vec<Entry>,
}

impl GroupModel {
    pub fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |s| s.index)
    }
    pub fn last_index(&self) -> Index {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }
    pub fn last_term(&self) -> Term {
        self.entries
            .last()
            .map_or(self.snapshot.as_ref().map_or(0, |s| s.term), |e| e.term)
    }
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index() {
            return Some(self.snapshot.as_ref().map_or(0, |s| s.term));
        }
        self.entries
            .iter()
            .find(|e| e.index == index)
            .map(|e| e.term)
    }

    /// Applies a write the way the store must.
    pub fn apply(&mut self, w: &GroupWrite) {
        if let Some(s) = &w.snapshot {
            let keep =
                self.term(s.meta.index) == Some(s.meta.term) && s.meta.index < self.last_index();
            if keep {
                self.entries.retain(|e| e.index > s.meta.index);
            } else {
                self.entries.clear();
            }
            self.snapshot = Some(s.meta.clone());
            self.snapshot_data = Some(s.data.clone());
        }
        if let Some(first) = w.entries.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend(w.entries.iter().cloned());
        }
        if let Some(hs) = w.hard_state {
            self.hard_state = hs;
        }
    }
}

/// The model of the whole store.
pub type Model = BTreeMap<GroupId, GroupModel>;

/// A random write that the store must accept, given the model of the group.
pub fn random_write(rng: &mut ChaCha8Rng, group: GroupId, m: &GroupModel, time: u64) -> GroupWrite {
    let mut w = GroupWrite::new(group);
    let mut hs = m.hard_state;
    let roll = rng.next_u64() % 100;
    let last = m.last_index();
    if roll < 55 {
        // Append at the end, in the current term.
        if hs.term == 0 {
            hs.term = 1;
        }
        let n = 1 + rng.next_u64() % 4;
        w.entries = (0..n)
            .map(|i| entry(group, last + 1 + i, hs.term, time))
            .collect();
    } else if roll < 67 && last > hs.commit.max(m.snapshot_index()) {
        // A new leader overwrites the uncommitted suffix.
        let lo = hs.commit.max(m.snapshot_index()) + 1;
        let start = lo + rng.next_u64() % (last - lo + 1);
        hs.term += 1;
        hs.vote = Some(ReplicaId::new(1 + rng.next_u64() % 3, 0));
        let n = 1 + rng.next_u64() % 3;
        w.entries = (0..n)
            .map(|i| entry(group, start + i, hs.term, time))
            .collect();
    } else if roll < 85 {
        // Commit advances, or a vote in a new term.
        if rng.next_u64().is_multiple_of(3) {
            hs.term += 1;
            hs.vote = Some(ReplicaId::new(1 + rng.next_u64() % 3, 0));
        }
        if last > hs.commit {
            hs.commit += 1 + rng.next_u64() % (last - hs.commit);
        }
    } else if roll < 95 && hs.commit > m.snapshot_index() {
        // The local state machine took a snapshot at an applied index.
        let index = m.snapshot_index() + 1 + rng.next_u64() % (hs.commit - m.snapshot_index());
        let term = m.term(index).expect("committed entry");
        w.snapshot = Some(snapshot_at(group, index, term));
    } else {
        // A leader sends a snapshot past our log (we were far behind).
        hs.term += 1;
        let index = last + 1 + rng.next_u64() % 5;
        hs.commit = index;
        hs.vote = None;
        w.snapshot = Some(snapshot_at(group, index, hs.term));
    }
    if hs != m.hard_state {
        w.hard_state = Some(hs);
    }
    w
}

/// A snapshot whose data names its group and index.
pub fn snapshot_at(group: GroupId, index: Index, term: Term) -> Snapshot {
    let data = format!("state of g{} at {index} ", group.0).repeat(1 + (index % 7) as usize);
    Snapshot {
        meta: SnapshotMeta {
            index,
            term,
            config: Configuration::new([
                ReplicaId::new(1, 0),
                ReplicaId::new(2, 0),
                ReplicaId::new(3, 0),
            ]),
            time: index,
        },
        data: Bytes::from(data),
    }
}

/// A batch of random writes over a few groups (each group at most once, so a snapshot is first).
pub fn random_batch(
    rng: &mut ChaCha8Rng,
    model: &Model,
    groups: &[GroupId],
    time: u64,
) -> WriteBatch {
    let mut batch = WriteBatch::new();
    let n = 1 + rng.next_u64() as usize % groups.len().min(4);
    let mut chosen = BTreeSet::new();
    for _ in 0..n {
        chosen.insert(groups[rng.next_u64() as usize % groups.len()]);
    }
    for g in chosen {
        batch.push(random_write(rng, g, &model[&g], time));
    }
    batch
}

/// Applies a batch to the model.
pub fn apply_batch(model: &mut Model, batch: &WriteBatch) {
    for (g, _, _) in &batch.creates {
        model.insert(*g, Default::default());
    }
    for w in &batch.groups {
        model.get_mut(&w.group).expect("model group").apply(w);
    }
}

/// Reads what the store holds of a group, in the model's shape.
pub fn read_group(store: &Store, group: GroupId) -> Result<GroupModel, String> {
    let info = store
        .group(group)
        .ok_or_else(|| format!("group {group} missing"))?;
    let entries = store
        .entries(group, info.first_index, info.last_index + 1, usize::MAX)
        .map_err(|e| format!("group {group}: reading entries: {e}"))?;
    let snap = store
        .read_snapshot(group)
        .map_err(|e| format!("group {group}: reading snapshot: {e}"))?;
    let got = GroupModel {
        hard_state: info.hard_state,
        snapshot: info.snapshot.clone(),
        snapshot_data: snap.map(|s| s.data),
        entries,
    };
    if got.last_index() != info.last_index || got.last_term() != info.last_term {
        return Err(format!(
            "group {group}: tip ({}, {}) does not match the entries ({}, {})",
            info.last_index,
            info.last_term,
            got.last_index(),
            got.last_term()
        ));
    }
    for (i, e) in got.entries.iter().enumerate() {
        if e.index != info.first_index + i as u64 {
            return Err(format!("group {group}: gap at {}", e.index));
        }
    }
    Ok(got)
}

/// Compares the whole store with a model.
pub fn compare(store: &Store, model: &Model) -> Result<(), String> {
    let groups: Vec<GroupId> = model.keys().copied().collect();
    if store.groups() != groups {
        return Err(format!(
            "store hosts {:?}, model {:?}",
            store.groups(),
            groups
        ));
    }
    for (g, m) in model {
        let got = read_group(store, *g)?;
        if &got != m {
            return Err(format!("group {g}: store {got:#?}\nmodel {m:#?}"));
        }
    }
    Ok(())
}
