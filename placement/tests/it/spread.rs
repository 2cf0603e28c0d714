//! Zone spread and the basic contract of `place`, for any layout (zones of unequal sizes, nodes in
//! every state) and any key.

use std::collections::{BTreeMap, BTreeSet};

use placement::{ClusterKey, GROUP_SIZE_MAX, GroupId, Node, node_hash, place};
use proptest::prelude::*;

use crate::support::{active_by_zone, arb_key, arb_layout};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// No two members share a zone while there are at least `size` zones; otherwise zones are used
    /// as evenly as their nodes allow.
    #[test]
    fn members_spread_over_zones(
        key in arb_key(),
        nodes in arb_layout(6, 6),
        group in any::<u64>(),
        size in 1..=GROUP_SIZE_MAX,
    ) {
        let members = place(key, GroupId(group), size, &nodes).unwrap();
        let zones = active_by_zone(&nodes);
        let zone_of: BTreeMap<&str, &str> =
            nodes.iter().map(|node| (node.name.as_str(), node.zone.as_str())).collect();
        let mut used: BTreeMap<&str, usize> = zones.keys().map(|zone| (*zone, 0)).collect();
        for member in &members {
            *used.get_mut(zone_of[member.as_str()]).unwrap() += 1;
        }
        if zones.len() >= size {
            prop_assert!(used.values().all(|&count| count <= 1), "zones used {used:?}");
        }
        // Evenly: a zone may hold two more members than another only if that other zone has no
        // active node left.
        for (zone, &count) in &used {
            for (other, &other_count) in &used {
                if count >= other_count + 2 {
                    prop_assert_eq!(
                        other_count, zones[other].len(),
                        "zone {} holds {} members while {} holds {} and has nodes left",
                        zone, count, other, other_count
                    );
                }
            }
        }
    }

    /// `min(size, active)` distinct active members; the desired leader is the active node of
    /// lowest score, whatever its zone, which is what spreads leadership evenly.
    #[test]
    fn members_are_distinct_active_nodes_led_by_the_best_score(
        key in arb_key(),
        nodes in arb_layout(4, 5),
        group in any::<u64>(),
        size in 1..=GROUP_SIZE_MAX,
    ) {
        let members = place(key, GroupId(group), size, &nodes).unwrap();
        let active: BTreeSet<&str> =
            nodes.iter().filter(|node| node.is_active()).map(|node| node.name.as_str()).collect();
        prop_assert_eq!(members.len(), size.min(active.len()));
        let distinct: BTreeSet<&str> = members.iter().map(String::as_str).collect();
        prop_assert_eq!(distinct.len(), members.len());
        prop_assert!(distinct.is_subset(&active));
        let best = active.iter().min_by_key(|name| (node_hash(key, GroupId(group), name), **name));
        prop_assert_eq!(Some(&members[0].as_str()), best);
    }

    /// The order in which the catalog lists its nodes does not matter: every node computes the
    /// same placement whatever order it stored them in.
    #[test]
    fn placement_ignores_node_order(
        key in arb_key(),
        nodes in arb_layout(5, 5),
        group in any::<u64>(),
        size in 1..=GROUP_SIZE_MAX,
        rotation in any::<prop::sample::Index>(),
    ) {
        let expected = place(key, GroupId(group), size, &nodes).unwrap();
        let mut reordered = nodes.clone();
        reordered.reverse();
        prop_assert_eq!(&place(key, GroupId(group), size, &reordered).unwrap(), &expected);
        reordered.rotate_left(rotation.index(nodes.len()));
        prop_assert_eq!(&place(key, GroupId(group), size, &reordered).unwrap(), &expected);
    }
}

/// Different keys give different placements: the key is really used (two clusters with the same
/// node names do not put their hot spots on the same names).
#[test]
fn the_key_changes_placements() {
    let nodes: Vec<Node> = (0..20)
        .map(|i| Node::active(format!("n{i}"), "z"))
        .collect();
    let key_a = ClusterKey::from_bytes([1; 16]);
    let key_b = ClusterKey::from_bytes([2; 16]);
    let differing = (0..100)
        .filter(|&group| {
            place(key_a, GroupId(group), 3, &nodes).unwrap()
                != place(key_b, GroupId(group), 3, &nodes).unwrap()
        })
        .count();
    assert!(
        differing > 80,
        "only {differing} of 100 groups differ between keys"
    );
}
