//! Power loss at hundreds of seeded crash points of a multi-group workload.
//!
//! Each run opens a store on a [`CrashBackend`], creates a few groups, and submits random batches
//! (appends, conflicting rewrites, hard-state changes, local and leader snapshots; two more groups
//! are registered by a batch that also writes to them) with up to
//! three in flight, while small bounds make checkpoints run often. At a random moment it pulls
//! the plug: the disk keeps what was synced plus a random subset of the pages written since.
//! After reopening, the store must hold exactly the state after some prefix of the submitted
//! batches, at least as long as the acknowledged prefix. That covers the guarantees:
//! every batch reported durable is intact, hard state never goes back, no log has a gap (read
//! back entry by entry), and nothing appears that was never written.
//!
//! Snapshot files are written to a real directory. What this covers for them: the crash can
//! fall between writing a snapshot file and committing its metadata (the file is then an orphan,
//! removed on open), or between the commit and the removal of the old file (the frozen disk makes
//! the commit fail, so the old file stays); both must reopen cleanly. Torn snapshot files are not
//! simulated here: the file is fsynced and renamed before anything refers to it, and a damaged
//! file is caught by its checksum (see `corruption.rs`).

use std::collections::VecDeque;

use fleet_core::{GroupId, ReplicaId};
use fleet_node::storage::{Store, StoreConfig, WriteBatch};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::common::{CrashBackend, Model, apply_batch, compare, random_batch, small_config};

const GROUPS: u64 = 5;
/// Groups registered by a batch of the workload rather than up front.
const GROUPS_CREATED_IN_BATCH: u64 = 2;
const IN_FLIGHT_MAX: usize = 3;

/// Runs one crash point. With `ack_on_submit`, the harness counts a batch as acknowledged as
/// soon as it is submitted (a deliberate bug) to show that the check catches a lost commit.
/// What one crash point exercised.
#[derive(Debug, Default)]
struct Outcome {
    /// Batches acknowledged before the crash, and submitted.
    acked: usize,
    submitted: usize,
    /// The prefix of batches the reopened store holds.
    recovered: usize,
    /// Checkpoint steps before the crash.
    checkpoints: u64,
    /// Batches that found the commit journal full (a durable redb commit) before the crash.
    journal_full: u64,
    /// Journal records the reopen applied to the database again.
    journal_replayed: u64,
    /// Journaled batches whose redb writes waited behind a later journal record.
    deferred: u64,
}

/// How the store under test reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Files {
    /// redb syncs its own file.
    Database,
    /// The commit journal makes commits durable (a small journal, so that it fills and starts
    /// over often).
    Journal,
}

fn open(
    config: &StoreConfig,
    files: Files,
    db: CrashBackend,
    log: CrashBackend,
) -> Result<(Store, u64), String> {
    let r = match files {
        Files::Database => Store::open_with_backend(config.clone(), db),
        Files::Journal => Store::open_with_journal(config.clone(), db, log),
    };
    r.map(|(s, report)| (s, report.journal.map_or(0, |j| j.records_replayed)))
        .map_err(|e| e.to_string())
}

fn crash_point(seed: u64, ack_on_submit: bool, files: Files) -> Result<Outcome, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let (backend, journal) = CrashBackend::pair();
    let mut config = small_config(dir.path());
    config.journal_bytes_max = 64 << 10;
    let (store, _) = open(&config, files, backend.clone(), journal.clone())?;
    let mut groups: Vec<GroupId> = (1..=GROUPS - GROUPS_CREATED_IN_BATCH)
        .map(GroupId)
        .collect();
    let later: Vec<GroupId> = (GROUPS - GROUPS_CREATED_IN_BATCH + 1..=GROUPS)
        .map(GroupId)
        .collect();
    let create_at = rng.next_u64() % 5;
    let mut model = Model::new();
    for &g in &groups {
        store
            .create_group(g, ReplicaId::new(1, 0), "kv")
            .unwrap()
            .wait()
            .unwrap();
        model.insert(g, Default::default());
    }
    // states[k] is the model after the first k batches.
    let mut states = vec![model.clone()];
    let mut acked = 0usize;
    let mut in_flight = VecDeque::new();
    let batches = 5 + rng.next_u64() % 40;
    for k in 0..batches {
        let mut batch: WriteBatch = random_batch(&mut rng, &model, &groups, k);
        if k == create_at {
            // Registered with their first writes, in the same commit, ahead of the other
            // groups' writes.
            let mut created = Model::new();
            for &g in &later {
                created.insert(g, Default::default());
            }
            let mut b = random_batch(&mut rng, &created, &later, k);
            for &g in &later {
                b.create(g, ReplicaId::new(1, 0), "kv");
            }
            b.groups.append(&mut batch.groups);
            batch = b;
            groups.extend(&later);
        }
        apply_batch(&mut model, &batch);
        states.push(model.clone());
        in_flight.push_back(store.submit(batch).map_err(|e| format!("submit: {e}"))?);
        if ack_on_submit {
            acked = states.len() - 1;
        }
        while in_flight.len() > IN_FLIGHT_MAX || (!in_flight.is_empty() && rng.next_u64() % 3 == 0)
        {
            in_flight
                .pop_front()
                .expect("non-empty")
                .wait()
                .map_err(|e| format!("write: {e}"))?;
            acked = acked.max(states.len() - 1 - in_flight.len());
        }
    }
    // Sometimes let the in-flight batches finish, sometimes crash while they are in flight.
    if rng.next_u64() % 4 == 0 {
        while let Some(t) = in_flight.pop_front() {
            t.wait().map_err(|e| format!("write: {e}"))?;
            acked = acked.max(states.len() - 1 - in_flight.len());
        }
    }
    let keep = rng.next_u64() % 101;
    let checkpoints = store.stats().checkpoints;
    let deferred = store.stats().batches_deferred;
    let journal_full = store.journal_stats().map_or(0, |j| j.full);
    let image = backend.crash(&mut rng, keep);
    let journal_image = journal.crash(&mut rng, keep);
    drop(in_flight);
    drop(store);

    let (db, log) = CrashBackend::pair_from_images(image, journal_image);
    let (store, journal_replayed) =
        open(&config, files, db, log).map_err(|e| format!("reopen after the crash failed: {e}"))?;
    let mut last_err = String::new();
    for k in (acked..states.len()).rev() {
        match compare(&store, &states[k]) {
            Ok(()) => {
                return Ok(Outcome {
                    acked,
                    submitted: states.len() - 1,
                    recovered: k,
                    checkpoints,
                    journal_full,
                    journal_replayed,
                    deferred,
                });
            }
            Err(e) => last_err = e,
        }
    }
    Err(format!(
        "after the crash the store matches no state from the acknowledged batch {acked} to the last submitted {}: {last_err}",
        states.len() - 1
    ))
}

#[test]
fn every_acknowledged_batch_survives_500_crash_points() {
    survives_500_crash_points(Files::Database);
}

#[test]
fn every_acknowledged_batch_survives_500_crash_points_through_the_journal() {
    survives_500_crash_points(Files::Journal);
}

fn survives_500_crash_points(files: Files) {
    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    for seed in 0..500 {
        match crash_point(seed, false, files) {
            Ok(o) => outcomes.push(o),
            Err(e) => failures.push(format!("seed {seed}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} crash points failed ({files:?}); reproduce with crash_point(seed):\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The crash points must cover the interesting cases, or the test proves little.
    let in_flight_lost = outcomes
        .iter()
        .filter(|o| o.recovered < o.submitted)
        .count();
    let in_flight_kept = outcomes.iter().filter(|o| o.recovered > o.acked).count();
    let checkpointed = outcomes.iter().filter(|o| o.checkpoints > 0).count();
    let journal_full = outcomes.iter().filter(|o| o.journal_full > 0).count();
    let journal_replayed = outcomes.iter().filter(|o| o.journal_replayed > 0).count();
    let deferred = outcomes.iter().filter(|o| o.deferred > 0).count();
    eprintln!(
        "500 crash points ({files:?}): {in_flight_lost} lost unacknowledged batches, {in_flight_kept} kept some, {checkpointed} crashed after checkpoints, {journal_full} after the journal filled, {journal_replayed} replayed journal records, {deferred} deferred batches' redb writes behind later journal records"
    );
    assert!(in_flight_lost > 50 && in_flight_kept > 20 && checkpointed > 100);
    if files == Files::Journal {
        assert!(journal_full > 100 && journal_replayed > 200 && deferred > 100);
    }
}

#[test]
fn the_harness_catches_an_acknowledgement_before_durability() {
    let caught = (10_000..10_060)
        .filter(|&seed| crash_point(seed, true, Files::Journal).is_err())
        .count();
    eprintln!(
        "the harness caught {caught} of 60 crash points with acknowledgements before durability"
    );
    assert!(
        caught > 0,
        "counting submitted batches as durable must be caught at some crash point"
    );
}
