//! Reading length-prefixed records from QUIC streams, and the snapshot and request streams the
//! runtime uses.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use super::identity::Identity;
use super::peer::Peer;
use super::wire::{self, LENGTH_PREFIX_BYTES, RpcItem, StreamHello};
use super::{TransportError, close_code};

/// Bytes read from a stream at once beyond what the current record needs, so small frames are
/// parsed many per read without letting the buffer grow past `record limit + this`.
const READ_AHEAD_BYTES: usize = 64 * 1024;

fn stream_error(e: impl std::fmt::Display) -> TransportError {
    TransportError::Stream(e.to_string())
}

/// Reads records (`u32` length, then bytes) from a stream, checking each length against a
/// limit before reserving room for it.
pub(crate) struct RecordReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    limit: u32,
}

impl RecordReader {
    pub(crate) fn new(recv: quinn::RecvStream, limit: u32) -> RecordReader {
        RecordReader {
            recv,
            buf: BytesMut::new(),
            limit,
        }
    }

    /// The next record, or `None` when the stream finished cleanly between records.
    pub(crate) async fn next(
        &mut self,
        what: &'static str,
    ) -> Result<Option<Bytes>, TransportError> {
        while self.buf.len() < LENGTH_PREFIX_BYTES {
            if !self.fill(LENGTH_PREFIX_BYTES - self.buf.len()).await? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(TransportError::Truncated {
                    what,
                    expected: LENGTH_PREFIX_BYTES,
                    got: self.buf.len(),
                });
            }
        }
        let prefix: [u8; LENGTH_PREFIX_BYTES] = self.buf[..LENGTH_PREFIX_BYTES]
            .try_into()
            .expect("the buffer holds a whole prefix");
        let len = wire::record_length(prefix, self.limit, what)?;
        let needed = LENGTH_PREFIX_BYTES + len;
        if self.buf.capacity() < needed {
            self.buf.reserve(needed - self.buf.len());
        }
        while self.buf.len() < needed {
            if !self.fill(needed - self.buf.len()).await? {
                return Err(TransportError::Truncated {
                    what,
                    expected: len,
                    got: self.buf.len() - LENGTH_PREFIX_BYTES,
                });
            }
        }
        self.buf.advance(LENGTH_PREFIX_BYTES);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Appends one chunk of at most `needed + READ_AHEAD_BYTES`; false at the end of the stream.
    async fn fill(&mut self, needed: usize) -> Result<bool, TransportError> {
        match self
            .recv
            .read_chunk(needed.saturating_add(READ_AHEAD_BYTES), true)
            .await
        {
            Ok(Some(chunk)) => {
                self.buf.extend_from_slice(&chunk.bytes);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(stream_error(e)),
        }
    }

    /// Stops the stream: the peer's writes fail with `code`.
    pub(crate) fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(quinn::VarInt::from_u32(code));
    }

    /// The same stream, keeping what was read ahead, with another limit for later records.
    pub(crate) fn with_limit(self, limit: u32) -> RecordReader {
        RecordReader { limit, ..self }
    }
}

/// Reads a stream's hello record (whose limit is [`wire::STREAM_HELLO_BYTES_MAX`]).
pub(crate) async fn read_hello(reader: &mut RecordReader) -> Result<StreamHello, TransportError> {
    let body = reader
        .next("stream hello")
        .await?
        .ok_or_else(|| TransportError::Protocol("stream finished before its hello".to_owned()))?;
    StreamHello::decode(&body)
}

/// Writes one record (length prefix and bytes).
pub(crate) async fn write_record(
    send: &mut quinn::SendStream,
    body: &[u8],
) -> Result<(), TransportError> {
    let len = u32::try_from(body.len()).map_err(|_| TransportError::TooLarge {
        what: "record",
        len: body.len() as u64,
        limit: u64::from(u32::MAX),
    })?;
    let mut chunks = [
        Bytes::copy_from_slice(&len.to_be_bytes()),
        Bytes::copy_from_slice(body),
    ];
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(stream_error)
}

/// A snapshot arriving from a peer: the runtime reads its chunks at its own pace; QUIC flow
/// control holds the sender back meanwhile, so a snapshot never crowds out Raft frames.
#[derive(Debug)]
pub struct InboundSnapshot {
    /// The sending node.
    pub from: Arc<str>,
    /// The sender's description of the snapshot (opaque to the transport).
    pub meta: Vec<u8>,
    /// The chunks.
    pub chunks: SnapshotReceiver,
}

/// Reads the chunks of one inbound snapshot.
pub struct SnapshotReceiver {
    pub(crate) reader: RecordReader,
}

impl std::fmt::Debug for SnapshotReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReceiver").finish_non_exhaustive()
    }
}

impl SnapshotReceiver {
    /// The next chunk (at most `snapshot_chunk_bytes_max` bytes), or `None` once the sender
    /// finished the snapshot.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, TransportError> {
        self.reader.next("snapshot chunk").await
    }

    /// Abandons the snapshot; the sender's next write fails.
    pub fn abort(mut self) {
        self.reader.stop(close_code::ABORTED);
    }
}

/// Sends one snapshot to a peer in chunks; see [`Transport::open_snapshot`](super::Transport::open_snapshot).
pub struct SnapshotSender {
    pub(crate) send: quinn::SendStream,
    pub(crate) chunk_bytes_max: u32,
}

impl std::fmt::Debug for SnapshotSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSender").finish_non_exhaustive()
    }
}

impl SnapshotSender {
    /// Sends one chunk of at most `snapshot_chunk_bytes_max` bytes; waits while the peer's
    /// flow-control window is full.
    pub async fn send_chunk(&mut self, chunk: &[u8]) -> Result<(), TransportError> {
        if chunk.len() as u64 > u64::from(self.chunk_bytes_max) {
            return Err(TransportError::TooLarge {
                what: "snapshot chunk",
                len: chunk.len() as u64,
                limit: u64::from(self.chunk_bytes_max),
            });
        }
        write_record(&mut self.send, chunk).await
    }

    /// Ends the snapshot and waits until the peer has received every byte (or refused it).
    pub async fn finish(mut self) -> Result<(), TransportError> {
        self.send.finish().map_err(stream_error)?;
        match self.send.stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(TransportError::Stream(format!(
                "the peer stopped the snapshot stream (code {code})"
            ))),
            Err(e) => Err(stream_error(e)),
        }
    }
}

/// A request that arrived on its own bidirectional stream, from a client or a node.
#[derive(Debug)]
pub struct InboundRequest {
    /// Who sent it (its proven TLS identity).
    pub from: Identity,
    /// The request bytes (at most `client_request_bytes_max`).
    pub body: Bytes,
    /// Answers it.
    pub responder: Responder,
}

/// Sends the response to one [`InboundRequest`]. Dropping it without responding tells the
/// requester so (a reset stream, or a refusal in a frame), which it sees as an error.
pub struct Responder {
    kind: ResponderKind,
    bytes_max: u32,
}

enum ResponderKind {
    /// The request came on a bidirectional stream of its own.
    Stream(Option<quinn::SendStream>),
    /// The request came in a frame from a peer node; the answer goes back in one.
    Frame(Option<FrameReply>),
}

/// Counts as one of the peer's requests in flight (`Peer::inbound_requests`) until dropped.
struct FrameReply {
    id: u64,
    peer: Arc<Peer>,
    sink: Arc<dyn RpcReplies>,
}

impl Drop for FrameReply {
    fn drop(&mut self) {
        self.peer
            .inbound_requests
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl FrameReply {
    /// Tells the requester its request was not answered, and why.
    fn refuse(&self, reason: String) {
        let _ = self.sink.reply(
            &self.peer,
            RpcItem::Refused {
                id: self.id,
                reason,
            },
        );
    }
}

/// Sends a request's answer to the peer that asked (the transport's shared state).
pub(crate) trait RpcReplies: Send + Sync {
    /// Queues `item` for `peer`.
    fn reply(&self, peer: &Arc<Peer>, item: RpcItem) -> Result<(), TransportError>;
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

impl Responder {
    pub(crate) fn stream(send: quinn::SendStream, bytes_max: u32) -> Responder {
        Responder {
            kind: ResponderKind::Stream(Some(send)),
            bytes_max,
        }
    }

    /// A responder for a request that came in a frame; the caller has counted it in
    /// `peer.inbound_requests` (the responder uncounts it once answered or dropped).
    pub(crate) fn frame(
        id: u64,
        bytes_max: u32,
        peer: Arc<Peer>,
        sink: Arc<dyn RpcReplies>,
    ) -> Responder {
        Responder {
            kind: ResponderKind::Frame(Some(FrameReply { id, peer, sink })),
            bytes_max,
        }
    }

    /// Sends `body` (at most `client_request_bytes_max` bytes): on the request's stream, which
    /// it then closes, or in a frame to the requesting node.
    pub async fn respond(mut self, body: &[u8]) -> Result<(), TransportError> {
        if body.len() as u64 > u64::from(self.bytes_max) {
            let e = TransportError::TooLarge {
                what: "response",
                len: body.len() as u64,
                limit: u64::from(self.bytes_max),
            };
            // A frame's requester hears why (a stream's is reset when `self` drops).
            if let ResponderKind::Frame(reply) = &mut self.kind
                && let Some(reply) = reply.take()
            {
                reply.refuse(format!("the answer could not be sent: {e}"));
            }
            return Err(e);
        }
        match &mut self.kind {
            ResponderKind::Stream(send) => {
                let mut send = send.take().expect("respond consumes the responder");
                write_record(&mut send, body).await?;
                send.finish().map_err(stream_error)
            }
            ResponderKind::Frame(reply) => {
                let reply = reply.take().expect("respond consumes the responder");
                let item = RpcItem::Response {
                    id: reply.id,
                    body: Bytes::copy_from_slice(body),
                };
                let sent = reply.sink.reply(&reply.peer, item);
                if let Err(e) = &sent {
                    // Tell the requester rather than leave it waiting for its deadline.
                    reply.refuse(format!("the answer could not be sent: {e}"));
                }
                sent
            }
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        match &mut self.kind {
            ResponderKind::Stream(send) => {
                if let Some(mut send) = send.take() {
                    let _ = send.reset(quinn::VarInt::from_u32(close_code::ABORTED));
                }
            }
            ResponderKind::Frame(reply) => {
                if let Some(reply) = reply.take() {
                    reply.refuse(
                        "the node did not handle it (too many requests waiting, or stopping)"
                            .into(),
                    );
                }
            }
        }
    }
}
