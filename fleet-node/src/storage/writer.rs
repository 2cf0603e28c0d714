//! The writer thread: group commit of the write-ahead records, checkpoints into the segments,
//! registry changes and the bounded erasure of removed groups.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use fleet_core::{Entry, GroupId, HardState, Index, Term};
use redb::{Durability, ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use serde::{Deserialize, Serialize};

use super::codec::{self, ReplicaRecord, ReplicaState, SegmentRecord, StoreMeta, WalOp, WalRecord};
use super::error::{Result, StorageError};
use super::journal::{JOURNAL_FILE_NAME, Journal, JournalStats};
use super::snapshot;
use super::state::GroupState;
use super::{
    Budget, GROUP_RECORD_INDEX, GroupDurable, GroupMap, META, META_KEY, REMOVING, REPLICAS,
    Request, SEGMENTS, Shared, WAL, WriteBatch, WriteOutcome, read_segments,
};

/// The writer's own bookkeeping; the group states it shares with readers live in [`Shared`].
pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    /// The next write-ahead sequence number.
    pub next_seq: u64,
    /// Encoded bytes of each write-ahead record still in the table.
    pub wal: BTreeMap<u64, u64>,
    pub wal_bytes: u64,
    /// Groups with write-ahead operations not yet checkpointed, by their oldest such record.
    pub unflushed: BTreeSet<(u64, GroupId)>,
    /// Removed groups whose segments are still being erased.
    pub removing: VecDeque<GroupId>,
    /// A request taken from the queue but left for the next commit.
    stash: Option<Request>,
    /// The commit journal, when batches are made durable through it.
    journal: Option<Journal>,
    /// The commit journal's counters as last published.
    journal_seen: JournalStats,
    /// Journaled batches whose redb writes wait for the next transaction (oldest first), with
    /// the bytes they hold: while more batches wait in the queue, their journal records go
    /// first, and one redb transaction takes several batches (see [`DEFERRED_BATCHES_MAX`]).
    deferred: Vec<(u64, JournalBody)>,
    deferred_bytes: usize,
    /// How many of `deferred` are counted in `Shared::batches_deferred` already.
    deferred_counted: usize,
}

/// At most this many journaled batches wait for their redb transaction. The writer takes a
/// batch's writes into redb once the queue is empty, or when the next transaction of any kind
/// begins (every transaction writes the waiting batches first, in order, so redb always holds
/// a prefix of the batches), or when this bound or [`DEFERRED_BYTES_MAX`] is reached.
pub(crate) const DEFERRED_BATCHES_MAX: usize = 4;
/// At most this many bytes of journaled batches' records wait for their redb transaction.
pub(crate) const DEFERRED_BYTES_MAX: usize = 8 << 20;

/// What a journaled batch commit wrote to redb, as its journal record holds it: recovery
/// writes exactly this again (`recovery::replay_journal`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct JournalBody {
    /// The `wal` table's record for the batch's sequence number.
    #[serde(with = "serde_bytes")]
    pub wal: Vec<u8>,
    /// New replicas registered by the batch.
    pub registrations: Vec<Registration>,
}

impl JournalBody {
    /// The bytes it holds (what it costs while it waits for redb).
    fn bytes(&self) -> usize {
        self.wal.len()
            + self
                .registrations
                .iter()
                .map(|r| r.replica.len() + r.record.len())
                .sum::<usize>()
    }
}

/// One new replica's rows: its registry entry and its group record, encoded.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Registration {
    pub group: u64,
    #[serde(with = "serde_bytes")]
    pub replica: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub record: Vec<u8>,
}

/// Writes registrations into `txn` (a batch commit, a create, or the journal's replay).
pub(crate) fn put_registrations(
    txn: &WriteTransaction,
    regs: &[Registration],
    db_path: &std::path::Path,
) -> Result<()> {
    let err = |op: &'static str| move |e: redb::Error| StorageError::redb(op, db_path, e);
    let mut replicas = txn
        .open_table(REPLICAS)
        .map_err(|e| err("open the replicas table")(e.into()))?;
    let mut records = txn
        .open_table(SEGMENTS)
        .map_err(|e| err("open the segments table")(e.into()))?;
    for r in regs {
        replicas
            .insert(r.group, r.replica.as_slice())
            .map_err(|e| err("write a replica record")(e.into()))?;
        records
            .insert((r.group, GROUP_RECORD_INDEX), r.record.as_slice())
            .map_err(|e| err("write a group record")(e.into()))?;
    }
    Ok(())
}

type WriteRequest = (WriteBatch, oneshot::Sender<Result<WriteOutcome>>);

/// A validated request: its operations, its `Ready` numbers, and its snapshots (whose files are
/// written before the commit).
type Validated = (Vec<WalOp>, Vec<u64>, Vec<(GroupId, fleet_core::Snapshot)>);

/// A request accepted into a commit: its completion, the range of the commit's operations that
/// are its own, and the `Ready` numbers of its group writes.
type Accepted = (
    oneshot::Sender<Result<WriteOutcome>>,
    std::ops::Range<usize>,
    Vec<u64>,
);

/// The rows that register `created` (the write-ahead table holds everything after
/// `flushed_seq` for them).
fn registrations(created: &GroupMap<GroupState>, flushed_seq: u64) -> Vec<Registration> {
    created
        .iter()
        .map(|(g, st)| Registration {
            group: g.0,
            replica: codec::encode(&st.replica),
            record: codec::encode(&st.to_record(flushed_seq)),
        })
        .collect()
}

/// A group's log tip as the writes queued in one commit leave it; validation runs against it.
#[derive(Clone, Debug)]
struct Tip {
    first_index: Index,
    last_index: Index,
    last_term: Term,
    hard_state: HardState,
    snapshot_index: Index,
    /// Whether a write earlier in the same commit changed it.
    touched: bool,
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        next_seq: u64,
        wal: BTreeMap<u64, u64>,
        unflushed: BTreeSet<(u64, GroupId)>,
        removing: VecDeque<GroupId>,
        journal: Option<Journal>,
    ) -> Self {
        let wal_bytes = wal.values().sum();
        let w = Writer {
            shared,
            next_seq,
            wal,
            wal_bytes,
            unflushed,
            removing,
            stash: None,
            journal,
            journal_seen: Default::default(),
            deferred: Vec::new(),
            deferred_bytes: 0,
            deferred_counted: 0,
        };
        w.publish_wal_stats();
        if let Some(j) = &w.journal {
            *w.shared.journal.lock().expect("journal lock") = Some(j.stats());
        }
        w
    }

    fn publish_wal_stats(&self) {
        self.shared
            .wal_records
            .store(self.wal.len() as u64, Ordering::Relaxed);
        self.shared
            .wal_bytes
            .store(self.wal_bytes, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::STORAGE_WAL_BYTES).set(self.wal_bytes as f64);
    }

    /// The writer loop: runs until `Shutdown` or until every `Store` handle is gone.
    pub fn run(mut self, rx: Receiver<Request>) {
        loop {
            let req = match self.stash.take() {
                Some(r) => r,
                None => match rx.recv_timeout(self.shared.config.idle_interval) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => {
                        self.background(true);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            match req {
                Request::Shutdown => {
                    // A clean close leaves nothing for the next open to replay.
                    let r = self.guard(|w| w.commit_durably());
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "storage: cannot make the database durable at shutdown");
                    }
                    return;
                }
                Request::Write { batch, done } => {
                    let reqs = self.gather((batch, done), &rx);
                    self.commit_writes(reqs);
                }
                Request::Create { groups, done } => {
                    let r = self.guard(|w| w.create(groups));
                    let _ = done.send(r);
                }
                Request::SetState { group, state, done } => {
                    let r = self.guard(|w| w.set_state(group, state));
                    let _ = done.send(r);
                }
                Request::Remove { group, done } => {
                    let r = self.guard(|w| w.remove(group));
                    let _ = done.send(r);
                }
                Request::Checkpoint { done } => {
                    let r = self.guard(|w| {
                        while !w.wal.is_empty() {
                            w.checkpoint_step(Durability::Immediate)?;
                        }
                        w.commit_durably()
                    });
                    let _ = done.send(r);
                }
            }
            if !self.deferred.is_empty() {
                // While more requests wait, their journal records go first; the batches'
                // redb writes follow together once the queue is empty (or the bound is hit).
                if self.stash.is_none()
                    && let Ok(next) = rx.try_recv()
                {
                    self.stash = Some(next);
                }
                if self.stash.is_none()
                    || self.deferred.len() >= DEFERRED_BATCHES_MAX
                    || self.deferred_bytes >= DEFERRED_BYTES_MAX
                {
                    self.write_deferred();
                } else {
                    let new = self.deferred.len() - self.deferred_counted;
                    self.deferred_counted = self.deferred.len();
                    self.shared
                        .batches_deferred
                        .fetch_add(new as u64, Ordering::Relaxed);
                    metrics::counter!(crate::metrics::STORAGE_BATCHES_DEFERRED_TOTAL)
                        .increment(new as u64);
                }
            }
            self.background(false);
        }
    }

    /// Runs `f` unless the store has failed; a fatal error from it fails the store.
    fn guard<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.shared.check_failed()?;
        f(self).map_err(|e| if e.is_fatal() { self.shared.fail(e) } else { e })
    }

    /// Bounded background work after a request (or when idle): one checkpoint step when the
    /// write-ahead table is past half its bound (as many as needed past the bound), one erasure
    /// step of a removed group.
    fn background(&mut self, idle: bool) {
        if self.shared.check_failed().is_err() {
            return;
        }
        let max = self.shared.config.wal_bytes_max;
        let r = self.guard(|w| {
            if idle && !w.wal.is_empty() {
                w.checkpoint_step(Durability::Immediate)?;
            } else if w.wal_bytes > max / 2 {
                w.checkpoint_step(Durability::None)?;
                while w.wal_bytes > max {
                    w.checkpoint_step(Durability::None)?;
                }
            }
            if !w.removing.is_empty() {
                w.erase_step(if idle {
                    Durability::Immediate
                } else {
                    Durability::None
                })?;
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::error!(error = %e, "storage background work failed");
        }
    }

    /// Takes more write requests from the queue, up to the commit bounds.
    fn gather(&mut self, first: WriteRequest, rx: &Receiver<Request>) -> Vec<WriteRequest> {
        let c = &self.shared.config;
        let mut entries = first.0.entry_count();
        let mut bytes = first.0.entry_bytes();
        let mut reqs = vec![first];
        while let Ok(req) = rx.try_recv() {
            match req {
                // A snapshot decides from the stored log whether to keep the suffix after it, so
                // it starts a commit of its own rather than follow other writes of the group.
                Request::Write { batch, done }
                    if entries + batch.entry_count() <= c.commit_entries_max
                        && bytes + batch.entry_bytes() <= c.commit_bytes_max
                        && batch.groups.iter().all(|g| g.snapshot.is_none()) =>
                {
                    entries += batch.entry_count();
                    bytes += batch.entry_bytes();
                    reqs.push((batch, done));
                }
                other => {
                    self.stash = Some(other);
                    break;
                }
            }
        }
        reqs
    }

    /// Validates, commits and applies a group of write requests in one transaction.
    fn commit_writes(&mut self, reqs: Vec<WriteRequest>) {
        if let Err(e) = self.shared.check_failed() {
            for (_, done) in reqs {
                let _ = done.send(Err(StorageError::Failed {
                    reason: match &e {
                        StorageError::Failed { reason } => reason.clone(),
                        other => other.to_string(),
                    },
                }));
            }
            return;
        }
        let started = Instant::now();
        let seq = self.next_seq;
        let mut tips: GroupMap<Tip> = GroupMap::default();
        let mut ops: Vec<WalOp> = Vec::new();
        let mut accepted: Vec<Accepted> = Vec::new();
        // Replicas registered by this commit, with their state as of before it.
        let mut created: GroupMap<GroupState> = GroupMap::default();
        let mut reqs = reqs.into_iter();
        while let Some((mut batch, done)) = reqs.next() {
            let creates: Vec<(GroupId, ReplicaRecord)> = std::mem::take(&mut batch.creates)
                .into_iter()
                .map(|(group, replica, kind)| (group, ReplicaRecord::pending(replica, kind)))
                .collect();
            let new: Vec<GroupId> = creates.iter().map(|(g, _)| *g).collect();
            let admitted = self
                .admit_creates(creates, seq, &mut created)
                .map_err(|e| if e.is_fatal() { self.shared.fail(e) } else { e });
            if let Err(e) = admitted {
                tracing::warn!(error = %e, "storage refused a write");
                let _ = done.send(Err(e));
                continue;
            }
            let validated = self.validate(batch, &mut tips, &created);
            if validated.is_err() {
                for g in &new {
                    created.remove(g);
                }
            }
            match validated {
                Ok((new_ops, numbers, snapshots)) => {
                    // Snapshot files are durable before the metadata that names them commits.
                    for (group, snap) in snapshots {
                        let r = snapshot::write_snapshot_file(
                            &self.shared.config.data_dir,
                            group,
                            &snap.meta,
                            &snap.data,
                        );
                        if let Err(e) = r {
                            let e = self.shared.fail(e);
                            let _ = done.send(Err(e));
                            self.fail_accepted(accepted);
                            for (_, done) in reqs {
                                let _ = done.send(Err(self.failed_error()));
                            }
                            return;
                        }
                    }
                    let start = ops.len();
                    ops.extend(new_ops);
                    accepted.push((done, start..ops.len(), numbers));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "storage refused a write");
                    let _ = done.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        if ops.is_empty() && created.is_empty() {
            // Nothing to persist (empty batches): durable as of the last commit.
            for (done, _, _) in accepted {
                let _ = done.send(Ok(WriteOutcome {
                    seq: self.next_seq - 1,
                    groups: Vec::new(),
                }));
            }
            return;
        }
        let record = WalRecord { ops };
        let bytes = codec::encode(&record);
        let bytes_len = bytes.len() as u64;
        let r = self.commit_wal(seq, bytes, &created);
        let deferred = match r {
            Ok(d) => d,
            Err(e) => {
                let e = self.shared.fail(e);
                let reason = e.to_string();
                let mut first = Some(e);
                for (done, _, _) in accepted {
                    let err = first.take().unwrap_or_else(|| StorageError::Failed {
                        reason: reason.clone(),
                    });
                    let _ = done.send(Err(err));
                }
                return;
            }
        };
        self.next_seq += 1;
        self.wal.insert(seq, bytes_len);
        self.wal_bytes += bytes_len;
        self.publish_wal_stats();
        let mut old_snapshots = Vec::new();
        let mut outcomes = Vec::with_capacity(accepted.len());
        {
            let mut groups = self.shared.groups.write().expect("groups lock");
            self.install_created(created, &mut groups);
            // What each operation made durable, as of that operation: a later batch of the same
            // commit may change the group again.
            let mut durable = Vec::with_capacity(record.ops.len());
            for op in record.ops {
                let st = groups.get_mut(&op.group).expect("validated group");
                if op.snapshot.is_some()
                    && let Some(old) = &st.snapshot
                {
                    old_snapshots.push((
                        op.group,
                        snapshot::snapshot_path(&self.shared.config.data_dir, op.group, old),
                    ));
                }
                if st.oldest_unflushed_seq.is_none() {
                    self.unflushed.insert((seq, op.group));
                }
                let group = op.group;
                st.apply(op, seq);
                durable.push(GroupDurable {
                    group,
                    ready_number: 0,
                    last_index: st.last_index,
                    last_term: st.last_term,
                    hard_state: st.hard_state,
                    snapshot_index: st.snapshot_index(),
                });
            }
            for (done, range, numbers) in accepted {
                let groups_durable = durable[range]
                    .iter()
                    .zip(numbers)
                    .map(|(d, ready_number)| GroupDurable {
                        ready_number,
                        ..d.clone()
                    })
                    .collect();
                outcomes.push((
                    done,
                    WriteOutcome {
                        seq,
                        groups: groups_durable,
                    },
                ));
            }
        }
        // Old snapshot files go only now that their replacement's metadata is durable, and
        // before the writes are reported durable, so a caller never sees both files.
        for (group, path) in old_snapshots {
            snapshot::remove_file_logged(group, &path);
        }
        for (done, outcome) in outcomes {
            let _ = done.send(Ok(outcome));
        }
        // The batch is durable in the journal: redb takes it with the next transaction, which
        // writes the waiting batches first (so a later durable redb commit includes it).
        if let Some(body) = deferred {
            self.deferred_bytes += body.bytes();
            self.deferred.push((seq, body));
        }
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("fleet_storage_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("fleet_storage_commits_total").increment(1);
        self.publish_journal_stats();
    }

    /// Adds what the commit journal did since the last call to the node's counters (nodes that
    /// share a process share the series, so these are increments, not absolute values).
    fn publish_journal_stats(&mut self) {
        let Some(now) = self.journal.as_ref().map(Journal::stats) else {
            return;
        };
        *self.shared.journal.lock().expect("journal lock") = Some(now);
        let last = std::mem::replace(&mut self.journal_seen, now);
        metrics::counter!(crate::metrics::STORAGE_JOURNAL_RESTARTS_TOTAL)
            .increment(now.restarts.saturating_sub(last.restarts));
        metrics::counter!(crate::metrics::STORAGE_JOURNAL_FULL_TOTAL)
            .increment(now.full.saturating_sub(last.full));
    }

    /// After a durable redb commit: nothing in the journal is needed any more.
    fn durable_commit_done(&mut self, full: bool) -> Result<()> {
        if let Some(j) = &mut self.journal {
            let path = self.shared.config.data_dir.join(JOURNAL_FILE_NAME);
            j.restart(full).map_err(|e| match e {
                super::journal::JournalError::Io { op, source } => {
                    StorageError::io(op, &path, source)
                }
                other => StorageError::Failed {
                    reason: other.to_string(),
                },
            })?;
        }
        Ok(())
    }

    /// Makes every commit so far durable in the database itself (an empty durable commit when
    /// the journal holds any), so the journal starts over.
    fn commit_durably(&mut self) -> Result<()> {
        if self.journal.as_ref().is_none_or(|j| j.since_restart() == 0) {
            return Ok(());
        }
        let txn = self.begin(Durability::Immediate)?;
        self.commit_txn(txn, "commit durably")?;
        self.durable_commit_done(false)
    }

    /// The error for requests refused because the store has failed.
    fn failed_error(&self) -> StorageError {
        let reason = self.shared.failed.lock().expect("failed lock").clone();
        StorageError::Failed {
            reason: reason.unwrap_or_default(),
        }
    }

    fn fail_accepted(&self, accepted: Vec<Accepted>) {
        for (done, _, _) in accepted {
            let _ = done.send(Err(self.failed_error()));
        }
    }

    /// Checks and prepares the registrations of one batch of a commit with sequence number
    /// `seq`: none of the groups may exist (nor be registered earlier in the commit). Their state
    /// says the write-ahead table holds everything from `seq` on for them.
    fn admit_creates(
        &mut self,
        creates: Vec<(GroupId, ReplicaRecord)>,
        seq: u64,
        created: &mut GroupMap<GroupState>,
    ) -> Result<()> {
        if creates.is_empty() {
            return Ok(());
        }
        self.check_new(creates.iter().map(|(g, _)| *g), created)?;
        // A previous life of a group may still be erasing: its segments share the keys. The
        // erasure is durable before the new life's registration (which the journal may replay
        // over the last durable commit, where the old segments would still be).
        while creates.iter().any(|(g, _)| self.removing.contains(g)) {
            self.erase_step(Durability::Immediate)?;
        }
        for (group, record) in creates {
            created.insert(group, GroupState::new(record, seq - 1));
        }
        Ok(())
    }

    /// Installs registered replicas' states once their commit is durable.
    fn install_created(&self, created: GroupMap<GroupState>, groups: &mut GroupMap<GroupState>) {
        for (group, state) in created {
            tracing::debug!(group = group.0, replica = %state.replica.replica, kind = %state.replica.kind, "storage: group created");
            groups.insert(group, state);
        }
    }

    /// Makes one batch durable: its write-ahead record and the registrations of the replicas it
    /// creates. Through the journal when its record fits: the record is written and synced, and
    /// the same writes go into redb afterwards, without a sync, once the callers have heard (the
    /// returned body, for [`Writer::write_redb`]); the redb transaction is CPU work that need not
    /// delay them, since recovery writes every journal record after redb's durable point again.
    /// Otherwise (no journal, or a record that does not fit) a durable redb commit, and the
    /// journal starts over.
    fn commit_wal(
        &mut self,
        seq: u64,
        bytes: Vec<u8>,
        created: &GroupMap<GroupState>,
    ) -> Result<Option<JournalBody>> {
        let body = JournalBody {
            wal: bytes,
            registrations: registrations(created, seq - 1),
        };
        if let Some(j) = &mut self.journal {
            let record = postcard::to_allocvec(&body).expect("a journal record encodes");
            if j.fits(record.len()) {
                j.append(seq, &record).map_err(|e| {
                    let path = self.shared.config.data_dir.join(JOURNAL_FILE_NAME);
                    StorageError::io("write the commit journal", &path, e)
                })?;
                return Ok(Some(body));
            }
        }
        self.write_redb(seq, &body, Durability::Immediate)?;
        if self.journal.is_some() {
            self.durable_commit_done(true)?;
        }
        Ok(None)
    }

    /// Writes a batch's `wal` record and replica registrations in one redb transaction (after
    /// the waiting journaled batches, which it takes along).
    fn write_redb(&mut self, seq: u64, body: &JournalBody, durability: Durability) -> Result<()> {
        let txn = self.begin(durability)?;
        self.put_batch(&txn, seq, body)?;
        self.commit_txn(txn, "commit a batch")
    }

    /// Writes one batch's `wal` record and replica registrations into `txn`.
    fn put_batch(&self, txn: &WriteTransaction, seq: u64, body: &JournalBody) -> Result<()> {
        {
            let mut wal = txn
                .open_table(WAL)
                .map_err(|e| self.shared.redb_err("open the wal table", e))?;
            wal.insert(seq, body.wal.as_slice())
                .map_err(|e| self.shared.redb_err("write a wal record", e))?;
        }
        if !body.registrations.is_empty() {
            put_registrations(txn, &body.registrations, &self.shared.db_path)?;
        }
        Ok(())
    }

    /// Takes the waiting journaled batches into redb now, in one transaction without a sync. A
    /// failure fails the store: the journal still holds the batches, and the next open writes
    /// them again.
    fn write_deferred(&mut self) {
        let r = self.guard(|w| {
            let txn = w.begin(Durability::None)?;
            w.commit_txn(txn, "commit batches")
        });
        if let Err(e) = r {
            self.shared.fail(e);
        }
    }

    /// Commits `txn`, which [`Writer::begin`] gave the waiting journaled batches: they are in
    /// redb now, and no later transaction writes them again.
    fn commit_txn(&mut self, txn: WriteTransaction, op: &'static str) -> Result<()> {
        txn.commit().map_err(|e| self.shared.redb_err(op, e))?;
        self.deferred.clear();
        self.deferred_bytes = 0;
        self.deferred_counted = 0;
        Ok(())
    }

    /// Refuses to register a group that exists, is registered earlier in the same commit
    /// (`pending`), or appears twice in `new`.
    fn check_new(
        &self,
        new: impl Iterator<Item = GroupId>,
        pending: &GroupMap<GroupState>,
    ) -> Result<()> {
        let groups = self.shared.groups.read().expect("groups lock");
        let mut seen = HashSet::new();
        for group in new {
            if groups.contains_key(&group) || pending.contains_key(&group) || !seen.insert(group) {
                return Err(StorageError::GroupExists { group });
            }
        }
        Ok(())
    }

    fn begin(&self, durability: Durability) -> Result<WriteTransaction> {
        let mut txn = self
            .shared
            .db
            .begin_write()
            .map_err(|e| self.shared.redb_err("begin a write", e))?;
        txn.set_durability(durability)
            .map_err(|e| self.shared.redb_err("set durability", e))?;
        // Journaled batches still waiting for redb come first, in order, in every transaction:
        // redb then always holds a prefix of the batches, and a durable commit makes all of
        // them durable before the journal starts over. They stay listed until a transaction
        // that holds them commits (`commit_txn`), so an aborted one loses nothing.
        for (seq, body) in &self.deferred {
            self.put_batch(&txn, *seq, body)?;
        }
        Ok(txn)
    }

    /// Checks a request's writes against the log tips (as earlier requests of the same commit
    /// leave them) and turns them into write-ahead operations, moving the entries out of the
    /// batch. Returns the operations, the `Ready` numbers, and the snapshots whose files must be
    /// written first. On error the tips are as before.
    fn validate(
        &self,
        batch: WriteBatch,
        tips: &mut GroupMap<Tip>,
        created: &GroupMap<GroupState>,
    ) -> Result<Validated> {
        let groups = self.shared.groups.read().expect("groups lock");
        // How to undo this request's changes to `tips` if one of its writes is refused.
        let mut undo: Vec<(GroupId, Option<Tip>)> = Vec::new();
        let r = Self::validate_writes(&self.shared, &groups, created, batch, tips, &mut undo);
        if r.is_err() {
            for (g, old) in undo.into_iter().rev() {
                match old {
                    Some(t) => tips.insert(g, t),
                    None => tips.remove(&g),
                };
            }
        }
        r
    }

    fn validate_writes(
        shared: &Shared,
        groups: &GroupMap<GroupState>,
        created: &GroupMap<GroupState>,
        batch: WriteBatch,
        tips: &mut GroupMap<Tip>,
        undo: &mut Vec<(GroupId, Option<Tip>)>,
    ) -> Result<Validated> {
        let mut ops = Vec::with_capacity(batch.groups.len());
        let mut numbers = Vec::with_capacity(batch.groups.len());
        let mut snapshots = Vec::new();
        for gw in batch.groups {
            let g = gw.group;
            let invalid = |reason: String| StorageError::InvalidWrite { group: g, reason };
            let tip = match tips.entry(g) {
                std::collections::hash_map::Entry::Occupied(o) => {
                    undo.push((g, Some(o.get().clone())));
                    o.into_mut()
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    let st = groups
                        .get(&g)
                        .or_else(|| created.get(&g))
                        .ok_or(StorageError::UnknownGroup { group: g })?;
                    undo.push((g, None));
                    v.insert(Tip {
                        first_index: st.first_index,
                        last_index: st.last_index,
                        last_term: st.last_term,
                        hard_state: st.hard_state,
                        snapshot_index: st.snapshot_index(),
                        touched: false,
                    })
                }
            };
            let mut discard_log = false;
            if let Some(snap) = &gw.snapshot {
                let m = &snap.meta;
                if m.index <= tip.snapshot_index {
                    return Err(invalid(format!(
                        "snapshot at index {} is not newer than the stored snapshot at {}",
                        m.index, tip.snapshot_index
                    )));
                }
                let stored_term = if m.index > tip.last_index {
                    None
                } else if m.index == tip.last_index {
                    Some(tip.last_term)
                } else if tip.touched {
                    return Err(invalid(
                        "a snapshot must come before any other write of its group in a batch"
                            .into(),
                    ));
                } else {
                    Some(Self::term_of(shared, groups, g, m.index)?)
                };
                discard_log = stored_term != Some(m.term);
                if discard_log && tip.hard_state.commit > m.index && tip.last_index > m.index {
                    return Err(invalid(format!(
                        "snapshot at index {} term {} conflicts with the log, whose entries up to the commit index {} are committed",
                        m.index, m.term, tip.hard_state.commit
                    )));
                }
                if discard_log {
                    tip.last_index = m.index;
                    tip.last_term = m.term;
                }
                tip.first_index = m.index + 1;
                tip.snapshot_index = m.index;
            }
            if let Some(first) = gw.entries.first() {
                for (i, e) in gw.entries.iter().enumerate() {
                    if e.index != first.index + i as u64 {
                        return Err(invalid(format!(
                            "entries are not consecutive at index {}",
                            e.index
                        )));
                    }
                }
                if gw
                    .entries
                    .last()
                    .is_some_and(|e| e.index == GROUP_RECORD_INDEX)
                {
                    return Err(invalid("entry index out of range".into()));
                }
                if first.index < tip.first_index {
                    return Err(invalid(format!(
                        "append at index {} below the first index {} (compacted)",
                        first.index, tip.first_index
                    )));
                }
                if first.index > tip.last_index + 1 {
                    return Err(invalid(format!(
                        "append at index {} leaves a gap after the last index {}",
                        first.index, tip.last_index
                    )));
                }
                if first.index <= tip.last_index && first.index <= tip.hard_state.commit {
                    return Err(invalid(format!(
                        "append at index {} would replace committed entries (commit index {})",
                        first.index, tip.hard_state.commit
                    )));
                }
                let last = gw.entries.last().expect("non-empty");
                tip.last_index = last.index;
                tip.last_term = last.term;
            }
            if let Some(hs) = gw.hard_state {
                let old = tip.hard_state;
                if hs.term < old.term {
                    return Err(invalid(format!(
                        "term goes back from {} to {}",
                        old.term, hs.term
                    )));
                }
                if hs.term == old.term && old.vote.is_some() && hs.vote != old.vote {
                    return Err(invalid(format!("vote changed within term {}", hs.term)));
                }
                if hs.commit < old.commit {
                    return Err(invalid(format!(
                        "commit goes back from {} to {}",
                        old.commit, hs.commit
                    )));
                }
                if hs.commit > tip.last_index.max(tip.snapshot_index) {
                    return Err(invalid(format!(
                        "commit {} is past the last index {}",
                        hs.commit, tip.last_index
                    )));
                }
                tip.hard_state = hs;
            }
            tip.touched = true;
            numbers.push(gw.ready_number);
            let snapshot_meta = gw.snapshot.as_ref().map(|s| s.meta.clone());
            if let Some(snap) = gw.snapshot {
                snapshots.push((g, snap));
            }
            ops.push(WalOp {
                group: g,
                snapshot: snapshot_meta,
                discard_log,
                entries: gw.entries,
                hard_state: gw.hard_state,
            });
        }
        Ok((ops, numbers, snapshots))
    }

    fn term_of(
        shared: &Shared,
        groups: &GroupMap<GroupState>,
        g: GroupId,
        index: Index,
    ) -> Result<Term> {
        let st = &groups[&g];
        if let Some(t) = st.term_in_memory(index) {
            return Ok(t);
        }
        let txn = shared
            .db
            .begin_read()
            .map_err(|e| shared.redb_err("begin a read", e))?;
        let mut out: Vec<Entry> = Vec::new();
        read_segments(
            shared,
            &txn,
            g,
            index,
            index + 1,
            &mut Budget::new(0),
            &mut out,
        )?;
        Ok(out[0].term)
    }

    /// Moves the writes of the groups with the oldest unflushed operations into the segments and
    /// their group records, then deletes the write-ahead records nobody needs any more.
    pub fn checkpoint_step(&mut self, durability: Durability) -> Result<()> {
        let started = Instant::now();
        let c = &self.shared.config;
        let flushed_seq = self.next_seq - 1;
        let mut picked: Vec<(u64, GroupId)> = Vec::new();
        {
            let groups = self.shared.groups.read().expect("groups lock");
            let mut bytes = 0usize;
            for &(seq, g) in &self.unflushed {
                if picked.len() >= c.checkpoint_groups_per_step_max
                    || (bytes >= c.checkpoint_bytes_per_step_max && !picked.is_empty())
                {
                    break;
                }
                bytes += groups[&g].cache_bytes;
                picked.push((seq, g));
            }
        }
        let new_min = self
            .unflushed
            .iter()
            .nth(picked.len())
            .map_or(self.next_seq, |&(seq, _)| seq);
        let txn = self.begin(durability)?;
        {
            let groups = self.shared.groups.read().expect("groups lock");
            let mut segments = txn
                .open_table(SEGMENTS)
                .map_err(|e| self.shared.redb_err("open the segments table", e))?;
            for &(_, g) in &picked {
                let st = &groups[&g];
                self.flush_group(&mut segments, g, st)?;
                segments
                    .insert(
                        (g.0, GROUP_RECORD_INDEX),
                        codec::encode(&st.to_record(flushed_seq)).as_slice(),
                    )
                    .map_err(|e| self.shared.redb_err("write a group record", e))?;
            }
            let mut wal = txn
                .open_table(WAL)
                .map_err(|e| self.shared.redb_err("open the wal table", e))?;
            wal.retain_in(..new_min, |_, _| false)
                .map_err(|e| self.shared.redb_err("delete wal records", e))?;
            let mut meta = txn
                .open_table(META)
                .map_err(|e| self.shared.redb_err("open the meta table", e))?;
            meta.insert(
                META_KEY,
                codec::encode(&StoreMeta {
                    next_seq: self.next_seq,
                })
                .as_slice(),
            )
            .map_err(|e| self.shared.redb_err("write the store record", e))?;
        }
        self.commit_txn(txn, "commit a checkpoint")?;
        if matches!(durability, Durability::Immediate) {
            self.durable_commit_done(false)?;
        }
        {
            let mut groups = self.shared.groups.write().expect("groups lock");
            for &(seq, g) in &picked {
                let st = groups.get_mut(&g).expect("picked group");
                st.checkpointed(flushed_seq, self.shared.config.cache_flushed_bytes_max);
                self.unflushed.remove(&(seq, g));
            }
        }
        let kept = self.wal.split_off(&new_min);
        let dropped: u64 = self.wal.values().sum();
        let records = self.wal.len();
        self.wal = kept;
        self.wal_bytes -= dropped;
        self.publish_wal_stats();
        self.shared.checkpoints.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            groups = picked.len(),
            wal_records_dropped = records,
            wal_bytes_dropped = dropped,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "storage checkpoint step"
        );
        Ok(())
    }

    /// Writes one group's unflushed entries as segments, deleting the stale suffix and the
    /// compacted prefix of its segments first.
    fn flush_group(
        &self,
        segments: &mut redb::Table<(u64, u64), &[u8]>,
        g: GroupId,
        st: &GroupState,
    ) -> Result<()> {
        let err = |op: &'static str| move |e: redb::StorageError| self.shared.redb_err(op, e);
        if let Some(from) = st.segments_stale_from {
            // The first segment reaching `from` may start before it: keep its head.
            let head = match segments
                .range((g.0, from)..(g.0, GROUP_RECORD_INDEX))
                .map_err(err("read segments"))?
                .next()
            {
                Some(row) => {
                    let (k, v) = row.map_err(err("read segments"))?;
                    let seg: SegmentRecord =
                        codec::decode(v.value(), &self.shared.db_path, Some(g), || {
                            format!("segment ({}, {}) of group {g}", g.0, k.value().1)
                        })?;
                    seg.entries
                        .into_iter()
                        .filter(|e| e.index < from)
                        .collect::<Vec<_>>()
                }
                None => Vec::new(),
            };
            segments
                .retain_in((g.0, from)..(g.0, GROUP_RECORD_INDEX), |_, _| false)
                .map_err(err("delete stale segments"))?;
            if let Some(last) = head.last() {
                let key = (g.0, last.index);
                segments
                    .insert(
                        key,
                        codec::encode(&SegmentRecord { entries: head }).as_slice(),
                    )
                    .map_err(err("write a segment"))?;
            }
        }
        segments
            .retain_in((g.0, 0)..(g.0, st.first_index), |_, _| false)
            .map_err(err("delete compacted segments"))?;
        let max = self.shared.config.segment_bytes_max;
        let mut run: Vec<Entry> = Vec::new();
        let mut run_bytes = 0;
        let mut entries = st.unflushed_entries().peekable();
        while let Some(e) = entries.next() {
            run_bytes += e.size_bytes();
            run.push(e.clone());
            if run_bytes >= max || entries.peek().is_none() {
                let key = (g.0, run.last().expect("non-empty").index);
                let rec = SegmentRecord {
                    entries: std::mem::take(&mut run),
                };
                segments
                    .insert(key, codec::encode(&rec).as_slice())
                    .map_err(err("write a segment"))?;
                run_bytes = 0;
            }
        }
        Ok(())
    }

    fn create(&mut self, new: Vec<(GroupId, ReplicaRecord)>) -> Result<()> {
        let seq = self.next_seq;
        let mut created = GroupMap::default();
        self.admit_creates(new, seq, &mut created)?;
        let txn = self.begin(Durability::Immediate)?;
        put_registrations(
            &txn,
            &registrations(&created, seq - 1),
            &self.shared.db_path,
        )?;
        self.commit_txn(txn, "commit new groups")?;
        self.durable_commit_done(false)?;
        let mut groups = self.shared.groups.write().expect("groups lock");
        self.install_created(created, &mut groups);
        Ok(())
    }

    fn set_state(&mut self, group: GroupId, state: ReplicaState) -> Result<()> {
        let mut record = match self.shared.groups.read().expect("groups lock").get(&group) {
            Some(st) => st.replica.clone(),
            None => return Err(StorageError::UnknownGroup { group }),
        };
        record.state = state;
        let txn = self.begin(Durability::Immediate)?;
        {
            let mut replicas = txn
                .open_table(REPLICAS)
                .map_err(|e| self.shared.redb_err("open the replicas table", e))?;
            replicas
                .insert(group.0, codec::encode(&record).as_slice())
                .map_err(|e| self.shared.redb_err("write a replica record", e))?;
        }
        self.commit_txn(txn, "commit a replica state")?;
        self.durable_commit_done(false)?;
        if let Some(st) = self
            .shared
            .groups
            .write()
            .expect("groups lock")
            .get_mut(&group)
        {
            st.replica = record;
        }
        tracing::info!(group = group.0, ?state, "storage: replica state changed");
        Ok(())
    }

    fn remove(&mut self, group: GroupId) -> Result<()> {
        let oldest = match self.shared.groups.read().expect("groups lock").get(&group) {
            Some(st) => st.oldest_unflushed_seq,
            None => return Err(StorageError::UnknownGroup { group }),
        };
        let txn = self.begin(Durability::Immediate)?;
        {
            let mut replicas = txn
                .open_table(REPLICAS)
                .map_err(|e| self.shared.redb_err("open the replicas table", e))?;
            replicas
                .remove(group.0)
                .map_err(|e| self.shared.redb_err("remove a replica record", e))?;
            let mut records = txn
                .open_table(SEGMENTS)
                .map_err(|e| self.shared.redb_err("open the segments table", e))?;
            records
                .remove((group.0, GROUP_RECORD_INDEX))
                .map_err(|e| self.shared.redb_err("remove a group record", e))?;
            let mut removing = txn
                .open_table(REMOVING)
                .map_err(|e| self.shared.redb_err("open the removing table", e))?;
            removing
                .insert(group.0, ())
                .map_err(|e| self.shared.redb_err("record a removal", e))?;
        }
        self.commit_txn(txn, "commit a group removal")?;
        self.durable_commit_done(false)?;
        self.shared
            .groups
            .write()
            .expect("groups lock")
            .remove(&group);
        if let Some(seq) = oldest {
            self.unflushed.remove(&(seq, group));
        }
        self.removing.push_back(group);
        let dir = snapshot::group_dir(&self.shared.config.data_dir, group);
        if dir.exists() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    if let Err(e) =
                        snapshot::sync_dir(&snapshot::snapshots_dir(&self.shared.config.data_dir))
                    {
                        tracing::warn!(group = group.0, error = %e, "cannot fsync the snapshots directory");
                    }
                }
                Err(e) => {
                    tracing::warn!(group = group.0, error = %e, "cannot remove snapshot files; the next open removes them")
                }
            }
        }
        tracing::info!(
            group = group.0,
            "storage: group removed; erasing its log in the background"
        );
        Ok(())
    }

    /// Deletes at most `remove_rows_per_step_max` segments of the first removed group.
    pub fn erase_step(&mut self, durability: Durability) -> Result<()> {
        let Some(&group) = self.removing.front() else {
            return Ok(());
        };
        let max = self.shared.config.remove_rows_per_step_max;
        let txn = self.begin(durability)?;
        let done;
        {
            let mut segments = txn
                .open_table(SEGMENTS)
                .map_err(|e| self.shared.redb_err("open the segments table", e))?;
            let keys: Vec<(u64, u64)> = segments
                .range((group.0, 0)..=(group.0, u64::MAX))
                .map_err(|e| self.shared.redb_err("read segments", e))?
                .take(max)
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| self.shared.redb_err("read segments", e))?;
            for k in &keys {
                segments
                    .remove(*k)
                    .map_err(|e| self.shared.redb_err("delete a segment", e))?;
            }
            done = keys.len() < max;
            if done {
                let mut removing = txn
                    .open_table(REMOVING)
                    .map_err(|e| self.shared.redb_err("open the removing table", e))?;
                removing
                    .remove(group.0)
                    .map_err(|e| self.shared.redb_err("finish a removal", e))?;
            }
        }
        self.commit_txn(txn, "commit an erasure step")?;
        if matches!(durability, Durability::Immediate) {
            self.durable_commit_done(false)?;
        }
        if done {
            self.removing.pop_front();
            tracing::debug!(group = group.0, "storage: removed group erased");
        }
        Ok(())
    }
}
