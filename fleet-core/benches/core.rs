//! fleet-core benchmark: replication throughput of one in-memory 3-replica group on one thread,
//! simulator seeds per second, and the memory of an idle replica.
//!
//! Run: `cargo bench -p fleet-core --bench core`. Prints a table, then one JSON line.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use fleet_core::sim::{SimOptions, run};
use fleet_core::{Command, Config, Configuration, Message, Replica, ReplicaId, Restored, Role};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

/// Counts live heap bytes, to measure what a replica costs.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const RUNS: usize = 5;
const ENTRY_BYTES: usize = 64;
const BATCH_ENTRIES: usize = 256;
const ENTRIES_PER_RUN: usize = 1_000_000;
const SIM_SEEDS_PER_RUN: u64 = 40;
const IDLE_GROUPS: usize = 1_000;

fn group(seed: u64) -> Vec<Replica> {
    let ids: Vec<ReplicaId> = (1..=3).map(|n| ReplicaId::new(n, 0)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    ids.iter()
        .map(|id| {
            let mut cfg = Config::new(*id);
            cfg.quiesce_after_ticks = 20;
            Replica::new(
                cfg,
                &mut rng,
                Restored::bootstrap(Configuration::new(ids.iter().copied())),
            )
            .expect("valid")
        })
        .collect()
}

/// Drives the group until nothing is left to do. Persistence is a no-op (in memory), so this
/// measures the protocol's own cost.
fn drive(replicas: &mut [Replica], committed: &mut usize) {
    let mut inbox: Vec<Message> = Vec::new();
    loop {
        let mut any = false;
        for r in replicas.iter_mut() {
            if !r.has_ready() {
                continue;
            }
            any = true;
            let mut rd = r.take_ready();
            inbox.append(&mut rd.messages);
            inbox.append(&mut rd.messages_after_persist);
            if rd.must_persist() {
                r.persisted(rd.number);
            }
            if let Some(last) = rd.committed_entries.last() {
                if r.role() == Role::Leader {
                    *committed += rd.committed_entries.len();
                }
                r.applied(last.index);
            }
        }
        for m in inbox.drain(..) {
            any = true;
            let to = (m.to.node.0 - 1) as usize;
            replicas[to].step(m);
        }
        if !any {
            return;
        }
    }
}

fn elect(replicas: &mut [Replica]) {
    replicas[0].campaign();
    let mut ignored = 0;
    drive(replicas, &mut ignored);
    assert_eq!(replicas[0].role(), Role::Leader);
}

fn replication_run(seed: u64) -> f64 {
    let mut replicas = group(seed);
    elect(&mut replicas);
    let payload = Bytes::from(vec![7u8; ENTRY_BYTES]);
    let mut committed = 0;
    let started = Instant::now();
    let mut proposed = 0;
    while proposed < ENTRIES_PER_RUN {
        for _ in 0..BATCH_ENTRIES {
            replicas[0]
                .propose(Command {
                    session: None,
                    data: payload.clone(),
                })
                .expect("leader accepts");
        }
        proposed += BATCH_ENTRIES;
        drive(&mut replicas, &mut committed);
        // Keep the in-memory log short, as the runtime does with snapshots.
        for r in replicas.iter_mut() {
            let applied = r.applied_index();
            if applied > r.snapshot_meta().index + 10_000 {
                r.compact(applied, Bytes::new()).expect("compact");
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(committed >= ENTRIES_PER_RUN, "committed {committed}");
    committed as f64 / secs
}

fn sim_run(start: u64) -> f64 {
    let started = Instant::now();
    for seed in start..start + SIM_SEEDS_PER_RUN {
        run(seed, &SimOptions::for_seed(seed)).expect("seed passes");
    }
    SIM_SEEDS_PER_RUN as f64 / started.elapsed().as_secs_f64()
}

/// Heap and inline bytes per idle replica (quiesced 3-replica groups), excluding the log entries.
fn idle_replica_bytes() -> (f64, usize) {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut groups: Vec<Vec<Replica>> = (0..IDLE_GROUPS as u64).map(group).collect();
    for g in groups.iter_mut() {
        elect(g);
        for _ in 0..40 {
            for r in g.iter_mut() {
                r.tick();
            }
            let mut ignored = 0;
            drive(g, &mut ignored);
        }
        // Compact everything applied, so no entry is left: what remains is the replica itself.
        for r in g.iter_mut() {
            let applied = r.applied_index();
            if applied > r.snapshot_meta().index {
                r.compact(applied, Bytes::new()).expect("compact");
            }
        }
    }
    let quiesced = groups.iter().flatten().filter(|r| r.is_quiesced()).count();
    assert_eq!(
        quiesced,
        IDLE_GROUPS * 3,
        "every replica of an idle group quiesces"
    );
    let heap = LIVE_BYTES.load(Ordering::Relaxed) - before;
    let outer = IDLE_GROUPS * std::mem::size_of::<Vec<Replica>>();
    let replicas = IDLE_GROUPS * 3;
    let per_replica = (heap as f64 - outer as f64) / replicas as f64;
    drop(groups);
    (per_replica, std::mem::size_of::<Replica>())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` runs bench targets with --test; nothing to check here.
    }
    let replication = median((0..RUNS as u64).map(replication_run).collect());
    let seeds = median(
        (0..RUNS as u64)
            .map(|r| sim_run(10_000 + r * SIM_SEEDS_PER_RUN))
            .collect(),
    );
    let (idle_bytes, inline_bytes) = idle_replica_bytes();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("fleet-core benchmark ({cores} cores; medians of {RUNS} runs)");
    println!("{:<58}{:>14}{:>12}", "measure", "value", "target");
    println!(
        "{:<58}{:>14.0}{:>12}",
        format!("committed entries/s, 3 replicas, {ENTRY_BYTES} B, batch {BATCH_ENTRIES}"),
        replication,
        ">= 1000000"
    );
    println!(
        "{:<58}{:>14.1}{:>12}",
        "simulator seeds/s (3-5 nodes, 1-3 groups, ~7-16 s virtual)", seeds, ""
    );
    println!(
        "{:<58}{:>14.0}{:>12}",
        "bytes per idle replica, excluding log entries (heap+inline)", idle_bytes, "< 2048"
    );
    println!(
        "{:<58}{:>14}{:>12}",
        "of which inline (size_of::<Replica>())", inline_bytes, ""
    );
    println!(
        "{{\"bench\":\"fleet-core\",\"cores\":{cores},\"committed_entries_per_s\":{replication:.0},\"sim_seeds_per_s\":{seeds:.2},\"idle_replica_bytes\":{idle_bytes:.0},\"replica_inline_bytes\":{inline_bytes}}}"
    );
}
