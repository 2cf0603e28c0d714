//! Snapshot files: `<data_dir>/snapshots/<group id>/<index>-<term>.snap`.
//!
//! A file is
//!
//! ```text
//! "FLEETSNP" | u16 LE storage format version | u16 LE fleet-core FORMAT_VERSION | u64 LE group id
//! | u32 LE meta length | postcard SnapshotMeta | u64 LE data length | data
//! | u32 LE crc32c of every byte before it
//! ```
//!
//! It is written to `<name>.tmp`, fsynced, renamed and the directory fsynced before its metadata
//! is committed to the database; the previous file of the group is removed only after that
//! commit is durable. On open, files that no committed metadata names (temporary files, or a
//! snapshot whose commit never happened) are removed, and the named file of every group is
//! checked: present, the length its header announces, and (by default) its checksum.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use fleet_core::{FORMAT_VERSION, GroupId, SnapshotMeta};

use super::codec::{STORAGE_FORMAT_VERSION, crc32c_append};
use super::error::{Result, StorageError};

const MAGIC: &[u8; 8] = b"FLEETSNP";
/// A snapshot's metadata is small (a configuration); a larger length field is corruption.
const SNAPSHOT_META_BYTES_MAX: u32 = 1 << 20;
const TRAILER_BYTES: u64 = 4;

/// The directory holding every group's snapshot directory.
pub(crate) fn snapshots_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

/// The directory of one group's snapshot files.
pub(crate) fn group_dir(data_dir: &Path, group: GroupId) -> PathBuf {
    snapshots_dir(data_dir).join(group.0.to_string())
}

/// The file of one snapshot.
pub(crate) fn snapshot_path(data_dir: &Path, group: GroupId, meta: &SnapshotMeta) -> PathBuf {
    group_dir(data_dir, group).join(format!("{}-{}.snap", meta.index, meta.term))
}

/// fsyncs a directory so that a rename or a removal in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync directory", dir, e))
}

fn header(group: GroupId, meta: &SnapshotMeta, data_len: u64) -> Vec<u8> {
    let meta_bytes = postcard::to_stdvec(meta).expect("postcard encoding of SnapshotMeta");
    let mut h = Vec::with_capacity(32 + meta_bytes.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&STORAGE_FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&group.0.to_le_bytes());
    h.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
    h.extend_from_slice(&meta_bytes);
    h.extend_from_slice(&data_len.to_le_bytes());
    h
}

/// Writes a snapshot file durably (temporary file, fsync, rename, directory fsync) and returns
/// its path.
pub(crate) fn write_snapshot_file(
    data_dir: &Path,
    group: GroupId,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<PathBuf> {
    let dir = group_dir(data_dir, group);
    if !dir.exists() {
        fs::create_dir_all(&dir).map_err(|e| StorageError::io("create directory", &dir, e))?;
        sync_dir(&snapshots_dir(data_dir))?;
        sync_dir(data_dir)?;
    }
    let path = snapshot_path(data_dir, group, meta);
    let tmp = path.with_extension("snap.tmp");
    let head = header(group, meta, data.len() as u64);
    let crc = crc32c_append(crc32c_append(0, &head), data);
    let write = || -> std::io::Result<()> {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 16, file);
        w.write_all(&head)?;
        w.write_all(data)?;
        w.write_all(&crc.to_le_bytes())?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    };
    write().map_err(|e| StorageError::io("write snapshot file", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| StorageError::io("rename snapshot file", &path, e))?;
    sync_dir(&dir)?;
    tracing::debug!(group = group.0, index = meta.index, path = %path.display(), "snapshot file durable");
    Ok(path)
}

/// Reads a group's snapshot file in chunks of at most a bound, checking its checksum at the end.
///
/// The last chunk is returned only after the checksum of the whole file matched, so a consumer
/// never acts on a complete but corrupt snapshot.
#[derive(Debug)]
pub struct SnapshotReader {
    path: PathBuf,
    group: GroupId,
    meta: SnapshotMeta,
    file: BufReader<File>,
    data_len: u64,
    remaining: u64,
    crc: u32,
    chunk_bytes_max: usize,
}

impl SnapshotReader {
    /// Opens a snapshot file and checks its header against the metadata the database holds.
    pub(crate) fn open(
        path: PathBuf,
        group: GroupId,
        expected: &SnapshotMeta,
        chunk_bytes_max: usize,
    ) -> Result<Self> {
        assert!(chunk_bytes_max > 0, "chunk_bytes_max must be positive");
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::MissingSnapshotFile { group, path });
            }
            Err(e) => return Err(StorageError::io("open snapshot file", &path, e)),
        };
        let file_len = file
            .metadata()
            .map_err(|e| StorageError::io("stat snapshot file", &path, e))?
            .len();
        let corrupt = |what: String| StorageError::Corrupt {
            path: path.clone(),
            group: Some(group),
            what,
        };
        let mut file = BufReader::with_capacity(1 << 16, file);
        let mut fixed = [0u8; 8 + 2 + 2 + 8 + 4];
        file.read_exact(&mut fixed).map_err(|_| {
            corrupt(format!(
                "snapshot file of {file_len} bytes is shorter than its header"
            ))
        })?;
        if &fixed[0..8] != MAGIC {
            return Err(corrupt("not a fleet snapshot file (bad magic)".into()));
        }
        let storage_version = u16::from_le_bytes([fixed[8], fixed[9]]);
        let core_version = u16::from_le_bytes([fixed[10], fixed[11]]);
        for (found, supported, what) in [
            (storage_version, STORAGE_FORMAT_VERSION, "storage format"),
            (core_version, FORMAT_VERSION, "fleet-core format"),
        ] {
            if found != supported {
                return Err(StorageError::UnknownFormatVersion {
                    path: path.clone(),
                    what: format!("snapshot file ({what})"),
                    found,
                    supported,
                });
            }
        }
        let file_group = u64::from_le_bytes(fixed[12..20].try_into().expect("8 bytes"));
        if file_group != group.0 {
            return Err(corrupt(format!("file belongs to group {file_group}")));
        }
        let meta_len = u32::from_le_bytes(fixed[20..24].try_into().expect("4 bytes"));
        if meta_len > SNAPSHOT_META_BYTES_MAX {
            return Err(corrupt(format!(
                "metadata length {meta_len} is over {SNAPSHOT_META_BYTES_MAX}"
            )));
        }
        let mut meta_bytes = vec![0u8; meta_len as usize];
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut meta_bytes)
            .and_then(|_| file.read_exact(&mut len_bytes))
            .map_err(|_| {
                corrupt(format!(
                    "snapshot file of {file_len} bytes is truncated in its header"
                ))
            })?;
        let data_len = u64::from_le_bytes(len_bytes);
        let header_len = fixed.len() as u64 + meta_len as u64 + 8;
        let expected_len = header_len
            .saturating_add(data_len)
            .saturating_add(TRAILER_BYTES);
        if file_len != expected_len {
            return Err(corrupt(format!(
                "snapshot file has {file_len} bytes but its header announces {expected_len} (truncated or extended)"
            )));
        }
        let meta: SnapshotMeta = postcard::from_bytes(&meta_bytes)
            .map_err(|e| corrupt(format!("cannot decode snapshot metadata: {e}")))?;
        if &meta != expected {
            return Err(corrupt(format!(
                "file holds the snapshot at index {} term {}, the database expects index {} term {}",
                meta.index, meta.term, expected.index, expected.term
            )));
        }
        let crc = crc32c_append(crc32c_append(0, &fixed), &meta_bytes);
        let crc = crc32c_append(crc, &len_bytes);
        Ok(SnapshotReader {
            path,
            group,
            meta,
            file,
            data_len,
            remaining: data_len,
            crc,
            chunk_bytes_max,
        })
    }

    /// What the snapshot covers.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The length of the state machine data in bytes.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next chunk of data (at most the configured chunk size), or `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let n = self.remaining.min(self.chunk_bytes_max as u64) as usize;
        let mut buf = vec![0u8; n];
        self.file
            .read_exact(&mut buf)
            .map_err(|e| StorageError::io("read snapshot file", &self.path, e))?;
        self.crc = crc32c_append(self.crc, &buf);
        self.remaining -= n as u64;
        if self.remaining == 0 {
            let mut trailer = [0u8; TRAILER_BYTES as usize];
            self.file
                .read_exact(&mut trailer)
                .map_err(|e| StorageError::io("read snapshot file", &self.path, e))?;
            let stored = u32::from_le_bytes(trailer);
            if stored != self.crc {
                return Err(StorageError::Corrupt {
                    path: self.path.clone(),
                    group: Some(self.group),
                    what: format!(
                        "snapshot checksum mismatch (stored {stored:#010x}, computed {:#010x})",
                        self.crc
                    ),
                });
            }
        }
        Ok(Some(Bytes::from(buf)))
    }

    /// Reads the rest of the data and checks the checksum.
    pub fn read_to_end(mut self) -> Result<Bytes> {
        let mut out = Vec::with_capacity(self.remaining as usize);
        while let Some(chunk) = self.next_chunk()? {
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    }

    /// Reads the whole file, checking the checksum, without keeping the data.
    pub(crate) fn verify(mut self) -> Result<()> {
        while self.next_chunk()?.is_some() {}
        Ok(())
    }
}

/// Removes a file (an old snapshot) and fsyncs its directory. Failure is logged, not fatal: the
/// file is an orphan that the next open removes.
pub(crate) fn remove_file_logged(group: GroupId, path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent()
                && let Err(e) = sync_dir(dir)
            {
                tracing::warn!(group = group.0, error = %e, "cannot fsync snapshot directory after removal");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(group = group.0, path = %path.display(), error = %e, "cannot remove old snapshot file; the next open removes it")
        }
    }
}
