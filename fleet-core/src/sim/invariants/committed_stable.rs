//! Committed entries never change: once any replica knows an entry committed, every replica that
//! knows its index committed holds the same entry there, forever.

use super::{GroupHistory, entry_hash};
use crate::Replica;
use crate::types::GroupId;

/// Compares the committed part of `replica`'s log with what is known committed.
pub fn on_ready(gh: &mut GroupHistory, g: GroupId, replica: &Replica) -> Result<(), String> {
    let first = replica.first_index();
    for index in first..=replica.committed() {
        let entry = replica.entry(index).expect("committed entry in log");
        let hash = entry_hash(entry);
        match gh.committed.get(&index) {
            Some(&(term, h)) if term != entry.term || h != hash => {
                return Err(format!(
                    "committed entry changed: {g} index {index} was committed with term {term}, {} now holds term {} there",
                    replica.id(),
                    entry.term
                ));
            }
            Some(_) => {}
            None => {
                gh.committed.insert(index, (entry.term, hash));
            }
        }
    }
    Ok(())
}
