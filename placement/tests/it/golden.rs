//! Golden vectors: the placements of `testdata/golden.json` must never change.
//!
//! Nodes of different versions, builds and platforms must agree on every placement, or two nodes
//! would each move the same group toward a different place. So the test regenerates every vector
//! from the inputs below and compares them with the checked-in file. If it fails, the change to
//! the crate changed placements: that is a breaking change of the cluster protocol, to be undone
//! rather than blessed. The file is written only when `PLACEMENT_GOLDEN_REWRITE=1` is set, which
//! is for adding vectors (the old ones must stay identical: review the diff).

use std::path::PathBuf;

use placement::{ClusterKey, GroupId, Node, NodeState, node_hash, place};
use serde::{Deserialize, Serialize};

const REWRITE: &str = "PLACEMENT_GOLDEN_REWRITE";

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Golden {
    about: String,
    hashes: Vec<HashVector>,
    layouts: Vec<Layout>,
    placements: Vec<PlacementVector>,
}

/// `node_hash(key, group, name) == hash`; `key` and `hash` in hexadecimal (the hash as a
/// big-endian u64, as printed by `{:016x}`).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct HashVector {
    key: String,
    group: u64,
    name: String,
    hash: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Layout {
    key: String,
    nodes: Vec<Node>,
}

/// `place(layouts[layout].key, group, size, layouts[layout].nodes) == members`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct PlacementVector {
    layout: usize,
    group: u64,
    size: usize,
    members: Vec<String>,
}

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/golden.json")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn key_from_hex(text: &str) -> ClusterKey {
    assert_eq!(text.len(), 32, "a key is 16 bytes");
    let bytes: [u8; 16] = core::array::from_fn(|i| {
        u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hexadecimal key")
    });
    ClusterKey::from_bytes(bytes)
}

const KEYS: [[u8; 16]; 3] = [[0; 16], *b"fleet golden key", [0xff; 16]];
const GROUPS: [u64; 8] = [0, 1, 2, 3, 7, 1000, 1 << 32, u64::MAX];
const SIZES: [usize; 3] = [1, 3, 5];

fn names_for_hashes() -> Vec<String> {
    vec![
        "n1".into(),
        "node-17.zone-b.example".into(),
        "ünïcødé-ノード".into(),
        "x".repeat(placement::NODE_NAME_BYTES_MAX),
    ]
}

fn nodes(list: &[(&str, &str)]) -> Vec<Node> {
    list.iter()
        .map(|(name, zone)| Node::active(*name, *zone))
        .collect()
}

fn layouts() -> Vec<Layout> {
    let golden = hex(&KEYS[1]);
    let mut with_states = nodes(&[
        ("a1", "a"),
        ("a2", "a"),
        ("a3", "a"),
        ("b1", "b"),
        ("b2", "b"),
        ("b3", "b"),
    ]);
    with_states[1].state = NodeState::Draining;
    with_states[4].state = NodeState::Gone;
    let nine: Vec<Node> = (1..=9)
        .map(|i| Node::active(format!("n{i}"), format!("zone-{}", (i - 1) % 3)))
        .collect();
    let twelve: Vec<Node> = (1..=12)
        .map(|i| {
            Node::active(
                format!("node{i:02}"),
                [
                    "r1", "r1", "r1", "r2", "r2", "r2", "r3", "r3", "r4", "r4", "r5", "r5",
                ][i - 1],
            )
        })
        .collect();
    vec![
        Layout {
            key: golden.clone(),
            nodes: nodes(&[("solo", "a")]),
        },
        Layout {
            key: golden.clone(),
            nodes: nodes(&[("n1", "a"), ("n2", "a"), ("n3", "a")]),
        },
        Layout {
            key: golden.clone(),
            nodes: nodes(&[("n1", "a"), ("n2", "b"), ("n3", "c")]),
        },
        Layout {
            key: golden.clone(),
            nodes: nine,
        },
        Layout {
            key: golden.clone(),
            nodes: nodes(&[
                ("a1", "a"),
                ("a2", "a"),
                ("a3", "a"),
                ("a4", "a"),
                ("a5", "a"),
                ("b1", "b"),
                ("b2", "b"),
                ("c1", "c"),
            ]),
        },
        Layout {
            key: golden,
            nodes: with_states,
        },
        Layout {
            key: hex(&KEYS[0]),
            nodes: twelve,
        },
        Layout {
            key: hex(&KEYS[2]),
            nodes: nodes(&[
                ("東京-1", "アジア"),
                ("東京-2", "アジア"),
                ("zürich-1", "europa"),
                ("zürich-2", "europa"),
                ("são-paulo", "américa"),
            ]),
        },
    ]
}

/// The vectors, computed by the crate as it is now.
fn generate() -> Golden {
    let mut hashes = Vec::new();
    for key in KEYS {
        for group in [0, 1, 42, 1 << 32, u64::MAX] {
            for name in names_for_hashes() {
                let hash = node_hash(ClusterKey::from_bytes(key), GroupId(group), &name);
                hashes.push(HashVector {
                    key: hex(&key),
                    group,
                    name,
                    hash: format!("{hash:016x}"),
                });
            }
        }
    }
    let layouts = layouts();
    let mut placements = Vec::new();
    for (index, layout) in layouts.iter().enumerate() {
        for group in GROUPS {
            for size in SIZES {
                let members = place(
                    key_from_hex(&layout.key),
                    GroupId(group),
                    size,
                    &layout.nodes,
                )
                .expect("valid golden input");
                placements.push(PlacementVector {
                    layout: index,
                    group,
                    size,
                    members,
                });
            }
        }
    }
    Golden {
        about: "Placements that must never change: nodes of every version must agree on them. \
                See placement/tests/it/golden.rs."
            .into(),
        hashes,
        layouts,
        placements,
    }
}

#[test]
fn golden_vectors_never_change() {
    let generated = generate();
    if std::env::var(REWRITE).as_deref() == Ok("1") {
        let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
        std::fs::write(path(), text).unwrap();
        return;
    }
    let text = std::fs::read_to_string(path()).unwrap_or_else(|error| {
        panic!("{}: {error}; create it with {REWRITE}=1", path().display())
    });
    let golden: Golden = serde_json::from_str(&text).expect("golden.json parses");
    // Vector by vector first, for a message that names the one that changed.
    for (expected, actual) in golden.hashes.iter().zip(&generated.hashes) {
        assert_eq!(actual, expected, "node_hash changed");
    }
    for (expected, actual) in golden.placements.iter().zip(&generated.placements) {
        assert_eq!(actual, expected, "placement changed");
    }
    assert_eq!(
        generated, golden,
        "golden.json and the generated vectors differ in length or layout"
    );
}

/// The file's own inputs, read back and placed again: the vectors hold for whatever the file
/// says, not only for the inputs this module generates.
#[test]
fn golden_file_is_self_consistent() {
    let Ok(text) = std::fs::read_to_string(path()) else {
        panic!(
            "{} is missing; create it with {REWRITE}=1",
            path().display()
        );
    };
    let golden: Golden = serde_json::from_str(&text).expect("golden.json parses");
    assert!(
        golden.hashes.len() >= 50 && golden.placements.len() >= 150,
        "vectors went missing"
    );
    for vector in &golden.hashes {
        let hash = node_hash(
            key_from_hex(&vector.key),
            GroupId(vector.group),
            &vector.name,
        );
        assert_eq!(format!("{hash:016x}"), vector.hash, "{vector:?}");
    }
    for vector in &golden.placements {
        let layout = &golden.layouts[vector.layout];
        let members = place(
            key_from_hex(&layout.key),
            GroupId(vector.group),
            vector.size,
            &layout.nodes,
        );
        assert_eq!(members.as_ref(), Ok(&vector.members), "{vector:?}");
    }
}
