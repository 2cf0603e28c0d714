//! The plan of single-server steps that moves a group from its current membership to its
//! placement.
//!
//! The plan is a function of the group's state only: [`plan`] repeats [`next_step`] on a model of
//! the membership. So a reconciler that carries out the first step and plans again from the group's
//! new membership gets the rest of the same plan, and an interrupted plan resumes where it stopped.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::node::validate_name;
use crate::{Error, GROUP_SIZE_MAX, MEMBERS_MAX};

/// A group's current Raft configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The voting members.
    pub voters: Vec<String>,
    /// The non-voting members (learners), which receive the log but count for no quorum.
    pub learners: Vec<String>,
}

impl Membership {
    /// A membership of voters only.
    pub fn voters<S: Into<String>>(voters: impl IntoIterator<Item = S>) -> Self {
        Membership {
            voters: voters.into_iter().map(Into::into).collect(),
            learners: Vec::new(),
        }
    }

    fn contains(&self, node: &str) -> bool {
        self.is_voter(node) || self.is_learner(node)
    }

    fn is_voter(&self, node: &str) -> bool {
        self.voters.iter().any(|voter| voter == node)
    }

    fn is_learner(&self, node: &str) -> bool {
        self.learners.iter().any(|learner| learner == node)
    }
}

/// One single-server change (or leadership transfer) of a group, carried out by its leader.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Add `node` as a learner. It starts receiving the log (or a snapshot) and counts for no
    /// quorum, so adding it cannot cost the group its availability.
    AddLearner {
        /// The node that gets a new replica.
        node: String,
    },
    /// Make the learner on `node` a voter. The leader must wait until the learner has caught up
    /// (its log close to the leader's): a voter that lags counts in the quorum size but cannot
    /// help reach it.
    Promote {
        /// The learner to promote.
        node: String,
    },
    /// Hand leadership to the voter on node `to`: either because the leader's own member must
    /// leave (a leader does not remove itself), or to move leadership to the desired leader.
    TransferLeader {
        /// The voter that should lead.
        to: String,
    },
    /// Remove the member (voter or learner) on `node`. Never the leader: a plan transfers
    /// leadership away first.
    Remove {
        /// The member to remove.
        node: String,
    },
}

impl Step {
    /// The node the step is about: the one added, promoted, removed, or that receives leadership.
    pub fn node(&self) -> &str {
        match self {
            Step::AddLearner { node } | Step::Promote { node } | Step::Remove { node } => node,
            Step::TransferLeader { to } => to,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::AddLearner { node } => write!(f, "add learner {node}"),
            Step::Promote { node } => write!(f, "promote {node}"),
            Step::TransferLeader { to } => write!(f, "transfer leadership to {to}"),
            Step::Remove { node } => write!(f, "remove {node}"),
        }
    }
}

/// The steps that move a group from `current` (led by `leader`) to the `desired` members (desired
/// leader first, as [`place`](crate::place) returns them).
///
/// An empty plan means the group is where it should be: its voters are the desired members, it has
/// no learner, and the desired leader leads.
///
/// # What the plan guarantees
///
/// - **Single-server steps.** Each step changes the voters by at most one node, so consecutive
///   configurations overlap in a majority (Raft thesis §4.1) and no joint consensus is needed.
/// - **Never below a quorum of caught-up voters.** A node becomes a voter only by
///   [`Step::Promote`] of a learner that has caught up; a voter is removed only while the larger
///   of the two configurations still has a quorum of caught-up voters; the last voter is never
///   removed; the leader is never removed (leadership is transferred first).
/// - **Fault tolerance kept wherever sizes allow.** Every configuration the plan passes through has
///   at least `min(current voters, desired members)` voters: a replacement adds (and promotes) the
///   new member before it removes the old one, and voters are only removed while there are more
///   than the desired number, or when no learner is left to promote. The peak is
///   `max(current voters, desired members + 1)` voters.
/// - **New members catch up in parallel.** All learners are added before the first promotion.
/// - **Leadership moves at most once**, straight to the desired leader: just before the removal of
///   a leader that must leave (the desired leader is a voter by then), or at the end.
///
/// Learners that are not desired are removed first. A group that keeps extra learners on purpose
/// (the meta group keeps one on every node) passes only the learners it wants planned.
///
/// # The caller's duties
///
/// 1. Carry out one step at a time, as a single-server configuration change, and start the next
///    only once the previous one has committed (Raft allows one change in flight).
/// 2. Before [`Step::Promote`], wait until the learner has caught up.
/// 3. Better still, after each step, plan again from the group's actual membership and leader:
///    the rest of the plan is the same if nothing else changed, and the new plan follows any change
///    of placement or leader at once.
///
/// ```
/// use placement::{plan, Membership, Step};
/// // n3 must leave, n4 must join, and n4 should lead.
/// let current = Membership::voters(["n1", "n2", "n3"]);
/// let desired = ["n4", "n1", "n2"].map(String::from);
/// let steps = plan(&current, "n1", &desired)?;
/// assert_eq!(
///     steps,
///     [
///         Step::AddLearner { node: "n4".into() },
///         Step::Promote { node: "n4".into() },
///         Step::Remove { node: "n3".into() },
///         Step::TransferLeader { to: "n4".into() },
///     ]
/// );
/// # Ok::<(), placement::Error>(())
/// ```
///
/// Fails if the membership has no voter, if `leader` is not one of its voters, if `desired` is
/// empty or larger than [`GROUP_SIZE_MAX`](crate::GROUP_SIZE_MAX), if a name is empty or too long,
/// if a node appears twice in `current` or in `desired`, or if `current` has more than
/// [`MEMBERS_MAX`](crate::MEMBERS_MAX) members.
pub fn plan(current: &Membership, leader: &str, desired: &[String]) -> Result<Vec<Step>, Error> {
    validate_current(current, leader)?;
    validate_desired(desired)?;
    let mut state = State {
        membership: current.clone(),
        leader: leader.to_owned(),
    };
    // Each node is removed as a learner at most once, added at most once, promoted at most once and
    // removed as a voter at most once; leadership moves at most once.
    let steps_max = current.learners.len() + 2 * desired.len() + current.voters.len() + 1;
    let mut steps = Vec::new();
    while let Some(step) = next_step(&state, desired) {
        state.apply(&step);
        steps.push(step);
        assert!(steps.len() <= steps_max, "plan did not converge: {steps:?}");
    }
    assert_reached(&state, desired);
    Ok(steps)
}

/// A model of the group while the plan is built.
struct State {
    membership: Membership,
    leader: String,
}

impl State {
    fn apply(&mut self, step: &Step) {
        let membership = &mut self.membership;
        match step {
            Step::AddLearner { node } => {
                assert!(!membership.contains(node), "{node} added twice");
                membership.learners.push(node.clone());
            }
            Step::Promote { node } => {
                assert!(
                    membership.is_learner(node),
                    "{node} promoted but not a learner"
                );
                membership.learners.retain(|learner| learner != node);
                membership.voters.push(node.clone());
            }
            Step::TransferLeader { to } => {
                assert!(membership.is_voter(to), "leadership to {to}, not a voter");
                assert_ne!(&self.leader, to, "leadership transferred to the leader");
                self.leader.clone_from(to);
            }
            Step::Remove { node } => {
                assert_ne!(&self.leader, node, "the leader removed");
                assert!(membership.contains(node), "{node} removed but not a member");
                membership.voters.retain(|voter| voter != node);
                membership.learners.retain(|learner| learner != node);
                assert!(!membership.voters.is_empty(), "the last voter removed");
            }
        }
    }
}

/// The next step from `state` towards `desired`, or `None` once there. Depends only on the sets of
/// voters and learners, the leader and `desired`, never on the order of earlier steps.
fn next_step(state: &State, desired: &[String]) -> Option<Step> {
    let membership = &state.membership;
    let is_desired = |node: &String| desired.contains(node);
    // Learners that should not be there go first: they cost replication and help no quorum.
    if let Some(node) = membership.learners.iter().filter(|l| !is_desired(l)).min() {
        return Some(Step::Remove { node: node.clone() });
    }
    // Every new member starts as a learner, all at once, so that they catch up in parallel.
    if let Some(node) = desired.iter().find(|node| !membership.contains(node)) {
        return Some(Step::AddLearner { node: node.clone() });
    }
    // Promote in desired order (the desired leader first, so that it can take over early).
    let promotable = desired.iter().find(|node| membership.is_learner(node));
    let leaving: Vec<&String> = membership
        .voters
        .iter()
        .filter(|v| !is_desired(v))
        .collect();
    // Remove before promoting only above the desired size: a removal at or below it would cost
    // fault tolerance that promoting first keeps.
    let above_desired = membership.voters.len() > desired.len();
    if !leaving.is_empty() && (above_desired || promotable.is_none()) {
        return Some(remove_voter(state, &leaving, desired));
    }
    if let Some(node) = promotable {
        // So voters never exceed the desired members by more than one (MEMBERS_MAX relies on it).
        assert!(membership.voters.len() <= desired.len());
        return Some(Step::Promote { node: node.clone() });
    }
    assert!(leaving.is_empty() && membership.learners.is_empty());
    (state.leader != desired[0]).then(|| Step::TransferLeader {
        to: desired[0].clone(),
    })
}

/// Removes one leaving voter: followers first (smallest name first, to be deterministic), the
/// leader last and only after it has handed leadership to the desired leader.
fn remove_voter(state: &State, leaving: &[&String], desired: &[String]) -> Step {
    if let Some(node) = leaving.iter().filter(|node| ***node != state.leader).min() {
        return Step::Remove {
            node: (*node).clone(),
        };
    }
    // Only the leader leaves. We get here above the desired size or with nothing to promote, and
    // in both cases every desired member is already a voter, the desired leader included.
    assert!(
        state.membership.is_voter(&desired[0]),
        "the desired leader {} is not a voter yet",
        desired[0]
    );
    Step::TransferLeader {
        to: desired[0].clone(),
    }
}

fn assert_reached(state: &State, desired: &[String]) {
    let voters: HashSet<&String> = state.membership.voters.iter().collect();
    let wanted: HashSet<&String> = desired.iter().collect();
    assert_eq!(voters, wanted, "the plan ends at the desired voters");
    assert!(state.membership.learners.is_empty());
    assert_eq!(
        state.leader, desired[0],
        "the plan ends with the desired leader"
    );
}

fn validate_current(current: &Membership, leader: &str) -> Result<(), Error> {
    let count = current.voters.len() + current.learners.len();
    if count > MEMBERS_MAX {
        return Err(Error::MembershipTooLarge {
            count,
            max: MEMBERS_MAX,
        });
    }
    if current.voters.is_empty() {
        return Err(Error::NoVoters);
    }
    validate_unique(current.voters.iter().chain(&current.learners))?;
    if !current.is_voter(leader) {
        return Err(Error::LeaderNotVoter {
            leader: leader.to_owned(),
        });
    }
    Ok(())
}

fn validate_desired(desired: &[String]) -> Result<(), Error> {
    if desired.is_empty() {
        return Err(Error::DesiredEmpty);
    }
    if desired.len() > GROUP_SIZE_MAX {
        return Err(Error::DesiredTooLarge {
            size: desired.len(),
            max: GROUP_SIZE_MAX,
        });
    }
    validate_unique(desired)
}

fn validate_unique<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<(), Error> {
    let mut seen = HashSet::new();
    for name in names {
        validate_name(name)?;
        if !seen.insert(name) {
            return Err(Error::DuplicateNode { name: name.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    fn add(node: &str) -> Step {
        Step::AddLearner { node: node.into() }
    }
    fn promote(node: &str) -> Step {
        Step::Promote { node: node.into() }
    }
    fn remove(node: &str) -> Step {
        Step::Remove { node: node.into() }
    }
    fn transfer(to: &str) -> Step {
        Step::TransferLeader { to: to.into() }
    }

    #[test]
    fn in_place_group_needs_no_step() {
        let current = Membership::voters(["a", "b", "c"]);
        assert_eq!(plan(&current, "a", &names(&["a", "c", "b"])).unwrap(), []);
    }

    #[test]
    fn only_the_leader_differs() {
        let current = Membership::voters(["a", "b", "c"]);
        let steps = plan(&current, "a", &names(&["b", "a", "c"])).unwrap();
        assert_eq!(steps, [transfer("b")]);
    }

    /// A replacement adds before it removes: 3 → 4 → 3 voters, never 2.
    #[test]
    fn replacement_adds_before_it_removes() {
        let current = Membership::voters(["a", "b", "c"]);
        let steps = plan(&current, "a", &names(&["a", "b", "d"])).unwrap();
        assert_eq!(steps, [add("d"), promote("d"), remove("c")]);
    }

    /// The leader leaves: it hands leadership straight to the desired leader, then goes.
    #[test]
    fn leaving_leader_transfers_once() {
        let current = Membership::voters(["a", "b", "c"]);
        let steps = plan(&current, "a", &names(&["d", "b", "c"])).unwrap();
        assert_eq!(steps, [add("d"), promote("d"), transfer("d"), remove("a")]);
    }

    #[test]
    fn whole_group_moves_with_learners_added_first() {
        let current = Membership::voters(["a", "b", "c"]);
        let steps = plan(&current, "b", &names(&["x", "y", "z"])).unwrap();
        assert_eq!(
            steps,
            [
                add("x"),
                add("y"),
                add("z"),
                promote("x"),
                remove("a"),
                promote("y"),
                remove("c"),
                promote("z"),
                transfer("x"),
                remove("b"),
            ]
        );
    }

    /// Shrinking removes first while above the desired size.
    #[test]
    fn shrink_removes_while_above_desired_size() {
        let current = Membership::voters(["a", "b", "c", "d", "e"]);
        let steps = plan(&current, "e", &names(&["a", "b", "x"])).unwrap();
        assert_eq!(
            steps,
            [
                add("x"),
                remove("c"),
                remove("d"),
                promote("x"),
                transfer("a"),
                remove("e"),
            ]
        );
    }

    #[test]
    fn grow_promotes_until_desired_size() {
        let current = Membership::voters(["a"]);
        let steps = plan(&current, "a", &names(&["b", "a", "c"])).unwrap();
        assert_eq!(
            steps,
            [
                add("b"),
                add("c"),
                promote("b"),
                promote("c"),
                transfer("b")
            ]
        );
    }

    /// A single-member group can move: through two voters, both caught up.
    #[test]
    fn single_member_moves() {
        let current = Membership::voters(["a"]);
        let steps = plan(&current, "a", &names(&["b"])).unwrap();
        assert_eq!(steps, [add("b"), promote("b"), transfer("b"), remove("a")]);
    }

    #[test]
    fn stray_learners_go_first_and_wanted_learners_are_kept() {
        let current = Membership {
            voters: names(&["a", "b", "c"]),
            learners: names(&["old", "d"]),
        };
        let steps = plan(&current, "a", &names(&["a", "b", "d"])).unwrap();
        assert_eq!(steps, [remove("old"), promote("d"), remove("c")]);
    }

    /// Carrying out the first step and planning again gives the rest of the same plan.
    #[test]
    fn replanning_after_each_step_gives_the_rest() {
        let current = Membership {
            voters: names(&["a", "b", "c", "d"]),
            learners: names(&["e"]),
        };
        let desired = names(&["x", "e", "b"]);
        let steps = plan(&current, "b", &desired).unwrap();
        let mut state = State {
            membership: current,
            leader: "b".into(),
        };
        for (done, step) in steps.iter().enumerate() {
            state.apply(step);
            let rest = plan(&state.membership, &state.leader, &desired).unwrap();
            assert_eq!(rest, steps[done + 1..], "after {step}");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let current = Membership::voters(["a", "b"]);
        let desired = names(&["a"]);
        assert_eq!(
            plan(&Membership::default(), "a", &desired),
            Err(Error::NoVoters)
        );
        assert_eq!(
            plan(&current, "z", &desired),
            Err(Error::LeaderNotVoter { leader: "z".into() })
        );
        assert_eq!(plan(&current, "a", &[]), Err(Error::DesiredEmpty));
        assert_eq!(
            plan(&current, "a", &names(&["a", "a"])),
            Err(Error::DuplicateNode { name: "a".into() })
        );
        let duplicated = Membership {
            voters: names(&["a", "b"]),
            learners: names(&["b"]),
        };
        assert_eq!(
            plan(&duplicated, "a", &desired),
            Err(Error::DuplicateNode { name: "b".into() })
        );
        assert_eq!(
            plan(&current, "a", &names(&[""])),
            Err(Error::EmptyNodeName)
        );
        let too_many: Vec<String> = (0..=GROUP_SIZE_MAX).map(|i| format!("n{i}")).collect();
        assert_eq!(
            plan(&current, "a", &too_many),
            Err(Error::DesiredTooLarge {
                size: GROUP_SIZE_MAX + 1,
                max: GROUP_SIZE_MAX
            })
        );
        let huge = Membership::voters((0..=MEMBERS_MAX).map(|i| format!("n{i}")));
        assert_eq!(
            plan(&huge, "n0", &desired),
            Err(Error::MembershipTooLarge {
                count: MEMBERS_MAX + 1,
                max: MEMBERS_MAX
            })
        );
    }

    #[test]
    fn steps_display_for_status() {
        let shown: Vec<String> = [add("n4"), promote("n4"), transfer("n4"), remove("n1")]
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "add learner n4",
                "promote n4",
                "transfer leadership to n4",
                "remove n1"
            ]
        );
    }
}
