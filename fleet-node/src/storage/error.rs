//! The storage error type.

use std::path::PathBuf;

use fleet_core::{GroupId, Index};

/// Everything that can go wrong in the [`Store`](super::Store).
///
/// Errors come in two kinds, as the variant docs say:
///
/// - **Fatal** ones (`Io`, `Redb`, `DiskFull`, `Failed`, and the open-time checks `Corrupt`,
///   `UnknownFormatVersion`, `LogGap`, `MissingSnapshotFile`): the store stops. A failed write is
///   never retried and never acknowledged; every later write returns [`StorageError::Failed`].
///   The node must stop and be restarted, which recovers from what is durable.
/// - **Misuse** by the caller (`UnknownGroup`, `InvalidWrite`, `Compacted`, …): only the request
///   that caused it is refused; the store carries on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A file system operation failed. Fatal: the store accepts no more writes.
    #[error(
        "storage I/O failed while trying to {op} {path}: {source}; the store has stopped and \
         acknowledges nothing more: check the disk, then restart the node"
    )]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// redb failed (a commit, an fsync, a read). Fatal: the store accepts no more writes.
    #[error(
        "the database {path} failed while trying to {op}: {source}; the store has stopped and \
         acknowledges nothing more: check the disk, then restart the node"
    )]
    Redb {
        /// What the store was doing.
        op: &'static str,
        /// The database file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// The disk is full. Fatal: nothing that was being written is acknowledged.
    #[error(
        "the disk holding {path} is full (while trying to {op}); nothing more is acknowledged: \
         free space on the disk, then restart the node"
    )]
    DiskFull {
        /// What the store was doing.
        op: &'static str,
        /// The file being written.
        path: PathBuf,
    },
    /// An earlier write failed, so this store refuses every write (a failed fsync is never
    /// retried: the kernel may have dropped the dirty pages).
    #[error(
        "the store has stopped after an earlier failure ({reason}); restart the node to recover \
         from what is durable"
    )]
    Failed {
        /// The first failure.
        reason: String,
    },
    /// A file holds bytes that fail their checks (checksum, framing, decoding). The store
    /// refuses to open rather than repair it.
    #[error(
        "{path} is corrupt{}: {what}; the store refuses to use it: restore this node from a \
         backup or remove its data directory so that it is rebuilt from the other replicas",
        group.map(|g| format!(" (group {g})")).unwrap_or_default()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The group whose data is corrupt, if known.
        group: Option<GroupId>,
        /// What is wrong.
        what: String,
    },
    /// A record was written by a format this build does not know.
    #[error(
        "{path}: {what} has format version {found}, but this build reads version {supported}; \
         run the fleet-node release that wrote it"
    )]
    UnknownFormatVersion {
        /// The file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// The version found.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// A group's log has a hole after its snapshot, found on open.
    #[error(
        "{path}: the log of group {group} has a gap: expected index {expected}, found {}; \
         committed entries may be missing, so the store refuses to start: restore this node \
         from a backup or remove its data directory so that it is rebuilt from the other replicas",
        found.map_or_else(|| "the end of the log".to_string(), |f| format!("index {f}"))
    )]
    LogGap {
        /// The database file.
        path: PathBuf,
        /// The group.
        group: GroupId,
        /// The index that should have come next.
        expected: Index,
        /// The index found instead, or `None` if the log ended early.
        found: Option<Index>,
    },
    /// A group's snapshot metadata names a file that is not there.
    #[error(
        "group {group}: snapshot file {path} is missing; the store refuses to start: restore the \
         file or remove this node's data directory so that it is rebuilt from the other replicas"
    )]
    MissingSnapshotFile {
        /// The group.
        group: GroupId,
        /// The missing file.
        path: PathBuf,
    },
    /// Another store in this process already has the database open.
    #[error("{path} is already open by another store; open each data directory once")]
    AlreadyOpen {
        /// The database file.
        path: PathBuf,
    },
    /// The group is not hosted by this store.
    #[error("group {group} is not hosted by this store; create it first")]
    UnknownGroup {
        /// The group.
        group: GroupId,
    },
    /// The group is already hosted by this store.
    #[error("group {group} is already hosted by this store")]
    GroupExists {
        /// The group.
        group: GroupId,
    },
    /// A write breaks the rules of the log (a gap, a truncation of committed entries, a vote
    /// changed within a term, …). Only this request is refused.
    #[error("refused a write to group {group}: {reason}")]
    InvalidWrite {
        /// The group.
        group: GroupId,
        /// Which rule the write breaks.
        reason: String,
    },
    /// A request exceeds a limit of the store's configuration.
    #[error("{what} is {found}, over the limit {max}; split the request")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        found: u64,
        /// The limit.
        max: u64,
    },
    /// The requested entries were compacted into a snapshot.
    #[error(
        "group {group}: index {index} is compacted (the log starts at {first_index}); send the snapshot instead"
    )]
    Compacted {
        /// The group.
        group: GroupId,
        /// The requested index.
        index: Index,
        /// The first index still in the log.
        first_index: Index,
    },
    /// The requested entries are past the end of the log.
    #[error("group {group}: index {index} is past the end of the log (last index {last_index})")]
    Unavailable {
        /// The group.
        group: GroupId,
        /// The requested index.
        index: Index,
        /// The last index in the log.
        last_index: Index,
    },
    /// The write queue is full (only from `try_submit`); retry after a completion.
    #[error("the storage write queue is full ({depth_max} batches); wait for a commit to complete")]
    QueueFull {
        /// The queue's bound.
        depth_max: usize,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// A storage setting is out of range; nothing was opened.
    #[error("invalid storage setting: {0}; fix the setting and start again")]
    InvalidConfig(String),
}

/// Short for `Result<T, StorageError>`.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    /// Whether the error stopped the store (see the type's docs).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StorageError::Io { .. }
                | StorageError::Redb { .. }
                | StorageError::DiskFull { .. }
                | StorageError::Failed { .. }
                | StorageError::Corrupt { .. }
                | StorageError::UnknownFormatVersion { .. }
                | StorageError::LogGap { .. }
                | StorageError::MissingSnapshotFile { .. }
        )
    }

    /// Wraps an I/O error, recognising a full disk.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if is_disk_full(&source) {
            return StorageError::DiskFull { op, path };
        }
        StorageError::Io { op, path, source }
    }

    /// Wraps a redb error, recognising a full disk, corruption and a second open.
    pub(crate) fn redb(
        op: &'static str,
        path: &std::path::Path,
        source: impl Into<redb::Error>,
    ) -> Self {
        let source: redb::Error = source.into();
        let path = path.to_path_buf();
        match &source {
            redb::Error::Io(e) if is_disk_full(e) => StorageError::DiskFull { op, path },
            redb::Error::Corrupted(what) => StorageError::Corrupt {
                path,
                group: None,
                what: format!("redb found corruption while trying to {op}: {what}"),
            },
            redb::Error::DatabaseAlreadyOpen => StorageError::AlreadyOpen { path },
            _ => StorageError::Redb {
                op,
                path,
                source: Box::new(source),
            },
        }
    }
}

fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28 /* ENOSPC */)
}
