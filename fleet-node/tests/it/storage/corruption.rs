//! Damaged files: a clear error that names the file (and the group when known), never a panic
//! and never a silent repair.

use fleet_core::{GroupId, ReplicaId};
use fleet_node::storage::{GroupWrite, StorageError, Store, WriteBatch, crc32c};

use super::common::{entry, small_config, snapshot_at};

const G: GroupId = GroupId(3);
const MARKER: &[u8] = b"g3-i5-t1-payload";

fn populated(dir: &std::path::Path, checkpoint: bool) {
    let (store, _) = Store::open(small_config(dir)).unwrap();
    store
        .create_group(G, ReplicaId::new(1, 0), "kv")
        .unwrap()
        .wait()
        .unwrap();
    let mut w = GroupWrite::new(G);
    w.entries = (1..=8).map(|i| entry(G, i, 1, 0)).collect();
    store
        .write(WriteBatch {
            groups: vec![w],
            ..WriteBatch::default()
        })
        .unwrap();
    let mut w = GroupWrite::new(G);
    w.hard_state = Some(fleet_core::HardState {
        term: 1,
        vote: None,
        commit: 3,
    });
    w.snapshot = Some(snapshot_at(G, 3, 1));
    store
        .write(WriteBatch {
            groups: vec![w],
            ..WriteBatch::default()
        })
        .unwrap();
    if checkpoint {
        store.checkpoint().unwrap().wait().unwrap();
    }
    store.close().unwrap();
}

/// Flips a bit in every copy of `marker` in the file (copy-on-write leaves old copies in free
/// pages; flipping all of them makes sure the live one is hit).
fn flip_marker(path: &std::path::Path, marker: &[u8]) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let mut hits = 0;
    let mut i = 0;
    while i + marker.len() <= bytes.len() {
        if &bytes[i..i + marker.len()] == marker {
            bytes[i + 4] ^= 0x01;
            hits += 1;
        }
        i += 1;
    }
    std::fs::write(path, bytes).unwrap();
    hits
}

fn open_err(dir: &std::path::Path) -> StorageError {
    match Store::open(small_config(dir)) {
        Ok(_) => panic!("a damaged store must not open"),
        Err(e) => e,
    }
}

#[test]
fn a_flipped_byte_in_a_wal_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), false);
    assert!(flip_marker(&dir.path().join("fleet.redb"), MARKER) > 0);
    let err = open_err(dir.path());
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("fleet.redb"), "{err}");
}

#[test]
fn a_flipped_byte_in_a_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), true);
    // Entry 5 is after the snapshot, so it lives in a segment now.
    assert!(flip_marker(&dir.path().join("fleet.redb"), MARKER) > 0);
    let err = open_err(dir.path());
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("fleet.redb"), "{msg}");
}

#[test]
fn a_flipped_byte_is_caught_by_reads_when_open_checks_are_off() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), true);
    assert!(flip_marker(&dir.path().join("fleet.redb"), MARKER) > 0);
    let mut config = small_config(dir.path());
    config.verify_log_on_open = false;
    config.check_integrity_on_open = false;
    let (store, _) = Store::open(config).unwrap();
    let err = store.entries(G, 4, 9, usize::MAX).unwrap_err();
    assert!(
        matches!(err, StorageError::Corrupt { group: Some(G), .. }),
        "{err}"
    );
    assert!(err.to_string().contains("group g3"), "{err}");
}

#[test]
fn a_truncated_snapshot_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), true);
    let file = dir.path().join("snapshots/3/3-1.snap");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let err = open_err(dir.path());
    assert!(
        matches!(err, StorageError::Corrupt { group: Some(G), .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("3-1.snap") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn a_flipped_byte_in_a_snapshot_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), false);
    assert_eq!(
        flip_marker(&dir.path().join("snapshots/3/3-1.snap"), b"state of g3"),
        4, // "state of g3 at 3 " repeated 1 + 3 % 7 times
    );
    let err = open_err(dir.path());
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn a_missing_snapshot_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), false);
    std::fs::remove_file(dir.path().join("snapshots/3/3-1.snap")).unwrap();
    let err = open_err(dir.path());
    assert!(
        matches!(err, StorageError::MissingSnapshotFile { group: G, .. }),
        "{err}"
    );
}

#[test]
fn leftover_snapshot_files_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), false);
    std::fs::write(dir.path().join("snapshots/3/9-1.snap.tmp"), b"half written").unwrap();
    std::fs::write(dir.path().join("snapshots/3/7-1.snap"), b"never committed").unwrap();
    std::fs::create_dir_all(dir.path().join("snapshots/44")).unwrap();
    let (_store, report) = Store::open(small_config(dir.path())).unwrap();
    assert_eq!(
        report.orphan_files_removed.len(),
        3,
        "{:?}",
        report.orphan_files_removed
    );
    assert!(dir.path().join("snapshots/3/3-1.snap").exists());
}

#[test]
fn an_unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), true);
    // Rewrite the store record as a future version would, with a valid checksum.
    {
        use redb::ReadableTable;
        let db = redb::Database::create(dir.path().join("fleet.redb")).unwrap();
        let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(table).unwrap();
            let mut v = t.get("store").unwrap().unwrap().value().to_vec();
            v[0..2].copy_from_slice(&99u16.to_le_bytes());
            let crc = fleet_node::storage::crc32c_append(crc32c(&v[0..4]), &v[8..]);
            v[4..8].copy_from_slice(&crc.to_le_bytes());
            t.insert("store", v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = open_err(dir.path());
    assert!(
        matches!(err, StorageError::UnknownFormatVersion { found: 99, .. }),
        "{err}"
    );
}
