//! Summaries and moves over a catalog, and the serde forms that the catalog stores.

use std::collections::BTreeMap;

use placement::{
    Error, GroupId, Load, Membership, Moves, Node, NodeState, Placements, Step, Summary, Topology,
};

use crate::support::{KEY, equal_layout};

fn placements(groups: &[(u64, &[&str])]) -> Placements {
    Placements {
        groups: groups
            .iter()
            .map(|(id, members)| {
                (
                    GroupId(*id),
                    members.iter().map(|m| m.to_string()).collect(),
                )
            })
            .collect(),
    }
}

fn load(members: usize, leaders: usize) -> Load {
    Load { members, leaders }
}

#[test]
fn summary_counts_members_and_leaders_per_node_and_zone() {
    let mut nodes = vec![
        Node::active("a1", "a"),
        Node::active("a2", "a"),
        Node::active("b1", "b"),
        Node::active("idle", "c"),
    ];
    nodes[1].state = NodeState::Draining;
    let placed = placements(&[(1, &["a1", "b1"]), (2, &["b1", "a2", "a1"]), (3, &["a2"])]);
    let summary = Summary::new(&nodes, &placed).unwrap();
    assert_eq!(summary.groups, 3);
    assert_eq!(summary.members, 6);
    let expected_nodes: BTreeMap<String, Load> = [
        ("a1", load(2, 1)),
        ("a2", load(2, 1)),
        ("b1", load(2, 1)),
        ("idle", load(0, 0)),
    ]
    .map(|(name, load)| (name.to_string(), load))
    .into();
    assert_eq!(summary.nodes, expected_nodes);
    let expected_zones: BTreeMap<String, Load> =
        [("a", load(4, 2)), ("b", load(2, 1)), ("c", load(0, 0))]
            .map(|(name, load)| (name.to_string(), load))
            .into();
    assert_eq!(summary.zones, expected_zones);
}

#[test]
fn summary_rejects_what_it_cannot_count() {
    let nodes = [Node::active("a1", "a")];
    assert_eq!(
        Summary::new(&nodes, &placements(&[(1, &["a1", "zz"])])),
        Err(Error::UnknownNode { name: "zz".into() })
    );
    assert_eq!(
        Summary::new(&nodes, &placements(&[(1, &["a1", "a1"])])),
        Err(Error::DuplicateNode { name: "a1".into() })
    );
}

#[test]
fn moves_count_additions_removals_and_leader_changes() {
    let before = placements(&[
        (1, &["a", "b", "c"]),
        (2, &["a", "b", "c"]),
        (3, &["d", "e", "f"]),
        (4, &["a"]),
    ]);
    let after = placements(&[
        (1, &["a", "b", "c"]), // unchanged
        (2, &["b", "a", "c"]), // leader only
        (3, &["d", "e", "x"]), // one member replaced
        (5, &["y", "z"]),      // new group; group 4 is gone
    ]);
    assert_eq!(
        before.moves_to(&after),
        Moves {
            members_added: 3,
            members_removed: 2,
            leaders_changed: 1,
            groups_changed: 3
        }
    );
    assert_eq!(before.moves_to(&before), Moves::default());
    assert_eq!(after.desired_leader(GroupId(2)), Some("b"));
    assert_eq!(after.members(GroupId(4)), None);
}

#[test]
fn place_all_matches_place_and_summarises_to_the_sizes() {
    let nodes = equal_layout(3, 4);
    let topology = Topology::new(KEY, &nodes).unwrap();
    let groups = [
        (GroupId(1), 3),
        (GroupId(2), 5),
        (GroupId(3), 1),
        (GroupId(4), 5),
    ];
    let placed = topology.place_all(groups).unwrap();
    for (group, size) in groups {
        assert_eq!(
            placed.members(group).unwrap(),
            topology.place(group, size).unwrap()
        );
    }
    let summary = Summary::new(&nodes, &placed).unwrap();
    assert_eq!(summary.members, 3 + 5 + 1 + 5);
    assert_eq!(summary.zones.values().map(|l| l.leaders).sum::<usize>(), 4);
}

/// The catalog stores these types (postcard at runtime; JSON here to read the shape): they must
/// round-trip, and their field names are part of the format.
#[test]
fn catalog_types_round_trip_through_serde() {
    let mut node = Node::active("n1", "zone-a");
    node.state = NodeState::Draining;
    let json = serde_json::to_string(&node).unwrap();
    assert_eq!(json, r#"{"name":"n1","zone":"zone-a","state":"draining"}"#);
    assert_eq!(serde_json::from_str::<Node>(&json).unwrap(), node);

    let step = Step::AddLearner { node: "n4".into() };
    let json = serde_json::to_string(&step).unwrap();
    assert_eq!(json, r#"{"step":"add_learner","node":"n4"}"#);
    assert_eq!(serde_json::from_str::<Step>(&json).unwrap(), step);

    let placed = placements(&[(7, &["n1", "n2"])]);
    let json = serde_json::to_string(&placed).unwrap();
    assert_eq!(json, r#"{"groups":{"7":["n1","n2"]}}"#);
    assert_eq!(serde_json::from_str::<Placements>(&json).unwrap(), placed);

    let membership = Membership {
        voters: vec!["a".into()],
        learners: vec!["b".into()],
    };
    let json = serde_json::to_string(&membership).unwrap();
    assert_eq!(
        serde_json::from_str::<Membership>(&json).unwrap(),
        membership
    );

    let key = KEY;
    let json = serde_json::to_string(&key).unwrap();
    assert_eq!(
        serde_json::from_str::<placement::ClusterKey>(&json).unwrap(),
        key
    );
    assert_eq!(serde_json::to_string(&GroupId(9)).unwrap(), "9");
}
