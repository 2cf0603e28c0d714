//! The transport's one error type, and the reasons a peer's input is rejected.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the transport, its certificates and its wire format.
///
/// Each message says what happened and, where there is one, what to do about it.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A [`TransportConfig`](super::TransportConfig) setting is out of range.
    #[error("invalid transport setting: {0}")]
    ConfigInvalid(String),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },

    /// A file would be overwritten.
    #[error("{path} already exists; pass --force to overwrite it")]
    FileExists {
        /// The file that exists.
        path: PathBuf,
    },

    /// A certificate or key is missing, unreadable or unusable.
    #[error("certificate problem: {0}")]
    Certificate(String),

    /// A certificate's identity URI is not `fleet://<cluster>/node/<name>` or
    /// `fleet://<cluster>/client/<name>`.
    #[error("bad identity {uri:?}: {reason}")]
    Identity {
        /// The URI (or a description of what was found instead).
        uri: String,
        /// What is wrong with it.
        reason: String,
    },

    /// rustls refused the TLS configuration.
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),

    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}; is another process using the port?")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },

    /// No address is known for a node; the runtime's catalog must name it first.
    #[error("no address known for node {peer:?}; it must be in the catalog before it is sent to")]
    UnknownPeer {
        /// The node asked for.
        peer: String,
    },

    /// The peer is not connected and could not be reached in time; try again later.
    #[error("node {peer:?} is not reachable now: {reason}")]
    Unreachable {
        /// The node asked for.
        peer: String,
        /// Why (the last connection error, or a timeout).
        reason: String,
    },

    /// Messages were dropped because too many bytes are already queued for this peer; Raft
    /// retries them, so callers normally count this and carry on.
    #[error(
        "dropped {messages} messages for node {peer:?}: {pending_bytes} bytes already queued \
         (limit pending_bytes_per_peer_max = {limit})"
    )]
    QueueFull {
        /// The destination.
        peer: String,
        /// How many messages were dropped.
        messages: usize,
        /// Bytes queued for the peer when the messages were refused.
        pending_bytes: u64,
        /// The limit.
        limit: u64,
    },

    /// A single message does not fit in a frame; it was dropped. Lower the Raft layer's
    /// message size or raise `frame_bytes_max`.
    #[error(
        "dropped a {bytes}-byte message for group {group}: larger than frame_bytes_max = {limit}"
    )]
    MessageTooLarge {
        /// The message's group.
        group: u64,
        /// The message's encoded size.
        bytes: usize,
        /// The limit.
        limit: u32,
    },

    /// A length prefix announced more bytes than the limit allows; nothing was allocated.
    #[error("{what} of {len} bytes exceeds the limit {limit}")]
    TooLarge {
        /// What was announced (a frame, a chunk, a request...).
        what: &'static str,
        /// The announced length.
        len: u64,
        /// The limit.
        limit: u64,
    },

    /// A frame holds more messages than `frame_messages_max`.
    #[error("frame holds {count} messages, more than frame_messages_max = {limit}")]
    TooManyMessages {
        /// The announced count.
        count: u64,
        /// The limit.
        limit: u32,
    },

    /// The peer speaks a protocol version this node does not know; upgrade the older node.
    #[error("unknown protocol version {version} (this node speaks {supported})")]
    UnknownVersion {
        /// The version received.
        version: u32,
        /// The version this build speaks.
        supported: u32,
    },

    /// A frame ended before its announced length.
    #[error("truncated {what}: expected {expected} bytes, got {got}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes announced.
        expected: usize,
        /// Bytes present.
        got: usize,
    },

    /// A frame could not be decoded (bad tag, bad varint, bad UTF-8...).
    #[error("malformed {what}: {source}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// postcard's description.
        source: postcard::Error,
    },

    /// Bytes were left over after a complete frame.
    #[error("{count} trailing bytes after a complete {what}")]
    TrailingBytes {
        /// What was decoded.
        what: &'static str,
        /// How many bytes were left.
        count: usize,
    },

    /// A peer named another cluster.
    #[error("peer belongs to cluster {got:?}, this node to {expected:?}")]
    WrongCluster {
        /// This node's cluster.
        expected: String,
        /// The cluster the peer named.
        got: String,
    },

    /// A frame's sender is not the identity the peer proved in its TLS handshake.
    #[error("frame claims sender {claimed:?} on a connection authenticated as {identity:?}")]
    SenderMismatch {
        /// The TLS identity.
        identity: String,
        /// The sender written in the frame.
        claimed: String,
    },

    /// The peer broke the stream protocol (wrong stream kind, stream from a client where only
    /// nodes may open one...).
    #[error("protocol violation: {0}")]
    Protocol(String),

    /// A QUIC connection failed or was closed.
    #[error("connection to {peer:?} failed: {source}")]
    Connection {
        /// The peer (or its address when its name is not known yet).
        peer: String,
        /// What quinn reported.
        source: quinn::ConnectionError,
    },

    /// A QUIC stream failed (reset, stopped or lost with its connection).
    #[error("stream error: {0}")]
    Stream(String),

    /// Waited longer than the limit.
    /// The peer refused a request without handling it.
    #[error("node {peer:?} refused the request: {reason}")]
    Refused {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// Too many requests to one peer are waiting for answers.
    #[error(
        "{limit} requests to node {peer:?} are already in flight (requests_in_flight_per_peer_max); retry later"
    )]
    RequestsInFlight {
        /// The peer.
        peer: String,
        /// `requests_in_flight_per_peer_max`.
        limit: usize,
    },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// The limit that expired.
        after: std::time::Duration,
    },

    /// The transport was shut down.
    #[error("the transport is shut down")]
    Shutdown,
}

impl TransportError {
    /// The reason label under which this error is counted when it rejects a peer's input, if it
    /// is one of those.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        Some(match self {
            TransportError::TooLarge { .. } => RejectReason::TooLarge,
            TransportError::TooManyMessages { .. } => RejectReason::TooManyMessages,
            TransportError::UnknownVersion { .. } => RejectReason::UnknownVersion,
            TransportError::Truncated { .. } => RejectReason::Truncated,
            TransportError::Malformed { .. } => RejectReason::Malformed,
            TransportError::TrailingBytes { .. } => RejectReason::TrailingBytes,
            TransportError::WrongCluster { .. } => RejectReason::WrongCluster,
            TransportError::SenderMismatch { .. } => RejectReason::SenderMismatch,
            TransportError::Identity { .. } => RejectReason::BadIdentity,
            TransportError::Protocol(_) => RejectReason::Protocol,
            TransportError::Timeout { .. } => RejectReason::StreamTimeout,
            _ => return None,
        })
    }
}

/// Why a connection, stream or frame from a peer was refused. Each is counted
/// (`fleet_transport_rejected_total{peer, reason}` and [`Transport::rejected`](super::Transport::rejected))
/// and logged.
#[non_exhaustive]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The TLS handshake failed because the peer sent no certificate.
    NoClientCert,
    /// The peer's certificate is not signed by the cluster CA (unknown issuer, or an issuer of
    /// the same name whose signature does not verify).
    UnknownCa,
    /// The peer's certificate has expired (or is not valid yet).
    CertExpired,
    /// The peer's certificate was refused for another reason.
    BadCertificate,
    /// The handshake failed for another reason (ALPN, protocol, ...).
    HandshakeFailed,
    /// The handshake did not finish within `handshake_time_max`.
    HandshakeTimeout,
    /// The peer's address already has `connections_per_address_max` connections.
    TooManyConnections,
    /// The certificate's identity URI is missing or malformed.
    BadIdentity,
    /// The peer's certificate or frame names another cluster.
    WrongCluster,
    /// A dialed peer proved another identity than the node that was dialed.
    UnexpectedIdentity,
    /// A node certificate whose name the catalog does not know.
    UnknownNode,
    /// A client certificate tried to act as a node (open a Raft or snapshot stream).
    ClientAsNode,
    /// The peer speaks an unknown protocol version.
    UnknownVersion,
    /// A frame's sender differs from the TLS identity.
    SenderMismatch,
    /// A length prefix beyond its limit.
    TooLarge,
    /// A frame with more than `frame_messages_max` messages.
    TooManyMessages,
    /// A frame shorter than its length prefix.
    Truncated,
    /// A frame that does not decode.
    Malformed,
    /// Bytes after a complete frame.
    TrailingBytes,
    /// A stream whose first bytes did not arrive within `handshake_time_max`.
    StreamTimeout,
    /// Another protocol violation (unexpected stream kind, second Raft stream...).
    Protocol,
    /// An inbound queue was full, so a snapshot or request stream was refused.
    Busy,
}

impl RejectReason {
    /// Every reason, in a fixed order (used to index counters).
    pub const ALL: [RejectReason; 22] = [
        RejectReason::NoClientCert,
        RejectReason::UnknownCa,
        RejectReason::CertExpired,
        RejectReason::BadCertificate,
        RejectReason::HandshakeFailed,
        RejectReason::HandshakeTimeout,
        RejectReason::TooManyConnections,
        RejectReason::BadIdentity,
        RejectReason::WrongCluster,
        RejectReason::UnexpectedIdentity,
        RejectReason::UnknownNode,
        RejectReason::ClientAsNode,
        RejectReason::UnknownVersion,
        RejectReason::SenderMismatch,
        RejectReason::TooLarge,
        RejectReason::TooManyMessages,
        RejectReason::Truncated,
        RejectReason::Malformed,
        RejectReason::TrailingBytes,
        RejectReason::StreamTimeout,
        RejectReason::Protocol,
        RejectReason::Busy,
    ];

    /// The label value used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NoClientCert => "no_client_cert",
            RejectReason::UnknownCa => "unknown_ca",
            RejectReason::CertExpired => "cert_expired",
            RejectReason::BadCertificate => "bad_certificate",
            RejectReason::HandshakeFailed => "handshake_failed",
            RejectReason::HandshakeTimeout => "handshake_timeout",
            RejectReason::TooManyConnections => "too_many_connections",
            RejectReason::BadIdentity => "bad_identity",
            RejectReason::WrongCluster => "wrong_cluster",
            RejectReason::UnexpectedIdentity => "unexpected_identity",
            RejectReason::UnknownNode => "unknown_node",
            RejectReason::ClientAsNode => "client_as_node",
            RejectReason::UnknownVersion => "unknown_version",
            RejectReason::SenderMismatch => "sender_mismatch",
            RejectReason::TooLarge => "too_large",
            RejectReason::TooManyMessages => "too_many_messages",
            RejectReason::Truncated => "truncated",
            RejectReason::Malformed => "malformed",
            RejectReason::TrailingBytes => "trailing_bytes",
            RejectReason::StreamTimeout => "stream_timeout",
            RejectReason::Protocol => "protocol",
            RejectReason::Busy => "busy",
        }
    }

    pub(crate) fn index(self) -> usize {
        RejectReason::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every reason is listed in ALL")
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
