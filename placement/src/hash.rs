//! The rendezvous score of a node for a group: keyed SipHash-1-3 over a fixed byte encoding.
//!
//! Every node of the cluster, whatever its version, platform or build, must compute the same score,
//! so the encoding is written out by hand here (never `Hash` derives or `DefaultHasher`, whose output
//! may change between Rust releases) and pinned by `testdata/golden.json`.

use core::fmt;
use core::hash::Hasher as _;

use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher13;

use crate::{GroupId, NODE_NAME_BYTES_MAX};

// The length prefix of a node name is a u32: every valid name must fit.
const _: () = assert!(NODE_NAME_BYTES_MAX <= u32::MAX as usize);

/// The 128-bit SipHash key shared by the whole cluster.
///
/// It is chosen once, when the cluster is created (at random, so that two clusters do not put their
/// hot spots on the same node names), and kept in the catalog of the meta group forever: changing it
/// moves almost every member of every group.
///
/// The key is not a secret: it only spreads members, it authenticates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterKey([u8; 16]);

impl ClusterKey {
    /// A key from its 16 bytes. SipHash reads them as two little-endian `u64`s, `k0 = bytes[0..8]`
    /// and `k1 = bytes[8..16]`.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        ClusterKey(bytes)
    }

    /// The key's 16 bytes, as given to [`ClusterKey::from_bytes`].
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// A hasher keyed with this key, with nothing written yet.
    fn hasher(self) -> SipHasher13 {
        SipHasher13::new_with_key(&self.0)
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

/// The rendezvous score of node `name` for `group`: lower is better.
///
/// It is `SipHash-1-3(key, message)` (the `siphasher` crate, 64-bit output) where `message` is,
/// byte for byte:
///
/// | bytes | what |
/// |---|---|
/// | 8 | the group id, `u64` little-endian |
/// | 4 | the length of the node name in bytes, `u32` little-endian |
/// | length | the node name, UTF-8 |
///
/// This encoding is part of the cluster's protocol: nodes of different versions must agree on it,
/// so it never changes (`testdata/golden.json` holds vectors that prove it).
///
/// # Panics
///
/// If `name` is longer than [`NODE_NAME_BYTES_MAX`](crate::NODE_NAME_BYTES_MAX) bytes; callers
/// validate names first ([`Topology::new`](crate::Topology::new) does).
///
/// ```
/// use placement::{node_hash, ClusterKey, GroupId};
/// let key = ClusterKey::from_bytes([7; 16]);
/// // Deterministic: the same inputs always give the same score.
/// assert_eq!(node_hash(key, GroupId(1), "n1"), node_hash(key, GroupId(1), "n1"));
/// assert_ne!(node_hash(key, GroupId(1), "n1"), node_hash(key, GroupId(2), "n1"));
/// ```
pub fn node_hash(key: ClusterKey, group: GroupId, name: &str) -> u64 {
    GroupHasher::new(key, group).score(name)
}

/// The hasher state after the group id, reused for every node of one group: the group id is the
/// first 8 bytes of every message, so it is absorbed once per group, not once per node.
#[derive(Clone, Copy)]
pub(crate) struct GroupHasher {
    after_group: SipHasher13,
}

impl GroupHasher {
    pub(crate) fn new(key: ClusterKey, group: GroupId) -> Self {
        let mut after_group = key.hasher();
        after_group.write(&group.0.to_le_bytes());
        GroupHasher { after_group }
    }

    /// The score of one node: see [`node_hash`] for the encoding.
    pub(crate) fn score(&self, name: &str) -> u64 {
        self.score_encoded(&encode_name(name))
    }

    /// The score of one node whose name was encoded once by [`encode_name`]: one write per node
    /// instead of two, which matters when every group hashes every node.
    pub(crate) fn score_encoded(&self, encoded_name: &[u8]) -> u64 {
        let mut hasher = self.after_group;
        hasher.write(encoded_name);
        hasher.finish()
    }
}

/// The part of the hashed message that follows the group id: the name's length as a `u32`
/// little-endian, then the name.
///
/// # Panics
///
/// If `name` is longer than [`NODE_NAME_BYTES_MAX`](crate::NODE_NAME_BYTES_MAX) bytes.
pub(crate) fn encode_name(name: &str) -> Vec<u8> {
    assert!(
        name.len() <= NODE_NAME_BYTES_MAX,
        "node name of {} bytes reached the hash unvalidated",
        name.len()
    );
    let length = u32::try_from(name.len()).expect("bounded by NODE_NAME_BYTES_MAX");
    let mut encoded = Vec::with_capacity(4 + name.len());
    encoded.extend_from_slice(&length.to_le_bytes());
    encoded.extend_from_slice(name.as_bytes());
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding in the doc of `node_hash`, spelled out as one buffer and hashed in one call:
    /// the streamed writes of `GroupHasher` must give exactly the same bytes to SipHash.
    fn reference(key: ClusterKey, group: u64, name: &str) -> u64 {
        let mut message = Vec::new();
        message.extend_from_slice(&group.to_le_bytes());
        message.extend_from_slice(&(name.len() as u32).to_le_bytes());
        message.extend_from_slice(name.as_bytes());
        SipHasher13::new_with_key(&key.to_bytes()).hash(&message)
    }

    #[test]
    fn streamed_hash_matches_documented_encoding() {
        let key = ClusterKey::from_bytes(*b"0123456789abcdef");
        let long_name = "x".repeat(NODE_NAME_BYTES_MAX);
        for group in [0, 1, 255, 256, 1 << 32, u64::MAX] {
            for name in [
                "a",
                "n1",
                "node-with-a-longer-name",
                "zoné",
                long_name.as_str(),
            ] {
                assert_eq!(
                    node_hash(key, GroupId(group), name),
                    reference(key, group, name),
                    "group {group} name {name:?}"
                );
            }
        }
    }

    /// The doc of `ClusterKey::from_bytes` promises that the 16 bytes are read as two little-endian
    /// words; the runtime relies on that when it stores the key.
    #[test]
    fn key_bytes_are_read_little_endian() {
        let bytes: [u8; 16] = core::array::from_fn(|i| i as u8);
        let key = ClusterKey::from_bytes(bytes);
        let by_bytes = SipHasher13::new_with_key(&bytes).hash(b"");
        let by_words = SipHasher13::new_with_keys(
            u64::from_le_bytes(bytes[0..8].try_into().unwrap()),
            u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
        )
        .hash(b"");
        assert_eq!(by_bytes, by_words);
        assert_eq!(key.hasher().finish(), by_bytes);
    }

    #[test]
    fn key_debug_is_hex() {
        let key = ClusterKey::from_bytes([0xab; 16]);
        assert_eq!(
            format!("{key:?}"),
            format!("ClusterKey({})", "ab".repeat(16))
        );
    }
}
