//! Benchmark: place 100,000 groups of 3 members over 100 nodes in 5 zones.
//!
//! Run with `cargo bench -p placement --bench placement`. Prints a table, then, as its last line,
//! one JSON object with the same figures for scripts. The target is under 1 s for the whole
//! placement on the project's 2-core machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use placement::{ClusterKey, GroupId, Node, Placements, Summary, Topology};

const GROUPS: u64 = 100_000;
const SIZE: usize = 3;
const NODES: usize = 100;
const ZONES: usize = 5;
/// Runs per measurement; the median is reported, so one run disturbed by another process on the
/// shared machine does not move the figure.
const RUNS: usize = 7;
const TARGET: Duration = Duration::from_secs(1);

fn main() {
    let key = ClusterKey::from_bytes(*b"fleet bench key!");
    let nodes: Vec<Node> = (0..NODES)
        .map(|i| Node::active(format!("n{i}"), format!("zone-{}", i % ZONES)))
        .collect();
    let topology = Topology::new(key, &nodes).expect("valid nodes");

    let place_timing = measure(|| place_each(&topology));
    let place_all_timing = measure(|| black_box(place_all(&topology)).groups.len());
    let placements = place_all_checked(&topology);
    let summary = measure(|| black_box(Summary::new(&nodes, &placements).expect("valid")).members);
    let balance = Balance::of(&Summary::new(&nodes, &placements).expect("valid"));

    // One more node in zone-0: how many members move, against the rendezvous ideal.
    let mut grown = nodes.clone();
    grown.push(Node::active(format!("n{NODES}"), "zone-0"));
    let grown_topology = Topology::new(key, &grown).expect("valid nodes");
    let moves = placements.moves_to(&place_all(&grown_topology));
    let moves_ideal = SIZE as f64 * GROUPS as f64 / (NODES + 1) as f64;

    let members = GROUPS as f64 * SIZE as f64;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("placement: {GROUPS} groups x {SIZE} members over {NODES} nodes in {ZONES} zones");
    println!(
        "machine: {cores} cores (shared with other work), bench profile, median of {RUNS} runs"
    );
    println!();
    println!("| what                          |   median |      min |      max |     members/s |");
    println!("|-------------------------------|---------:|---------:|---------:|--------------:|");
    place_timing.row("place (Topology::place)", members);
    place_all_timing.row("place_all (into Placements)", members);
    summary.row("summary (Summary::new)", members);
    println!();
    println!(
        "balance: members per node {}..{} (mean {:.0}), desired leaders per node {}..{} (mean {:.0})",
        balance.members_min,
        balance.members_max,
        members / NODES as f64,
        balance.leaders_min,
        balance.leaders_max,
        GROUPS as f64 / NODES as f64
    );
    println!(
        "adding node n{NODES}: {} members move ({:.2} x the ideal {moves_ideal:.0}), {} desired leaders change",
        moves.members_added,
        moves.members_added as f64 / moves_ideal,
        moves.leaders_changed
    );
    let verdict = if place_timing.median < TARGET {
        "met"
    } else {
        "MISSED"
    };
    println!("target: place under {} s: {verdict}", TARGET.as_secs());
    println!(
        "{{\"bench\":\"placement\",\"groups\":{GROUPS},\"size\":{SIZE},\"nodes\":{NODES},\"zones\":{ZONES},\
         \"runs\":{RUNS},\"cores\":{cores},\"place_s\":{:.4},\"place_members_per_s\":{:.0},\
         \"place_all_s\":{:.4},\"summary_s\":{:.4},\"members_per_node_min\":{},\"members_per_node_max\":{},\
         \"leaders_per_node_min\":{},\"leaders_per_node_max\":{},\"moves_adding_one_node\":{},\
         \"target_met\":{}}}",
        place_timing.median.as_secs_f64(),
        members / place_timing.median.as_secs_f64(),
        place_all_timing.median.as_secs_f64(),
        summary.median.as_secs_f64(),
        balance.members_min,
        balance.members_max,
        balance.leaders_min,
        balance.leaders_max,
        moves.members_added,
        place_timing.median < TARGET
    );
}

/// Places every group one by one, as the reconciler does, and keeps nothing.
fn place_each(topology: &Topology) -> usize {
    let mut placed = 0;
    for group in 0..GROUPS {
        let members = topology.place(GroupId(group), SIZE).expect("valid size");
        placed += black_box(members).len();
    }
    assert_eq!(placed, GROUPS as usize * SIZE);
    placed
}

fn place_all(topology: &Topology) -> Placements {
    topology
        .place_all((0..GROUPS).map(|group| (GroupId(group), SIZE)))
        .expect("valid size")
}

fn place_all_checked(topology: &Topology) -> Placements {
    let placements = place_all(topology);
    assert_eq!(placements.groups.len(), GROUPS as usize);
    placements
}

struct Timing {
    median: Duration,
    min: Duration,
    max: Duration,
}

/// Runs `work` `RUNS` times and keeps the median, the fastest and the slowest run.
fn measure<T>(mut work: impl FnMut() -> T) -> Timing {
    let mut runs: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            black_box(work());
            start.elapsed()
        })
        .collect();
    runs.sort();
    Timing {
        median: runs[RUNS / 2],
        min: runs[0],
        max: runs[RUNS - 1],
    }
}

impl Timing {
    fn row(&self, what: &str, members: f64) {
        println!(
            "| {what:<29} | {:>6.3} s | {:>6.3} s | {:>6.3} s | {:>13.0} |",
            self.median.as_secs_f64(),
            self.min.as_secs_f64(),
            self.max.as_secs_f64(),
            members / self.median.as_secs_f64()
        );
    }
}

struct Balance {
    members_min: usize,
    members_max: usize,
    leaders_min: usize,
    leaders_max: usize,
}

impl Balance {
    fn of(summary: &Summary) -> Self {
        let members = summary.nodes.values().map(|load| load.members);
        let leaders = summary.nodes.values().map(|load| load.leaders);
        Balance {
            members_min: members.clone().min().unwrap_or(0),
            members_max: members.max().unwrap_or(0),
            leaders_min: leaders.clone().min().unwrap_or(0),
            leaders_max: leaders.max().unwrap_or(0),
        }
    }
}
