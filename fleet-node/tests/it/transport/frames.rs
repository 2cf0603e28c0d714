//! Bad frames from an authenticated node: each is refused with a counter and a closed
//! connection, read no further than its length prefix allows, and leaves the node serving
//! others.

use std::collections::HashSet;
use std::time::Duration;

use fleet_node::transport::wire::{Frame, PROTOCOL_VERSION};
use fleet_node::transport::{GroupId, RejectReason, TransportConfig, close_code};

use super::support::{Msg, Node, Pki, config, rogue, start_nodes, wait_until};

const WAIT: Duration = Duration::from_secs(5);

fn frame(version: u32, cluster: &str, sender: &str, count: u64) -> Frame<Msg> {
    Frame {
        version,
        cluster_id: cluster.to_owned(),
        sender: sender.to_owned(),
        messages: (0..count)
            .map(|g| (GroupId(g), Msg::Heartbeat { term: 3, commit: g }))
            .collect(),
        rpcs: Vec::new(),
    }
}

/// Starts node n1 (with `config`), connects as node n2, sends a valid Raft hello and then
/// `bytes`; returns n1 and how it closed the connection.
async fn send_raw(config: TransportConfig, bytes: &[u8], finish: bool) -> (Node, u64, String) {
    let pki = Pki::new("c1");
    let server = Node::start(&pki, "n1", config).await;
    server.directory.allow("n2");
    let rogue = rogue(&pki.node("n2"), server.addr()).await.unwrap();
    let mut raft = rogue.raft_stream("c1", "n2").await;
    raft.write_all(bytes).await.unwrap();
    if finish {
        raft.finish().unwrap();
    }
    let (code, reason) = rogue.closed().await;
    (server, code, reason)
}

async fn assert_refused(
    config: TransportConfig,
    bytes: &[u8],
    finish: bool,
    reason: RejectReason,
    text: &str,
) {
    let (server, code, close_reason) = send_raw(config, bytes, finish).await;
    let expected_code = match reason {
        RejectReason::WrongCluster => close_code::REFUSED,
        _ => close_code::PROTOCOL,
    };
    assert_eq!(code, u64::from(expected_code), "{close_reason}");
    assert!(
        close_reason.contains(text),
        "{close_reason:?} should mention {text:?}"
    );
    wait_until(&format!("{reason} is counted"), WAIT, || {
        server.transport.rejected(reason) == 1
    })
    .await;
    let stats = server.transport.peer_stats("n2").unwrap();
    assert_eq!(stats.frames_rejected, 1);
    assert_eq!(stats.frames_received, 0, "nothing was delivered");
}

#[tokio::test]
async fn a_frame_whose_sender_is_not_the_tls_identity_is_refused() {
    let bytes = frame(PROTOCOL_VERSION, "c1", "n3", 1).to_wire();
    assert_refused(
        config(),
        &bytes,
        false,
        RejectReason::SenderMismatch,
        "claims sender \"n3\"",
    )
    .await;
}

#[tokio::test]
async fn a_frame_with_a_wrong_cluster_id_is_refused() {
    let bytes = frame(PROTOCOL_VERSION, "c2", "n2", 1).to_wire();
    assert_refused(
        config(),
        &bytes,
        false,
        RejectReason::WrongCluster,
        "cluster \"c2\"",
    )
    .await;
}

#[tokio::test]
async fn a_frame_of_an_unknown_protocol_version_is_refused() {
    let bytes = frame(PROTOCOL_VERSION + 1, "c1", "n2", 1).to_wire();
    assert_refused(
        config(),
        &bytes,
        false,
        RejectReason::UnknownVersion,
        &format!("unknown protocol version {}", PROTOCOL_VERSION + 1),
    )
    .await;
}

#[tokio::test]
async fn a_truncated_frame_is_refused() {
    let mut bytes = frame(PROTOCOL_VERSION, "c1", "n2", 3).to_wire();
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap());
    bytes[..4].copy_from_slice(&(len + 10).to_be_bytes());
    assert_refused(
        config(),
        &bytes,
        true,
        RejectReason::Truncated,
        "truncated frame",
    )
    .await;
}

#[tokio::test]
async fn a_frame_with_a_bad_tag_is_refused() {
    // A valid header and count, then group 1 with enum variant 9 of `Msg` (which has two).
    let mut body = postcard::to_stdvec(&(PROTOCOL_VERSION, "c1", "n2", 1u64, 1u64)).unwrap();
    body.extend_from_slice(&[9, 0, 0]);
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    assert_refused(
        config(),
        &bytes,
        false,
        RejectReason::Malformed,
        "malformed frame",
    )
    .await;
}

#[tokio::test]
async fn a_length_prefix_beyond_the_limit_is_refused_before_allocating() {
    // Only the 4-byte prefix is sent: the node must refuse without waiting for (or reserving)
    // the 4 GiB it announces.
    assert_refused(
        config(),
        &[0xFF; 4],
        false,
        RejectReason::TooLarge,
        "frame of 4294967295 bytes exceeds the limit",
    )
    .await;
}

#[tokio::test]
async fn trailing_bytes_after_a_frame_are_refused() {
    let mut bytes = frame(PROTOCOL_VERSION, "c1", "n2", 2).to_wire();
    bytes.push(0);
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap());
    bytes[..4].copy_from_slice(&(len + 1).to_be_bytes());
    assert_refused(
        config(),
        &bytes,
        false,
        RejectReason::TrailingBytes,
        "1 trailing bytes",
    )
    .await;
}

#[tokio::test]
async fn a_frame_with_too_many_messages_is_refused() {
    let config = TransportConfig {
        frame_messages_max: 4,
        ..config()
    };
    let bytes = frame(PROTOCOL_VERSION, "c1", "n2", 5).to_wire();
    assert_refused(
        config,
        &bytes,
        false,
        RejectReason::TooManyMessages,
        "frame_messages_max = 4",
    )
    .await;
}

#[tokio::test]
async fn a_refused_peer_does_not_disturb_the_others() {
    let pki = Pki::new("c1");
    let mut nodes = start_nodes(&pki, &["n1", "n3"], config()).await;
    nodes[0].directory.allow("n2");
    let rogue = rogue(&pki.node("n2"), nodes[0].addr()).await.unwrap();
    let mut raft = rogue.raft_stream("c1", "n2").await;
    raft.write_all(&[0xFF; 4]).await.unwrap();
    rogue.closed().await;

    let heartbeat = vec![(GroupId(5), Msg::Heartbeat { term: 1, commit: 1 })];
    nodes[1].transport.send("n1", &heartbeat).unwrap();
    let got = nodes[0].recv(WAIT).await;
    assert_eq!(&*got.from, "n3");
    assert_eq!(got.messages, heartbeat);
}

#[tokio::test]
async fn messages_for_groups_not_hosted_here_are_dropped_without_state() {
    let pki = Pki::new("c1");
    let mut nodes = start_nodes(&pki, &["n1", "n2"], config()).await;
    nodes[1]
        .directory
        .set_hosted_groups(Some(HashSet::from([GroupId(1)])));
    let hb = |g| (GroupId(g), Msg::Heartbeat { term: 1, commit: g });

    nodes[0].transport.send("n2", &[hb(2), hb(3)]).unwrap(); // nothing hosted: nothing delivered
    nodes[0]
        .transport
        .send("n2", &[hb(1), hb(2), hb(3)])
        .unwrap();
    let got = nodes[1].recv(WAIT).await;
    assert_eq!(
        got.messages,
        vec![hb(1)],
        "only the hosted group is delivered"
    );
    let stats = nodes[1].transport.peer_stats("n1").unwrap();
    assert_eq!(stats.messages_received, 5);
    assert_eq!(stats.messages_unhosted, 4);
    assert_eq!(
        stats.frames_rejected, 0,
        "a frame for another group is not an error"
    );
    assert!(
        nodes[1].inbound.frames.try_recv().is_err(),
        "no other delivery"
    );
}
