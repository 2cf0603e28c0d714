//! The simulator can fail: each deliberately broken protocol variant is caught within the seeds CI
//! runs. A checker that never fires proves nothing.

use fleet_core::Broken;
use fleet_core::sim::{SimOptions, run};

/// Seeds tried per variant before giving up.
const SEEDS_MAX: u64 = 400;

fn first_failing_seed_with(
    broken: Broken,
    shape: impl Fn(&mut SimOptions),
) -> Option<(u64, String)> {
    let seeds_max = std::env::var("FLEET_BROKEN_SEEDS_MAX")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_MAX);
    (0..seeds_max).find_map(|seed| {
        let mut opts = SimOptions::for_seed(seed);
        opts.broken = broken;
        shape(&mut opts);
        run(seed, &opts).err().map(|f| (seed, f.message))
    })
}

fn assert_caught(broken: Broken, expect_one_of: &[&str]) {
    assert_caught_with(broken, |_| {}, expect_one_of)
}

fn assert_caught_with(broken: Broken, shape: impl Fn(&mut SimOptions), expect_one_of: &[&str]) {
    if let Some(seeds) = std::env::var("FLEET_BROKEN_COUNT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        // A developer's knob: how often does the simulator catch this variant?
        let caught = (0..seeds)
            .filter(|&seed| {
                let mut opts = SimOptions::for_seed(seed);
                opts.broken = broken;
                shape(&mut opts);
                run(seed, &opts).is_err()
            })
            .count();
        eprintln!("{broken:?} caught in {caught} of {seeds} seeds");
    }
    let (seed, message) = first_failing_seed_with(broken, shape)
        .unwrap_or_else(|| panic!("{broken:?} was not caught in {SEEDS_MAX} seeds"));
    eprintln!("{broken:?} caught at seed {seed}: {message}");
    assert!(
        expect_one_of.iter().any(|e| message.contains(e)),
        "{broken:?} caught at seed {seed}, but by an unexpected check: {message}"
    );
}

/// Thesis §3.8: a vote must be durable before it is sent. Granting it earlier lets a crash make
/// the voter vote twice in one term.
#[test]
fn vote_before_persist_is_caught() {
    assert_caught(
        Broken {
            vote_before_persist: true,
            ..Broken::default()
        },
        &[
            "persist before speak",
            "election safety",
            "log matching",
            "committed entry changed",
            "leader completeness",
            "state machine safety",
            "durable vote",
            "stale read",
        ],
    );
}

/// Thesis §3.6.2, Figure 3.7: committing an entry of an earlier term by counting replicas lets a
/// later leader overwrite it.
#[test]
fn commit_of_previous_term_by_counting_is_caught() {
    // Thesis Figure 3.7 needs leaders that die young and followers that acknowledge old-term
    // entries one at a time: a fault profile biased that way.
    assert_caught_with(
        Broken {
            commit_previous_term: true,
            ..Broken::default()
        },
        |o| {
            o.nodes = 3;
            o.group_size = 3;
            o.groups = 3;
            o.membership = false;
            o.append_entries_max = 1;
            o.crash_new_leader_per_mille = 300;
            o.isolate_new_leader_per_mille = 600;
            o.partition_per_mille = 300;
            o.restart_ms_max = 100;
        },
        &[
            "committed entry changed",
            "leader completeness",
            "state machine safety",
            "stale read",
            "panic",
        ],
    );
}

/// Thesis §3.6.1: a vote for a candidate whose log is behind elects a leader without committed
/// entries.
#[test]
fn vote_without_log_check_is_caught() {
    assert_caught(
        Broken {
            skip_log_check: true,
            ..Broken::default()
        },
        &[
            "committed entry changed",
            "leader completeness",
            "state machine safety",
            "stale read",
            "panic",
        ],
    );
}
