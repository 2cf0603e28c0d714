//! The node's workers: a few tasks that drive every group hosted on this node, each the groups
//! of its shard (`shard_of`). Worker 0 also holds the meta group (the catalog) and the node-wide
//! duties: joining, catalog changes, meta membership, peer liveness.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use fleet_core::{
    Applied, Body, Command, Config, Configuration, Entry, Error as CoreError, GroupId, Index,
    Message, Ready, Replica, ReplicaId, Restored, Role, SessionError, SessionRef, Snapshot, Term,
};
use rand_core::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::leader_cache::{self, LeaderCache};
use super::rpc::{self, Directory, Rpc};
use super::{FleetError, Request, Settings};
use crate::catalog::{
    Catalog, CatalogCommand, CatalogOutput, GroupEntry, GroupState, META_GROUP, NodeEntry,
};
use crate::metrics as m;
use crate::registry::{HostedMachine, Registry, state_of};
use crate::storage::{GroupWrite, RecoveredGroup, Store, StoreConfig, WriteBatch, WriteOutcome};
use crate::transport::{InboundFrame, Transport};

/// The kind name of the meta group's state machine, the catalog.
pub(crate) const META_KIND: &str = "fleet.catalog";

/// Callers waiting for a group to serve, at most.
const SERVING_WAITERS_MAX: usize = 65_536;
/// Storage batches in flight at once; the loop stops gathering Readys beyond it.
const BATCHES_IN_FLIGHT_MAX: usize = 4;

/// A node's view of itself and the groups, for `status()`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// This node's name.
    pub node: String,
    /// The node leading the meta group (the catalog), as this node knows it.
    pub meta_leader: Option<String>,
    /// The nodes of the catalog.
    pub nodes: Vec<NodeStatus>,
    /// The groups of the catalog, with what this node knows of them.
    pub groups: Vec<GroupStatus>,
}

/// A node's own state, cheap to take (for health and readiness probes).
#[derive(Clone, Debug, Serialize)]
pub struct NodeHealth {
    /// This node's name.
    pub node: String,
    /// Its state in its copy of the catalog; `None` before it holds a catalog that lists it.
    pub state: Option<placement::NodeState>,
    /// Whether it holds a copy of the catalog (it activated or joined).
    pub has_catalog: bool,
    /// The node leading the meta group, as this node knows it.
    pub meta_leader: Option<String>,
    /// Replicas hosted here.
    pub groups_hosted: usize,
    /// Why the node loop stopped, if its storage failed.
    pub failed: Option<String>,
}

/// One node as the catalog knows it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    /// The catalog entry.
    pub entry: NodeEntry,
    /// Whether this node can reach it (always true for itself).
    pub reachable: bool,
}

/// One group as this node knows it.
#[derive(Clone, Debug, Serialize)]
pub struct GroupStatus {
    /// The catalog entry.
    pub entry: GroupEntry,
    /// The leader this node knows of.
    pub leader: Option<String>,
    /// The voters, by node name: this node's replica's configuration if it hosts one, else the
    /// initial members from the catalog. A node the catalog does not name shows as `#<id>`.
    pub members: Vec<String>,
    /// The learners (non-voting members) of this node's replica's configuration.
    pub learners: Vec<String>,
    /// This node's replica's role (`leader`, `follower`, `candidate`, `pre-candidate`), or
    /// `None` if it hosts no replica of the group.
    pub role: Option<String>,
    /// The term of this node's replica (0 if it hosts none).
    pub term: Term,
    /// The commit index of this node's replica.
    pub commit: Index,
    /// The applied index of this node's replica.
    pub applied: Index,
    /// Whether the group has a leader this node knows of and is not stopped here.
    pub available: bool,
    /// Why it is stopped on this node, if it is.
    pub stopped: Option<String>,
}

/// A proposal waiting to be applied.
struct Waiter {
    term: Term,
    reply: oneshot::Sender<Result<Bytes, FleetError>>,
}

/// A command this follower handed to its leader (`Replica::forward_proposal`), answered when this
/// replica applies an entry with its session, whatever its index.
struct Forwarded {
    /// The tick after which the caller is told to retry (see [`FORWARD_TIMEOUT_DIVISOR`]).
    expires: u64,
    reply: oneshot::Sender<Result<Bytes, FleetError>>,
    /// An earlier copy of the command was forwarded from here too, so a refusal may be that
    /// copy's: it then says nothing of this one, and the caller is told to retry (same session,
    /// applied once) rather than that the command was refused.
    retried: bool,
}

/// A forwarded command not applied here within an election timeout over this divisor is
/// answered `NotLeader`, and the caller retries with the same session (applied once). The leader
/// refuses what it cannot take (`ProposeRefused`), but the refusal, like the command, may be lost.
const FORWARD_TIMEOUT_DIVISOR: u32 = 4;

/// A read waiting for its ReadIndex confirmation, then for the applied index to reach it.
struct ReadWaiter {
    what: Read,
    index: Option<Index>,
    reply: oneshot::Sender<Result<Bytes, FleetError>>,
}

/// What a confirmed read does.
enum Read {
    /// Runs this query on the group's state machine.
    Query(Bytes),
    /// On the catalog: a name this node's catalog does not know. Answered `NoSuchGroup` only if
    /// the catalog, applied up to a confirmed read index, still does not know it (a replica
    /// that lags, or one replaying its log after a restart, would deny a group that exists).
    /// If it knows it by then, the caller is told to retry (`NotLeader`): the node has the
    /// group's entry now.
    Missing(String),
}

/// One hosted group.
struct Slot {
    name: String,
    replica: Replica,
    machine: Box<dyn HostedMachine>,
    waiters: BTreeMap<Index, Waiter>,
    reads: BTreeMap<u64, ReadWaiter>,
    /// Commands forwarded to the leader, by session (client id, seq).
    forwarded: HashMap<(u64, u64), Forwarded>,
    stopped: Option<String>,
    /// Catalog commands proposed by this node, answered when applied.
    catalog_waiters: BTreeMap<Index, (Term, oneshot::Sender<Result<CatalogOutput, FleetError>>)>,
}

impl Slot {
    fn new(name: String, replica: Replica, machine: Box<dyn HostedMachine>) -> Self {
        Slot {
            name,
            replica,
            machine,
            waiters: BTreeMap::new(),
            reads: BTreeMap::new(),
            forwarded: HashMap::new(),
            stopped: None,
            catalog_waiters: BTreeMap::new(),
        }
    }
}

/// What a Ready leaves for after its write (or an earlier one) is durable.
struct Stash {
    group: GroupId,
    number: u64,
    must_persist: bool,
    after: Vec<Message>,
}

struct Batch {
    id: u64,
    durable: bool,
    stashes: Vec<Stash>,
}

/// A caller waiting for a group, by name, to serve here, until a deadline.
type ServingWaiter = (String, Instant, oneshot::Sender<Result<(), FleetError>>);

/// The node's network side, when it has one (every worker holds a clone).
#[derive(Clone)]
pub(crate) struct Net {
    pub transport: Transport<Message>,
    pub directory: Arc<Directory>,
    pub leader_cache: Arc<LeaderCache>,
    /// The address peers dial to reach this node.
    pub advertise: String,
}

async fn next_frame(
    frames: &mut Option<mpsc::Receiver<InboundFrame<Message>>>,
) -> Option<InboundFrame<Message>> {
    match frames {
        Some(f) => f.recv().await,
        None => std::future::pending().await,
    }
}

/// The worker that drives group `g` among `workers`: the meta group is always worker 0's.
pub(crate) fn shard_of(g: GroupId, workers: usize) -> usize {
    if g == META_GROUP || workers <= 1 {
        0
    } else {
        (g.0 % workers as u64) as usize
    }
}

/// Splits the transport's frames by worker: each worker gets the messages for its groups, one
/// frame per inbound frame that has some. The queues are bounded, so a slow worker slows the
/// transport (backpressure), as a slow single loop would.
pub(crate) async fn demux(
    mut frames: mpsc::Receiver<InboundFrame<Message>>,
    to: Vec<mpsc::Sender<InboundFrame<Message>>>,
) {
    let n = to.len();
    while let Some(frame) = frames.recv().await {
        let mut parts: Vec<Vec<(GroupId, Message)>> = (0..n).map(|_| Vec::new()).collect();
        for (g, m) in frame.messages {
            parts[shard_of(g, n)].push((g, m));
        }
        for (w, messages) in parts.into_iter().enumerate() {
            if !messages.is_empty() {
                let part = InboundFrame {
                    from: frame.from.clone(),
                    messages,
                };
                // A worker that stopped drops its share; the others go on.
                let _ = to[w].send(part).await;
            }
        }
    }
}

/// What one worker tells another. Unbounded, but bounded by what causes it: requests already
/// admitted by a bounded queue, catalog entries as they apply, suspicions of peers.
pub(crate) enum Control {
    /// Catalog news for the receiving worker's groups (`full`: every one of them, replacing what
    /// it knew; else these changed). `names` and `node_id` come with full news.
    Catalog {
        names: Option<Arc<HashMap<u64, String>>>,
        node_id: Option<u64>,
        groups: Vec<GroupEntry>,
        full: bool,
    },
    /// Peers (by node id) silent for an election timeout: `newly` just now, `all` of them.
    Suspected {
        newly: BTreeSet<u64>,
        all: BTreeSet<u64>,
    },
    /// A request for a group the receiver drives. `routed`: worker 0 looked the group up in the
    /// catalog and sent it here, so it is not sent on again.
    Request { req: Request, routed: bool },
}

/// What the workers of one node share.
pub(crate) struct Workers {
    /// Each worker's control queue.
    pub controls: Vec<mpsc::UnboundedSender<Control>>,
    /// Group names to ids, to route a request to the worker of its group. Worker 0 writes it as
    /// it applies the catalog, after telling the group's worker.
    pub index: dashmap::DashMap<String, GroupId>,
    /// The groups with a replica on this node (so a command can go to it first).
    pub local: dashmap::DashSet<GroupId>,
    /// Per worker: replicas hosted, replicas leading, entries committed but not applied.
    pub hosted: Vec<AtomicU64>,
    pub leading: Vec<AtomicU64>,
    pub lag: Vec<AtomicU64>,
    /// Why the node stopped, once a worker's storage failed: every worker then stops (nothing
    /// more is acknowledged), and health reports it.
    pub failed: std::sync::Mutex<Option<String>>,
}

impl Workers {
    pub(crate) fn new(controls: Vec<mpsc::UnboundedSender<Control>>) -> Self {
        let n = controls.len();
        let zeros = || (0..n).map(|_| AtomicU64::new(0)).collect();
        Workers {
            controls,
            index: dashmap::DashMap::new(),
            local: dashmap::DashSet::new(),
            hosted: zeros(),
            leading: zeros(),
            lag: zeros(),
            failed: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.controls.len()
    }

    /// The worker that drives the named group (worker 0, which holds the catalog, for a name
    /// not indexed yet).
    pub(crate) fn of_name(&self, name: &str) -> usize {
        self.index
            .get(name)
            .map_or(0, |g| shard_of(*g, self.count()))
    }

    /// Whether this node hosts a replica of the named group.
    pub(crate) fn hosts(&self, name: &str) -> bool {
        self.index
            .get(name)
            .is_some_and(|g| self.local.contains(&*g))
    }

    fn sum(v: &[AtomicU64]) -> u64 {
        v.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }
}

pub(crate) struct Driver {
    name: String,
    /// This worker's index (0 holds the meta group).
    shard: usize,
    workers: Arc<Workers>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    /// The catalog entries of this worker's groups, by name (worker 0 sends them).
    entries: HashMap<String, GroupEntry>,
    node_id: Option<u64>,
    settings: Settings,
    registry: Arc<Registry>,
    store: Arc<Store>,
    rng: rand_chacha::ChaCha8Rng,
    slots: HashMap<GroupId, Slot>,
    /// Groups that are not quiesced: the only ones ticked.
    awake: BTreeSet<GroupId>,
    /// Groups that may have a Ready.
    dirty: BTreeSet<GroupId>,
    batches: VecDeque<Batch>,
    next_batch: u64,
    done_tx: mpsc::UnboundedSender<(u64, Result<WriteOutcome, FleetError>)>,
    done_rx: mpsc::UnboundedReceiver<(u64, Result<WriteOutcome, FleetError>)>,
    next_read: u64,
    /// New replicas' registrations and bootstraps: written before the next pass's Readys of the
    /// same batch, in its commit.
    creates: Vec<(GroupId, ReplicaId, String)>,
    extra_writes: Vec<GroupWrite>,
    /// New replicas in the batch being gathered (at most `NEW_REPLICAS_PER_BATCH_MAX`).
    new_in_batch: usize,
    /// Groups placed here wait to be hosted because a batch had no room for more new replicas;
    /// a later tick hosts them.
    hosting_pending: bool,
    /// Local snapshots: written first in the next batch. The store takes a snapshot only ahead
    /// of its group's other writes in a batch, and the entries it covers are in earlier batches.
    snapshot_writes: Vec<GroupWrite>,
    net: Option<Net>,
    /// This worker's share of the frames peers send.
    frames: Option<mpsc::Receiver<InboundFrame<Message>>>,
    /// Messages to send at the end of this round, by destination node.
    outbox: HashMap<String, Vec<(GroupId, Message)>>,
    /// Node names by id, from the catalog.
    names: HashMap<u64, String>,
    /// Peers not heard from for an election timeout.
    suspected: BTreeSet<String>,
    /// The tick at which each peer was last sent a frame.
    last_sent: HashMap<String, u64>,
    /// Desired leaders of new groups campaign a few ticks after creating their replica, so the
    /// other members have created theirs.
    pending_campaigns: Vec<(GroupId, u64)>,
    /// When forwarded commands expire, in order: (tick, group, session). An entry whose command
    /// was answered since is skipped. At most `Settings::requests_queued_max` entries: beyond,
    /// commands go to their leaders as requests.
    forward_expiry: VecDeque<(u64, GroupId, (u64, u64))>,
    ticks: u64,
    /// Callers waiting for a group (by name) to serve here.
    serving_waiters: Vec<ServingWaiter>,
    /// A joining node's activate, answered when the catalog lists it.
    joined_waiter: Option<(Instant, oneshot::Sender<Result<(), FleetError>>)>,
    /// Catalog commands waiting for this node's meta replica to lead.
    catalog_queue: VecDeque<(
        CatalogCommand,
        oneshot::Sender<Result<CatalogOutput, FleetError>>,
    )>,
}

impl Driver {
    /// Opens storage and rebuilds every hosted group, each in the worker of its shard (blocking:
    /// run it off the async threads). `frames` holds one receiver per worker when there is a
    /// network; `controls` one receiver per worker, matching `workers.controls`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        name: String,
        data_dir: PathBuf,
        settings: Settings,
        registry: Registry,
        net: Option<Net>,
        frames: Vec<mpsc::Receiver<InboundFrame<Message>>>,
        workers: Arc<Workers>,
        controls: Vec<mpsc::UnboundedReceiver<Control>>,
        faults: Option<Arc<crate::storage::StorageFaults>>,
    ) -> Result<(Vec<Driver>, Arc<Store>), FleetError> {
        let mut config = StoreConfig::new(&data_dir);
        config.redb_cache_bytes = settings.storage_cache_bytes;
        config.wal_bytes_max = settings.storage_wal_bytes_max;
        let (store, report) = match faults {
            Some(faults) => Store::open_with_faults(config, faults)?,
            None => Store::open(config)?,
        };
        info!(node = %name, groups = report.groups.len(), elapsed = ?report.elapsed, workers = workers.count(), "storage opened");
        let store = Arc::new(store);
        let registry = Arc::new(registry);
        let mut frames = frames.into_iter();
        let mut drivers = Vec::with_capacity(workers.count());
        for (shard, control_rx) in controls.into_iter().enumerate() {
            let (done_tx, done_rx) = mpsc::unbounded_channel();
            let seed = {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write(name.as_bytes());
                h.write_usize(shard);
                h.finish()
            };
            drivers.push(Driver {
                name: name.clone(),
                shard,
                workers: workers.clone(),
                control_rx,
                entries: HashMap::new(),
                node_id: None,
                settings: settings.clone(),
                registry: registry.clone(),
                store: store.clone(),
                rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
                slots: HashMap::new(),
                awake: BTreeSet::new(),
                dirty: BTreeSet::new(),
                batches: VecDeque::new(),
                next_batch: 1,
                done_tx,
                done_rx,
                next_read: 1,
                creates: Vec::new(),
                extra_writes: Vec::new(),
                new_in_batch: 0,
                hosting_pending: false,
                snapshot_writes: Vec::new(),
                catalog_queue: VecDeque::new(),
                net: net.clone(),
                frames: frames.next(),
                outbox: HashMap::new(),
                names: HashMap::new(),
                suspected: BTreeSet::new(),
                last_sent: HashMap::new(),
                pending_campaigns: Vec::new(),
                forward_expiry: VecDeque::new(),
                ticks: 0,
                serving_waiters: Vec::new(),
                joined_waiter: None,
            });
        }
        for group in &report.groups {
            drivers[shard_of(group.group, workers.count())].recover(group)?;
        }
        let control = &mut drivers[0];
        if control.slots.contains_key(&META_GROUP) {
            control.node_id = control
                .catalog()
                .and_then(|c| c.node(&control.name))
                .map(|n| n.id);
            // What the recovered catalog places here (the rest of its log replays later).
            control.publish_catalog(None);
        }
        Ok((drivers, store))
    }

    fn replica_config(&self, id: ReplicaId) -> Config {
        let mut cfg = Config::new(id);
        cfg.election_timeout_ticks = self.settings.election_timeout_ticks;
        cfg.heartbeat_interval_ticks = self.settings.heartbeat_interval_ticks;
        cfg.quiesce_after_ticks = self.settings.quiesce_after_ticks;
        cfg
    }

    fn machine(
        &self,
        kind: &str,
        snapshot: Option<&[u8]>,
    ) -> Result<Box<dyn HostedMachine>, FleetError> {
        if kind == META_KIND {
            let mut meta = Registry::new(self.settings.sessions);
            meta.register::<Catalog>(META_KIND);
            return meta
                .create(META_KIND, snapshot)
                .expect("registered")
                .map_err(|e| FleetError::Storage(e.to_string()));
        }
        self.registry
            .create(kind, snapshot)
            .ok_or_else(|| FleetError::UnknownKind(kind.to_string()))?
            .map_err(|e| FleetError::Storage(e.to_string()))
    }

    fn recover(&mut self, g: &RecoveredGroup) -> Result<(), FleetError> {
        let snapshot = self.store.read_snapshot(g.group)?;
        let entries = if g.last_index >= g.first_index {
            self.store
                .entries(g.group, g.first_index, g.last_index + 1, usize::MAX)?
        } else {
            Vec::new()
        };
        let machine = self.machine(&g.replica.kind, snapshot.as_ref().map(|s| s.data.as_ref()))?;
        let restored = Restored {
            hard_state: g.hard_state,
            snapshot: snapshot
                .as_ref()
                .map(|s| s.meta.clone())
                .unwrap_or_default(),
            snapshot_data: snapshot.map(|s| s.data),
            entries,
        };
        let cfg = self.replica_config(g.replica.replica);
        let replica = Replica::new(cfg, &mut self.rng, restored)
            .map_err(|e| FleetError::Config(e.to_string()))?;
        self.slots
            .insert(g.group, Slot::new(String::new(), replica, machine));
        self.workers.local.insert(g.group);
        self.awake.insert(g.group);
        self.dirty.insert(g.group);
        Ok(())
    }

    fn catalog(&self) -> Option<&Catalog> {
        self.slots
            .get(&META_GROUP)
            .and_then(|s| state_of::<Catalog>(s.machine.as_ref()))
    }

    fn group_id(&self, name: &str) -> Result<GroupId, FleetError> {
        if let Some(entry) = self.entries.get(name) {
            if entry.state == GroupState::Removed {
                return Err(FleetError::NoSuchGroup(name.to_string()));
            }
            return Ok(entry.id);
        }
        if self.shard != 0 {
            return Err(FleetError::NoSuchGroup(name.to_string()));
        }
        self.catalog().ok_or(FleetError::NotActive)?;
        Err(FleetError::NoSuchGroup(name.to_string()))
    }

    /// Answers a request for a group that this node's catalog does not know (worker 0 only). The
    /// catalog here may lag (a follower, or a replica replaying its log after a restart), so the
    /// answer is "no such group" only after a linearizable read of the catalog confirms it (see
    /// [`Read::Missing`]). Only the meta leader can confirm; elsewhere the caller is sent to it.
    fn confirm_missing(&mut self, name: &str, reply: oneshot::Sender<Result<Bytes, FleetError>>) {
        let meta_leader = self.meta_leader();
        let Some(slot) = self.slots.get_mut(&META_GROUP) else {
            let _ = reply.send(Err(FleetError::NotActive));
            return;
        };
        let ctx = self.next_read;
        self.next_read += 1;
        match begin_read(slot, ctx, Read::Missing(name.to_string()), reply) {
            Ok(()) => self.wake(META_GROUP),
            Err((CoreError::NotLeader { .. }, reply)) => {
                // Term 0: a guess, which the group's own leader replaces as soon as it is heard.
                let leader = meta_leader.filter(|l| *l != self.name);
                let _ = reply.send(Err(FleetError::NotLeader { leader, term: 0 }));
            }
            Err((e, reply)) => {
                let _ = reply.send(Err(FleetError::Busy(e.to_string())));
            }
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut ticker = tokio::time::interval(self.settings.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown: Option<oneshot::Sender<Result<(), FleetError>>> = None;
        loop {
            // Groups left woken by the last flush (it stops after a few passes) are taken at
            // once, after the other inputs had their turn.
            let again = !self.dirty.is_empty() && self.batches.len() < BATCHES_IN_FLIGHT_MAX;
            tokio::select! {
                biased;
                Some((id, result)) = self.done_rx.recv() => self.write_done(id, result),
                // Before requests: a request routed here by the name index finds the catalog
                // news that preceded it (worker 0 tells the worker, then indexes the name).
                Some(c) = self.control_rx.recv() => self.control(c),
                Some(frame) = next_frame(&mut self.frames) => if shutdown.is_none() {
                    self.receive(frame)
                },
                _ = ticker.tick() => self.tick(),
                req = rx.recv(), if shutdown.is_none() => match req {
                    Some(Request::Shutdown { reply }) => shutdown = Some(reply),
                    Some(req) => self.handle(req),
                    None => break,
                },
                _ = tokio::task::yield_now(), if again => {}
            }
            // Whatever else is waiting joins this round, so that one flush (one write, one frame
            // per peer) serves all of it rather than one input each.
            for _ in 0..INPUTS_PER_ROUND_MAX {
                let mut took = false;
                if let Ok((id, result)) = self.done_rx.try_recv() {
                    self.write_done(id, result);
                    took = true;
                }
                // Every queued control message goes before the next request (see above).
                let mut controls_left = true;
                for _ in 0..INPUTS_PER_ROUND_MAX {
                    match self.control_rx.try_recv() {
                        Ok(c) => {
                            self.control(c);
                            took = true;
                        }
                        Err(_) => {
                            controls_left = false;
                            break;
                        }
                    }
                }
                if let Some(frames) = &mut self.frames
                    && let Ok(frame) = frames.try_recv()
                {
                    if shutdown.is_none() {
                        self.receive(frame);
                    }
                    took = true;
                }
                if shutdown.is_none()
                    && !controls_left
                    && let Ok(req) = rx.try_recv()
                {
                    match req {
                        Request::Shutdown { reply } => shutdown = Some(reply),
                        req => self.handle(req),
                    }
                    took = true;
                }
                if !took {
                    break;
                }
            }
            if self.failure().is_some() {
                break;
            }
            if shutdown.is_some() {
                // Shutting down: no new batches, only those in flight finish.
                if self.batches.is_empty() {
                    break;
                }
                continue;
            }
            self.flush();
        }
        let failure = self.failure();
        for slot in self.slots.values_mut() {
            let err = || {
                failure
                    .clone()
                    .map_or(FleetError::Shutdown, FleetError::Storage)
            };
            for (_, w) in std::mem::take(&mut slot.waiters) {
                let _ = w.reply.send(Err(err()));
            }
            for (_, r) in std::mem::take(&mut slot.reads) {
                let _ = r.reply.send(Err(err()));
            }
            for (_, f) in slot.forwarded.drain() {
                let _ = f.reply.send(Err(err()));
            }
        }
        // The node's handle closes the store once every worker has stopped.
        if let Some(reply) = shutdown {
            let _ = reply.send(failure.map_or(Ok(()), |f| Err(FleetError::Storage(f))));
        }
    }

    /// What another worker sends.
    fn control(&mut self, c: Control) {
        match c {
            Control::Catalog {
                names,
                node_id,
                groups,
                full,
            } => self.learn_catalog(names, node_id, groups, full),
            Control::Suspected { newly, all } => self.suspect(&newly, &all),
            Control::Request { req, routed } => self.handle_routed(req, routed),
        }
    }

    /// Sends a control message to worker `w`. A request sent to a worker that stopped is
    /// dropped, which answers its caller `Shutdown`.
    fn tell(&self, w: usize, c: Control) {
        let _ = self.workers.controls[w].send(c);
    }

    /// Steps the messages of a frame into the replicas they are for. Messages for groups this
    /// node does not host, or for another incarnation, are dropped without creating anything.
    fn receive(&mut self, frame: InboundFrame<Message>) {
        for (g, m) in frame.messages {
            // Until the catalog reaches a joining node, it learns who is who from the senders
            // of the frames it gets (names proven by the transport).
            self.names
                .entry(m.from.node.0)
                .or_insert_with(|| frame.from.to_string());
            let Some(slot) = self.slots.get_mut(&g) else {
                metrics::counter!("fleet_messages_dropped_total", "reason" => "unhosted")
                    .increment(1);
                continue;
            };
            if m.to != slot.replica.id() || slot.stopped.is_some() {
                metrics::counter!("fleet_messages_dropped_total", "reason" => "incarnation")
                    .increment(1);
                continue;
            }
            let mut m = m;
            if let Body::Propose { commands } = &mut m.body {
                // A follower checked them too; the leader is the last line before the log.
                let forwarded = commands.len();
                commands.retain(|c| slot.machine.check_command(&c.data).is_ok());
                if commands.len() < forwarded {
                    warn!(node = %self.name, group = %g, from = %m.from, refused = forwarded - commands.len(), "refusing forwarded commands that do not decode as the group's commands");
                }
                if slot.replica.role() == Role::Leader {
                    metrics::counter!(m::PROPOSALS_TOTAL).increment(commands.len() as u64);
                }
            }
            slot.replica.step(m);
            self.awake.insert(g);
            self.dirty.insert(g);
        }
    }

    /// Tells the callers of forwarded commands not applied in time to retry.
    fn expire_forwarded(&mut self) {
        while let Some(&(at, g, key)) = self.forward_expiry.front() {
            if at > self.ticks {
                break;
            }
            self.forward_expiry.pop_front();
            // Most entries were answered since: only a command still waiting costs a lookup.
            let Some(slot) = self.slots.get_mut(&g) else {
                continue;
            };
            if slot.forwarded.get(&key).is_some_and(|f| f.expires == at) {
                let f = slot.forwarded.remove(&key).expect("present");
                let leader = slot
                    .replica
                    .leader()
                    .and_then(|l| self.names.get(&l.node.0))
                    .cloned();
                let _ = f.reply.send(Err(FleetError::NotLeader { leader, term: 0 }));
            }
        }
    }

    /// Node-level liveness. Every peer hears from this node at least every
    /// `probe_ticks()` (an empty frame when nothing else went its way). A peer silent for
    /// an election timeout is suspected: every group it leads here forgets its leader, and its
    /// surviving voters campaign one after another in placement order, the first a few ticks
    /// from now, so that the votes of all those elections do not split.
    fn liveness(&mut self) {
        let Some(net) = &self.net else { return };
        let timeout = self.settings.tick * self.settings.election_timeout_ticks;
        let mut newly_suspected = Vec::new();
        for peer in net.directory.names() {
            let quiet = self
                .last_sent
                .get(&peer)
                .is_none_or(|t| self.ticks >= t + self.probe_ticks());
            if quiet {
                let _ = net.transport.send(&peer, &[]);
                self.last_sent.insert(peer.clone(), self.ticks);
            }
            let silent = net
                .transport
                .last_heard(&peer)
                .is_none_or(|t| t.elapsed() > timeout);
            if silent {
                if self.suspected.insert(peer.clone()) {
                    newly_suspected.push(peer);
                }
            } else {
                self.suspected.remove(&peer);
            }
        }
        if newly_suspected.is_empty() {
            return;
        }
        let suspected_ids: BTreeSet<u64> = self
            .names
            .iter()
            .filter(|(_, n)| self.suspected.contains(*n))
            .map(|(id, _)| *id)
            .collect();
        let newly: BTreeSet<u64> = self
            .names
            .iter()
            .filter(|(_, n)| newly_suspected.contains(n))
            .map(|(id, _)| *id)
            .collect();
        info!(node = %self.name, peers = ?newly_suspected, "peers silent for an election timeout; electing new leaders for their groups");
        for w in 1..self.workers.count() {
            self.tell(
                w,
                Control::Suspected {
                    newly: newly.clone(),
                    all: suspected_ids.clone(),
                },
            );
        }
        self.suspect(&newly, &suspected_ids);
    }

    /// Peers `newly` were found silent (`all`: every silent peer): the groups of this worker
    /// they lead forget their leader and campaign in placement order.
    fn suspect(&mut self, newly: &BTreeSet<u64>, all: &BTreeSet<u64>) {
        let affected: Vec<(GroupId, u32)> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.stopped.is_none()
                    && s.replica.role() != Role::Leader
                    && s.replica
                        .leader()
                        .is_some_and(|l| newly.contains(&l.node.0))
            })
            .map(|(g, s)| (*g, self.campaign_rank(*g, s, all)))
            .collect();
        if !affected.is_empty() {
            info!(node = %self.name, worker = self.shard, groups = affected.len(), "groups of silent peers campaign in placement order");
        }
        for (g, rank) in affected {
            let delay = LIVENESS_CAMPAIGN_TICKS + rank * LIVENESS_CAMPAIGN_SPACING_TICKS;
            self.slots
                .get_mut(&g)
                .expect("hosted")
                .replica
                .suspect_leader_in(delay);
            self.wake(g);
        }
    }

    /// Ticks between liveness probes to a quiet peer (at least 1).
    fn probe_ticks(&self) -> u64 {
        (u64::from(self.settings.election_timeout_ticks) / LIVENESS_PROBES_PER_TIMEOUT).max(1)
    }

    /// This replica's place among the group's voters that are not suspected, in placement order
    /// (the catalog's member order; the meta group's by node id).
    fn campaign_rank(&self, g: GroupId, slot: &Slot, suspected: &BTreeSet<u64>) -> u32 {
        let me = slot.replica.id();
        let order: Vec<u64> = self
            .entries
            .get(&slot.name)
            .filter(|e| e.id == g)
            .map(|e| e.initial_members.iter().map(|m| m.node.0).collect())
            .unwrap_or_default();
        let voters = slot.replica.config().voters.iter().map(|v| v.node.0);
        campaign_rank(&order, voters, suspected, me.node.0)
    }

    fn tick(&mut self) {
        self.ticks += 1;
        if self.shard == 0 {
            self.liveness();
        }
        let due: Vec<GroupId> = self
            .pending_campaigns
            .iter()
            .filter(|(_, at)| *at <= self.ticks)
            .map(|(g, _)| *g)
            .collect();
        self.pending_campaigns.retain(|(_, at)| *at > self.ticks);
        for g in due {
            if let Some(slot) = self.slots.get_mut(&g)
                && slot.replica.leader().is_none()
            {
                slot.replica.campaign();
                self.wake(g);
            }
        }
        if self.hosting_pending && self.creates.is_empty() && self.extra_writes.is_empty() {
            self.hosting_pending = false;
            self.reconcile_hosting(None);
        }
        if self.ticks.is_multiple_of(META_RECONCILE_TICKS) {
            self.reconcile_meta_membership();
        }
        if self.ticks.is_multiple_of(GAUGE_TICKS) {
            self.record_gauges();
        }
        self.answer_serving_waiters();
        self.expire_forwarded();
        let awake: Vec<GroupId> = self.awake.iter().copied().collect();
        for g in awake {
            let slot = self.slots.get_mut(&g).expect("awake groups are hosted");
            if slot.stopped.is_some() {
                continue;
            }
            slot.replica.tick();
            self.dirty.insert(g);
        }
    }

    /// Gauges that need a pass over every hosted group: taken rarely. Each worker counts its
    /// own groups; worker 0 sets the node's gauges from the sums.
    fn record_gauges(&self) {
        let leading = self
            .slots
            .values()
            .filter(|s| s.replica.role() == Role::Leader)
            .count();
        let lag: u64 = self
            .slots
            .values()
            .map(|s| s.replica.committed().saturating_sub(s.machine.applied()))
            .sum();
        let w = &self.workers;
        w.leading[self.shard].store(leading as u64, Ordering::Relaxed);
        w.lag[self.shard].store(lag, Ordering::Relaxed);
        if self.shard == 0 {
            metrics::gauge!(m::GROUPS_HOSTED).set(Workers::sum(&w.hosted) as f64);
            metrics::gauge!(m::GROUPS_LEADING).set(Workers::sum(&w.leading) as f64);
            metrics::gauge!(m::APPLY_LAG_ENTRIES).set(Workers::sum(&w.lag) as f64);
        }
    }

    /// Whether a group has a leader whose no-op of its term is committed (it serves).
    fn serves(&self, g: GroupId) -> bool {
        self.slots.get(&g).is_some_and(|s| {
            let r = &s.replica;
            r.leader().is_some() && r.term_at(r.committed()) == Some(r.term())
        })
    }

    fn wake(&mut self, g: GroupId) {
        self.awake.insert(g);
        self.dirty.insert(g);
    }

    fn handle(&mut self, req: Request) {
        self.handle_routed(req, false)
    }

    fn handle_routed(&mut self, req: Request, routed: bool) {
        // A request for a group this worker does not know goes to worker 0, which holds the
        // catalog and sends it on to the group's worker (or answers it: no such group).
        let known = req
            .group_name()
            .is_none_or(|name| self.entries.contains_key(name));
        if !known {
            if self.shard != 0 {
                if !routed {
                    self.tell(0, Control::Request { req, routed: false });
                    return;
                }
            } else if let Some(owner) = req
                .group_name()
                .and_then(|name| self.catalog()?.group(name))
                .map(|e| shard_of(e.id, self.workers.count()))
                .filter(|w| *w != 0)
            {
                self.tell(owner, Control::Request { req, routed: true });
                return;
            }
        }
        match req {
            Request::Activate { zone, reply } => self.activate(zone, reply),
            Request::CreateGroup {
                name,
                size,
                kind,
                reply,
            } => {
                if !self.registry.contains(&kind) {
                    let _ = reply.send(Err(FleetError::UnknownKind(kind)));
                    return;
                }
                let (tx, rx) = oneshot::channel();
                self.propose_catalog(CatalogCommand::CreateGroup { name, size, kind }, tx);
                self.await_catalog(rx, reply, |out| match out {
                    CatalogOutput::GroupCreated(entry) => Ok(entry),
                    CatalogOutput::Refused(e) => Err(e.into()),
                    other => Err(FleetError::Codec(format!(
                        "unexpected catalog answer {other:?}"
                    ))),
                });
            }
            Request::RemoveGroup { name, reply } => {
                let (tx, rx) = oneshot::channel();
                self.propose_catalog(CatalogCommand::RemoveGroup { name }, tx);
                self.await_catalog(rx, reply, |out| match out {
                    CatalogOutput::GroupRemoved => Ok(()),
                    CatalogOutput::Refused(e) => Err(e.into()),
                    other => Err(FleetError::Codec(format!(
                        "unexpected catalog answer {other:?}"
                    ))),
                });
            }
            Request::Command {
                group,
                data,
                session,
                reply,
            } => {
                let result = self.propose(&group, Proposal::Command { data, session }, reply);
                if let Err((e, reply)) = result {
                    let _ = reply.send(Err(e));
                }
            }
            Request::Register { group, reply } => {
                let result = self.propose(&group, Proposal::Register, reply);
                if let Err((e, reply)) = result {
                    let _ = reply.send(Err(e));
                }
            }
            Request::Query {
                group,
                data,
                linearizable,
                reply,
            } => self.query(&group, data, linearizable, reply),
            Request::NodeName { id, reply } => {
                let name = self
                    .catalog()
                    .and_then(|c| c.node_by_id(id))
                    .map(|n| n.name.clone());
                let _ = reply.send(name);
            }
            Request::GroupStatus { name, reply } => {
                let status = match self.entries.get(&name) {
                    Some(entry) => Ok(self.group_status(entry)),
                    None if self.shard == 0 && self.catalog().is_none() => {
                        Err(FleetError::NotActive)
                    }
                    None => Err(FleetError::NoSuchGroup(name)),
                };
                let _ = reply.send(status);
            }
            Request::ShardStatus { reply } => {
                let _ = reply.send(self.shard_statuses());
            }
            Request::Health { reply } => {
                let _ = reply.send(self.health());
            }
            Request::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Request::Joined { node_id, reply } => self.joined(node_id, reply),
            Request::AwaitServing {
                group,
                deadline,
                reply,
            } => {
                if self.serving_waiters.len() >= SERVING_WAITERS_MAX {
                    let _ = reply.send(Err(FleetError::Busy(
                        "too many callers wait for groups to serve".into(),
                    )));
                    return;
                }
                let deadline =
                    deadline.unwrap_or_else(|| Instant::now() + self.settings.request_timeout);
                self.serving_waiters.push((group, deadline, reply));
                self.answer_serving_waiters();
            }
            Request::Catalog { cmd, reply } => self.propose_catalog(cmd, reply),
            Request::Shutdown { .. } => unreachable!("handled by run"),
        }
    }

    /// Answers `reply` once the catalog command behind `rx` is applied. Creations then wait for
    /// their group to serve.
    fn await_catalog<T: Send + 'static>(
        &mut self,
        rx: oneshot::Receiver<Result<CatalogOutput, FleetError>>,
        reply: oneshot::Sender<Result<T, FleetError>>,
        map: impl FnOnce(CatalogOutput) -> Result<T, FleetError> + Send + 'static,
    ) {
        // The catalog answer arrives from this loop itself; a small task forwards it, so the loop
        // never blocks on it.
        tokio::spawn(async move {
            let result = match rx.await {
                Ok(Ok(out)) => map(out),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(FleetError::Shutdown),
            };
            let _ = reply.send(result);
        });
    }

    fn activate(&mut self, zone: String, reply: oneshot::Sender<Result<(), FleetError>>) {
        if !self.slots.contains_key(&META_GROUP) {
            // No meta replica: this node founds the fleet. Its meta replica is (1, 0): the
            // catalog gives the first registered node id 1.
            let me = ReplicaId::new(1, 0);
            if let Err(e) = self.create_replica(
                META_GROUP,
                me,
                META_KIND,
                Configuration::new([me]),
                String::new(),
            ) {
                let _ = reply.send(Err(e));
                return;
            }
            let mut key = [0u8; 16];
            self.rng.fill_bytes(&mut key);
            let (tx, _rx) = oneshot::channel();
            self.propose_catalog(CatalogCommand::Init { key }, tx);
        }
        let (tx, rx) = oneshot::channel();
        self.propose_catalog(
            CatalogCommand::RegisterNode {
                name: self.name.clone(),
                // A node without a transport has no address peers can dial.
                address: self
                    .net
                    .as_ref()
                    .map_or_else(|| "unbound".to_string(), |n| n.advertise.clone()),
                zone,
            },
            tx,
        );
        self.await_catalog(rx, reply, |out| match out {
            CatalogOutput::NodeRegistered { .. } => Ok(()),
            CatalogOutput::Refused(e) => Err(e.into()),
            other => Err(FleetError::Codec(format!(
                "unexpected catalog answer {other:?}"
            ))),
        });
    }

    /// The join handshake gave this node its id: host an empty meta replica (a learner to be)
    /// and answer `activate` once the replicated catalog lists this node.
    fn joined(&mut self, node_id: u64, reply: oneshot::Sender<Result<(), FleetError>>) {
        if !self.slots.contains_key(&META_GROUP) {
            let id = ReplicaId::new(node_id, 0);
            let machine = match self.machine(META_KIND, None) {
                Ok(m) => m,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            if let Err(e) = self.store.create_group(META_GROUP, id, META_KIND) {
                let _ = reply.send(Err(e.into()));
                return;
            }
            let replica =
                match Replica::new(self.replica_config(id), &mut self.rng, Restored::empty()) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = reply.send(Err(FleetError::Config(e.to_string())));
                        return;
                    }
                };
            self.slots
                .insert(META_GROUP, Slot::new(String::new(), replica, machine));
            self.wake(META_GROUP);
        }
        self.node_id = Some(node_id);
        self.joined_waiter = Some((Instant::now() + self.settings.request_timeout, reply));
        self.answer_serving_waiters();
    }

    /// Answers the callers waiting for a group to serve here, and a joining node's activate.
    fn answer_serving_waiters(&mut self) {
        let now = Instant::now();
        if let Some((deadline, _)) = &self.joined_waiter {
            let listed = self.catalog().is_some_and(|c| c.node(&self.name).is_some());
            if listed || now >= *deadline {
                let (_, reply) = self.joined_waiter.take().expect("checked");
                let _ = reply.send(if listed {
                    Ok(())
                } else {
                    Err(FleetError::Timeout {
                        group: "(meta)".into(),
                        timeout: self.settings.request_timeout,
                    })
                });
            }
        }
        if self.serving_waiters.is_empty() {
            return;
        }
        let timeout = self.settings.request_timeout;
        for (name, deadline, reply) in std::mem::take(&mut self.serving_waiters) {
            if self.shard == 0
                && !self.entries.contains_key(&name)
                && let Some(owner) = self
                    .catalog()
                    .and_then(|c| c.group(&name))
                    .map(|e| shard_of(e.id, self.workers.count()))
                    .filter(|w| *w != 0)
            {
                // The catalog now has the group, driven by another worker: wait there.
                let req = Request::AwaitServing {
                    group: name,
                    deadline: Some(deadline),
                    reply,
                };
                self.tell(owner, Control::Request { req, routed: true });
                continue;
            }
            let id = self.entries.get(&name).map(|g| g.id);
            if id.is_some_and(|g| self.serves(g)) {
                let _ = reply.send(Ok(()));
            } else if now >= deadline {
                let _ = reply.send(Err(FleetError::Timeout {
                    group: name,
                    timeout,
                }));
            } else {
                self.serving_waiters.push((name, deadline, reply));
            }
        }
    }

    /// On the meta leader: every active node gets a meta replica (a learner), and up to
    /// `META_VOTERS_MAX` caught-up learners become voters. One change at a time.
    fn reconcile_meta_membership(&mut self) {
        let Some(catalog) = self.catalog() else {
            return;
        };
        let active: Vec<u64> = catalog
            .nodes()
            .filter(|n| n.state == placement::NodeState::Active)
            .map(|n| n.id)
            .collect();
        let slot = self
            .slots
            .get(&META_GROUP)
            .expect("catalog implies a meta replica");
        if slot.replica.role() != Role::Leader {
            return;
        }
        let conf = slot.replica.config();
        let last = slot.replica.last_index();
        let change = if let Some(node) = active
            .iter()
            .find(|id| !conf.members().any(|m| m.node.0 == **id))
        {
            Some(fleet_core::MembershipChange::AddLearner(ReplicaId::new(
                *node, 0,
            )))
        } else if conf.voters.len() < META_VOTERS_MAX.min(active.len()) {
            conf.learners
                .iter()
                .find(|l| {
                    slot.replica
                        .progress(**l)
                        .is_some_and(|p| p.match_index + 16 >= last)
                })
                .map(|l| fleet_core::MembershipChange::Promote(*l))
        } else {
            None
        };
        if let Some(change) = change {
            let slot = self.slots.get_mut(&META_GROUP).expect("hosted");
            match slot.replica.change_membership(change) {
                Ok(index) => {
                    info!(node = %self.name, ?change, index, "meta group membership change")
                }
                Err(e) => {
                    tracing::debug!(node = %self.name, ?change, error = %e, "meta membership change deferred")
                }
            }
            self.wake(META_GROUP);
        }
    }

    /// The node believed to lead a group, for a redirect: this node's replica's leader, or for a
    /// group not hosted here, its desired leader.
    fn leader_hint(&self, name: &str, id: GroupId) -> (Option<String>, Term) {
        let (node, term) = match self.slots.get(&id) {
            Some(slot) => (slot.replica.leader().map(|l| l.node.0), slot.replica.term()),
            // A guess: the term is unknown (0), so the cache keeps anything it knows better.
            None => (
                self.entries
                    .get(name)
                    .and_then(|e| e.initial_members.first())
                    .map(|m| m.node.0),
                0,
            ),
        };
        let name = node
            .and_then(|n| self.names.get(&n))
            .filter(|n| **n != self.name)
            .cloned();
        let term = if name.is_some() { term } else { 0 };
        (name, term)
    }

    fn queue_message(&mut self, g: GroupId, m: Message) {
        match self.names.get(&m.to.node.0) {
            Some(name) if self.net.is_some() => match self.outbox.get_mut(name) {
                Some(out) => out.push((g, m)),
                None => {
                    self.outbox.insert(name.clone(), vec![(g, m)]);
                }
            },
            _ => metrics::counter!("fleet_messages_dropped_total", "reason" => "unknown_node")
                .increment(1),
        }
    }

    /// Sends what this round produced: one frame per destination node.
    fn send_outbox(&mut self) {
        let Some(net) = &self.net else {
            self.outbox.clear();
            return;
        };
        for (peer, msgs) in self.outbox.drain() {
            self.last_sent.insert(peer.clone(), self.ticks);
            if let Err(e) = net.transport.send(&peer, &msgs) {
                tracing::debug!(node = %self.name, %peer, error = %e, "messages dropped; Raft retries");
            }
        }
    }

    /// Queues a catalog command; it is proposed as soon as this node's meta replica leads.
    fn propose_catalog(
        &mut self,
        cmd: CatalogCommand,
        reply: oneshot::Sender<Result<CatalogOutput, FleetError>>,
    ) {
        if !self.slots.contains_key(&META_GROUP) {
            let _ = reply.send(Err(FleetError::NotActive));
            return;
        }
        if self.catalog_queue.len() >= CATALOG_QUEUE_MAX {
            let _ = reply.send(Err(FleetError::Busy(
                "too many catalog changes queued".into(),
            )));
            return;
        }
        self.catalog_queue.push_back((cmd, reply));
        self.wake(META_GROUP);
    }

    /// Proposes the queued catalog commands if the meta group leads here.
    fn drain_catalog_queue(&mut self) {
        if self.catalog_queue.is_empty() {
            return;
        }
        let Some(slot) = self.slots.get_mut(&META_GROUP) else {
            return;
        };
        if slot.replica.role() != Role::Leader {
            if slot.replica.role() == Role::Follower
                && slot.replica.leader().is_none()
                && slot.replica.config().voters.len() == 1
                && slot.replica.is_promotable()
            {
                // The only voter need not wait out an election timeout (once: a campaign in
                // progress waits for its own vote to be durable).
                slot.replica.campaign();
                self.dirty.insert(META_GROUP);
            }
            let leader = slot
                .replica
                .leader()
                .and_then(|l| self.names.get(&l.node.0))
                .cloned();
            if let (Some(leader), Some(net)) = (leader, &self.net) {
                // Forward to the meta leader; its answer comes back on the same stream.
                for (cmd, reply) in self.catalog_queue.drain(..) {
                    let transport = net.transport.clone();
                    let leader = leader.clone();
                    tokio::spawn(async move {
                        let result = match transport
                            .request(&leader, &rpc::encode(&Rpc::Catalog { cmd }))
                            .await
                        {
                            Ok(bytes) => rpc::decode::<Result<CatalogOutput, FleetError>>(&bytes)
                                .and_then(|r| r),
                            Err(e) => Err(FleetError::Unreachable {
                                node: leader,
                                reason: e.to_string(),
                            }),
                        };
                        let _ = reply.send(result);
                    });
                }
            }
            return;
        }
        while let Some((cmd, reply)) = self.catalog_queue.pop_front() {
            let data = Bytes::from(postcard::to_stdvec(&cmd).expect("catalog commands encode"));
            match slot.replica.propose(Command {
                session: None,
                data,
            }) {
                Ok(index) => {
                    slot.catalog_waiters
                        .insert(index, (slot.replica.term(), reply));
                }
                Err(CoreError::NotLeader { .. }) | Err(CoreError::TransferInProgress { .. }) => {
                    self.catalog_queue.push_front((cmd, reply));
                    break;
                }
                Err(e) => {
                    let _ = reply.send(Err(FleetError::Busy(e.to_string())));
                }
            }
        }
        self.dirty.insert(META_GROUP);
    }

    fn propose(
        &mut self,
        group: &str,
        proposal: Proposal,
        reply: oneshot::Sender<Result<Bytes, FleetError>>,
    ) -> Result<(), (FleetError, oneshot::Sender<Result<Bytes, FleetError>>)> {
        let id = match self.group_id(group) {
            Ok(id) => id,
            Err(FleetError::NoSuchGroup(_))
                if self.shard == 0 && !self.entries.contains_key(group) =>
            {
                self.confirm_missing(group, reply);
                return Ok(());
            }
            Err(e) => return Err((e, reply)),
        };
        let proposals_max = self.settings.proposals_per_group_max;
        let Some(slot) = self.slots.get_mut(&id) else {
            let hint = self.leader_hint(group, id);
            return Err((
                FleetError::NotLeader {
                    leader: hint.0,
                    term: hint.1,
                },
                reply,
            ));
        };
        if let Some(reason) = &slot.stopped {
            return Err((
                FleetError::GroupStopped {
                    group: group.to_string(),
                    reason: reason.clone(),
                },
                reply,
            ));
        }
        if let Proposal::Command { data, .. } = &proposal
            && let Err(e) = slot.machine.check_command(data)
        {
            return Err((e.into(), reply));
        }
        let waiting = slot.waiters.len() + slot.forwarded.len();
        if waiting >= proposals_max {
            return Err((
                FleetError::Busy(format!("{waiting} proposals wait in group {group:?}")),
                reply,
            ));
        }
        // A follower that knows its leader hands the command over inside the Raft traffic it
        // sends anyway, and answers when it applies it: no request of its own to the leader.
        if self.settings.forward_proposals
            && self.forward_expiry.len() < self.settings.requests_queued_max
            && let Proposal::Command {
                session: Some(s), ..
            } = &proposal
            && slot.replica.role() == Role::Follower
            && slot.replica.leader().is_some()
        {
            let s = *s;
            let Proposal::Command { data, session } = proposal else {
                unreachable!("matched above")
            };
            match slot.replica.forward_proposal(Command { session, data }) {
                Ok(_) => {
                    metrics::counter!(m::PROPOSALS_FORWARDED_TOTAL).increment(1);
                    let timeout = (self.settings.election_timeout_ticks / FORWARD_TIMEOUT_DIVISOR)
                        .max(1) as u64;
                    let expires = self.ticks + timeout;
                    let key = (s.client_id, s.seq);
                    // A retry of a command still forwarded replaces it (its caller has gone).
                    let retried = slot.forwarded.contains_key(&key);
                    slot.forwarded.insert(
                        key,
                        Forwarded {
                            expires,
                            reply,
                            retried,
                        },
                    );
                    self.forward_expiry.push_back((expires, id, key));
                    self.wake(id);
                    return Ok(());
                }
                Err(e) => return Err((FleetError::Busy(e.to_string()), reply)),
            }
        }
        let proposed = match proposal {
            Proposal::Command { data, session } => slot.replica.propose(Command { session, data }),
            Proposal::Register => slot.replica.register_client(),
        };
        match proposed {
            Ok(index) => {
                metrics::counter!(m::PROPOSALS_TOTAL).increment(1);
                let term = slot.replica.term();
                slot.waiters.insert(index, Waiter { term, reply });
            }
            Err(CoreError::NotLeader { .. }) | Err(CoreError::TransferInProgress { .. }) => {
                if slot.replica.role() == Role::Follower
                    && slot.replica.leader().is_none()
                    && slot.replica.config().voters.len() == 1
                    && slot.replica.is_promotable()
                {
                    slot.replica.campaign();
                }
                self.wake(id);
                let hint = self.leader_hint(group, id);
                return Err((
                    FleetError::NotLeader {
                        leader: hint.0,
                        term: hint.1,
                    },
                    reply,
                ));
            }
            Err(e) => return Err((FleetError::Busy(e.to_string()), reply)),
        }
        self.wake(id);
        Ok(())
    }

    fn query(
        &mut self,
        group: &str,
        data: Bytes,
        linearizable: bool,
        reply: oneshot::Sender<Result<Bytes, FleetError>>,
    ) {
        let id = match self.group_id(group) {
            Ok(id) => id,
            Err(FleetError::NoSuchGroup(_))
                if self.shard == 0 && !self.entries.contains_key(group) =>
            {
                self.confirm_missing(group, reply);
                return;
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let Some(slot) = self.slots.get_mut(&id) else {
            let hint = self.leader_hint(group, id);
            let _ = reply.send(Err(FleetError::NotLeader {
                leader: hint.0,
                term: hint.1,
            }));
            return;
        };
        if let Some(reason) = &slot.stopped {
            let _ = reply.send(Err(FleetError::GroupStopped {
                group: group.to_string(),
                reason: reason.clone(),
            }));
            return;
        }
        if !linearizable {
            let _ = reply.send(slot.machine.query(&data).map_err(FleetError::from));
            return;
        }
        let ctx = self.next_read;
        self.next_read += 1;
        match begin_read(slot, ctx, Read::Query(data), reply) {
            Ok(()) => {}
            Err((CoreError::NotLeader { .. }, reply)) => {
                let hint = self.leader_hint(group, id);
                let _ = reply.send(Err(FleetError::NotLeader {
                    leader: hint.0,
                    term: hint.1,
                }));
            }
            Err((e, reply)) => {
                let _ = reply.send(Err(FleetError::Busy(e.to_string())));
            }
        }
        self.wake(id);
    }

    /// One group as this node knows it.
    fn group_status(&self, entry: &GroupEntry) -> GroupStatus {
        let slot = self.slots.get(&entry.id);
        let leader = slot
            .and_then(|s| s.replica.leader())
            .and_then(|l| self.names.get(&l.node.0))
            .cloned();
        let stopped = slot.and_then(|s| s.stopped.clone());
        let name_of = |r: &ReplicaId| {
            self.names
                .get(&r.node.0)
                .cloned()
                .unwrap_or_else(|| format!("#{}", r.node.0))
        };
        let (members, learners) = match slot {
            Some(s) => {
                let conf = s.replica.config();
                (
                    conf.voters.iter().map(name_of).collect(),
                    conf.learners.iter().map(name_of).collect(),
                )
            }
            None => (
                entry.initial_members.iter().map(name_of).collect(),
                Vec::new(),
            ),
        };
        let role = slot.map(|s| {
            match s.replica.role() {
                Role::Leader => "leader",
                Role::Follower => "follower",
                Role::Candidate => "candidate",
                Role::PreCandidate => "pre-candidate",
            }
            .to_string()
        });
        GroupStatus {
            entry: entry.clone(),
            available: leader.is_some() && stopped.is_none() && entry.state == GroupState::Active,
            leader,
            members,
            learners,
            role,
            term: slot.map_or(0, |s| s.replica.term()),
            commit: slot.map_or(0, |s| s.replica.committed()),
            applied: slot.map_or(0, |s| s.machine.applied()),
            stopped,
        }
    }

    /// The status of every group of this worker's shard.
    fn shard_statuses(&self) -> Vec<GroupStatus> {
        self.entries
            .values()
            .map(|e| self.group_status(e))
            .collect()
    }

    /// The meta group's leader, by name.
    fn meta_leader(&self) -> Option<String> {
        let leader = self.slots.get(&META_GROUP)?.replica.leader()?;
        self.catalog()?
            .node_by_id(leader.node.0)
            .map(|n| n.name.clone())
    }

    fn health(&self) -> NodeHealth {
        NodeHealth {
            node: self.name.clone(),
            state: self
                .catalog()
                .and_then(|c| c.node(&self.name))
                .map(|n| n.state),
            has_catalog: self.catalog().is_some(),
            meta_leader: self.meta_leader(),
            groups_hosted: Workers::sum(&self.workers.hosted) as usize,
            failed: self.failure().or_else(|| self.store.failure()),
        }
    }

    fn status(&self) -> Status {
        let Some(catalog) = self.catalog() else {
            return Status {
                node: self.name.clone(),
                meta_leader: None,
                nodes: Vec::new(),
                groups: Vec::new(),
            };
        };
        // The other workers' groups are added by the caller (`Request::ShardStatus`).
        let groups = self.shard_statuses();
        let nodes = catalog
            .nodes()
            .map(|n| NodeStatus {
                reachable: n.name == self.name
                    || self
                        .net
                        .as_ref()
                        .is_some_and(|net| net.transport.is_connected(&n.name)),
                entry: n.clone(),
            })
            .collect();
        Status {
            node: self.name.clone(),
            meta_leader: self.meta_leader(),
            nodes,
            groups,
        }
    }

    /// Creates and durably registers a new replica, starting from `initial` (its bootstrap entry
    /// and hard state go into the next batch, before anything the replica says).
    fn create_replica(
        &mut self,
        g: GroupId,
        id: ReplicaId,
        kind: &str,
        initial: Configuration,
        name: String,
    ) -> Result<(), FleetError> {
        let machine = self.machine(kind, None)?;
        // Registered durably before the replica's first write (the writer keeps order).
        let _registered = self.store.create_group(g, id, kind)?;
        self.start_replica(g, id, machine, initial, name)
    }

    /// Starts a replica already registered in the store from its bootstrap configuration.
    fn start_replica(
        &mut self,
        g: GroupId,
        id: ReplicaId,
        machine: Box<dyn HostedMachine>,
        initial: Configuration,
        name: String,
    ) -> Result<(), FleetError> {
        let restored = Restored::bootstrap(initial);
        let mut write = GroupWrite::new(g);
        write.entries = restored.entries.clone();
        write.hard_state = Some(restored.hard_state);
        self.extra_writes.push(write);
        let replica = Replica::new(self.replica_config(id), &mut self.rng, restored)
            .map_err(|e| FleetError::Config(e.to_string()))?;
        self.slots.insert(g, Slot::new(name, replica, machine));
        self.workers.local.insert(g);
        self.wake(g);
        Ok(())
    }

    /// Worker 0, after the catalog changed: tells every worker the news of its groups (all of
    /// them when `changed` is `None`: after a change of nodes, a restart, a catalog snapshot;
    /// else the groups named), then indexes the names for routing.
    fn publish_catalog(&mut self, changed: Option<Vec<String>>) {
        let Some(catalog) = self.catalog() else {
            return;
        };
        let n = self.workers.count();
        let full = changed.is_none();
        let (names, node_id) = if full {
            if let Some(net) = &self.net {
                net.directory.update(catalog, &self.name);
            }
            let names: HashMap<u64, String> =
                catalog.nodes().map(|n| (n.id, n.name.clone())).collect();
            (
                Some(Arc::new(names)),
                catalog.node(&self.name).map(|n| n.id),
            )
        } else {
            (None, None)
        };
        let entries: Vec<GroupEntry> = match &changed {
            None => catalog.groups().cloned().collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| catalog.group(n))
                .cloned()
                .collect(),
        };
        let index: Vec<(String, GroupId)> =
            entries.iter().map(|e| (e.name.clone(), e.id)).collect();
        let mut parts: Vec<Vec<GroupEntry>> = (0..n).map(|_| Vec::new()).collect();
        for e in entries {
            parts[shard_of(e.id, n)].push(e);
        }
        let mut own = Vec::new();
        for (w, groups) in parts.into_iter().enumerate() {
            if w == self.shard {
                own = groups;
            } else {
                let names = names.clone();
                self.tell(
                    w,
                    Control::Catalog {
                        names,
                        node_id,
                        groups,
                        full,
                    },
                );
            }
        }
        if full {
            let known: std::collections::HashSet<&str> =
                index.iter().map(|(name, _)| name.as_str()).collect();
            self.workers
                .index
                .retain(|name, _| known.contains(name.as_str()));
        }
        for (name, id) in index {
            self.workers.index.insert(name, id);
        }
        self.learn_catalog(names, node_id, own, full);
        if !self.serving_waiters.is_empty() {
            // Callers parked here for groups the catalog did not have yet go to their worker.
            self.answer_serving_waiters();
        }
    }

    /// Catalog news for this worker's groups: remember them, and host what is placed here.
    fn learn_catalog(
        &mut self,
        names: Option<Arc<HashMap<u64, String>>>,
        node_id: Option<u64>,
        groups: Vec<GroupEntry>,
        full: bool,
    ) {
        if let Some(names) = names {
            self.names = (*names).clone();
        }
        if node_id.is_some() {
            self.node_id = node_id;
        }
        if full {
            self.entries.clear();
        }
        let mut changed = Vec::with_capacity(groups.len());
        for entry in groups {
            if let Some(slot) = self.slots.get_mut(&entry.id)
                && slot.name.is_empty()
            {
                // Recovered replicas learn their names from the catalog.
                slot.name = entry.name.clone();
            }
            if !full {
                changed.push(entry.name.clone());
            }
            self.entries.insert(entry.name.clone(), entry);
        }
        self.reconcile_hosting(if full { None } else { Some(changed) });
    }

    /// Hosts the groups of this worker the catalog places on this node that are not hosted yet:
    /// every one (`created` is `None`), or only those named. New replicas are registered in the
    /// store in one commit.
    fn reconcile_hosting(&mut self, created: Option<Vec<String>>) {
        let Some(me) = self.node_id else {
            return;
        };
        let candidates: Vec<GroupEntry> = match &created {
            None => self.entries.values().cloned().collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| self.entries.get(n))
                .cloned()
                .collect(),
        };
        let missing: Vec<(GroupEntry, ReplicaId)> = candidates
            .into_iter()
            .filter(|g| g.state == GroupState::Active && !self.slots.contains_key(&g.id))
            .filter_map(|g| {
                let id = *g.initial_members.iter().find(|m| m.node.0 == me)?;
                Some((g, id))
            })
            .collect();
        if missing.is_empty() {
            return;
        }
        // At most NEW_REPLICAS_PER_BATCH_MAX new replicas ride in one batch; the others wait
        // for a later tick.
        let room = NEW_REPLICAS_PER_BATCH_MAX
            .saturating_sub(self.new_in_batch + self.creates.len() + self.extra_writes.len());
        let mut missing = missing;
        if missing.len() > room {
            missing.truncate(room);
            self.hosting_pending = true;
        }
        let mut ready = Vec::with_capacity(missing.len());
        for (entry, id) in missing {
            match self.machine(&entry.kind, None) {
                Ok(machine) => ready.push((entry, id, machine)),
                Err(e) => {
                    error!(node = %self.name, group = %entry.id, error = %e, "cannot host group placed on this node")
                }
            }
        }
        // Registered in the commit of the next batch, with their bootstraps.
        for (entry, id, _) in &ready {
            self.creates.push((entry.id, *id, entry.kind.clone()));
        }
        for (entry, id, machine) in ready {
            let initial = Configuration::new(entry.initial_members.iter().copied());
            let desired_leader = entry.initial_members[0] == id;
            if let Err(e) = self.start_replica(entry.id, id, machine, initial, entry.name.clone()) {
                error!(node = %self.name, group = %entry.id, error = %e, "cannot host group placed on this node");
                continue;
            }
            if desired_leader {
                // The desired leader campaigns at once if it is the only member, else on the
                // next tick (the other members apply the same catalog entry within a round trip)
                // and again a few ticks later while no leader is known, in case its first vote
                // requests reached members that did not host the group yet.
                if entry.initial_members.len() == 1 {
                    self.slots
                        .get_mut(&entry.id)
                        .expect("just created")
                        .replica
                        .campaign();
                } else {
                    for k in 0..CAMPAIGN_ATTEMPTS {
                        self.pending_campaigns
                            .push((entry.id, self.ticks + 1 + k * CAMPAIGN_RETRY_TICKS));
                    }
                }
            }
        }
    }

    /// Gathers every Ready into one storage batch (group commit): messages go out at once,
    /// committed entries are applied at once (they are durable on a quorum already, see
    /// [`fleet_core::Ready`]), and what promises durable state waits for the batch.
    fn flush(&mut self) {
        self.workers.hosted[self.shard].store(self.slots.len() as u64, Ordering::Relaxed);
        self.drain_catalog_queue();
        if self.batches.len() >= BATCHES_IN_FLIGHT_MAX {
            return;
        }
        let mut batch = WriteBatch::new();
        for w in self.snapshot_writes.drain(..) {
            batch.push(w);
        }
        // The store refuses a batch beyond its commit bounds: stop taking Readys at half of them
        // (one Ready is far smaller) and leave the other groups for the next batch.
        let (entries_max, bytes_max) = {
            let c = self.store.config();
            (c.commit_entries_max / 2, c.commit_bytes_max / 2)
        };
        let (mut entries, mut bytes) = (0usize, 0usize);
        let count = |w: &GroupWrite, entries: &mut usize, bytes: &mut usize| {
            *entries += w.entries.len();
            *bytes += w.entries.iter().map(Entry::size_bytes).sum::<usize>();
        };
        self.new_in_batch = 0;
        let mut stashes = Vec::new();
        // Applying may wake groups (a catalog change hosts new ones); they are taken in the same
        // batch, a bounded number of passes. A new replica's bootstrap goes in before the Readys
        // of the next pass (before its first Ready); local snapshots wait for the next batch.
        for _ in 0..FLUSH_PASSES_MAX {
            self.new_in_batch += self.creates.len();
            batch.creates.append(&mut self.creates);
            for w in self.extra_writes.drain(..) {
                count(&w, &mut entries, &mut bytes);
                batch.push(w);
            }
            if self.dirty.is_empty() || entries >= entries_max || bytes >= bytes_max {
                break;
            }
            let dirty: Vec<GroupId> = std::mem::take(&mut self.dirty).into_iter().collect();
            let mut dirty = dirty.into_iter();
            for g in dirty.by_ref() {
                let before = batch.groups.len();
                self.take_ready(g, &mut batch, &mut stashes);
                if batch.groups.len() > before {
                    count(
                        batch.groups.last().expect("pushed"),
                        &mut entries,
                        &mut bytes,
                    );
                }
                if entries >= entries_max || bytes >= bytes_max {
                    break;
                }
            }
            // Left for the next batch (the loop comes back at once while groups are dirty).
            self.dirty.extend(dirty);
            self.send_outbox();
        }
        if batch.is_empty() && stashes.is_empty() {
            return;
        }
        let id = self.next_batch;
        self.next_batch += 1;
        let durable = batch.is_empty();
        self.batches.push_back(Batch {
            id,
            durable,
            stashes,
        });
        if !durable {
            let entries = batch.entry_count();
            // The store's queue is shared with replica registrations (which do not count against
            // BATCHES_IN_FLIGHT_MAX): when it is full, this waits for the writer to take one
            // request (at most a commit's time). A full queue is backpressure, not a storage
            // failure (it once stopped a node creating 10,000 groups).
            let ticket = match self.store.submit(batch) {
                Ok(t) => t,
                Err(e) => {
                    self.fail(format!("cannot submit a write: {e}"));
                    return;
                }
            };
            let tx = self.done_tx.clone();
            metrics::histogram!(m::STORAGE_BATCH_ENTRIES).record(entries as f64);
            let started = Instant::now();
            tokio::spawn(async move {
                let result = ticket.await.map_err(FleetError::from);
                metrics::histogram!(m::STORAGE_FSYNC_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                let _ = tx.send((id, result));
            });
        } else {
            self.complete_batches();
        }
    }

    /// Takes one group's Ready: its messages are queued, its committed entries applied, its
    /// writes added to `batch` and what must wait for them to `stashes`.
    fn take_ready(&mut self, g: GroupId, batch: &mut WriteBatch, stashes: &mut Vec<Stash>) {
        let Some(slot) = self.slots.get_mut(&g) else {
            return;
        };
        if !slot.replica.has_ready() {
            if slot.replica.is_quiesced() {
                self.awake.remove(&g);
            }
            return;
        }
        let mut rd: Ready = slot.replica.take_ready();
        if let Some(ss) = rd.soft_state
            && let Some(net) = &self.net
            && !slot.name.is_empty()
        {
            match ss.leader.and_then(|l| self.names.get(&l.node.0)) {
                Some(leader) => leader_cache::learn(&net.leader_cache, &slot.name, leader, ss.term),
                None => leader_cache::forget(&net.leader_cache, &slot.name, ss.term),
            }
            if ss.role == Role::Candidate {
                metrics::counter!(m::ELECTIONS_TOTAL).increment(1);
            }
        }
        if rd.soft_state.is_some() && !slot.forwarded.is_empty() {
            // The leader changed (or this replica now leads): commands forwarded to the old one
            // may never commit. Their callers retry with the same session (applied once).
            let leader = slot
                .replica
                .leader()
                .and_then(|l| self.names.get(&l.node.0))
                .cloned();
            for (_, f) in slot.forwarded.drain() {
                let _ = f.reply.send(Err(FleetError::NotLeader {
                    leader: leader.clone(),
                    term: 0,
                }));
            }
        }
        if !rd.refused_forwards.is_empty() {
            let leader = slot
                .replica
                .leader()
                .and_then(|l| self.names.get(&l.node.0))
                .cloned();
            for r in std::mem::take(&mut rd.refused_forwards) {
                let Some(f) = slot.forwarded.remove(&(r.client_id, r.seq)) else {
                    continue;
                };
                let err = if r.busy && !f.retried {
                    FleetError::Busy(format!(
                        "the leader of group {:?} holds too many uncommitted commands; retry later",
                        slot.name
                    ))
                } else {
                    FleetError::NotLeader {
                        leader: leader.clone(),
                        term: 0,
                    }
                };
                let _ = f.reply.send(Err(err));
            }
        }
        if slot.replica.is_quiesced() {
            self.awake.remove(&g);
        }
        let messages = std::mem::take(&mut rd.messages);
        let must_persist = rd.must_persist();
        let snapshot = rd.snapshot.clone();
        let committed = std::mem::take(&mut rd.committed_entries);
        let reads = std::mem::take(&mut rd.read_states);
        let after = std::mem::take(&mut rd.messages_after_persist);
        let number = rd.number;
        if must_persist {
            batch.push(GroupWrite::take_from_ready(g, &mut rd));
        }
        if must_persist || !after.is_empty() {
            stashes.push(Stash {
                group: g,
                number,
                must_persist,
                after,
            });
        }
        for m in messages {
            self.queue_message(g, m);
        }
        self.apply_ready(g, snapshot, committed, reads);
    }

    /// Restores a snapshot from the leader and applies committed entries, in Ready order, as
    /// soon as the Ready is taken.
    fn apply_ready(
        &mut self,
        g: GroupId,
        snapshot: Option<Snapshot>,
        committed: Vec<Entry>,
        reads: Vec<fleet_core::ReadState>,
    ) {
        // What the catalog entries change: groups (by name), or everything.
        let mut catalog_full = g == META_GROUP && snapshot.is_some();
        if let Some(snap) = snapshot
            && let Err(e) = self.machine_for_snapshot(g, &snap)
        {
            self.stop_group(g, format!("snapshot from the leader does not restore: {e}"));
            return;
        }
        let mut catalog_changed = Vec::new();
        let mut last_applied = None;
        let mut starts_serving = false;
        for entry in &committed {
            let slot = self.slots.get_mut(&g).expect("hosted");
            if slot.stopped.is_some() {
                break;
            }
            let applied = match slot.machine.apply(entry) {
                Ok(a) => a,
                Err(e) => {
                    let reason = e.to_string();
                    self.stop_group(g, reason);
                    return;
                }
            };
            last_applied = Some(entry.index);
            if matches!(entry.payload, fleet_core::Payload::Noop) {
                // A leader's first entry of its term: the group may serve from now on.
                starts_serving = true;
            }
            if g == META_GROUP {
                match &entry.payload {
                    fleet_core::Payload::Command(c) => {
                        match postcard::from_bytes::<CatalogCommand>(&c.data) {
                            Ok(CatalogCommand::CreateGroup { name, .. })
                            | Ok(CatalogCommand::RemoveGroup { name }) => {
                                catalog_changed.push(name)
                            }
                            Ok(CatalogCommand::NextIncarnation { group }) => {
                                if let Some(e) = state_of::<Catalog>(slot.machine.as_ref())
                                    .and_then(|c| c.groups().find(|e| e.id == group))
                                {
                                    catalog_changed.push(e.name.clone());
                                }
                            }
                            _ => catalog_full = true,
                        }
                    }
                    fleet_core::Payload::Bootstrap(_) => catalog_full = true,
                    _ => {}
                }
                answer_catalog(slot, entry, &applied);
            } else {
                answer_waiter(slot, entry, applied);
            }
        }
        let slot = self.slots.get_mut(&g).expect("hosted");
        if let Some(index) = last_applied {
            slot.replica.applied(index);
            metrics::counter!(m::ENTRIES_APPLIED_TOTAL).increment(committed.len() as u64);
        }
        for r in reads {
            if let Some(w) = slot.reads.get_mut(&r.ctx) {
                w.index = Some(r.index);
            }
        }
        answer_reads(slot);
        self.maybe_snapshot(g);
        if catalog_full {
            self.publish_catalog(None);
        } else if !catalog_changed.is_empty() {
            self.publish_catalog(Some(catalog_changed));
        }
        if starts_serving && !self.serving_waiters.is_empty() {
            self.answer_serving_waiters();
        }
    }

    fn fail(&mut self, why: String) {
        error!(node = %self.name, worker = self.shard, error = %why, "storage failed; stopping the node (nothing more is acknowledged)");
        self.workers
            .failed
            .lock()
            .expect("failed lock")
            .get_or_insert(why);
    }

    /// Why the node stopped, if any worker's storage failed: every worker then stops (each
    /// notices within a tick).
    fn failure(&self) -> Option<String> {
        self.workers.failed.lock().expect("failed lock").clone()
    }

    fn write_done(&mut self, id: u64, result: Result<WriteOutcome, FleetError>) {
        if let Err(e) = result {
            self.fail(e.to_string());
            return;
        }
        if let Some(b) = self.batches.iter_mut().find(|b| b.id == id) {
            b.durable = true;
        }
        self.complete_batches();
    }

    /// Finishes the durable batches at the front, in order.
    fn complete_batches(&mut self) {
        while self.batches.front().is_some_and(|b| b.durable) {
            let batch = self.batches.pop_front().expect("front");
            for stash in batch.stashes {
                self.complete(stash);
            }
        }
        self.send_outbox();
    }

    /// A Ready's write is durable: its promises go out and the replica hears of it.
    fn complete(&mut self, stash: Stash) {
        let g = stash.group;
        if !self.slots.contains_key(&g) {
            return;
        }
        // A promise of an older term may no longer hold: a later Ready, perhaps merged into the
        // same storage commit, may have replaced what it acknowledges.
        let kept: Vec<Message> = stash
            .after
            .into_iter()
            .filter(|m| self.slots[&g].replica.keeps_promise(m))
            .collect();
        for m in kept {
            self.queue_message(g, m);
        }
        let slot = self.slots.get_mut(&g).expect("hosted");
        if stash.must_persist {
            slot.replica.persisted(stash.number);
        }
        self.dirty.insert(g);
    }

    fn machine_for_snapshot(&mut self, g: GroupId, snap: &Snapshot) -> Result<(), FleetError> {
        let slot = self.slots.get(&g).expect("hosted");
        let kind = slot.machine.kind().to_string();
        let machine = self.machine(&kind, Some(&snap.data))?;
        let slot = self.slots.get_mut(&g).expect("hosted");
        slot.machine = machine;
        slot.replica.snapshot_installed(snap.meta.index);
        Ok(())
    }

    fn stop_group(&mut self, g: GroupId, reason: String) {
        error!(node = %self.name, group = %g, %reason, "group stopped on this node; other groups keep running");
        let Some(slot) = self.slots.get_mut(&g) else {
            return;
        };
        let name = slot.name.clone();
        slot.stopped = Some(reason.clone());
        for (_, w) in std::mem::take(&mut slot.waiters) {
            let _ = w.reply.send(Err(FleetError::GroupStopped {
                group: name.clone(),
                reason: reason.clone(),
            }));
        }
        for (_, r) in std::mem::take(&mut slot.reads) {
            let _ = r.reply.send(Err(FleetError::GroupStopped {
                group: name.clone(),
                reason: reason.clone(),
            }));
        }
        for (_, f) in slot.forwarded.drain() {
            let _ = f.reply.send(Err(FleetError::GroupStopped {
                group: name.clone(),
                reason: reason.clone(),
            }));
        }
        self.awake.remove(&g);
    }

    fn maybe_snapshot(&mut self, g: GroupId) {
        let every = self.settings.snapshot_every_entries;
        let slot = self.slots.get_mut(&g).expect("hosted");
        let applied = slot.machine.applied();
        if every == 0
            || applied < slot.replica.snapshot_meta().index + every
            || applied != slot.replica.applied_index()
        {
            return;
        }
        let data = slot.machine.snapshot();
        match slot.replica.compact(applied, data.clone()) {
            Ok(meta) => {
                let mut write = GroupWrite::new(g);
                write.snapshot = Some(Snapshot { meta, data });
                self.snapshot_writes.push(write);
            }
            Err(e) => warn!(node = %self.name, group = %g, error = %e, "snapshot skipped"),
        }
    }
}

/// Node `me`'s place among the `voters` (node ids) not `suspected`, in placement `order` (voters
/// missing from it come after, by node id). A node that is not a surviving voter ranks last.
fn campaign_rank(
    order: &[u64],
    voters: impl Iterator<Item = u64>,
    suspected: &BTreeSet<u64>,
    me: u64,
) -> u32 {
    let position = |node: u64| {
        order
            .iter()
            .position(|n| *n == node)
            .unwrap_or(order.len() + node as usize)
    };
    let mut survivors: Vec<u64> = voters.filter(|n| !suspected.contains(n)).collect();
    survivors.sort_by_key(|n| position(*n));
    survivors
        .iter()
        .position(|n| *n == me)
        .map_or(survivors.len() as u32, |p| p as u32)
}

/// New replicas (registration and bootstrap entry each) in one storage batch, at most: well
/// within the store's commit bounds, with room for the Readys of the same batch.
const NEW_REPLICAS_PER_BATCH_MAX: usize = 4_096;

/// A peer hears from this node at least this often, in election timeouts (an empty frame if
/// nothing else): 10 probes per timeout, so a live peer is never silent for half of one.
const LIVENESS_PROBES_PER_TIMEOUT: u64 = 10;
/// Ticks after a leader's node is suspected before the first surviving member campaigns: long
/// enough that the other members suspect it too (they grant no pre-vote while they have a leader).
const LIVENESS_CAMPAIGN_TICKS: u32 = 4;
/// Ticks between the campaigns of successive members in placement order.
const LIVENESS_CAMPAIGN_SPACING_TICKS: u32 = 10;

/// How often the gauges that walk every group are taken, in ticks.
const GAUGE_TICKS: u64 = 100;
/// How often the meta leader checks the meta group's membership, in ticks.
const META_RECONCILE_TICKS: u64 = 5;
/// Voters of the meta group, at most (every other node is a learner).
const META_VOTERS_MAX: usize = 5;
/// Campaigns of a new group's desired leader while it knows no leader (the first on the tick
/// after it hosts the group)...
const CAMPAIGN_ATTEMPTS: u64 = 4;
/// ...this many ticks apart (a campaign takes a round trip and a write).
const CAMPAIGN_RETRY_TICKS: u64 = 5;

/// Inputs of each kind (write completions, frames, requests) taken into one round, at most,
/// after the one that woke the loop.
const INPUTS_PER_ROUND_MAX: usize = 256;

/// Passes over the woken groups in one flush (applying may wake more).
const FLUSH_PASSES_MAX: usize = 4;

/// Bound on catalog commands waiting for the meta group.
const CATALOG_QUEUE_MAX: usize = 65_536;

/// What a client asks a group to append.
enum Proposal {
    /// A state machine command.
    Command {
        data: Bytes,
        session: Option<SessionRef>,
    },
    /// A client session's registration (thesis §6.3); answered with the new client id.
    Register,
}

fn answer_catalog(slot: &mut Slot, entry: &Entry, applied: &Applied) {
    let Some((term, reply)) = slot.catalog_waiters.remove(&entry.index) else {
        return;
    };
    let result = match applied {
        Applied::Command {
            result: Ok(bytes), ..
        } if term == entry.term => postcard::from_bytes::<CatalogOutput>(bytes)
            .map_err(|e| FleetError::Codec(e.to_string())),
        Applied::Command { result: Err(e), .. } => Err(FleetError::Session(e.clone())),
        _ => Err(FleetError::NotLeader {
            leader: None,
            term: 0,
        }),
    };
    let _ = reply.send(result);
}

fn answer_waiter(slot: &mut Slot, entry: &Entry, applied: Applied) {
    let outcome = match applied {
        Applied::Command {
            result: Ok(bytes), ..
        } => Some(Ok(bytes)),
        Applied::Command { result: Err(e), .. } => Some(Err(FleetError::Session(e))),
        // The new session's client id, as 8 little-endian bytes (`Fleet::register`).
        Applied::Registered { client_id } => {
            Some(Ok(Bytes::copy_from_slice(&client_id.to_le_bytes())))
        }
        Applied::NotACommand => None,
    };
    // A command forwarded from here is answered by its session, whatever its index: this entry
    // may be an earlier copy of it (a retry's), which the session table answers alike, except
    // when that copy was refused for the client's responses in flight: that says nothing of
    // the copy the caller waits for, so the caller waits on (and retries after its timeout).
    if let (
        Some(outcome),
        fleet_core::Payload::Command(Command {
            session: Some(s), ..
        }),
    ) = (&outcome, &entry.payload)
        && !matches!(
            outcome,
            Err(FleetError::Session(SessionError::TooManyInFlight { .. }))
        )
        && let Some(f) = slot.forwarded.remove(&(s.client_id, s.seq))
    {
        let _ = f.reply.send(outcome.clone());
    }
    let Some(w) = slot.waiters.remove(&entry.index) else {
        return;
    };
    let result = match outcome {
        Some(outcome) if w.term == entry.term => outcome,
        _ => Err(FleetError::NotLeader {
            leader: None,
            term: 0,
        }),
    };
    let _ = w.reply.send(result);
    // Proposals at lower indexes that were overwritten never come back: they were dropped.
    let dropped: Vec<Index> = slot.waiters.range(..entry.index).map(|(i, _)| *i).collect();
    for i in dropped {
        if let Some(w) = slot.waiters.remove(&i) {
            let _ = w.reply.send(Err(FleetError::NotLeader {
                leader: None,
                term: 0,
            }));
        }
    }
}

/// Asks `slot`'s replica for a read index; the read then waits in the slot until the applied
/// index reaches the confirmed one. On an error the caller gets its reply back.
fn begin_read(
    slot: &mut Slot,
    ctx: u64,
    what: Read,
    reply: oneshot::Sender<Result<Bytes, FleetError>>,
) -> Result<(), (CoreError, oneshot::Sender<Result<Bytes, FleetError>>)> {
    match slot.replica.read_index(ctx) {
        Ok(()) => {
            let index = None;
            slot.reads.insert(ctx, ReadWaiter { what, index, reply });
            Ok(())
        }
        Err(e) => Err((e, reply)),
    }
}

fn answer_reads(slot: &mut Slot) {
    let applied = slot.machine.applied();
    let ready: Vec<u64> = slot
        .reads
        .iter()
        .filter(|(_, r)| r.index.is_some_and(|i| i <= applied))
        .map(|(ctx, _)| *ctx)
        .collect();
    for ctx in ready {
        let r = slot.reads.remove(&ctx).expect("ready read");
        let answer = match &r.what {
            Read::Query(q) => slot.machine.query(q).map_err(FleetError::from),
            Read::Missing(name) => {
                match state_of::<Catalog>(slot.machine.as_ref()).and_then(|c| c.group(name)) {
                    Some(e) if e.state != GroupState::Removed => Err(FleetError::NotLeader {
                        leader: None,
                        term: 0,
                    }),
                    _ => Err(FleetError::NoSuchGroup(name.clone())),
                }
            }
        };
        let _ = r.reply.send(answer);
    }
    if slot.replica.role() != Role::Leader {
        // Reads of a leader that stepped down will never be confirmed; the caller retries.
        for (_, r) in std::mem::take(&mut slot.reads) {
            let _ = r.reply.send(Err(FleetError::NotLeader {
                leader: None,
                term: 0,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn survivors_campaign_in_placement_order() {
        // Placement order 3, 1, 2; node 3 (the first) is dead: 1 goes first, then 2.
        let voters = || [1, 2, 3].into_iter();
        assert_eq!(campaign_rank(&[3, 1, 2], voters(), &set(&[3]), 1), 0);
        assert_eq!(campaign_rank(&[3, 1, 2], voters(), &set(&[3]), 2), 1);
        // Nothing suspected: the placement order itself.
        assert_eq!(campaign_rank(&[3, 1, 2], voters(), &set(&[]), 3), 0);
        assert_eq!(campaign_rank(&[3, 1, 2], voters(), &set(&[]), 2), 2);
        // Two dead of five: the three survivors rank 0, 1, 2 in order.
        let five = || [1, 2, 3, 4, 5].into_iter();
        let ranks: Vec<u32> = [5, 4, 2]
            .iter()
            .map(|me| campaign_rank(&[1, 3, 5, 4, 2], five(), &set(&[1, 3]), *me))
            .collect();
        assert_eq!(ranks, vec![0, 1, 2]);
    }

    #[test]
    fn voters_outside_the_placement_order_come_after_it_by_node_id() {
        // The meta group has no placement order: by node id.
        assert_eq!(campaign_rank(&[], [4, 2, 9].into_iter(), &set(&[2]), 4), 0);
        assert_eq!(campaign_rank(&[], [4, 2, 9].into_iter(), &set(&[2]), 9), 1);
        // A voter added later (not in the initial members) comes after those that are.
        assert_eq!(
            campaign_rank(&[2, 1], [1, 2, 7].into_iter(), &set(&[]), 7),
            2
        );
    }

    #[test]
    fn a_suspected_or_non_voting_node_ranks_last() {
        assert_eq!(
            campaign_rank(&[1, 2, 3], [1, 2, 3].into_iter(), &set(&[1]), 1),
            2
        );
        assert_eq!(campaign_rank(&[1, 2], [1, 2].into_iter(), &set(&[]), 8), 2);
    }

    #[test]
    fn groups_spread_over_workers_and_the_catalog_stays_on_worker_0() {
        assert_eq!(shard_of(META_GROUP, 4), 0);
        assert_eq!(shard_of(GroupId(7), 1), 0);
        let mut counts = [0usize; 3];
        for g in 1..=300 {
            counts[shard_of(GroupId(g), 3)] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }
}
