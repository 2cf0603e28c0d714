//! Log matching (thesis §3.5, Figure 3.2): if two logs contain an entry with the same index and
//! term, the logs are identical in all entries up through that index.
//!
//! Checked inductively on every entry any replica writes: an `(index, term)` always carries the
//! same entry and always follows the same term at `index - 1`.

use super::{GroupHistory, entry_hash};
use crate::Replica;
use crate::types::{Entry, GroupId};

/// A replica is about to persist `entries`.
pub fn on_entries(
    gh: &mut GroupHistory,
    g: GroupId,
    replica: &Replica,
    entries: &[Entry],
) -> Result<(), String> {
    for e in entries {
        let prev_term = replica.term_at(e.index - 1);
        let hash = entry_hash(e);
        match gh.entries.get(&(e.index, e.term)) {
            Some(&(h, p)) => {
                if h != hash {
                    return Err(format!(
                        "log matching: {g} entry ({}, term {}) on {} differs from the one seen before: {e:?}",
                        e.index,
                        e.term,
                        replica.id()
                    ));
                }
                if let (Some(p), Some(q)) = (p, prev_term)
                    && p != q
                {
                    return Err(format!(
                        "log matching: {g} entry ({}, term {}) on {} follows term {q}, elsewhere term {p}",
                        e.index,
                        e.term,
                        replica.id()
                    ));
                }
            }
            None => {
                gh.entries.insert((e.index, e.term), (hash, prev_term));
            }
        }
    }
    Ok(())
}
