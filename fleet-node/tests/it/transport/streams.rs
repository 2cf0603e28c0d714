//! Streams other than the Raft stream: floods, silent streams, snapshots and requests.

use std::time::{Duration, Instant};

use fleet_node::transport::wire::StreamKind;
use fleet_node::transport::{
    GroupId, RPC_FRAME_OVERHEAD_MAX, RejectReason, TransportConfig, TransportError, close_code,
};

use super::support::{Msg, Node, Pki, config, hello, introduce, rogue, start_nodes, wait_until};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn thousands_of_streams_opened_at_once_are_bounded_by_the_stream_limit() {
    let pki = Pki::new("c1");
    let streams_max = 16;
    let server_config = TransportConfig {
        streams_per_connection_max: streams_max,
        ..config()
    };
    let mut nodes = start_nodes(&pki, &["n1", "n3"], server_config).await;
    nodes[0].directory.allow("n2");
    let rogue = rogue(&pki.node("n2"), nodes[0].addr()).await.unwrap();
    let _raft = rogue.raft_stream("c1", "n2").await;

    // Try to open 5,000 unidirectional and 5,000 bidirectional streams, each with one byte so
    // the server sees it. The server grants credit for `streams_max` of each kind at a time.
    let attempts = 5_000;
    // The streams outlive the flood: dropping them would finish them, which is another case.
    let (mut uni, mut bi) = (Vec::new(), Vec::new());
    let flood = async {
        for _ in 0..attempts {
            let mut send = rogue.conn.open_uni().await.unwrap();
            send.write_all(&[0]).await.unwrap();
            uni.push(send);
        }
        for _ in 0..attempts {
            let (mut send, recv) = rogue.conn.open_bi().await.unwrap();
            send.write_all(&[0]).await.unwrap();
            bi.push((send, recv));
        }
    };
    let opened = tokio::time::timeout(Duration::from_millis(300), flood).await;
    assert!(opened.is_err(), "the stream limit held the flood back");
    assert!(
        uni.len() < streams_max as usize,
        "opened {} streams",
        uni.len()
    );
    // The rogue's own Raft stream took one unidirectional slot.
    let stats = rogue.conn.stats();
    assert!(
        stats.frame_tx.stream <= u64::from(2 * streams_max) + 8,
        "the rogue could only send on ~{} streams, sent {} STREAM frames",
        2 * streams_max,
        stats.frame_tx.stream
    );

    // The silent streams time out (handshake_time_max) and are counted; the node keeps
    // serving its other peer meanwhile.
    let heartbeat = vec![(GroupId(1), Msg::Heartbeat { term: 1, commit: 1 })];
    nodes[1].transport.send("n1", &heartbeat).unwrap();
    assert_eq!(nodes[0].recv(WAIT).await.messages, heartbeat);
    let server = &nodes[0];
    wait_until("silent streams time out", WAIT, || {
        server.transport.rejected(RejectReason::StreamTimeout) >= uni.len() as u64
    })
    .await;
    assert!(
        rogue.conn.close_reason().is_none(),
        "silence is not a protocol violation"
    );
}

#[tokio::test]
async fn a_stream_that_sends_nothing_times_out_and_is_released() {
    let pki = Pki::new("c1");
    let server = Node::start(&pki, "n1", config()).await;
    server.directory.allow("n2");
    let rogue = rogue(&pki.node("n2"), server.addr()).await.unwrap();
    let _raft = rogue.raft_stream("c1", "n2").await;

    // One byte of a length prefix, then silence.
    let started = Instant::now();
    let silent = rogue.uni(&[0]).await;
    let stopped = tokio::time::timeout(WAIT, silent.stopped())
        .await
        .expect("the server stops a silent stream");
    assert_eq!(
        stopped.unwrap(),
        Some(quinn::VarInt::from_u32(close_code::ABORTED))
    );
    let elapsed = started.elapsed();
    let limit = server.transport.config().handshake_time_max;
    assert!(
        elapsed >= limit / 2 && elapsed < limit * 3,
        "stopped after {elapsed:?}"
    );
    assert_eq!(server.transport.rejected(RejectReason::StreamTimeout), 1);

    // The same for a request stream; the connection itself stays up.
    let (mut send, mut recv) = rogue.conn.open_bi().await.unwrap();
    send.write_all(&[0, 0]).await.unwrap();
    let reset = tokio::time::timeout(WAIT, recv.read_chunk(16, true))
        .await
        .expect("the server resets a silent request stream");
    assert!(reset.is_err(), "{reset:?}");
    assert_eq!(server.transport.rejected(RejectReason::StreamTimeout), 2);
    assert!(
        rogue.conn.close_reason().is_none(),
        "the connection stays up"
    );
}

#[tokio::test]
async fn a_second_raft_stream_is_a_protocol_violation() {
    let pki = Pki::new("c1");
    let server = Node::start(&pki, "n1", config()).await;
    server.directory.allow("n2");
    let rogue = rogue(&pki.node("n2"), server.addr()).await.unwrap();
    let _raft = rogue.raft_stream("c1", "n2").await;
    let _second = rogue
        .uni(&hello("c1", "n2", StreamKind::Raft { incarnation: 1 }).to_wire())
        .await;
    let (code, reason) = rogue.closed().await;
    assert_eq!(code, u64::from(close_code::PROTOCOL));
    assert!(reason.contains("unexpected raft stream"), "{reason}");
    assert_eq!(server.transport.rejected(RejectReason::Protocol), 1);
}

#[tokio::test]
async fn snapshots_stream_in_chunks_without_delaying_frames() {
    let pki = Pki::new("c1");
    let chunk_max = 64 * 1024;
    let config = TransportConfig {
        snapshot_chunk_bytes_max: chunk_max,
        ..config()
    };
    let mut nodes = start_nodes(&pki, &["n1", "n2"], config).await;
    let mut sender = nodes[0]
        .transport
        .open_snapshot("n2", b"group 7 at index 42".to_vec())
        .await
        .unwrap();
    let too_big = sender.send_chunk(&vec![0u8; chunk_max as usize + 1]).await;
    assert!(
        matches!(too_big, Err(TransportError::TooLarge { .. })),
        "{too_big:?}"
    );

    // Send far more than the flow-control windows hold while the receiver reads nothing: the
    // snapshot stalls, Raft frames still flow.
    let sending = tokio::spawn(async move {
        for i in 0..256u32 {
            let chunk = vec![(i % 251) as u8; chunk_max as usize];
            sender.send_chunk(&chunk).await.unwrap();
        }
        sender.finish().await.unwrap();
    });
    let mut snapshot = tokio::time::timeout(WAIT, nodes[1].inbound.snapshots.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*snapshot.from, "n1");
    assert_eq!(snapshot.meta, b"group 7 at index 42");
    for term in 0..20 {
        let heartbeat = vec![(GroupId(1), Msg::Heartbeat { term, commit: 0 })];
        nodes[0].transport.send("n2", &heartbeat).unwrap();
        assert_eq!(nodes[1].recv(WAIT).await.messages, heartbeat);
    }
    assert!(
        !sending.is_finished(),
        "the snapshot is held back by flow control"
    );

    let mut received = 0usize;
    let mut index = 0u32;
    while let Some(chunk) = snapshot.chunks.next_chunk().await.unwrap() {
        assert!(chunk.len() <= chunk_max as usize);
        assert!(chunk.iter().all(|b| *b == (index % 251) as u8));
        received += chunk.len();
        index += 1;
    }
    assert_eq!(received, 256 * chunk_max as usize);
    tokio::time::timeout(WAIT, sending).await.unwrap().unwrap();
}

#[tokio::test]
async fn nodes_send_requests_and_answers_in_frames() {
    let pki = Pki::new("c1");
    let config = TransportConfig {
        client_request_bytes_max: 32 * 1024,
        frame_bytes_max: 32 * 1024 + RPC_FRAME_OVERHEAD_MAX,
        ..config()
    };
    let mut nodes = start_nodes(&pki, &["n1", "n2"], config).await;
    let mut n2 = nodes.pop().unwrap();
    let n1 = nodes.pop().unwrap();
    let server = tokio::spawn(async move {
        for _ in 0..11 {
            let request = n2.inbound.requests.recv().await.unwrap();
            assert_eq!(request.from.name, "n1");
            let body = request.body.clone();
            request.responder.respond(&body).await.unwrap();
        }
        // An answer beyond client_request_bytes_max is refused, saying so.
        let request = n2.inbound.requests.recv().await.unwrap();
        let too_large = vec![0u8; 32 * 1024 + 1];
        assert!(matches!(
            request.responder.respond(&too_large).await,
            Err(TransportError::TooLarge { .. })
        ));
        // A request dropped without an answer is refused.
        drop(n2.inbound.requests.recv().await.unwrap());
        n2
    });
    let frames = n1.transport.peer_stats("n2").map_or(0, |s| s.frames_sent);
    for i in 0..10u8 {
        let body = vec![i; 64];
        assert_eq!(
            &n1.transport.request("n2", &body).await.unwrap()[..],
            &body[..]
        );
    }
    // The largest request there may be, and its answer, fit frames.
    let largest = vec![7u8; 32 * 1024];
    assert_eq!(
        &n1.transport.request("n2", &largest).await.unwrap()[..],
        &largest[..]
    );
    assert_eq!(
        n1.transport.peer_stats("n2").unwrap().frames_sent,
        frames + 11,
        "every request went in a frame"
    );
    let oversized = n1.transport.request("n2", b"a large answer, please").await;
    assert!(
        matches!(&oversized, Err(TransportError::Refused { reason, .. }) if reason.contains("response of")),
        "{oversized:?}"
    );
    let unanswered = n1.transport.request("n2", b"no answer").await;
    assert!(
        matches!(&unanswered, Err(TransportError::Refused { peer, .. }) if peer == "n2"),
        "{unanswered:?}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn with_frames_too_small_for_every_answer_requests_use_streams_of_their_own() {
    let pki = Pki::new("c1");
    // Frames of 16 KiB cannot carry an answer of client_request_bytes_max (4 MiB).
    let config = TransportConfig {
        frame_bytes_max: 16 * 1024,
        ..config()
    };
    let mut nodes = start_nodes(&pki, &["n1", "n2"], config).await;
    let mut n2 = nodes.pop().unwrap();
    let n1 = nodes.pop().unwrap();
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let request = n2.inbound.requests.recv().await.unwrap();
            let body = request.body.clone();
            request.responder.respond(&body).await.unwrap();
        }
        // A request dropped without an answer resets its stream.
        drop(n2.inbound.requests.recv().await.unwrap());
        n2
    });
    let frames = n1.transport.peer_stats("n2").map_or(0, |s| s.frames_sent);
    for body in [vec![1u8; 64], vec![7u8; 40 * 1024]] {
        assert_eq!(
            &n1.transport.request("n2", &body).await.unwrap()[..],
            &body[..]
        );
    }
    let unanswered = n1.transport.request("n2", b"no answer").await;
    assert!(
        matches!(unanswered, Err(TransportError::Stream(_))),
        "{unanswered:?}"
    );
    assert_eq!(
        n1.transport.peer_stats("n2").map_or(0, |s| s.frames_sent),
        frames,
        "no request went in a frame"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn requests_in_flight_are_bounded_and_fail_when_the_connection_closes() {
    let pki = Pki::new("c1");
    let config = TransportConfig {
        requests_in_flight_per_peer_max: 2,
        ..config()
    };
    let mut nodes = start_nodes(&pki, &["n1", "n2"], config).await;
    let mut n2 = nodes.pop().unwrap();
    let n1 = nodes.pop().unwrap();
    let t1 = n1.transport.clone();
    let t2 = n1.transport.clone();
    let first = tokio::spawn(async move { t1.request("n2", b"one").await });
    let second = tokio::spawn(async move { t2.request("n2", b"two").await });
    // Both reach n2, which holds them unanswered.
    let held = [
        n2.inbound.requests.recv().await.unwrap(),
        n2.inbound.requests.recv().await.unwrap(),
    ];
    let third = n1.transport.request("n2", b"three").await;
    assert!(
        matches!(
            &third,
            Err(TransportError::RequestsInFlight { limit: 2, .. })
        ),
        "{third:?}"
    );
    // n2 goes away without answering: both requests fail instead of waiting forever.
    n2.transport.shutdown().await;
    for waiting in [first, second] {
        let result = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
        assert!(
            matches!(
                &result,
                Err(TransportError::Unreachable { .. } | TransportError::Refused { .. })
            ),
            "{result:?}"
        );
    }
    drop(held);
}

#[tokio::test]
async fn a_peer_cannot_make_a_node_hold_more_requests_than_its_bound() {
    let pki = Pki::new("c1");
    // n1 allows itself many requests in flight; n2 takes at most 2 from any peer at a time.
    let small = TransportConfig {
        requests_in_flight_per_peer_max: 2,
        ..config()
    };
    let mut nodes = vec![
        Node::start(&pki, "n1", config()).await,
        Node::start(&pki, "n2", small).await,
    ];
    introduce(&nodes);
    let mut n2 = nodes.pop().unwrap();
    let n1 = nodes.pop().unwrap();
    let send = |body: &'static [u8]| {
        let t = n1.transport.clone();
        tokio::spawn(async move { t.request("n2", body).await })
    };
    let first = send(b"one");
    let second = send(b"two");
    let held = [
        n2.inbound.requests.recv().await.unwrap(),
        n2.inbound.requests.recv().await.unwrap(),
    ];
    // A third is refused by n2 at once, not held.
    let third = n1.transport.request("n2", b"three").await;
    assert!(
        matches!(&third, Err(TransportError::Refused { reason, .. }) if reason.contains("in flight")),
        "{third:?}"
    );
    assert_eq!(n2.transport.rejected(RejectReason::Busy), 1);
    // Answering one makes room for the next.
    let [a, b] = held;
    let body = a.body.clone();
    a.responder.respond(&body).await.unwrap();
    let fourth = send(b"four");
    let taken = tokio::time::timeout(WAIT, n2.inbound.requests.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&taken.body[..], b"four");
    for r in [b, taken] {
        let body = r.body.clone();
        r.responder.respond(&body).await.unwrap();
    }
    for (task, body) in [(first, "one"), (second, "two"), (fourth, "four")] {
        let answer = tokio::time::timeout(WAIT, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&answer[..], body.as_bytes());
    }
}
