//! `kill -9` of a process in the middle of a write-heavy run, then reopen.
//!
//! The test runs its own test binary again (`std::env::current_exe()`), selecting
//! [`child_writer`] with an environment variable: the child writes seeded random batches to a
//! store forever, with several in flight, and prints `ack <k>` once the first `k` batches are
//! durable. The parent SIGKILLs it mid-run, replays the same seeded workload on an in-memory
//! model, reopens the store and checks that it holds exactly the state after some prefix of the
//! batches at least as long as the last acknowledged one.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet_core::{GroupId, ReplicaId};
use fleet_node::storage::{Store, StoreConfig};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::common::{Model, apply_batch, compare, random_batch, small_config};

const DIR_VAR: &str = "FLEET_STORAGE_KILL9_DIR";
const SEED_VAR: &str = "FLEET_STORAGE_KILL9_SEED";
const GROUPS: u64 = 12;
const IN_FLIGHT_MAX: usize = 4;

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut c = small_config(dir);
    // Bigger than the unit-test bounds, so that commits are batches of many groups, but small
    // enough that checkpoints run during the test.
    c.commit_bytes_max = 64 << 10;
    c.wal_bytes_max = 256 << 10;
    c.checkpoint_groups_per_step_max = 4;
    c
}

fn groups() -> Vec<GroupId> {
    (1..=GROUPS).map(GroupId).collect()
}

/// The seeded workload: yields the batches in order, keeping the model they are generated from.
struct Workload {
    rng: ChaCha8Rng,
    model: Model,
    k: u64,
}

impl Workload {
    fn new(seed: u64) -> Self {
        Workload {
            rng: ChaCha8Rng::seed_from_u64(seed),
            model: groups()
                .into_iter()
                .map(|g| (g, Default::default()))
                .collect(),
            k: 0,
        }
    }

    fn next_batch(&mut self) -> fleet_node::storage::WriteBatch {
        let batch = random_batch(&mut self.rng, &self.model, &groups(), self.k);
        apply_batch(&mut self.model, &batch);
        self.k += 1;
        batch
    }
}

/// The child: writes until killed. A no-op when run as an ordinary test.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_VAR).unwrap().parse().unwrap();
    let (store, _) = Store::open(config(std::path::Path::new(&dir))).unwrap();
    for g in groups() {
        store
            .create_group(g, ReplicaId::new(1, 0), "kv")
            .unwrap()
            .wait()
            .unwrap();
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let mut workload = Workload::new(seed);
    let mut in_flight = VecDeque::new();
    let mut acked = 0u64;
    loop {
        in_flight.push_back(store.submit(workload.next_batch()).unwrap());
        if in_flight.len() >= IN_FLIGHT_MAX {
            in_flight.pop_front().unwrap().wait().unwrap();
            acked += 1;
            writeln!(out, "ack {acked}").unwrap();
            out.flush().unwrap();
        }
    }
}

fn kill_and_check(seed: u64, run_for: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "storage::kill9::child_writer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir.path())
        .env(SEED_VAR, seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if let Some(k) = line.strip_prefix("ack ") {
                let _ = tx.send(k.parse::<u64>().unwrap());
            }
        }
    });
    // Let it write for a while, but kill it only after it acknowledged something.
    let started = Instant::now();
    let mut acked = 0;
    while started.elapsed() < run_for || acked < 20 {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(k) => acked = acked.max(k),
            Err(e) => panic!("the child stopped acknowledging: {e}"),
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    // Acknowledgements printed before the kill count too.
    while let Ok(k) = rx.try_recv() {
        acked = acked.max(k);
    }

    let (store, report) =
        Store::open(config(dir.path())).unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
    assert_eq!(report.groups.len(), GROUPS as usize);
    let mut workload = Workload::new(seed);
    let mut states = vec![workload.model.clone()];
    for _ in 0..acked + IN_FLIGHT_MAX as u64 + 1 {
        workload.next_batch();
        states.push(workload.model.clone());
    }
    let mut last_err = String::new();
    for k in (acked as usize..states.len()).rev() {
        match compare(&store, &states[k]) {
            Ok(()) => return,
            Err(e) => last_err = e,
        }
    }
    panic!(
        "seed {seed}: after kill -9 the store matches no state from the acknowledged batch {acked} on: {last_err}"
    );
}

#[test]
fn kill_9_mid_write_loses_nothing_acknowledged() {
    for (seed, ms) in [(1, 300), (2, 700), (3, 1200)] {
        kill_and_check(seed, Duration::from_millis(ms));
    }
}
