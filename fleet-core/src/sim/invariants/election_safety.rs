//! Election safety (thesis §3.6.3, Figure 3.2): at most one leader can be elected in a term.

use super::GroupHistory;
use crate::ready::Role;
use crate::sim::world::World;
use crate::types::{GroupId, ReplicaId, Term};

/// A replica just became leader of `term`.
pub fn on_leader(
    gh: &mut GroupHistory,
    g: GroupId,
    id: ReplicaId,
    term: Term,
) -> Result<(), String> {
    match gh.leaders.get(&term) {
        Some(other) if *other != id => Err(format!(
            "election safety: {g} has two leaders in term {term}: {other} and {id}"
        )),
        _ => {
            gh.leaders.insert(term, id);
            Ok(())
        }
    }
}

/// No two replicas lead the same term right now.
pub(crate) fn check(world: &World) -> Result<(), String> {
    for node in &world.nodes {
        for (g, host) in &node.hosts {
            let Some(r) = host.replica.as_ref() else {
                continue;
            };
            if r.role() != Role::Leader {
                continue;
            }
            if let Some(gh) = world.history.groups.get(g)
                && let Some(other) = gh.leaders.get(&r.term())
                && *other != r.id()
            {
                return Err(format!(
                    "election safety: {g} has two leaders in term {}: {other} and {}",
                    r.term(),
                    r.id()
                ));
            }
        }
    }
    Ok(())
}
