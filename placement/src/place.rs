//! Zone-aware rendezvous placement (DESIGN.md section 4).
//!
//! For group `g` and the active nodes:
//! 1. score every node: `h = node_hash(key, g, name)`;
//! 2. within each zone, sort the nodes by `(h, name)` and give them ranks 0, 1, 2, …;
//! 3. sort all nodes by `(rank, h, name)` and take the first `size`.
//!
//! The best node of every zone comes before the second best of any zone, so members spread over
//! zones round-robin; the first member, the desired leader, is a uniform pick among all nodes.
//! A node's score for a group does not depend on the other nodes, which is what keeps movement
//! minimal when a node comes or goes.

use std::collections::BTreeMap;

use crate::hash::{GroupHasher, encode_name};
use crate::node::validate_nodes;
use crate::{ClusterKey, Error, GROUP_SIZE_MAX, GroupId, NODES_MAX, Node, Placements};

// Node indexes are stored as u32 to keep candidates small.
const _: () = assert!(NODES_MAX <= u32::MAX as usize);

/// The active nodes of a cluster, checked and indexed once, ready to place any number of groups.
///
/// Build one whenever the catalog's nodes change and reuse it for every group: [`Topology::place`]
/// then costs one hash per active node and no sorting of the whole node list.
#[derive(Debug, Clone)]
pub struct Topology {
    key: ClusterKey,
    /// The active nodes, sorted by name, so that comparing indexes compares names (the final
    /// tie-break of the algorithm).
    active: Vec<ActiveNode>,
    /// The zones of the active nodes, sorted; `ActiveNode::zone` indexes this.
    zones: Vec<String>,
}

#[derive(Debug, Clone)]
struct ActiveNode {
    name: String,
    /// The name as hashed (see `node_hash`), encoded once here rather than once per group.
    encoded_name: Vec<u8>,
    zone: usize,
}

/// A node's place in the race for one group. Ordered by `(hash, index)`, that is by `(h, name)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    hash: u64,
    index: u32,
}

/// A candidate with its rank inside its zone. Ordered by `(rank, h, name)`: step 3 of the algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Ranked {
    rank: usize,
    candidate: Candidate,
}

impl Topology {
    /// Checks `nodes` (all of them, whatever their state) and keeps the active ones.
    ///
    /// Fails if there are more than [`NODES_MAX`](crate::NODES_MAX) nodes, if a name or a zone is
    /// empty or too long, or if two nodes share a name. No active node is not an error here (a new
    /// cluster has none); placing a group then is.
    pub fn new(key: ClusterKey, nodes: &[Node]) -> Result<Self, Error> {
        validate_nodes(nodes)?;
        let mut zone_names: Vec<&str> = nodes
            .iter()
            .filter(|node| node.is_active())
            .map(|node| node.zone.as_str())
            .collect();
        zone_names.sort_unstable();
        zone_names.dedup();
        let mut active: Vec<ActiveNode> = nodes
            .iter()
            .filter(|node| node.is_active())
            .map(|node| ActiveNode {
                name: node.name.clone(),
                encoded_name: encode_name(&node.name),
                zone: zone_names
                    .binary_search(&node.zone.as_str())
                    .expect("every active zone was collected"),
            })
            .collect();
        active.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let zones = zone_names.into_iter().map(str::to_owned).collect();
        Ok(Topology { key, active, zones })
    }

    /// The cluster key the topology places with.
    pub fn key(&self) -> ClusterKey {
        self.key
    }

    /// The names of the active nodes, sorted.
    pub fn active_nodes(&self) -> impl ExactSizeIterator<Item = &str> {
        self.active.iter().map(|node| node.name.as_str())
    }

    /// The zones that have at least one active node, sorted.
    pub fn zones(&self) -> impl ExactSizeIterator<Item = &str> {
        self.zones.iter().map(String::as_str)
    }

    /// The desired members of `group`, desired leader first.
    ///
    /// Takes `min(size, active nodes)` members: with fewer active nodes than `size`, every active
    /// node is a member. Fails if `size` is 0 or above [`GROUP_SIZE_MAX`](crate::GROUP_SIZE_MAX),
    /// or if no node is active.
    pub fn place(&self, group: GroupId, size: usize) -> Result<Vec<String>, Error> {
        check_size(group, size)?;
        if self.active.is_empty() {
            return Err(Error::NoActiveNode { group });
        }
        let members: Vec<String> = self
            .place_indexes(group, size)
            .into_iter()
            .map(|index| self.active[index].name.clone())
            .collect();
        assert_eq!(members.len(), size.min(self.active.len()));
        Ok(members)
    }

    /// Places every group of `groups`, given as `(id, size)`.
    ///
    /// Fails on the first group that [`Topology::place`] rejects. A group id given twice keeps the
    /// placement of its last size.
    pub fn place_all(
        &self,
        groups: impl IntoIterator<Item = (GroupId, usize)>,
    ) -> Result<Placements, Error> {
        let mut placed = BTreeMap::new();
        for (group, size) in groups {
            placed.insert(group, self.place(group, size)?);
        }
        Ok(Placements { groups: placed })
    }

    /// Steps 1 to 3 of the algorithm, on indexes into `self.active`.
    fn place_indexes(&self, group: GroupId, size: usize) -> Vec<usize> {
        let count = size.min(self.active.len());
        assert!(count > 0, "callers check size and active nodes");
        let best = self.best_per_zone(group, count);
        let mut ranked: Vec<Ranked> = best
            .chunks(count)
            .flat_map(|zone| zone.iter().take_while(|slot| !slot.is_empty()).enumerate())
            .map(|(rank, &candidate)| Ranked { rank, candidate })
            .collect();
        ranked.sort_unstable();
        ranked.truncate(count);
        assert_eq!(ranked.len(), count, "the zones hold at least `count` nodes");
        ranked
            .into_iter()
            .map(|ranked| ranked.candidate.index as usize)
            .collect()
    }

    /// Steps 1 and 2, keeping only the `count` best candidates of every zone, in order: a node of
    /// rank `count` or more is never taken, since the `count` nodes ranked before it in its zone
    /// all sort before it in step 3. This keeps the work per group linear in the nodes.
    ///
    /// Returns `zones × count` slots, zone after zone; a zone with fewer than `count` nodes leaves
    /// its last slots empty.
    fn best_per_zone(&self, group: GroupId, count: usize) -> Vec<Candidate> {
        let hasher = GroupHasher::new(self.key, group);
        let mut best = vec![Candidate::EMPTY; self.zones.len() * count];
        for (index, node) in self.active.iter().enumerate() {
            let candidate = Candidate {
                hash: hasher.score_encoded(&node.encoded_name),
                index: u32::try_from(index).expect("bounded by NODES_MAX"),
            };
            let zone = &mut best[node.zone * count..(node.zone + 1) * count];
            insert_bounded(zone, candidate);
        }
        best
    }
}

impl Candidate {
    /// An empty slot: it sorts after every real candidate, whose index is below `NODES_MAX`.
    const EMPTY: Candidate = Candidate {
        hash: u64::MAX,
        index: u32::MAX,
    };

    fn is_empty(&self) -> bool {
        *self == Candidate::EMPTY
    }
}

/// Inserts `candidate` into `slots`, kept sorted (empty slots last), if it is better than the
/// worst one kept (an empty slot is worse than any candidate).
fn insert_bounded(slots: &mut [Candidate], candidate: Candidate) {
    assert!(!candidate.is_empty());
    let last = slots.len() - 1;
    if slots[last] <= candidate {
        return;
    }
    // Slide worse candidates one slot right (dropping the last) until the candidate's slot.
    let mut position = last;
    while position > 0 && slots[position - 1] > candidate {
        slots[position] = slots[position - 1];
        position -= 1;
    }
    slots[position] = candidate;
    debug_assert!(slots.is_sorted());
}

/// Rejects sizes that no group may have.
pub(crate) fn check_size(group: GroupId, size: usize) -> Result<(), Error> {
    if size == 0 {
        return Err(Error::SizeZero { group });
    }
    if size > GROUP_SIZE_MAX {
        return Err(Error::SizeTooLarge {
            group,
            size,
            max: GROUP_SIZE_MAX,
        });
    }
    Ok(())
}

/// The desired members of `group` among `nodes`, desired leader first: [`Topology::new`] then
/// [`Topology::place`].
///
/// Only active nodes count; with fewer active nodes than `size`, every active node is a member.
/// To place many groups, build a [`Topology`] once instead.
///
/// ```
/// use placement::{place, ClusterKey, GroupId, Node};
/// let nodes = [Node::active("n1", "a"), Node::active("n2", "b"), Node::active("n3", "a")];
/// let members = place(ClusterKey::from_bytes([1; 16]), GroupId(42), 2, &nodes)?;
/// assert_eq!(members.len(), 2);
/// assert_ne!(members[0], members[1]);
/// // Two zones, two members: one member in each zone.
/// assert!(members.contains(&"n2".to_string()));
/// # Ok::<(), placement::Error>(())
/// ```
pub fn place(
    key: ClusterKey,
    group: GroupId,
    size: usize,
    nodes: &[Node],
) -> Result<Vec<String>, Error> {
    Topology::new(key, nodes)?.place(group, size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeState;

    fn candidate(hash: u64, index: u32) -> Candidate {
        Candidate { hash, index }
    }

    #[test]
    fn insert_bounded_keeps_the_best_in_order() {
        let mut slots = vec![Candidate::EMPTY; 3];
        for (hash, index) in [(50, 0), (10, 1), (70, 2), (30, 3), (10, 0), (90, 4)] {
            insert_bounded(&mut slots, Candidate { hash, index });
        }
        assert_eq!(
            slots,
            vec![candidate(10, 0), candidate(10, 1), candidate(30, 3)]
        );
    }

    #[test]
    fn inactive_nodes_do_not_count() {
        let key = ClusterKey::from_bytes([3; 16]);
        let mut nodes: Vec<Node> = (0..6).map(|i| Node::active(format!("n{i}"), "z")).collect();
        nodes[1].state = NodeState::Draining;
        nodes[4].state = NodeState::Gone;
        let topology = Topology::new(key, &nodes).unwrap();
        assert_eq!(
            topology.active_nodes().collect::<Vec<_>>(),
            ["n0", "n2", "n3", "n5"]
        );
        let members = topology.place(GroupId(9), 9).unwrap();
        assert_eq!(
            members.len(),
            4,
            "size above the active nodes takes them all"
        );
    }

    /// The optimized selection against the algorithm written out literally: all nodes ranked,
    /// all sorted, first `size` taken.
    #[test]
    fn matches_the_literal_algorithm() {
        let key = ClusterKey::from_bytes(*b"literal  recipe!");
        let zones = ["a", "b", "c", "d"];
        let nodes: Vec<Node> = (0..23)
            .map(|i| Node::active(format!("n{i}"), zones[(i * 7 % 11) % zones.len()]))
            .collect();
        let topology = Topology::new(key, &nodes).unwrap();
        for group in 0..300 {
            for size in 1..=GROUP_SIZE_MAX {
                let expected = literal(key, GroupId(group), size, &nodes);
                assert_eq!(topology.place(GroupId(group), size).unwrap(), expected);
            }
        }
    }

    fn literal(key: ClusterKey, group: GroupId, size: usize, nodes: &[Node]) -> Vec<String> {
        let mut by_zone: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
        for node in nodes {
            let h = crate::node_hash(key, group, &node.name);
            by_zone.entry(&node.zone).or_default().push((h, &node.name));
        }
        let mut all = Vec::new();
        for mut zone in by_zone.into_values() {
            zone.sort();
            all.extend(
                zone.into_iter()
                    .enumerate()
                    .map(|(rank, (h, name))| (rank, h, name)),
            );
        }
        all.sort();
        all.into_iter()
            .take(size)
            .map(|(_, _, name)| name.to_owned())
            .collect()
    }
}
