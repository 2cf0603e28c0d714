//! Placements of a whole catalog, their load per node and per zone, and the moves between two of
//! them: for `status`, for the reconciler's progress and for benchmarks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::node::validate_nodes;
use crate::{Error, GroupId, Node};

/// The members of many groups, each list with its desired leader first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placements {
    /// Members per group, desired leader first.
    pub groups: BTreeMap<GroupId, Vec<String>>,
}

impl Placements {
    /// The members of `group`, desired leader first, if it is placed.
    pub fn members(&self, group: GroupId) -> Option<&[String]> {
        self.groups.get(&group).map(Vec::as_slice)
    }

    /// The desired leader of `group`, if it is placed.
    pub fn desired_leader(&self, group: GroupId) -> Option<&str> {
        self.members(group)?.first().map(String::as_str)
    }

    /// What it takes to go from these placements to `after`. A group missing from one side counts
    /// as a group with no member there.
    pub fn moves_to(&self, after: &Placements) -> Moves {
        let mut moves = Moves::default();
        for (group, before) in &self.groups {
            let now = after.groups.get(group).map_or(&[][..], Vec::as_slice);
            moves.add_group(before, now);
        }
        for (group, now) in &after.groups {
            if !self.groups.contains_key(group) {
                moves.add_group(&[], now);
            }
        }
        moves
    }
}

/// The difference between two placements of the same groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moves {
    /// Members placed after and not before. Each is a new replica that must receive the group's
    /// data, so this is the cost of a rebalance.
    pub members_added: usize,
    /// Members placed before and not after: replicas to remove.
    pub members_removed: usize,
    /// Groups placed on both sides, with a desired leader that differs: leadership transfers.
    pub leaders_changed: usize,
    /// Groups whose set of members differs.
    pub groups_changed: usize,
}

impl Moves {
    fn add_group(&mut self, before: &[String], after: &[String]) {
        let added = after.iter().filter(|node| !before.contains(node)).count();
        let removed = before.iter().filter(|node| !after.contains(node)).count();
        self.members_added += added;
        self.members_removed += removed;
        self.groups_changed += usize::from(added + removed > 0);
        let leaders = (before.first(), after.first());
        if let (Some(leader_before), Some(leader_after)) = leaders {
            self.leaders_changed += usize::from(leader_before != leader_after);
        }
    }
}

/// How many members and desired leaders one node or one zone hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Members hosted.
    pub members: usize,
    /// Groups whose desired leader is here.
    pub leaders: usize,
}

/// The load of a placement, per node and per zone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Groups placed.
    pub groups: usize,
    /// Members of all groups.
    pub members: usize,
    /// Load of every node given, whatever its state (so an idle new node shows as 0, and a draining
    /// node shows what it still has).
    pub nodes: BTreeMap<String, Load>,
    /// Load of every zone of the nodes given.
    pub zones: BTreeMap<String, Load>,
}

impl Summary {
    /// Counts the members and desired leaders of `placements` on `nodes`.
    ///
    /// `nodes` should be every node of the catalog, whatever its state, so that each member's zone
    /// is known. Fails if a node name is invalid or repeated, if a group lists a node twice, or if
    /// a member is on a node that `nodes` does not have.
    pub fn new(nodes: &[Node], placements: &Placements) -> Result<Self, Error> {
        validate_nodes(nodes)?;
        let zone_of: BTreeMap<&str, &str> = nodes
            .iter()
            .map(|node| (node.name.as_str(), node.zone.as_str()))
            .collect();
        let mut summary = Summary {
            groups: placements.groups.len(),
            nodes: nodes
                .iter()
                .map(|n| (n.name.clone(), Load::default()))
                .collect(),
            zones: nodes
                .iter()
                .map(|n| (n.zone.clone(), Load::default()))
                .collect(),
            ..Summary::default()
        };
        for members in placements.groups.values() {
            summary.add_group(&zone_of, members)?;
        }
        summary.assert_totals();
        Ok(summary)
    }

    fn add_group(
        &mut self,
        zone_of: &BTreeMap<&str, &str>,
        members: &[String],
    ) -> Result<(), Error> {
        for (position, member) in members.iter().enumerate() {
            if members[..position].contains(member) {
                return Err(Error::DuplicateNode {
                    name: member.clone(),
                });
            }
            let zone = zone_of
                .get(member.as_str())
                .ok_or_else(|| Error::UnknownNode {
                    name: member.clone(),
                })?;
            let leader = usize::from(position == 0);
            for load in [
                self.nodes
                    .get_mut(member.as_str())
                    .expect("nodes has every node"),
                self.zones.get_mut(*zone).expect("zones has every zone"),
            ] {
                load.members += 1;
                load.leaders += leader;
            }
        }
        self.members += members.len();
        Ok(())
    }

    /// Every member and leader is counted once per node and once per zone.
    fn assert_totals(&self) {
        for loads in [&self.nodes, &self.zones] {
            let members: usize = loads.values().map(|load| load.members).sum();
            let leaders: usize = loads.values().map(|load| load.leaders).sum();
            assert_eq!(members, self.members);
            assert!(leaders <= self.groups);
        }
    }
}
