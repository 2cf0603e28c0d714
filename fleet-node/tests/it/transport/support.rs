//! Helpers of the transport tests: a test PKI, nodes on 127.0.0.1 port 0, a raw QUIC "rogue"
//! peer that can send anything, and bounded waits on conditions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleet_node::transport::certs::{CertificateAuthority, Validity};
use fleet_node::transport::wire::{PROTOCOL_VERSION, StreamHello, StreamKind};
use fleet_node::transport::{
    IdentityKind, Inbound, InboundFrame, StaticDirectory, Tls, Transport, TransportConfig,
};
use serde::{Deserialize, Serialize};

/// The message type the tests send: an enum, so bad tags can be tested.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// A small message, like a Raft heartbeat.
    Heartbeat { term: u64, commit: u64 },
    /// A message with a payload, like an append.
    Append {
        term: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

/// A cluster CA and the certificates it issues.
pub struct Pki {
    pub ca: CertificateAuthority,
}

impl Pki {
    pub fn new(cluster: &str) -> Pki {
        Pki {
            ca: CertificateAuthority::generate(cluster, Validity::days_from_now(1)).unwrap(),
        }
    }

    pub fn node(&self, name: &str) -> Tls {
        self.issue(IdentityKind::Node, name, Validity::days_from_now(1))
    }

    pub fn client(&self, name: &str) -> Tls {
        self.issue(IdentityKind::Client, name, Validity::days_from_now(1))
    }

    pub fn issue(&self, kind: IdentityKind, name: &str, validity: Validity) -> Tls {
        let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        self.ca
            .issue(kind, name, &hosts, validity)
            .unwrap()
            .tls()
            .unwrap()
    }

    /// A certificate whose validity ended yesterday.
    pub fn expired_node(&self, name: &str) -> Tls {
        let now = SystemTime::now();
        let validity = Validity {
            not_before: now - Duration::from_secs(10 * 86_400),
            not_after: now - Duration::from_secs(86_400),
        };
        self.issue(IdentityKind::Node, name, validity)
    }
}

/// Settings for tests: loopback, short timeouts, fast reconnects.
pub fn config() -> TransportConfig {
    TransportConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        handshake_time_max: Duration::from_secs(1),
        idle_time_max: Duration::from_secs(5),
        keep_alive_interval: Duration::from_millis(500),
        reconnect_delay_min: Duration::from_millis(10),
        reconnect_delay_max: Duration::from_millis(200),
        ..TransportConfig::default()
    }
}

/// One node under test.
pub struct Node {
    pub name: String,
    pub transport: Transport<Msg>,
    pub inbound: Inbound<Msg>,
    pub directory: Arc<StaticDirectory>,
}

impl Node {
    pub async fn start(pki: &Pki, name: &str, config: TransportConfig) -> Node {
        let directory = Arc::new(StaticDirectory::new());
        let (transport, inbound) = Transport::bind(config, pki.node(name), directory.clone())
            .await
            .unwrap();
        Node {
            name: name.to_owned(),
            transport,
            inbound,
            directory,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// Receives the next frame, failing the test after `within`.
    pub async fn recv(&mut self, within: Duration) -> InboundFrame<Msg> {
        tokio::time::timeout(within, self.inbound.frames.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no frame within {within:?}", self.name))
            .expect("the transport is running")
    }
}

/// Starts nodes and tells each the addresses of all the others.
pub async fn start_nodes(pki: &Pki, names: &[&str], config: TransportConfig) -> Vec<Node> {
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(Node::start(pki, name, config.clone()).await);
    }
    introduce(&nodes);
    nodes
}

pub fn introduce(nodes: &[Node]) {
    for a in nodes {
        for b in nodes {
            if a.name != b.name {
                a.directory.insert(&b.name, b.addr().into());
            }
        }
    }
}

/// Polls `condition` every few milliseconds; fails the test with `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A raw QUIC peer with a certificate of the test's choosing, to send what no transport would.
pub struct Rogue {
    /// Kept so the connection outlives nothing it needs.
    pub _endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
}

/// Connects to `server` with `tls` (whose CA must be the server's for the handshake to
/// complete on this side).
pub async fn rogue(tls: &Tls, server: SocketAddr) -> Result<Rogue, quinn::ConnectionError> {
    let quic = Arc::new(quinn::TransportConfig::default());
    rogue_with(tls.quinn_client_config(quic).unwrap(), server).await
}

pub async fn rogue_with(
    client_config: quinn::ClientConfig,
    server: SocketAddr,
) -> Result<Rogue, quinn::ConnectionError> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(client_config, server, "127.0.0.1")
        .unwrap()
        .await?;
    Ok(Rogue {
        _endpoint: endpoint,
        conn,
    })
}

impl Rogue {
    /// Opens a unidirectional stream and writes `bytes` on it.
    pub async fn uni(&self, bytes: &[u8]) -> quinn::SendStream {
        let mut send = self.conn.open_uni().await.unwrap();
        send.write_all(bytes).await.unwrap();
        send
    }

    /// Opens the Raft stream with a correct hello from `sender` of `cluster`.
    pub async fn raft_stream(&self, cluster: &str, sender: &str) -> quinn::SendStream {
        self.uni(&hello(cluster, sender, StreamKind::Raft { incarnation: 1 }).to_wire())
            .await
    }

    /// Waits until the server closes the connection; returns its code and reason.
    pub async fn closed(&self) -> (u64, String) {
        closed(&self.conn).await
    }
}

pub fn hello(cluster: &str, sender: &str, kind: StreamKind) -> StreamHello {
    StreamHello {
        version: PROTOCOL_VERSION,
        cluster_id: cluster.to_owned(),
        sender: sender.to_owned(),
        kind,
    }
}

/// Waits (at most 5 s) until `conn` is closed; returns the application close code and reason,
/// or the transport-level code and the error text.
pub async fn closed(conn: &quinn::Connection) -> (u64, String) {
    let error = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the server closes the connection within 5 s");
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => (
            close.error_code.into_inner(),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        quinn::ConnectionError::ConnectionClosed(close) => {
            (u64::from(close.error_code), format!("{close}"))
        }
        other => (u64::MAX, other.to_string()),
    }
}
