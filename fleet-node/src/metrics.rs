//! The names of the node's metrics, in one place, and their descriptions.
//!
//! The node loop records with the [`metrics`] crate's macros and these constants
//! (`metrics::counter!(crate::metrics::ELECTIONS_TOTAL).increment(1)`); the admin endpoint
//! ([`crate::admin`]) installs a Prometheus recorder and serves them at `GET /metrics`.
//!
//! **The names are an interface**: dashboards and alerts are written against them. Rename one only
//! with a release note, never casually. Every name starts with `fleet_`; counters end in `_total`;
//! a unit, when there is one, is the last word before it (`_seconds`, `_entries`), as Prometheus'
//! naming practice asks.
//!
//! | name | kind | what it counts |
//! |---|---|---|
//! | `fleet_build_info{version}` | gauge | always 1; the labels say which build runs |
//! | `fleet_groups_hosted` | gauge | replicas of groups (the meta group included) hosted on this node |
//! | `fleet_groups_leading` | gauge | groups whose replica on this node is the leader |
//! | `fleet_elections_total` | counter | elections (campaigns, pre-votes excluded) started by replicas here |
//! | `fleet_proposals_total` | counter | commands proposed by leaders on this node |
//! | `fleet_entries_applied_total` | counter | committed entries applied to state machines here |
//! | `fleet_apply_lag_entries` | gauge | entries committed but not yet applied, summed over hosted groups |
//! | `fleet_storage_batch_entries` | histogram | log entries made durable by one storage commit (group commit size) |
//! | `fleet_storage_fsync_seconds` | histogram | duration of one storage commit, fsync included |
//! | `fleet_storage_journal_restarts_total` | counter | durable database commits after which the commit journal started over |
//! | `fleet_storage_wal_bytes` | gauge | write-ahead bytes not yet checkpointed into the segments: what the next open replays (at most `wal_bytes_max`) |
//! | `fleet_storage_batches_deferred_total` | counter | journaled batches whose redb writes waited for a later transaction while more requests queued |
//! | `fleet_storage_journal_full_total` | counter | batches that found the commit journal full and synced the database instead (a durable redb commit) |
//! | `fleet_admin_requests_total{path}` | counter | requests the admin endpoint answered |
//!
//! The transport adds its per-peer figures, labelled `peer`, under `fleet_transport_*`
//! (bytes and frames sent and received, messages dropped, reconnects, round-trip time,
//! connected, pending bytes, rejected connections).
//!
//! A process has one metrics recorder, so nodes that share a process (tests, the `counter`
//! example) share these series; a daemon runs one node per process.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Always 1, labelled `version` (the crate version): which build a node runs.
pub const BUILD_INFO: &str = "fleet_build_info";
/// Gauge: replicas of groups, the meta group included, hosted on this node.
pub const GROUPS_HOSTED: &str = "fleet_groups_hosted";
/// Gauge: groups whose replica on this node is the leader.
pub const GROUPS_LEADING: &str = "fleet_groups_leading";
/// Counter: elections started by replicas on this node (a replica that becomes a candidate;
/// pre-vote rounds that fail are not counted).
pub const ELECTIONS_TOTAL: &str = "fleet_elections_total";
/// Counter: commands proposed by leaders on this node (retries answered from a session included).
pub const PROPOSALS_TOTAL: &str = "fleet_proposals_total";
/// Counter: commands followers on this node handed to their leaders inside the Raft traffic
/// (answered when the follower applies them), instead of forwarding a request.
pub const PROPOSALS_FORWARDED_TOTAL: &str = "fleet_proposals_forwarded_total";
/// Counter: committed entries applied to the state machines on this node ("commits").
pub const ENTRIES_APPLIED_TOTAL: &str = "fleet_entries_applied_total";
/// Gauge: entries committed but not yet applied, summed over the groups hosted here.
pub const APPLY_LAG_ENTRIES: &str = "fleet_apply_lag_entries";
/// Histogram: log entries made durable by one storage commit (the size of a group commit).
pub const STORAGE_BATCH_ENTRIES: &str = "fleet_storage_batch_entries";
/// Histogram, seconds: how long one storage commit took, fsync included.
pub const STORAGE_FSYNC_SECONDS: &str = "fleet_storage_fsync_seconds";
/// Counter: durable database commits after which the commit journal started over.
pub const STORAGE_JOURNAL_RESTARTS_TOTAL: &str = "fleet_storage_journal_restarts_total";
/// Counter: batches that found the commit journal full, so their commit synced the database
/// (about 8 scattered pages, several times a journal record's cost). Many per second mean
/// `journal_bytes_max` is small for the write rate.
pub const STORAGE_JOURNAL_FULL_TOTAL: &str = "fleet_storage_journal_full_total";
/// Gauge, bytes: write-ahead records not yet checkpointed into the segments, which the next open
/// replays (at most the store's `wal_bytes_max`).
pub const STORAGE_WAL_BYTES: &str = "fleet_storage_wal_bytes";
/// Counter: journaled batches whose redb writes waited for a later transaction while more
/// requests queued (they share it; `docs/storage.md`).
pub const STORAGE_BATCHES_DEFERRED_TOTAL: &str = "fleet_storage_batches_deferred_total";
/// Counter, labelled `path`: requests the admin endpoint answered.
pub const ADMIN_REQUESTS_TOTAL: &str = "fleet_admin_requests_total";

/// Bucket upper bounds of [`STORAGE_BATCH_ENTRIES`]: powers of two, from one entry to a batch far
/// larger than a busy node writes.
pub const STORAGE_BATCH_ENTRIES_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];

/// Bucket upper bounds of [`STORAGE_FSYNC_SECONDS`]: 50 µs (a fast NVMe fsync) to 1 s (a disk in
/// trouble).
pub const STORAGE_FSYNC_SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Registers the description and unit of every metric above with the installed recorder.
///
/// Call it after a recorder is installed (descriptions go to the recorder of the moment);
/// [`crate::admin`] does. Calling it again is harmless.
pub fn describe_metrics() {
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which fleet-node build runs."
    );
    describe_gauge!(
        GROUPS_HOSTED,
        Unit::Count,
        "Replicas of consensus groups, the meta group included, hosted on this node."
    );
    describe_gauge!(
        GROUPS_LEADING,
        Unit::Count,
        "Consensus groups whose replica on this node is the leader."
    );
    describe_counter!(
        ELECTIONS_TOTAL,
        Unit::Count,
        "Elections started by replicas on this node."
    );
    describe_counter!(
        PROPOSALS_TOTAL,
        Unit::Count,
        "Commands proposed by leaders on this node."
    );
    describe_counter!(
        PROPOSALS_FORWARDED_TOTAL,
        Unit::Count,
        "Commands followers on this node handed to their leaders in Raft messages."
    );
    describe_counter!(
        ENTRIES_APPLIED_TOTAL,
        Unit::Count,
        "Committed log entries applied to state machines on this node."
    );
    describe_gauge!(
        APPLY_LAG_ENTRIES,
        Unit::Count,
        "Log entries committed but not yet applied, summed over the groups hosted on this node."
    );
    describe_histogram!(
        STORAGE_BATCH_ENTRIES,
        Unit::Count,
        "Log entries made durable by one storage commit (group commit size)."
    );
    describe_histogram!(
        STORAGE_FSYNC_SECONDS,
        Unit::Seconds,
        "Duration of one storage commit, fsync included."
    );
    describe_counter!(
        STORAGE_JOURNAL_RESTARTS_TOTAL,
        "Durable database commits after which the commit journal started over."
    );
    describe_counter!(
        STORAGE_JOURNAL_FULL_TOTAL,
        "Batches that found the commit journal full and synced the database instead; many per second mean the journal is small for the write rate."
    );
    describe_gauge!(
        STORAGE_WAL_BYTES,
        Unit::Bytes,
        "Write-ahead bytes not yet checkpointed into the segments: what the next open replays."
    );
    describe_counter!(
        STORAGE_BATCHES_DEFERRED_TOTAL,
        Unit::Count,
        "Journaled batches whose redb writes waited for a later transaction while more requests queued."
    );
    describe_counter!(
        ADMIN_REQUESTS_TOTAL,
        Unit::Count,
        "Requests answered by the admin endpoint, by path."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let names = [
            BUILD_INFO,
            GROUPS_HOSTED,
            GROUPS_LEADING,
            ELECTIONS_TOTAL,
            PROPOSALS_TOTAL,
            PROPOSALS_FORWARDED_TOTAL,
            ENTRIES_APPLIED_TOTAL,
            APPLY_LAG_ENTRIES,
            STORAGE_BATCH_ENTRIES,
            STORAGE_FSYNC_SECONDS,
            STORAGE_JOURNAL_RESTARTS_TOTAL,
            STORAGE_JOURNAL_FULL_TOTAL,
            STORAGE_WAL_BYTES,
            STORAGE_BATCHES_DEFERRED_TOTAL,
            ADMIN_REQUESTS_TOTAL,
        ];
        for name in names {
            assert!(name.starts_with("fleet_"), "{name} lacks the fleet_ prefix");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name} is not a plain Prometheus name"
            );
        }
        assert!(STORAGE_BATCH_ENTRIES_BUCKETS.is_sorted());
        assert!(STORAGE_FSYNC_SECONDS_BUCKETS.is_sorted());
    }
}
