//! The store's API: writes and reads, truncation, snapshots and compaction, removal, reopen,
//! refused writes, and the failed state.

use std::sync::atomic::Ordering;

use fleet_core::{GroupId, HardState, ReplicaId};
use fleet_node::storage::{GroupWrite, ReplicaState, StorageError, Store, StoreConfig, WriteBatch};

use super::common::{CrashBackend, entry, read_group, small_config, snapshot_at};

const G1: GroupId = GroupId(1);
const G2: GroupId = GroupId(2);

fn append(group: GroupId, from: u64, to: u64, term: u64) -> GroupWrite {
    let mut w = GroupWrite::new(group);
    w.entries = (from..=to).map(|i| entry(group, i, term, 0)).collect();
    w
}

fn batch(writes: Vec<GroupWrite>) -> WriteBatch {
    WriteBatch {
        groups: writes,
        ..WriteBatch::default()
    }
}

fn create(store: &Store, g: GroupId) {
    store
        .create_group(g, ReplicaId::new(1, 0), "kv")
        .unwrap()
        .wait()
        .unwrap();
}

#[test]
fn write_read_truncate_snapshot_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) = Store::open(small_config(dir.path())).unwrap();
    assert!(report.groups.is_empty());
    create(&store, G1);
    create(&store, G2);

    let mut w1 = append(G1, 1, 10, 1);
    w1.hard_state = Some(HardState {
        term: 1,
        vote: Some(ReplicaId::new(1, 0)),
        commit: 0,
    });
    w1.ready_number = 7;
    let out = store.write(batch(vec![w1, append(G2, 1, 3, 1)])).unwrap();
    assert_eq!(out.groups.len(), 2);
    assert_eq!(
        (
            out.groups[0].ready_number,
            out.groups[0].last_index,
            out.groups[0].last_term
        ),
        (7, 10, 1)
    );
    assert_eq!(store.last_index_term(G2).unwrap(), (3, 1));

    // Byte bound: at least one entry, then stop before the bound.
    let one = store.entries(G1, 1, 11, 1).unwrap();
    assert_eq!(one.len(), 1);
    let size = one[0].size_bytes();
    assert_eq!(store.entries(G1, 1, 11, size * 3).unwrap().len(), 3);

    // A conflicting suffix from index 6 (uncommitted) is replaced.
    let mut w = append(G1, 6, 7, 2);
    w.hard_state = Some(HardState {
        term: 2,
        vote: None,
        commit: 5,
    });
    store.write(batch(vec![w])).unwrap();
    assert_eq!(store.last_index_term(G1).unwrap(), (7, 2));
    assert_eq!(store.term(G1, 5).unwrap(), 1);
    assert_eq!(store.term(G1, 6).unwrap(), 2);

    // Move everything into the segments, then read back across segment and cache.
    store.checkpoint().unwrap().wait().unwrap();
    assert_eq!(store.stats().wal_records, 0);
    let all = store.entries(G1, 1, 8, usize::MAX).unwrap();
    assert_eq!(
        all.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
        vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 2), (7, 2)]
    );
    // Truncate a flushed suffix, then read.
    store.write(batch(vec![append(G1, 7, 9, 2)])).unwrap();
    let mut w = append(G1, 6, 6, 3);
    w.hard_state = Some(HardState {
        term: 3,
        vote: None,
        commit: 5,
    });
    store.write(batch(vec![w])).unwrap();
    store.checkpoint().unwrap().wait().unwrap();
    assert_eq!(store.last_index_term(G1).unwrap(), (6, 3));

    // A local snapshot at 4 keeps the suffix; index 3 is compacted.
    let mut w = GroupWrite::new(G1);
    w.snapshot = Some(snapshot_at(G1, 4, 1));
    store.write(batch(vec![w])).unwrap();
    assert!(matches!(
        store.entries(G1, 3, 5, usize::MAX),
        Err(StorageError::Compacted { first_index: 5, .. })
    ));
    assert_eq!(store.entries(G1, 5, 7, usize::MAX).unwrap().len(), 2);
    assert_eq!(store.term(G1, 4).unwrap(), 1);
    let snap = store.read_snapshot(G1).unwrap().unwrap();
    assert_eq!(snap, snapshot_at(G1, 4, 1));
    // Chunked reads.
    let mut reader = store.open_snapshot(G1).unwrap().unwrap();
    let mut chunks = 0;
    let mut data = Vec::new();
    while let Some(c) = reader.next_chunk().unwrap() {
        assert!(c.len() <= 100);
        data.extend_from_slice(&c);
        chunks += 1;
    }
    assert_eq!(chunks, snap.data.len().div_ceil(100));
    assert_eq!(data, snap.data);
    store
        .set_replica_state(G1, ReplicaState::Active)
        .unwrap()
        .wait()
        .unwrap();

    let before = (
        read_group(&store, G1).unwrap(),
        read_group(&store, G2).unwrap(),
    );
    drop(store);
    let (store, report) = Store::open(small_config(dir.path())).unwrap();
    assert_eq!(report.groups.len(), 2);
    assert_eq!(report.groups[0].replica.state, ReplicaState::Active);
    assert_eq!(report.groups[0].first_index, 5);
    assert_eq!(
        (
            read_group(&store, G1).unwrap(),
            read_group(&store, G2).unwrap()
        ),
        before
    );

    // A newer snapshot replaces the old file.
    let mut w = GroupWrite::new(G1);
    w.snapshot = Some(snapshot_at(G1, 6, 3));
    store.write(batch(vec![w])).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path().join("snapshots/1"))
        .unwrap()
        .collect();
    assert_eq!(files.len(), 1, "the old snapshot file is removed");
}

#[test]
fn refused_writes_leave_the_store_working() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(small_config(dir.path())).unwrap();
    create(&store, G1);
    let mut w = append(G1, 1, 5, 1);
    w.hard_state = Some(HardState {
        term: 1,
        vote: Some(ReplicaId::new(2, 0)),
        commit: 3,
    });
    store.write(batch(vec![w])).unwrap();

    let refused = |w: GroupWrite| match store.write(batch(vec![w])) {
        Err(e @ StorageError::InvalidWrite { .. }) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    // A gap.
    assert!(refused(append(G1, 7, 8, 1)).contains("gap"));
    // A truncation of committed entries.
    assert!(refused(append(G1, 3, 3, 2)).contains("committed"));
    // A changed vote within the term.
    let mut w = GroupWrite::new(G1);
    w.hard_state = Some(HardState {
        term: 1,
        vote: Some(ReplicaId::new(3, 0)),
        commit: 3,
    });
    assert!(refused(w).contains("vote"));
    // A term going back.
    let mut w = GroupWrite::new(G1);
    w.hard_state = Some(HardState {
        term: 0,
        vote: None,
        commit: 3,
    });
    assert!(refused(w).contains("term"));
    // An unknown group.
    assert!(matches!(
        store.write(batch(vec![append(GroupId(9), 1, 1, 1)])),
        Err(StorageError::UnknownGroup { .. })
    ));
    // Too large.
    assert!(matches!(
        store.submit(batch(vec![append(G1, 6, 6 + 300, 1)])),
        Err(StorageError::TooLarge { .. })
    ));
    // Still fine.
    store.write(batch(vec![append(G1, 6, 6, 1)])).unwrap();
    assert_eq!(store.last_index_term(G1).unwrap(), (6, 1));
    assert!(store.failure().is_none());
}

#[test]
fn removal_erases_in_bounded_steps_and_the_group_can_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(small_config(dir.path())).unwrap();
    create(&store, G1);
    create(&store, G2);
    for i in 0..20 {
        store
            .write(batch(vec![
                append(G1, i * 5 + 1, i * 5 + 5, 1),
                append(G2, i + 1, i + 1, 1),
            ]))
            .unwrap();
    }
    let mut w = GroupWrite::new(G1);
    w.hard_state = Some(HardState {
        term: 1,
        vote: None,
        commit: 50,
    });
    w.snapshot = Some(snapshot_at(G1, 50, 1));
    store.write(batch(vec![w])).unwrap();
    store.checkpoint().unwrap().wait().unwrap();
    store.remove_group(G1).unwrap().wait().unwrap();
    assert!(store.group(G1).is_none());
    assert!(!dir.path().join("snapshots/1").exists());
    drop(store);
    // The erasure resumes after a restart.
    let (store, report) = Store::open(small_config(dir.path())).unwrap();
    assert_eq!(report.removals_pending, vec![G1]);
    assert_eq!(store.groups(), vec![G2]);
    // Coming back as a new incarnation starts empty, even while the erasure is pending.
    store
        .create_group(G1, ReplicaId::new(1, 1), "kv")
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(store.last_index_term(G1).unwrap(), (0, 0));
    store.write(batch(vec![append(G1, 1, 2, 4)])).unwrap();
    store.checkpoint().unwrap().wait().unwrap();
    drop(store);
    let (store, report) = Store::open(small_config(dir.path())).unwrap();
    assert!(report.removals_pending.is_empty());
    let g1 = read_group(&store, G1).unwrap();
    assert_eq!(
        g1.entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect::<Vec<_>>(),
        vec![(1, 4), (2, 4)]
    );
    assert_eq!(read_group(&store, G2).unwrap().entries.len(), 20);
}

#[test]
fn pipelined_submissions_complete_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(small_config(dir.path())).unwrap();
    create(&store, G1);
    let tickets: Vec<_> = (0..50)
        .map(|i| {
            store
                .submit(batch(vec![append(G1, i + 1, i + 1, 1)]))
                .unwrap()
        })
        .collect();
    let mut last_seq = 0;
    for (i, t) in tickets.into_iter().enumerate() {
        let out = t.wait().unwrap();
        assert!(out.seq >= last_seq, "sequence numbers never go back");
        last_seq = out.seq;
        assert_eq!(out.groups[0].last_index, i as u64 + 1);
    }
    assert!(store.stats().commits <= 50);
}

#[test]
fn a_failed_fsync_stops_the_store_and_nothing_unacknowledged_is_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let backend = CrashBackend::default();
    let (store, _) = Store::open_with_backend(small_config(dir.path()), backend.clone()).unwrap();
    create(&store, G1);
    store.write(batch(vec![append(G1, 1, 3, 1)])).unwrap();
    backend.fail_sync.store(true, Ordering::SeqCst);
    let err = store.write(batch(vec![append(G1, 4, 4, 1)])).unwrap_err();
    assert!(err.is_fatal(), "{err}");
    backend.fail_sync.store(false, Ordering::SeqCst);
    // Never retried, never acknowledged: every later write is refused.
    let err = store.write(batch(vec![append(G1, 4, 4, 1)])).unwrap_err();
    assert!(matches!(err, StorageError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("restart"), "{err}");
    assert!(store.failure().is_some());
    assert_eq!(
        store.last_index_term(G1).unwrap(),
        (3, 1),
        "memory shows only what is durable"
    );
    let mut rng = <rand_chacha::ChaCha8Rng as rand_core::SeedableRng>::seed_from_u64(1);
    let image = backend.crash(&mut rng, 50);
    drop(store);
    let (store, _) =
        Store::open_with_backend(small_config(dir.path()), CrashBackend::from_image(image))
            .unwrap();
    assert!(store.last_index_term(G1).unwrap().0 >= 3);
}

#[test]
fn a_full_disk_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let backend = CrashBackend::default();
    let (store, _) = Store::open_with_backend(small_config(dir.path()), backend.clone()).unwrap();
    create(&store, G1);
    store.write(batch(vec![append(G1, 1, 3, 1)])).unwrap();
    backend.full.store(true, Ordering::SeqCst);
    let big: Vec<GroupWrite> = vec![append(G1, 4, 20, 1)];
    let err = store.write(batch(big)).unwrap_err();
    assert!(matches!(err, StorageError::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("full"), "{err}");
    assert!(matches!(
        store.write(batch(vec![append(G1, 4, 4, 1)])),
        Err(StorageError::Failed { .. })
    ));
}

#[test]
fn checkpoints_run_when_the_wal_passes_half_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(small_config(dir.path())).unwrap();
    create(&store, G1);
    for i in 0..100 {
        store
            .write(batch(vec![append(G1, i * 3 + 1, i * 3 + 3, 1)]))
            .unwrap();
    }
    let stats = store.stats();
    eprintln!("{stats:?}");
    assert!(stats.checkpoints > 0, "{stats:?}");
    assert!(
        stats.wal_bytes <= small_config(dir.path()).wal_bytes_max,
        "{stats:?}"
    );
    assert!(stats.cache_bytes < 8 << 10, "{stats:?}");
    assert_eq!(store.entries(G1, 1, 301, usize::MAX).unwrap().len(), 300);
}

/// A batch registers new replicas and writes their first entries in one commit; a later batch of
/// the same commit may write to them too. Reopening finds them, from the write-ahead table and
/// after a checkpoint. A batch that creates an existing group is refused alone.
#[test]
fn a_batch_registers_new_replicas_with_their_first_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(small_config(dir.path())).unwrap();
    create(&store, G1);
    let commits = store.stats().commits;
    let mut first = batch(vec![append(G2, 1, 2, 1), append(G1, 1, 1, 1)]);
    first.create(G2, ReplicaId::new(2, 0), "kv");
    let mut second = batch(vec![append(G2, 3, 3, 1)]);
    second.create(GroupId(3), ReplicaId::new(1, 0), "counter");
    second.push(append(GroupId(3), 1, 1, 1));
    // Submitted together: the writer merges them into one commit.
    let t1 = store.submit(first).unwrap();
    let t2 = store.submit(second).unwrap();
    t1.wait().unwrap();
    t2.wait().unwrap();
    assert!(
        store.stats().commits - commits <= 2,
        "no commit of their own for registrations"
    );
    assert_eq!(store.last_index_term(G2).unwrap(), (3, 1));
    assert_eq!(store.last_index_term(GroupId(3)).unwrap(), (1, 1));

    let mut again = batch(vec![append(G1, 2, 2, 1)]);
    again.create(G2, ReplicaId::new(1, 0), "kv");
    let refused = store.write(again).unwrap_err();
    assert!(
        matches!(refused, StorageError::GroupExists { group } if group == G2),
        "{refused}"
    );
    assert_eq!(
        store.last_index_term(G1).unwrap(),
        (1, 1),
        "the refused batch wrote nothing"
    );
    let mut bad = batch(vec![append(GroupId(4), 5, 5, 1)]);
    bad.create(GroupId(4), ReplicaId::new(1, 0), "kv");
    assert!(
        store.write(bad).is_err(),
        "a gap in a new group's log is refused"
    );
    assert!(
        store.group(GroupId(4)).is_none(),
        "and its registration with it"
    );
    drop(store);

    for checkpoint in [false, true] {
        let (store, report) = Store::open(small_config(dir.path())).unwrap();
        let groups: Vec<(GroupId, String, u64)> = report
            .groups
            .iter()
            .map(|g| (g.group, g.replica.kind.clone(), g.last_index))
            .collect();
        assert_eq!(
            groups,
            vec![
                (G1, "kv".to_string(), 1),
                (G2, "kv".to_string(), 3),
                (GroupId(3), "counter".to_string(), 1)
            ],
            "after reopening (checkpointed first: {checkpoint})"
        );
        assert_eq!(report.groups[1].replica.replica, ReplicaId::new(2, 0));
        if !checkpoint {
            store.checkpoint().unwrap().wait().unwrap();
        }
        store.close().unwrap();
    }
}

/// Settings the store cannot work with are refused with an error that names them, before
/// anything is opened (no panic).
#[test]
fn settings_out_of_range_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.commit_entries_max = 0;
    let err = Store::open(c).expect_err("refused");
    assert!(
        matches!(&err, StorageError::InvalidConfig(m) if m.contains("commit_entries_max")),
        "{err}"
    );
    let mut c = StoreConfig::new(dir.path());
    c.wal_bytes_max = c.commit_bytes_max as u64;
    let err = Store::open(c).expect_err("refused");
    assert!(err.to_string().contains("wal_bytes_max"), "{err}");
    assert!(!err.is_fatal());
    assert!(
        !dir.path().join("fleet.redb").exists(),
        "nothing was created"
    );
}

/// Batch commits are journal records (not durable redb commits); a clean close makes the
/// database durable, so the next open replays nothing, and a full journal makes its batch a
/// durable database commit and starts over.
#[test]
fn batches_go_through_the_journal_and_a_clean_close_leaves_nothing_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(dir.path());
    config.journal = true;
    config.journal_bytes_max = 64 << 10;
    let (store, _) = Store::open(config.clone()).unwrap();
    create(&store, G1);
    let before = store.journal_stats().expect("a journal");
    for i in 0..40u64 {
        store
            .write(batch(vec![append(G1, i * 5 + 1, i * 5 + 5, 1)]))
            .unwrap();
    }
    let after = store.journal_stats().expect("a journal");
    // 15 records fit in 64 KiB after the header; then a batch finds the journal full.
    assert!(after.records - before.records >= 30, "{after:?}");
    assert!(after.full - before.full >= 2, "{after:?}");
    drop(store);
    let (store, report) = Store::open(config).unwrap();
    assert_eq!(report.journal.expect("a journal").records_replayed, 0);
    assert_eq!(store.last_index_term(G1).unwrap(), (200, 1));
}

#[test]
fn a_journal_beside_a_new_database_is_refused_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(dir.path());
    config.journal = true;
    config.journal_bytes_max = 64 << 10;
    let (store, _) = Store::open(config.clone()).unwrap();
    create(&store, G1);
    for i in 0..5u64 {
        store
            .write(batch(vec![append(G1, i * 5 + 1, i * 5 + 5, 1)]))
            .unwrap();
    }
    drop(store);
    // The database goes (an operator wiping the wrong file); its journal stays. Its records
    // (batches 1 and on, this database's first pass) would otherwise be written into the new one.
    std::fs::remove_file(dir.path().join("fleet.redb")).unwrap();
    let err = Store::open(config.clone()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{msg}");
    assert!(msg.contains("belongs to another database"), "{msg}");
    assert!(msg.contains("holds batches 1 to"), "{msg}");
    // Moving the journal away, as the message says, starts an empty store.
    std::fs::rename(
        dir.path().join("fleet.journal"),
        dir.path().join("fleet.journal.old"),
    )
    .unwrap();
    let (store, report) = Store::open(config).unwrap();
    assert!(report.groups.is_empty());
    assert!(store.last_index_term(G1).is_err());
}
