//! The catalog: the replicated state of the meta group (group id 0).
//!
//! It holds the fleet's nodes (name, address, zone, state), its groups (name, id, size, kind,
//! members, state) and the counters that hand out ids. It is a [`StateMachine`] like any other,
//! so every node — a voter or a learner of the meta group — holds the same catalog at the same
//! index and reads it locally.
//!
//! Decisions recorded here:
//! - A group's initial members are chosen **when the create command is applied**, by placement over
//!   the active nodes of the catalog at that index. Placement is pure and deterministic, so every
//!   replica of the meta group computes the same members, and every member starts its replica from
//!   the same configuration without further coordination.
//! - Node ids are handed out by the catalog, once per node name, and never reused. A replica id is
//!   `(node id, incarnation)`; the catalog keeps the next incarnation per group, so a member that
//!   is removed and added again is a new replica.
//! - A group is never deleted by the system: only `RemoveGroup`, an operator's command, marks it
//!   removed.

use std::collections::BTreeMap;

use fleet_core::{GroupId, ReplicaId, SnapshotError, StateMachine};
use placement::{ClusterKey, Node, NodeState, Topology};
use serde::{Deserialize, Serialize};

/// The version of the catalog's snapshot encoding.
pub const CATALOG_FORMAT_VERSION: u16 = 1;

/// The meta group's id.
pub const META_GROUP: GroupId = GroupId(0);

/// The most nodes a catalog holds.
pub const CATALOG_NODES_MAX: usize = placement::NODES_MAX;
/// The most groups a catalog holds.
pub const CATALOG_GROUPS_MAX: usize = 1_000_000;
/// The longest group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 255;
/// The longest state machine kind, in bytes.
pub const KIND_BYTES_MAX: usize = 64;
/// The longest node address, in bytes.
pub const ADDRESS_BYTES_MAX: usize = 255;

/// A node as the catalog knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// The node's id, used in replica ids.
    pub id: u64,
    /// The node's name, bound to its certificate.
    pub name: String,
    /// The address peers dial.
    pub address: String,
    /// The zone placement spreads replicas over.
    pub zone: String,
    /// Active, draining or gone.
    pub state: NodeState,
}

/// The state of a group in the catalog.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupState {
    /// Serving.
    Active,
    /// Removed by an operator; its replicas are being destroyed.
    Removed,
}

/// A group as the catalog knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEntry {
    /// The group's stable id.
    pub id: GroupId,
    /// The group's name.
    pub name: String,
    /// The number of voters it should have.
    pub size: usize,
    /// The state machine kind it runs.
    pub kind: String,
    /// The initial members, desired leader first, as placed when the group was created.
    pub initial_members: Vec<ReplicaId>,
    /// The next incarnation to give a member added later.
    pub next_incarnation: u32,
    /// Active or removed.
    pub state: GroupState,
}

/// A change to the catalog, proposed to the meta group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogCommand {
    /// Sets the placement key; the founding node proposes it first, and it never changes after a
    /// node is registered (changing it would move almost every member).
    Init {
        /// The key.
        key: [u8; 16],
    },
    /// Registers a node, or updates its address and zone and makes it active again.
    RegisterNode {
        /// The node's name.
        name: String,
        /// Its address.
        address: String,
        /// Its zone.
        zone: String,
    },
    /// Changes a node's state (draining on deactivate, gone when drained or dead).
    SetNodeState {
        /// The node's name.
        name: String,
        /// The new state.
        state: NodeState,
    },
    /// Creates a group, placing its members over the active nodes.
    CreateGroup {
        /// The group's name.
        name: String,
        /// Its number of voters (fewer if fewer nodes are active).
        size: usize,
        /// The state machine kind.
        kind: String,
    },
    /// Marks a group removed.
    RemoveGroup {
        /// The group's name.
        name: String,
    },
    /// Hands out the next incarnation of a group, for a member about to be added.
    NextIncarnation {
        /// The group.
        group: GroupId,
    },
}

/// The catalog's answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogOutput {
    /// The node is registered with this id.
    NodeRegistered {
        /// The node's id.
        id: u64,
    },
    /// The node's state changed.
    NodeStateSet,
    /// The group exists with these members.
    GroupCreated(GroupEntry),
    /// The group is removed.
    GroupRemoved,
    /// The incarnation to use.
    Incarnation(u32),
    /// The key is set.
    Initialized,
    /// The command was refused.
    Refused(CatalogError),
}

/// Why the catalog refused a command. Deterministic: every replica refuses alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The name is taken by another group.
    #[error("a group named {0:?} already exists; choose another name or remove it first")]
    GroupExists(String),
    /// No such group.
    #[error("no group named {0:?}; list groups to see which exist")]
    NoSuchGroup(String),
    /// No such node.
    #[error("no node named {0:?} in the catalog")]
    NoSuchNode(String),
    /// The size is zero or too large.
    #[error("group size {size} is not in 1..={max}")]
    BadSize {
        /// The size asked for.
        size: usize,
        /// The largest size.
        max: usize,
    },
    /// A name or field is empty or too long.
    #[error("{what} {value:?} is empty or longer than {max} bytes")]
    BadName {
        /// Which field.
        what: String,
        /// Its value.
        value: String,
        /// The limit.
        max: usize,
    },
    /// No node is active, so the group cannot be placed.
    #[error("no active node to place the group on; activate a node first")]
    NoActiveNode,
    /// A limit of the catalog is reached.
    #[error("the catalog holds {count} {what}, its limit; remove some first")]
    Full {
        /// What is full.
        what: String,
        /// How many there are.
        count: usize,
    },
    /// The placement key is fixed once nodes exist.
    #[error("the catalog is already initialized; its placement key cannot change")]
    AlreadyInitialized,
    /// A node may not move back from gone to draining.
    #[error("node {name:?} is gone; register it again to make it active")]
    NodeGone {
        /// The node.
        name: String,
    },
}

/// Reads of the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogQuery {
    /// One group by name.
    Group(String),
    /// Every group.
    Groups,
    /// Every node.
    Nodes,
}

/// The replicated catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    key: [u8; 16],
    nodes: BTreeMap<String, NodeEntry>,
    groups: BTreeMap<String, GroupEntry>,
    next_node_id: u64,
    next_group_id: u64,
}

#[derive(Serialize, Deserialize)]
struct CatalogSnapshot {
    version: u16,
    key: [u8; 16],
    nodes: Vec<NodeEntry>,
    groups: Vec<GroupEntry>,
    next_node_id: u64,
    next_group_id: u64,
}

fn check_name(what: &'static str, value: &str, max: usize) -> Result<(), CatalogError> {
    if value.is_empty() || value.len() > max {
        return Err(CatalogError::BadName {
            what: what.to_string(),
            value: value.chars().take(64).collect(),
            max,
        });
    }
    Ok(())
}

impl Catalog {
    /// A catalog whose placement is keyed by `key` (chosen once, when the cluster is created).
    pub fn with_key(key: [u8; 16]) -> Self {
        Catalog {
            key,
            next_node_id: 1,
            next_group_id: 1,
            ..Catalog::default()
        }
    }

    /// The placement key.
    pub fn key(&self) -> ClusterKey {
        ClusterKey::from_bytes(self.key)
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes.get(name)
    }

    /// A node by id.
    pub fn node_by_id(&self, id: u64) -> Option<&NodeEntry> {
        self.nodes.values().find(|n| n.id == id)
    }

    /// Every node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values()
    }

    /// A group by name.
    pub fn group(&self, name: &str) -> Option<&GroupEntry> {
        self.groups.get(name)
    }

    /// Every group, by name.
    pub fn groups(&self) -> impl Iterator<Item = &GroupEntry> {
        self.groups.values()
    }

    /// The placement input: every node with its zone and state.
    pub fn placement_nodes(&self) -> Vec<Node> {
        self.nodes
            .values()
            .map(|n| Node {
                name: n.name.clone(),
                zone: n.zone.clone(),
                state: n.state,
            })
            .collect()
    }

    fn register_node(
        &mut self,
        name: String,
        address: String,
        zone: String,
    ) -> Result<CatalogOutput, CatalogError> {
        check_name("node name", &name, placement::NODE_NAME_BYTES_MAX)?;
        check_name("zone", &zone, placement::ZONE_NAME_BYTES_MAX)?;
        check_name("address", &address, ADDRESS_BYTES_MAX)?;
        if let Some(node) = self.nodes.get_mut(&name) {
            node.address = address;
            node.zone = zone;
            node.state = NodeState::Active;
            return Ok(CatalogOutput::NodeRegistered { id: node.id });
        }
        if self.nodes.len() >= CATALOG_NODES_MAX {
            return Err(CatalogError::Full {
                what: "nodes".into(),
                count: self.nodes.len(),
            });
        }
        let id = self.next_node_id;
        self.next_node_id += 1;
        self.nodes.insert(
            name.clone(),
            NodeEntry {
                id,
                name,
                address,
                zone,
                state: NodeState::Active,
            },
        );
        Ok(CatalogOutput::NodeRegistered { id })
    }

    fn create_group(
        &mut self,
        name: String,
        size: usize,
        kind: String,
    ) -> Result<CatalogOutput, CatalogError> {
        check_name("group name", &name, GROUP_NAME_BYTES_MAX)?;
        check_name("state machine kind", &kind, KIND_BYTES_MAX)?;
        if size == 0 || size > placement::GROUP_SIZE_MAX {
            return Err(CatalogError::BadSize {
                size,
                max: placement::GROUP_SIZE_MAX,
            });
        }
        if self.groups.contains_key(&name) {
            return Err(CatalogError::GroupExists(name));
        }
        if self.groups.len() >= CATALOG_GROUPS_MAX {
            return Err(CatalogError::Full {
                what: "groups".into(),
                count: self.groups.len(),
            });
        }
        let id = GroupId(self.next_group_id);
        let topology = Topology::new(self.key(), &self.placement_nodes())
            .map_err(|_| CatalogError::NoActiveNode)?;
        let names = topology
            .place(placement::GroupId(id.0), size)
            .map_err(|_| CatalogError::NoActiveNode)?;
        let initial_members = names
            .iter()
            .map(|n| ReplicaId::new(self.nodes[n].id, 0))
            .collect();
        self.next_group_id += 1;
        let entry = GroupEntry {
            id,
            name: name.clone(),
            size,
            kind,
            initial_members,
            next_incarnation: 1,
            state: GroupState::Active,
        };
        self.groups.insert(name, entry.clone());
        Ok(CatalogOutput::GroupCreated(entry))
    }

    fn apply(&mut self, cmd: CatalogCommand) -> Result<CatalogOutput, CatalogError> {
        match cmd {
            CatalogCommand::Init { key } => {
                if !self.nodes.is_empty() {
                    return Err(CatalogError::AlreadyInitialized);
                }
                self.key = key;
                Ok(CatalogOutput::Initialized)
            }
            CatalogCommand::RegisterNode {
                name,
                address,
                zone,
            } => self.register_node(name, address, zone),
            CatalogCommand::SetNodeState { name, state } => {
                let node = self
                    .nodes
                    .get_mut(&name)
                    .ok_or(CatalogError::NoSuchNode(name.clone()))?;
                if node.state == NodeState::Gone && state == NodeState::Draining {
                    return Err(CatalogError::NodeGone { name });
                }
                node.state = state;
                Ok(CatalogOutput::NodeStateSet)
            }
            CatalogCommand::CreateGroup { name, size, kind } => self.create_group(name, size, kind),
            CatalogCommand::RemoveGroup { name } => {
                let group = self
                    .groups
                    .get_mut(&name)
                    .ok_or(CatalogError::NoSuchGroup(name.clone()))?;
                group.state = GroupState::Removed;
                Ok(CatalogOutput::GroupRemoved)
            }
            CatalogCommand::NextIncarnation { group } => {
                let entry = self
                    .groups
                    .values_mut()
                    .find(|g| g.id == group)
                    .ok_or(CatalogError::NoSuchGroup(group.to_string()))?;
                let incarnation = entry.next_incarnation;
                entry.next_incarnation += 1;
                Ok(CatalogOutput::Incarnation(incarnation))
            }
        }
    }
}

impl StateMachine for Catalog {
    type Command = CatalogCommand;
    type Query = CatalogQuery;
    type Output = CatalogOutput;

    fn new() -> Self {
        // The founding node's first command (`Init`) sets the key.
        Catalog::with_key([0; 16])
    }

    fn command(&mut self, cmd: CatalogCommand) -> CatalogOutput {
        match self.apply(cmd) {
            Ok(out) => out,
            Err(e) => CatalogOutput::Refused(e),
        }
    }

    fn query(&self, _q: &CatalogQuery) -> CatalogOutput {
        // Reads go through the typed accessors on a local replica; the query path exists for
        // remote callers and is answered by the runtime from those accessors.
        CatalogOutput::NodeStateSet
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_stdvec(&CatalogSnapshot {
            version: CATALOG_FORMAT_VERSION,
            key: self.key,
            nodes: self.nodes.values().cloned().collect(),
            groups: self.groups.values().cloned().collect(),
            next_node_id: self.next_node_id,
            next_group_id: self.next_group_id,
        })
        .expect("catalog encodes")
    }

    fn restore(snapshot: &[u8]) -> Result<Self, SnapshotError> {
        let snap: CatalogSnapshot = postcard::from_bytes(snapshot)
            .map_err(|e| SnapshotError(format!("undecodable catalog snapshot: {e}")))?;
        if snap.version != CATALOG_FORMAT_VERSION {
            return Err(SnapshotError(format!(
                "catalog snapshot version {} is not {CATALOG_FORMAT_VERSION}; upgrade this node",
                snap.version
            )));
        }
        Ok(Catalog {
            key: snap.key,
            nodes: snap
                .nodes
                .into_iter()
                .map(|n| (n.name.clone(), n))
                .collect(),
            groups: snap
                .groups
                .into_iter()
                .map(|g| (g.name.clone(), g))
                .collect(),
            next_node_id: snap.next_node_id,
            next_group_id: snap.next_group_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(c: &mut Catalog, name: &str, zone: &str) -> u64 {
        match c.command(CatalogCommand::RegisterNode {
            name: name.into(),
            address: format!("{name}:7000"),
            zone: zone.into(),
        }) {
            CatalogOutput::NodeRegistered { id } => id,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn groups_are_placed_over_active_nodes_deterministically_at_apply_time() {
        let mut a = Catalog::with_key([7; 16]);
        for (n, z) in [("n1", "a"), ("n2", "b"), ("n3", "c"), ("n4", "a")] {
            register(&mut a, n, z);
        }
        let mut b = a.clone();
        let cmd = CatalogCommand::CreateGroup {
            name: "users".into(),
            size: 3,
            kind: "kv".into(),
        };
        let out_a = a.command(cmd.clone());
        let out_b = b.command(cmd);
        assert_eq!(out_a, out_b, "every replica computes the same members");
        let CatalogOutput::GroupCreated(g) = out_a else {
            panic!()
        };
        assert_eq!(g.id, GroupId(1));
        assert_eq!(g.initial_members.len(), 3);
        let zones: std::collections::BTreeSet<&str> = g
            .initial_members
            .iter()
            .map(|r| a.node_by_id(r.node.0).unwrap().zone.as_str())
            .collect();
        assert_eq!(zones.len(), 3, "one member per zone");
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_error() {
        let mut c = Catalog::with_key([1; 16]);
        let none = c.command(CatalogCommand::CreateGroup {
            name: "g".into(),
            size: 1,
            kind: "kv".into(),
        });
        assert_eq!(none, CatalogOutput::Refused(CatalogError::NoActiveNode));
        register(&mut c, "n1", "z");
        let zero = c.command(CatalogCommand::CreateGroup {
            name: "g".into(),
            size: 0,
            kind: "kv".into(),
        });
        assert!(matches!(
            zero,
            CatalogOutput::Refused(CatalogError::BadSize { size: 0, .. })
        ));
        let ok = c.command(CatalogCommand::CreateGroup {
            name: "g".into(),
            size: 3,
            kind: "kv".into(),
        });
        let CatalogOutput::GroupCreated(g) = ok else {
            panic!("{ok:?}")
        };
        assert_eq!(
            g.initial_members.len(),
            1,
            "fewer nodes than size uses them all"
        );
        let taken = c.command(CatalogCommand::CreateGroup {
            name: "g".into(),
            size: 3,
            kind: "kv".into(),
        });
        assert_eq!(
            taken,
            CatalogOutput::Refused(CatalogError::GroupExists("g".into()))
        );
        let empty = c.command(CatalogCommand::CreateGroup {
            name: "".into(),
            size: 3,
            kind: "kv".into(),
        });
        assert!(matches!(
            empty,
            CatalogOutput::Refused(CatalogError::BadName { .. })
        ));
        let missing = c.command(CatalogCommand::RemoveGroup {
            name: "nope".into(),
        });
        assert!(matches!(
            missing,
            CatalogOutput::Refused(CatalogError::NoSuchGroup(_))
        ));
    }

    #[test]
    fn node_ids_are_stable_and_snapshots_round_trip() {
        let mut c = Catalog::with_key([2; 16]);
        let id1 = register(&mut c, "n1", "a");
        let id2 = register(&mut c, "n2", "b");
        assert_ne!(id1, id2);
        assert_eq!(
            register(&mut c, "n1", "c"),
            id1,
            "re-registering keeps the id"
        );
        c.command(CatalogCommand::CreateGroup {
            name: "g".into(),
            size: 2,
            kind: "kv".into(),
        });
        let inc = c.command(CatalogCommand::NextIncarnation { group: GroupId(1) });
        assert_eq!(inc, CatalogOutput::Incarnation(1));
        let restored = Catalog::restore(&c.snapshot()).unwrap();
        assert_eq!(restored, c);
        let mut bad = c.snapshot();
        bad[0] = 9;
        assert!(Catalog::restore(&bad).is_err());
    }
}
