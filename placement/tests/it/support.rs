//! Layouts, strategies and helpers shared by the test modules.

use std::collections::BTreeSet;

use placement::{ClusterKey, GroupId, Node, NodeState, Placements, Topology};
use proptest::prelude::*;

/// The key of the deterministic tests. Any key would do; this one is fixed so that a failure
/// reproduces exactly.
pub const KEY: ClusterKey = ClusterKey::from_bytes(*b"fleet test key!!");

/// `zones` zones named `z0`, `z1`, … with `per_zone` nodes each, named `n0`, `n1`, … round-robin
/// over the zones (so `n0` is in `z0`).
pub fn equal_layout(zones: usize, per_zone: usize) -> Vec<Node> {
    (0..zones * per_zone)
        .map(|i| Node::active(format!("n{i}"), format!("z{}", i % zones)))
        .collect()
}

/// Every equal layout of the balance requirement, as `(zones, nodes per zone)`: 1 to 5
/// zones, 3 to 30 nodes in all.
pub fn equal_layouts() -> impl Iterator<Item = (usize, usize)> {
    (1..=5).flat_map(|zones| {
        (1..=30)
            .filter(move |per_zone| (3..=30).contains(&(zones * per_zone)))
            .map(move |per_zone| (zones, per_zone))
    })
}

/// Groups `0..groups`, all of `size`, placed on `nodes`: group ids are dense, as the meta group
/// assigns them.
pub fn place_groups(key: ClusterKey, nodes: &[Node], groups: u64, size: usize) -> Placements {
    place_ids(key, nodes, (0..groups).map(GroupId), size)
}

/// The given groups, all of `size`, placed on `nodes`.
pub fn place_ids(
    key: ClusterKey,
    nodes: &[Node],
    groups: impl IntoIterator<Item = GroupId>,
    size: usize,
) -> Placements {
    Topology::new(key, nodes)
        .expect("valid layout")
        .place_all(groups.into_iter().map(|group| (group, size)))
        .expect("valid groups")
}

/// Any cluster key.
pub fn arb_key() -> impl Strategy<Value = ClusterKey> {
    any::<[u8; 16]>().prop_map(ClusterKey::from_bytes)
}

/// A node state, mostly active.
pub fn arb_state() -> impl Strategy<Value = NodeState> {
    prop_oneof![
        4 => Just(NodeState::Active),
        1 => Just(NodeState::Draining),
        1 => Just(NodeState::Gone),
    ]
}

/// A layout of 1 to `zones_max` zones of 1 to `per_zone_max` nodes each (zones of unequal sizes),
/// with random names and states, and at least one active node.
pub fn arb_layout(zones_max: usize, per_zone_max: usize) -> impl Strategy<Value = Vec<Node>> {
    let zone_sizes = prop::collection::vec(1..=per_zone_max, 1..=zones_max);
    zone_sizes
        .prop_flat_map(|sizes| {
            let total: usize = sizes.iter().sum();
            let names = prop::collection::vec("[a-z0-9.-]{1,10}", total);
            let states = prop::collection::vec(arb_state(), total);
            (Just(sizes), names, states)
        })
        .prop_map(|(sizes, names, states)| {
            let zones = sizes
                .iter()
                .enumerate()
                .flat_map(|(zone, &n)| vec![zone; n]);
            let mut nodes: Vec<Node> = zones
                .zip(names)
                .zip(states)
                .enumerate()
                .map(|(i, ((zone, name), state))| Node {
                    // The index keeps names unique; the random part varies their hashes.
                    name: format!("{name}-{i}"),
                    zone: format!("zone-{zone}"),
                    state,
                })
                .collect();
            nodes[0].state = NodeState::Active;
            nodes
        })
}

/// The active nodes of `nodes`, by zone.
pub fn active_by_zone(nodes: &[Node]) -> std::collections::BTreeMap<&str, BTreeSet<&str>> {
    let mut zones = std::collections::BTreeMap::<&str, BTreeSet<&str>>::new();
    for node in nodes.iter().filter(|node| node.is_active()) {
        zones.entry(&node.zone).or_default().insert(&node.name);
    }
    zones
}
