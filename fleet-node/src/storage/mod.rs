//! Durable storage: one redb database per node, shared by every group (issue 4).
//!
//! # What it stores
//!
//! `<data_dir>/fleet.redb` holds, for every group this node hosts: its log, its hard state
//! (term, vote, commit), its snapshot metadata and its entry in the local replica registry
//! (replica id, state machine kind, lifecycle state). Snapshot data lives in files under
//! `<data_dir>/snapshots/` (see [`SnapshotReader`]).
//!
//! # Layout: a shared write-ahead table, checkpointed into per-group segments
//!
//! Every commit writes **one** record under an increasing sequence number into the table `wal`,
//! holding the writes of every group in the batch (entries, hard state, snapshot metadata). That
//! keeps each commit's writes sequential in the B-tree however many groups it touches, which is
//! what makes group commit cheap (Ra's shared WAL, Dragonboat's LogDB). In memory, each group
//! keeps its tip (first and last index, last term, hard state, snapshot) and a cache of every
//! entry not yet checkpointed plus a few recent ones, so replication and elections never read
//! redb on the hot path.
//!
//! When the write-ahead table grows past half of [`StoreConfig::wal_bytes_max`], the writer
//! checkpoints the groups with the oldest unflushed writes (at most
//! [`StoreConfig::checkpoint_groups_per_step_max`] per step): their entries go into the table
//! `segments` as runs keyed `(group, last index)`, their hard state and snapshot into a record
//! keyed `(group, u64::MAX)` of the same table (next to the group's last run, so one leaf is
//! rewritten per group) with the sequence number they are flushed up to, and the write-ahead
//! records no group needs any more are deleted, all in one transaction. A truncated suffix or a compacted prefix
//! only touches the segments of its own group. Recovery reads the group records and replays the
//! write-ahead table, at most `wal_bytes_max` bytes, so it is bounded however large the logs
//! are.
//!
//! The alternative, one redb row per entry keyed `(group, index)`, is what the benchmark
//! (`cargo bench -p fleet-node --bench storage`) compares against; see `docs/storage.md` for the
//! figures that decided it.
//!
//! # Writing
//!
//! [`Store::submit`] hands a [`WriteBatch`] (the `Ready` writes of many groups) to a dedicated
//! writer thread through a bounded queue ([`StoreConfig::queue_depth_max`]) and returns at once
//! with a [`Ticket`]; the node loop keeps collecting the next batch meanwhile. The writer merges
//! the batches waiting in the queue (up to [`StoreConfig::commit_entries_max`] entries and
//! [`StoreConfig::commit_bytes_max`] bytes) into one write transaction committed with
//! `Durability::Immediate`, then completes each batch's ticket with what is durable per group
//! ([`WriteOutcome`]). Batches become durable in the order they were submitted.
//!
//! # Failure rules
//!
//! - A failed commit or fsync is never retried and never acknowledged: the store enters a
//!   failed state and refuses every later write with [`StorageError::Failed`].
//! - Open refuses a store that fails its checks (a bad checksum, a missing snapshot file, a gap in
//!   a log after its snapshot) with an error naming the file, the group and the problem; it
//!   never drops committed entries to "repair" it.
//! - A write that breaks the rules of a log (a gap, a truncation of committed entries, a vote
//!   changed within a term) is refused alone with [`StorageError::InvalidWrite`].

mod codec;
mod direct;
mod error;
mod faults;
pub mod journal;
mod recovery;
mod snapshot;
mod state;
mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use fleet_core::{Entry, GroupId, HardState, Index, ReplicaId, Snapshot, SnapshotMeta, Term};
use redb::{ReadableDatabase, TableDefinition};
use tokio::sync::oneshot;

pub use codec::{ReplicaRecord, ReplicaState, STORAGE_FORMAT_VERSION, crc32c, crc32c_append};
pub use error::{Result, StorageError};
#[doc(hidden)]
pub use faults::StorageFaults;
pub use recovery::{RecoveredGroup, RecoveryReport};
pub use snapshot::SnapshotReader;

use state::GroupState;

/// The database file's name inside the data directory.
pub const DATABASE_FILE_NAME: &str = "fleet.redb";

/// [`StoreConfig::redb_cache_bytes`] by default.
pub const REDB_CACHE_BYTES_DEFAULT: usize = 64 << 20;
/// [`StoreConfig::commit_bytes_max`] by default.
pub const COMMIT_BYTES_MAX_DEFAULT: usize = 16 << 20;
/// [`StoreConfig::wal_bytes_max`] by default (it must hold two full commits).
pub const WAL_BYTES_MAX_DEFAULT: u64 = 128 << 20;

pub(crate) const WAL: TableDefinition<u64, &[u8]> = TableDefinition::new("wal");
pub(crate) const SEGMENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("segments");
/// The key index under which a group's checkpointed record lives in `segments`, next to its
/// last segment, so that a checkpoint rewrites one B-tree leaf per group rather than two.
pub(crate) const GROUP_RECORD_INDEX: u64 = u64::MAX;
pub(crate) const REPLICAS: TableDefinition<u64, &[u8]> = TableDefinition::new("replicas");
pub(crate) const REMOVING: TableDefinition<u64, ()> = TableDefinition::new("removing");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const META_KEY: &str = "store";

/// The settings of a [`Store`]. Every bound ends in `_max`.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The data directory: the database and the snapshot files live here.
    pub data_dir: PathBuf,
    /// Batches submitted and not yet taken by the writer; `submit` blocks beyond it.
    pub queue_depth_max: usize,
    /// Entries merged into one commit (also the largest single batch accepted).
    pub commit_entries_max: usize,
    /// Encoded bytes merged into one commit (also the largest single batch accepted).
    pub commit_bytes_max: usize,
    /// The write-ahead table's size bound. Checkpoints start at half of it; at it, the writer
    /// checkpoints before it commits anything more. It bounds recovery time and the memory the
    /// caches of unflushed entries take.
    pub wal_bytes_max: u64,
    /// Groups moved into the segments per checkpoint step.
    pub checkpoint_groups_per_step_max: usize,
    /// Entry bytes moved into the segments per checkpoint step.
    pub checkpoint_bytes_per_step_max: usize,
    /// The largest run of entries stored as one segment value.
    pub segment_bytes_max: usize,
    /// Bytes of already checkpointed entries kept in a group's cache after a checkpoint.
    pub cache_flushed_bytes_max: usize,
    /// Segment rows deleted per step when a removed group's data is erased.
    pub remove_rows_per_step_max: usize,
    /// The largest snapshot [`Store::read_snapshot`] reads into memory.
    pub snapshot_bytes_max: u64,
    /// The largest chunk a [`SnapshotReader`] returns.
    pub snapshot_chunk_bytes_max: usize,
    /// redb's page cache, in the process (default 64 MiB). It holds the B-tree pages the writer
    /// touches (segments, group records, the `wal` table); the operating system's page cache
    /// holds the file as well, so a larger one mostly grows the node's resident memory: at 256
    /// MiB a node reached 365–417 MiB after a minute of writes in the fleet benchmark, at 64 MiB
    /// 290 MiB, with writes/s within the noise (two interleaved pairs, 2026-11-23).
    pub redb_cache_bytes: usize,
    /// Let redb verify the checksum of every page on open (reads the whole file); without it, a
    /// corrupt page may make redb panic instead of returning an error.
    pub check_integrity_on_open: bool,
    /// Read every segment on open to check checksums and that no log has a gap.
    pub verify_log_on_open: bool,
    /// Read every snapshot file on open to check its checksum (its presence and length are
    /// always checked).
    pub verify_snapshots_on_open: bool,
    /// How long the writer waits for work before it checkpoints or erases in the background.
    pub idle_interval: Duration,
    /// Make batch commits durable through the commit journal (`fleet.journal`: one sequential
    /// write and sync of the batch's record per commit, while redb takes the batch without a
    /// sync; see [`journal`]). Off, every batch is a durable redb commit.
    pub journal: bool,
    /// The journal file's size (filled with zeros when created). When a batch's record does not
    /// fit in the space left, that batch is a durable redb commit and the journal starts over: a
    /// larger journal makes those rarer and the replay on open longer. A change applies to an
    /// existing journal at the next open.
    pub journal_bytes_max: u64,
}

impl StoreConfig {
    /// The defaults, for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            queue_depth_max: 64,
            commit_entries_max: 16 * 1024,
            commit_bytes_max: COMMIT_BYTES_MAX_DEFAULT,
            wal_bytes_max: WAL_BYTES_MAX_DEFAULT,
            checkpoint_groups_per_step_max: 1024,
            checkpoint_bytes_per_step_max: 2 << 20,
            segment_bytes_max: 256 << 10,
            cache_flushed_bytes_max: 4 << 10,
            remove_rows_per_step_max: 1024,
            snapshot_bytes_max: 1 << 30,
            snapshot_chunk_bytes_max: 1 << 20,
            redb_cache_bytes: REDB_CACHE_BYTES_DEFAULT,
            check_integrity_on_open: true,
            verify_log_on_open: true,
            verify_snapshots_on_open: true,
            idle_interval: Duration::from_millis(200),
            journal: true,
            journal_bytes_max: 64 << 20,
        }
    }

    /// Refuses settings the store cannot work with, naming the setting.
    fn check(&self) -> Result<()> {
        let positive = [
            ("queue_depth_max", self.queue_depth_max as u64),
            ("commit_entries_max", self.commit_entries_max as u64),
            ("commit_bytes_max", self.commit_bytes_max as u64),
            (
                "checkpoint_groups_per_step_max",
                self.checkpoint_groups_per_step_max as u64,
            ),
            ("segment_bytes_max", self.segment_bytes_max as u64),
            (
                "remove_rows_per_step_max",
                self.remove_rows_per_step_max as u64,
            ),
            (
                "snapshot_chunk_bytes_max",
                self.snapshot_chunk_bytes_max as u64,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(StorageError::InvalidConfig(format!(
                "{name} must be positive"
            )));
        }
        if self.journal && self.journal_bytes_max < journal::JOURNAL_BYTES_MIN {
            return Err(StorageError::InvalidConfig(format!(
                "journal_bytes_max ({}) must be at least {}",
                self.journal_bytes_max,
                journal::JOURNAL_BYTES_MIN
            )));
        }
        if self.wal_bytes_max < 2 * self.commit_bytes_max as u64 {
            return Err(StorageError::InvalidConfig(format!(
                "wal_bytes_max ({}) must hold at least two full commits (2 x commit_bytes_max = {})",
                self.wal_bytes_max,
                2 * self.commit_bytes_max as u64
            )));
        }
        Ok(())
    }
}

/// One group's writes from one `Ready`: persisted in field order (snapshot, entries, hard state),
/// atomically with every other write of the same commit.
#[derive(Clone, Debug)]
pub struct GroupWrite {
    /// The group.
    pub group: GroupId,
    /// The `Ready`'s number, returned in [`GroupDurable`] for `Replica::persisted`.
    pub ready_number: u64,
    /// A snapshot that now covers the log up to its index. Entries after it are kept if the log
    /// holds the snapshot's last entry (same index and term), else the whole log is replaced.
    pub snapshot: Option<Snapshot>,
    /// Entries to append. If the first index is at or below the last stored index, the stored
    /// suffix from it is replaced (as in etcd-raft); entries must be consecutive.
    pub entries: Vec<Entry>,
    /// The new hard state.
    pub hard_state: Option<HardState>,
}

impl GroupWrite {
    /// An empty write for a group.
    pub fn new(group: GroupId) -> Self {
        GroupWrite {
            group,
            ready_number: 0,
            snapshot: None,
            entries: Vec::new(),
            hard_state: None,
        }
    }

    /// Moves what must be persisted out of a `Ready`, leaving the messages and committed entries
    /// to the driver.
    pub fn take_from_ready(group: GroupId, ready: &mut fleet_core::Ready) -> Self {
        GroupWrite {
            group,
            ready_number: ready.number,
            snapshot: ready.snapshot.take(),
            entries: std::mem::take(&mut ready.entries),
            hard_state: ready.hard_state,
        }
    }

    fn entries_bytes(&self) -> usize {
        self.entries.iter().map(Entry::size_bytes).sum::<usize>()
    }
}

/// The writes of many groups, made durable together.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// New, empty replicas to register in the same commit, before the writes (a new replica's
    /// bootstrap can ride in the batch that registers it). All or none are created; a group that
    /// exists already refuses the batch.
    pub creates: Vec<(GroupId, ReplicaId, String)>,
    /// The groups' writes, applied in order.
    pub groups: Vec<GroupWrite>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one group's writes.
    pub fn push(&mut self, write: GroupWrite) {
        self.groups.push(write);
    }

    /// Registers a new, empty replica in this batch's commit (see [`WriteBatch::creates`]).
    pub fn create(&mut self, group: GroupId, replica: ReplicaId, kind: impl Into<String>) {
        self.creates.push((group, replica, kind.into()));
    }

    /// Whether the batch has nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.creates.is_empty()
    }

    /// The number of entries in the batch.
    pub fn entry_count(&self) -> usize {
        self.groups.iter().map(|g| g.entries.len()).sum()
    }

    /// The approximate encoded size of the batch's entries.
    pub fn entry_bytes(&self) -> usize {
        self.groups.iter().map(GroupWrite::entries_bytes).sum()
    }
}

/// What is durable for one group after a batch committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDurable {
    /// The group.
    pub group: GroupId,
    /// The `Ready` number the write carried.
    pub ready_number: u64,
    /// The log's last index after the write.
    pub last_index: Index,
    /// The term of `last_index`.
    pub last_term: Term,
    /// The hard state after the write.
    pub hard_state: HardState,
    /// The snapshot index after the write (0 without a snapshot).
    pub snapshot_index: Index,
}

/// The completion of a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The write-ahead sequence number of the commit that held the batch.
    pub seq: u64,
    /// One line per [`GroupWrite`] of the batch, in order.
    pub groups: Vec<GroupDurable>,
}

/// The pending result of a request to the writer: wait for it on a thread with [`Ticket::wait`],
/// or `.await` it.
#[derive(Debug)]
#[must_use = "a ticket says when the write is durable"]
pub struct Ticket<T> {
    rx: oneshot::Receiver<Result<T>>,
}

impl<T> Ticket<T> {
    /// Blocks the thread until the request completes. Do not call it from async code: `.await`
    /// the ticket instead.
    pub fn wait(self) -> Result<T> {
        self.rx.blocking_recv().unwrap_or(Err(StorageError::Closed))
    }

    /// The result if the request has completed, or the ticket back.
    pub fn try_wait(mut self) -> std::result::Result<Result<T>, Self> {
        match self.rx.try_recv() {
            Ok(r) => Ok(r),
            Err(oneshot::error::TryRecvError::Empty) => Err(self),
            Err(oneshot::error::TryRecvError::Closed) => Ok(Err(StorageError::Closed)),
        }
    }
}

impl<T> Future for Ticket<T> {
    type Output = Result<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StorageError::Closed)))
    }
}

/// What the store knows of one hosted group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// The registry entry.
    pub replica: ReplicaRecord,
    /// The durable hard state.
    pub hard_state: HardState,
    /// The durable snapshot's metadata.
    pub snapshot: Option<SnapshotMeta>,
    /// The first index in the log (the snapshot index + 1).
    pub first_index: Index,
    /// The last index in the log (the snapshot index if the log is empty).
    pub last_index: Index,
    /// The term of `last_index`.
    pub last_term: Term,
}

/// Counters of the store, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Groups hosted.
    pub groups: usize,
    /// Write-ahead records not yet checkpointed away.
    pub wal_records: u64,
    /// Their encoded bytes.
    pub wal_bytes: u64,
    /// Commits of batches since open.
    pub commits: u64,
    /// Checkpoint steps since open.
    pub checkpoints: u64,
    /// Journaled batches whose redb writes waited while a later request's journal record went
    /// first (they joined a later redb transaction), since open.
    pub batches_deferred: u64,
    /// Entry bytes held in the caches.
    pub cache_bytes: u64,
}

/// A hasher for maps keyed by [`GroupId`]: ids are small integers the node assigns, not input an
/// attacker picks, so a multiplicative hash is enough and much cheaper than SipHash on the
/// commit path, which looks up every group of a batch several times.
#[derive(Default, Clone, Copy)]
pub(crate) struct GroupIdHasher(u64);

impl std::hash::Hasher for GroupIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the high bits, which hashbrown uses, depend on every input bit.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

fn create_data_dir(config: &StoreConfig) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| StorageError::io("create the data directory", &config.data_dir, e))
}

/// Opens (creating if needed) a file as a redb file backend.
fn open_file(path: &Path, op: &'static str) -> Result<redb::backends::FileBackend> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StorageError::io(op, path, e))?;
    redb::backends::FileBackend::new(file).map_err(|e| StorageError::redb(op, path, e))
}

/// A map keyed by group id.
pub(crate) type GroupMap<V> = HashMap<GroupId, V, std::hash::BuildHasherDefault<GroupIdHasher>>;

pub(crate) struct Shared {
    pub config: StoreConfig,
    pub db: redb::Database,
    pub db_path: PathBuf,
    pub groups: RwLock<GroupMap<GroupState>>,
    pub failed: Mutex<Option<String>>,
    /// The commit journal's counters, when there is one (the writer publishes them).
    pub journal: Mutex<Option<journal::JournalStats>>,
    pub wal_records: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub commits: AtomicU64,
    pub checkpoints: AtomicU64,
    pub batches_deferred: AtomicU64,
}

impl Shared {
    /// Puts the store in the failed state (the first failure wins) and returns the error.
    pub fn fail(&self, err: StorageError) -> StorageError {
        let mut failed = self.failed.lock().expect("failed lock");
        if failed.is_none() {
            tracing::error!(error = %err, "storage failed; refusing every further write");
            *failed = Some(err.to_string());
        }
        err
    }

    pub fn check_failed(&self) -> Result<()> {
        match &*self.failed.lock().expect("failed lock") {
            Some(reason) => Err(StorageError::Failed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    pub fn redb_err(&self, op: &'static str, e: impl Into<redb::Error>) -> StorageError {
        StorageError::redb(op, &self.db_path, e)
    }
}

pub(crate) enum Request {
    Write {
        batch: WriteBatch,
        done: oneshot::Sender<Result<WriteOutcome>>,
    },
    Create {
        groups: Vec<(GroupId, ReplicaRecord)>,
        done: oneshot::Sender<Result<()>>,
    },
    SetState {
        group: GroupId,
        state: ReplicaState,
        done: oneshot::Sender<Result<()>>,
    },
    Remove {
        group: GroupId,
        done: oneshot::Sender<Result<()>>,
    },
    Checkpoint {
        done: oneshot::Sender<Result<()>>,
    },
    Shutdown,
}

/// The node's store. Cheap reads from any thread; writes go through one writer thread.
///
/// Dropping the store finishes the writes already submitted and stops the writer.
pub struct Store {
    shared: Arc<Shared>,
    tx: Option<SyncSender<Request>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("db_path", &self.shared.db_path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `config.data_dir`, recovers every hosted group and checks
    /// the files; refuses to open a store that fails the checks.
    pub fn open(config: StoreConfig) -> Result<(Store, RecoveryReport)> {
        config.check()?;
        let path = config.data_dir.join(DATABASE_FILE_NAME);
        if !config.journal {
            return recovery::open(config, path.clone(), |b| b.create(&path), None);
        }
        create_data_dir(&config)?;
        let main = open_file(&path, "open the database")?;
        let log_path = config.data_dir.join(journal::JOURNAL_FILE_NAME);
        let log = direct::DirectFile::open(&log_path)
            .map_err(|e| StorageError::io("open the commit journal", &log_path, e))?;
        Store::open_with_journal(config, main, log)
    }

    /// Like [`Store::open`], with the database on a custom redb storage backend and no commit
    /// journal (redb syncs its own file). Snapshot files still live in `config.data_dir`.
    pub fn open_with_backend(
        config: StoreConfig,
        backend: impl redb::StorageBackend,
    ) -> Result<(Store, RecoveryReport)> {
        config.check()?;
        let path = config.data_dir.join(DATABASE_FILE_NAME);
        recovery::open(config, path, |b| b.create_with_backend(backend), None)
    }

    /// Like [`Store::open`], with the database on `main` and the commit journal on `log` (tests
    /// use it to simulate power loss on both files).
    pub fn open_with_journal(
        config: StoreConfig,
        main: impl redb::StorageBackend,
        log: impl redb::StorageBackend,
    ) -> Result<(Store, RecoveryReport)> {
        config.check()?;
        let path = config.data_dir.join(DATABASE_FILE_NAME);
        recovery::open(
            config,
            path,
            |b| b.create_with_backend(main),
            Some(Box::new(log)),
        )
    }

    /// The commit journal's counters (`None` without a journal).
    pub fn journal_stats(&self) -> Option<journal::JournalStats> {
        *self.shared.journal.lock().expect("journal lock")
    }

    /// Like [`Store::open`], on the same file, with `faults` applied to it (tests of how the
    /// node reacts to a failing disk).
    #[doc(hidden)]
    pub fn open_with_faults(
        config: StoreConfig,
        faults: Arc<StorageFaults>,
    ) -> Result<(Store, RecoveryReport)> {
        create_data_dir(&config)?;
        let path = config.data_dir.join(DATABASE_FILE_NAME);
        let file = faults::FaultyFile::open(&path, faults.clone())
            .map_err(|e| StorageError::io("open the database", &path, e))?;
        if !config.journal {
            return Store::open_with_backend(config, file);
        }
        let log_path = config.data_dir.join(journal::JOURNAL_FILE_NAME);
        let log = faults::FaultyFile::open(&log_path, faults)
            .map_err(|e| StorageError::io("open the commit journal", &log_path, e))?;
        Store::open_with_journal(config, file, log)
    }

    fn start(shared: Arc<Shared>, writer: writer::Writer) -> Store {
        let (tx, rx) = std::sync::mpsc::sync_channel(shared.config.queue_depth_max);
        let handle = std::thread::Builder::new()
            .name("fleet-storage-writer".into())
            .spawn(move || writer.run(rx))
            .expect("spawn the storage writer thread");
        Store {
            shared,
            tx: Some(tx),
            writer: Some(handle),
        }
    }

    fn check_batch(&self, batch: &WriteBatch) -> Result<()> {
        let c = &self.shared.config;
        let (entries, bytes) = (batch.entry_count(), batch.entry_bytes());
        if entries > c.commit_entries_max {
            return Err(StorageError::TooLarge {
                what: "the batch's entry count",
                found: entries as u64,
                max: c.commit_entries_max as u64,
            });
        }
        if bytes > c.commit_bytes_max {
            return Err(StorageError::TooLarge {
                what: "the batch's entry bytes",
                found: bytes as u64,
                max: c.commit_bytes_max as u64,
            });
        }
        Ok(())
    }

    fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
        block: bool,
    ) -> Result<Ticket<T>> {
        self.shared.check_failed()?;
        let (done, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(StorageError::Closed)?;
        let req = make(done);
        if block {
            tx.send(req).map_err(|_| StorageError::Closed)?;
        } else {
            tx.try_send(req).map_err(|e| match e {
                TrySendError::Full(_) => StorageError::QueueFull {
                    depth_max: self.shared.config.queue_depth_max,
                },
                TrySendError::Disconnected(_) => StorageError::Closed,
            })?;
        }
        Ok(Ticket { rx })
    }

    /// Queues a batch for the writer; blocks while [`StoreConfig::queue_depth_max`] batches wait.
    /// The ticket completes once the batch is durable (or failed).
    pub fn submit(&self, batch: WriteBatch) -> Result<Ticket<WriteOutcome>> {
        self.check_batch(&batch)?;
        self.send(|done| Request::Write { batch, done }, true)
    }

    /// Like [`Store::submit`], but returns [`StorageError::QueueFull`] instead of blocking.
    pub fn try_submit(&self, batch: WriteBatch) -> Result<Ticket<WriteOutcome>> {
        self.check_batch(&batch)?;
        self.send(|done| Request::Write { batch, done }, false)
    }

    /// Submits a batch and waits until it is durable.
    pub fn write(&self, batch: WriteBatch) -> Result<WriteOutcome> {
        self.submit(batch)?.wait()
    }

    /// Registers a new, empty replica of `group` on this node (durable when the ticket completes).
    pub fn create_group(
        &self,
        group: GroupId,
        replica: ReplicaId,
        kind: impl Into<String>,
    ) -> Result<Ticket<()>> {
        self.create_groups(vec![(group, replica, kind.into())])
    }

    /// Registers many new, empty replicas in one commit (at most
    /// [`StoreConfig::commit_entries_max`]); all or none are created.
    pub fn create_groups(&self, groups: Vec<(GroupId, ReplicaId, String)>) -> Result<Ticket<()>> {
        let max = self.shared.config.commit_entries_max;
        if groups.len() > max {
            return Err(StorageError::TooLarge {
                what: "the number of groups created at once",
                found: groups.len() as u64,
                max: max as u64,
            });
        }
        let groups = groups
            .into_iter()
            .map(|(group, replica, kind)| (group, ReplicaRecord::pending(replica, kind)))
            .collect();
        self.send(|done| Request::Create { groups, done }, true)
    }

    /// Records a replica's lifecycle state in the registry.
    pub fn set_replica_state(&self, group: GroupId, state: ReplicaState) -> Result<Ticket<()>> {
        self.send(|done| Request::SetState { group, state, done }, true)
    }

    /// Removes a group: durably unregisters it at once, then erases its log in the background in
    /// bounded steps ([`StoreConfig::remove_rows_per_step_max`]) and removes its snapshot files.
    pub fn remove_group(&self, group: GroupId) -> Result<Ticket<()>> {
        self.send(|done| Request::Remove { group, done }, true)
    }

    /// Checkpoints the whole write-ahead table into the segments (shutdown, tests, benchmarks).
    pub fn checkpoint(&self) -> Result<Ticket<()>> {
        self.send(|done| Request::Checkpoint { done }, true)
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.shared.config
    }

    /// Stops the writer after the submitted requests, and returns the failure if there was one.
    pub fn close(mut self) -> Result<()> {
        self.stop();
        self.shared.check_failed()
    }

    fn stop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Request::Shutdown);
        }
        if let Some(h) = self.writer.take()
            && h.join().is_err()
        {
            tracing::error!("the storage writer thread panicked");
        }
    }

    /// Whether the store has failed (see [`StorageError::Failed`]).
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().expect("failed lock").clone()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.db_path
    }

    /// The hosted groups, sorted.
    pub fn groups(&self) -> Vec<GroupId> {
        let mut v: Vec<GroupId> = self.read_groups().keys().copied().collect();
        v.sort();
        v
    }

    /// What the store holds of a group, or `None` if it does not host it.
    pub fn group(&self, group: GroupId) -> Option<GroupInfo> {
        self.read_groups().get(&group).map(|st| GroupInfo {
            replica: st.replica.clone(),
            hard_state: st.hard_state,
            snapshot: st.snapshot.clone(),
            first_index: st.first_index,
            last_index: st.last_index,
            last_term: st.last_term,
        })
    }

    /// Counters of the store.
    pub fn stats(&self) -> StoreStats {
        let groups = self.read_groups();
        StoreStats {
            groups: groups.len(),
            wal_records: self.shared.wal_records.load(Ordering::Relaxed),
            wal_bytes: self.shared.wal_bytes.load(Ordering::Relaxed),
            commits: self.shared.commits.load(Ordering::Relaxed),
            checkpoints: self.shared.checkpoints.load(Ordering::Relaxed),
            batches_deferred: self.shared.batches_deferred.load(Ordering::Relaxed),
            cache_bytes: groups.values().map(|g| g.cache_bytes as u64).sum(),
        }
    }

    fn read_groups(&self) -> std::sync::RwLockReadGuard<'_, GroupMap<GroupState>> {
        self.shared.groups.read().expect("groups lock")
    }

    /// The entries `[lo, hi)` of a group, stopping before the total size would pass `bytes_max`
    /// (but always at least one entry if `lo < hi`). Served from the cache when it covers `lo`.
    pub fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        bytes_max: usize,
    ) -> Result<Vec<Entry>> {
        let groups = self.read_groups();
        let st = groups
            .get(&group)
            .ok_or(StorageError::UnknownGroup { group })?;
        if lo < st.first_index {
            return Err(StorageError::Compacted {
                group,
                index: lo,
                first_index: st.first_index,
            });
        }
        if hi > st.last_index + 1 {
            return Err(StorageError::Unavailable {
                group,
                index: hi - 1,
                last_index: st.last_index,
            });
        }
        let mut out = Vec::new();
        if lo >= hi {
            return Ok(out);
        }
        let cache_first = st.cache_first().unwrap_or(st.last_index + 1);
        let mut budget = Budget::new(bytes_max);
        if lo >= cache_first {
            take_from_cache(st, lo, hi, &mut budget, &mut out);
            return Ok(out);
        }
        // Part of the range is in the segments. Open the read transaction under the lock, so it
        // sees segments at least as new as the tip we checked.
        let txn = self
            .shared
            .db
            .begin_read()
            .map_err(|e| self.shared.redb_err("begin a read", e))?;
        let mut cached = Vec::new();
        let mut cache_budget = Budget::new(bytes_max);
        take_from_cache(st, cache_first, hi, &mut cache_budget, &mut cached);
        drop(groups);
        let seg_hi = hi.min(cache_first);
        read_segments(&self.shared, &txn, group, lo, seg_hi, &mut budget, &mut out)?;
        if out.last().map(|e| e.index + 1) == Some(seg_hi) {
            for e in cached {
                if !budget.admit(&e) {
                    break;
                }
                out.push(e);
            }
        }
        Ok(out)
    }

    /// The term of the entry at `index` (the snapshot's index included).
    pub fn term(&self, group: GroupId, index: Index) -> Result<Term> {
        let groups = self.read_groups();
        let st = groups
            .get(&group)
            .ok_or(StorageError::UnknownGroup { group })?;
        if index + 1 < st.first_index {
            return Err(StorageError::Compacted {
                group,
                index,
                first_index: st.first_index,
            });
        }
        if index > st.last_index {
            return Err(StorageError::Unavailable {
                group,
                index,
                last_index: st.last_index,
            });
        }
        if let Some(t) = st.term_in_memory(index) {
            return Ok(t);
        }
        let txn = self
            .shared
            .db
            .begin_read()
            .map_err(|e| self.shared.redb_err("begin a read", e))?;
        drop(groups);
        let mut out = Vec::new();
        read_segments(
            &self.shared,
            &txn,
            group,
            index,
            index + 1,
            &mut Budget::new(0),
            &mut out,
        )?;
        Ok(out[0].term)
    }

    /// The first index of a group's log.
    pub fn first_index(&self, group: GroupId) -> Result<Index> {
        self.group(group)
            .map(|g| g.first_index)
            .ok_or(StorageError::UnknownGroup { group })
    }

    /// The last index of a group's log and its term.
    pub fn last_index_term(&self, group: GroupId) -> Result<(Index, Term)> {
        self.group(group)
            .map(|g| (g.last_index, g.last_term))
            .ok_or(StorageError::UnknownGroup { group })
    }

    /// A group's durable hard state.
    pub fn hard_state(&self, group: GroupId) -> Result<HardState> {
        self.group(group)
            .map(|g| g.hard_state)
            .ok_or(StorageError::UnknownGroup { group })
    }

    /// Opens the group's current snapshot for reading in chunks, or `None` without one.
    ///
    /// If a newer snapshot replaces it between this call and the open, the old file may already
    /// be gone ([`StorageError::MissingSnapshotFile`]): call again. Once open, the reader keeps
    /// working even if the file is removed.
    pub fn open_snapshot(&self, group: GroupId) -> Result<Option<SnapshotReader>> {
        let meta = match self.group(group) {
            None => return Err(StorageError::UnknownGroup { group }),
            Some(g) => match g.snapshot {
                None => return Ok(None),
                Some(m) => m,
            },
        };
        let path = snapshot::snapshot_path(&self.shared.config.data_dir, group, &meta);
        SnapshotReader::open(
            path,
            group,
            &meta,
            self.shared.config.snapshot_chunk_bytes_max,
        )
        .map(Some)
    }

    /// Reads the group's whole current snapshot (at most [`StoreConfig::snapshot_bytes_max`]).
    pub fn read_snapshot(&self, group: GroupId) -> Result<Option<Snapshot>> {
        let Some(reader) = self.open_snapshot(group)? else {
            return Ok(None);
        };
        if reader.data_len() > self.shared.config.snapshot_bytes_max {
            return Err(StorageError::TooLarge {
                what: "the snapshot",
                found: reader.data_len(),
                max: self.shared.config.snapshot_bytes_max,
            });
        }
        let meta = reader.meta().clone();
        let data = reader.read_to_end()?;
        Ok(Some(Snapshot { meta, data }))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A byte bound on a read that always admits the first entry.
pub(crate) struct Budget {
    left: usize,
    first: bool,
}

impl Budget {
    pub fn new(bytes_max: usize) -> Self {
        Budget {
            left: bytes_max,
            first: true,
        }
    }

    /// Whether `e` still fits; counts it if so.
    pub fn admit(&mut self, e: &Entry) -> bool {
        let size = e.size_bytes();
        if self.first || size <= self.left {
            self.first = false;
            self.left = self.left.saturating_sub(size);
            true
        } else {
            false
        }
    }
}

fn take_from_cache(
    st: &GroupState,
    lo: Index,
    hi: Index,
    budget: &mut Budget,
    out: &mut Vec<Entry>,
) {
    let Some(first) = st.cache_first() else {
        return;
    };
    debug_assert!(lo >= first);
    for e in st.cache.range((lo - first) as usize..(hi - first) as usize) {
        if !budget.admit(e) {
            break;
        }
        out.push(e.clone());
    }
}

/// Reads `[lo, hi)` of a group from the segments into `out`, within `budget`.
pub(crate) fn read_segments(
    shared: &Shared,
    txn: &redb::ReadTransaction,
    group: GroupId,
    lo: Index,
    hi: Index,
    budget: &mut Budget,
    out: &mut Vec<Entry>,
) -> Result<()> {
    let table = txn
        .open_table(SEGMENTS)
        .map_err(|e| shared.redb_err("open the segments table", e))?;
    let range = table
        .range((group.0, lo)..(group.0, GROUP_RECORD_INDEX))
        .map_err(|e| shared.redb_err("read segments", e))?;
    let mut next = lo;
    let mut full = false;
    'segments: for row in range {
        let (key, value) = row.map_err(|e| shared.redb_err("read segments", e))?;
        let seg: codec::SegmentRecord =
            codec::decode(value.value(), &shared.db_path, Some(group), || {
                format!(
                    "segment ({}, {}) of group {group}",
                    key.value().0,
                    key.value().1
                )
            })?;
        for e in seg.entries {
            if e.index < next {
                continue;
            }
            if e.index != next {
                return Err(StorageError::Corrupt {
                    path: shared.db_path.clone(),
                    group: Some(group),
                    what: format!("segments skip from index {next} to {}", e.index),
                });
            }
            if e.index >= hi {
                break 'segments;
            }
            if !budget.admit(&e) {
                full = true;
                break 'segments;
            }
            next += 1;
            out.push(e);
        }
    }
    if next < hi && !full {
        return Err(StorageError::Corrupt {
            path: shared.db_path.clone(),
            group: Some(group),
            what: format!("no segment holds index {next}"),
        });
    }
    Ok(())
}
