//! The seeded simulator over many seeds (CI runs 2,000), and byte-for-byte replay.

use fleet_core::sim::{SimOptions, run};

/// Seeds per test, so nextest spreads them over the cores.
const SEEDS_PER_CHUNK: u64 = 250;

fn run_chunk(chunk: u64) {
    let start = chunk * SEEDS_PER_CHUNK;
    let mut failures = Vec::new();
    for seed in start..start + SEEDS_PER_CHUNK {
        if let Err(f) = run(seed, &SimOptions::for_seed(seed)) {
            eprintln!("seed {seed}: {f}\n");
            failures.push(seed);
        }
    }
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}

#[test]
fn seeds_0000_0249() {
    run_chunk(0);
}
#[test]
fn seeds_0250_0499() {
    run_chunk(1);
}
#[test]
fn seeds_0500_0749() {
    run_chunk(2);
}
#[test]
fn seeds_0750_0999() {
    run_chunk(3);
}
#[test]
fn seeds_1000_1249() {
    run_chunk(4);
}
#[test]
fn seeds_1250_1499() {
    run_chunk(5);
}
#[test]
fn seeds_1500_1749() {
    run_chunk(6);
}
#[test]
fn seeds_1750_1999() {
    run_chunk(7);
}

/// The same seed gives the same run: the whole trace hashes to the same value.
#[test]
fn a_seed_replays_byte_for_byte() {
    for seed in [3, 17, 42] {
        let a = run(seed, &SimOptions::for_seed(seed)).expect("passes");
        let b = run(seed, &SimOptions::for_seed(seed)).expect("passes");
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} did not replay identically"
        );
        assert_eq!(a.acked, b.acked);
        assert_eq!(a.messages, b.messages);
        let c = run(seed + 1000, &SimOptions::for_seed(seed + 1000)).expect("passes");
        assert_ne!(a.trace_hash, c.trace_hash, "different seeds should differ");
    }
}

/// The simulator exercises what it claims to: over a few seeds, every kind of event happens.
#[test]
fn the_workload_covers_every_feature() {
    let mut total = fleet_core::sim::SimReport::default();
    for seed in 0..60 {
        let r = run(seed, &SimOptions::for_seed(seed)).expect("passes");
        total.add(&r);
    }
    assert!(total.elections > 40, "{total:?}");
    assert!(total.acked > 1000, "{total:?}");
    assert!(total.duplicates_answered > 0, "{total:?}");
    assert!(total.reads > 1000, "{total:?}");
    assert!(total.crashes > 40, "{total:?}");
    assert!(total.snapshots_installed > 0, "{total:?}");
    assert!(total.membership_changes > 10, "{total:?}");
    assert!(total.transfers > 10, "{total:?}");
    assert!(total.forwarded_acked > 100, "{total:?}");
    assert!(total.registrations > 160, "{total:?}");
    assert!(total.forwards_refused > 0, "{total:?}");
    assert!(total.sessions_expired > 0, "{total:?}");
}
