//! Happy paths between real transports: batches, three nodes, duplicate connections, restarts,
//! liveness, and dropping instead of queueing without bound.

use std::time::{Duration, Instant};

use fleet_node::transport::{GroupId, TransportConfig, TransportError};

use super::support::{Msg, Node, Pki, config, introduce, start_nodes, wait_until};

const WAIT: Duration = Duration::from_secs(5);

fn batch(from: u64, round: u64, size: u64) -> Vec<(GroupId, Msg)> {
    (0..size)
        .map(|g| {
            let data = vec![(from * 31 + round + g) as u8; 128];
            (GroupId(g), Msg::Append { term: round, data })
        })
        .collect()
}

fn round_of(messages: &[(GroupId, Msg)]) -> u64 {
    match &messages[0].1 {
        Msg::Append { term, .. } | Msg::Heartbeat { term, .. } => *term,
    }
}

#[tokio::test]
async fn two_nodes_exchange_batches() {
    let pki = Pki::new("c1");
    let mut nodes = start_nodes(&pki, &["n1", "n2"], config()).await;
    let rounds = 200;
    for round in 0..rounds {
        nodes[0].transport.send("n2", &batch(1, round, 50)).unwrap();
        nodes[1].transport.send("n1", &batch(2, round, 50)).unwrap();
    }
    // Order holds on one connection; the first frames may also ride a duplicate connection
    // that is being retired, so only exactly-once delivery is checked.
    let mut at_n2 = Vec::new();
    let mut at_n1 = Vec::new();
    for _ in 0..rounds {
        let got = nodes[1].recv(WAIT).await;
        assert_eq!(&*got.from, "n1");
        at_n2.push(got.messages);
        let got = nodes[0].recv(WAIT).await;
        assert_eq!(&*got.from, "n2");
        at_n1.push(got.messages);
    }
    at_n2.sort_by_key(|m| round_of(m));
    at_n1.sort_by_key(|m| round_of(m));
    assert_eq!(
        at_n2,
        (0..rounds).map(|r| batch(1, r, 50)).collect::<Vec<_>>()
    );
    assert_eq!(
        at_n1,
        (0..rounds).map(|r| batch(2, r, 50)).collect::<Vec<_>>()
    );
    let sent = nodes[0].transport.peer_stats("n2").unwrap();
    let received = nodes[1].transport.peer_stats("n1").unwrap();
    assert_eq!(sent.frames_sent, rounds);
    assert_eq!(received.frames_received, rounds);
    assert_eq!(sent.bytes_sent, received.bytes_received);
    assert_eq!(received.messages_received, rounds * 50);
    assert_eq!(sent.messages_dropped, 0);
    assert!(sent.connected && sent.rtt.is_some());
}

#[tokio::test]
async fn three_nodes_exchange_over_one_connection_per_pair() {
    let pki = Pki::new("c1");
    let names = ["n1", "n2", "n3"];
    let mut nodes = start_nodes(&pki, &names, config()).await;
    for round in 0..20u64 {
        for (i, node) in nodes.iter().enumerate() {
            for to in names.iter().filter(|n| **n != node.name) {
                node.transport
                    .send(to, &batch(i as u64, round, 10))
                    .unwrap();
            }
        }
    }
    for node in nodes.iter_mut() {
        let mut per_sender = std::collections::BTreeMap::<String, Vec<_>>::new();
        for _ in 0..40 {
            let got = node.recv(WAIT).await;
            per_sender
                .entry(got.from.to_string())
                .or_default()
                .push(got.messages);
        }
        assert_eq!(per_sender.len(), 2);
        for (from, mut batches) in per_sender {
            let i = names.iter().position(|n| **n == from).unwrap() as u64;
            batches.sort_by_key(|m| round_of(m));
            let expected: Vec<_> = (0..20).map(|r| batch(i, r, 10)).collect();
            assert_eq!(batches, expected, "every batch from {from} exactly once");
        }
    }
    // Each pair agrees on one connection: one side dialed it, the other accepted it.
    for a in &nodes {
        for b in &nodes {
            if a.name < b.name {
                let ab = a.transport.peer_stats(&b.name).unwrap();
                let ba = b.transport.peer_stats(&a.name).unwrap();
                assert!(ab.connected && ba.connected);
                assert_eq!(
                    ab.dialed_by_us.map(|d| !d),
                    ba.dialed_by_us,
                    "{} and {}",
                    a.name,
                    b.name
                );
            }
        }
    }
}

#[tokio::test]
async fn simultaneous_dials_keep_the_connection_dialed_by_the_smaller_name() {
    let pki = Pki::new("c1");
    let mut nodes = start_nodes(&pki, &["n1", "n2"], config()).await;
    let hb = vec![(GroupId(1), Msg::Heartbeat { term: 1, commit: 1 })];
    // Both have something to send and no connection: both dial at once.
    nodes[0].transport.send("n2", &hb).unwrap();
    nodes[1].transport.send("n1", &hb).unwrap();
    nodes[0].recv(WAIT).await;
    nodes[1].recv(WAIT).await;
    let (n1, n2) = (&nodes[0].transport, &nodes[1].transport);
    wait_until("both sides agree on the n1-dialed connection", WAIT, || {
        let a = n1.peer_stats("n2").unwrap();
        let b = n2.peer_stats("n1").unwrap();
        a.dialed_by_us == Some(true) && b.dialed_by_us == Some(false)
    })
    .await;
    let duplicates = n1.peer_stats("n2").unwrap().duplicate_connections
        + n2.peer_stats("n1").unwrap().duplicate_connections;
    assert!(duplicates >= 1, "both dialed, so a duplicate was closed");
    // And the kept connection carries traffic both ways.
    for term in 2..10 {
        let hb = vec![(GroupId(1), Msg::Heartbeat { term, commit: 1 })];
        nodes[0].transport.send("n2", &hb).unwrap();
        nodes[1].transport.send("n1", &hb).unwrap();
        assert_eq!(nodes[1].recv(WAIT).await.messages, hb);
        assert_eq!(nodes[0].recv(WAIT).await.messages, hb);
    }
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected() {
    let pki = Pki::new("c1");
    let mut nodes = start_nodes(&pki, &["n1", "n2"], config()).await;
    let hb = |term| vec![(GroupId(1), Msg::Heartbeat { term, commit: 0 })];
    nodes[0].transport.send("n2", &hb(1)).unwrap();
    nodes[1].recv(WAIT).await;

    // Stop n2 and start it again on the same address (the port is free once shutdown returns;
    // a few retries cover the endpoint's last packets).
    let n2 = nodes.pop().unwrap();
    let addr = n2.addr();
    n2.transport.shutdown().await;
    drop(n2);
    let mut restarted = None;
    for _ in 0..100 {
        match Node::try_start(
            &pki,
            "n2",
            TransportConfig {
                listen: addr,
                ..config()
            },
        )
        .await
        {
            Ok(node) => {
                restarted = Some(node);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    nodes.push(restarted.expect("the port can be bound again"));
    introduce(&nodes);

    // n1 keeps sending once per "tick" until the restarted n2 hears it (frames sent while it
    // was down are dropped: Raft retries).
    let deadline = Instant::now() + WAIT;
    let mut term = 2;
    let got = loop {
        let _ = nodes[0].transport.send("n2", &hb(term));
        if let Ok(Some(frame)) =
            tokio::time::timeout(Duration::from_millis(20), nodes[1].inbound.frames.recv()).await
        {
            break frame;
        }
        assert!(
            Instant::now() < deadline,
            "n1 never reached the restarted n2"
        );
        term += 1;
    };
    assert_eq!(&*got.from, "n1");
    let stats = nodes[0].transport.peer_stats("n2").unwrap();
    assert!(stats.reconnects >= 1, "{stats:?}");
    // And back the other way on the same connection.
    nodes[1].transport.send("n1", &hb(99)).unwrap();
    loop {
        let frame = nodes[0].recv(WAIT).await;
        if frame.messages == hb(99) {
            break;
        }
    }
}

#[tokio::test]
async fn last_heard_tracks_node_level_heartbeats() {
    let pki = Pki::new("c1");
    let nodes = start_nodes(&pki, &["n1", "n2"], config()).await;
    assert_eq!(nodes[1].transport.last_heard("n1"), None);
    let before = Instant::now();
    // An empty batch is a node-level heartbeat: it refreshes liveness and delivers nothing.
    nodes[0].transport.send("n2", &[]).unwrap();
    let n2 = &nodes[1].transport;
    wait_until("n2 heard from n1", WAIT, || {
        n2.last_heard("n1").is_some_and(|t| t >= before)
    })
    .await;
    let first = n2.last_heard("n1").unwrap();
    nodes[0].transport.send("n2", &[]).unwrap();
    wait_until("n2 heard n1 again", WAIT, || {
        n2.last_heard("n1").unwrap() > first
    })
    .await;
    assert_eq!(n2.peer_stats("n1").unwrap().frames_received, 2);
}

#[tokio::test]
async fn a_peer_that_does_not_keep_up_gets_its_messages_dropped_not_queued() {
    let pki = Pki::new("c1");
    let config = TransportConfig {
        frame_bytes_max: 16 * 1024,
        pending_bytes_per_peer_max: 64 * 1024,
        inbound_frames_max: 1,
        ..config()
    };
    let nodes = start_nodes(&pki, &["n1", "n2"], config.clone()).await;
    // n2 never reads its inbound queue: its reader stops, QUIC flow control stops n1's writer,
    // and n1's queue fills up to its limit.
    let big = batch(1, 0, 100); // ~13 KiB, one frame
    let mut dropped = None;
    for _ in 0..10_000 {
        match nodes[0].transport.send("n2", &big) {
            Ok(()) => {}
            Err(e @ TransportError::QueueFull { .. }) => {
                dropped = Some(e);
                break;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert!(nodes[0].transport.pending_bytes("n2") <= config.pending_bytes_per_peer_max);
        tokio::task::yield_now().await;
    }
    let error = dropped.expect("the queue limit is reached");
    assert!(
        error.to_string().contains("pending_bytes_per_peer_max"),
        "{error}"
    );
    let stats = nodes[0].transport.peer_stats("n2").unwrap();
    assert_eq!(stats.messages_dropped, 100);
    assert!(stats.pending_bytes <= config.pending_bytes_per_peer_max);

    // Unknown destinations are refused at once.
    let unknown = nodes[0].transport.send("n9", &big);
    assert!(
        matches!(unknown, Err(TransportError::UnknownPeer { .. })),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn an_unreachable_peer_gets_its_messages_dropped_after_a_failed_dial() {
    let pki = Pki::new("c1");
    let nodes = start_nodes(&pki, &["n1"], config()).await;
    // A port where nothing listens.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    nodes[0]
        .directory
        .insert("n2", dead.local_addr().unwrap().into());
    drop(dead);
    nodes[0].transport.send("n2", &batch(1, 0, 10)).unwrap();
    let n1 = &nodes[0].transport;
    wait_until("the failed dial drops the queued messages", WAIT, || {
        n1.peer_stats("n2")
            .is_some_and(|s| s.messages_dropped == 10 && s.pending_bytes == 0)
    })
    .await;
    assert!(!n1.is_connected("n2"));
}

impl Node {
    async fn try_start(
        pki: &Pki,
        name: &str,
        config: TransportConfig,
    ) -> Result<Node, TransportError> {
        let directory = std::sync::Arc::new(fleet_node::transport::StaticDirectory::new());
        let (transport, inbound) =
            fleet_node::transport::Transport::bind(config, pki.node(name), directory.clone())
                .await?;
        Ok(Node {
            name: name.to_owned(),
            transport,
            inbound,
            directory,
        })
    }
}
