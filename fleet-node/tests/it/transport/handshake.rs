//! Who may connect: each refused peer gets a counter, a log line and a closed connection, and
//! the node goes on serving others.

use std::sync::Arc;
use std::time::Duration;

use fleet_node::transport::wire::StreamKind;
use fleet_node::transport::{
    ALPN, ClientConnection, IdentityKind, RejectReason, StaticDirectory, Transport, TransportError,
    close_code,
};

use super::support::{Msg, Node, Pki, config, hello, rogue, rogue_with, wait_until};

const WAIT: Duration = Duration::from_secs(5);

async fn wait_rejected(node: &Node, reason: RejectReason) {
    wait_until(&format!("{reason} is counted"), WAIT, || {
        node.transport.rejected(reason) >= 1
    })
    .await;
}

#[tokio::test]
async fn a_peer_without_a_client_certificate_is_refused() {
    let pki = Pki::new("c1");
    let server = Node::start(&pki, "n1", config()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca(&pki)).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let client_config = quinn::ClientConfig::new(Arc::new(crypto));

    // The client may see its handshake complete before the server checks it; either way the
    // connection ends, refused by the server.
    if let Ok(rogue) = rogue_with(client_config, server.addr()).await {
        rogue.closed().await;
    }
    wait_rejected(&server, RejectReason::NoClientCert).await;
    assert_eq!(
        server.transport.peers().len(),
        0,
        "no peer state was created"
    );
}

fn server_ca(pki: &Pki) -> rustls::pki_types::CertificateDer<'static> {
    pki.node("any").ca_certificate().clone()
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    // A foreign CA of another name is an unknown issuer; one of the same name (so the same
    // issuer name) fails the signature check. Both are counted as unknown_ca.
    for (i, foreign_cluster) in ["c9", "c1"].into_iter().enumerate() {
        let pki = Pki::new("c1");
        let foreign = Pki::new(foreign_cluster);
        let server = Node::start(&pki, "n1", config()).await;
        server.directory.allow("n2");
        let forged = foreign
            .ca
            .issue(IdentityKind::Node, "n2", &["127.0.0.1".into()], days(1))
            .unwrap();
        // Trusts the real CA (so this side completes), presents the foreign certificate.
        let tls = fleet_node::transport::Tls::from_pem(
            pki.ca.certificate_pem(),
            &forged.cert_pem,
            &forged.key_pem,
        )
        .unwrap();
        if let Ok(rogue) = rogue(&tls, server.addr()).await {
            rogue.closed().await;
        }
        wait_rejected(&server, RejectReason::UnknownCa).await;
        assert_eq!(server.transport.peers().len(), 0, "case {i}");
    }
}

fn days(n: u32) -> fleet_node::transport::certs::Validity {
    fleet_node::transport::certs::Validity::days_from_now(n)
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let pki = Pki::new("c1");
    let server = Node::start(&pki, "n1", config()).await;
    server.directory.allow("n2");
    if let Ok(rogue) = rogue(&pki.expired_node("n2"), server.addr()).await {
        rogue.closed().await;
    }
    wait_rejected(&server, RejectReason::CertExpired).await;
    assert_eq!(server.transport.peers().len(), 0);
}

#[tokio::test]
async fn a_client_certificate_cannot_act_as_a_node() {
    let pki = Pki::new("c1");
    let server = Node::start(&pki, "n1", config()).await;
    server.directory.allow("n2");

    // A client connects (allowed) and opens a Raft stream claiming to be node n2.
    let rogue = rogue(&pki.client("n2"), server.addr()).await.unwrap();
    let _raft = rogue.raft_stream("c1", "n2").await;
    let (code, reason) = rogue.closed().await;
    assert_eq!(code, u64::from(close_code::REFUSED));
    assert!(reason.contains("only open request streams"), "{reason}");
    wait_rejected(&server, RejectReason::ClientAsNode).await;
    assert_eq!(
        server.transport.peers().len(),
        0,
        "no node state for a client"
    );

    // A transport cannot even start with a client certificate.
    let bound =
        Transport::<Msg>::bind(config(), pki.client("c9"), Arc::new(StaticDirectory::new())).await;
    let error = bound.expect_err("a client certificate cannot run a node");
    assert!(matches!(error, TransportError::Identity { .. }), "{error}");
}

#[tokio::test]
async fn a_client_may_send_requests() {
    let pki = Pki::new("c1");
    let mut server = Node::start(&pki, "n1", config()).await;
    let client = ClientConnection::connect(&pki.client("cli"), &server.addr().into(), &config())
        .await
        .unwrap();
    assert_eq!(client.server().name, "n1");
    let answer = tokio::spawn(async move {
        let request = server.inbound.requests.recv().await.unwrap();
        assert_eq!(request.from.kind, IdentityKind::Client);
        assert_eq!(request.from.name, "cli");
        let mut reply = b"re: ".to_vec();
        reply.extend_from_slice(&request.body);
        request.responder.respond(&reply).await.unwrap();
        server
    });
    let response = client.request(b"hello").await.unwrap();
    assert_eq!(&response[..], b"re: hello");
    let server = answer.await.unwrap();

    // A request beyond client_request_bytes_max is refused before it is sent.
    let limit = server.transport.config().client_request_bytes_max as usize;
    let error = client.request(&vec![0u8; limit + 1]).await.unwrap_err();
    assert!(matches!(error, TransportError::TooLarge { .. }), "{error}");
    client.close().await;
}

#[tokio::test]
async fn a_node_missing_from_the_catalog_is_refused() {
    let pki = Pki::new("c1");
    let server = Node::start(&pki, "n1", config()).await;
    let rogue = rogue(&pki.node("n9"), server.addr()).await.unwrap();
    let (code, reason) = rogue.closed().await;
    assert_eq!(code, u64::from(close_code::REFUSED));
    assert!(reason.contains("not in this cluster's catalog"), "{reason}");
    wait_rejected(&server, RejectReason::UnknownNode).await;
    assert_eq!(server.transport.peers().len(), 0);
}

#[tokio::test]
async fn a_hello_naming_another_cluster_or_sender_is_refused() {
    let pki = Pki::new("c1");
    let server = Node::start(&pki, "n1", config()).await;
    server.directory.allow("n2");

    let rogue1 = rogue(&pki.node("n2"), server.addr()).await.unwrap();
    let _raft = rogue1.raft_stream("c2", "n2").await;
    let (code, reason) = rogue1.closed().await;
    assert_eq!(code, u64::from(close_code::REFUSED));
    assert!(reason.contains("cluster"), "{reason}");
    wait_rejected(&server, RejectReason::WrongCluster).await;

    let rogue2 = rogue(&pki.node("n2"), server.addr()).await.unwrap();
    let _raft = rogue2
        .uni(&hello("c1", "n3", StreamKind::Raft { incarnation: 1 }).to_wire())
        .await;
    let (code, reason) = rogue2.closed().await;
    assert_eq!(code, u64::from(close_code::PROTOCOL));
    assert!(reason.contains("claims sender \"n3\""), "{reason}");
    wait_rejected(&server, RejectReason::SenderMismatch).await;
}

#[tokio::test]
async fn connections_beyond_the_per_address_limit_are_refused() {
    let pki = Pki::new("c1");
    let server = Node::start(
        &pki,
        "n1",
        fleet_node::transport::TransportConfig {
            connections_per_address_max: 2,
            ..config()
        },
    )
    .await;
    let tls = pki.client("cli");
    let mut kept = Vec::new();
    for _ in 0..2 {
        kept.push(rogue(&tls, server.addr()).await.unwrap());
    }
    let third = rogue(&tls, server.addr()).await;
    assert!(
        third.is_err(),
        "the third connection from 127.0.0.1 is refused"
    );
    wait_rejected(&server, RejectReason::TooManyConnections).await;

    // Closing one frees its slot.
    kept.pop().unwrap().conn.close(0u32.into(), b"bye");
    let mut connected = false;
    for _ in 0..100 {
        if rogue(&tls, server.addr()).await.is_ok() {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(connected, "a new connection is accepted once one closed");
}
