//! Bad input is an `Error` whose message says what happened and what to do.

use placement::{
    ClusterKey, Error, GROUP_SIZE_MAX, GroupId, NODE_NAME_BYTES_MAX, NODES_MAX, Node, NodeState,
    Topology, ZONE_NAME_BYTES_MAX, place,
};

use crate::support::KEY;

fn three() -> Vec<Node> {
    vec![
        Node::active("n1", "a"),
        Node::active("n2", "b"),
        Node::active("n3", "c"),
    ]
}

/// `error` and the advice its message must carry.
fn assert_error(result: Result<Vec<String>, Error>, expected: Error, advice: &str) {
    let error = result.expect_err("bad input accepted");
    assert_eq!(error, expected);
    let message = error.to_string();
    assert!(message.contains(advice), "{message:?} lacks {advice:?}");
}

#[test]
fn size_zero() {
    assert_error(
        place(KEY, GroupId(5), 0, &three()),
        Error::SizeZero { group: GroupId(5) },
        "use 3",
    );
}

#[test]
fn size_too_large() {
    assert_error(
        place(KEY, GroupId(5), GROUP_SIZE_MAX + 1, &three()),
        Error::SizeTooLarge {
            group: GroupId(5),
            size: GROUP_SIZE_MAX + 1,
            max: GROUP_SIZE_MAX,
        },
        "at most 9",
    );
    // The bound itself is accepted (and uses every node of three).
    assert_eq!(
        place(KEY, GroupId(5), GROUP_SIZE_MAX, &three())
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn duplicate_node_names() {
    let mut nodes = three();
    nodes.push(Node::active("n2", "d"));
    assert_error(
        place(KEY, GroupId(1), 3, &nodes),
        Error::DuplicateNode { name: "n2".into() },
        "unique name",
    );
}

#[test]
fn empty_names() {
    let mut nodes = three();
    nodes[1].zone.clear();
    assert_error(
        place(KEY, GroupId(1), 3, &nodes),
        Error::EmptyZoneName { node: "n2".into() },
        "give it its failure domain",
    );
    let mut nodes = three();
    nodes[0].name.clear();
    assert_error(
        place(KEY, GroupId(1), 3, &nodes),
        Error::EmptyNodeName,
        "non-empty name",
    );
}

#[test]
fn names_too_long() {
    let mut nodes = three();
    nodes[0].name = "n".repeat(NODE_NAME_BYTES_MAX + 1);
    let result = place(KEY, GroupId(1), 3, &nodes);
    assert!(
        matches!(result, Err(Error::NodeNameTooLong { bytes, .. }) if bytes == NODE_NAME_BYTES_MAX + 1)
    );
    let mut nodes = three();
    nodes[2].zone = "z".repeat(ZONE_NAME_BYTES_MAX + 1);
    assert_error(
        place(KEY, GroupId(1), 3, &nodes),
        Error::ZoneNameTooLong {
            node: "n3".into(),
            bytes: ZONE_NAME_BYTES_MAX + 1,
            max: ZONE_NAME_BYTES_MAX,
        },
        "shorter zone name",
    );
}

#[test]
fn no_active_node() {
    let mut nodes = three();
    for node in &mut nodes {
        node.state = NodeState::Gone;
    }
    // A topology without active nodes is fine (a new cluster); placing on it is not.
    let topology = Topology::new(KEY, &nodes).unwrap();
    assert_error(
        topology.place(GroupId(3), 3),
        Error::NoActiveNode { group: GroupId(3) },
        "activate",
    );
}

#[test]
fn too_many_nodes() {
    let nodes: Vec<Node> = (0..=NODES_MAX)
        .map(|i| Node::active(format!("n{i}"), "z"))
        .collect();
    let error = Topology::new(ClusterKey::from_bytes([0; 16]), &nodes).unwrap_err();
    assert_eq!(
        error,
        Error::TooManyNodes {
            count: NODES_MAX + 1,
            max: NODES_MAX
        }
    );
}
