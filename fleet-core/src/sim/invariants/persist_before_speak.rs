//! Persist before you speak (thesis §3.8, DESIGN.md): a replica sends a vote only once the vote is
//! on disk, and acknowledges entries only once they are on disk. Checked at the moment each message
//! leaves, against what the node's disk holds durably.

use crate::message::{Body, Message};
use crate::sim::world::Host;
use crate::types::GroupId;

/// `host` is about to send `msg`.
pub(crate) fn check(host: &Host, g: GroupId, msg: &Message) -> Result<(), String> {
    let disk = &host.disk;
    match msg.body {
        Body::VoteResponse {
            pre_vote: false,
            granted: true,
        } => {
            let hs = disk.hard_state;
            if hs.term < msg.term || (hs.term == msg.term && hs.vote != Some(msg.to)) {
                return Err(format!(
                    "persist before speak: {} of {g} grants its vote in term {} to {} but its disk holds term {} vote {:?}",
                    msg.from, msg.term, msg.to, hs.term, hs.vote
                ));
            }
        }
        Body::AppendResponse {
            index,
            reject: false,
            ..
        } => {
            let snapshot_index = disk.snapshot.as_ref().map_or(0, |s| s.meta.index);
            let last = disk.entries.last().map_or(snapshot_index, |e| e.index);
            if index > last {
                return Err(format!(
                    "persist before speak: {} of {g} acknowledges index {index} but its disk holds entries only up to {last}",
                    msg.from
                ));
            }
            // The entry acknowledged is the one the replica held when it wrote the message: compare
            // with its log only while it is still in the message's term (an ack written in an
            // older term may leave after a newer leader overwrote the entry in memory; the ack is
            // still true of the disk, and its receiver is deposed).
            if let (Some(replica), Some(on_disk)) = (
                host.replica.as_ref().filter(|r| r.term() == msg.term),
                disk.entries.iter().find(|e| e.index == index),
            ) && replica.term_at(index).is_some_and(|t| t != on_disk.term)
            {
                return Err(format!(
                    "persist before speak: {} of {g} acknowledges index {index} of term {:?} but its disk holds term {} there",
                    msg.from,
                    replica.term_at(index),
                    on_disk.term
                ));
            }
        }
        _ => {}
    }
    Ok(())
}
