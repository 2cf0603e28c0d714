//! Connections: accepting, dialing, authenticating, deduplicating, and the tasks that read and
//! write each connection's streams.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::GroupId;
use super::identity::{Identity, IdentityKind};
use super::peer::{Link, Peer, backoff, fnv1a};
use super::streams::{
    InboundRequest, InboundSnapshot, RecordReader, Responder, SnapshotReceiver, read_hello,
    write_record,
};
use super::wire::{self, PROTOCOL_VERSION, STREAM_HELLO_BYTES_MAX, StreamHello, StreamKind};
use super::{
    AddressSlot, InboundFrame, Inner, Message, PeerAddr, RAFT_STREAM_PRIORITY,
    REQUEST_STREAM_PRIORITY, RejectReason, TaskGuard, Tls, TransportConfig, TransportError,
    close_code,
};

/// How often RTT gauges are refreshed.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest close reason sent to a peer.
const CLOSE_REASON_BYTES_MAX: usize = 256;

/// Spawns a task that shutdown waits for.
fn spawn<M: Message, F>(inner: &Arc<Inner<M>>, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    inner.tasks.live.fetch_add(1, Ordering::AcqRel);
    let guard = TaskGuard(inner.tasks.clone());
    inner.runtime.spawn(async move {
        let _guard = guard;
        task.await;
    });
}

/// Starts the accept loop and the maintenance loop.
pub(crate) fn start<M: Message>(inner: &Arc<Inner<M>>) {
    spawn(inner, accept_loop(inner.clone()));
    spawn(inner, maintenance_loop(inner.clone()));
}

/// Starts the writer task of a new peer entry.
pub(crate) fn start_peer<M: Message>(inner: &Arc<Inner<M>>, peer: Arc<Peer>) {
    spawn(inner, drive_peer(inner.clone(), peer));
}

fn connection_error(peer: &str, source: quinn::ConnectionError) -> TransportError {
    TransportError::Connection {
        peer: peer.to_owned(),
        source,
    }
}

fn stream_error(e: impl std::fmt::Display) -> TransportError {
    TransportError::Stream(e.to_string())
}

/// Counts and logs refused input, then closes the connection with the reason.
fn refuse<M: Message>(
    inner: &Inner<M>,
    conn: &quinn::Connection,
    peer: Option<&Peer>,
    reason: RejectReason,
    error: TransportError,
) -> TransportError {
    inner.count_rejection(peer, conn.remote_address(), reason, &error);
    let code = match reason {
        RejectReason::BadIdentity
        | RejectReason::WrongCluster
        | RejectReason::UnexpectedIdentity
        | RejectReason::UnknownNode
        | RejectReason::ClientAsNode => close_code::REFUSED,
        _ => close_code::PROTOCOL,
    };
    let text = error.to_string();
    let mut end = text.len().min(CLOSE_REASON_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    conn.close(quinn::VarInt::from_u32(code), &text.as_bytes()[..end]);
    error
}

/// The TLS alert behind a failed handshake, as a reject reason.
fn classify_handshake(error: &quinn::ConnectionError) -> RejectReason {
    /// QUIC carries TLS alerts as transport error codes 0x100 + alert (RFC 9001, section 4.8).
    const CRYPTO_ERROR_BASE: u64 = 0x100;
    // The alert is ours when this node refused the peer's certificate, the peer's when it
    // refused ours or aborted.
    let code = match error {
        quinn::ConnectionError::TransportError(e) => u64::from(e.code),
        quinn::ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        _ => return RejectReason::HandshakeFailed,
    };
    match code.checked_sub(CRYPTO_ERROR_BASE) {
        Some(116) => RejectReason::NoClientCert, // certificate_required
        Some(48 | 51) => RejectReason::UnknownCa, // unknown_ca, decrypt_error (bad signature)
        Some(45) => RejectReason::CertExpired,   // certificate_expired
        Some(42..=46) => RejectReason::BadCertificate, // bad/unsupported/revoked/unknown certificate
        _ => RejectReason::HandshakeFailed,
    }
}

async fn accept_loop<M: Message>(inner: Arc<Inner<M>>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            incoming = inner.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        let remote = incoming.remote_address();
        let max = inner.config.connections_per_address_max;
        match inner.addresses.take(remote.ip(), max) {
            Some(slot) => spawn(&inner, handle_incoming(inner.clone(), incoming, slot)),
            None => {
                incoming.refuse();
                let error = TransportError::Protocol(format!(
                    "{} already has connections_per_address_max = {max} connections",
                    remote.ip()
                ));
                inner.count_rejection(None, remote, RejectReason::TooManyConnections, &error);
            }
        }
    }
}

async fn handle_incoming<M: Message>(
    inner: Arc<Inner<M>>,
    incoming: quinn::Incoming,
    _slot: AddressSlot,
) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            let reason = classify_handshake(&e);
            inner.count_rejection(
                None,
                remote,
                reason,
                &connection_error(&remote.to_string(), e),
            );
            return;
        }
    };
    let after = inner.config.handshake_time_max;
    let conn = tokio::select! {
        _ = inner.cancel.cancelled() => return,
        handshake = tokio::time::timeout(after, connecting) => match handshake {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                let reason = classify_handshake(&e);
                inner.count_rejection(None, remote, reason, &connection_error(&remote.to_string(), e));
                return;
            }
            Err(_) => {
                let error = TransportError::Timeout { what: "TLS handshake", after };
                inner.count_rejection(None, remote, RejectReason::HandshakeTimeout, &error);
                return;
            }
        },
    };
    if establish(&inner, conn.clone(), false, None).await.is_err() {
        return;
    }
    // The address slot is held for as long as the connection lives.
    tokio::select! {
        _ = conn.closed() => {}
        _ = inner.cancel.cancelled() => {}
    }
}

/// Authenticates a connection (either direction) and, for a node, exchanges the Raft stream
/// hellos and installs it as the peer's link (or closes it as a duplicate).
async fn establish<M: Message>(
    inner: &Arc<Inner<M>>,
    conn: quinn::Connection,
    dialed_by_us: bool,
    dialed: Option<&Arc<Peer>>,
) -> Result<(), TransportError> {
    let dialed_peer = dialed.map(|p| &**p);
    let identity = match Identity::of_connection(&conn) {
        Ok(identity) => identity,
        Err(e) => {
            return Err(refuse(
                inner,
                &conn,
                dialed_peer,
                RejectReason::BadIdentity,
                e,
            ));
        }
    };
    if identity.cluster != inner.identity.cluster {
        let e = TransportError::WrongCluster {
            expected: inner.identity.cluster.clone(),
            got: identity.cluster.clone(),
        };
        return Err(refuse(
            inner,
            &conn,
            dialed_peer,
            RejectReason::WrongCluster,
            e,
        ));
    }
    let unexpected = |reason: String| TransportError::Identity {
        uri: identity.uri(),
        reason,
    };
    if identity.kind == IdentityKind::Client {
        if dialed_by_us {
            let e =
                unexpected("dialed a node but the server presented a client certificate".into());
            return Err(refuse(
                inner,
                &conn,
                dialed_peer,
                RejectReason::UnexpectedIdentity,
                e,
            ));
        }
        tracing::debug!(node = %inner.identity.name, client = %identity.name, "client connected");
        spawn(inner, serve_client(inner.clone(), conn, identity));
        return Ok(());
    }
    if let Some(peer) = dialed
        && *peer.name != *identity.name
    {
        let e = unexpected(format!(
            "dialed node {:?} but reached another node",
            peer.name
        ));
        return Err(refuse(
            inner,
            &conn,
            dialed_peer,
            RejectReason::UnexpectedIdentity,
            e,
        ));
    }
    if identity.name == inner.identity.name {
        let e = unexpected("a node connected to itself; check the catalog's addresses".into());
        return Err(refuse(
            inner,
            &conn,
            dialed_peer,
            RejectReason::UnexpectedIdentity,
            e,
        ));
    }
    if !inner.directory.is_node(&identity.name) {
        let e = unexpected("the node is not in this cluster's catalog".into());
        return Err(refuse(
            inner,
            &conn,
            dialed_peer,
            RejectReason::UnknownNode,
            e,
        ));
    }
    let peer = inner.peer_entry(&identity.name);
    let after = inner.config.handshake_time_max;
    let (send, reader, incarnation) =
        match tokio::time::timeout(after, exchange_hellos(inner, &conn, &identity)).await {
            Ok(Ok(exchanged)) => exchanged,
            Ok(Err(e)) => {
                return Err(match e.reject_reason() {
                    Some(reason) => refuse(inner, &conn, Some(&peer), reason, e),
                    None => e,
                });
            }
            Err(_) => {
                let e = TransportError::Timeout {
                    what: "the peer's Raft stream hello",
                    after,
                };
                return Err(refuse(
                    inner,
                    &conn,
                    Some(&peer),
                    RejectReason::StreamTimeout,
                    e,
                ));
            }
        };
    peer.heard(inner.epoch);
    let link = Arc::new(Link {
        conn: conn.clone(),
        raft_send: tokio::sync::Mutex::new(send),
        dialed_by_us,
        peer_incarnation: incarnation,
        peer_finished: watch::Sender::new(false),
    });
    let (loser, kept) = peer.install(&inner.identity.name, link.clone());
    if kept {
        tracing::info!(
            node = %inner.identity.name, peer = %peer.name, remote = %conn.remote_address(), dialed_by_us,
            "connected"
        );
    }
    // A link that lost the duplicate resolution is still read until the peer finishes its
    // Raft stream on it, so frames already written there are delivered, not lost.
    spawn(
        inner,
        raft_reader(inner.clone(), peer.clone(), link.clone(), reader),
    );
    spawn(
        inner,
        accept_node_streams(inner.clone(), peer.clone(), link),
    );
    if let Some(loser) = loser {
        tracing::info!(
            node = %inner.identity.name, peer = %peer.name, kept_new = kept,
            "retiring a duplicate connection"
        );
        spawn(inner, retire(inner.clone(), loser));
    }
    Ok(())
}

/// Closes a link that lost the duplicate resolution gracefully: the writer has moved to the
/// kept link, so finish our Raft stream, wait until the peer has acknowledged it and has
/// finished its own (it decides the same way), then close. Bounded by twice
/// `handshake_time_max`.
async fn retire<M: Message>(inner: Arc<Inner<M>>, link: Arc<Link>) {
    let graceful = async {
        let mut send = link.raft_send.lock().await;
        let _ = send.finish();
        let _ = send.stopped().await;
        let mut peer_finished = link.peer_finished.subscribe();
        let _ = peer_finished.wait_for(|finished| *finished).await;
    };
    tokio::select! {
        _ = inner.cancel.cancelled() => {}
        _ = tokio::time::timeout(inner.config.handshake_time_max * 2, graceful) => {}
    }
    link.conn.close(
        quinn::VarInt::from_u32(close_code::DUPLICATE),
        b"duplicate connection",
    );
}

/// Opens this node's Raft stream with its hello, and reads the peer's. Returns our stream, the
/// reader of the peer's stream (positioned after its hello) and the peer's incarnation.
async fn exchange_hellos<M: Message>(
    inner: &Inner<M>,
    conn: &quinn::Connection,
    identity: &Identity,
) -> Result<(quinn::SendStream, RecordReader, u64), TransportError> {
    let mut send = conn
        .open_uni()
        .await
        .map_err(|e| connection_error(&identity.name, e))?;
    let _ = send.set_priority(RAFT_STREAM_PRIORITY);
    let hello = inner.hello(StreamKind::Raft {
        incarnation: inner.incarnation,
    });
    send.write_all(&hello).await.map_err(stream_error)?;
    let recv = conn
        .accept_uni()
        .await
        .map_err(|e| connection_error(&identity.name, e))?;
    let mut reader = RecordReader::new(recv, STREAM_HELLO_BYTES_MAX);
    let hello = read_hello(&mut reader).await?;
    inner.check_hello(identity, &hello)?;
    let StreamKind::Raft { incarnation } = hello.kind else {
        return Err(TransportError::Protocol(format!(
            "a node's first stream must be its Raft stream, not a {} stream",
            hello.kind.name()
        )));
    };
    Ok((
        send,
        reader.with_limit(inner.config.frame_bytes_max),
        incarnation,
    ))
}

impl<M: Message> Inner<M> {
    /// This node's hello for a stream of `kind`, ready to write.
    fn hello(&self, kind: StreamKind) -> Vec<u8> {
        StreamHello {
            version: PROTOCOL_VERSION,
            cluster_id: self.identity.cluster.clone(),
            sender: self.identity.name.clone(),
            kind,
        }
        .to_wire()
    }

    /// A hello must name our cluster and the connection's proven identity.
    fn check_hello(&self, identity: &Identity, hello: &StreamHello) -> Result<(), TransportError> {
        if hello.cluster_id != self.identity.cluster {
            return Err(TransportError::WrongCluster {
                expected: self.identity.cluster.clone(),
                got: hello.cluster_id.clone(),
            });
        }
        if hello.sender != identity.name {
            return Err(TransportError::SenderMismatch {
                identity: identity.name.clone(),
                claimed: hello.sender.clone(),
            });
        }
        Ok(())
    }

    /// Decodes a frame from `peer` and checks its cluster and sender.
    fn decode_checked(&self, peer: &Peer, body: &[u8]) -> Result<Decoded<M>, TransportError> {
        let frame = wire::decode_frame::<M>(body, &self.limits)?;
        if frame.cluster_id != self.identity.cluster {
            return Err(TransportError::WrongCluster {
                expected: self.identity.cluster.clone(),
                got: frame.cluster_id.to_owned(),
            });
        }
        if frame.sender != &*peer.name {
            return Err(TransportError::SenderMismatch {
                identity: peer.name.to_string(),
                claimed: frame.sender.to_owned(),
            });
        }
        Ok((frame.messages, frame.rpcs))
    }
}

/// A frame's Raft messages, and its requests and responses.
type Decoded<M> = (Vec<(GroupId, M)>, Vec<wire::RpcItem>);

/// Reads the peer's Raft stream: every frame is checked, counted and delivered.
async fn raft_reader<M: Message>(
    inner: Arc<Inner<M>>,
    peer: Arc<Peer>,
    link: Arc<Link>,
    mut reader: RecordReader,
) {
    loop {
        let record = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            record = reader.next("frame") => record,
        };
        let body = match record {
            Ok(Some(body)) => body,
            Ok(None) => {
                // The peer retired this link (or is shutting down).
                link.peer_finished.send_replace(true);
                return;
            }
            Err(e) => {
                match e.reject_reason() {
                    Some(reason) => {
                        refuse(&inner, &link.conn, Some(&peer), reason, e);
                    }
                    None => {
                        tracing::debug!(node = %inner.identity.name, peer = %peer.name, error = %e, "Raft stream ended");
                    }
                }
                return;
            }
        };
        let (mut messages, rpcs) = match inner.decode_checked(&peer, &body) {
            Ok(decoded) => decoded,
            Err(e) => {
                let reason = e.reject_reason().unwrap_or(RejectReason::Malformed);
                refuse(&inner, &link.conn, Some(&peer), reason, e);
                return;
            }
        };
        peer.heard(inner.epoch);
        let c = &peer.counters;
        let frame_bytes = (body.len() + wire::LENGTH_PREFIX_BYTES) as u64;
        c.frames_received.fetch_add(1, Ordering::Relaxed);
        c.bytes_received.fetch_add(frame_bytes, Ordering::Relaxed);
        c.messages_received
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        c.metric_frames_received.increment(1);
        c.metric_bytes_received.increment(frame_bytes);
        for item in rpcs {
            inner.take_rpc(&peer, item);
        }
        let before = messages.len();
        messages.retain(|(group, _)| inner.directory.hosts(*group));
        if messages.len() < before {
            let unhosted = (before - messages.len()) as u64;
            c.messages_unhosted.fetch_add(unhosted, Ordering::Relaxed);
            tracing::debug!(node = %inner.identity.name, peer = %peer.name, unhosted, "dropped messages for groups not hosted here");
        }
        if messages.is_empty() {
            continue;
        }
        let frame = InboundFrame {
            from: peer.name.clone(),
            messages,
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            sent = inner.frames_tx.send(frame) => if sent.is_err() { return },
        }
    }
}

/// Accepts the snapshot and request streams a peer node opens on its link.
async fn accept_node_streams<M: Message>(inner: Arc<Inner<M>>, peer: Arc<Peer>, link: Arc<Link>) {
    let identity = Identity {
        cluster: inner.identity.cluster.clone(),
        kind: IdentityKind::Node,
        name: peer.name.to_string(),
    };
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            uni = link.conn.accept_uni() => match uni {
                Ok(recv) => spawn(&inner, node_uni_stream(inner.clone(), peer.clone(), link.clone(), recv)),
                Err(_) => return,
            },
            bi = link.conn.accept_bi() => match bi {
                Ok((send, recv)) => spawn(
                    &inner,
                    request_stream(inner.clone(), Some(peer.clone()), identity.clone(), link.conn.clone(), send, recv),
                ),
                Err(_) => return,
            },
        }
    }
}

/// A client connection may only open request streams.
async fn serve_client<M: Message>(
    inner: Arc<Inner<M>>,
    conn: quinn::Connection,
    identity: Identity,
) {
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            uni = conn.accept_uni() => {
                if uni.is_ok() {
                    let e = TransportError::Identity {
                        uri: identity.uri(),
                        reason: "a client certificate may only open request streams; it cannot act as a node".into(),
                    };
                    refuse(&inner, &conn, None, RejectReason::ClientAsNode, e);
                }
                return;
            }
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => spawn(
                    &inner,
                    request_stream(inner.clone(), None, identity.clone(), conn.clone(), send, recv),
                ),
                Err(_) => return,
            },
        }
    }
}

/// A unidirectional stream from a peer node after its Raft stream: a snapshot.
async fn node_uni_stream<M: Message>(
    inner: Arc<Inner<M>>,
    peer: Arc<Peer>,
    link: Arc<Link>,
    recv: quinn::RecvStream,
) {
    let mut reader = RecordReader::new(recv, STREAM_HELLO_BYTES_MAX);
    let after = inner.config.handshake_time_max;
    let hello = match tokio::time::timeout(after, read_hello(&mut reader)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(e)) => {
            if let Some(reason) = e.reject_reason() {
                refuse(&inner, &link.conn, Some(&peer), reason, e);
            }
            return;
        }
        Err(_) => {
            // A silent stream costs the peer a stream slot, not this node anything: stop it.
            reader.stop(close_code::ABORTED);
            let e = TransportError::Timeout {
                what: "a stream's hello",
                after,
            };
            inner.count_rejection(
                Some(&peer),
                link.conn.remote_address(),
                RejectReason::StreamTimeout,
                &e,
            );
            return;
        }
    };
    let identity = Identity {
        cluster: inner.identity.cluster.clone(),
        kind: IdentityKind::Node,
        name: peer.name.to_string(),
    };
    if let Err(e) = inner.check_hello(&identity, &hello) {
        let reason = e.reject_reason().unwrap_or(RejectReason::Protocol);
        refuse(&inner, &link.conn, Some(&peer), reason, e);
        return;
    }
    let meta = match hello.kind {
        StreamKind::Snapshot { meta } => meta,
        other => {
            let e = TransportError::Protocol(format!(
                "unexpected {} stream; a connection has one Raft stream per direction and requests are bidirectional",
                other.name()
            ));
            refuse(&inner, &link.conn, Some(&peer), RejectReason::Protocol, e);
            return;
        }
    };
    let snapshot = InboundSnapshot {
        from: peer.name.clone(),
        meta,
        chunks: SnapshotReceiver {
            reader: reader.with_limit(inner.config.snapshot_chunk_bytes_max),
        },
    };
    if let Err(e) = inner.snapshots_tx.try_send(snapshot) {
        let snapshot = match e {
            tokio::sync::mpsc::error::TrySendError::Full(s)
            | tokio::sync::mpsc::error::TrySendError::Closed(s) => s,
        };
        snapshot.chunks.abort();
        let e =
            TransportError::Protocol("inbound_snapshots_max snapshots are already waiting".into());
        inner.count_rejection(
            Some(&peer),
            link.conn.remote_address(),
            RejectReason::Busy,
            &e,
        );
    }
}

/// A bidirectional stream: one request, delivered to the runtime with a responder.
async fn request_stream<M: Message>(
    inner: Arc<Inner<M>>,
    peer: Option<Arc<Peer>>,
    identity: Identity,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let after = inner.config.handshake_time_max;
    let read = async {
        let mut reader = RecordReader::new(recv, STREAM_HELLO_BYTES_MAX);
        let hello = read_hello(&mut reader).await?;
        inner.check_hello(&identity, &hello)?;
        if hello.kind != StreamKind::Request {
            return Err(TransportError::Protocol(format!(
                "a {} stream must be unidirectional",
                hello.kind.name()
            )));
        }
        let mut reader = reader.with_limit(inner.config.client_request_bytes_max);
        reader.next("request").await?.ok_or_else(|| {
            TransportError::Protocol("request stream finished before its request".into())
        })
    };
    let body = match tokio::time::timeout(after, read).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            if let Some(reason) = e.reject_reason() {
                refuse(&inner, &conn, peer.as_deref(), reason, e);
            }
            return;
        }
        Err(_) => {
            let _ = send.reset(quinn::VarInt::from_u32(close_code::ABORTED));
            let e = TransportError::Timeout {
                what: "a request",
                after,
            };
            inner.count_rejection(
                peer.as_deref(),
                conn.remote_address(),
                RejectReason::StreamTimeout,
                &e,
            );
            return;
        }
    };
    let _ = send.set_priority(REQUEST_STREAM_PRIORITY);
    let request = InboundRequest {
        from: identity,
        body,
        responder: Responder::stream(send, inner.config.client_request_bytes_max),
    };
    if inner.requests_tx.try_send(request).is_err() {
        // The request (and its responder, which resets the stream) is dropped.
        let e =
            TransportError::Protocol("inbound_requests_max requests are already waiting".into());
        inner.count_rejection(
            peer.as_deref(),
            conn.remote_address(),
            RejectReason::Busy,
            &e,
        );
    }
}

/// The writer task of one peer: dials when there is something to send and no connection,
/// with capped exponential backoff, and writes queued frames on the current link.
async fn drive_peer<M: Message>(inner: Arc<Inner<M>>, peer: Arc<Peer>) {
    let mut link_rx = peer.link.subscribe();
    let seed = fnv1a(inner.identity.name.as_bytes())
        ^ fnv1a(peer.name.as_bytes()).rotate_left(17)
        ^ inner.incarnation;
    let config = &inner.config;
    let mut attempt: u32 = 0;
    let mut frames: Vec<Bytes> = Vec::new();
    loop {
        if inner.cancel.is_cancelled() {
            return;
        }
        link_rx.borrow_and_update();
        if let Some(link) = peer.current_link() {
            attempt = 0;
            peer.want_connection.store(false, Ordering::Release);
            write_loop(&inner, &peer, &link, &mut link_rx, &mut frames).await;
            if link.is_closed() {
                peer.remove_link(&link);
            }
            continue;
        }
        if !peer.has_queued() && !peer.want_connection.load(Ordering::Acquire) {
            tokio::select! {
                _ = inner.cancel.cancelled() => return,
                _ = peer.wake.notified() => {}
                _ = link_rx.changed() => {}
            }
            continue;
        }
        if attempt > 0 {
            let delay = backoff(
                config.reconnect_delay_min,
                config.reconnect_delay_max,
                attempt,
                seed,
            );
            tokio::select! {
                _ = inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                _ = link_rx.changed() => continue,
            }
        }
        let dialed = tokio::select! {
            _ = inner.cancel.cancelled() => return,
            dialed = dial(&inner, &peer) => dialed,
        };
        if let Err(e) = dialed {
            attempt = attempt.saturating_add(1);
            peer.want_connection.store(false, Ordering::Release);
            let dropped = peer.drop_queued();
            // A peer that is down fails every attempt: warn on attempts 1, 2, 4, 8, ... so a
            // long outage stays visible without a line per retry.
            if attempt.is_power_of_two() {
                tracing::warn!(
                    node = %inner.identity.name, peer = %peer.name, attempt, dropped_messages = dropped, error = %e,
                    "cannot connect to peer; will retry with backoff (warned again at attempt {})",
                    attempt.saturating_mul(2)
                );
            } else {
                tracing::debug!(
                    node = %inner.identity.name, peer = %peer.name, attempt, dropped_messages = dropped, error = %e,
                    "cannot connect to peer; will retry with backoff"
                );
            }
        }
    }
}

async fn dial<M: Message>(inner: &Arc<Inner<M>>, peer: &Arc<Peer>) -> Result<(), TransportError> {
    let addr = inner
        .directory
        .address(&peer.name)
        .ok_or_else(|| TransportError::UnknownPeer {
            peer: peer.name.to_string(),
        })?;
    let socket_addr = addr.resolve().await?;
    let connecting = inner
        .endpoint
        .connect_with(inner.client_config.clone(), socket_addr, addr.host())
        .map_err(|e| TransportError::Unreachable {
            peer: peer.name.to_string(),
            reason: e.to_string(),
        })?;
    let after = inner.config.handshake_time_max;
    let conn = match tokio::time::timeout(after, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(connection_error(&peer.name, e)),
        Err(_) => {
            return Err(TransportError::Timeout {
                what: "the connection handshake",
                after,
            });
        }
    };
    establish(inner, conn, true, Some(peer)).await
}

/// Writes queued frames on `link` until it closes or is replaced (or the transport stops).
async fn write_loop<M: Message>(
    inner: &Inner<M>,
    peer: &Peer,
    link: &Arc<Link>,
    link_rx: &mut watch::Receiver<Option<Arc<Link>>>,
    frames: &mut Vec<Bytes>,
) {
    loop {
        if !peer.has_queued() {
            tokio::select! {
                _ = inner.cancel.cancelled() => return,
                _ = peer.wake.notified() => continue,
                _ = link.conn.closed() => return,
                _ = link_rx.changed() => {
                    let current = link_rx.borrow_and_update().clone();
                    if current.is_none_or(|c| !Arc::ptr_eq(&c, link)) {
                        return;
                    }
                    continue;
                }
            }
        }
        // The stream is locked before frames are taken, so `Peer::send_or_enqueue` cannot
        // write a newer frame ahead of them.
        let mut send = link.raft_send.lock().await;
        frames.clear();
        let (bytes, messages) = peer.take_frames(frames);
        if frames.is_empty() {
            continue;
        }
        let count = frames.len() as u64;
        let written = tokio::select! {
            _ = inner.cancel.cancelled() => {
                peer.release(bytes);
                return;
            }
            written = send.write_all_chunks(frames) => written,
        };
        drop(send);
        peer.release(bytes);
        let c = &peer.counters;
        match written {
            Ok(()) => {
                c.frames_sent.fetch_add(count, Ordering::Relaxed);
                c.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                c.metric_frames_sent.increment(count);
                c.metric_bytes_sent.increment(bytes);
            }
            Err(e) => {
                peer.count_dropped(messages);
                tracing::debug!(node = %inner.identity.name, peer = %peer.name, error = %e, dropped_messages = messages, "write failed");
                return;
            }
        }
    }
}

/// Opens a unidirectional stream of `kind` on `link` and writes its hello.
pub(crate) async fn open_uni_stream<M: Message>(
    inner: &Inner<M>,
    link: &Link,
    kind: StreamKind,
    priority: i32,
) -> Result<quinn::SendStream, TransportError> {
    let mut send = link
        .conn
        .open_uni()
        .await
        .map_err(|e| connection_error("peer", e))?;
    let _ = send.set_priority(priority);
    send.write_all(&inner.hello(kind))
        .await
        .map_err(stream_error)?;
    Ok(send)
}

/// Sends one request on a new bidirectional stream of `conn` and reads the response.
pub(crate) async fn request_on(
    conn: &quinn::Connection,
    me: &Identity,
    config: &TransportConfig,
    body: &[u8],
) -> Result<Bytes, TransportError> {
    let limit = config.client_request_bytes_max;
    if body.len() as u64 > u64::from(limit) {
        return Err(TransportError::TooLarge {
            what: "request",
            len: body.len() as u64,
            limit: u64::from(limit),
        });
    }
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| connection_error("peer", e))?;
    let _ = send.set_priority(REQUEST_STREAM_PRIORITY);
    let hello = StreamHello {
        version: PROTOCOL_VERSION,
        cluster_id: me.cluster.clone(),
        sender: me.name.clone(),
        kind: StreamKind::Request,
    }
    .to_wire();
    send.write_all(&hello).await.map_err(stream_error)?;
    write_record(&mut send, body).await?;
    send.finish().map_err(stream_error)?;
    let mut reader = RecordReader::new(recv, limit);
    reader.next("response").await?.ok_or_else(|| {
        TransportError::Stream("the peer finished the request stream without a response".into())
    })
}

async fn maintenance_loop<M: Message>(inner: Arc<Inner<M>>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let peers: Vec<Arc<Peer>> = inner
            .peers
            .read()
            .expect("peers lock is never poisoned")
            .values()
            .cloned()
            .collect();
        for peer in peers {
            if let Some(link) = peer.current_link() {
                peer.counters
                    .metric_rtt_seconds
                    .set(link.conn.rtt().as_secs_f64());
            }
        }
    }
}

/// A client's connection to a node, for requests (the `fleet` client and tests use it).
pub struct ClientConnection {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    me: Identity,
    server: Identity,
    config: TransportConfig,
}

impl std::fmt::Debug for ClientConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConnection")
            .field("me", &self.me)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl ClientConnection {
    /// Connects to the node at `addr` with `tls` (a client or node certificate), checking that
    /// the server is a node of the same cluster. `config` supplies the limits and timeouts.
    pub async fn connect(
        tls: &Tls,
        addr: &PeerAddr,
        config: &TransportConfig,
    ) -> Result<ClientConnection, TransportError> {
        config.validate()?;
        let socket_addr = addr.resolve().await?;
        let bind: std::net::SocketAddr = if socket_addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|source| TransportError::Bind { addr: bind, source })?;
        let client_config = tls.quinn_client_config(config.quic_transport())?;
        let connecting = endpoint
            .connect_with(client_config, socket_addr, addr.host())
            .map_err(|e| TransportError::Unreachable {
                peer: addr.to_string(),
                reason: e.to_string(),
            })?;
        let after = config.handshake_time_max;
        let conn = match tokio::time::timeout(after, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(connection_error(&addr.to_string(), e)),
            Err(_) => {
                return Err(TransportError::Timeout {
                    what: "the connection handshake",
                    after,
                });
            }
        };
        let server = Identity::of_connection(&conn)?;
        if server.kind != IdentityKind::Node || server.cluster != tls.identity().cluster {
            conn.close(
                quinn::VarInt::from_u32(close_code::REFUSED),
                b"not a node of this cluster",
            );
            return Err(TransportError::Identity {
                uri: server.uri(),
                reason: format!("expected a node of cluster {:?}", tls.identity().cluster),
            });
        }
        Ok(ClientConnection {
            endpoint,
            conn,
            me: tls.identity().clone(),
            server,
            config: config.clone(),
        })
    }

    /// The node connected to.
    pub fn server(&self) -> &Identity {
        &self.server
    }

    /// The underlying QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Sends one request on its own stream and returns the response.
    pub async fn request(&self, body: &[u8]) -> Result<Bytes, TransportError> {
        request_on(&self.conn, &self.me, &self.config, body).await
    }

    /// Closes the connection and waits (boundedly) for the close to be sent.
    pub async fn close(self) {
        self.conn
            .close(quinn::VarInt::from_u32(close_code::NORMAL), b"bye");
        let _ =
            tokio::time::timeout(self.config.handshake_time_max, self.endpoint.wait_idle()).await;
    }
}
