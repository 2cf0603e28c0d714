//! Linearizable reads (thesis §6.4): a read-index read sees every write acknowledged before it was
//! issued.

use crate::sim::world::parse_markers;

/// A read of a key returned `value`; `acked` are the writes to it acknowledged before the read.
pub fn check(value: &[u8], acked: &[(u64, u64)], issued_at: u64, ctx: u64) -> Result<(), String> {
    let seen: std::collections::HashSet<(u64, u64)> = parse_markers(value).collect();
    if let Some(missing) = acked.iter().find(|m| !seen.contains(m)) {
        return Err(format!(
            "stale read: read {ctx} issued at {issued_at}ms misses write {missing:?} acknowledged before it"
        ));
    }
    Ok(())
}
