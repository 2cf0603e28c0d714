//! Plans: for every pair of memberships proptest generates (arbitrary ones, and pairs of
//! placements of the same group on two layouts), a model of the group follows the plan and checks
//! after every step that it is valid, keeps a quorum of caught-up voters of the larger
//! configuration, and keeps the fault tolerance that the sizes allow.

use std::collections::BTreeSet;

use placement::{GROUP_SIZE_MAX, GroupId, Membership, Step, plan};
use proptest::prelude::*;

use crate::support::{arb_key, arb_layout, place_ids};

/// A group as the model sees it.
#[derive(Debug, Clone)]
struct Group {
    voters: BTreeSet<String>,
    learners: BTreeSet<String>,
    /// Voters known to hold the log: the voters at the start, and learners once promoted (the
    /// runtime promotes a learner only when it has caught up). A learner is never caught up here,
    /// so a plan that counted one in a quorum would fail.
    caught_up: BTreeSet<String>,
    leader: String,
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Failures a configuration of `voters` voters survives.
fn tolerance(voters: usize) -> usize {
    voters.saturating_sub(1) / 2
}

impl Group {
    fn new(current: &Membership, leader: &str) -> Self {
        Group {
            voters: current.voters.iter().cloned().collect(),
            learners: current.learners.iter().cloned().collect(),
            caught_up: current.voters.iter().cloned().collect(),
            leader: leader.to_owned(),
        }
    }

    /// Carries out one step, checking that it is valid in the current state.
    fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match step {
            Step::AddLearner { node } => {
                prop_assert!(!self.voters.contains(node) && !self.learners.contains(node));
                self.learners.insert(node.clone());
            }
            Step::Promote { node } => {
                // A learner is promoted once it has caught up. Promoting anything else makes a
                // voter with an empty log, which `check_plan` looks at after the quorum checks.
                if self.learners.remove(node) {
                    self.caught_up.insert(node.clone());
                }
                self.voters.insert(node.clone());
            }
            Step::TransferLeader { to } => {
                prop_assert!(self.voters.contains(to), "leadership to non-voter {}", to);
                prop_assert!(self.caught_up.contains(to));
                prop_assert_ne!(&self.leader, to);
                self.leader.clone_from(to);
            }
            Step::Remove { node } => {
                prop_assert_ne!(&self.leader, node, "the leader removed itself");
                let was_member = self.voters.remove(node) | self.learners.remove(node);
                prop_assert!(was_member, "removed {} is no member", node);
                self.caught_up.remove(node);
            }
        }
        Ok(())
    }

    fn caught_up_voters(&self, voters: &BTreeSet<String>) -> usize {
        voters.intersection(&self.caught_up).count()
    }
}

/// Follows `steps` from `current` and checks every invariant the plan promises.
fn check_plan(
    current: &Membership,
    leader: &str,
    desired: &[String],
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let mut group = Group::new(current, leader);
    let start = group.voters.len();
    let floor = start.min(desired.len());
    let mut transfers = 0;
    for step in steps {
        let before = group.clone();
        group.apply(step)?;
        transfers += usize::from(matches!(step, Step::TransferLeader { .. }));
        // While the change is in flight both configurations may decide: the voters of either
        // that hold the log must make a quorum of the larger one. Once it is done, the new
        // configuration must have a caught-up quorum on its own, without the voter it removed.
        // (A removed voter still holds the log while its removal is in flight.)
        let larger = before.voters.len().max(group.voters.len());
        let both: BTreeSet<&String> = before.voters.union(&group.voters).collect();
        let holding = both
            .iter()
            .filter(|node| before.caught_up.contains(**node) || group.caught_up.contains(**node))
            .count();
        prop_assert!(
            holding >= quorum(larger),
            "after {}: {} caught-up voters for a configuration of {}",
            step,
            holding,
            larger
        );
        prop_assert!(group.caught_up_voters(&group.voters) >= quorum(group.voters.len()));
        if let Step::Promote { node } = step {
            prop_assert!(
                before.learners.contains(node),
                "promoted {}, no learner",
                node
            );
        }
        prop_assert!(!group.voters.is_empty());
        prop_assert!(group.voters.contains(&group.leader));
        // Fault tolerance: never fewer voters than both ends of the move have, so the group
        // tolerates as many failures throughout as at its worse end.
        prop_assert!(
            group.voters.len() >= floor,
            "after {}: {} voters, below min({}, {})",
            step,
            group.voters.len(),
            start,
            desired.len()
        );
        prop_assert!(
            tolerance(group.voters.len()) >= tolerance(start).min(tolerance(desired.len()))
        );
        prop_assert!(
            group.voters.len() <= start.max(desired.len() + 1),
            "peak too high"
        );
    }
    let wanted: BTreeSet<String> = desired.iter().cloned().collect();
    prop_assert_eq!(
        &group.voters,
        &wanted,
        "the plan ends at the desired voters"
    );
    prop_assert!(group.learners.is_empty());
    prop_assert_eq!(
        &group.leader,
        &desired[0],
        "the plan ends with the desired leader"
    );
    prop_assert!(transfers <= 1, "{} leadership transfers", transfers);
    Ok(())
}

/// Carrying out a prefix of the plan and planning again gives the rest of the same plan: a
/// reconciler that re-plans after every step follows one consistent path.
fn check_replanning(
    current: &Membership,
    leader: &str,
    desired: &[String],
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let mut group = Group::new(current, leader);
    for (done, step) in steps.iter().enumerate() {
        group.apply(step)?;
        let membership = Membership {
            voters: group.voters.iter().cloned().collect(),
            learners: group.learners.iter().cloned().collect(),
        };
        let rest = plan(&membership, &group.leader, desired).unwrap();
        prop_assert_eq!(&rest[..], &steps[done + 1..], "re-planned after {}", step);
    }
    Ok(())
}

/// Nodes `n0` to `n13`.
fn universe() -> Vec<String> {
    (0..14).map(|i| format!("n{i}")).collect()
}

/// Any valid input to `plan`: voters, learners, a leader among the voters, desired members.
fn arb_plan_input() -> impl Strategy<Value = (Membership, String, Vec<String>)> {
    let universe = universe();
    let shuffled = Just(universe.clone()).prop_shuffle();
    (
        shuffled,
        1..=GROUP_SIZE_MAX,
        0..=4usize,
        any::<prop::sample::Index>(),
        prop::sample::subsequence(universe, 1..=GROUP_SIZE_MAX).prop_shuffle(),
    )
        .prop_map(|(nodes, voters, learners, leader, desired)| {
            let current = Membership {
                voters: nodes[..voters].to_vec(),
                learners: nodes[voters..voters + learners].to_vec(),
            };
            let leader = current.voters[leader.index(voters)].clone();
            (current, leader, desired)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plans_keep_quorum_and_tolerance((current, leader, desired) in arb_plan_input()) {
        let steps = plan(&current, &leader, &desired).unwrap();
        check_plan(&current, &leader, &desired, &steps)?;
        check_replanning(&current, &leader, &desired, &steps)?;
    }

    /// The pairs the runtime really meets: the same group placed on two layouts (nodes that come,
    /// go, drain), with the current leader any of its members.
    #[test]
    fn plans_between_placements_keep_quorum_and_tolerance(
        key in arb_key(),
        before in arb_layout(4, 4),
        after in arb_layout(4, 4),
        group in any::<u64>(),
        size in 1..=7usize,
        leader in any::<prop::sample::Index>(),
    ) {
        let voters = place_ids(key, &before, [GroupId(group)], size).groups[&GroupId(group)].clone();
        let desired = place_ids(key, &after, [GroupId(group)], size).groups[&GroupId(group)].clone();
        let leader = voters[leader.index(voters.len())].clone();
        let current = Membership::voters(voters);
        let steps = plan(&current, &leader, &desired).unwrap();
        check_plan(&current, &leader, &desired, &steps)?;
    }
}

/// The checker must be able to fail: removing before adding costs a 3-member group its fault
/// tolerance; a voter added without a learner phase leaves a 1-member group without a caught-up
/// quorum; and the end state must be the desired one.
#[test]
fn the_checker_rejects_bad_plans() {
    let current = Membership::voters(["a", "b", "c"]);
    let desired: Vec<String> = ["a", "b", "d"].map(String::from).to_vec();
    let remove_first = [
        Step::Remove { node: "c".into() },
        Step::AddLearner { node: "d".into() },
        Step::Promote { node: "d".into() },
    ];
    expect_failure(&current, "a", &desired, &remove_first, "below min");
    let stops_early = [Step::AddLearner { node: "d".into() }];
    expect_failure(&current, "a", &desired, &stops_early, "desired voters");

    let single = Membership::voters(["a"]);
    let moved: Vec<String> = vec!["b".into()];
    let no_learner = [
        Step::Promote { node: "b".into() },
        Step::TransferLeader { to: "b".into() },
        Step::Remove { node: "a".into() },
    ];
    expect_failure(&single, "a", &moved, &no_learner, "caught-up voters");

    let good = plan(&current, "a", &desired).unwrap();
    assert!(check_plan(&current, "a", &desired, &good).is_ok());
}

fn expect_failure(
    current: &Membership,
    leader: &str,
    desired: &[String],
    steps: &[Step],
    why: &str,
) {
    let failure = check_plan(current, leader, desired, steps).expect_err("a bad plan passed");
    assert!(
        failure.to_string().contains(why),
        "failed for another reason: {failure}"
    );
}
