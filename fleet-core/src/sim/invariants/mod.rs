//! The simulator's invariants, one per file. Each returns `Err` with context when broken.
//!
//! Safety (thesis Figure 3.2): election safety, log matching, leader completeness, state machine
//! safety; plus committed entries never change, term / vote / commit / applied never go back, no
//! command is applied twice, and linearizable reads see every acknowledged write.

use std::collections::{BTreeMap, HashMap};

use crate::Replica;
use crate::ready::{Ready, Role};
use crate::types::{Entry, GroupId, HardState, Index, ReplicaId, Term};

use super::world::World;

pub mod committed_stable;
pub mod election_safety;
pub mod leader_completeness;
pub mod log_matching;
pub mod monotonic;
pub mod no_duplicate_apply;
pub mod persist_before_speak;
pub mod read_safety;
pub mod state_machine_safety;

/// What the checkers remember of one group.
#[derive(Default, Debug)]
pub struct GroupHistory {
    /// The leader of each term.
    pub leaders: BTreeMap<Term, ReplicaId>,
    /// Every entry known committed: index -> (term, hash).
    pub committed: BTreeMap<Index, (Term, u64)>,
    /// Every entry ever written: (index, term) -> (hash, term of the entry before it).
    pub entries: HashMap<(Index, Term), (u64, Option<Term>)>,
    /// The first entry applied at each index: (term, hash).
    pub applied: BTreeMap<Index, (Term, u64)>,
}

/// What the checkers remember of one replica's life.
#[derive(Default, Debug, Clone, Copy)]
pub struct Life {
    /// The highest term seen in this life.
    pub term: Term,
    /// The vote seen with it.
    pub vote: Option<ReplicaId>,
    /// The highest commit index seen.
    pub commit: Index,
    /// The highest applied index seen.
    pub applied: Index,
}

/// Everything the checkers remember.
#[derive(Default, Debug)]
pub struct History {
    /// Per group.
    pub groups: BTreeMap<GroupId, GroupHistory>,
    /// Per replica: its in-memory state in the current life.
    pub lives: BTreeMap<(GroupId, ReplicaId), Life>,
    /// Per replica: its durable hard state.
    pub durable: BTreeMap<(GroupId, ReplicaId), HardState>,
}

/// A stable hash of an entry (FNV-1a over its encoding).
pub fn entry_hash(entry: &Entry) -> u64 {
    let bytes = postcard::to_stdvec(entry).expect("entries encode");
    bytes.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3)
    })
}

/// Checks what a replica just handed out.
pub(crate) fn observe_ready(
    history: &mut History,
    g: GroupId,
    replica: &Replica,
    rd: &Ready,
) -> Result<(), String> {
    let gh = history.groups.entry(g).or_default();
    if let Some(ss) = rd.soft_state
        && ss.role == Role::Leader
    {
        election_safety::on_leader(gh, g, replica.id(), ss.term)?;
        leader_completeness::on_leader(gh, g, replica)?;
    }
    log_matching::on_entries(gh, g, replica, &rd.entries)?;
    committed_stable::on_ready(gh, g, replica)?;
    Ok(())
}

/// Checks run after every step.
pub(crate) fn check_step(world: &mut World) -> Result<(), String> {
    election_safety::check(world)?;
    monotonic::check(world)?;
    Ok(())
}
