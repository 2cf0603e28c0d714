//! The fleet runtime: [`Fleet`], the library API of DESIGN.md section 1, and the node loop that
//! drives every group hosted here.
//!
//! **What works:** nodes found or join a fleet (`activate`), the meta group holds the catalog
//! (up to five voters, every other node a learner, so each node reads the catalog locally),
//! groups are created by name and placed by zone-aware rendezvous hashing, commands
//! (exactly-once through sessions) and queries (linearizable by ReadIndex, or stale and local)
//! work from any node through the leader cache, storage commits every group's writes in one
//! batch, idle groups quiesce, node-level liveness wakes them when a leader's node goes silent,
//! and everything recovers on restart. **Next:** members moving when nodes come and go
//! (`deactivate`, dead nodes), snapshots streamed on their own streams.
//!
//! # Decisions
//!
//! - A few worker tasks drive the groups ([`Settings::workers`]; group id modulo the count, the
//!   catalog on worker 0). A worker ticks only its groups that are awake (a quiesced group costs
//!   nothing per tick), steps the replicas that have work, gathers every `Ready` into **one**
//!   storage batch (group commit; the store's writer merges the workers' batches that queue up),
//!   sends one frame per destination node, applies committed entries, and, when the batch is
//!   durable, sends the messages that waited for it. The next batch is gathered while one is
//!   being written. `docs/runtime.md` has the details.
//! - A command that does not decode as its group's command type is refused before it is proposed,
//!   so it never reaches the log. A state machine that panics stops its group on this node (with
//!   an error naming the group and the index); other groups keep running.
//! - Admission is by certificate: any node holding a certificate of the cluster's CA may connect
//!   and ask to join; the catalog is the only way into placement.
//! - Client sessions are per group: each group keeps its own session table, so a `Fleet` handle
//!   registers once with each group it commands (the registration's log index is its client id)
//!   and numbers its commands there. See `docs/runtime.md`, "Client sessions".
//! - A request is handled by the node it is sent to, never forwarded to another node: the caller
//!   follows `NotLeader` hints (and its leader cache) until its deadline, so a stale cache costs
//!   a redirect, never a loop. (Inside a node it may go through worker 0 once, to find its
//!   group's worker.)
//! - The founding node's meta replica is `ReplicaId(1, 0)`: the catalog gives the first node id 1.
//! - A new group's desired leader campaigns on the tick after creating its replica (the other
//!   members apply the same catalog entry within a round trip), and again a few ticks later while
//!   it knows no leader.
//! - The leader cache maps a group name to `(node, term)`: it learns from local leadership
//!   changes and `NotLeader` hints, and never replaces what it holds with an older term.

mod driver;
mod leader_cache;
mod rpc;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleet_core::{SessionConfig, SessionError, SessionRef, StateMachine};
use tokio::sync::{mpsc, oneshot};

use dashmap::DashMap;

use crate::catalog::{CatalogCommand, CatalogError, CatalogOutput, GroupEntry, NodeEntry};
use crate::registry::{MachineError, Registry};
use crate::storage::StorageError;
use crate::transport::{ClientConnection, PeerAddr, Tls, Transport, TransportConfig};
use leader_cache::LeaderCache;

pub use driver::{GroupStatus, NodeHealth, NodeStatus, Status};

/// The settings of a node. Every bound ends in `_max`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// One tick of the Raft clock.
    pub tick: Duration,
    /// The lower end of the randomized election timeout, in ticks.
    pub election_timeout_ticks: u32,
    /// Ticks between heartbeats.
    pub heartbeat_interval_ticks: u32,
    /// Idle ticks before a group quiesces (0: never).
    pub quiesce_after_ticks: u32,
    /// How long a command or query may take, retries included.
    pub request_timeout: Duration,
    /// Worker tasks driving the node's groups (each drives the groups of its shard; worker 0
    /// also holds the catalog), from 1 to [`WORKERS_MAX`]; default [`default_workers`].
    pub workers: usize,
    /// Requests queued for each worker; beyond it callers get `Busy`.
    pub requests_queued_max: usize,
    /// Proposals waiting to be applied in one group; beyond it callers get `Busy`.
    pub proposals_per_group_max: usize,
    /// Entries applied since the last snapshot before a group snapshots and compacts its log.
    pub snapshot_every_entries: u64,
    /// Client session bounds of every state machine.
    pub sessions: SessionConfig,
    /// A follower hands a command to its group's leader inside the Raft messages it sends anyway
    /// (etcd's `MsgProp`) and answers once it applies it, rather than forwarding a request and its
    /// answer. Default on; off sends every command to the leader as a request.
    pub forward_proposals: bool,
    /// redb's page cache in the node's memory, bytes (`StoreConfig::redb_cache_bytes`, default
    /// 64 MiB): most of what storage adds to the node's resident memory.
    pub storage_cache_bytes: usize,
    /// The bound of the storage write-ahead table, bytes (`StoreConfig::wal_bytes_max`, default
    /// 128 MiB, at least 32 MiB): it bounds recovery time and the entries held in memory until
    /// a checkpoint writes them out.
    pub storage_wal_bytes_max: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tick: Duration::from_millis(10),
            election_timeout_ticks: 100,
            heartbeat_interval_ticks: 10,
            quiesce_after_ticks: 20,
            request_timeout: Duration::from_secs(10),
            workers: default_workers(),
            requests_queued_max: 65_536,
            proposals_per_group_max: 4_096,
            snapshot_every_entries: 10_000,
            sessions: SessionConfig::default(),
            forward_proposals: true,
            storage_cache_bytes: crate::storage::REDB_CACHE_BYTES_DEFAULT,
            storage_wal_bytes_max: crate::storage::WAL_BYTES_MAX_DEFAULT,
        }
    }
}

/// The most worker tasks a node may have.
pub const WORKERS_MAX: usize = 64;

/// The default number of workers: one per two cores, from 1 to 4. A worker drives thousands of
/// groups; the node's storage writer thread and its network tasks need the other cores (on 2
/// cores, 2 workers per node measured no faster than 1 and cost more idle CPU; see
/// `docs/runtime.md`).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).clamp(1, 4))
}

/// What went wrong with a fleet request. Messages say what happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum FleetError {
    /// No group has this name.
    #[error(
        "no consensus group named {0:?}; create it with add_consensus_group or list_groups to see which exist"
    )]
    NoSuchGroup(String),
    /// The state machine kind is not registered on this node.
    #[error(
        "state machine kind {0:?} is not registered on this node; register it with FleetBuilder::register"
    )]
    UnknownKind(String),
    /// The catalog refused the change.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The request's bytes do not fit the group's state machine.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The session table refused the command.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The group is stopped on this node (its state machine panicked).
    #[error("group {group:?} is stopped on this node: {reason}")]
    GroupStopped {
        /// The group.
        group: String,
        /// Why.
        reason: String,
    },
    /// Too much is queued; slow down and retry. For a command, the copy that met the limit was
    /// not appended; if the command had been sent before within the same call (a retry after a
    /// timeout or a leader change), an earlier copy may still apply.
    #[error("node is busy: {0}; slow down and retry")]
    Busy(String),
    /// The request did not complete in time.
    #[error(
        "request to group {group:?} did not complete within {timeout:?}; the group may have lost its quorum (see status)"
    )]
    Timeout {
        /// The group.
        group: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The node has not activated yet.
    #[error("the node is not active in the fleet; call activate(zone) first")]
    NotActive,
    /// Storage failed; the node has stopped.
    #[error("storage failed, the node stopped: {0}")]
    Storage(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Shutdown,
    /// A value could not be encoded or decoded.
    #[error("cannot encode or decode a value: {0}")]
    Codec(String),
    /// Invalid settings or arguments.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// This node does not lead the group; the runtime retries these until the deadline, at the
    /// hinted node if there is one.
    #[error("this node does not lead the group{}; retry", match .leader { Some(l) => format!(" (the leader is {l})"), None => String::new() })]
    NotLeader {
        /// The node believed to lead it.
        leader: Option<String>,
        /// The term in which that node was known to lead (0 if no leader is known): a leader
        /// cache takes a hint only if it is not older than what it holds.
        term: u64,
    },
    /// Another node could not be reached.
    #[error("cannot reach node {node}: {reason}")]
    Unreachable {
        /// The node.
        node: String,
        /// What failed.
        reason: String,
    },
    /// The node's transport did not start (its listen port is taken, say).
    #[error("the node's transport did not start: {0}")]
    Transport(String),
}

impl From<StorageError> for FleetError {
    fn from(e: StorageError) -> Self {
        FleetError::Storage(e.to_string())
    }
}

/// A request to the node loop.
pub(crate) enum Request {
    /// The node's own state (cheap).
    Health { reply: oneshot::Sender<NodeHealth> },
    /// One group's status.
    GroupStatus {
        name: String,
        reply: oneshot::Sender<Result<GroupStatus, FleetError>>,
    },
    /// The name of the node with this catalog id, if the catalog knows it.
    NodeName {
        id: u64,
        reply: oneshot::Sender<Option<String>>,
    },
    Activate {
        zone: String,
        reply: oneshot::Sender<Result<(), FleetError>>,
    },
    CreateGroup {
        name: String,
        size: usize,
        kind: String,
        reply: oneshot::Sender<Result<GroupEntry, FleetError>>,
    },
    RemoveGroup {
        name: String,
        reply: oneshot::Sender<Result<(), FleetError>>,
    },
    /// Registers a client session with a group (thesis §6.3); answers the new client id as 8
    /// little-endian bytes.
    Register {
        group: String,
        reply: oneshot::Sender<Result<Bytes, FleetError>>,
    },
    Command {
        group: String,
        data: Bytes,
        session: Option<SessionRef>,
        reply: oneshot::Sender<Result<Bytes, FleetError>>,
    },
    Query {
        group: String,
        data: Bytes,
        linearizable: bool,
        reply: oneshot::Sender<Result<Bytes, FleetError>>,
    },
    /// Nodes, the meta leader, and worker 0's groups (worker 0 only).
    Status { reply: oneshot::Sender<Status> },
    /// The status of the groups of one worker's shard.
    ShardStatus {
        reply: oneshot::Sender<Vec<GroupStatus>>,
    },
    /// The join handshake gave this node its id: create the meta replica and wait for the catalog.
    Joined {
        node_id: u64,
        reply: oneshot::Sender<Result<(), FleetError>>,
    },
    /// Answers once the named group serves on this node.
    AwaitServing {
        group: String,
        /// Until when (`None`: the request timeout from now); kept when the request moves
        /// between workers.
        deadline: Option<Instant>,
        reply: oneshot::Sender<Result<(), FleetError>>,
    },
    /// A catalog change (from `Rpc::Catalog` or a joining node).
    Catalog {
        cmd: crate::catalog::CatalogCommand,
        reply: oneshot::Sender<Result<crate::catalog::CatalogOutput, FleetError>>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<(), FleetError>>,
    },
}

impl Request {
    /// The group a request is about, by name, if it is about one group.
    pub(crate) fn group_name(&self) -> Option<&str> {
        match self {
            Request::Command { group, .. }
            | Request::Register { group, .. }
            | Request::Query { group, .. }
            | Request::AwaitServing { group, .. } => Some(group),
            Request::GroupStatus { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// Registers one state machine kind into a node's registry.
type KindRegistration = Box<dyn FnOnce(&mut Registry) + Send>;

/// Builds and starts a [`Fleet`] node.
pub struct FleetBuilder {
    name: Option<String>,
    data_dir: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    advertise: Option<String>,
    tls: Option<crate::transport::Tls>,
    join: Vec<String>,
    transport: crate::transport::TransportConfig,
    settings: Settings,
    kinds: Vec<KindRegistration>,
    storage_faults: Option<Arc<crate::storage::StorageFaults>>,
}

impl std::fmt::Debug for FleetBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBuilder")
            .field("name", &self.name)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl FleetBuilder {
    /// The node's stable name (bound to its certificate once the transport is wired in).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Where the node keeps its database and snapshots.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The UDP address the node listens on for peers and clients (QUIC). Port 0 picks one.
    pub fn listen(mut self, addr: std::net::SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// The address peers dial to reach this node (`host:port`); defaults to the bound address.
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// The cluster CA and this node's certificate and key (see `Tls::from_dir`). Without TLS the
    /// node runs alone, with no transport (tests and embedded use).
    pub fn tls(mut self, tls: crate::transport::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Addresses (`host:port`) of existing nodes to join through; none for the first node.
    pub fn join<I, A>(mut self, addrs: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        self.join = addrs.into_iter().map(Into::into).collect();
        self
    }

    /// Limits of the transport.
    pub fn transport_config(mut self, config: crate::transport::TransportConfig) -> Self {
        self.transport = config;
        self
    }

    /// Tick, timeouts and limits.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Tests only: faults to switch on in the node's storage while it runs.
    #[doc(hidden)]
    pub fn storage_faults(mut self, faults: Arc<crate::storage::StorageFaults>) -> Self {
        self.storage_faults = Some(faults);
        self
    }

    /// Registers a state machine kind this node can host.
    pub fn register<S: StateMachine>(mut self, kind: &str) -> Self {
        let kind = kind.to_string();
        self.kinds
            .push(Box::new(move |r: &mut Registry| r.register::<S>(&kind)));
        self
    }

    /// Opens storage, recovers every hosted group and starts the node loop.
    pub async fn start(self) -> Result<Fleet, FleetError> {
        let name = self.name.ok_or(FleetError::Config(
            "a node needs a name (FleetBuilder::name)".into(),
        ))?;
        let data_dir = self.data_dir.ok_or(FleetError::Config(
            "a node needs a data directory (FleetBuilder::data_dir)".into(),
        ))?;
        if self.settings.election_timeout_ticks <= 2 * self.settings.heartbeat_interval_ticks {
            return Err(FleetError::Config(
                "election_timeout_ticks must exceed twice heartbeat_interval_ticks".into(),
            ));
        }
        let mut registry = Registry::new(self.settings.sessions);
        for k in self.kinds {
            k(&mut registry);
        }
        if registry.contains(driver::META_KIND) {
            return Err(FleetError::Config(format!(
                "the kind {:?} is reserved for the catalog",
                driver::META_KIND
            )));
        }
        let n = self.settings.workers;
        if n == 0 || n > WORKERS_MAX {
            return Err(FleetError::Config(format!(
                "workers is {n}; give from 1 to {WORKERS_MAX}"
            )));
        }
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| mpsc::channel(self.settings.requests_queued_max))
            .unzip();
        let (controls, control_rxs): (Vec<_>, Vec<_>) =
            (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        let workers = Arc::new(driver::Workers::new(controls));
        let leader_cache: Arc<LeaderCache> = Arc::new(DashMap::new());
        let (net, frames, requests, tls, transport_config) = match self.tls {
            None => (None, Vec::new(), None, None, self.transport),
            Some(tls) => {
                if tls.identity().name != name {
                    return Err(FleetError::Config(format!(
                        "the certificate names node {:?} but this node is {name:?}; use the node's own certificate",
                        tls.identity().name
                    )));
                }
                let mut config = self.transport.clone();
                if let Some(listen) = self.listen {
                    config.listen = listen;
                }
                let directory = Arc::new(rpc::Directory::default());
                let (transport, inbound) = Transport::<fleet_core::Message>::bind(
                    config.clone(),
                    tls.clone(),
                    directory.clone(),
                )
                .await
                .map_err(|e| FleetError::Transport(e.to_string()))?;
                let advertise = self
                    .advertise
                    .clone()
                    .unwrap_or_else(|| transport.local_addr().to_string());
                let crate::transport::Inbound {
                    frames, requests, ..
                } = inbound;
                let frames = if n == 1 {
                    vec![frames]
                } else {
                    // Each worker gets the messages for its groups.
                    let (to, from): (Vec<_>, Vec<_>) = (0..n)
                        .map(|_| mpsc::channel(config.inbound_frames_max))
                        .unzip();
                    tokio::spawn(driver::demux(frames, to));
                    from
                };
                let net = driver::Net {
                    transport,
                    directory,
                    leader_cache: leader_cache.clone(),
                    advertise,
                };
                (Some(net), frames, Some(requests), Some(tls), config)
            }
        };
        let transport = net.as_ref().map(|n| n.transport.clone());
        let advertise = net.as_ref().map(|n| n.advertise.clone());
        let directory = net.as_ref().map(|n| n.directory.clone());
        let settings = self.settings.clone();
        let storage_faults = self.storage_faults.clone();
        let (drivers, store) = tokio::task::spawn_blocking({
            let name = name.clone();
            let workers = workers.clone();
            move || {
                driver::Driver::open(
                    name,
                    data_dir,
                    settings,
                    registry,
                    net,
                    frames,
                    workers,
                    control_rxs,
                    storage_faults,
                )
            }
        })
        .await
        .map_err(|e| FleetError::Storage(format!("opening storage panicked: {e}")))??;
        let tasks = drivers
            .into_iter()
            .zip(rxs)
            .map(|(d, rx)| tokio::spawn(d.run(rx)))
            .collect();
        let fleet = Fleet {
            inner: Arc::new(Inner {
                name,
                txs,
                workers,
                settings: self.settings,
                sessions: std::sync::Mutex::new(HashMap::new()),
                tasks: std::sync::Mutex::new(tasks),
                store: std::sync::Mutex::new(Some(store)),
                transport,
                tls,
                transport_config,
                join: self.join,
                advertise,
                directory,
                leader_cache,
            }),
        };
        if let Some(requests) = requests {
            tokio::spawn(serve_requests(fleet.clone(), requests));
        }
        Ok(fleet)
    }
}

/// A handle's session with one group (thesis §6.3).
struct GroupSession {
    /// The client id the group gave this session, once its registration is answered; the
    /// commands that arrive meanwhile wait for the same registration.
    id: tokio::sync::OnceCell<u64>,
    seqs: std::sync::Mutex<Seqs>,
}

/// A session's sequence numbers.
struct Seqs {
    next_seq: u64,
    /// Sequence numbers in flight, for `first_unacked`.
    inflight: BTreeSet<u64>,
    /// When the last command started.
    last_used: Instant,
}

impl GroupSession {
    fn new() -> Self {
        GroupSession {
            id: tokio::sync::OnceCell::new(),
            seqs: std::sync::Mutex::new(Seqs {
                next_seq: 0,
                inflight: BTreeSet::new(),
                last_used: Instant::now(),
            }),
        }
    }
}

struct Inner {
    name: String,
    /// Each worker's request queue.
    txs: Vec<mpsc::Sender<Request>>,
    workers: Arc<driver::Workers>,
    settings: Settings,
    /// This handle's session with each group it commanded: sessions are per group, since each
    /// group keeps its own session table.
    sessions: std::sync::Mutex<HashMap<String, Arc<GroupSession>>>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Closed by `shutdown` once every worker has stopped.
    store: std::sync::Mutex<Option<Arc<crate::storage::Store>>>,
    transport: Option<Transport<fleet_core::Message>>,
    tls: Option<Tls>,
    transport_config: TransportConfig,
    join: Vec<String>,
    advertise: Option<String>,
    directory: Option<Arc<rpc::Directory>>,
    /// Group name -> node believed to lead it.
    leader_cache: Arc<LeaderCache>,
}

/// Requests that other nodes send this one: each is handled on this node only (never forwarded
/// again), so a stale leader cache costs one redirect, never a loop.
async fn serve_requests(
    fleet: Fleet,
    mut requests: mpsc::Receiver<crate::transport::InboundRequest>,
) {
    while let Some(req) = requests.recv().await {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            let answer: Bytes = match rpc::decode::<rpc::Rpc>(&req.body) {
                Err(e) => rpc::encode(&Err::<(), _>(e)),
                Ok(rpc::Rpc::Join {
                    name,
                    address,
                    zone,
                }) => {
                    let cmd = CatalogCommand::RegisterNode {
                        name,
                        address,
                        zone,
                    };
                    rpc::encode(
                        &fleet
                            .call(|reply| Request::Catalog { cmd, reply })
                            .await
                            .and_then(|r| r),
                    )
                }
                Ok(rpc::Rpc::Catalog { cmd }) => rpc::encode(
                    &fleet
                        .call(|reply| Request::Catalog { cmd, reply })
                        .await
                        .and_then(|r| r),
                ),
                Ok(rpc::Rpc::Register { group }) => {
                    let r = fleet
                        .call(|reply| Request::Register { group, reply })
                        .await
                        .and_then(|r| r);
                    rpc::encode(&r)
                }
                Ok(rpc::Rpc::Command {
                    group,
                    data,
                    session,
                }) => {
                    let r = fleet
                        .call(|reply| Request::Command {
                            group,
                            data,
                            session,
                            reply,
                        })
                        .await
                        .and_then(|r| r);
                    rpc::encode(&r)
                }
                Ok(rpc::Rpc::Query {
                    group,
                    data,
                    linearizable,
                }) => {
                    let r = fleet
                        .call(|reply| Request::Query {
                            group,
                            data,
                            linearizable,
                            reply,
                        })
                        .await
                        .and_then(|r| r);
                    rpc::encode(&r)
                }
                Ok(rpc::Rpc::AwaitServing { group }) => {
                    let r = fleet
                        .call(|reply| Request::AwaitServing {
                            group,
                            deadline: None,
                            reply,
                        })
                        .await
                        .and_then(|r| r);
                    rpc::encode(&r)
                }
            };
            let _ = req.responder.respond(&answer).await;
        });
    }
}

/// A node of the fleet: the library API (DESIGN.md section 1).
///
/// ```
/// # tokio_test();
/// # fn tokio_test() {
/// # let rt = tokio::runtime::Runtime::new().unwrap();
/// # rt.block_on(async {
/// use fleet_core::kv::{KvCommand, KvOutput, KvQuery, KvStore};
/// use fleet_node::runtime::Fleet;
///
/// let dir = tempfile::tempdir().unwrap();
/// let fleet = Fleet::builder().name("n1").data_dir(dir.path()).register::<KvStore>("kv").start().await?;
/// fleet.activate("zone-a").await?;
/// fleet.add_consensus_group("users", 3, "kv").await?;
/// let put = KvCommand::Put { key: "alice".into(), value: "admin".into() };
/// fleet.command::<KvStore>("users", put).await?;
/// let got = fleet.query::<KvStore>("users", KvQuery::Get { key: "alice".into() }).await?;
/// assert_eq!(got, KvOutput::Value(Some("admin".into())));
/// fleet.shutdown().await?;
/// # Ok::<(), fleet_node::runtime::FleetError>(())
/// # }).unwrap();
/// # }
/// ```
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// How long to wait between retries of a request that found no leader.
const RETRY_DELAY: Duration = Duration::from_millis(5);
/// A forwarded request may take at most this fraction of the request timeout, so a dead node
/// leaves time to retry elsewhere.
const REMOTE_ATTEMPTS_MIN: u32 = 4;
/// How long to wait between rounds of join attempts.
const JOIN_RETRY_DELAY: Duration = Duration::from_millis(100);

impl Fleet {
    /// Starts building a node.
    pub fn builder() -> FleetBuilder {
        FleetBuilder {
            name: None,
            data_dir: None,
            listen: None,
            advertise: None,
            tls: None,
            join: Vec::new(),
            transport: crate::transport::TransportConfig::default(),
            settings: Settings::default(),
            kinds: Vec::new(),
            storage_faults: None,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address the node listens on for peers (`None` for a node without a transport).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.transport.as_ref().map(|t| t.local_addr())
    }

    /// The node's own state, without walking its groups: what health and readiness probes
    /// need. An error means the node loop is not running.
    pub async fn health(&self) -> Result<NodeHealth, FleetError> {
        self.call(|reply| Request::Health { reply }).await
    }

    /// Sends a request to the worker it is for: the worker of its group, else worker 0.
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, FleetError> {
        let (tx, rx) = oneshot::channel();
        let req = make(tx);
        let w = req
            .group_name()
            .map_or(0, |name| self.inner.workers.of_name(name));
        self.send(w, req, rx).await
    }

    /// Sends a request to worker `w`.
    async fn call_worker<T>(
        &self,
        w: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, FleetError> {
        let (tx, rx) = oneshot::channel();
        self.send(w, make(tx), rx).await
    }

    /// Queues `req` for worker `w` (`Busy` if its queue is full) and waits for the answer.
    async fn send<T>(
        &self,
        w: usize,
        req: Request,
        rx: oneshot::Receiver<T>,
    ) -> Result<T, FleetError> {
        self.inner.txs[w].try_send(req).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                FleetError::Busy("the node's request queue is full".into())
            }
            mpsc::error::TrySendError::Closed(_) => self.stopped(),
        })?;
        rx.await.map_err(|_| self.stopped())
    }

    /// Why the workers no longer answer: their storage failed (and why), or a shutdown.
    fn stopped(&self) -> FleetError {
        let failed = self
            .inner
            .workers
            .failed
            .lock()
            .expect("failed lock")
            .clone();
        failed.map_or(FleetError::Shutdown, FleetError::Storage)
    }

    /// Makes this node a member of the fleet in `zone`. The first node (no `join` addresses)
    /// founds the fleet; the others join through any node they are given, and return once the
    /// replicated catalog lists them.
    pub async fn activate(&self, zone: &str) -> Result<(), FleetError> {
        let known = self
            .status()
            .await?
            .nodes
            .iter()
            .any(|n| n.entry.name == self.inner.name);
        if self.inner.join.is_empty() || known || self.has_meta().await? {
            let zone = zone.to_string();
            return self.call(|reply| Request::Activate { zone, reply }).await?;
        }
        let node_id = self.join(zone).await?;
        self.call(|reply| Request::Joined { node_id, reply })
            .await?
    }

    async fn has_meta(&self) -> Result<bool, FleetError> {
        Ok(!self.status().await?.nodes.is_empty())
    }

    /// Asks the join addresses, one after the other until the deadline, to register this node.
    async fn join(&self, zone: &str) -> Result<u64, FleetError> {
        let (Some(tls), Some(advertise)) = (&self.inner.tls, &self.inner.advertise) else {
            return Err(FleetError::Config(
                "joining needs TLS (FleetBuilder::tls)".into(),
            ));
        };
        let rpc = rpc::Rpc::Join {
            name: self.inner.name.clone(),
            address: advertise.clone(),
            zone: zone.to_string(),
        };
        let body = rpc::encode(&rpc);
        let deadline = Instant::now() + self.inner.settings.request_timeout;
        let mut last_error = FleetError::Config("no join address given".into());
        while Instant::now() < deadline {
            for addr in &self.inner.join {
                let peer: PeerAddr = addr
                    .parse()
                    .map_err(|e| FleetError::Config(format!("join address {addr:?}: {e}")))?;
                let result = async {
                    // Learn the node's name from its certificate, then ask through this node's
                    // own transport (a node connection that is not a peer link carries no requests).
                    let conn =
                        ClientConnection::connect(tls, &peer, &self.inner.transport_config).await?;
                    let name = conn.server().name.clone();
                    conn.close().await;
                    if let Some(directory) = &self.inner.directory {
                        directory.insert(&name, peer.clone());
                    }
                    let transport = self
                        .inner
                        .transport
                        .as_ref()
                        .expect("tls implies a transport");
                    transport.request(&name, &body).await
                }
                .await;
                match result.map_err(|e| FleetError::Unreachable {
                    node: addr.clone(),
                    reason: e.to_string(),
                }) {
                    Ok(bytes) => match rpc::decode::<Result<CatalogOutput, FleetError>>(&bytes)? {
                        Ok(CatalogOutput::NodeRegistered { id }) => return Ok(id),
                        Ok(CatalogOutput::Refused(e)) => return Err(e.into()),
                        Ok(other) => {
                            return Err(FleetError::Codec(format!(
                                "unexpected join answer {other:?}"
                            )));
                        }
                        Err(e) => last_error = e,
                    },
                    Err(e) => last_error = e,
                }
            }
            tokio::time::sleep(JOIN_RETRY_DELAY).await;
        }
        Err(last_error)
    }

    /// Marks this node as leaving. Draining its members elsewhere comes with elasticity; today it
    /// only records the state.
    pub async fn deactivate(&self) -> Result<(), FleetError> {
        Err(FleetError::Config(
            "deactivate needs more than one node to drain to; it arrives with the elasticity work"
                .into(),
        ))
    }

    /// Creates a group of `size` voters running state machine `kind`, placed over the active
    /// nodes. Returns once the group has a leader and serves.
    pub async fn add_consensus_group(
        &self,
        name: &str,
        size: usize,
        kind: &str,
    ) -> Result<GroupEntry, FleetError> {
        let (group, kind) = (name.to_string(), kind.to_string());
        let entry = self
            .call(|reply| Request::CreateGroup {
                name: group,
                size,
                kind,
                reply,
            })
            .await??;
        // Wait until it serves: at its desired leader, which campaigns first.
        let desired = entry.initial_members[0].node.0;
        let leader = self
            .call(|reply| Request::NodeName { id: desired, reply })
            .await?;
        match (leader, &self.inner.transport) {
            (Some(leader), Some(transport)) if leader != self.inner.name => {
                let body = rpc::encode(&rpc::Rpc::AwaitServing {
                    group: name.to_string(),
                });
                let bytes = transport.request(&leader, &body).await.map_err(|e| {
                    FleetError::Unreachable {
                        node: leader.clone(),
                        reason: e.to_string(),
                    }
                })?;
                rpc::decode::<Result<(), FleetError>>(&bytes)??;
            }
            _ => {
                let group = name.to_string();
                self.call(|reply| Request::AwaitServing {
                    group,
                    deadline: None,
                    reply,
                })
                .await??;
            }
        }
        Ok(entry)
    }

    /// How long a peer may stay silent before requests stop going to it: half an election
    /// timeout (node loops talk to every peer every few ticks).
    fn silence(&self) -> Duration {
        let s = &self.inner.settings;
        s.tick * s.election_timeout_ticks / 2
    }

    /// Whether `node` is connected and was heard from lately.
    fn live(&self, transport: &Transport<fleet_core::Message>, node: &str) -> bool {
        transport.is_connected(node)
            && transport
                .last_heard(node)
                .is_some_and(|t| t.elapsed() <= self.silence())
    }

    /// Returns once `node` is no longer live (polled every few ticks).
    async fn until_silent(&self, transport: &Transport<fleet_core::Message>, node: &str) {
        let every = (self.inner.settings.tick * 5).max(Duration::from_millis(1));
        loop {
            tokio::time::sleep(every).await;
            if !self.live(transport, node) {
                return;
            }
        }
    }

    /// Sends a request to the node believed to lead `group`, or handles it here. With
    /// `hosted_first` (commands), a node hosting a replica of the group asks it first: a follower
    /// hands the command to its leader in Raft messages (`Settings::forward_proposals`); if it
    /// cannot, its answer names the leader, and the request goes there.
    async fn route(
        &self,
        group: &str,
        local: impl Fn(oneshot::Sender<Result<Bytes, FleetError>>) -> Request,
        remote: impl Fn() -> rpc::Rpc,
        hosted_first: bool,
    ) -> Result<Bytes, FleetError> {
        let deadline = Instant::now() + self.inner.settings.request_timeout;
        let mut target = self.inner.leader_cache.get(group).map(|l| l.node.clone());
        let mut here_first = hosted_first
            && self.inner.settings.forward_proposals
            && self.inner.workers.hosts(group);
        loop {
            let asked_here = here_first;
            here_first = false;
            let result = match (&target, &self.inner.transport) {
                _ if asked_here => self.call(&local).await.and_then(|r| r),
                (Some(node), Some(transport))
                    if *node != self.inner.name && !self.live(transport, node) =>
                {
                    // Not connected, or silent (its node loop keeps links to every live peer and
                    // talks on them every few ticks): don't wait for it; ask locally, which
                    // redirects to a live leader.
                    Err(FleetError::Unreachable {
                        node: node.clone(),
                        reason: "not connected, or silent".into(),
                    })
                }
                (Some(node), Some(transport)) if *node != self.inner.name => {
                    let body = rpc::encode(&remote());
                    let attempt_timeout = self.inner.settings.request_timeout / REMOTE_ATTEMPTS_MIN;
                    let attempt = async {
                        tokio::select! {
                            r = transport.request(node, &body) => r,
                            // A node that dies with the request in flight answers nothing: stop
                            // waiting once it falls silent, and retry elsewhere (same session).
                            _ = self.until_silent(transport, node) => {
                                Err(crate::transport::TransportError::Timeout {
                                    what: "a forwarded request to a node that fell silent",
                                    after: self.silence(),
                                })
                            }
                            _ = tokio::time::sleep(attempt_timeout) => {
                                Err(crate::transport::TransportError::Timeout {
                                    what: "a forwarded request",
                                    after: attempt_timeout,
                                })
                            }
                        }
                    };
                    match attempt.await {
                        Ok(bytes) => {
                            match rpc::decode::<Result<Bytes, FleetError>>(&bytes).and_then(|r| r) {
                                // That node is stopping: ask another.
                                Err(FleetError::Shutdown) => Err(FleetError::Unreachable {
                                    node: node.clone(),
                                    reason: "it is shutting down".into(),
                                }),
                                other => other,
                            }
                        }
                        Err(e) => Err(FleetError::Unreachable {
                            node: node.clone(),
                            reason: e.to_string(),
                        }),
                    }
                }
                _ => self.call(&local).await.and_then(|r| r),
            };
            match result {
                Err(e @ (FleetError::NotLeader { .. } | FleetError::Unreachable { .. })) => {
                    if Instant::now() >= deadline {
                        tracing::debug!(group, error = %e, "request deadline passed");
                        return Err(FleetError::Timeout {
                            group: group.to_string(),
                            timeout: self.inner.settings.request_timeout,
                        });
                    }
                    let hint = match &e {
                        FleetError::NotLeader {
                            leader: Some(l),
                            term,
                        } => Some((l.clone(), *term)),
                        _ => None,
                    };
                    match hint {
                        // After the replica here could not take it (it knows no leader, or what
                        // it handed over was not applied in time): straight to the leader.
                        Some((l, term)) if asked_here || Some(&l) != target.as_ref() => {
                            // Term 0 is a guess (the meta leader, to confirm a name; a follower's
                            // leader after a timeout): followed, not cached.
                            if term > 0 {
                                leader_cache::learn(&self.inner.leader_cache, group, &l, term);
                            }
                            target = Some(l);
                        }
                        None if asked_here && target.is_some() => {}
                        _ => {
                            if let Some(t) = &target {
                                leader_cache::forget_node(&self.inner.leader_cache, group, t);
                            }
                            target = None;
                            tokio::time::sleep(RETRY_DELAY).await;
                        }
                    }
                }
                Err(e @ FleetError::NoSuchGroup(_)) => {
                    // A node that did not know the name may have sent this request to the meta
                    // leader (to confirm it): nothing about the name stays cached.
                    self.inner.leader_cache.remove(group);
                    return Err(e);
                }
                other => return other,
            }
        }
    }

    /// Marks a group removed; its replicas stop serving. Groups are never removed by the system.
    pub async fn remove_consensus_group(&self, name: &str) -> Result<(), FleetError> {
        let name = name.to_string();
        self.call(|reply| Request::RemoveGroup { name, reply })
            .await?
    }

    /// Every group in the catalog.
    pub async fn list_groups(&self) -> Result<Vec<GroupEntry>, FleetError> {
        Ok(self
            .status()
            .await?
            .groups
            .into_iter()
            .map(|g| g.entry)
            .collect())
    }

    /// One group's status.
    pub async fn group_status(&self, name: &str) -> Result<GroupStatus, FleetError> {
        let name = name.to_string();
        self.call(|reply| Request::GroupStatus { name, reply })
            .await?
    }

    /// Nodes and groups as this node sees them.
    pub async fn status(&self) -> Result<Status, FleetError> {
        let mut status = self
            .call_worker(0, |reply| Request::Status { reply })
            .await?;
        if status.nodes.is_empty() {
            return Ok(status);
        }
        for w in 1..self.inner.txs.len() {
            let groups = self
                .call_worker(w, |reply| Request::ShardStatus { reply })
                .await?;
            status.groups.extend(groups);
        }
        status
            .groups
            .sort_by(|a, b| a.entry.name.cmp(&b.entry.name));
        Ok(status)
    }

    /// Runs a command on a group, exactly once, and returns its output.
    pub async fn command<S: StateMachine>(
        &self,
        group: &str,
        cmd: S::Command,
    ) -> Result<S::Output, FleetError> {
        let data = postcard::to_stdvec(&cmd).map_err(|e| FleetError::Codec(e.to_string()))?;
        let out = self.command_raw(group, Bytes::from(data)).await?;
        postcard::from_bytes(&out).map_err(|e| FleetError::Codec(e.to_string()))
    }

    /// [`Fleet::command`] with the command already encoded (postcard), for clients in other
    /// languages or processes.
    ///
    /// The handle opens a session with the group on its first command there (thesis §6.3
    /// RegisterClient: one more entry, once) and numbers its commands in it, so a command retried
    /// across leader changes applies once. If the group forgot the session (more than
    /// `SessionConfig::sessions_max` clients registered since, or it sat idle for the session
    /// timeout), the command fails with [`FleetError::Session`] (`Expired`): whether an earlier
    /// copy of it applied is unknown. The next command opens a new session. A session left idle
    /// for half the timeout is replaced before it is used again, so that an idle handle does not
    /// meet `Expired`.
    pub async fn command_raw(&self, group: &str, data: Bytes) -> Result<Bytes, FleetError> {
        let session = self.group_session(group);
        let client_id = match session.id.get_or_try_init(|| self.register(group)).await {
            Ok(id) => *id,
            Err(e) => {
                // Names that are not groups leave nothing behind, so the map stays bounded by
                // the groups this handle really talks to.
                if matches!(e, FleetError::NoSuchGroup(_)) {
                    self.forget_session(group, &session);
                }
                return Err(e);
            }
        };
        let (seq, first_unacked) = {
            let mut seqs = session.seqs.lock().expect("session lock");
            seqs.next_seq += 1;
            let seq = seqs.next_seq;
            seqs.inflight.insert(seq);
            seqs.last_used = Instant::now();
            (seq, seqs.inflight.first().copied().unwrap_or(seq))
        };
        let result = self
            .command_in_session(
                group,
                data,
                SessionRef {
                    client_id,
                    seq,
                    first_unacked,
                },
            )
            .await;
        session
            .seqs
            .lock()
            .expect("session lock")
            .inflight
            .remove(&seq);
        if matches!(
            result,
            Err(FleetError::Session(SessionError::Expired { .. }) | FleetError::NoSuchGroup(_))
        ) {
            self.forget_session(group, &session);
        }
        result
    }

    /// This handle's session with `group`: the current one, or a new, unregistered one when
    /// there is none or the current one sat idle long enough that the group may expire it.
    fn group_session(&self, group: &str) -> Arc<GroupSession> {
        let renew_after = self.inner.settings.tick.saturating_mul(
            u32::try_from(self.inner.settings.sessions.session_timeout_ticks / 2)
                .unwrap_or(u32::MAX),
        );
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        if let Some(s) = sessions.get(group) {
            let seqs = s.seqs.lock().expect("session lock");
            if !(seqs.inflight.is_empty() && seqs.last_used.elapsed() >= renew_after) {
                drop(seqs);
                return s.clone();
            }
        }
        let fresh = Arc::new(GroupSession::new());
        sessions.insert(group.to_string(), fresh.clone());
        fresh
    }

    /// Drops `session` from the map if it is still the group's current one.
    fn forget_session(&self, group: &str, session: &Arc<GroupSession>) {
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        if sessions.get(group).is_some_and(|s| Arc::ptr_eq(s, session)) {
            sessions.remove(group);
        }
    }

    /// Registers a client session with `group` on its leader; returns the session's client id.
    async fn register(&self, group: &str) -> Result<u64, FleetError> {
        let bytes = self
            .route(
                group,
                |reply| Request::Register {
                    group: group.to_string(),
                    reply,
                },
                || rpc::Rpc::Register {
                    group: group.to_string(),
                },
                false,
            )
            .await?;
        let id: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
            FleetError::Codec(format!(
                "a session registration answered {} bytes, not 8",
                bytes.len()
            ))
        })?;
        Ok(u64::from_le_bytes(id))
    }

    async fn command_in_session(
        &self,
        group: &str,
        data: Bytes,
        session: SessionRef,
    ) -> Result<Bytes, FleetError> {
        let session = Some(session);
        let remote = || rpc::Rpc::Command {
            group: group.to_string(),
            data: data.clone(),
            session,
        };
        self.route(
            group,
            |reply| Request::Command {
                group: group.to_string(),
                data: data.clone(),
                session,
                reply,
            },
            remote,
            true,
        )
        .await
    }

    /// Runs a linearizable query (ReadIndex) on a group.
    pub async fn query<S: StateMachine>(
        &self,
        group: &str,
        q: S::Query,
    ) -> Result<S::Output, FleetError> {
        self.query_typed::<S>(group, q, true).await
    }

    /// Runs a query on this node's replica without asking the leader: fast, possibly stale.
    pub async fn query_local<S: StateMachine>(
        &self,
        group: &str,
        q: S::Query,
    ) -> Result<S::Output, FleetError> {
        self.query_typed::<S>(group, q, false).await
    }

    async fn query_typed<S: StateMachine>(
        &self,
        group: &str,
        q: S::Query,
        linearizable: bool,
    ) -> Result<S::Output, FleetError> {
        let data = postcard::to_stdvec(&q).map_err(|e| FleetError::Codec(e.to_string()))?;
        let out = self
            .query_raw(group, Bytes::from(data), linearizable)
            .await?;
        postcard::from_bytes(&out).map_err(|e| FleetError::Codec(e.to_string()))
    }

    /// A query already encoded (postcard). A stale (`linearizable = false`) query is answered
    /// by this node's replica if it hosts the group, else by the leader.
    pub async fn query_raw(
        &self,
        group: &str,
        data: Bytes,
        linearizable: bool,
    ) -> Result<Bytes, FleetError> {
        let remote = || rpc::Rpc::Query {
            group: group.to_string(),
            data: data.clone(),
            linearizable,
        };
        self.route(
            group,
            |reply| Request::Query {
                group: group.to_string(),
                data: data.clone(),
                linearizable,
                reply,
            },
            remote,
            false,
        )
        .await
    }

    /// Stops the node: every worker finishes its writes in flight, then storage closes.
    pub async fn shutdown(&self) -> Result<(), FleetError> {
        let mut replies = Vec::new();
        for tx in &self.inner.txs {
            let (reply, rx) = oneshot::channel();
            // Waits for room in a full queue (workers keep draining it); a worker that stopped
            // already refuses at once.
            if tx.send(Request::Shutdown { reply }).await.is_ok() {
                replies.push(rx);
            }
        }
        let mut result = Ok(());
        for rx in replies {
            if let Ok(Err(e)) = rx.await
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().expect("tasks lock"));
        for task in tasks {
            let _ = task.await;
        }
        let store = self.inner.store.lock().expect("store lock").take();
        if let Some(store) = store
            && let Ok(store) = Arc::try_unwrap(store)
        {
            let closed = tokio::task::spawn_blocking(move || store.close()).await;
            match closed {
                Ok(Ok(())) => {}
                Ok(Err(e)) if result.is_ok() => result = Err(e.into()),
                Err(e) if result.is_ok() => result = Err(FleetError::Storage(e.to_string())),
                _ => {}
            }
        }
        if let Some(transport) = &self.inner.transport {
            transport.shutdown().await;
        }
        match result {
            Err(FleetError::Shutdown) => Ok(()),
            other => other,
        }
    }
}

/// The catalog entries a status report lists.
pub type Nodes = Vec<NodeEntry>;
