//! State machine safety (thesis §3.6.3, Figure 3.2): if a server has applied a log entry at a given
//! index to its state machine, no other server will ever apply a different entry for that index.

use super::{History, entry_hash};
use crate::types::{Entry, GroupId};

/// Node `n` applies `entry`.
pub fn on_apply(history: &mut History, g: GroupId, n: usize, entry: &Entry) -> Result<(), String> {
    let gh = history.groups.entry(g).or_default();
    let hash = entry_hash(entry);
    match gh.applied.get(&entry.index) {
        Some(&(term, h)) if h != hash => Err(format!(
            "state machine safety: node {n} applies {g} index {} term {} but term {term} was applied there before",
            entry.index, entry.term
        )),
        Some(_) => Ok(()),
        None => {
            gh.applied.insert(entry.index, (entry.term, hash));
            Ok(())
        }
    }
}
