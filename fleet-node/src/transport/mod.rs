//! Transport: QUIC with mutual TLS, one connection per node pair carrying every group.
//!
//! All traffic between two nodes, of every group, rides one QUIC connection (quinn, rustls with
//! the *ring* provider). Both sides present a certificate of the cluster CA; the peer's identity
//! is the URI `fleet://<cluster>/node/<name>` in its certificate ([`Identity`]), checked after
//! the handshake against the cluster and the runtime's catalog ([`PeerDirectory`]), and against
//! the sender of every frame.
//!
//! # What the runtime does with it
//!
//! 1. [`Transport::bind`] with a [`TransportConfig`], the node's [`Tls`] and a
//!    [`PeerDirectory`]; it returns the transport and the [`Inbound`] queues.
//! 2. Once per cycle of the node loop, for each destination node, call [`Transport::send`] with
//!    every `(group, message)` for it. The call encodes the batch into one frame (more only if
//!    a limit requires) and queues it without blocking; the connection is made, re-made and
//!    deduplicated in the background. Beyond `pending_bytes_per_peer_max` queued bytes the
//!    batch is **dropped** (counted and logged): Raft retries, and memory stays bounded.
//! 3. Read [`Inbound::frames`]: each [`InboundFrame`] is a batch from one proven sender. The
//!    transport has no per-group state; messages for groups this node does not host are dropped
//!    before delivery if [`PeerDirectory::hosts`] says so, and otherwise the runtime drops them.
//! 4. Use [`Transport::last_heard`] for node-level liveness (quiesced groups rely on it): any
//!    frame, even an empty one, refreshes it.
//! 5. Snapshots go on their own streams ([`Transport::open_snapshot`], [`Inbound::snapshots`]).
//! 6. Requests ([`Transport::request`], [`Inbound::requests`]): a node's requests to a peer (the
//!    commands and queries it forwards to a leader) ride the Raft stream in frames of their own,
//!    matched to their responses by id, at most `requests_in_flight_per_peer_max` at a time (if
//!    `frame_bytes_max` leaves room for any answer; else each gets a stream), and every request
//!    of a client ([`ClientConnection`]) gets a bidirectional stream of its own. DESIGN.md gives clients a stream per request; forwarding
//!    between nodes is far more frequent (two thirds of all writes in the fleet benchmark), and a
//!    stream per forwarded request cost a stream open, a hello and packets of its own each.
//!
//! ```no_run
//! # async fn example() -> Result<(), fleet_node::transport::TransportError> {
//! use std::sync::Arc;
//! use fleet_core::GroupId;
//! use fleet_node::transport::{StaticDirectory, Tls, Transport, TransportConfig};
//!
//! let directory = Arc::new(StaticDirectory::new());
//! directory.insert("n2", "10.0.0.2:7000".parse()?);
//! let config = TransportConfig { listen: "0.0.0.0:7000".parse().unwrap(), ..Default::default() };
//! let (transport, mut inbound) =
//!     Transport::<Vec<u8>>::bind(config, Tls::from_dir("certs/")?, directory).await?;
//! transport.send("n2", &[(GroupId(7), b"append".to_vec())])?;
//! if let Some(frame) = inbound.frames.recv().await {
//!     println!("{} sent {} messages", frame.from, frame.messages.len());
//! }
//! transport.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Limits
//!
//! Every limit is a field of [`TransportConfig`] ending in `_max`, checked before memory is
//! allocated for what it bounds. Bad input from a peer is refused with a log line and a counter
//! ([`RejectReason`]), never a panic.

pub mod certs;
mod conn;
mod error;
pub mod identity;
mod peer;
mod streams;
pub mod tls;
pub mod wire;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use conn::ClientConnection;
pub use error::{RejectReason, TransportError};
pub use fleet_core::GroupId;
pub use identity::{Identity, IdentityKind};
pub use streams::{InboundRequest, InboundSnapshot, Responder, SnapshotReceiver, SnapshotSender};
pub use tls::{ALPN, Tls};
pub use wire::PROTOCOL_VERSION;

use peer::Peer;
use wire::{FrameEncoder, FrameLimits};

/// What a transport carries: any serde type (the Raft message of `fleet-core` in production).
pub trait Message: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Message for T {}

/// QUIC application close codes and stream error codes used by the transport.
pub mod close_code {
    /// Orderly close.
    pub const NORMAL: u32 = 0;
    /// The connection lost the duplicate-connection resolution.
    pub const DUPLICATE: u32 = 1;
    /// The peer broke the protocol (bad frame, wrong stream, wrong sender...).
    pub const PROTOCOL: u32 = 2;
    /// The peer's identity was refused.
    pub const REFUSED: u32 = 3;
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 4;
    /// A stream was abandoned (timeout, queue full, response dropped).
    pub const ABORTED: u32 = 5;
}

/// Priority of the Raft stream: its frames go before snapshot and request data.
const RAFT_STREAM_PRIORITY: i32 = 2;
/// Priority of request streams.
const REQUEST_STREAM_PRIORITY: i32 = 1;
/// Priority of snapshot streams: lowest, so a snapshot never delays heartbeats.
const SNAPSHOT_STREAM_PRIORITY: i32 = 0;
/// Connection-level QUIC receive window: bounds what one peer can make this node buffer across
/// all its streams (each stream is also bounded by quinn's per-stream window).
const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// The transport's settings. Every `*_max` is a limit checked before allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// UDP address to listen on (and dial from). Default `0.0.0.0:7000`.
    pub listen: SocketAddr,
    /// Largest frame body in bytes, length prefix excluded. A batch larger than this is cut into
    /// several frames; a single message larger than this is dropped. Default 4 MiB + 64 KiB:
    /// room for a request or answer of `client_request_bytes_max` in a frame (see
    /// [`Transport::request`]).
    pub frame_bytes_max: u32,
    /// Most `(group, message)` pairs per frame. Default 65,536 (a heartbeat for each of tens of
    /// thousands of groups fits one frame).
    pub frame_messages_max: u32,
    /// Most concurrent streams a peer may open on one connection, each direction and kind (uni
    /// and bidi) counted separately; further opens wait in the peer's QUIC stack. Default 64.
    pub streams_per_connection_max: u32,
    /// Most connections (including handshakes in progress) from one IP address; further ones
    /// are refused. Default 64.
    pub connections_per_address_max: u32,
    /// Most bytes queued for one peer and not yet written; a batch that would exceed it is
    /// dropped. Default 64 MiB.
    pub pending_bytes_per_peer_max: u64,
    /// Longest a handshake, or a new stream's hello and first record (a request), may take.
    /// Default 5 s.
    pub handshake_time_max: Duration,
    /// A connection silent for this long is closed. Default 10 s.
    pub idle_time_max: Duration,
    /// Interval of QUIC keep-alives; must be well below `idle_time_max`. Default 2 s.
    pub keep_alive_interval: Duration,
    /// Largest snapshot chunk in bytes. Default 1 MiB.
    pub snapshot_chunk_bytes_max: u32,
    /// Largest request, and largest response. Default 4 MiB.
    pub client_request_bytes_max: u32,
    /// Most requests this node may have in flight to one peer ([`Transport::request`]); beyond
    /// it a request fails at once with [`TransportError::RequestsInFlight`]. Also the most
    /// requests in frames it takes from one peer and has not answered yet; beyond it they are
    /// refused at once (counted as [`RejectReason::Busy`]). Default 4,096.
    pub requests_in_flight_per_peer_max: usize,
    /// Capacity of [`Inbound::frames`]; when full, reading from peers pauses (QUIC flow control
    /// then pushes back to the senders, whose queues drop). Default 1,024.
    pub inbound_frames_max: usize,
    /// Capacity of [`Inbound::snapshots`]; when full, new snapshot streams are refused.
    /// Default 16.
    pub inbound_snapshots_max: usize,
    /// Capacity of [`Inbound::requests`]; when full, new request streams are refused.
    /// Default 1,024.
    pub inbound_requests_max: usize,
    /// First reconnection delay. Default 50 ms.
    pub reconnect_delay_min: Duration,
    /// Longest reconnection delay (the exponential backoff's cap). Default 5 s.
    pub reconnect_delay_max: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 7000)),
            frame_bytes_max: 4 * 1024 * 1024 + RPC_FRAME_OVERHEAD_MAX,
            frame_messages_max: 65_536,
            streams_per_connection_max: 64,
            connections_per_address_max: 64,
            pending_bytes_per_peer_max: 64 * 1024 * 1024,
            handshake_time_max: Duration::from_secs(5),
            idle_time_max: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(2),
            snapshot_chunk_bytes_max: 1024 * 1024,
            client_request_bytes_max: 4 * 1024 * 1024,
            requests_in_flight_per_peer_max: 4096,
            inbound_frames_max: 1024,
            inbound_snapshots_max: 16,
            inbound_requests_max: 1024,
            reconnect_delay_min: Duration::from_millis(50),
            reconnect_delay_max: Duration::from_secs(5),
        }
    }
}

/// Room a frame needs beyond a request's or answer's body: its header (version, cluster, sender,
/// whose names are far shorter), the counts, the item's tag, id and length.
pub const RPC_FRAME_OVERHEAD_MAX: u32 = 64 * 1024;

/// Smallest accepted `frame_bytes_max`: room for a header and a few messages.
pub const FRAME_BYTES_MAX_MIN: u32 = 1024;

impl TransportConfig {
    /// Checks that the settings are usable and consistent with each other.
    pub fn validate(&self) -> Result<(), TransportError> {
        let fail = |m: String| Err(TransportError::ConfigInvalid(m));
        if self.frame_bytes_max < FRAME_BYTES_MAX_MIN {
            return fail(format!(
                "frame_bytes_max = {} is below the minimum {FRAME_BYTES_MAX_MIN}",
                self.frame_bytes_max
            ));
        }
        if self.frame_messages_max == 0 {
            return fail("frame_messages_max must be at least 1".to_owned());
        }
        if self.pending_bytes_per_peer_max < u64::from(self.frame_bytes_max) {
            return fail(format!(
                "pending_bytes_per_peer_max = {} must hold at least one frame of frame_bytes_max = {}",
                self.pending_bytes_per_peer_max, self.frame_bytes_max
            ));
        }
        if self.streams_per_connection_max < 2 {
            return fail(
                "streams_per_connection_max must be at least 2 (Raft plus one more)".to_owned(),
            );
        }
        if self.connections_per_address_max == 0 {
            return fail("connections_per_address_max must be at least 1".to_owned());
        }
        if self.keep_alive_interval >= self.idle_time_max {
            return fail(format!(
                "keep_alive_interval = {:?} must be shorter than idle_time_max = {:?}",
                self.keep_alive_interval, self.idle_time_max
            ));
        }
        if self.handshake_time_max.is_zero() || self.idle_time_max.is_zero() {
            return fail("handshake_time_max and idle_time_max must be positive".to_owned());
        }
        if quinn::IdleTimeout::try_from(self.idle_time_max).is_err() {
            return fail(format!(
                "idle_time_max = {:?} is too long",
                self.idle_time_max
            ));
        }
        if self.snapshot_chunk_bytes_max == 0 || self.client_request_bytes_max == 0 {
            return fail(
                "snapshot_chunk_bytes_max and client_request_bytes_max must be positive".to_owned(),
            );
        }
        if self.inbound_frames_max == 0
            || self.inbound_snapshots_max == 0
            || self.inbound_requests_max == 0
        {
            return fail("inbound_*_max must be at least 1".to_owned());
        }
        if self.requests_in_flight_per_peer_max == 0 {
            return fail("requests_in_flight_per_peer_max must be at least 1".to_owned());
        }
        if self.reconnect_delay_min.is_zero() || self.reconnect_delay_min > self.reconnect_delay_max
        {
            return fail(
                "reconnect_delay_min must be positive and at most reconnect_delay_max".to_owned(),
            );
        }
        Ok(())
    }

    /// Whether frames can carry every request and answer (of up to `client_request_bytes_max`
    /// bytes): then requests between nodes ride the Raft stream, else streams of their own.
    fn requests_in_frames(&self) -> bool {
        u64::from(self.frame_bytes_max)
            >= u64::from(self.client_request_bytes_max) + u64::from(RPC_FRAME_OVERHEAD_MAX)
    }

    fn frame_limits(&self) -> FrameLimits {
        FrameLimits {
            frame_bytes_max: self.frame_bytes_max,
            frame_messages_max: self.frame_messages_max,
        }
    }

    fn quic_transport(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        let streams = quinn::VarInt::from_u32(self.streams_per_connection_max);
        t.max_concurrent_uni_streams(streams);
        t.max_concurrent_bidi_streams(streams);
        t.max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_time_max).ok());
        t.keep_alive_interval(Some(self.keep_alive_interval));
        t.receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW_BYTES));
        Arc::new(t)
    }
}

/// Where a node can be dialed: a host (IP address or DNS name, which its certificate must
/// name) and a UDP port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    host: String,
    port: u16,
}

impl PeerAddr {
    /// The host part (without IPv6 brackets); also the TLS server name dialed.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The UDP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    async fn resolve(&self) -> Result<SocketAddr, TransportError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| TransportError::Unreachable {
                peer: self.to_string(),
                reason: format!("cannot resolve host {:?}", self.host),
            })
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        PeerAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl FromStr for PeerAddr {
    type Err = TransportError;

    /// Parses `host:port`, `ip:port` or `[ipv6]:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let bad = || TransportError::ConfigInvalid(format!("{s:?} is not host:port"));
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse::<u16>().map_err(|_| bad())?;
        if host.is_empty() || host.contains([':', '[', ']', '/']) {
            return Err(bad());
        }
        Ok(PeerAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What the transport asks the runtime's catalog. Implementations must be cheap: `is_node` is
/// called once per connection, `hosts` once per received message.
pub trait PeerDirectory: Send + Sync + 'static {
    /// Whether `name` is a node of this cluster allowed to connect.
    fn is_node(&self, name: &str) -> bool;
    /// Where to dial `name`, if known.
    fn address(&self, name: &str) -> Option<PeerAddr>;
    /// Whether this node hosts a replica of `group`. Messages for groups it does not host are
    /// dropped (and counted) before delivery. The default keeps everything.
    fn hosts(&self, group: GroupId) -> bool {
        let _ = group;
        true
    }
}

/// A [`PeerDirectory`] held in memory: nodes and addresses inserted by hand, and optionally a
/// set of hosted groups. For tests and for a runtime without a catalog yet.
#[derive(Debug, Default)]
pub struct StaticDirectory {
    nodes: RwLock<HashMap<String, Option<PeerAddr>>>,
    groups: RwLock<Option<HashSet<GroupId>>>,
    /// Whether `groups` is set; read without the lock on every message.
    filtering: std::sync::atomic::AtomicBool,
}

impl StaticDirectory {
    /// An empty directory (knows no node, hosts every group).
    pub fn new() -> StaticDirectory {
        StaticDirectory::default()
    }

    /// Adds (or moves) node `name` at `addr`.
    pub fn insert(&self, name: &str, addr: PeerAddr) {
        self.nodes
            .write()
            .expect("directory lock is never poisoned")
            .insert(name.to_owned(), Some(addr));
    }

    /// Adds node `name` without an address: it may connect, but is not dialed.
    pub fn allow(&self, name: &str) {
        self.nodes
            .write()
            .expect("directory lock is never poisoned")
            .entry(name.to_owned())
            .or_insert(None);
    }

    /// Forgets node `name`.
    pub fn remove(&self, name: &str) {
        self.nodes
            .write()
            .expect("directory lock is never poisoned")
            .remove(name);
    }

    /// Restricts the hosted groups to `groups` (`None`: host every group).
    pub fn set_hosted_groups(&self, groups: Option<HashSet<GroupId>>) {
        let mut current = self
            .groups
            .write()
            .expect("directory lock is never poisoned");
        self.filtering.store(groups.is_some(), Ordering::Release);
        *current = groups;
    }
}

impl PeerDirectory for StaticDirectory {
    fn is_node(&self, name: &str) -> bool {
        self.nodes
            .read()
            .expect("directory lock is never poisoned")
            .contains_key(name)
    }

    fn address(&self, name: &str) -> Option<PeerAddr> {
        self.nodes
            .read()
            .expect("directory lock is never poisoned")
            .get(name)
            .cloned()
            .flatten()
    }

    fn hosts(&self, group: GroupId) -> bool {
        if !self.filtering.load(Ordering::Acquire) {
            return true;
        }
        self.groups
            .read()
            .expect("directory lock is never poisoned")
            .as_ref()
            .is_none_or(|groups| groups.contains(&group))
    }
}

/// One batch of messages received from a peer node.
#[derive(Debug)]
pub struct InboundFrame<M> {
    /// The sender, as proven by its certificate (and checked against the frame).
    pub from: Arc<str>,
    /// The messages, in the order sent.
    pub messages: Vec<(GroupId, M)>,
}

/// The queues the transport delivers into; each is bounded by its `inbound_*_max` setting.
#[derive(Debug)]
pub struct Inbound<M> {
    /// Raft frames (never empty: an empty frame only refreshes [`Transport::last_heard`]).
    pub frames: mpsc::Receiver<InboundFrame<M>>,
    /// Snapshots arriving on their own streams.
    pub snapshots: mpsc::Receiver<InboundSnapshot>,
    /// Requests arriving on their own streams, from clients and nodes.
    pub requests: mpsc::Receiver<InboundRequest>,
}

/// A snapshot of one peer's counters and state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// Whether a connection is established now.
    pub connected: bool,
    /// Bytes of frames written to the peer.
    pub bytes_sent: u64,
    /// Bytes of frames received from the peer.
    pub bytes_received: u64,
    /// Frames written.
    pub frames_sent: u64,
    /// Frames received and accepted.
    pub frames_received: u64,
    /// Messages received and accepted (before the hosted-group filter).
    pub messages_received: u64,
    /// Messages dropped on the way out (queue full, unreachable, too large, write failed).
    pub messages_dropped: u64,
    /// Messages received for groups this node does not host, dropped.
    pub messages_unhosted: u64,
    /// Frames, streams or connections of this peer refused.
    pub frames_rejected: u64,
    /// Connections established after the first.
    pub reconnects: u64,
    /// Connections closed by the duplicate-connection resolution.
    pub duplicate_connections: u64,
    /// Bytes queued and not yet written.
    pub pending_bytes: u64,
    /// QUIC's smoothed round-trip estimate, when connected.
    pub rtt: Option<Duration>,
    /// Whether the current connection was dialed by this node (`None` when not connected).
    pub dialed_by_us: Option<bool>,
    /// When the last frame from the peer arrived.
    pub last_heard: Option<Instant>,
}

/// Counts live background tasks so that shutdown can wait for them.
#[derive(Default)]
struct TaskCounter {
    live: AtomicUsize,
    idle: Notify,
}

struct TaskGuard(Arc<TaskCounter>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl TaskCounter {
    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Connections per remote IP address (established and handshaking).
#[derive(Default)]
struct AddressCounts {
    counts: Mutex<HashMap<IpAddr, u32>>,
}

struct AddressSlot {
    counts: Arc<AddressCounts>,
    ip: IpAddr,
}

impl AddressCounts {
    fn take(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<AddressSlot> {
        let mut counts = self.counts.lock().expect("address lock is never poisoned");
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .counts
            .lock()
            .expect("address lock is never poisoned");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The state shared by the transport handle and its tasks.
pub(crate) struct Inner<M> {
    config: TransportConfig,
    identity: Identity,
    incarnation: u64,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    directory: Arc<dyn PeerDirectory>,
    encoder: FrameEncoder,
    limits: FrameLimits,
    peers: RwLock<HashMap<Arc<str>, Arc<Peer>>>,
    frames_tx: mpsc::Sender<InboundFrame<M>>,
    snapshots_tx: mpsc::Sender<InboundSnapshot>,
    requests_tx: mpsc::Sender<InboundRequest>,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    addresses: Arc<AddressCounts>,
    cancel: CancellationToken,
    tasks: Arc<TaskCounter>,
    /// The runtime `bind` ran on; every task is spawned there, so `send` may be called from
    /// any thread.
    runtime: tokio::runtime::Handle,
    epoch: Instant,
    /// The id of this node's next request to a peer (ids are per sender, so one counter serves
    /// every peer).
    next_request_id: AtomicU64,
}

impl<M: Message> streams::RpcReplies for Inner<M> {
    fn reply(&self, peer: &Arc<Peer>, item: wire::RpcItem) -> Result<(), TransportError> {
        let frame = self.encoder.encode_rpc(&item)?;
        self.send_rpc_frame(peer, frame)
    }
}

/// The user's handle; when the last clone is dropped the transport shuts down.
struct Handle<M: Message> {
    inner: Arc<Inner<M>>,
}

impl<M: Message> Drop for Handle<M> {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
        self.inner.endpoint.close(
            quinn::VarInt::from_u32(close_code::SHUTDOWN),
            b"node shutting down",
        );
    }
}

/// A node's transport: one QUIC endpoint, one connection per peer node. Cheap to clone.
pub struct Transport<M: Message> {
    handle: Arc<Handle<M>>,
}

impl<M: Message> Clone for Transport<M> {
    fn clone(&self) -> Self {
        Transport {
            handle: self.handle.clone(),
        }
    }
}

impl<M: Message> fmt::Debug for Transport<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("identity", &self.inner().identity)
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl<M: Message> Transport<M> {
    /// Binds the UDP socket, starts accepting connections, and returns the transport with the
    /// queues it delivers into. `tls` must hold a node certificate.
    pub async fn bind(
        config: TransportConfig,
        tls: Tls,
        directory: Arc<dyn PeerDirectory>,
    ) -> Result<(Transport<M>, Inbound<M>), TransportError> {
        config.validate()?;
        tls.require_node()?;
        let quic = config.quic_transport();
        let server_config = tls.quinn_server_config(quic.clone())?;
        let client_config = tls.quinn_client_config(quic)?;
        let endpoint = quinn::Endpoint::server(server_config, config.listen).map_err(|source| {
            TransportError::Bind {
                addr: config.listen,
                source,
            }
        })?;
        let identity = tls.identity().clone();
        let (frames_tx, frames) = mpsc::channel(config.inbound_frames_max);
        let (snapshots_tx, snapshots) = mpsc::channel(config.inbound_snapshots_max);
        let (requests_tx, requests) = mpsc::channel(config.inbound_requests_max);
        let limits = config.frame_limits();
        let inner = Arc::new(Inner {
            encoder: FrameEncoder::new(&identity.cluster, &identity.name, limits),
            limits,
            incarnation: new_incarnation(&identity.name),
            identity,
            endpoint,
            client_config,
            directory,
            peers: RwLock::new(HashMap::new()),
            frames_tx,
            snapshots_tx,
            requests_tx,
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            addresses: Arc::default(),
            cancel: CancellationToken::new(),
            tasks: Arc::default(),
            runtime: tokio::runtime::Handle::current(),
            epoch: Instant::now(),
            next_request_id: AtomicU64::new(0),
            config,
        });
        conn::start(&inner);
        tracing::info!(
            node = %inner.identity.name,
            cluster = %inner.identity.cluster,
            addr = %inner.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "transport listening"
        );
        let transport = Transport {
            handle: Arc::new(Handle { inner }),
        };
        Ok((
            transport,
            Inbound {
                frames,
                snapshots,
                requests,
            },
        ))
    }

    fn inner(&self) -> &Arc<Inner<M>> {
        &self.handle.inner
    }

    /// The address the endpoint is bound to (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner()
            .endpoint
            .local_addr()
            .expect("a bound endpoint has a local address")
    }

    /// This node's identity (from its certificate).
    pub fn identity(&self) -> &Identity {
        &self.inner().identity
    }

    /// The settings in force.
    pub fn config(&self) -> &TransportConfig {
        &self.inner().config
    }

    /// Queues `messages` for node `to` as one frame (several only if a limit requires) and
    /// returns at once. An empty batch sends an empty frame, which refreshes the peer's
    /// [`Transport::last_heard`] of this node.
    ///
    /// Errors say what was dropped; Raft retries, so the caller normally counts and carries on:
    /// [`TransportError::QueueFull`] (the whole batch dropped), [`TransportError::MessageTooLarge`]
    /// (only the oversized messages dropped, the rest queued), [`TransportError::UnknownPeer`].
    pub fn send(&self, to: &str, messages: &[(GroupId, M)]) -> Result<(), TransportError> {
        let inner = self.inner();
        if inner.cancel.is_cancelled() {
            return Err(TransportError::Shutdown);
        }
        let peer = inner.peer_to_dial(to)?;
        let batch = inner.encoder.encode(messages)?;
        let mut result = Ok(());
        for &(group, bytes) in &batch.too_large {
            peer.count_dropped(1);
            tracing::warn!(
                node = %inner.identity.name, peer = %to, %group, bytes,
                limit = inner.config.frame_bytes_max,
                "dropped a message larger than frame_bytes_max"
            );
            result = Err(TransportError::MessageTooLarge {
                group: group.0,
                bytes,
                limit: inner.config.frame_bytes_max,
            });
        }
        if batch.frames.is_empty() {
            return result;
        }
        let message_count = messages.len() - batch.too_large.len();
        let limit = inner.config.pending_bytes_per_peer_max;
        let queued = match peer.current_link() {
            Some(link) if batch.frames.len() == 1 => {
                let frame = batch.frames.into_iter().next().expect("one frame");
                peer.send_or_enqueue(&link, frame, batch.message_counts[0], limit)
            }
            _ => peer.enqueue(batch.frames, &batch.message_counts, batch.bytes, limit),
        };
        match queued {
            Ok(()) => result,
            Err(pending_bytes) => {
                peer.count_dropped(message_count as u64);
                let first = {
                    let mut queue = peer.queue.lock().expect("queue lock is never poisoned");
                    !std::mem::replace(&mut queue.dropping, true)
                };
                if first {
                    tracing::warn!(
                        node = %inner.identity.name, peer = %to, pending_bytes, limit,
                        "peer is not keeping up; dropping Raft messages until its queue drains"
                    );
                } else {
                    tracing::debug!(node = %inner.identity.name, peer = %to, messages = message_count, "dropped");
                }
                Err(TransportError::QueueFull {
                    peer: to.to_owned(),
                    messages: message_count,
                    pending_bytes,
                    limit,
                })
            }
        }
    }

    /// When a frame (or connection hello) last arrived from `peer`; `None` if never.
    pub fn last_heard(&self, peer: &str) -> Option<Instant> {
        let inner = self.inner();
        inner.peer(peer).and_then(|p| p.last_heard(inner.epoch))
    }

    /// Whether a connection to `peer` is established now.
    pub fn is_connected(&self, peer: &str) -> bool {
        self.inner()
            .peer(peer)
            .is_some_and(|p| p.current_link().is_some())
    }

    /// Bytes queued for `peer` and not yet written (a backpressure signal).
    pub fn pending_bytes(&self, peer: &str) -> u64 {
        self.inner().peer(peer).map_or(0, |p| p.pending_bytes())
    }

    /// Counters and state of `peer`, if the transport has ever dealt with it.
    pub fn peer_stats(&self, peer: &str) -> Option<PeerStats> {
        let inner = self.inner();
        inner.peer(peer).map(|p| inner.stats_of(&p))
    }

    /// Counters and state of every peer the transport has dealt with, by name.
    pub fn peers(&self) -> BTreeMap<String, PeerStats> {
        let inner = self.inner();
        let peers: Vec<Arc<Peer>> = inner
            .peers
            .read()
            .expect("peers lock is never poisoned")
            .values()
            .cloned()
            .collect();
        peers
            .iter()
            .map(|p| (p.name.to_string(), inner.stats_of(p)))
            .collect()
    }

    /// How many times input was refused for `reason`, over all peers (including connections
    /// refused before the peer's name was known).
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.inner().rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// Opens a snapshot stream to `to`, connecting first if needed. `meta` (at most a few KiB)
    /// describes the snapshot to the receiver.
    pub async fn open_snapshot(
        &self,
        to: &str,
        meta: Vec<u8>,
    ) -> Result<SnapshotSender, TransportError> {
        let inner = self.inner();
        let link = inner.link_to(to).await?;
        let send = conn::open_uni_stream(
            inner,
            &link,
            wire::StreamKind::Snapshot { meta },
            SNAPSHOT_STREAM_PRIORITY,
        )
        .await?;
        Ok(SnapshotSender {
            send,
            chunk_bytes_max: inner.config.snapshot_chunk_bytes_max,
        })
    }

    /// Sends one request to node `to` and waits for the response (at most
    /// `client_request_bytes_max` bytes each way). The caller bounds the wait with its own
    /// deadline.
    ///
    /// The request rides the long-lived Raft stream in a frame of its own (no new stream, and
    /// small frames share QUIC packets); the peer answers the same way, matched by id. That
    /// needs frames with room for any answer (`frame_bytes_max` at least
    /// `client_request_bytes_max` + [`RPC_FRAME_OVERHEAD_MAX`], as the defaults are); with
    /// smaller frames every request gets a bidirectional stream of its own. If the connection
    /// closes with the request in flight, it fails with [`TransportError::Unreachable`] (the
    /// peer may or may not have handled it; the runtime retries with the same session).
    pub async fn request(&self, to: &str, body: &[u8]) -> Result<Bytes, TransportError> {
        let inner = self.inner();
        let limit = inner.config.client_request_bytes_max;
        if body.len() as u64 > u64::from(limit) {
            return Err(TransportError::TooLarge {
                what: "request",
                len: body.len() as u64,
                limit: u64::from(limit),
            });
        }
        let link = inner.link_to(to).await?;
        if !inner.config.requests_in_frames() {
            return conn::request_on(&link.conn, &inner.identity, &inner.config, body).await;
        }
        let peer = inner.peer_to_dial(to)?;
        let id = inner.next_request_id.fetch_add(1, Ordering::Relaxed);
        let frame = inner.encoder.encode_rpc(&wire::RpcItem::Request {
            id,
            body: Bytes::copy_from_slice(body),
        })?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut pending = peer
                .requests
                .lock()
                .expect("requests lock is never poisoned");
            let max = inner.config.requests_in_flight_per_peer_max;
            if pending.len() >= max {
                return Err(TransportError::RequestsInFlight {
                    peer: to.to_owned(),
                    limit: max,
                });
            }
            pending.insert(id, tx);
        }
        // Forgets the request however this future ends (answered, failed, or dropped).
        let _pending = peer::PendingRequest { peer: &peer, id };
        inner.send_rpc_frame(&peer, frame)?;
        tokio::select! {
            answer = rx => answer.unwrap_or(Err(TransportError::Shutdown)),
            _ = link.conn.closed() => Err(TransportError::Unreachable {
                peer: to.to_owned(),
                reason: "the connection closed with the request in flight".into(),
            }),
        }
    }

    /// Closes every connection, stops every task and waits (boundedly) until they have stopped
    /// and the endpoint is idle, so the port can be bound again.
    pub async fn shutdown(&self) {
        let inner = self.inner();
        inner.cancel.cancel();
        inner.endpoint.close(
            quinn::VarInt::from_u32(close_code::SHUTDOWN),
            b"node shutting down",
        );
        let wait = inner.config.handshake_time_max;
        if tokio::time::timeout(wait, inner.tasks.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(node = %inner.identity.name, "transport tasks still running after shutdown");
        }
        // The close frames go out at once; a peer that is already gone never acknowledges them,
        // and waiting out its connection's draining period (3 PTOs, seconds after losses) would
        // only delay the caller.
        let _ = tokio::time::timeout(wait.min(CLOSE_WAIT_MAX), inner.endpoint.wait_idle()).await;
        tracing::info!(node = %inner.identity.name, "transport shut down");
    }
}

/// How long `shutdown` waits for closed connections to drain, at most.
const CLOSE_WAIT_MAX: Duration = Duration::from_millis(250);

impl<M: Message> Inner<M> {
    /// Queues a frame carrying a request or a response for `peer`'s writer task. Unlike Raft
    /// frames (written at once when nothing is queued), these always wait for the writer: under
    /// load many of them are then written together and share QUIC packets (measured with the
    /// fleet benchmark: a quarter to a third fewer UDP datagrams per write at 64 and 256
    /// clients), and at low load the writer task runs at once.
    fn send_rpc_frame(&self, peer: &Peer, frame: Bytes) -> Result<(), TransportError> {
        if self.cancel.is_cancelled() {
            return Err(TransportError::Shutdown);
        }
        let limit = self.config.pending_bytes_per_peer_max;
        let bytes = frame.len() as u64;
        let queued = peer.enqueue(vec![frame], &[0], bytes, limit);
        queued.map_err(|pending_bytes| TransportError::QueueFull {
            peer: peer.name.to_string(),
            messages: 1,
            pending_bytes,
            limit,
        })
    }

    /// A request or response that arrived in a frame from `peer`.
    fn take_rpc(self: &Arc<Self>, peer: &Arc<Peer>, item: wire::RpcItem) {
        match item {
            wire::RpcItem::Request { id, body } => {
                // A peer may not have more requests in flight here than this node allows
                // itself towards a peer: beyond it, refused at once (a peer that ignores its
                // own bound cannot make this node hold unbounded work).
                let max = self.config.requests_in_flight_per_peer_max;
                if peer.inbound_requests.fetch_add(1, Ordering::Relaxed) >= max {
                    peer.inbound_requests.fetch_sub(1, Ordering::Relaxed);
                    let e = TransportError::RequestsInFlight {
                        peer: peer.name.to_string(),
                        limit: max,
                    };
                    self.count_busy(peer, &e);
                    let refused = wire::RpcItem::Refused {
                        id,
                        reason: e.to_string(),
                    };
                    let _ = streams::RpcReplies::reply(self.as_ref(), peer, refused);
                    return;
                }
                let responder = Responder::frame(
                    id,
                    self.config.client_request_bytes_max,
                    peer.clone(),
                    self.clone(),
                );
                let request = InboundRequest {
                    from: Identity {
                        cluster: self.identity.cluster.clone(),
                        kind: IdentityKind::Node,
                        name: peer.name.to_string(),
                    },
                    body,
                    responder,
                };
                // Dropped when full: its responder refuses it, so the requester hears at once.
                if self.requests_tx.try_send(request).is_err() {
                    let e = TransportError::Protocol(
                        "inbound_requests_max requests are already waiting".into(),
                    );
                    self.count_busy(peer, &e);
                }
            }
            wire::RpcItem::Response { id, body } => {
                peer.answer(id, Ok(body));
            }
            wire::RpcItem::Refused { id, reason } => {
                peer.answer(
                    id,
                    Err(TransportError::Refused {
                        peer: peer.name.to_string(),
                        reason,
                    }),
                );
            }
        }
    }

    /// Counts a request from `peer` refused because too many wait (`RejectReason::Busy`).
    fn count_busy(&self, peer: &Peer, error: &TransportError) {
        if let Some(link) = peer.current_link() {
            self.count_rejection(
                Some(peer),
                link.conn.remote_address(),
                RejectReason::Busy,
                error,
            );
        }
    }

    fn peer(&self, name: &str) -> Option<Arc<Peer>> {
        self.peers
            .read()
            .expect("peers lock is never poisoned")
            .get(name)
            .cloned()
    }

    /// The peer entry of a node, created (with its writer task) on first use.
    fn peer_entry(self: &Arc<Self>, name: &str) -> Arc<Peer> {
        if let Some(peer) = self.peer(name) {
            return peer;
        }
        let mut peers = self.peers.write().expect("peers lock is never poisoned");
        if let Some(peer) = peers.get(name) {
            return peer.clone();
        }
        let peer = Arc::new(Peer::new(Arc::from(name)));
        peers.insert(peer.name.clone(), peer.clone());
        drop(peers);
        conn::start_peer(self, peer.clone());
        peer
    }

    /// The peer entry for sending to `name`, which must be a node of the catalog.
    fn peer_to_dial(self: &Arc<Self>, name: &str) -> Result<Arc<Peer>, TransportError> {
        if let Some(peer) = self.peer(name) {
            return Ok(peer);
        }
        if name == self.identity.name || !self.directory.is_node(name) {
            return Err(TransportError::UnknownPeer {
                peer: name.to_owned(),
            });
        }
        Ok(self.peer_entry(name))
    }

    /// The current link to `name`, dialing it if needed (bounded by twice `handshake_time_max`).
    async fn link_to(self: &Arc<Self>, name: &str) -> Result<Arc<peer::Link>, TransportError> {
        let peer = self.peer_to_dial(name)?;
        let mut link_rx = peer.link.subscribe();
        if let Some(link) = peer.current_link() {
            return Ok(link);
        }
        peer.want_connection.store(true, Ordering::Release);
        peer.wake.notify_one();
        let wait = self.config.handshake_time_max * 2;
        let found = tokio::time::timeout(wait, async {
            loop {
                if let Some(link) = peer.current_link() {
                    return Ok(link);
                }
                if link_rx.changed().await.is_err() {
                    return Err(TransportError::Shutdown);
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            Err(TransportError::Unreachable {
                peer: name.to_owned(),
                reason: format!("no connection within {wait:?}"),
            })
        })
    }

    fn stats_of(&self, peer: &Peer) -> PeerStats {
        let c = &peer.counters;
        let link = peer.current_link();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PeerStats {
            connected: link.is_some(),
            bytes_sent: load(&c.bytes_sent),
            bytes_received: load(&c.bytes_received),
            frames_sent: load(&c.frames_sent),
            frames_received: load(&c.frames_received),
            messages_received: load(&c.messages_received),
            messages_dropped: load(&c.messages_dropped),
            messages_unhosted: load(&c.messages_unhosted),
            frames_rejected: load(&c.frames_rejected),
            reconnects: load(&c.reconnects),
            duplicate_connections: load(&c.duplicate_connections),
            pending_bytes: peer.pending_bytes(),
            rtt: link.as_ref().map(|l| l.conn.rtt()),
            dialed_by_us: link.as_ref().map(|l| l.dialed_by_us),
            last_heard: peer.last_heard(self.epoch),
        }
    }

    /// Counts and logs refused input; `peer` is the peer's name when known.
    fn count_rejection(
        &self,
        peer: Option<&Peer>,
        remote: SocketAddr,
        reason: RejectReason,
        error: &TransportError,
    ) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
        let label = peer.map_or_else(|| "unknown".to_owned(), |p| p.name.to_string());
        metrics::counter!("fleet_transport_rejected_total", "peer" => label.clone(), "reason" => reason.as_str())
            .increment(1);
        if let Some(peer) = peer {
            peer.counters
                .frames_rejected
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(
            node = %self.identity.name, peer = %label, %remote, reason = reason.as_str(), %error,
            "refused input from peer"
        );
    }
}

/// A number that differs each time a transport starts (time, process id and name mixed), so a
/// restarted peer is told from a duplicate connection of a live one.
fn new_incarnation(name: &str) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    static STARTS: AtomicU64 = AtomicU64::new(0);
    let starts = STARTS.fetch_add(1, Ordering::Relaxed);
    peer::splitmix64(
        nanos
            ^ u64::from(std::process::id()).rotate_left(32)
            ^ peer::fnv1a(name.as_bytes())
            ^ starts.rotate_left(48),
    )
}
