//! Term, vote, commit and applied never go back: within a replica's life for its in-memory state,
//! and across crashes for its durable hard state (thesis Figure 3.1: term and vote are persistent).

use crate::sim::world::World;
use crate::types::GroupId;

use super::Life;

/// After every step: in-memory state only moves forward.
pub(crate) fn check(world: &mut World) -> Result<(), String> {
    for node in &world.nodes {
        for (g, host) in &node.hosts {
            let Some(r) = host.replica.as_ref() else {
                continue;
            };
            let key = (*g, r.id());
            let life = world.history.lives.entry(key).or_default();
            let now = Life {
                term: r.term(),
                vote: r.vote(),
                commit: r.committed(),
                applied: r.applied_index(),
            };
            if now.term < life.term {
                return Err(format!(
                    "term went back on {} of {g}: {} -> {}",
                    r.id(),
                    life.term,
                    now.term
                ));
            }
            if now.term == life.term && life.vote.is_some() && now.vote != life.vote {
                return Err(format!(
                    "vote changed within term {} on {} of {g}: {:?} -> {:?}",
                    now.term,
                    r.id(),
                    life.vote,
                    now.vote
                ));
            }
            if now.commit < life.commit {
                return Err(format!(
                    "commit went back on {} of {g}: {} -> {}",
                    r.id(),
                    life.commit,
                    now.commit
                ));
            }
            if now.applied < life.applied {
                return Err(format!(
                    "applied went back on {} of {g}: {} -> {}",
                    r.id(),
                    life.applied,
                    now.applied
                ));
            }
            *life = now;
        }
    }
    Ok(())
}

/// A node crashed: its replicas start new lives.
pub(crate) fn on_crash(world: &mut World, n: usize) {
    for (g, host) in &world.nodes[n].hosts {
        world.history.lives.remove(&(*g, host.id));
    }
}

/// A write became durable on node `n` for group `g`: the durable hard state only moves forward.
pub(crate) fn on_durable(world: &mut World, n: usize, g: GroupId) -> Result<(), String> {
    let host = &world.nodes[n].hosts[&g];
    let hs = host.disk.hard_state;
    let key = (g, host.id);
    if let Some(before) = world.history.durable.get(&key) {
        if hs.term < before.term {
            return Err(format!(
                "durable term went back on {} of {g}: {} -> {}",
                host.id, before.term, hs.term
            ));
        }
        if hs.term == before.term && before.vote.is_some() && hs.vote != before.vote {
            return Err(format!(
                "durable vote changed within term {} on {} of {g}: {:?} -> {:?}",
                hs.term, host.id, before.vote, hs.vote
            ));
        }
        if hs.commit < before.commit {
            return Err(format!(
                "durable commit went back on {} of {g}: {} -> {}",
                host.id, before.commit, hs.commit
            ));
        }
    }
    world.history.durable.insert(key, hs);
    Ok(())
}
