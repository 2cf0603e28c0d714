//! Minimal movement: a node that comes or goes moves only the members it gains or loses.

use std::collections::BTreeSet;

use placement::{ClusterKey, GROUP_SIZE_MAX, GroupId, Moves, Node, NodeState, Placements};
use proptest::prelude::*;

use crate::support::{
    KEY, arb_key, arb_layout, equal_layout, equal_layouts, place_groups, place_ids,
};

const GROUPS: u64 = 10_000;
const SIZE: usize = 3;

/// Checks that going from `before` to `after` only moved members onto `added`: a group that did not
/// gain `added` is exactly as it was (desired leader included); a group that gained it lost at
/// most one other member, and none if it had fewer than `size` members before.
fn assert_only_onto(before: &Placements, after: &Placements, added: &str, size: usize) {
    assert_eq!(before.groups.len(), after.groups.len());
    for (group, old) in &before.groups {
        let new = &after.groups[group];
        if !new.iter().any(|member| member == added) {
            assert_eq!(new, old, "group {group} changed without gaining {added}");
            continue;
        }
        let old_set: BTreeSet<&String> = old.iter().collect();
        let new_set: BTreeSet<&String> = new.iter().collect();
        let gained: Vec<_> = new_set.difference(&old_set).collect();
        let lost: Vec<_> = old_set.difference(&new_set).collect();
        assert_eq!(gained.len(), 1, "group {group} gained {gained:?}");
        let lost_expected = usize::from(old.len() == size);
        assert_eq!(lost.len(), lost_expected, "group {group} lost {lost:?}");
    }
}

/// The issue's bound: adding one node to `nodes_before` moves at most 1.1 × size × groups /
/// (nodes_before + 1) members.
fn assert_moves_within_bound(moves: Moves, nodes_before: usize, what: &str) {
    let ideal = SIZE as f64 * GROUPS as f64 / (nodes_before + 1) as f64;
    assert!(
        moves.members_added as f64 <= 1.1 * ideal,
        "{what}: {} members moved, ideal {ideal:.0}",
        moves.members_added
    );
}

/// The issue's requirement, for every equal layout of 3 to 30 nodes in 1 to 5 zones, 10,000
/// groups of size 3, with the fixed test key (see `balance` for why the bound is checked for a
/// fixed key): adding a node to a zone (so the zones are equal before it comes), and adding a
/// node to a zone that is one node short (equal after it comes), each move at most 1.1 × the
/// ideal, all onto the new node; and removing a node moves only its members.
#[test]
fn every_equal_layout_moves_within_the_issue_bound() {
    let mut worst: f64 = 0.0;
    for (zones, per_zone) in equal_layouts() {
        let equal = equal_layout(zones, per_zone);
        let placed_equal = place_groups(KEY, &equal, GROUPS, SIZE);
        let what = format!("{zones} zones of {per_zone}");

        // Equal before: one more node in z0.
        let mut grown = equal.clone();
        grown.push(Node::active("new", "z0"));
        let placed_grown = place_groups(KEY, &grown, GROUPS, SIZE);
        assert_only_onto(&placed_equal, &placed_grown, "new", SIZE);
        let moves = placed_equal.moves_to(&placed_grown);
        assert_moves_within_bound(moves, equal.len(), &format!("{what}, plus one"));
        worst = worst.max(ratio(moves, equal.len()));

        // Equal after: n0 (in z0) was missing and comes back. Read backwards, this is also the
        // removal of n0, which must move only n0's members.
        let mut shrunk = equal.clone();
        shrunk[0].state = NodeState::Gone;
        let placed_shrunk = place_groups(KEY, &shrunk, GROUPS, SIZE);
        assert_only_onto(&placed_shrunk, &placed_equal, "n0", SIZE);
        let moves = placed_shrunk.moves_to(&placed_equal);
        assert_moves_within_bound(moves, equal.len() - 1, &format!("{what}, n0 back"));
        worst = worst.max(ratio(moves, equal.len() - 1));
    }
    println!("worst movement when adding a node: {worst:.3} x the ideal");
}

fn ratio(moves: Moves, nodes_before: usize) -> f64 {
    moves.members_added as f64 / (SIZE as f64 * GROUPS as f64 / (nodes_before + 1) as f64)
}

/// Layouts outside the issue's bound (zones of unequal sizes, or a new zone): the issue asks to
/// report the figure, so this prints it (`cargo test -- --nocapture`) and checks only that every
/// move is onto the new node. A node that opens a new zone rightly gains far more than its share:
/// zone spread puts a member on it in every group that has room for another zone.
#[test]
fn unequal_layouts_report_their_movement() {
    let layouts: [(&str, &[usize], &str); 5] = [
        (
            "zones of 1, 2, 5 nodes, node added to the zone of 1",
            &[1, 2, 5],
            "z0",
        ),
        (
            "zones of 1, 2, 5 nodes, node added to the zone of 5",
            &[1, 2, 5],
            "z2",
        ),
        (
            "zones of 4, 8 nodes, node added to the zone of 4",
            &[4, 8],
            "z0",
        ),
        (
            "zones of 3, 3, 10 nodes, node added to a new zone",
            &[3, 3, 10],
            "z-new",
        ),
        (
            "zones of 6, 6 nodes, node added to a new zone",
            &[6, 6],
            "z-new",
        ),
    ];
    for (what, sizes, zone) in layouts {
        let nodes: Vec<Node> = sizes
            .iter()
            .enumerate()
            .flat_map(|(z, &n)| {
                (0..n).map(move |i| Node::active(format!("z{z}-n{i}"), format!("z{z}")))
            })
            .collect();
        let before = place_groups(KEY, &nodes, GROUPS, SIZE);
        let mut grown = nodes.clone();
        grown.push(Node::active("new", zone));
        let after = place_groups(KEY, &grown, GROUPS, SIZE);
        assert_only_onto(&before, &after, "new", SIZE);
        let moves = before.moves_to(&after);
        println!(
            "{what}: {} members moved, {:.2} x size x groups / (N + 1)",
            moves.members_added,
            ratio(moves, nodes.len())
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For any key, layout (unequal zones, nodes in every state), size and groups: a node that
    /// becomes active (in an existing zone or a new one) only gains members, and a node that stops
    /// being active only loses its own.
    #[test]
    fn a_node_change_moves_only_that_nodes_members(
        key in arb_key(),
        nodes in arb_layout(5, 5),
        size in 1..=GROUP_SIZE_MAX,
        first_group in any::<u64>(),
        new_zone in 0..6usize,
        leaving in any::<prop::sample::Index>(),
    ) {
        let groups = || (0..200).map(|i| GroupId(first_group.wrapping_add(i)));
        let before = place_ids(key, &nodes, groups(), size);

        let mut grown = nodes.clone();
        grown.push(Node::active("joining", format!("zone-{new_zone}")));
        let after = place_ids(key, &grown, groups(), size);
        assert_only_onto(&before, &after, "joining", size);

        let active: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].is_active()).collect();
        prop_assume!(active.len() >= 2);
        let mut shrunk = nodes.clone();
        let gone = active[leaving.index(active.len())];
        shrunk[gone].state = NodeState::Draining;
        let after = place_ids(key, &shrunk, groups(), size);
        // Backwards: from `after` to `before`, the only change is the node coming back.
        assert_only_onto(&after, &before, &nodes[gone].name, size);
    }
}

/// The movement check must be able to fail: a different key moves nearly everything.
#[test]
#[should_panic(expected = "changed without gaining")]
fn the_movement_check_sees_unrelated_moves() {
    let nodes = equal_layout(3, 3);
    let before = place_groups(KEY, &nodes, 100, SIZE);
    let mut grown = nodes.clone();
    grown.push(Node::active("new", "z0"));
    let other_key = ClusterKey::from_bytes([9; 16]);
    let after = place_groups(other_key, &grown, 100, SIZE);
    assert_only_onto(&before, &after, "new", SIZE);
}
