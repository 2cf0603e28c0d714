//! Nodes as placement sees them: a name, a zone and a state.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{Error, NODE_NAME_BYTES_MAX, NODES_MAX, ZONE_NAME_BYTES_MAX};

/// Whether a node takes part in placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// The node hosts members: placement counts it.
    Active,
    /// The node is leaving: placement no longer counts it, so its members move elsewhere.
    Draining,
    /// The node has left (or was unreachable for longer than the dead node timeout): placement no
    /// longer counts it.
    Gone,
}

/// A node of the cluster, as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    /// The node's stable, unique name (the one in its certificate). Non-empty, at most
    /// [`NODE_NAME_BYTES_MAX`](crate::NODE_NAME_BYTES_MAX) bytes.
    pub name: String,
    /// The node's failure domain (rack, availability zone). Placement puts the members of a group
    /// in different zones whenever there are enough zones. Non-empty, at most
    /// [`ZONE_NAME_BYTES_MAX`](crate::ZONE_NAME_BYTES_MAX) bytes.
    pub zone: String,
    /// Whether placement counts the node.
    pub state: NodeState,
}

impl Node {
    /// An active node.
    pub fn active(name: impl Into<String>, zone: impl Into<String>) -> Self {
        Node {
            name: name.into(),
            zone: zone.into(),
            state: NodeState::Active,
        }
    }

    /// Whether placement counts this node.
    pub fn is_active(&self) -> bool {
        self.state == NodeState::Active
    }
}

/// Checks a whole list of nodes, whatever their states: a name must be unique among all of them,
/// since a draining or gone node still hosts (or hosted) members under its name.
pub(crate) fn validate_nodes(nodes: &[Node]) -> Result<(), Error> {
    if nodes.len() > NODES_MAX {
        return Err(Error::TooManyNodes {
            count: nodes.len(),
            max: NODES_MAX,
        });
    }
    let mut names = HashSet::with_capacity(nodes.len());
    for node in nodes {
        validate_name(&node.name)?;
        validate_zone(node)?;
        if !names.insert(node.name.as_str()) {
            return Err(Error::DuplicateNode {
                name: node.name.clone(),
            });
        }
    }
    Ok(())
}

/// Checks one node name (also used for the members given to `plan`).
pub(crate) fn validate_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::EmptyNodeName);
    }
    if name.len() > NODE_NAME_BYTES_MAX {
        return Err(Error::NodeNameTooLong {
            name: truncate(name, NODE_NAME_BYTES_MAX).to_owned(),
            bytes: name.len(),
            max: NODE_NAME_BYTES_MAX,
        });
    }
    Ok(())
}

fn validate_zone(node: &Node) -> Result<(), Error> {
    if node.zone.is_empty() {
        return Err(Error::EmptyZoneName {
            node: node.name.clone(),
        });
    }
    if node.zone.len() > ZONE_NAME_BYTES_MAX {
        return Err(Error::ZoneNameTooLong {
            node: node.name.clone(),
            bytes: node.zone.len(),
            max: ZONE_NAME_BYTES_MAX,
        });
    }
    Ok(())
}

/// The longest prefix of `text` of at most `bytes_max` bytes that ends on a character boundary.
fn truncate(text: &str, bytes_max: usize) -> &str {
    let mut end = bytes_max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_whole_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn inactive_nodes_still_need_unique_names() {
        let mut gone = Node::active("n1", "a");
        gone.state = NodeState::Gone;
        let nodes = [Node::active("n1", "a"), gone];
        assert_eq!(
            validate_nodes(&nodes),
            Err(Error::DuplicateNode { name: "n1".into() })
        );
    }

    #[test]
    fn long_names_are_reported_cut() {
        let name = "é".repeat(NODE_NAME_BYTES_MAX);
        let Err(Error::NodeNameTooLong {
            name: cut,
            bytes,
            max,
        }) = validate_name(&name)
        else {
            panic!("a name of {} bytes was accepted", name.len());
        };
        assert!(cut.len() <= NODE_NAME_BYTES_MAX);
        assert_eq!(bytes, name.len());
        assert_eq!(max, NODE_NAME_BYTES_MAX);
    }
}
