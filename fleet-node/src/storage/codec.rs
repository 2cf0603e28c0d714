//! The on-disk encodings: a versioned, checksummed envelope around postcard records.
//!
//! Every value the store writes to redb is
//!
//! ```text
//! [u16 LE storage format version][u16 LE fleet-core FORMAT_VERSION][u32 LE crc32c][body]
//! ```
//!
//! where the checksum covers the two versions and the body. Later formats must keep this header.
//! where `body` is the postcard encoding of one of the record types below. A reader refuses an
//! unknown version of either kind and a checksum mismatch with a clear error naming the file and
//! the record.

use std::path::Path;

use fleet_core::{Entry, FORMAT_VERSION, GroupId, HardState, Index, ReplicaId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::error::{Result, StorageError};

/// The version of the storage encodings (the envelope and the records of this module).
pub const STORAGE_FORMAT_VERSION: u16 = 1;

/// The envelope's header size: two versions and a checksum.
pub(crate) const ENVELOPE_HEADER_BYTES: usize = 8;

/// Encodes `record` in the envelope.
pub(crate) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![0u8; ENVELOPE_HEADER_BYTES];
    // Serializing our own record types into a Vec cannot fail: they hold no maps with non-string
    // keys and no sequences of unknown length.
    out = postcard::to_extend(record, out).expect("postcard encoding of a storage record");
    out[0..2].copy_from_slice(&STORAGE_FORMAT_VERSION.to_le_bytes());
    out[2..4].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32c_append(crc32c(&out[0..4]), &out[ENVELOPE_HEADER_BYTES..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a record written by [`encode`]; `what` names the record in errors.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    path: &Path,
    group: Option<GroupId>,
    what: impl Fn() -> String,
) -> Result<T> {
    let corrupt = |why: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        group,
        what: format!("{}: {why}", what()),
    };
    if bytes.len() < ENVELOPE_HEADER_BYTES {
        return Err(corrupt(format!(
            "record of {} bytes is shorter than its header",
            bytes.len()
        )));
    }
    let storage_version = u16::from_le_bytes([bytes[0], bytes[1]]);
    let core_version = u16::from_le_bytes([bytes[2], bytes[3]]);
    let crc_stored = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let body = &bytes[ENVELOPE_HEADER_BYTES..];
    // Check the checksum first: a flipped bit in a version field is corruption, not a new format.
    let crc = crc32c_append(crc32c(&bytes[0..4]), body);
    if crc != crc_stored {
        return Err(corrupt(format!(
            "checksum mismatch (stored {crc_stored:#010x}, computed {crc:#010x})"
        )));
    }
    if storage_version != STORAGE_FORMAT_VERSION {
        return Err(StorageError::UnknownFormatVersion {
            path: path.to_path_buf(),
            what: format!("{} (storage format)", what()),
            found: storage_version,
            supported: STORAGE_FORMAT_VERSION,
        });
    }
    if core_version != FORMAT_VERSION {
        return Err(StorageError::UnknownFormatVersion {
            path: path.to_path_buf(),
            what: format!("{} (fleet-core format)", what()),
            found: core_version,
            supported: FORMAT_VERSION,
        });
    }
    postcard::from_bytes(body).map_err(|e| corrupt(format!("cannot decode: {e}")))
}

/// The lifecycle state of a hosted replica, as the runtime records it in the registry.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ReplicaState {
    /// Created empty; waits for a snapshot or entries from the leader.
    Pending,
    /// A working member (voter or learner) of its group.
    Active,
    /// Being removed from its group; its data goes once the removal is committed.
    Leaving,
}

/// One entry of the local replica registry: a group this node hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// This node's replica of the group.
    pub replica: ReplicaId,
    /// The state machine kind, as registered with the fleet (for example `"kv"`).
    pub kind: String,
    /// The replica's lifecycle state.
    pub state: ReplicaState,
}

impl ReplicaRecord {
    /// A new replica's record: registered, not active yet.
    pub fn pending(replica: ReplicaId, kind: String) -> Self {
        ReplicaRecord {
            replica,
            kind,
            state: ReplicaState::Pending,
        }
    }
}

/// The checkpointed state of one group (table `segments`, key `(group, u64::MAX)`): what the
/// segments hold, and the hard state and snapshot as of `flushed_seq`. Write-ahead records after
/// `flushed_seq` bring it up to date on recovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupRecord {
    /// Every write-ahead operation of this group with a sequence number up to this one is
    /// reflected here and in the segments.
    pub flushed_seq: u64,
    pub hard_state: HardState,
    pub snapshot: Option<SnapshotMeta>,
    /// The last index held in the segments (or the snapshot index if none is).
    pub flushed_last_index: Index,
    /// The term of `flushed_last_index`.
    pub flushed_last_term: Term,
}

/// One group's part of a write-ahead record, applied in field order: snapshot, entries, hard
/// state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WalOp {
    pub group: GroupId,
    /// A snapshot now covers the log up to its index; its file is durable.
    pub snapshot: Option<SnapshotMeta>,
    /// With `snapshot`: the log does not hold the snapshot's last entry, so every entry goes.
    /// Decided at write time so that replay needs no lookups.
    pub discard_log: bool,
    /// Entries to append; if the first index is at or below the last, the suffix from it is
    /// replaced.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
}

/// One commit's worth of writes of every group (table `wal`, keyed by sequence number).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WalRecord {
    pub ops: Vec<WalOp>,
}

/// A run of consecutive entries of one group (table `segments`, keyed by `(group, last index)`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SegmentRecord {
    pub entries: Vec<Entry>,
}

/// The store's own record (table `meta`, key `"store"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoreMeta {
    /// A sequence number no write-ahead record has used; survives a fully checkpointed WAL.
    pub next_seq: u64,
}

/// CRC-32C (Castagnoli), the checksum of iSCSI, ext4 and LevelDB (the `crc32c` crate: the
/// CPU's CRC instruction where there is one).
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Continues a CRC-32C: `crc32c_append(crc32c(a), b) == crc32c(a ++ b)`.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vectors() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(
            crc32c_append(crc32c(&data[..333]), &data[333..]),
            crc32c(&data)
        );
    }

    #[test]
    fn envelope_round_trip_and_checks() {
        let rec = StoreMeta { next_seq: 42 };
        let mut bytes = encode(&rec);
        let path = Path::new("x.redb");
        let back: StoreMeta = decode(&bytes, path, None, || "meta".into()).unwrap();
        assert_eq!(back, rec);
        bytes[ENVELOPE_HEADER_BYTES] ^= 1;
        let err = decode::<StoreMeta>(&bytes, path, None, || "meta".into()).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }
}
