//! The simulated world: nodes, disks, network, clients, and the fault schedule.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::invariants::{self, History};
use crate::kv::{KvCommand, KvOutput, KvQuery, KvStore};
use crate::message::Message;
use crate::ready::{ReadState, Role};
use crate::session::{Applied, Applier, SessionConfig, SessionError};
use crate::types::{
    Command, Configuration, Entry, GroupId, HardState, Index, MembershipChange, Payload, ReplicaId,
    SessionRef, Snapshot, Term,
};
use crate::{Config, Error, Replica, Restored};

/// The shape and fault rates of one simulation.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Groups, each with `group_size` members spread over the nodes.
    pub groups: usize,
    /// Voters per group.
    pub group_size: usize,
    /// Virtual milliseconds with faults.
    pub fault_ms: u64,
    /// Virtual milliseconds after faults stop, within which the cluster must recover.
    pub heal_ms: u64,
    /// Per mille of messages dropped.
    pub drop_per_mille: u32,
    /// Per mille of messages duplicated.
    pub duplicate_per_mille: u32,
    /// The most a message is delayed, in ms (random delays reorder messages).
    pub delay_ms_max: u64,
    /// Chance per mille, each 100 ms, that a node crashes.
    pub crash_per_mille: u32,
    /// Chance per mille, for each write a node starts, that it crashes before the write is
    /// durable (a crash in the middle of an fsync).
    pub crash_in_write_per_mille: u32,
    /// Chance per mille that a newly elected leader's node crashes within 40 ms.
    pub crash_new_leader_per_mille: u32,
    /// Chance per mille that a newly elected leader's node is cut off from everyone for a while
    /// (it keeps taking proposals it cannot commit).
    pub isolate_new_leader_per_mille: u32,
    /// A crashed node restarts within this many ms (while faults are on).
    pub restart_ms_max: u64,
    /// The most a write takes to become durable, in ms.
    pub disk_delay_ms_max: u64,
    /// Replicas ask for pre-votes.
    pub pre_vote: bool,
    /// Entries per append message (small values pipeline old-term entries one by one).
    pub append_entries_max: usize,
    /// Chance per mille, each 100 ms, that the partition changes.
    pub partition_per_mille: u32,
    /// Clients per group.
    pub clients_per_group: usize,
    /// Membership changes (add learner, promote, remove) on nodes outside a group.
    pub membership: bool,
    /// Leadership transfers.
    pub transfers: bool,
    /// Snapshots every few dozen entries.
    pub snapshots: bool,
    /// Groups quiesce when idle.
    pub quiesce: bool,
    /// Reads by lease instead of a heartbeat round.
    pub lease_reads: bool,
    /// Deliberately broken protocol variants.
    #[cfg(feature = "broken-variants")]
    pub broken: crate::Broken,
}

impl SimOptions {
    /// A shape drawn from the seed: 3 or 5 nodes, one to three groups, every fault on.
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x05EE_D0FF_1EE7);
        let five = rng.next_u32() % 2 == 0;
        let nodes = if five { 5 } else { 3 };
        let group_size = if five && rng.next_u32() % 2 == 0 {
            5
        } else {
            3
        };
        SimOptions {
            nodes,
            groups: 1 + (rng.next_u32() % 3) as usize,
            group_size,
            fault_ms: 6_000,
            heal_ms: 10_000,
            drop_per_mille: rng.next_u32() % 100,
            duplicate_per_mille: rng.next_u32() % 50,
            delay_ms_max: 1 + u64::from(rng.next_u32() % 20),
            crash_per_mille: 20 + rng.next_u32() % 60,
            crash_in_write_per_mille: rng.next_u32() % 8,
            crash_new_leader_per_mille: rng.next_u32() % 300,
            isolate_new_leader_per_mille: rng.next_u32() % 300,
            restart_ms_max: 20 + u64::from(rng.next_u32() % 400),
            disk_delay_ms_max: 1 + u64::from(rng.next_u32() % 15),
            pre_vote: rng.next_u32() % 4 != 0,
            append_entries_max: 1 + (rng.next_u32() % 8) as usize,
            partition_per_mille: 30 + rng.next_u32() % 100,
            clients_per_group: 2,
            membership: nodes > group_size,
            transfers: true,
            snapshots: true,
            quiesce: rng.next_u32() % 2 == 0,
            lease_reads: rng.next_u32() % 4 == 0,
            #[cfg(feature = "broken-variants")]
            broken: crate::Broken::default(),
        }
    }
}

/// What a passing simulation did.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Leaders elected.
    pub elections: u64,
    /// Entries committed (highest commit index summed over groups).
    pub committed: u64,
    /// Client commands acknowledged.
    pub acked: u64,
    /// Retries answered from the session table.
    pub duplicates_answered: u64,
    /// Linearizable reads answered and checked.
    pub reads: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Membership changes committed.
    pub membership_changes: u64,
    /// Leadership transfers started.
    pub transfers: u64,
    /// Client commands a follower forwarded to its leader and acknowledged when it applied them.
    pub forwarded_acked: u64,
    /// Client sessions registered (thesis §6.3 RegisterClient).
    pub registrations: u64,
    /// Forwarded commands the receiver refused (`ProposeRefused`).
    pub forwards_refused: u64,
    /// Commands refused because the group no longer held their session (evicted by other
    /// registrations): the client dropped what it had in flight, outcome unknown, and registered
    /// again.
    pub sessions_expired: u64,
    /// Messages delivered.
    pub messages: u64,
    /// A hash of the whole trace: equal for equal seeds and options.
    pub trace_hash: u64,
}

impl SimReport {
    /// Adds another run's counts to this one (for summaries over many seeds).
    pub fn add(&mut self, r: &SimReport) {
        self.elections += r.elections;
        self.committed += r.committed;
        self.acked += r.acked;
        self.duplicates_answered += r.duplicates_answered;
        self.reads += r.reads;
        self.crashes += r.crashes;
        self.snapshots_installed += r.snapshots_installed;
        self.membership_changes += r.membership_changes;
        self.transfers += r.transfers;
        self.forwarded_acked += r.forwarded_acked;
        self.registrations += r.registrations;
        self.forwards_refused += r.forwards_refused;
        self.sessions_expired += r.sessions_expired;
        self.messages += r.messages;
    }
}

/// A failed simulation: what broke, and how to see it again.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// What broke.
    pub message: String,
    /// The last lines of the trace.
    pub trace_tail: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "simulation failed: {}", self.message)?;
        writeln!(f, "last trace lines:")?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "reproduce with: cargo run -p fleet-core --features sim --bin fleet-sim -- --seed {} --verbose",
            self.seed
        )
    }
}

/// Runs one seed.
pub fn run(seed: u64, opts: &SimOptions) -> Result<SimReport, SimFailure> {
    let mut world = World::new(seed, opts.clone());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run()));
    let message = match outcome {
        Ok(Ok(())) => {
            let mut report = world.report.clone();
            report.seed = seed;
            report.trace_hash = world.trace.hash;
            report.committed = world
                .history
                .groups
                .values()
                .map(|g| g.committed.len() as u64)
                .sum();
            return Ok(report);
        }
        Ok(Err(message)) => message,
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            format!("panic: {text}")
        }
    };
    Err(SimFailure {
        seed,
        message,
        trace_tail: world.trace.tail.iter().cloned().collect(),
    })
}

const TRACE_TAIL_LINES_MAX: usize = 400;
const CLIENT_INFLIGHT_MAX: usize = 2;
const CLIENT_RETRY_MS: u64 = 400;
const KEYS_PER_GROUP: u64 = 3;

/// The trace: a running hash of every line, and the last lines for a failure report.
struct Trace {
    hash: u64,
    tail: VecDeque<String>,
    verbose: bool,
}

impl Trace {
    fn line(&mut self, now: u64, text: std::fmt::Arguments<'_>) {
        let mut s = String::new();
        let _ = write!(s, "{now:>6}ms {text}");
        for b in s.bytes() {
            // FNV-1a: stable across platforms and builds.
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(0x100_0000_01B3);
        }
        if self.verbose {
            eprintln!("{s}");
        }
        if self.tail.len() == TRACE_TAIL_LINES_MAX {
            self.tail.pop_front();
        }
        self.tail.push_back(s);
    }
}

/// What a node has durably on disk for one group.
#[derive(Clone, Debug, Default)]
pub(crate) struct Disk {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
}

impl Disk {
    fn write(&mut self, job: &Job, tear_entries: Option<usize>) {
        if let Some(snap) = &job.snapshot {
            if tear_entries.is_some() {
                return;
            }
            self.entries.clear();
            self.snapshot = Some(snap.clone());
        }
        let take = tear_entries
            .unwrap_or(job.entries.len())
            .min(job.entries.len());
        if let Some(first) = job.entries.first() {
            let first_index = first.index;
            self.entries.retain(|e| e.index < first_index);
            let expected = self.entries.last().map_or_else(
                || self.snapshot.as_ref().map_or(0, |s| s.meta.index),
                |e| e.index,
            ) + 1;
            assert_eq!(first_index, expected, "disk write leaves a gap");
            self.entries.extend(job.entries[..take].iter().cloned());
        }
        if tear_entries.is_none()
            && let Some(hs) = job.hard_state
        {
            self.hard_state = hs;
        }
    }

    fn restored(&self) -> Restored {
        Restored {
            hard_state: self.hard_state,
            snapshot: self
                .snapshot
                .as_ref()
                .map(|s| s.meta.clone())
                .unwrap_or_default(),
            snapshot_data: self.snapshot.as_ref().map(|s| s.data.clone()),
            entries: self.entries.clone(),
        }
    }
}

/// One Ready in the driver's pipeline.
#[derive(Debug)]
pub(crate) struct Job {
    number: u64,
    must_persist: bool,
    hard_state: Option<HardState>,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
    after: Vec<Message>,
    done_at: u64,
}

/// One replica of one group on one node, with its disk and state machine.
pub(crate) struct Host {
    pub id: ReplicaId,
    pub replica: Option<Replica>,
    pub disk: Disk,
    pub applier: Applier<KvStore>,
    jobs: VecDeque<Job>,
    /// Markers of commands applied into this state (client, seq), to catch duplicates.
    pub markers: HashSet<(u64, u64)>,
    proposals: BTreeMap<Index, (Term, u64, u64)>,
    /// Registrations proposed here: index -> (term, the client's position in `World::clients`).
    registrations: BTreeMap<Index, (Term, usize)>,
    /// Commands this follower forwarded to its leader, (client, seq): acknowledged when this
    /// replica applies them, whatever their index.
    forwarded: HashSet<(u64, u64)>,
    reads: Vec<(u64, Index)>,
    snapshot_every: u64,
    /// Set when the group's configuration no longer holds this replica (ms).
    removed_since: Option<u64>,
}

pub(crate) struct Node {
    pub up: bool,
    restart_at: u64,
    /// A crash scheduled at this ms (while faults are on).
    crash_at: Option<u64>,
    tick_period_ms: u64,
    next_tick_at: u64,
    pub hosts: BTreeMap<GroupId, Host>,
}

struct Client {
    /// The session's client id (the index of its registration), once registered.
    id: Option<u64>,
    /// When the last registration was proposed (ms).
    register_sent: Option<u64>,
    group: GroupId,
    next_seq: u64,
    inflight: BTreeMap<u64, (String, Bytes, u64)>,
    guess: usize,
    next_action_at: u64,
}

struct PendingRead {
    group: GroupId,
    key: String,
    acked_count: usize,
    issued_at: u64,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: u64,
    seq: u64,
}

pub(crate) struct World {
    opts: SimOptions,
    rng: ChaCha8Rng,
    now: u64,
    pub nodes: Vec<Node>,
    network: BinaryHeap<Reverse<(InFlight, usize)>>,
    messages: BTreeMap<usize, (usize, GroupId, Message)>,
    message_seq: usize,
    blocked: BTreeSet<(usize, usize)>,
    /// Nodes cut off from everyone until the given ms.
    isolated_until: BTreeMap<usize, u64>,
    clients: Vec<Client>,
    /// Acknowledged markers per (group, key), in acknowledgement order.
    acked: BTreeMap<(GroupId, String), Vec<(u64, u64)>>,
    reads: BTreeMap<u64, PendingRead>,
    read_ctx: u64,
    incarnations: BTreeMap<GroupId, u32>,
    pub history: History,
    report: SimReport,
    trace: Trace,
    faults_on: bool,
}

impl World {
    fn new(seed: u64, opts: SimOptions) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let verbose = std::env::var_os("FLEET_SIM_VERBOSE").is_some();
        let mut nodes: Vec<Node> = (0..opts.nodes)
            .map(|_| Node {
                up: true,
                restart_at: 0,
                crash_at: None,
                // Tick-rate skew: 8 to 12 ms per tick, or 9 to 11 ms with lease reads, whose
                // safety assumes tick rates within 25% of each other.
                tick_period_ms: if opts.lease_reads {
                    9 + u64::from(rng.next_u32() % 3)
                } else {
                    8 + u64::from(rng.next_u32() % 5)
                },
                next_tick_at: 1 + u64::from(rng.next_u32() % 10),
                hosts: BTreeMap::new(),
            })
            .collect();
        let mut world_groups = Vec::new();
        for g in 0..opts.groups {
            let group = GroupId(g as u64 + 1);
            let members: Vec<ReplicaId> = (0..opts.group_size)
                .map(|i| ReplicaId::new(((g + i) % opts.nodes) as u64, 0))
                .collect();
            world_groups.push((group, members));
        }
        let mut world = World {
            rng: ChaCha8Rng::seed_from_u64(0),
            now: 0,
            nodes: Vec::new(),
            network: BinaryHeap::new(),
            messages: BTreeMap::new(),
            message_seq: 0,
            blocked: BTreeSet::new(),
            isolated_until: BTreeMap::new(),
            clients: Vec::new(),
            acked: BTreeMap::new(),
            reads: BTreeMap::new(),
            read_ctx: 0,
            incarnations: BTreeMap::new(),
            history: History::default(),
            report: SimReport::default(),
            trace: Trace {
                hash: 0xCBF2_9CE4_8422_2325,
                tail: VecDeque::new(),
                verbose,
            },
            faults_on: true,
            opts,
        };
        for (group, members) in world_groups {
            let conf = Configuration::new(members.iter().copied());
            for m in &members {
                let host = world.new_host(&mut rng, *m, Restored::bootstrap(conf.clone()));
                nodes[m.node.0 as usize].hosts.insert(group, host);
            }
            world.incarnations.insert(group, 0);
            for _ in 0..world.opts.clients_per_group {
                world.clients.push(Client {
                    id: None,
                    register_sent: None,
                    group,
                    next_seq: 1,
                    inflight: BTreeMap::new(),
                    guess: members[0].node.0 as usize,
                    next_action_at: 50,
                });
            }
        }
        world.nodes = nodes;
        world.rng = rng;
        world
    }

    fn replica_config(&self, id: ReplicaId) -> Config {
        let mut cfg = Config::new(id);
        cfg.election_timeout_ticks = 10;
        cfg.heartbeat_interval_ticks = 2;
        cfg.quiesce_after_ticks = if self.opts.quiesce { 6 } else { 0 };
        cfg.lease_reads = self.opts.lease_reads;
        cfg.inflight_messages_max = 4;
        cfg.append_entries_max = self.opts.append_entries_max;
        cfg.pre_vote = self.opts.pre_vote;
        cfg.snapshot_chunk_bytes_max = 64;
        cfg.transfer_timeout_ticks = 10;
        cfg.learner_catchup_lag_max = 4;
        #[cfg(feature = "broken-variants")]
        {
            cfg.broken = self.opts.broken;
        }
        cfg
    }

    fn new_host(&self, rng: &mut ChaCha8Rng, id: ReplicaId, restored: Restored) -> Host {
        let disk = Disk {
            hard_state: restored.hard_state,
            snapshot: None,
            entries: restored.entries.clone(),
        };
        let replica = Replica::new(self.replica_config(id), rng, restored).expect("valid config");
        Host {
            id,
            replica: Some(replica),
            disk,
            applier: Applier::new(self.sessions()),
            jobs: VecDeque::new(),
            markers: HashSet::new(),
            proposals: BTreeMap::new(),
            registrations: BTreeMap::new(),
            forwarded: HashSet::new(),
            reads: Vec::new(),
            snapshot_every: 20 + u64::from(rng.next_u32() % 40),
            removed_since: None,
        }
    }

    fn chance(&mut self, per_mille: u32) -> bool {
        self.rng.next_u32() % 1000 < per_mille
    }

    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.rng.next_u64() % n
    }

    fn trace(&mut self, args: std::fmt::Arguments<'_>) {
        self.trace.line(self.now, args);
    }

    fn run(&mut self) -> Result<(), String> {
        let end = self.opts.fault_ms + self.opts.heal_ms;
        while self.now < end {
            self.now += 1;
            if self.faults_on && self.now >= self.opts.fault_ms {
                self.heal();
            }
            if self.faults_on {
                self.crash_and_restart();
            }
            if self.faults_on && self.now.is_multiple_of(100) {
                self.inject_faults();
            }
            self.tick_nodes();
            self.deliver_messages();
            self.run_clients();
            if self.now.is_multiple_of(50) {
                self.run_operator();
            }
            self.drive_all()?;
            self.complete_jobs()?;
            self.drive_all()?;
            invariants::check_step(self)?;
            if !self.faults_on
                && self.now > self.opts.fault_ms + 1000
                && self.now.is_multiple_of(100)
                && self.recovered()
            {
                self.trace(format_args!(
                    "recovered: every acknowledged command applied on every member"
                ));
                return Ok(());
            }
        }
        Err(format!(
            "liveness: {} ms after the faults stopped, the cluster had not recovered ({})",
            self.opts.heal_ms,
            self.recovery_status()
        ))
    }

    // -------------------------------------------------------------------------------------
    // Faults.

    /// Crashes scheduled in the middle of a write, and restarts that are due.
    fn crash_and_restart(&mut self) {
        for n in 0..self.nodes.len() {
            if self.nodes[n].crash_at.is_some_and(|at| at <= self.now) {
                self.nodes[n].crash_at = None;
                if self.nodes[n].up {
                    self.crash(n);
                }
            } else if !self.nodes[n].up && self.now >= self.nodes[n].restart_at {
                self.restart(n);
            }
        }
    }

    fn may_crash(&self) -> bool {
        let down = self
            .nodes
            .iter()
            .filter(|n| !n.up || n.crash_at.is_some())
            .count();
        down < self.nodes.len() / 2
    }

    fn inject_faults(&mut self) {
        for n in 0..self.nodes.len() {
            let per_mille = self.opts.crash_per_mille;
            if self.nodes[n].up && self.may_crash() && self.chance(per_mille) {
                self.crash(n);
            }
        }
        let per_mille = self.opts.partition_per_mille;
        if self.chance(per_mille) {
            self.blocked.clear();
            match self.below(4) {
                0 => self.trace(format_args!("partition healed")),
                1 => {
                    // Cut one node off, both ways.
                    let n = self.below(self.nodes.len() as u64) as usize;
                    for m in 0..self.nodes.len() {
                        if m != n {
                            self.blocked.insert((n, m));
                            self.blocked.insert((m, n));
                        }
                    }
                    self.trace(format_args!("partition: node {n} isolated"));
                }
                2 => {
                    // One-way: a node can send but not receive, or the other way round.
                    let n = self.below(self.nodes.len() as u64) as usize;
                    let inbound = self.rng.next_u32().is_multiple_of(2);
                    for m in 0..self.nodes.len() {
                        if m != n {
                            self.blocked.insert(if inbound { (m, n) } else { (n, m) });
                        }
                    }
                    self.trace(format_args!(
                        "partition: node {n} one-way ({})",
                        if inbound { "deaf" } else { "mute" }
                    ));
                }
                _ => {
                    // Split into two sides.
                    let side: Vec<bool> = (0..self.nodes.len())
                        .map(|_| self.rng.next_u32().is_multiple_of(2))
                        .collect();
                    for a in 0..self.nodes.len() {
                        for b in 0..self.nodes.len() {
                            if side[a] != side[b] {
                                self.blocked.insert((a, b));
                            }
                        }
                    }
                    self.trace(format_args!("partition: split {side:?}"));
                }
            }
        }
    }

    fn heal(&mut self) {
        self.faults_on = false;
        self.blocked.clear();
        self.isolated_until.clear();
        self.trace(format_args!("faults stop; healing"));
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up {
                self.restart(n);
            }
        }
    }

    fn crash(&mut self, n: usize) {
        self.report.crashes += 1;
        let groups: Vec<GroupId> = self.nodes[n].hosts.keys().copied().collect();
        let mut torn = Vec::new();
        for g in groups {
            let pending = self.nodes[n].hosts[&g]
                .jobs
                .iter()
                .filter(|j| j.must_persist)
                .count();
            // Writes reach the disk in order: a prefix survives, the next may be torn.
            let keep = self.below(pending as u64 + 1) as usize;
            let tear = self.chance(500);
            let tear_len = self.rng.next_u32() as usize;
            let host = self.nodes[n].hosts.get_mut(&g).expect("host");
            let jobs: Vec<Job> = host.jobs.drain(..).filter(|j| j.must_persist).collect();
            for (i, job) in jobs.iter().enumerate() {
                if i < keep {
                    host.disk.write(job, None);
                } else if i == keep && tear && !job.entries.is_empty() {
                    host.disk.write(job, Some(tear_len % job.entries.len()));
                    break;
                } else {
                    break;
                }
            }
            torn.push((g, keep, pending));
            host.replica = None;
            host.proposals.clear();
            host.registrations.clear();
            host.forwarded.clear();
            host.reads.clear();
        }
        self.nodes[n].up = false;
        self.nodes[n].restart_at = self.now + 1 + self.below(self.opts.restart_ms_max);
        self.trace(format_args!("crash node {n} (kept writes {torn:?})"));
        invariants::monotonic::on_crash(self, n);
    }

    fn restart(&mut self, n: usize) {
        let groups: Vec<GroupId> = self.nodes[n].hosts.keys().copied().collect();
        for g in groups {
            let (id, restored, snapshot) = {
                let host = &self.nodes[n].hosts[&g];
                (host.id, host.disk.restored(), host.disk.snapshot.clone())
            };
            let cfg = self.replica_config(id);
            let replica = Replica::new(cfg, &mut self.rng, restored).expect("restart");
            let sessions = self.sessions();
            let host = self.nodes[n].hosts.get_mut(&g).expect("host");
            host.applier = match &snapshot {
                Some(s) => Applier::restore(&s.data, sessions).expect("durable snapshot restores"),
                None => Applier::new(sessions),
            };
            host.markers = markers_of(host.applier.state());
            host.replica = Some(replica);
        }
        self.nodes[n].up = true;
        self.nodes[n].next_tick_at = self.now + 1;
        self.trace(format_args!("restart node {n}"));
    }

    // -------------------------------------------------------------------------------------
    // Time and network.

    fn tick_nodes(&mut self) {
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up || self.nodes[n].next_tick_at > self.now {
                continue;
            }
            self.nodes[n].next_tick_at = self.now + self.nodes[n].tick_period_ms;
            let groups: Vec<GroupId> = self.nodes[n].hosts.keys().copied().collect();
            for g in groups {
                // Node liveness, as the runtime provides it: a quiesced follower whose leader's
                // node is down or cut off from us suspects the leader.
                let suspect = {
                    let replica = self.nodes[n].hosts[&g].replica.as_ref().expect("up");
                    match replica.leader() {
                        Some(l) if replica.is_quiesced() && replica.role() != Role::Leader => {
                            let ln = l.node.0 as usize;
                            !self.nodes[ln].up || self.cut(ln, n)
                        }
                        _ => false,
                    }
                };
                let replica = self.nodes[n]
                    .hosts
                    .get_mut(&g)
                    .expect("host")
                    .replica
                    .as_mut()
                    .expect("up");
                if suspect {
                    replica.suspect_leader();
                }
                replica.tick();
            }
        }
    }

    fn send(&mut self, from_node: usize, group: GroupId, msg: Message) -> Result<(), String> {
        let host = &self.nodes[from_node].hosts[&group];
        invariants::persist_before_speak::check(host, group, &msg)?;
        self.send_unchecked(from_node, group, msg);
        Ok(())
    }

    fn send_unchecked(&mut self, from_node: usize, group: GroupId, msg: Message) {
        let to = msg.to.node.0 as usize;
        if self.faults_on && self.chance(self.opts.drop_per_mille) {
            return;
        }
        let copies = if self.faults_on && self.chance(self.opts.duplicate_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + self.below(self.opts.delay_ms_max);
            self.message_seq += 1;
            let seq = self.message_seq;
            self.messages.insert(seq, (from_node, group, msg.clone()));
            self.network.push(Reverse((
                InFlight {
                    at: self.now + delay,
                    seq: seq as u64,
                },
                to,
            )));
        }
    }

    /// Whether messages from `from` to `to` are lost to a partition.
    fn cut(&self, from: usize, to: usize) -> bool {
        let isolated = |n: usize| {
            self.isolated_until
                .get(&n)
                .is_some_and(|until| self.now < *until)
        };
        self.blocked.contains(&(from, to)) || isolated(from) || isolated(to)
    }

    fn deliver_messages(&mut self) {
        while let Some(Reverse((InFlight { at, seq }, to))) = self.network.peek() {
            if *at > self.now {
                break;
            }
            let (to, seq) = (*to, *seq as usize);
            self.network.pop();
            let (from, group, msg) = self.messages.remove(&seq).expect("message");
            if !self.nodes[to].up || self.cut(from, to) {
                continue;
            }
            let Some(host) = self.nodes[to].hosts.get_mut(&group) else {
                continue;
            };
            if host.id != msg.to {
                continue;
            }
            self.report.messages += 1;
            if self.trace.verbose {
                let line = format!(
                    "{} -> {} {group} t{} {:?}",
                    msg.from, msg.to, msg.term, msg.body
                );
                self.trace(format_args!("{line}"));
            }
            let host = self.nodes[to].hosts.get_mut(&group).expect("host");
            host.replica.as_mut().expect("up").step(msg);
        }
    }

    // -------------------------------------------------------------------------------------
    // The driver: Ready handling, as the runtime does it.

    fn drive_all(&mut self) -> Result<(), String> {
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up {
                continue;
            }
            let groups: Vec<GroupId> = self.nodes[n].hosts.keys().copied().collect();
            for g in groups {
                self.drive(n, g)?;
            }
        }
        Ok(())
    }

    fn drive(&mut self, n: usize, g: GroupId) -> Result<(), String> {
        let disk_delay = 1 + self.below(self.opts.disk_delay_ms_max);
        let host = self.nodes[n].hosts.get_mut(&g).expect("host");
        let replica = host.replica.as_mut().expect("up");
        if !replica.has_ready() {
            return Ok(());
        }
        let rd = replica.take_ready();
        invariants::observe_ready(&mut self.history, g, replica, &rd)?;
        if let Some(ss) = rd.soft_state
            && ss.role == Role::Leader
        {
            self.report.elections += 1;
            let line = format!("{} leads {g} in term {}", replica.id(), ss.term);
            self.trace(format_args!("{line}"));
            // Leaders that die young make the log histories of thesis Figure 3.7 likely.
            if self.faults_on && self.chance(self.opts.isolate_new_leader_per_mille) {
                let until = self.now + 1 + self.below(20) + self.below(500);
                self.isolated_until.insert(n, until);
                self.trace(format_args!("isolate node {n} until {until}ms"));
            }
            if self.faults_on
                && self.may_crash()
                && self.chance(self.opts.crash_new_leader_per_mille)
            {
                let at = self.now + 1 + self.below(40);
                self.nodes[n].crash_at = Some(at);
            }
        }
        let must_persist = rd.must_persist();
        let snapshot = rd.snapshot.clone();
        let job = Job {
            number: rd.number,
            must_persist,
            hard_state: rd.hard_state,
            snapshot: rd.snapshot,
            entries: rd.entries,
            after: rd.messages_after_persist,
            done_at: if must_persist {
                self.now + disk_delay
            } else {
                self.now
            },
        };
        self.nodes[n]
            .hosts
            .get_mut(&g)
            .expect("host")
            .jobs
            .push_back(job);
        if must_persist
            && self.faults_on
            && self.may_crash()
            && self.chance(self.opts.crash_in_write_per_mille)
        {
            // Crash before this write is durable (the job completes no earlier than next ms).
            self.nodes[n].crash_at = Some(self.now + 1);
        }
        for msg in rd.messages {
            self.send(n, g, msg)?;
        }
        // Forwarded commands the leader refused: their clients retry at their next action.
        for r in &rd.refused_forwards {
            let host = self.nodes[n].hosts.get_mut(&g).expect("host");
            if host.forwarded.remove(&(r.client_id, r.seq)) {
                self.report.forwards_refused += 1;
                if let Some(c) = self
                    .clients
                    .iter()
                    .position(|c| c.group == g && c.id == Some(r.client_id))
                    && let Some(e) = self.clients[c].inflight.get_mut(&r.seq)
                {
                    e.2 = self.now.saturating_sub(CLIENT_RETRY_MS);
                }
            }
        }
        // Committed entries are durable on a quorum already: apply them now, in Ready order,
        // before this replica's own write is durable (as the runtime does).
        self.apply_ready(n, g, snapshot, rd.committed_entries, rd.read_states)
    }

    fn complete_jobs(&mut self) -> Result<(), String> {
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up {
                continue;
            }
            let groups: Vec<GroupId> = self.nodes[n].hosts.keys().copied().collect();
            for g in groups {
                loop {
                    let host = self.nodes[n].hosts.get_mut(&g).expect("host");
                    let Some(job) = host.jobs.front() else { break };
                    if job.done_at > self.now {
                        break;
                    }
                    let job = host.jobs.pop_front().expect("front");
                    self.complete_job(n, g, job)?;
                }
            }
        }
        Ok(())
    }

    fn complete_job(&mut self, n: usize, g: GroupId, job: Job) -> Result<(), String> {
        let host = self.nodes[n].hosts.get_mut(&g).expect("host");
        if job.must_persist {
            host.disk.write(&job, None);
        }
        invariants::monotonic::on_durable(self, n, g)?;
        // As the runtime does: a promise that no longer holds is dropped.
        let replica = self.nodes[n].hosts[&g].replica.as_ref().expect("up");
        let kept: Vec<Message> = job
            .after
            .iter()
            .filter(|m| replica.keeps_promise(m))
            .cloned()
            .collect();
        for msg in kept {
            self.send(n, g, msg)?;
        }
        let host = self.nodes[n].hosts.get_mut(&g).expect("host");
        let replica = host.replica.as_mut().expect("up");
        if job.must_persist {
            replica.persisted(job.number);
        }
        self.maybe_snapshot(n, g);
        Ok(())
    }

    /// Restores a snapshot from the leader and applies committed entries, as soon as their Ready
    /// is taken.
    fn apply_ready(
        &mut self,
        n: usize,
        g: GroupId,
        snapshot: Option<Snapshot>,
        committed: Vec<Entry>,
        reads: Vec<ReadState>,
    ) -> Result<(), String> {
        let sessions = self.sessions();
        let host = self.nodes[n].hosts.get_mut(&g).expect("host");
        if let Some(snap) = &snapshot {
            host.applier = Applier::restore(&snap.data, sessions)
                .map_err(|e| format!("snapshot from leader does not restore: {e}"))?;
            host.markers = markers_of(host.applier.state());
            host.replica
                .as_mut()
                .expect("up")
                .snapshot_installed(snap.meta.index);
            self.report.snapshots_installed += 1;
            let line = format!(
                "node {n} {g}: installed snapshot at {} from leader",
                snap.meta.index
            );
            self.trace(format_args!("{line}"));
        }
        for entry in &committed {
            self.apply(n, g, entry)?;
        }
        let host = self.nodes[n].hosts.get_mut(&g).expect("host");
        if let Some(last) = committed.last() {
            host.replica.as_mut().expect("up").applied(last.index);
        }
        host.reads.extend(reads.iter().map(|r| (r.ctx, r.index)));
        self.answer_reads(n, g)?;
        self.maybe_snapshot(n, g);
        Ok(())
    }

    fn apply(&mut self, n: usize, g: GroupId, entry: &Entry) -> Result<(), String> {
        invariants::state_machine_safety::on_apply(&mut self.history, g, n, entry)?;
        let host = self.nodes[n].hosts.get_mut(&g).expect("host");
        let result = host.applier.apply(entry);
        if let Payload::Membership(change) = entry.payload {
            self.report.membership_changes += 1;
            let line = format!("{g} applied {change:?} at {} on node {n}", entry.index);
            self.trace(format_args!("{line}"));
        }
        if let Applied::Registered { client_id } = result {
            let host = self.nodes[n].hosts.get_mut(&g).expect("host");
            if let Some((term, c)) = host.registrations.remove(&entry.index)
                && term == entry.term
                && self.clients[c].id.is_none()
            {
                self.clients[c].id = Some(client_id);
                self.clients[c].next_seq = 1;
                self.clients[c].register_sent = None;
                self.report.registrations += 1;
                self.trace(format_args!("{g}: client {c} registered as {client_id}"));
            }
            return Ok(());
        }
        let Payload::Command(Command {
            session: Some(s),
            data,
        }) = &entry.payload
        else {
            return Ok(());
        };
        let host = self.nodes[n].hosts.get_mut(&g).expect("host");
        if let Applied::Command { result, duplicate } = &result {
            if !duplicate && result.is_ok() {
                invariants::no_duplicate_apply::on_apply(host, g, n, s)?;
            }
            if *duplicate {
                self.report.duplicates_answered += 1;
            }
        }
        let proposal = host.proposals.remove(&entry.index);
        let forwarded = host.forwarded.remove(&(s.client_id, s.seq));
        let proposed_here = proposal.is_some_and(|(term, client, seq)| {
            term == entry.term && client == s.client_id && seq == s.seq
        });
        if (proposed_here || forwarded)
            && let Applied::Command {
                result: Err(SessionError::Expired { client_id }),
                ..
            } = result
            && let Some(c) = self
                .clients
                .iter()
                .position(|c| c.group == g && c.id == Some(client_id))
        {
            // Evicted by other registrations: what is in flight has an unknown outcome (it is
            // never acknowledged), and the client starts over with a new session.
            let client = &mut self.clients[c];
            client.id = None;
            client.inflight.clear();
            client.register_sent = None;
            self.report.sessions_expired += 1;
            self.trace(format_args!(
                "{g}: session {client_id} of client {c} expired"
            ));
            return Ok(());
        }
        if (proposed_here || forwarded)
            && let Applied::Command { result: Ok(_), .. } = result
        {
            if forwarded && !proposed_here {
                self.report.forwarded_acked += 1;
            }
            let client = s.client_id;
            let seq = s.seq;
            let cmd: KvCommand = postcard::from_bytes(data).expect("sim commands decode");
            let KvCommand::Append { key, .. } = cmd else {
                unreachable!()
            };
            self.ack(g, client, seq, key);
        }
        Ok(())
    }

    fn maybe_snapshot(&mut self, n: usize, g: GroupId) {
        if !self.opts.snapshots {
            return;
        }
        let host = self.nodes[n].hosts.get_mut(&g).expect("host");
        // The snapshot replaces the stored log up to its index: only once the writes before it
        // are durable (the runtime's writer keeps the same order).
        if host.jobs.iter().any(|j| j.must_persist) {
            return;
        }
        let replica = host.replica.as_mut().expect("up");
        let applied = host.applier.applied();
        if applied < replica.snapshot_meta().index + host.snapshot_every
            || applied != replica.applied_index()
        {
            return;
        }
        let data = host.applier.snapshot();
        let meta = replica
            .compact(applied, data.clone())
            .expect("compact at applied");
        // Snapshot files are written and fsynced before the log is compacted.
        host.disk.entries.retain(|e| e.index > meta.index);
        let index = meta.index;
        host.disk.snapshot = Some(Snapshot { meta, data });
        self.trace(format_args!(
            "node {n} {g}: snapshot and compaction at {index}"
        ));
    }

    // -------------------------------------------------------------------------------------
    // Clients.

    fn run_clients(&mut self) {
        for c in 0..self.clients.len() {
            if self.clients[c].next_action_at > self.now {
                continue;
            }
            self.clients[c].next_action_at = self.now + 5 + self.below(40);
            if self.clients[c].id.is_none() {
                if self.clients[c]
                    .register_sent
                    .is_none_or(|sent| self.now >= sent + CLIENT_RETRY_MS)
                {
                    self.register(c);
                }
                continue;
            }
            // Now and then a client restarts: it forgets its session and what it had in flight
            // (outcome unknown), and registers anew, which evicts the least recently active
            // session of the group, so that other clients' retries meet `Expired`.
            if self.faults_on && self.chance(5) {
                let client = &mut self.clients[c];
                client.id = None;
                client.inflight.clear();
                client.register_sent = None;
                self.trace(format_args!("client {c} restarts"));
                continue;
            }
            // Retry what timed out, with the same (client, seq).
            let stale: Vec<u64> = self.clients[c]
                .inflight
                .iter()
                .filter(|(_, (_, _, sent))| self.now >= sent + CLIENT_RETRY_MS)
                .map(|(seq, _)| *seq)
                .collect();
            if let Some(&seq) = stale.first() {
                self.propose(c, seq);
                continue;
            }
            let roll = self.below(10);
            if roll < 6 && self.clients[c].inflight.len() < CLIENT_INFLIGHT_MAX && self.faults_on {
                let seq = self.clients[c].next_seq;
                self.clients[c].next_seq += 1;
                let key = format!("k{}", self.below(KEYS_PER_GROUP));
                let marker = marker_bytes(self.clients[c].id.expect("registered"), seq);
                self.clients[c]
                    .inflight
                    .insert(seq, (key, marker, self.now));
                self.propose(c, seq);
            } else if roll < 8 {
                self.read(c);
            }
        }
    }

    fn propose(&mut self, c: usize, seq: u64) {
        let client = &self.clients[c];
        let (group, id, guess) = (client.group, client.id.expect("registered"), client.guess);
        let first_unacked = *client.inflight.keys().next().expect("in flight");
        let (key, marker, _) = client.inflight[&seq].clone();
        self.clients[c].inflight.get_mut(&seq).expect("in flight").2 = self.now;
        let data = postcard::to_stdvec(&KvCommand::Append { key, value: marker }).expect("encode");
        let command = Command {
            session: Some(SessionRef {
                client_id: id,
                seq,
                first_unacked,
            }),
            data: Bytes::from(data),
        };
        let node = &mut self.nodes[guess];
        let Some(host) = node.hosts.get_mut(&group).filter(|_| node.up) else {
            self.clients[c].guess = (guess + 1) % self.opts.nodes;
            return;
        };
        let replica = host.replica.as_mut().expect("up");
        match replica.propose(command.clone()) {
            Ok(index) => {
                host.proposals.insert(index, (replica.term(), id, seq));
            }
            Err(Error::NotLeader { hint: Some(h) }) => {
                // Half the time a follower hands the command to its leader, and the client
                // waits for this replica to apply it.
                let forward = self.rng.next_u64().is_multiple_of(2);
                let node = &mut self.nodes[guess];
                let host = node.hosts.get_mut(&group).expect("host");
                let replica = host.replica.as_mut().expect("up");
                if forward && replica.forward_proposal(command).is_ok() {
                    host.forwarded.insert((id, seq));
                } else {
                    self.clients[c].guess = h.node.0 as usize;
                }
            }
            Err(_) => self.clients[c].guess = (guess + 1) % self.opts.nodes,
        }
    }

    /// Proposes client `c`'s registration where it guesses the leader is.
    fn register(&mut self, c: usize) {
        let (group, guess) = (self.clients[c].group, self.clients[c].guess);
        self.clients[c].register_sent = Some(self.now);
        let node = &mut self.nodes[guess];
        let Some(host) = node.hosts.get_mut(&group).filter(|_| node.up) else {
            self.clients[c].guess = (guess + 1) % self.opts.nodes;
            return;
        };
        let replica = host.replica.as_mut().expect("up");
        match replica.register_client() {
            Ok(index) => {
                host.registrations.insert(index, (replica.term(), c));
            }
            Err(Error::NotLeader { hint: Some(h) }) => self.clients[c].guess = h.node.0 as usize,
            Err(_) => self.clients[c].guess = (guess + 1) % self.opts.nodes,
        }
    }

    /// The session table's bounds: as many sessions as clients, so that every extra
    /// registration (a retried one) evicts a live session and clients see `Expired`.
    fn sessions(&self) -> SessionConfig {
        SessionConfig {
            sessions_max: self.opts.clients_per_group.max(1),
            ..SessionConfig::default()
        }
    }

    fn ack(&mut self, g: GroupId, client: u64, seq: u64, key: String) {
        let Some(c) = self
            .clients
            .iter()
            .position(|c| c.group == g && c.id == Some(client))
        else {
            return;
        };
        if self.clients[c].inflight.remove(&seq).is_none() {
            return;
        }
        self.report.acked += 1;
        self.acked.entry((g, key)).or_default().push((client, seq));
    }

    fn read(&mut self, c: usize) {
        let (group, guess) = (self.clients[c].group, self.clients[c].guess);
        let node = &mut self.nodes[guess];
        let Some(host) = node.hosts.get_mut(&group).filter(|_| node.up) else {
            return;
        };
        let key = format!("k{}", self.rng.next_u64() % KEYS_PER_GROUP);
        self.read_ctx += 1;
        let ctx = self.read_ctx;
        let replica = host.replica.as_mut().expect("up");
        match replica.read_index(ctx) {
            Ok(()) => {
                let acked_count = self.acked.get(&(group, key.clone())).map_or(0, Vec::len);
                self.reads.insert(
                    ctx,
                    PendingRead {
                        group,
                        key,
                        acked_count,
                        issued_at: self.now,
                    },
                );
            }
            Err(Error::NotLeader { hint: Some(h) }) => self.clients[c].guess = h.node.0 as usize,
            Err(_) => {}
        }
    }

    fn answer_reads(&mut self, n: usize, g: GroupId) -> Result<(), String> {
        let host = self.nodes[n].hosts.get_mut(&g).expect("host");
        let applied = host.applier.applied();
        let (ready, waiting): (Vec<_>, Vec<_>) = host
            .reads
            .drain(..)
            .partition(|(_, index)| *index <= applied);
        host.reads = waiting;
        for (ctx, _) in ready {
            let Some(read) = self.reads.remove(&ctx) else {
                continue;
            };
            let host = &self.nodes[n].hosts[&g];
            let KvOutput::Value(value) = host.applier.query(&KvQuery::Get {
                key: read.key.clone(),
            }) else {
                unreachable!()
            };
            let acked = self
                .acked
                .get(&(read.group, read.key.clone()))
                .cloned()
                .unwrap_or_default();
            invariants::read_safety::check(
                &value.unwrap_or_default(),
                &acked[..read.acked_count],
                read.issued_at,
                ctx,
            )?;
            self.report.reads += 1;
        }
        Ok(())
    }

    // -------------------------------------------------------------------------------------
    // The operator: membership changes and leadership transfers.

    fn run_operator(&mut self) {
        let groups: Vec<GroupId> = self.incarnations.keys().copied().collect();
        for g in groups {
            self.destroy_removed(g);
            let Some(leader_node) = (0..self.nodes.len()).find(|&n| {
                self.nodes[n].up
                    && self.nodes[n]
                        .hosts
                        .get(&g)
                        .and_then(|h| h.replica.as_ref())
                        .is_some_and(|r| r.role() == Role::Leader)
            }) else {
                continue;
            };
            if self.faults_on && self.opts.transfers && self.chance(40) {
                let replica = self.nodes[leader_node].hosts[&g]
                    .replica
                    .as_ref()
                    .expect("up");
                let voters: Vec<ReplicaId> = replica
                    .config()
                    .voters
                    .iter()
                    .copied()
                    .filter(|v| *v != replica.id())
                    .collect();
                if !voters.is_empty() {
                    let to = voters[self.below(voters.len() as u64) as usize];
                    let replica = self.nodes[leader_node]
                        .hosts
                        .get_mut(&g)
                        .expect("host")
                        .replica
                        .as_mut()
                        .expect("up");
                    if replica.transfer_leader(to).is_ok() {
                        self.report.transfers += 1;
                        self.trace(format_args!("{g}: transfer leadership to {to}"));
                    }
                }
            }
            if self.faults_on && self.opts.membership && self.chance(150) {
                self.membership_step(g, leader_node);
            }
        }
    }

    fn membership_step(&mut self, g: GroupId, leader_node: usize) {
        let replica = self.nodes[leader_node].hosts[&g]
            .replica
            .as_ref()
            .expect("up");
        let conf = replica.config().clone();
        let last = replica.last_index();
        let change = if let Some(&learner) = conf.learners.iter().next() {
            let caught_up = replica
                .progress(learner)
                .is_some_and(|p| p.match_index + 2 >= last);
            if !caught_up {
                return;
            }
            MembershipChange::Promote(learner)
        } else if conf.voters.len() > self.opts.group_size {
            let voters: Vec<ReplicaId> = conf.voters.iter().copied().collect();
            MembershipChange::Remove(voters[self.below(voters.len() as u64) as usize])
        } else {
            let free: Vec<usize> = (0..self.nodes.len())
                .filter(|&n| self.nodes[n].up && !self.nodes[n].hosts.contains_key(&g))
                .collect();
            if free.is_empty() {
                return;
            }
            let n = free[self.below(free.len() as u64) as usize];
            let incarnation = self.incarnations.get_mut(&g).expect("group");
            *incarnation += 1;
            let id = ReplicaId::new(n as u64, *incarnation);
            let mut rng = ChaCha8Rng::seed_from_u64(self.rng.next_u64());
            let host = self.new_host(&mut rng, id, Restored::empty());
            self.nodes[n].hosts.insert(g, host);
            MembershipChange::AddLearner(id)
        };
        let replica = self.nodes[leader_node]
            .hosts
            .get_mut(&g)
            .expect("host")
            .replica
            .as_mut()
            .expect("up");
        let result = replica.change_membership(change);
        let line = format!("{g}: propose {change:?}: {result:?}");
        self.trace(format_args!("{line}"));
    }

    /// Replicas that the group's committed configuration no longer holds are destroyed a while
    /// later, as the runtime's reconciler does; until then they may try to disrupt the group.
    /// The configuration is a leader's whose whole log is committed: a leader's latest
    /// configuration may still be uncommitted, and a later leader may hold a different one (one
    /// that adds a replica this leader's log never had).
    fn destroy_removed(&mut self, g: GroupId) {
        let committed_conf = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].up)
            .filter_map(|n| self.nodes[n].hosts.get(&g).and_then(|h| h.replica.as_ref()))
            .filter(|r| r.role() == Role::Leader && r.committed() >= r.last_index())
            .map(|r| r.config().clone())
            .next();
        let Some(conf) = committed_conf else { return };
        for n in 0..self.nodes.len() {
            let now = self.now;
            let up = self.nodes[n].up;
            let Some(host) = self.nodes[n].hosts.get_mut(&g) else {
                continue;
            };
            if conf.contains(host.id) {
                host.removed_since = None;
                continue;
            }
            let since = *host.removed_since.get_or_insert(now);
            if now >= since + 1_000 && up {
                let id = host.id;
                self.nodes[n].hosts.remove(&g);
                self.trace(format_args!("{g}: destroy removed replica {id}"));
            }
        }
    }

    // -------------------------------------------------------------------------------------
    // Liveness.

    fn recovered(&self) -> bool {
        self.recovery_status().is_empty()
    }

    fn recovery_status(&self) -> String {
        let mut problems = String::new();
        for &g in self.incarnations.keys() {
            let leaders: Vec<&Replica> = self
                .nodes
                .iter()
                .filter_map(|n| n.hosts.get(&g).and_then(|h| h.replica.as_ref()))
                .filter(|r| r.role() == Role::Leader)
                .collect();
            let Some(leader) = leaders.iter().max_by_key(|r| r.term()) else {
                let _ = write!(problems, "{g} has no leader; ");
                continue;
            };
            for m in leader.config().members() {
                let host = &self.nodes[m.node.0 as usize].hosts.get(&g);
                let Some(host) = host.filter(|h| h.id == m) else {
                    let _ = write!(problems, "{g} member {m} not hosted; ");
                    continue;
                };
                for ((group, _), markers) in &self.acked {
                    if *group != g {
                        continue;
                    }
                    if let Some(missing) = markers.iter().find(|mk| !host.markers.contains(mk)) {
                        let _ =
                            write!(problems, "{g} member {m} lacks acked command {missing:?}; ");
                        break;
                    }
                }
            }
        }
        problems
    }
}

pub(crate) fn marker_bytes(client: u64, seq: u64) -> Bytes {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&client.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    Bytes::from(b)
}

pub(crate) fn parse_markers(value: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    value.chunks_exact(16).map(|c| {
        (
            u64::from_be_bytes(c[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(c[8..].try_into().expect("8 bytes")),
        )
    })
}

fn markers_of(state: &KvStore) -> HashSet<(u64, u64)> {
    state
        .iter()
        .flat_map(|(_, v)| parse_markers(v).collect::<Vec<_>>())
        .collect()
}
