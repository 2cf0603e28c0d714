//! Per-peer state: the outgoing queue, the current connection, liveness and counters.
//!
//! Invariant: a peer has at most one current [`Link`]; the dialing side of a duplicate pair is
//! chosen by [`keep_new_link`] identically on both nodes, so both keep the same connection.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot, watch};

use super::TransportError;

/// One established, authenticated connection to a peer node, with our Raft stream on it.
pub(crate) struct Link {
    pub(crate) conn: quinn::Connection,
    /// Our long-lived Raft stream to the peer; only the peer's writer task writes it.
    pub(crate) raft_send: tokio::sync::Mutex<quinn::SendStream>,
    /// Whether this node dialed the connection (else the peer did).
    pub(crate) dialed_by_us: bool,
    /// The peer process's incarnation, from its Raft stream hello.
    pub(crate) peer_incarnation: u64,
    /// Set when the peer finished its Raft stream on this link (it retired the link).
    pub(crate) peer_finished: watch::Sender<bool>,
}

impl Link {
    pub(crate) fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    fn facts(&self) -> LinkFacts {
        LinkFacts {
            closed: self.is_closed(),
            dialed_by_us: self.dialed_by_us,
            peer_incarnation: self.peer_incarnation,
        }
    }
}

/// What the duplicate-connection rule looks at.
#[derive(Copy, Clone, Debug)]
pub(crate) struct LinkFacts {
    pub(crate) closed: bool,
    pub(crate) dialed_by_us: bool,
    pub(crate) peer_incarnation: u64,
}

/// Whether a newly established `new` link should replace `old` (both to the same peer).
///
/// - A closed `old` is always replaced.
/// - Different peer incarnations mean the peer restarted since `old` was made: the new link is
///   from its live process, keep it.
/// - Same incarnation: two connections between the same two processes (both dialed at once).
///   Keep the one dialed by the node whose name sorts first; if both were dialed by the same
///   node, keep the newer (that node gave up on the older one).
///
/// Both nodes see the same two connections with the same dialers, so they decide the same way.
pub(crate) fn keep_new_link(me: &str, peer: &str, old: LinkFacts, new: LinkFacts) -> bool {
    if old.closed || old.peer_incarnation != new.peer_incarnation {
        return true;
    }
    if old.dialed_by_us == new.dialed_by_us {
        return true;
    }
    let preferred_dialer_is_me = me < peer;
    new.dialed_by_us == preferred_dialer_is_me
}

/// Capped exponential backoff with deterministic jitter: attempt 1 waits about `min`, each next
/// attempt twice as long up to `max`, each drawn uniformly from the upper half of that delay.
pub(crate) fn backoff(min: Duration, max: Duration, attempt: u32, seed: u64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let delay = min.saturating_mul(1u32 << exponent).min(max);
    let half = delay / 2;
    let spread = half.as_nanos() as u64 + 1;
    half + Duration::from_nanos(splitmix64(seed ^ u64::from(attempt)) % spread)
}

/// A well-mixed 64-bit hash step (SplitMix64).
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a of a string, to seed jitter from names.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Frames waiting for the writer.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) frames: VecDeque<(Bytes, u32)>,
    /// Bytes queued plus bytes the writer has taken and not finished writing.
    /// Invariant: `pending_bytes <= pending_bytes_per_peer_max` (checked on every enqueue).
    pub(crate) pending_bytes: u64,
    /// Set after a drop was logged at warn level; cleared by the next accepted batch, so a
    /// congested peer logs one warning per episode, not one per dropped batch.
    pub(crate) dropping: bool,
}

/// Counters of one peer, kept both as atomics (for [`PeerStats`](super::PeerStats)) and as
/// `metrics` handles labelled with the peer's name.
pub(crate) struct PeerCounters {
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_dropped: AtomicU64,
    pub(crate) messages_unhosted: AtomicU64,
    pub(crate) frames_rejected: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) duplicate_connections: AtomicU64,
    pub(crate) metric_bytes_sent: metrics::Counter,
    pub(crate) metric_bytes_received: metrics::Counter,
    pub(crate) metric_frames_sent: metrics::Counter,
    pub(crate) metric_frames_received: metrics::Counter,
    pub(crate) metric_messages_dropped: metrics::Counter,
    pub(crate) metric_reconnects: metrics::Counter,
    pub(crate) metric_rtt_seconds: metrics::Gauge,
    pub(crate) metric_connected: metrics::Gauge,
    pub(crate) metric_pending_bytes: metrics::Gauge,
}

impl PeerCounters {
    fn new(peer: &str) -> PeerCounters {
        let label = peer.to_owned();
        PeerCounters {
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            frames_received: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_dropped: AtomicU64::new(0),
            messages_unhosted: AtomicU64::new(0),
            frames_rejected: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            duplicate_connections: AtomicU64::new(0),
            metric_bytes_sent: metrics::counter!("fleet_transport_bytes_sent_total", "peer" => label.clone()),
            metric_bytes_received: metrics::counter!("fleet_transport_bytes_received_total", "peer" => label.clone()),
            metric_frames_sent: metrics::counter!("fleet_transport_frames_sent_total", "peer" => label.clone()),
            metric_frames_received: metrics::counter!("fleet_transport_frames_received_total", "peer" => label.clone()),
            metric_messages_dropped: metrics::counter!("fleet_transport_messages_dropped_total", "peer" => label.clone()),
            metric_reconnects: metrics::counter!("fleet_transport_reconnects_total", "peer" => label.clone()),
            metric_rtt_seconds: metrics::gauge!("fleet_transport_rtt_seconds", "peer" => label.clone()),
            metric_connected: metrics::gauge!("fleet_transport_connected", "peer" => label.clone()),
            metric_pending_bytes: metrics::gauge!("fleet_transport_pending_bytes", "peer" => label),
        }
    }
}

/// Everything the transport keeps about one peer node.
pub(crate) struct Peer {
    pub(crate) name: Arc<str>,
    pub(crate) queue: Mutex<Queue>,
    /// Wakes the peer's writer task: frames were queued or a connection is wanted.
    pub(crate) wake: Notify,
    /// The current link; the writer task watches it.
    pub(crate) link: watch::Sender<Option<Arc<Link>>>,
    /// A request or snapshot wants a connection even though no frame is queued.
    pub(crate) want_connection: AtomicBool,
    /// Nanoseconds since the transport's epoch, plus one, of the last frame or hello received;
    /// zero when never heard.
    pub(crate) last_heard: AtomicU64,
    pub(crate) counters: PeerCounters,
    /// This node's requests in flight to the peer, by id (at most
    /// `requests_in_flight_per_peer_max`).
    pub(crate) requests: Mutex<HashMap<u64, RequestReply>>,
    /// The peer's requests this node has taken and not answered yet (at most
    /// `requests_in_flight_per_peer_max`; beyond it they are refused at once).
    pub(crate) inbound_requests: AtomicUsize,
}

/// Where the answer to one request in flight goes.
pub(crate) type RequestReply = oneshot::Sender<Result<Bytes, TransportError>>;

/// Removes a request from its peer's in-flight map when the requester stops waiting.
pub(crate) struct PendingRequest<'a> {
    pub(crate) peer: &'a Peer,
    pub(crate) id: u64,
}

impl Drop for PendingRequest<'_> {
    fn drop(&mut self) {
        self.peer
            .requests
            .lock()
            .expect("requests lock is never poisoned")
            .remove(&self.id);
    }
}

impl Peer {
    pub(crate) fn new(name: Arc<str>) -> Peer {
        Peer {
            counters: PeerCounters::new(&name),
            name,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            link: watch::Sender::new(None),
            want_connection: AtomicBool::new(false),
            last_heard: AtomicU64::new(0),
            requests: Mutex::new(HashMap::new()),
            inbound_requests: AtomicUsize::new(0),
        }
    }

    /// Delivers the answer to request `id`, if its requester still waits (else drops it).
    pub(crate) fn answer(&self, id: u64, answer: Result<Bytes, TransportError>) {
        let reply = self
            .requests
            .lock()
            .expect("requests lock is never poisoned")
            .remove(&id);
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    }

    /// The current link, if it is open.
    pub(crate) fn current_link(&self) -> Option<Arc<Link>> {
        self.link
            .borrow()
            .as_ref()
            .filter(|l| !l.is_closed())
            .cloned()
    }

    pub(crate) fn heard(&self, epoch: Instant) {
        let nanos = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_heard.store(nanos + 1, Ordering::Relaxed);
    }

    pub(crate) fn last_heard(&self, epoch: Instant) -> Option<Instant> {
        match self.last_heard.load(Ordering::Relaxed) {
            0 => None,
            n => Some(epoch + Duration::from_nanos(n - 1)),
        }
    }

    /// Installs `new` as the current link unless the current one wins by [`keep_new_link`].
    /// Returns the link that lost (to be closed by the caller) and whether `new` was kept.
    pub(crate) fn install(&self, me: &str, new: Arc<Link>) -> (Option<Arc<Link>>, bool) {
        let mut loser = None;
        let mut kept = false;
        self.link.send_modify(|current| match current {
            Some(old) if !keep_new_link(me, &self.name, old.facts(), new.facts()) => {
                loser = Some(new.clone())
            }
            _ => {
                loser = current.replace(new.clone());
                kept = true;
            }
        });
        if kept {
            let previous = self.counters.connections.fetch_add(1, Ordering::Relaxed);
            if previous > 0 {
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                self.counters.metric_reconnects.increment(1);
            }
            self.counters.metric_connected.set(1.0);
        }
        if loser.as_ref().is_some_and(|l| !l.is_closed()) {
            self.counters
                .duplicate_connections
                .fetch_add(1, Ordering::Relaxed);
        }
        (loser.filter(|l| !l.is_closed()), kept)
    }

    /// Forgets `link` if it is still the current one (it closed or failed).
    pub(crate) fn remove_link(&self, link: &Arc<Link>) {
        let removed = self.link.send_if_modified(|current| {
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, link)) {
                *current = None;
                true
            } else {
                false
            }
        });
        if removed {
            self.counters.metric_connected.set(0.0);
        }
    }

    /// Queues encoded frames unless that would exceed `limit` pending bytes; all or nothing.
    pub(crate) fn enqueue(
        &self,
        frames: Vec<Bytes>,
        message_counts: &[u32],
        bytes: u64,
        limit: u64,
    ) -> Result<(), u64> {
        let mut queue = self.queue.lock().expect("queue lock is never poisoned");
        if queue.pending_bytes + bytes > limit {
            return Err(queue.pending_bytes);
        }
        queue.pending_bytes += bytes;
        queue.dropping = false;
        queue
            .frames
            .extend(frames.into_iter().zip(message_counts.iter().copied()));
        self.counters
            .metric_pending_bytes
            .set(queue.pending_bytes as f64);
        drop(queue);
        self.wake.notify_one();
        Ok(())
    }

    /// Writes `frame` on `link` at once, without waking the writer task, when nothing is queued
    /// or being written and QUIC takes it without waiting (the common case for small frames of
    /// a node loop that sends once per cycle). Otherwise, or for the part QUIC did not take,
    /// queues it as [`Peer::enqueue`] does. Order is kept: the fast path runs only under the
    /// queue lock while the queue is empty and the writer holds no stream.
    pub(crate) fn send_or_enqueue(
        &self,
        link: &Link,
        frame: Bytes,
        messages: u32,
        limit: u64,
    ) -> Result<(), u64> {
        let mut queue = self.queue.lock().expect("queue lock is never poisoned");
        if queue.frames.is_empty()
            && queue.pending_bytes == 0
            && let Ok(mut send) = link.raft_send.try_lock()
        {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let written = match std::pin::Pin::new(&mut *send).poll_write(&mut cx, &frame) {
                std::task::Poll::Ready(Ok(n)) => n,
                _ => 0,
            };
            let c = &self.counters;
            c.bytes_sent.fetch_add(written as u64, Ordering::Relaxed);
            c.metric_bytes_sent.increment(written as u64);
            if written == frame.len() {
                c.frames_sent.fetch_add(1, Ordering::Relaxed);
                c.metric_frames_sent.increment(1);
                queue.dropping = false;
                return Ok(());
            }
            // The writer finishes the frame (and counts it as sent, with its bytes).
            let rest = frame.slice(written..);
            queue.pending_bytes += rest.len() as u64;
            queue.frames.push_front((rest, messages));
            drop(queue);
            drop(send);
            self.wake.notify_one();
            return Ok(());
        }
        drop(queue);
        let bytes = frame.len() as u64;
        self.enqueue(vec![frame], &[messages], bytes, limit)
    }

    /// Takes every queued frame for writing; returns the frames, their bytes and messages.
    pub(crate) fn take_frames(&self, out: &mut Vec<Bytes>) -> (u64, u64) {
        let mut queue = self.queue.lock().expect("queue lock is never poisoned");
        let (mut bytes, mut messages) = (0u64, 0u64);
        for (frame, count) in queue.frames.drain(..) {
            bytes += frame.len() as u64;
            messages += u64::from(count);
            out.push(frame);
        }
        (bytes, messages)
    }

    /// Releases `bytes` taken by [`Peer::take_frames`] once they are written (or lost).
    pub(crate) fn release(&self, bytes: u64) {
        let mut queue = self.queue.lock().expect("queue lock is never poisoned");
        assert!(
            queue.pending_bytes >= bytes,
            "released {bytes} bytes but only {} are pending",
            queue.pending_bytes
        );
        queue.pending_bytes -= bytes;
        self.counters
            .metric_pending_bytes
            .set(queue.pending_bytes as f64);
    }

    /// Drops every queued frame (the peer is unreachable; Raft will retry). Returns the number
    /// of messages dropped.
    pub(crate) fn drop_queued(&self) -> u64 {
        let mut queue = self.queue.lock().expect("queue lock is never poisoned");
        let (mut bytes, mut messages) = (0u64, 0u64);
        for (frame, count) in queue.frames.drain(..) {
            bytes += frame.len() as u64;
            messages += u64::from(count);
        }
        queue.pending_bytes -= bytes;
        self.counters
            .metric_pending_bytes
            .set(queue.pending_bytes as f64);
        drop(queue);
        self.count_dropped(messages);
        messages
    }

    pub(crate) fn count_dropped(&self, messages: u64) {
        self.counters
            .messages_dropped
            .fetch_add(messages, Ordering::Relaxed);
        self.counters.metric_messages_dropped.increment(messages);
    }

    pub(crate) fn has_queued(&self) -> bool {
        !self
            .queue
            .lock()
            .expect("queue lock is never poisoned")
            .frames
            .is_empty()
    }

    pub(crate) fn pending_bytes(&self) -> u64 {
        self.queue
            .lock()
            .expect("queue lock is never poisoned")
            .pending_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(dialed_by_us: bool, peer_incarnation: u64) -> LinkFacts {
        LinkFacts {
            closed: false,
            dialed_by_us,
            peer_incarnation,
        }
    }

    #[test]
    fn both_nodes_keep_the_connection_dialed_by_the_smaller_name() {
        // n1 < n2. On n1, "dialed by us" means dialed by n1; on n2 it means dialed by n2.
        let by_n1_on_n1 = facts(true, 20);
        let by_n2_on_n1 = facts(false, 20);
        let by_n1_on_n2 = facts(false, 10);
        let by_n2_on_n2 = facts(true, 10);
        // Whatever arrives first, both keep the n1-dialed connection.
        assert!(keep_new_link("n1", "n2", by_n2_on_n1, by_n1_on_n1));
        assert!(!keep_new_link("n1", "n2", by_n1_on_n1, by_n2_on_n1));
        assert!(keep_new_link("n2", "n1", by_n2_on_n2, by_n1_on_n2));
        assert!(!keep_new_link("n2", "n1", by_n1_on_n2, by_n2_on_n2));
    }

    #[test]
    fn a_restarted_peer_or_a_closed_link_is_always_replaced() {
        let old = facts(true, 1);
        assert!(
            keep_new_link("n1", "n2", old, facts(false, 2)),
            "new incarnation wins"
        );
        let closed = LinkFacts {
            closed: true,
            ..old
        };
        assert!(keep_new_link("n1", "n2", closed, facts(false, 1)));
        assert!(
            keep_new_link("n1", "n2", old, facts(true, 1)),
            "same dialer: newer wins"
        );
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_in_the_upper_half() {
        let (min, max) = (Duration::from_millis(50), Duration::from_secs(5));
        for attempt in 1..40 {
            let full = min.saturating_mul(1 << (attempt - 1).min(20)).min(max);
            let d = backoff(min, max, attempt, 7);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
        assert_eq!(
            backoff(min, max, 3, 7),
            backoff(min, max, 3, 7),
            "deterministic"
        );
    }
}
