//! Leader completeness (thesis §3.6.3, Figure 3.2): if an entry is committed in a term, it is
//! present in the logs of the leaders of all higher terms.

use super::GroupHistory;
use crate::Replica;
use crate::types::GroupId;

/// `replica` just became leader: its log must hold every entry known committed.
pub fn on_leader(gh: &GroupHistory, g: GroupId, replica: &Replica) -> Result<(), String> {
    let from = replica.snapshot_meta().index;
    for (&index, &(term, _)) in gh.committed.range(from + 1..) {
        match replica.term_at(index) {
            Some(t) if t == term => {}
            other => {
                return Err(format!(
                    "leader completeness: {} leads {g} in term {} but holds {other:?} at committed index {index} (committed term {term})",
                    replica.id(),
                    replica.term()
                ));
            }
        }
    }
    Ok(())
}
