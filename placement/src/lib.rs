//! Pure, deterministic placement of consensus-group members (DESIGN.md section 4).
//!
//! Every node of a fleet cluster computes, from the same catalog, the same answer to "where should
//! the members of group `g` live, and which of them should lead?". This crate is that computation
//! and nothing else: no I/O, no clock, no randomness, no global state, so the runtime, the
//! reconciler and the simulator all call the same functions.
//!
//! # Placing groups
//!
//! For group `g` and the **active** nodes, each in a zone (its failure domain):
//! 1. every node gets a score, `h = SipHash-1-3(cluster key, (g, node name))` ([`node_hash`]
//!    documents the exact bytes);
//! 2. within each zone, nodes are sorted by `h` and ranked 0, 1, 2, …;
//! 3. all nodes are sorted by `(rank, h, name)` and the first `size` are the members.
//!
//! The best node of every zone comes before the second best of any zone, so the members spread
//! over the zones round-robin, and the first member, the **desired leader**, is spread evenly over
//! all nodes. A node's score does not depend on the other nodes (rendezvous hashing), so when one
//! node is added or removed, only the groups that gain or lose that very node change.
//!
//! ```
//! use placement::{ClusterKey, GroupId, Node, NodeState, Topology};
//!
//! // The key is drawn once when the cluster is created and kept in its catalog.
//! let key = ClusterKey::from_bytes(*b"sixteen byte key");
//! let mut nodes = vec![
//!     Node::active("n1", "zone-a"),
//!     Node::active("n2", "zone-b"),
//!     Node::active("n3", "zone-c"),
//!     Node::active("n4", "zone-a"),
//! ];
//! nodes[3].state = NodeState::Draining; // leaving: placement no longer counts it
//!
//! // Check and index the nodes once, then place as many groups as needed.
//! let topology = Topology::new(key, &nodes)?;
//! let members = topology.place(GroupId(7), 3)?;
//! // Three zones, three members: one member per zone, and never on the draining node.
//! assert_eq!(members.len(), 3);
//! assert!(!members.contains(&"n4".to_string()));
//! let desired_leader = &members[0];
//! # let _ = desired_leader;
//! # Ok::<(), placement::Error>(())
//! ```
//!
//! # Moving a group
//!
//! [`plan`] turns the group's current membership and leader, and its desired members, into
//! single-server [`Step`]s: add learners, promote them once caught up, hand leadership away from a
//! member that must leave, remove, and finally hand leadership to the desired leader. No step takes
//! the group below a quorum of caught-up voters, and replacements add before they remove so the
//! group keeps tolerating a failure wherever the sizes allow. See [`plan`] for the caller's duties.
//!
//! ```
//! use placement::{plan, Membership, Step};
//!
//! let current = Membership::voters(["n1", "n2", "n3"]);
//! let steps = plan(&current, "n2", &["n1".into(), "n2".into(), "n5".into()])?;
//! assert_eq!(steps[0], Step::AddLearner { node: "n5".into() });
//! assert_eq!(steps.last(), Some(&Step::TransferLeader { to: "n1".into() }));
//! # Ok::<(), placement::Error>(())
//! ```
//!
//! # Summaries
//!
//! [`Topology::place_all`] places a whole catalog into [`Placements`]; [`Summary::new`] counts
//! members and desired leaders per node and per zone, and [`Placements::moves_to`] counts the
//! [`Moves`] between two placements (for `status`, and to see what a node change will cost).
//!
//! # Stability
//!
//! Nodes of different versions must agree on every placement, so the hash input, the ranks and the
//! tie-breaks are part of the cluster's protocol. `testdata/golden.json` pins them; a change that
//! alters it moves members in every running cluster and is a breaking change.
//!
//! # Errors and limits
//!
//! Bad input (a size of 0, a repeated node name, an empty zone, …) is an [`Error`], whose message
//! says what to fix. Every input is bounded: [`GROUP_SIZE_MAX`], [`NODES_MAX`],
//! [`NODE_NAME_BYTES_MAX`], [`ZONE_NAME_BYTES_MAX`], [`MEMBERS_MAX`]. A broken invariant inside
//! the crate is a panic with context, never an `Err`.
#![deny(missing_docs)]

mod error;
mod hash;
mod node;
mod place;
mod plan;
mod summary;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use error::Error;
pub use hash::{ClusterKey, node_hash};
pub use node::{Node, NodeState};
pub use place::{Topology, place};
pub use plan::{Membership, Step, plan};
pub use summary::{Load, Moves, Placements, Summary};

/// The most members a group may have.
///
/// Every commit waits for a majority, so each voter slows every write down a little, and 9 voters
/// already tolerate 4 failed nodes (etcd recommends at most 7).
pub const GROUP_SIZE_MAX: usize = 9;

/// The most nodes (active or not) a catalog may hold.
///
/// Placing one group costs one hash per active node; this keeps a full recomputation of a large
/// catalog within seconds.
pub const NODES_MAX: usize = 4096;

/// The longest node name, in bytes.
pub const NODE_NAME_BYTES_MAX: usize = 255;

/// The longest zone name, in bytes.
pub const ZONE_NAME_BYTES_MAX: usize = 255;

/// The most members (voters and learners) of a membership given to [`plan`].
///
/// A group that only ever follows plans towards placements of at most [`GROUP_SIZE_MAX`] members
/// stays within this bound, even when its placement changes in the middle of a plan: it has at
/// most `GROUP_SIZE_MAX + 1` voters (a learner is promoted only while the voters are no more than
/// the desired members) and at most `GROUP_SIZE_MAX` learners (learners that are no longer desired
/// are removed before new ones are added).
pub const MEMBERS_MAX: usize = 32;

const _: () = assert!(MEMBERS_MAX > 2 * GROUP_SIZE_MAX);
const _: () = assert!(GROUP_SIZE_MAX <= NODES_MAX);

/// The stable id of a consensus group, assigned by the meta group and never reused.
///
/// Placement hashes the id, not the group's name, so that renaming could never move members.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct GroupId(pub u64);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for GroupId {
    fn from(id: u64) -> Self {
        GroupId(id)
    }
}
