//! Exactly once (thesis §6.3): a command retried by its client is applied at most once; the retry
//! is answered from the session table.

use crate::sim::world::Host;
use crate::types::{GroupId, SessionRef};

/// Node `n` applied the command of session `s` (not as a duplicate) into `host`'s state.
pub(crate) fn on_apply(
    host: &mut Host,
    g: GroupId,
    n: usize,
    s: &SessionRef,
) -> Result<(), String> {
    if !host.markers.insert((s.client_id, s.seq)) {
        return Err(format!(
            "duplicate application: node {n} applied command {} of client {} to {g} a second time",
            s.seq, s.client_id
        ));
    }
    Ok(())
}
