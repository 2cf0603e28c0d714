//! The wire format: length-prefixed postcard records on QUIC streams.
//!
//! Every stream starts with a [`StreamHello`] that says what the stream carries. After it:
//!
//! - a Raft stream ([`StreamKind::Raft`], one per direction per connection, long-lived) carries
//!   [`Frame`]s, each a batch of `(group id, message)` for one destination, and the requests
//!   one node forwards to another with their responses ([`RpcItem`], matched by id);
//! - a snapshot stream ([`StreamKind::Snapshot`]) carries raw chunks;
//! - a request stream ([`StreamKind::Request`], bidirectional) carries one request and one
//!   response (clients, and a node's requests too large for a frame).
//!
//! Every record is `u32` big-endian length, then that many bytes. The length is checked against
//! its limit *before* anything is allocated, and a record must be consumed exactly: trailing bytes
//! are an error. Frames and hellos are postcard and start with [`PROTOCOL_VERSION`], which is
//! checked before the rest is decoded, so a later version may change everything after it.

use bytes::{BufMut, Bytes, BytesMut};
use fleet_core::GroupId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::TransportError;

/// The version of every record this build writes; any other value is refused.
pub const PROTOCOL_VERSION: u32 = 4;

/// Bytes of every length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Limit of a [`StreamHello`] record (the snapshot metadata rides in it).
pub const STREAM_HELLO_BYTES_MAX: u32 = 64 * 1024;

/// The longest varint postcard writes (a `u64`).
const VARINT_BYTES_MAX: usize = 10;

/// The limits a frame decoder enforces.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest frame body, length prefix excluded.
    pub frame_bytes_max: u32,
    /// Most `(group, message)` pairs in one frame.
    pub frame_messages_max: u32,
}

/// One batch of Raft messages from one node to another (the reference encoding; the transport
/// builds the same bytes with [`FrameEncoder`] without copying the messages into a `Frame`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame<M> {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The sender's cluster.
    pub cluster_id: String,
    /// The sending node's name; must equal its TLS identity.
    pub sender: String,
    /// The messages, each for one group.
    pub messages: Vec<(GroupId, M)>,
    /// Requests between the two nodes and their responses (at most `frame_messages_max`).
    pub rpcs: Vec<RpcItem>,
}

/// A request one node sends another over their Raft stream, or its answer. Many requests share
/// the long-lived stream (and its packets) instead of opening a stream each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcItem {
    /// A request; the receiver answers it with a `Response` or `Refused` of the same `id`.
    Request {
        /// Chosen by the sender, unique among its requests in flight to the receiver.
        id: u64,
        /// Opaque to the transport.
        body: Bytes,
    },
    /// The answer to request `id`.
    Response {
        /// The request's id.
        id: u64,
        /// Opaque to the transport.
        body: Bytes,
    },
    /// Request `id` was not handled (the receiver is overloaded or stopping).
    Refused {
        /// The request's id.
        id: u64,
        /// Why, for the requester's error.
        reason: String,
    },
}

impl<M: Serialize> Frame<M> {
    /// The frame as it goes on the wire: length prefix and postcard body. No limit is checked
    /// (tests use this to build oversized or otherwise bad frames).
    pub fn to_wire(&self) -> Vec<u8> {
        let body = postcard::to_stdvec(self).expect("postcard encodes every serde type we use");
        prefixed(&body)
    }
}

/// A decoded frame that borrows its names from the receive buffer.
#[derive(Debug)]
pub struct FrameRef<'a, M> {
    /// The version found (always [`PROTOCOL_VERSION`] once decoded).
    pub version: u32,
    /// The cluster named by the sender.
    pub cluster_id: &'a str,
    /// The sender named in the frame.
    pub sender: &'a str,
    /// The messages.
    pub messages: Vec<(GroupId, M)>,
    /// The requests and responses.
    pub rpcs: Vec<RpcItem>,
}

/// Returns `bytes` behind a `u32` big-endian length prefix.
pub fn prefixed(bytes: &[u8]) -> Vec<u8> {
    let len = u32::try_from(bytes.len()).expect("records are far below 4 GiB");
    let mut out = Vec::with_capacity(LENGTH_PREFIX_BYTES + bytes.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Reads a length prefix and checks it against `limit` before anything is allocated.
pub fn record_length(
    prefix: [u8; LENGTH_PREFIX_BYTES],
    limit: u32,
    what: &'static str,
) -> Result<usize, TransportError> {
    let len = u32::from_be_bytes(prefix);
    if len > limit {
        return Err(TransportError::TooLarge {
            what,
            len: u64::from(len),
            limit: u64::from(limit),
        });
    }
    Ok(len as usize)
}

/// Decodes one frame body (the bytes after the length prefix).
///
/// Checks, in order: the body size, the version (before anything else is decoded), the message
/// count against `frame_messages_max` (before the message vector is allocated), every message,
/// and that no byte is left over. Memory used is bounded by the body plus
/// `frame_messages_max * size_of::<(GroupId, M)>()` plus what `M`'s own fields allocate, which
/// postcard bounds by the bytes present.
pub fn decode_frame<'a, M: DeserializeOwned>(
    body: &'a [u8],
    limits: &FrameLimits,
) -> Result<FrameRef<'a, M>, TransportError> {
    const WHAT: &str = "frame";
    if body.len() as u64 > u64::from(limits.frame_bytes_max) {
        return Err(TransportError::TooLarge {
            what: WHAT,
            len: body.len() as u64,
            limit: u64::from(limits.frame_bytes_max),
        });
    }
    let (version, rest) = take::<u32>(body, WHAT)?;
    check_version(version)?;
    let (cluster_id, rest) = take::<&str>(rest, WHAT)?;
    let (sender, rest) = take::<&str>(rest, WHAT)?;
    let (count, mut rest) = take::<u64>(rest, WHAT)?;
    if count > u64::from(limits.frame_messages_max) {
        return Err(TransportError::TooManyMessages {
            count,
            limit: limits.frame_messages_max,
        });
    }
    // Every message takes at least one byte, so the count cannot promise more than `rest` holds;
    // the vector grows past the first few thousand only as messages actually decode.
    let capacity = (count as usize).min(rest.len()).min(4096);
    let mut messages = Vec::with_capacity(capacity);
    for _ in 0..count {
        let (message, after) = take::<(GroupId, M)>(rest, WHAT)?;
        messages.push(message);
        rest = after;
    }
    let (count, mut rest) = take::<u64>(rest, WHAT)?;
    if count > u64::from(limits.frame_messages_max) {
        return Err(TransportError::TooManyMessages {
            count,
            limit: limits.frame_messages_max,
        });
    }
    let mut rpcs = Vec::with_capacity((count as usize).min(rest.len()).min(4096));
    for _ in 0..count {
        let (item, after) = take::<RpcItem>(rest, WHAT)?;
        rpcs.push(item);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(TransportError::TrailingBytes {
            what: WHAT,
            count: rest.len(),
        });
    }
    Ok(FrameRef {
        version,
        cluster_id,
        sender,
        messages,
        rpcs,
    })
}

/// Decodes exactly one length-prefixed frame that fills `buf`: the prefix is checked against the
/// limit first, a short buffer is [`TransportError::Truncated`] and a long one
/// [`TransportError::TrailingBytes`].
pub fn decode_prefixed_frame<'a, M: DeserializeOwned>(
    buf: &'a [u8],
    limits: &FrameLimits,
) -> Result<FrameRef<'a, M>, TransportError> {
    let Some((prefix, body)) = buf.split_first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Err(TransportError::Truncated {
            what: "frame length prefix",
            expected: LENGTH_PREFIX_BYTES,
            got: buf.len(),
        });
    };
    let len = record_length(*prefix, limits.frame_bytes_max, "frame")?;
    if body.len() < len {
        return Err(TransportError::Truncated {
            what: "frame",
            expected: len,
            got: body.len(),
        });
    }
    if body.len() > len {
        return Err(TransportError::TrailingBytes {
            what: "length-prefixed frame",
            count: body.len() - len,
        });
    }
    decode_frame(body, limits)
}

fn check_version(version: u32) -> Result<(), TransportError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(TransportError::UnknownVersion {
            version,
            supported: PROTOCOL_VERSION,
        })
    }
}

fn take<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<(T, &'a [u8]), TransportError> {
    postcard::take_from_bytes(bytes).map_err(|source| TransportError::Malformed { what, source })
}

/// Builds wire frames from a batch of messages without copying them into a [`Frame`]: the
/// header (version, cluster, sender) is encoded once, messages are encoded once each, and the
/// batch is cut into as many frames as the limits require. The bytes equal
/// [`Frame::to_wire`] of each piece.
#[derive(Clone, Debug)]
pub struct FrameEncoder {
    header: Vec<u8>,
    limits: FrameLimits,
}

/// What [`FrameEncoder::encode`] produced.
#[derive(Debug, Default)]
pub struct EncodedBatch {
    /// Complete wire frames, length prefix included, in order.
    pub frames: Vec<Bytes>,
    /// Messages in each frame of `frames`.
    pub message_counts: Vec<u32>,
    /// Total bytes of `frames`.
    pub bytes: u64,
    /// Messages that could not fit in any frame, as `(group, encoded bytes)`; they are not in
    /// `frames`.
    pub too_large: Vec<(GroupId, usize)>,
}

impl FrameEncoder {
    /// An encoder for frames from `sender` of `cluster_id`.
    pub fn new(cluster_id: &str, sender: &str, limits: FrameLimits) -> FrameEncoder {
        let header = postcard::to_stdvec(&(PROTOCOL_VERSION, cluster_id, sender))
            .expect("postcard encodes integers and strings");
        FrameEncoder { header, limits }
    }

    /// The limits frames are cut to.
    pub fn limits(&self) -> &FrameLimits {
        &self.limits
    }

    /// Encodes `messages` into one frame, or several if the batch exceeds a limit. An empty
    /// batch gives one empty frame (a node-level heartbeat).
    pub fn encode<M: Serialize>(
        &self,
        messages: &[(GroupId, M)],
    ) -> Result<EncodedBatch, TransportError> {
        if let Some(batch) = self.encode_one_frame(messages)? {
            return Ok(batch);
        }
        self.encode_split(messages)
    }

    /// The common case, encoded in place with no copy: the whole batch fits one frame.
    /// `None` when it does not (the caller then cuts it).
    fn encode_one_frame<M: Serialize>(
        &self,
        messages: &[(GroupId, M)],
    ) -> Result<Option<EncodedBatch>, TransportError> {
        if messages.len() > self.limits.frame_messages_max as usize {
            return Ok(None);
        }
        let body_max = self.limits.frame_bytes_max as usize;
        let mut frame = Vec::with_capacity(
            (LENGTH_PREFIX_BYTES + self.header.len() + VARINT_BYTES_MAX + messages.len() * 16)
                .min(LENGTH_PREFIX_BYTES + body_max),
        );
        frame.put_u32(0); // patched below
        frame.put_slice(&self.header);
        put_varint(&mut frame, messages.len() as u64);
        for message in messages {
            frame = postcard::to_extend(message, frame).map_err(|source| {
                TransportError::Malformed {
                    what: "outgoing message",
                    source,
                }
            })?;
            if frame.len() - LENGTH_PREFIX_BYTES > body_max {
                return Ok(None);
            }
        }
        put_varint(&mut frame, 0); // no rpcs
        if frame.len() - LENGTH_PREFIX_BYTES > body_max {
            return Ok(None);
        }
        let len = u32::try_from(frame.len() - LENGTH_PREFIX_BYTES).expect("below frame_bytes_max");
        frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
        let count = u32::try_from(messages.len()).expect("below frame_messages_max");
        Ok(Some(EncodedBatch {
            bytes: frame.len() as u64,
            frames: vec![Bytes::from(frame)],
            message_counts: vec![count],
            too_large: Vec::new(),
        }))
    }

    /// Encodes each message once, then cuts the batch into frames within the limits.
    fn encode_split<M: Serialize>(
        &self,
        messages: &[(GroupId, M)],
    ) -> Result<EncodedBatch, TransportError> {
        let mut body = Vec::with_capacity(messages.len() * 16);
        let mut ends = Vec::with_capacity(messages.len());
        for message in messages {
            body =
                postcard::to_extend(message, body).map_err(|source| TransportError::Malformed {
                    what: "outgoing message",
                    source,
                })?;
            ends.push(body.len());
        }
        let mut batch = EncodedBatch::default();
        if messages.is_empty() {
            self.push_frame(&mut batch, &[], 0);
            return Ok(batch);
        }
        let frame_bytes_max = self.limits.frame_bytes_max as usize;
        let messages_max = self.limits.frame_messages_max as usize;
        let (mut frame_start, mut frame_count) = (0usize, 0usize);
        let mut start = 0usize;
        for (i, &end) in ends.iter().enumerate() {
            let len = end - start;
            if self.header.len() + varint_len(1) + len + RPCS_NONE_BYTES > frame_bytes_max {
                self.flush(&mut batch, &body[frame_start..start], frame_count);
                batch.too_large.push((messages[i].0, len));
                (frame_start, frame_count) = (end, 0);
            } else {
                let fits = frame_count < messages_max
                    && self.header.len()
                        + varint_len(frame_count + 1)
                        + (end - frame_start)
                        + RPCS_NONE_BYTES
                        <= frame_bytes_max;
                if !fits {
                    self.flush(&mut batch, &body[frame_start..start], frame_count);
                    (frame_start, frame_count) = (start, 0);
                }
                frame_count += 1;
            }
            start = end;
        }
        self.flush(&mut batch, &body[frame_start..], frame_count);
        Ok(batch)
    }

    fn flush(&self, batch: &mut EncodedBatch, messages: &[u8], count: usize) {
        if count > 0 {
            self.push_frame(batch, messages, count);
        }
    }

    fn push_frame(&self, batch: &mut EncodedBatch, messages: &[u8], count: usize) {
        let len = self.header.len() + varint_len(count) + messages.len() + RPCS_NONE_BYTES;
        debug_assert!(len <= self.limits.frame_bytes_max as usize || count == 0);
        debug_assert!(count <= self.limits.frame_messages_max as usize);
        let mut frame = BytesMut::with_capacity(LENGTH_PREFIX_BYTES + len);
        frame.put_u32(u32::try_from(len).expect("frames are below frame_bytes_max"));
        frame.put_slice(&self.header);
        put_varint(&mut frame, count as u64);
        frame.put_slice(messages);
        put_varint(&mut frame, 0); // no rpcs
        batch.bytes += frame.len() as u64;
        batch.frames.push(frame.freeze());
        batch
            .message_counts
            .push(u32::try_from(count).expect("count <= frame_messages_max"));
    }
}

impl FrameEncoder {
    /// One frame carrying `item` alone (no Raft messages): the bytes of [`Frame::to_wire`] with
    /// `rpcs: vec![item]`. [`TransportError::TooLarge`] if it exceeds `frame_bytes_max`.
    pub fn encode_rpc(&self, item: &RpcItem) -> Result<Bytes, TransportError> {
        let body_len = match item {
            RpcItem::Request { body, .. } | RpcItem::Response { body, .. } => body.len(),
            RpcItem::Refused { reason, .. } => reason.len(),
        };
        let mut frame = Vec::with_capacity(
            LENGTH_PREFIX_BYTES + self.header.len() + 2 * VARINT_BYTES_MAX + body_len + 16,
        );
        frame.put_u32(0); // patched below
        frame.put_slice(&self.header);
        put_varint(&mut frame, 0); // no messages
        put_varint(&mut frame, 1);
        let mut frame =
            postcard::to_extend(item, frame).map_err(|source| TransportError::Malformed {
                what: "outgoing request or response",
                source,
            })?;
        let len = frame.len() - LENGTH_PREFIX_BYTES;
        if len > self.limits.frame_bytes_max as usize {
            return Err(TransportError::TooLarge {
                what: "frame of a request or response",
                len: len as u64,
                limit: u64::from(self.limits.frame_bytes_max),
            });
        }
        let len = u32::try_from(len).expect("below frame_bytes_max");
        frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
        Ok(Bytes::from(frame))
    }
}

/// Bytes of an empty `rpcs` list (its count, zero).
const RPCS_NONE_BYTES: usize = 1;

fn varint_len(value: usize) -> usize {
    let bits = usize::BITS - value.leading_zeros();
    (bits.max(1) as usize).div_ceil(7).min(VARINT_BYTES_MAX)
}

fn put_varint(out: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// The first record of every stream: who sends and what the stream carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHello {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The sender's cluster.
    pub cluster_id: String,
    /// The sender's name; must equal its TLS identity.
    pub sender: String,
    /// What follows on the stream.
    pub kind: StreamKind,
}

/// What a stream carries after its [`StreamHello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    /// Raft frames, for the life of the connection. `incarnation` identifies the sending
    /// process, so a restarted peer's new connection replaces the old one.
    Raft {
        /// Differs every time the peer's transport starts.
        incarnation: u64,
    },
    /// One snapshot: `meta` is the runtime's description of it, then chunks follow.
    Snapshot {
        /// Opaque to the transport (group, index, term... as the runtime encodes them).
        #[serde(with = "serde_bytes")]
        meta: Vec<u8>,
    },
    /// One request and its response (bidirectional stream).
    Request,
}

impl StreamKind {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            StreamKind::Raft { .. } => "raft",
            StreamKind::Snapshot { .. } => "snapshot",
            StreamKind::Request => "request",
        }
    }
}

#[derive(Deserialize)]
struct StreamHelloBody {
    cluster_id: String,
    sender: String,
    kind: StreamKind,
}

impl StreamHello {
    /// The hello as it goes on the wire (length prefix included).
    pub fn to_wire(&self) -> Vec<u8> {
        prefixed(&postcard::to_stdvec(self).expect("postcard encodes strings and enums"))
    }

    /// Decodes a hello body (after its length prefix): version first, then the rest, which must
    /// be consumed exactly.
    pub fn decode(body: &[u8]) -> Result<StreamHello, TransportError> {
        const WHAT: &str = "stream hello";
        if body.len() as u64 > u64::from(STREAM_HELLO_BYTES_MAX) {
            return Err(TransportError::TooLarge {
                what: WHAT,
                len: body.len() as u64,
                limit: u64::from(STREAM_HELLO_BYTES_MAX),
            });
        }
        let (version, rest) = take::<u32>(body, WHAT)?;
        check_version(version)?;
        let (hello, rest) = take::<StreamHelloBody>(rest, WHAT)?;
        if !rest.is_empty() {
            return Err(TransportError::TrailingBytes {
                what: WHAT,
                count: rest.len(),
            });
        }
        Ok(StreamHello {
            version,
            cluster_id: hello.cluster_id,
            sender: hello.sender,
            kind: hello.kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        frame_bytes_max: 1024,
        frame_messages_max: 8,
    };

    fn reference(messages: &[(GroupId, Vec<u8>)]) -> Vec<u8> {
        Frame {
            version: PROTOCOL_VERSION,
            cluster_id: "c1".to_owned(),
            sender: "n1".to_owned(),
            messages: messages.to_vec(),
            rpcs: Vec::new(),
        }
        .to_wire()
    }

    #[test]
    fn a_request_or_response_frame_equals_the_reference_encoding_and_decodes() {
        let encoder = FrameEncoder::new("c1", "n1", LIMITS);
        let items = [
            RpcItem::Request {
                id: 7,
                body: Bytes::from_static(b"put k v"),
            },
            RpcItem::Response {
                id: u64::MAX,
                body: Bytes::new(),
            },
            RpcItem::Refused {
                id: 1,
                reason: "busy".into(),
            },
        ];
        for item in items {
            let frame = encoder.encode_rpc(&item).unwrap();
            let reference = Frame::<Vec<u8>> {
                version: PROTOCOL_VERSION,
                cluster_id: "c1".to_owned(),
                sender: "n1".to_owned(),
                messages: Vec::new(),
                rpcs: vec![item.clone()],
            }
            .to_wire();
            assert_eq!(&frame[..], &reference[..]);
            let decoded = decode_prefixed_frame::<Vec<u8>>(&frame, &LIMITS).unwrap();
            assert!(decoded.messages.is_empty());
            assert_eq!(decoded.rpcs, vec![item]);
        }
        let big = RpcItem::Request {
            id: 1,
            body: Bytes::from(vec![0u8; LIMITS.frame_bytes_max as usize]),
        };
        assert!(matches!(
            encoder.encode_rpc(&big),
            Err(TransportError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_frame_with_more_rpcs_than_the_limit_is_refused_before_they_decode() {
        let frame = Frame::<Vec<u8>> {
            version: PROTOCOL_VERSION,
            cluster_id: "c1".to_owned(),
            sender: "n1".to_owned(),
            messages: Vec::new(),
            rpcs: (0..=u64::from(LIMITS.frame_messages_max))
                .map(|id| RpcItem::Refused {
                    id,
                    reason: String::new(),
                })
                .collect(),
        }
        .to_wire();
        assert!(matches!(
            decode_prefixed_frame::<Vec<u8>>(&frame, &LIMITS),
            Err(TransportError::TooManyMessages { .. })
        ));
    }

    #[test]
    fn encoder_matches_the_reference_encoding_and_splits_by_count_and_bytes() {
        let encoder = FrameEncoder::new("c1", "n1", LIMITS);
        let messages: Vec<(GroupId, Vec<u8>)> = (0..20)
            .map(|g| (GroupId(g * 1000), vec![g as u8; 100]))
            .collect();
        let batch = encoder.encode(&messages).unwrap();
        let mut decoded = Vec::new();
        for frame in &batch.frames {
            assert!(frame.len() - LENGTH_PREFIX_BYTES <= LIMITS.frame_bytes_max as usize);
            let f = decode_prefixed_frame::<Vec<u8>>(frame, &LIMITS).unwrap();
            assert!(f.messages.len() <= LIMITS.frame_messages_max as usize);
            assert_eq!(&frame[..], &reference(&f.messages)[..]);
            decoded.extend(f.messages);
        }
        assert_eq!(decoded, messages);
        assert!(batch.too_large.is_empty());
    }

    #[test]
    fn a_batch_that_fits_is_one_frame_equal_to_the_reference_encoding() {
        let encoder = FrameEncoder::new("c1", "n1", LIMITS);
        for n in [0u64, 1, 8] {
            let messages: Vec<(GroupId, Vec<u8>)> =
                (0..n).map(|g| (GroupId(g), vec![1; 50])).collect();
            let batch = encoder.encode(&messages).unwrap();
            assert_eq!(batch.frames.len(), 1);
            assert_eq!(batch.message_counts, vec![n as u32]);
            assert_eq!(&batch.frames[0][..], &reference(&messages)[..]);
            assert_eq!(batch.bytes, batch.frames[0].len() as u64);
        }
    }

    #[test]
    fn encoder_drops_only_the_message_that_cannot_fit() {
        let encoder = FrameEncoder::new("c1", "n1", LIMITS);
        let messages = vec![
            (GroupId(1), vec![1u8; 10]),
            (GroupId(2), vec![2u8; 2000]),
            (GroupId(3), vec![3u8; 10]),
        ];
        let batch = encoder.encode(&messages).unwrap();
        assert_eq!(batch.too_large.len(), 1);
        assert_eq!(batch.too_large[0].0, GroupId(2));
        let groups: Vec<GroupId> = batch
            .frames
            .iter()
            .flat_map(|f| {
                decode_prefixed_frame::<Vec<u8>>(f, &LIMITS)
                    .unwrap()
                    .messages
            })
            .map(|(g, _)| g)
            .collect();
        assert_eq!(groups, vec![GroupId(1), GroupId(3)]);
    }

    #[test]
    fn varint_len_matches_postcard() {
        for value in [0usize, 1, 127, 128, 16_383, 16_384, usize::MAX] {
            assert_eq!(
                varint_len(value),
                postcard::to_stdvec(&value).unwrap().len()
            );
        }
    }
}
