//! The crate's one error type.
//!
//! Every variant is a caller's mistake (bad input from the catalog or from the reconciler). A broken
//! invariant inside the crate is an `assert!`, never an `Err`.

use crate::GroupId;

/// What went wrong with the input to [`place`](crate::place), [`Topology::new`](crate::Topology::new),
/// [`plan`](crate::plan) or [`Summary::new`](crate::Summary::new).
///
/// Each message says what happened and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A group was asked for 0 members.
    #[error(
        "group {group} has size 0: a group needs at least 1 member; use 3 to tolerate one failed node \
         or 5 to tolerate two"
    )]
    SizeZero {
        /// The group.
        group: GroupId,
    },

    /// A group was asked for more members than [`GROUP_SIZE_MAX`](crate::GROUP_SIZE_MAX).
    #[error(
        "group {group} has size {size}, above the maximum of {max}: every member slows each commit \
         down; use an odd size of at most {max}"
    )]
    SizeTooLarge {
        /// The group.
        group: GroupId,
        /// The size asked for.
        size: usize,
        /// [`GROUP_SIZE_MAX`](crate::GROUP_SIZE_MAX).
        max: usize,
    },

    /// There is no active node to place a group on.
    #[error("no active node to place group {group} on: activate at least one node first")]
    NoActiveNode {
        /// The group.
        group: GroupId,
    },

    /// More nodes than [`NODES_MAX`](crate::NODES_MAX) were given.
    #[error(
        "{count} nodes given, above the maximum of {max}: remove nodes marked gone from the catalog"
    )]
    TooManyNodes {
        /// How many nodes were given.
        count: usize,
        /// [`NODES_MAX`](crate::NODES_MAX).
        max: usize,
    },

    /// A node (or a member in a membership) has an empty name.
    #[error("a node has an empty name: give every node a unique, non-empty name such as \"n1\"")]
    EmptyNodeName,

    /// A node name is longer than [`NODE_NAME_BYTES_MAX`](crate::NODE_NAME_BYTES_MAX).
    #[error(
        "node name {name:?} is {bytes} bytes long, above the maximum of {max}: use a shorter name"
    )]
    NodeNameTooLong {
        /// The name, cut to the first [`NODE_NAME_BYTES_MAX`](crate::NODE_NAME_BYTES_MAX) bytes
        /// (on a character boundary) so the error itself stays bounded.
        name: String,
        /// Its length in bytes.
        bytes: usize,
        /// [`NODE_NAME_BYTES_MAX`](crate::NODE_NAME_BYTES_MAX).
        max: usize,
    },

    /// A node has an empty zone name.
    #[error(
        "node {node:?} has an empty zone name: give it its failure domain (rack or availability \
         zone), or the same zone such as \"default\" to every node if there is only one"
    )]
    EmptyZoneName {
        /// The node.
        node: String,
    },

    /// A zone name is longer than [`ZONE_NAME_BYTES_MAX`](crate::ZONE_NAME_BYTES_MAX).
    #[error(
        "node {node:?} has a zone name of {bytes} bytes, above the maximum of {max}: use a shorter \
         zone name"
    )]
    ZoneNameTooLong {
        /// The node.
        node: String,
        /// The length of its zone name in bytes.
        bytes: usize,
        /// [`ZONE_NAME_BYTES_MAX`](crate::ZONE_NAME_BYTES_MAX).
        max: usize,
    },

    /// Two nodes (or two members of a membership) have the same name.
    #[error(
        "node name {name:?} appears more than once: names identify nodes, so give every node a \
         unique name (and list each member once)"
    )]
    DuplicateNode {
        /// The repeated name.
        name: String,
    },

    /// A placement names a node that the list of nodes does not have.
    #[error(
        "a placement has a member on node {name:?}, which is not in the list of nodes: pass every \
         node of the catalog, whatever its state"
    )]
    UnknownNode {
        /// The unknown name.
        name: String,
    },

    /// A membership given to [`plan`](crate::plan) has no voter.
    #[error("the current membership has no voter: a group always has at least one voter")]
    NoVoters,

    /// The leader given to [`plan`](crate::plan) is not a voter of the current membership.
    #[error(
        "leader {leader:?} is not a voter of the current membership: pass the leader that the \
         group itself reports"
    )]
    LeaderNotVoter {
        /// The leader that was given.
        leader: String,
    },

    /// The desired members given to [`plan`](crate::plan) are empty.
    #[error("the desired membership is empty: pass the members that `place` returned")]
    DesiredEmpty,

    /// The desired members given to [`plan`](crate::plan) are more than
    /// [`GROUP_SIZE_MAX`](crate::GROUP_SIZE_MAX).
    #[error(
        "the desired membership has {size} members, above the maximum of {max}: pass the members \
         that `place` returned"
    )]
    DesiredTooLarge {
        /// How many desired members were given.
        size: usize,
        /// [`GROUP_SIZE_MAX`](crate::GROUP_SIZE_MAX).
        max: usize,
    },

    /// A membership has more members than [`MEMBERS_MAX`](crate::MEMBERS_MAX).
    #[error(
        "the membership has {count} voters and learners, above the maximum of {max}: plan only \
         the members that move (a group that keeps learners on purpose passes only the voters)"
    )]
    MembershipTooLarge {
        /// Voters plus learners.
        count: usize,
        /// [`MEMBERS_MAX`](crate::MEMBERS_MAX).
        max: usize,
    },
}
