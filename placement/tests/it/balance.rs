//! Balance: members and desired leaders per node, over layouts whose zones hold equal numbers of
//! nodes (with unequal zones, the nodes of a small zone rightly get more members: zone spread
//! comes first).
//!
//! Why two tests. Rendezvous hashing places every group independently, so a node's member count
//! is binomial: with 10,000 groups of 3 over 30 nodes, the issue's bound of 10% of the mean is
//! about 3.3 standard deviations, and its 15% for desired leaders about 2.8. Over 300 random
//! cluster keys (measured while writing this), 30 nodes broke the members bound for about 2% of
//! the keys and the leaders bound for 15%. So the issue's bounds are checked, exactly as stated,
//! for the fixed test key over every layout in its range; and a property test checks, for any key
//! and any node names, that the counts are as tight as independent placement allows (a hash that
//! correlated nodes or groups would fail it).

use placement::{GroupId, Node, NodeState, Summary};
use proptest::prelude::*;

use crate::support::{KEY, arb_key, equal_layout, equal_layouts, place_groups, place_ids};

const GROUPS: u64 = 10_000;
const SIZE: usize = 3;

/// The issue's requirement: 10,000 groups of size 3 over 3 to 30 nodes in 1 to 5 zones of equal
/// sizes; every node's members within 10% of the mean, desired leaders within 15%.
#[test]
fn every_equal_layout_is_balanced_within_the_issue_bounds() {
    let mut worst = (0.0_f64, 0.0_f64);
    for (zones, per_zone) in equal_layouts() {
        let nodes = equal_layout(zones, per_zone);
        let summary = Summary::new(&nodes, &place_groups(KEY, &nodes, GROUPS, SIZE)).unwrap();
        let (members, leaders) = deviations(&summary, nodes.len());
        assert!(
            members <= 0.10,
            "{zones} zones of {per_zone}: a node's members are {:.1}% off the mean",
            members * 100.0
        );
        assert!(
            leaders <= 0.15,
            "{zones} zones of {per_zone}: a node's desired leaders are {:.1}% off the mean",
            leaders * 100.0
        );
        worst = (worst.0.max(members), worst.1.max(leaders));
    }
    println!(
        "worst deviation from the mean: members {:.1}%, desired leaders {:.1}%",
        worst.0 * 100.0,
        worst.1 * 100.0
    );
}

/// The largest relative deviation from the mean, over all nodes, of members and of desired leaders.
fn deviations(summary: &Summary, nodes: usize) -> (f64, f64) {
    let members_mean = summary.members as f64 / nodes as f64;
    let leaders_mean = summary.groups as f64 / nodes as f64;
    let worst = |count: fn(&placement::Load) -> usize, mean: f64| {
        summary
            .nodes
            .values()
            .map(|load| (count(load) as f64 / mean - 1.0).abs())
            .fold(0.0, f64::max)
    };
    (
        worst(|load| load.members, members_mean),
        worst(|load| load.leaders, leaders_mean),
    )
}

/// Each node's members and desired leaders are within 5.5 standard deviations of the binomial
/// mean of independent placement (a correct placement fails this less than once in ten million
/// runs of a test case).
fn check_binomial(summary: &Summary, nodes: usize) -> Result<(), TestCaseError> {
    let groups = summary.groups as f64;
    let p_member = (SIZE as f64 / nodes as f64).min(1.0);
    let p_leader = 1.0 / nodes as f64;
    for (node, load) in &summary.nodes {
        for (count, p, what) in [
            (load.members, p_member, "members"),
            (load.leaders, p_leader, "desired leaders"),
        ] {
            let mean = groups * p;
            let deviation_max = 5.5 * (groups * p * (1.0 - p)).sqrt();
            prop_assert!(
                (count as f64 - mean).abs() <= deviation_max,
                "{} has {} {}, mean {:.0}, allowed deviation {:.0}",
                node,
                count,
                what,
                mean,
                deviation_max
            );
        }
    }
    Ok(())
}

proptest! {
    // Each case places 10,000 groups: a few cases keep the suite fast.
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Any key, any node names, any equal layout, any block of group ids.
    #[test]
    fn any_key_balances_like_independent_placement(
        key in arb_key(),
        (zones, per_zone) in (1..=5usize).prop_flat_map(|zones| (Just(zones), 1..=30 / zones)),
        prefix in "[a-z]{1,8}",
        first_group in 0..u64::MAX / 2,
    ) {
        prop_assume!(zones * per_zone >= SIZE);
        let nodes: Vec<Node> = equal_layout(zones, per_zone)
            .into_iter()
            .map(|node| Node { name: format!("{prefix}{}", node.name), ..node })
            .collect();
        let groups = (first_group..first_group + GROUPS).map(GroupId);
        let summary = Summary::new(&nodes, &place_ids(key, &nodes, groups, SIZE)).unwrap();
        check_binomial(&summary, nodes.len())?;
    }
}

/// Both checks must be able to fail: a placement that puts every group on three of ten nodes
/// is far outside them.
#[test]
fn the_checks_reject_a_skewed_placement() {
    let nodes = equal_layout(1, 10);
    let mut skewed = nodes.clone();
    for node in &mut skewed[3..] {
        node.state = NodeState::Draining;
    }
    let placements = place_groups(KEY, &skewed, GROUPS, SIZE);
    let summary = Summary::new(&nodes, &placements).unwrap();
    let (members, leaders) = deviations(&summary, nodes.len());
    assert!(
        members > 0.10 && leaders > 0.15,
        "skew unseen: {members} {leaders}"
    );
    assert!(check_binomial(&summary, nodes.len()).is_err());
}
