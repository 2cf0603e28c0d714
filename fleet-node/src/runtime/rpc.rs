//! Requests between nodes (one QUIC bidirectional stream each), and the directory the transport
//! asks about peers.

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;
use fleet_core::SessionRef;
use serde::{Deserialize, Serialize};

use super::FleetError;
use crate::catalog::{Catalog, CatalogCommand};
use crate::transport::{PeerAddr, PeerDirectory};

/// The version of the node-to-node request encoding.
pub(crate) const RPC_VERSION: u16 = 2;

/// A request from one node to another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Rpc {
    /// A node asks to join: the receiver registers it in the catalog (through the meta leader).
    Join {
        name: String,
        address: String,
        zone: String,
    },
    /// A catalog change, forwarded to the meta group's leader.
    Catalog { cmd: CatalogCommand },
    /// A client session's registration with a group this node should lead.
    Register { group: String },
    /// A command for a group this node should lead.
    Command {
        group: String,
        data: Bytes,
        session: Option<SessionRef>,
    },
    /// A query for a group this node should lead (or host, for stale reads).
    Query {
        group: String,
        data: Bytes,
        linearizable: bool,
    },
    /// Answers once the group serves on the receiver (it is its desired leader).
    AwaitServing { group: String },
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    version: u16,
    body: T,
}

pub(crate) fn encode<T: Serialize>(body: &T) -> Bytes {
    Bytes::from(
        postcard::to_stdvec(&Envelope {
            version: RPC_VERSION,
            body,
        })
        .expect("requests encode"),
    )
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, FleetError> {
    let env: Envelope<T> = postcard::from_bytes(bytes)
        .map_err(|e| FleetError::Codec(format!("undecodable request: {e}")))?;
    if env.version != RPC_VERSION {
        return Err(FleetError::Codec(format!(
            "request version {} is not {RPC_VERSION}; run the same fleet version on every node",
            env.version
        )));
    }
    Ok(env.body)
}

/// What the transport asks about peers, answered from the catalog.
///
/// Decision: admission is by certificate. Any node holding a certificate of this cluster's CA
/// may connect, so that a new node can ask to join; Raft traffic from a node is only acted on
/// for groups whose configuration holds it, and the catalog is the only way in.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    peers: RwLock<HashMap<String, PeerAddr>>,
}

impl Directory {
    /// Refreshes the addresses from the catalog.
    pub(crate) fn update(&self, catalog: &Catalog, me: &str) {
        let mut peers = self.peers.write().expect("directory lock");
        peers.clear();
        for n in catalog.nodes() {
            if n.name == me {
                continue;
            }
            if let Ok(addr) = n.address.parse::<PeerAddr>() {
                peers.insert(n.name.clone(), addr);
            }
        }
    }

    /// Adds one peer (a join address, before the catalog is known).
    pub(crate) fn insert(&self, name: &str, addr: PeerAddr) {
        self.peers
            .write()
            .expect("directory lock")
            .insert(name.to_string(), addr);
    }

    /// The peers' names.
    pub(crate) fn names(&self) -> Vec<String> {
        self.peers
            .read()
            .expect("directory lock")
            .keys()
            .cloned()
            .collect()
    }
}

impl PeerDirectory for Directory {
    fn is_node(&self, _name: &str) -> bool {
        true
    }

    fn address(&self, name: &str) -> Option<PeerAddr> {
        self.peers
            .read()
            .expect("directory lock")
            .get(name)
            .cloned()
    }
}
