//! The settings of a replica, with their bounds.

use crate::Error;
use crate::types::ReplicaId;

/// The settings of one replica. Every queue, window and batch has a bound here.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's id.
    pub id: ReplicaId,
    /// The lower end of the randomized election timeout; the timeout is drawn from
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)` (thesis §3.4). Also the check-quorum
    /// period of a leader and the length of a follower's lease on its leader.
    pub election_timeout_ticks: u32,
    /// Ticks between a leader's heartbeats. Must be well below the election timeout.
    pub heartbeat_interval_ticks: u32,
    /// Ask for pre-votes before starting an election (thesis §9.6), so a partitioned replica
    /// that comes back does not disrupt the group.
    pub pre_vote: bool,
    /// A leader that hears from no quorum for an election timeout steps down, and a follower that
    /// hears from its leader ignores vote requests (thesis §6.2, §4.2.3).
    pub check_quorum: bool,
    /// Serve `read_index` from the leader's lease, without a heartbeat round, while a quorum
    /// acknowledged it recently (thesis §6.4.1). Relies on bounded clock drift between nodes: the
    /// lease is `(election_timeout_ticks - 1) * 4 / 5` ticks from the start of the confirming
    /// round, safe while any node's ticks run at most 25% slower than another's (a leader whose
    /// ticks stall keeps its lease longer in real time; keep this off where that can happen).
    pub lease_reads: bool,
    /// Ticks a leader must be idle (no proposal, no read, everyone caught up) before it quiesces
    /// the group. 0 never quiesces.
    pub quiesce_after_ticks: u32,
    /// Appends in flight to one follower (pipelining window, thesis §10.2.2).
    pub inflight_messages_max: usize,
    /// Bytes of entries in flight to one follower.
    pub inflight_bytes_max: usize,
    /// Entries in one append message.
    pub append_entries_max: usize,
    /// Bytes of entries in one append message (at least one entry is always sent).
    pub append_bytes_max: usize,
    /// Bytes of entries a leader holds uncommitted before it refuses proposals with `Busy`.
    pub uncommitted_bytes_max: usize,
    /// The size of one entry's command.
    pub entry_bytes_max: usize,
    /// Reads waiting for confirmation.
    pub pending_reads_max: usize,
    /// Bytes of one snapshot chunk.
    pub snapshot_chunk_bytes_max: usize,
    /// Bytes of a whole snapshot a follower accepts.
    pub snapshot_bytes_max: u64,
    /// Ticks a leadership transfer may take before it is abandoned and proposals flow again.
    pub transfer_timeout_ticks: u32,
    /// How far behind the leader's last index a learner may be and still be promoted.
    pub learner_catchup_lag_max: u64,
    /// Bytes of committed entries handed out in one Ready.
    pub apply_batch_bytes_max: usize,
    /// Deliberately broken protocol variants, only for the test that proves the simulator can
    /// catch them.
    #[cfg(feature = "broken-variants")]
    #[doc(hidden)]
    pub broken: Broken,
}

/// Deliberately broken protocol variants (feature `broken-variants`, tests only).
#[cfg(feature = "broken-variants")]
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Broken {
    /// Send vote grants before the vote is durable.
    pub vote_before_persist: bool,
    /// Commit entries of previous terms by counting replicas (the thesis' Figure 3.7 bug).
    pub commit_previous_term: bool,
    /// Grant votes without checking that the candidate's log is up to date (§3.6.1).
    pub skip_log_check: bool,
    /// Allow a membership change before the previous one is committed.
    pub concurrent_membership: bool,
}

impl Config {
    /// The defaults of DESIGN.md section 6 for replica `id`: heartbeat 10 ticks, election timeout
    /// in [100, 200) ticks, quiesce after 20 idle ticks.
    pub fn new(id: ReplicaId) -> Self {
        Config {
            id,
            election_timeout_ticks: 100,
            heartbeat_interval_ticks: 10,
            pre_vote: true,
            check_quorum: true,
            lease_reads: false,
            quiesce_after_ticks: 20,
            inflight_messages_max: 256,
            inflight_bytes_max: 8 << 20,
            append_entries_max: 1024,
            append_bytes_max: 1 << 20,
            uncommitted_bytes_max: 32 << 20,
            entry_bytes_max: 4 << 20,
            pending_reads_max: 4096,
            snapshot_chunk_bytes_max: 1 << 20,
            snapshot_bytes_max: 1 << 30,
            transfer_timeout_ticks: 100,
            learner_catchup_lag_max: 64,
            apply_batch_bytes_max: 4 << 20,
            #[cfg(feature = "broken-variants")]
            broken: Broken::default(),
        }
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: &str| Err(Error::ConfigInvalid(why.to_string()));
        if self.heartbeat_interval_ticks == 0 {
            return bad("heartbeat_interval_ticks must be at least 1");
        }
        if self.election_timeout_ticks <= 2 * self.heartbeat_interval_ticks {
            return bad("election_timeout_ticks must exceed twice heartbeat_interval_ticks");
        }
        if self.lease_reads && !self.check_quorum {
            return bad(
                "lease_reads needs check_quorum (the lease rests on followers refusing votes)",
            );
        }
        if self.inflight_messages_max == 0 || self.append_entries_max == 0 {
            return bad("inflight_messages_max and append_entries_max must be at least 1");
        }
        if self.snapshot_chunk_bytes_max == 0 {
            return bad("snapshot_chunk_bytes_max must be at least 1");
        }
        if self.transfer_timeout_ticks == 0 {
            return bad("transfer_timeout_ticks must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_settings_are_named() {
        let id = ReplicaId::new(1, 0);
        Config::new(id).validate().unwrap();
        let mut c = Config::new(id);
        c.election_timeout_ticks = 15;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("election_timeout_ticks")
        );
        let mut c = Config::new(id);
        c.check_quorum = false;
        c.lease_reads = true;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("lease_reads needs check_quorum")
        );
        let mut c = Config::new(id);
        c.heartbeat_interval_ticks = 0;
        assert!(c.validate().is_err());
    }
}
