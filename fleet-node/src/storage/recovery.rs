//! Opening a store: recovery of every hosted group and the checks that refuse a damaged store.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fleet_core::{GroupId, HardState, Index, SnapshotMeta, Term};
use redb::{Builder, Database, DatabaseError, ReadableDatabase, ReadableTable};

use super::codec::{self, GroupRecord, ReplicaRecord, SegmentRecord, StoreMeta, WalRecord};
use super::error::{Result, StorageError};
use super::journal::{JOURNAL_FILE_NAME, Journal, JournalError, JournalReport};
use super::snapshot::{self, SnapshotReader};
use super::state::GroupState;
use super::writer::{JournalBody, Writer, put_registrations};
use super::{
    GROUP_RECORD_INDEX, GroupMap, META, META_KEY, REMOVING, REPLICAS, SEGMENTS, Shared, Store,
    StoreConfig, WAL,
};

/// What recovery found for one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredGroup {
    /// The group.
    pub group: GroupId,
    /// Its registry entry.
    pub replica: ReplicaRecord,
    /// The durable hard state.
    pub hard_state: HardState,
    /// The snapshot the log starts after, if any.
    pub snapshot: Option<SnapshotMeta>,
    /// The first index of the log.
    pub first_index: Index,
    /// The last index of the log.
    pub last_index: Index,
    /// Its term.
    pub last_term: Term,
}

/// What [`Store::open`] found.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// Every hosted group, sorted by id.
    pub groups: Vec<RecoveredGroup>,
    /// Write-ahead records replayed.
    pub wal_records: u64,
    /// Their bytes.
    pub wal_bytes: u64,
    /// Segments read by the log check ([`StoreConfig::verify_log_on_open`]).
    pub segments_verified: u64,
    /// Snapshot files checked.
    pub snapshots_verified: u64,
    /// Removed groups whose erasure resumes in the background.
    pub removals_pending: Vec<GroupId>,
    /// Leftover files removed: temporary snapshot files and snapshots no metadata names.
    pub orphan_files_removed: Vec<PathBuf>,
    /// What the commit journal's open did (`None` without a journal).
    pub journal: Option<JournalReport>,
    /// The time the whole open took (the journal's replay not included).
    pub elapsed: Duration,
}

pub(crate) fn open(
    config: StoreConfig,
    db_path: PathBuf,
    make_db: impl FnOnce(&Builder) -> std::result::Result<Database, DatabaseError>,
    log: Option<Box<dyn redb::StorageBackend>>,
) -> Result<(Store, RecoveryReport)> {
    let started = Instant::now();
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(snapshot::snapshots_dir(&data_dir))
        .map_err(|e| StorageError::io("create the data directory", &data_dir, e))?;
    let mut builder = Builder::new();
    builder
        .set_cache_size(config.redb_cache_bytes)
        .set_check_integrity_on_open(config.check_integrity_on_open);
    let db = make_db(&builder).map_err(|e| StorageError::redb("open the database", &db_path, e))?;
    let err = |op: &'static str| {
        let p = db_path.clone();
        move |e: redb::Error| StorageError::redb(op, &p, e)
    };
    let new_db = init_tables(&db, &db_path)?;
    let (journal, journal_report) = match log {
        Some(log) => {
            let (j, r) = replay_journal(&db, &db_path, &config, log, new_db)?;
            (Some(j), Some(r))
        }
        None => (None, None),
    };

    let txn = db.begin_read().map_err(|e| err("begin a read")(e.into()))?;
    let meta = read_store_meta(&txn, &db_path)?;
    let mut states = load_groups(&txn, &db_path)?;
    let mut next_seq = meta.next_seq.max(
        states
            .values()
            .map(|s| s.flushed_seq + 1)
            .max()
            .unwrap_or(1),
    );

    // Replay the write-ahead table.
    let mut wal = BTreeMap::new();
    let mut unflushed = BTreeSet::new();
    {
        let t = txn
            .open_table(WAL)
            .map_err(|e| err("open the wal table")(e.into()))?;
        for row in t.iter().map_err(|e| err("read the wal")(e.into()))? {
            let (k, v) = row.map_err(|e| err("read the wal")(e.into()))?;
            let seq = k.value();
            let rec: WalRecord =
                codec::decode(v.value(), &db_path, None, || format!("wal record {seq}"))?;
            wal.insert(seq, v.value().len() as u64);
            next_seq = next_seq.max(seq + 1);
            for op in rec.ops {
                let Some(st) = states.get_mut(&op.group) else {
                    continue; // a removed group (or an earlier life of it)
                };
                if seq <= st.flushed_seq {
                    continue;
                }
                check_replayable(&db_path, seq, &op, st)?;
                if st.oldest_unflushed_seq.is_none() {
                    unflushed.insert((seq, op.group));
                }
                st.apply(op, seq);
            }
        }
    }
    let removing: VecDeque<GroupId> = {
        let t = txn
            .open_table(REMOVING)
            .map_err(|e| err("open the removing table")(e.into()))?;
        let mut v = VecDeque::new();
        for row in t.iter().map_err(|e| err("read removals")(e.into()))? {
            v.push_back(GroupId(
                row.map_err(|e| err("read removals")(e.into()))?.0.value(),
            ));
        }
        v
    };
    let mut report = RecoveryReport {
        wal_records: wal.len() as u64,
        wal_bytes: wal.values().sum(),
        removals_pending: removing.iter().copied().collect(),
        ..RecoveryReport::default()
    };
    if config.verify_log_on_open {
        for (g, st) in &states {
            report.segments_verified += verify_segments(&txn, &db_path, *g, st)?;
        }
    }
    drop(txn);
    for (g, st) in &states {
        if let Some(meta) = &st.snapshot {
            let path = snapshot::snapshot_path(&data_dir, *g, meta);
            let reader = SnapshotReader::open(path, *g, meta, config.snapshot_chunk_bytes_max)?;
            if config.verify_snapshots_on_open {
                reader.verify()?;
            }
            report.snapshots_verified += 1;
        }
    }
    report.orphan_files_removed = remove_orphans(&data_dir, &states)?;

    let mut groups: Vec<RecoveredGroup> = states
        .iter()
        .map(|(g, st)| RecoveredGroup {
            group: *g,
            replica: st.replica.clone(),
            hard_state: st.hard_state,
            snapshot: st.snapshot.clone(),
            first_index: st.first_index,
            last_index: st.last_index,
            last_term: st.last_term,
        })
        .collect();
    groups.sort_by_key(|g| g.group);
    report.groups = groups;
    for st in states.values_mut() {
        st.replica.kind.shrink_to_fit();
    }
    let shared = Arc::new(Shared {
        config,
        db,
        db_path,
        groups: RwLock::new(states),
        failed: Mutex::new(None),
        journal: Mutex::new(None),
        wal_records: AtomicU64::new(0),
        wal_bytes: AtomicU64::new(0),
        commits: AtomicU64::new(0),
        checkpoints: AtomicU64::new(0),
        batches_deferred: AtomicU64::new(0),
    });
    report.journal = journal_report;
    let writer = Writer::new(shared.clone(), next_seq, wal, unflushed, removing, journal);
    report.elapsed = started.elapsed();
    tracing::info!(
        groups = report.groups.len(),
        wal_records = report.wal_records,
        wal_bytes = report.wal_bytes,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "storage recovered"
    );
    Ok((Store::start(shared, writer), report))
}

/// The store record (the next batch number as of the last checkpoint).
fn read_store_meta(txn: &redb::ReadTransaction, db_path: &Path) -> Result<StoreMeta> {
    let err = |op: &'static str| move |e: redb::Error| StorageError::redb(op, db_path, e);
    let t = txn
        .open_table(META)
        .map_err(|e| err("open the meta table")(e.into()))?;
    let v = t
        .get(META_KEY)
        .map_err(|e| err("read the store record")(e.into()))?
        .ok_or_else(|| StorageError::Corrupt {
            path: db_path.to_path_buf(),
            group: None,
            what: "the store record is missing".into(),
        })?;
    codec::decode(v.value(), db_path, None, || "the store record".into())
}

/// The sequence number of the last batch the database holds durably: what redb returns to
/// after a crash, so the journal's later records are the ones to apply again. The store record
/// and the `wal` table's last key bound it: a group record's `flushed_seq` is written either by a
/// checkpoint, which writes the store record in the same transaction, or by a registration, in
/// the transaction of a batch already numbered (its `wal` record, or a checkpoint's store record
/// after it), so the group records need not be read here.
fn durable_seq(db: &Database, db_path: &Path) -> Result<u64> {
    let err = |op: &'static str| move |e: redb::Error| StorageError::redb(op, db_path, e);
    let txn = db.begin_read().map_err(|e| err("begin a read")(e.into()))?;
    let meta = read_store_meta(&txn, db_path)?;
    let wal = txn
        .open_table(WAL)
        .map_err(|e| err("open the wal table")(e.into()))?;
    let last = wal.last().map_err(|e| err("read the wal")(e.into()))?;
    Ok(last
        .map_or(0, |(k, _)| k.value())
        .max(meta.next_seq.saturating_sub(1)))
}

/// Opens the commit journal and applies its records after the database's durable point, in one
/// durable commit; the journal then starts over.
fn replay_journal(
    db: &Database,
    db_path: &Path,
    config: &StoreConfig,
    log: Box<dyn redb::StorageBackend>,
    new_db: bool,
) -> Result<(Journal, JournalReport)> {
    let log_path = config.data_dir.join(JOURNAL_FILE_NAME);
    // The store record is durable before the journal is first written, so a database created by
    // this open never wrote the journal's records: they belong to another database (one deleted
    // or replaced beside its journal), and writing them into this one would mix two histories.
    let foreign = |what: String| StorageError::Corrupt {
        path: log_path.clone(),
        group: None,
        what: format!(
            "the database {} is new, but the commit journal {what}: it belongs to another \
             database (was the database file deleted or replaced?). Put that database back, or \
             move the journal away to start this one empty",
            db_path.display()
        ),
    };
    let journal_err = |e: JournalError| match e {
        JournalError::Io { op, source } => StorageError::io(op, &log_path, source),
        JournalError::Corrupt { what } => StorageError::Corrupt {
            path: log_path.clone(),
            group: None,
            what,
        },
        JournalError::UnknownFormatVersion { found, supported } => {
            StorageError::UnknownFormatVersion {
                path: log_path.clone(),
                what: "the commit journal".into(),
                found,
                supported,
            }
        }
    };
    let durable = durable_seq(db, db_path)?;
    let (mut journal, records, report) = match Journal::open(log, config.journal_bytes_max, durable)
    {
        Err(JournalError::Corrupt { what }) if new_db => {
            return Err(foreign(format!("cannot be read back ({what})")));
        }
        r => r.map_err(journal_err)?,
    };
    if new_db && let (Some(first), Some(last)) = (records.first(), records.last()) {
        return Err(foreign(format!(
            "holds batches {} to {}",
            first.seq, last.seq
        )));
    }
    if !records.is_empty() {
        let err = |op: &'static str| move |e: redb::Error| StorageError::redb(op, db_path, e);
        let txn = db
            .begin_write()
            .map_err(|e| err("begin a write")(e.into()))?;
        {
            let mut wal = txn
                .open_table(WAL)
                .map_err(|e| err("open the wal table")(e.into()))?;
            for r in &records {
                let body: JournalBody =
                    postcard::from_bytes(&r.body).map_err(|e| StorageError::Corrupt {
                        path: log_path.clone(),
                        group: None,
                        what: format!("journal record {} does not decode: {e}", r.seq),
                    })?;
                wal.insert(r.seq, body.wal.as_slice())
                    .map_err(|e| err("write a wal record")(e.into()))?;
                put_registrations(&txn, &body.registrations, db_path)?;
            }
        }
        txn.commit()
            .map_err(|e| err("commit the journal's records")(e.into()))?;
        tracing::info!(
            records = report.records_replayed,
            bytes = report.bytes_replayed,
            durable_seq = report.durable_seq,
            "storage: commit journal replayed into the database"
        );
    }
    journal.restart(false).map_err(journal_err)?;
    // The journal file's directory entry is durable before any record counts on it.
    snapshot::sync_dir(&config.data_dir)?;
    Ok((journal, report))
}

/// Creates the tables and the store record where missing; true when the store record was
/// created now (a new database).
fn init_tables(db: &Database, db_path: &Path) -> Result<bool> {
    let err = |op: &'static str| move |e: redb::Error| StorageError::redb(op, db_path, e);
    let txn = db
        .begin_write()
        .map_err(|e| err("begin a write")(e.into()))?;
    let created = {
        txn.open_table(WAL)
            .map_err(|e| err("create the wal table")(e.into()))?;
        txn.open_table(SEGMENTS)
            .map_err(|e| err("create the segments table")(e.into()))?;
        txn.open_table(REPLICAS)
            .map_err(|e| err("create the replicas table")(e.into()))?;
        txn.open_table(REMOVING)
            .map_err(|e| err("create the removing table")(e.into()))?;
        let mut meta = txn
            .open_table(META)
            .map_err(|e| err("create the meta table")(e.into()))?;
        let exists = meta
            .get(META_KEY)
            .map_err(|e| err("read the store record")(e.into()))?
            .is_some();
        if !exists {
            meta.insert(
                META_KEY,
                codec::encode(&StoreMeta { next_seq: 1 }).as_slice(),
            )
            .map_err(|e| err("write the store record")(e.into()))?;
        }
        !exists
    };
    txn.commit()
        .map_err(|e| err("commit the tables")(e.into()))?;
    Ok(created)
}

fn load_groups(txn: &redb::ReadTransaction, db_path: &Path) -> Result<GroupMap<GroupState>> {
    let err = |op: &'static str| move |e: redb::Error| StorageError::redb(op, db_path, e);
    let mut replicas: HashMap<u64, ReplicaRecord> = HashMap::new();
    {
        let t = txn
            .open_table(REPLICAS)
            .map_err(|e| err("open the replicas table")(e.into()))?;
        for row in t.iter().map_err(|e| err("read the registry")(e.into()))? {
            let (k, v) = row.map_err(|e| err("read the registry")(e.into()))?;
            let g = GroupId(k.value());
            let rec = codec::decode(v.value(), db_path, Some(g), || {
                format!("registry entry of group {g}")
            })?;
            replicas.insert(g.0, rec);
        }
    }
    let mut states = GroupMap::with_capacity_and_hasher(replicas.len(), Default::default());
    let t = txn
        .open_table(SEGMENTS)
        .map_err(|e| err("open the segments table")(e.into()))?;
    for (g, replica) in replicas {
        let g = GroupId(g);
        let v = t
            .get((g.0, GROUP_RECORD_INDEX))
            .map_err(|e| err("read a group record")(e.into()))?
            .ok_or_else(|| StorageError::Corrupt {
                path: db_path.to_path_buf(),
                group: Some(g),
                what: "the group has a registry entry but no record".into(),
            })?;
        let rec: GroupRecord = codec::decode(v.value(), db_path, Some(g), || {
            format!("record of group {g}")
        })?;
        states.insert(g, GroupState::from_record(replica, &rec));
    }
    Ok(states)
}

/// A replayed operation must fit the log as recovered so far; if not, records are missing.
fn check_replayable(db_path: &Path, seq: u64, op: &codec::WalOp, st: &GroupState) -> Result<()> {
    if let Some(m) = &op.snapshot
        && m.index <= st.snapshot_index()
    {
        return Err(StorageError::Corrupt {
            path: db_path.to_path_buf(),
            group: Some(op.group),
            what: format!(
                "wal record {seq} installs the snapshot at {} over the newer one at {}",
                m.index,
                st.snapshot_index()
            ),
        });
    }
    let (first, last) = match &op.snapshot {
        Some(m) if op.discard_log || m.index >= st.last_index => (m.index + 1, m.index),
        Some(m) => (m.index + 1, st.last_index),
        None => (st.first_index, st.last_index),
    };
    if let Some(e) = op.entries.first()
        && (e.index > last + 1 || e.index < first)
    {
        return Err(StorageError::LogGap {
            path: db_path.to_path_buf(),
            group: op.group,
            expected: last + 1,
            found: Some(e.index),
        });
    }
    Ok(())
}

/// Reads a group's segments from its first index to its flushed end: checksums, and no gap.
fn verify_segments(
    txn: &redb::ReadTransaction,
    db_path: &Path,
    g: GroupId,
    st: &GroupState,
) -> Result<u64> {
    if st.flushed_last < st.first_index {
        return Ok(0);
    }
    let err = |op: &'static str| move |e: redb::Error| StorageError::redb(op, db_path, e);
    let t = txn
        .open_table(SEGMENTS)
        .map_err(|e| err("open the segments table")(e.into()))?;
    let mut expected = st.first_index;
    let mut count = 0;
    for row in t
        .range((g.0, st.first_index)..(g.0, GROUP_RECORD_INDEX))
        .map_err(|e| err("read segments")(e.into()))?
    {
        let (k, v) = row.map_err(|e| err("read segments")(e.into()))?;
        count += 1;
        let key_last = k.value().1;
        let seg: SegmentRecord = codec::decode(v.value(), db_path, Some(g), || {
            format!("segment ({}, {key_last}) of group {g}", g.0)
        })?;
        if seg.entries.last().map(|e| e.index) != Some(key_last) {
            return Err(StorageError::Corrupt {
                path: db_path.to_path_buf(),
                group: Some(g),
                what: format!("segment ({}, {key_last}) does not end at its key", g.0),
            });
        }
        for e in &seg.entries {
            if e.index < expected {
                continue;
            }
            if e.index != expected {
                return Err(StorageError::LogGap {
                    path: db_path.to_path_buf(),
                    group: g,
                    expected,
                    found: Some(e.index),
                });
            }
            expected += 1;
        }
        if expected > st.flushed_last {
            return Ok(count);
        }
    }
    Err(StorageError::LogGap {
        path: db_path.to_path_buf(),
        group: g,
        expected,
        found: None,
    })
}

/// Removes snapshot files and directories no committed metadata names.
fn remove_orphans(data_dir: &Path, states: &GroupMap<GroupState>) -> Result<Vec<PathBuf>> {
    let dir = snapshot::snapshots_dir(data_dir);
    let mut removed = Vec::new();
    let read = std::fs::read_dir(&dir).map_err(|e| StorageError::io("list", &dir, e))?;
    for entry in read {
        let entry = entry.map_err(|e| StorageError::io("list", &dir, e))?;
        let path = entry.path();
        let group = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
            .map(GroupId);
        match group.and_then(|g| states.get(&g).map(|st| (g, st))) {
            None => {
                tracing::info!(path = %path.display(), "removing snapshot files of a group this node no longer hosts");
                let r = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                r.map_err(|e| StorageError::io("remove", &path, e))?;
                removed.push(path);
            }
            Some((g, st)) => {
                let keep = st
                    .snapshot
                    .as_ref()
                    .map(|m| snapshot::snapshot_path(data_dir, g, m));
                let files =
                    std::fs::read_dir(&path).map_err(|e| StorageError::io("list", &path, e))?;
                for f in files {
                    let f = f.map_err(|e| StorageError::io("list", &path, e))?.path();
                    if Some(&f) != keep.as_ref() {
                        tracing::info!(group = g.0, path = %f.display(), "removing an orphan snapshot file");
                        std::fs::remove_file(&f).map_err(|e| StorageError::io("remove", &f, e))?;
                        removed.push(f);
                    }
                }
            }
        }
    }
    if !removed.is_empty() {
        snapshot::sync_dir(&dir)?;
    }
    Ok(removed)
}
