//! The commit journal: the write-ahead records of the store's batch commits, each made durable
//! by one sequential write and one `fdatasync` of a preallocated file, while redb takes the same
//! writes in commits that are not synced.
//!
//! # Why
//!
//! A durable redb commit writes every page it dirtied (about eight scattered pages, 35 KiB, for
//! one write-ahead record of about 3 KiB) and syncs the database file. Group commit pays one
//! durable commit per batch, so that cost bounds the whole node's write rate. Measured here
//! (`docs/storage.md`): a durable redb commit of a 3 KiB record p50 0.34–0.42 ms; a redb commit
//! that is not synced 0.02 ms; one 4 KiB write over allocated blocks plus its `fdatasync` about
//! 0.2 ms. TiKV keeps its Raft log outside its key-value store (raft-engine) for the same reason.
//!
//! # How
//!
//! - Each batch commit is a redb transaction with `Durability::None` (it reaches the page cache,
//!   not the disk) **and** one journal **record**: the sequence number of the batch and what the
//!   transaction wrote (its write-ahead record and the registrations of new replicas), with a
//!   checksum, padded to 4 KiB. The record is written at the journal's write position and the
//!   journal is synced; that sync is the batch's durability.
//! - The journal file is filled with zeros to its full size when it is created, so records
//!   overwrite allocated blocks (a write that extends a file costs an inode write more).
//! - When a record does not fit in the space left, that batch's transaction is a durable redb
//!   commit instead (it makes every earlier transaction durable too), and the journal starts
//!   over from its beginning. So does every other durable redb commit the store makes.
//! - On open, redb returns to its last durable commit, whose sequence number `D` the store
//!   knows (its write-ahead table and store record). The journal's records after `D` are
//!   applied to the database again, in order, in one durable commit, before anything else reads
//!   it.
//!
//! # Reading the journal back
//!
//! Records are read from the beginning while each is valid and the successor of the one before;
//! older records left behind by an earlier pass have lower sequence numbers, so they end the
//! run. A random salt written in the header at creation is in every record, so bytes inside a
//! record body (user data) can never pass for a record.
//!
//! # Failure rules
//!
//! - A torn last record (its checksum fails) is a write whose sync never returned: ignored.
//! - A valid record with a sequence number after `D` that the run did not reach (a damaged
//!   record before it), or a run that resumes after `D + 1`, is corruption: the open fails with
//!   [`JournalError::Corrupt`], never a silent truncation.
//! - A failed write or sync fails the journal for good (the store fails with it; a failed
//!   `fsync` is never retried).

use std::hash::{BuildHasher, Hasher};
use std::io;

use redb::StorageBackend;

use super::codec::{crc32c, crc32c_append};

/// The journal file's name in the data directory.
pub const JOURNAL_FILE_NAME: &str = "fleet.journal";
/// The journal's format version (header and records). Version 1 (development builds of
/// 2026-11) journaled redb's pages; this build refuses such a file by its version.
pub const JOURNAL_FORMAT_VERSION: u16 = 2;
/// The unit records are aligned and padded to; the header takes the first one.
const BLOCK: u64 = 4096;
const HEADER_MAGIC: u32 = u32::from_le_bytes(*b"FJHD");
const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"FJLR");
const HEADER_BYTES: usize = 28;
const RECORD_HEADER_BYTES: usize = 32;
/// Zeros written per request when the journal file is created.
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// The least journal size: the header and fifteen blocks of records.
pub const JOURNAL_BYTES_MIN: u64 = 16 * BLOCK;

/// Why a journal could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing the file failed.
    #[error("{op}: {source}")]
    Io {
        /// What the journal was doing.
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The journal holds bytes that fail its checks where committed data must be.
    #[error("{what}")]
    Corrupt {
        /// What is wrong.
        what: String,
    },
    /// The journal was written by a format this build does not know.
    #[error("journal format version {found}, but this build reads version {supported}")]
    UnknownFormatVersion {
        /// The version found.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> JournalError {
    move |source| JournalError::Io { op, source }
}

/// What opening the journal found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalReport {
    /// Records after the database's last durable commit, returned to be applied again.
    pub records_replayed: u64,
    /// Their bytes (headers and padding included).
    pub bytes_replayed: u64,
    /// The sequence number the database was durable up to before the replay.
    pub durable_seq: u64,
}

/// Counters of a running journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records written.
    pub records: u64,
    /// Their bytes (headers and padding included).
    pub bytes: u64,
    /// Times the journal started over after a durable database commit (because it was full,
    /// or because the store committed durably for another reason).
    pub restarts: u64,
    /// Of those, the times a batch found the journal full (its commit synced the database).
    pub full: u64,
}

/// One record read back by [`Journal::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The batch's sequence number.
    pub seq: u64,
    /// What the batch's transaction wrote, as the store encoded it.
    pub body: Vec<u8>,
}

/// The journal file. Owned by the store's writer thread.
pub struct Journal {
    file: Box<dyn StorageBackend>,
    /// The file's size (header included): the configured size once restarted.
    size: u64,
    /// The size the header records.
    header_size: u64,
    salt: u64,
    /// Where the next record goes.
    pos: u64,
    /// Records written since the last restart.
    since_restart: u64,
    failed: bool,
    stats: JournalStats,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("size", &self.size)
            .field("pos", &self.pos)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A valid record header found in the file.
#[derive(Clone, Copy, Debug)]
struct RecordAt {
    seq: u64,
    at: u64,
    body_len: u64,
    padded_len: u64,
}

impl Journal {
    /// Opens the journal on `file` (creating it, `size` bytes of zeros and a header, when the
    /// file is empty or was never completed) and returns the records after `durable_seq`, in
    /// order, to be applied to the database again. The journal is written only after
    /// [`Journal::restart`], once those records are durable in the database.
    pub fn open(
        file: Box<dyn StorageBackend>,
        size: u64,
        durable_seq: u64,
    ) -> Result<(Journal, Vec<Record>, JournalReport), JournalError> {
        let size = size / BLOCK * BLOCK;
        if size < JOURNAL_BYTES_MIN {
            return Err(JournalError::Io {
                op: "size the journal",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a journal of {size} bytes is too small: the least is {JOURNAL_BYTES_MIN} bytes"
                    ),
                ),
            });
        }
        let len = file.len().map_err(io_err("read the journal's length"))?;
        let mut report = JournalReport {
            durable_seq,
            ..JournalReport::default()
        };
        let header = read_header(file.as_ref(), len)?;
        let Some((salt, file_size)) = header else {
            // Never completed: created now. A file with records but no valid header is damage.
            if any_record_magic(file.as_ref(), len)? {
                return Err(JournalError::Corrupt {
                    what: "the journal holds records but its header is damaged".into(),
                });
            }
            let journal = Journal::create(file, size)?;
            return Ok((journal, Vec::new(), report));
        };
        // A resize is interrupted only after the database was made durable (nothing in the
        // journal is needed then), so the shorter of the two lengths is what can be read.
        let mut journal = Journal {
            file,
            size: file_size.min(len / BLOCK * BLOCK),
            header_size: file_size,
            salt,
            pos: BLOCK,
            since_restart: 0,
            failed: false,
            stats: JournalStats::default(),
        };
        let records = journal.read_back(durable_seq, &mut report)?;
        // The configured size takes effect at the restart (nothing in the file is needed then).
        journal.size = size;
        Ok((journal, records, report))
    }

    fn create(file: Box<dyn StorageBackend>, size: u64) -> Result<Journal, JournalError> {
        let salt = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            | 1;
        let mut journal = Journal {
            file,
            size,
            header_size: size,
            salt,
            pos: BLOCK,
            since_restart: 0,
            failed: false,
            stats: JournalStats::default(),
        };
        journal.format()?;
        Ok(journal)
    }

    /// Fills the file with zeros to `self.size`, then writes the header, and syncs.
    fn format(&mut self) -> Result<(), JournalError> {
        let f = self.file.as_ref();
        f.set_len(self.size)
            .map_err(io_err("size the journal file"))?;
        let zeros = vec![0u8; ZERO_CHUNK_BYTES];
        let mut at = 0;
        while at < self.size {
            let n = (self.size - at).min(ZERO_CHUNK_BYTES as u64);
            f.write(at, &zeros[..n as usize])
                .map_err(io_err("fill the journal with zeros"))?;
            at += n;
        }
        f.write(0, &header_block(self.salt, self.size))
            .map_err(io_err("write the journal header"))?;
        f.sync_data().map_err(io_err("sync the journal"))?;
        self.header_size = self.size;
        Ok(())
    }

    /// Reads the run of records from the start, checks it against `durable_seq`, and probes the
    /// rest of the file for valid records the run did not reach.
    fn read_back(
        &mut self,
        durable_seq: u64,
        report: &mut JournalReport,
    ) -> Result<Vec<Record>, JournalError> {
        let f = self.file.as_ref();
        let mut records = Vec::new();
        let mut pos = BLOCK;
        let mut last: Option<u64> = None;
        while let Some(r) = record_at(f, self.size, self.salt, pos)? {
            if last.is_some_and(|l| r.seq != l + 1) {
                break;
            }
            let Some(body) = checked_body(f, self.salt, &r)? else {
                break;
            };
            if r.seq > durable_seq {
                let expected = last.map_or(durable_seq, |l| l.max(durable_seq)) + 1;
                if r.seq != expected {
                    return Err(JournalError::Corrupt {
                        what: format!(
                            "the database is durable up to batch {durable_seq}, but the journal \
                             continues at batch {} (batch {expected} is missing)",
                            r.seq
                        ),
                    });
                }
                report.records_replayed += 1;
                report.bytes_replayed += r.padded_len;
                records.push(Record { seq: r.seq, body });
            }
            last = Some(r.seq);
            pos += r.padded_len;
        }
        // Every block after the run: a valid record newer than everything read means a damaged
        // record in between, not the torn end of the journal.
        let newest = last.unwrap_or(0).max(durable_seq);
        let mut at = pos;
        while at < self.size {
            match record_at(f, self.size, self.salt, at)? {
                Some(r) if checked_body(f, self.salt, &r)?.is_some() => {
                    if r.seq > newest {
                        return Err(JournalError::Corrupt {
                            what: format!(
                                "journal record {} is valid, but a record before it is missing \
                                 or damaged (the journal reads back up to batch {newest})",
                                r.seq
                            ),
                        });
                    }
                    at += r.padded_len;
                }
                _ => at += BLOCK,
            }
        }
        Ok(records)
    }

    /// Whether a record with a body of `body_len` bytes fits in the space left.
    pub fn fits(&self, body_len: usize) -> bool {
        !self.failed && self.pos + padded(body_len) <= self.size
    }

    /// Writes one record and syncs the journal: when this returns, the batch is durable.
    /// Call only when [`Journal::fits`] says so. Any error fails the journal for good.
    pub fn append(&mut self, seq: u64, body: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("the commit journal failed earlier"));
        }
        assert!(self.fits(body.len()), "a journal record that does not fit");
        let rec = frame_record(seq, self.salt, body);
        let r = self
            .file
            .write(self.pos, &rec)
            .and_then(|()| self.file.sync_data());
        if r.is_err() {
            self.failed = true;
            return r;
        }
        self.pos += rec.len() as u64;
        self.since_restart += 1;
        self.stats.records += 1;
        self.stats.bytes += rec.len() as u64;
        Ok(())
    }

    /// Starts over from the beginning: call right after a durable database commit, which makes
    /// every record written so far unneeded. Applies a new size set at open.
    pub fn restart(&mut self, full: bool) -> Result<(), JournalError> {
        if self.failed {
            return Err(JournalError::Io {
                op: "restart the journal",
                source: io::Error::other("the commit journal failed earlier"),
            });
        }
        let len = self
            .file
            .len()
            .map_err(io_err("read the journal's length"))?;
        if len != self.size || self.header_size != self.size {
            let r = self.format();
            if r.is_err() {
                self.failed = true;
            }
            r?;
        }
        if self.since_restart > 0 || full {
            self.stats.restarts += 1;
        }
        if full {
            self.stats.full += 1;
        }
        self.pos = BLOCK;
        self.since_restart = 0;
        Ok(())
    }

    /// Records written since the last restart.
    pub fn since_restart(&self) -> u64 {
        self.since_restart
    }

    /// The counters.
    pub fn stats(&self) -> JournalStats {
        self.stats
    }
}

fn padded(body_len: usize) -> u64 {
    (RECORD_HEADER_BYTES as u64 + body_len as u64).div_ceil(BLOCK) * BLOCK
}

/// `[magic u32][version u16][0 u16][salt u64][size u64][crc32c u32]`, zeros to a block.
fn header_block(salt: u64, size: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK as usize];
    b[0..4].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
    b[4..6].copy_from_slice(&JOURNAL_FORMAT_VERSION.to_le_bytes());
    b[8..16].copy_from_slice(&salt.to_le_bytes());
    b[16..24].copy_from_slice(&size.to_le_bytes());
    let crc = crc32c(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The header's salt and file size; `None` when there is no valid header (never completed).
fn read_header(f: &dyn StorageBackend, len: u64) -> Result<Option<(u64, u64)>, JournalError> {
    if len < HEADER_BYTES as u64 {
        return Ok(None);
    }
    let mut b = [0u8; HEADER_BYTES];
    f.read(0, &mut b)
        .map_err(io_err("read the journal header"))?;
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    if u32_at(0) != HEADER_MAGIC || crc32c(&b[..24]) != u32_at(24) {
        return Ok(None);
    }
    let version = u16::from_le_bytes([b[4], b[5]]);
    if version != JOURNAL_FORMAT_VERSION {
        return Err(JournalError::UnknownFormatVersion {
            found: version,
            supported: JOURNAL_FORMAT_VERSION,
        });
    }
    let size = u64_at(16);
    if size < JOURNAL_BYTES_MIN || !size.is_multiple_of(BLOCK) {
        return Err(JournalError::Corrupt {
            what: format!("the journal header names a size of {size} bytes"),
        });
    }
    Ok(Some((u64_at(8), size)))
}

/// Whether any block after the header starts with a record's magic.
fn any_record_magic(f: &dyn StorageBackend, len: u64) -> Result<bool, JournalError> {
    let mut at = BLOCK;
    let mut m = [0u8; 4];
    while at + 4 <= len {
        f.read(at, &mut m).map_err(io_err("read the journal"))?;
        if u32::from_le_bytes(m) == RECORD_MAGIC {
            return Ok(true);
        }
        at += BLOCK;
    }
    Ok(false)
}

/// `[magic u32][version u16][0 u16][seq u64][salt u64][body length u32][crc32c u32]`, the body,
/// zeros to a whole block. The checksum covers the header's first 28 bytes and the body.
fn frame_record(seq: u64, salt: u64, body: &[u8]) -> Vec<u8> {
    let padded = padded(body.len()) as usize;
    let mut out = Vec::with_capacity(padded);
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&JOURNAL_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&salt.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let crc = crc32c_append(crc32c(&out[..28]), body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    out.resize(padded, 0);
    out
}

/// The record header at `at`, if one of this journal (magic, version, salt) fits there.
fn record_at(
    f: &dyn StorageBackend,
    size: u64,
    salt: u64,
    at: u64,
) -> Result<Option<RecordAt>, JournalError> {
    if at + RECORD_HEADER_BYTES as u64 > size {
        return Ok(None);
    }
    let mut h = [0u8; RECORD_HEADER_BYTES];
    f.read(at, &mut h).map_err(io_err("read the journal"))?;
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    if u32_at(0) != RECORD_MAGIC
        || u16::from_le_bytes([h[4], h[5]]) != JOURNAL_FORMAT_VERSION
        || u64_at(16) != salt
    {
        return Ok(None);
    }
    let body_len = u64::from(u32_at(24));
    let padded_len = padded(body_len as usize);
    if at + padded_len > size {
        return Ok(None);
    }
    Ok(Some(RecordAt {
        seq: u64_at(8),
        at,
        body_len,
        padded_len,
    }))
}

/// The record's body if its checksum holds (`None`: torn).
fn checked_body(
    f: &dyn StorageBackend,
    salt: u64,
    r: &RecordAt,
) -> Result<Option<Vec<u8>>, JournalError> {
    let mut h = [0u8; RECORD_HEADER_BYTES];
    f.read(r.at, &mut h).map_err(io_err("read the journal"))?;
    let mut body = vec![0u8; r.body_len as usize];
    f.read(r.at + RECORD_HEADER_BYTES as u64, &mut body)
        .map_err(io_err("read the journal"))?;
    let want = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
    let ok = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")) == salt
        && crc32c_append(crc32c(&h[..28]), &body) == want;
    Ok(ok.then_some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{Rng, SeedableRng};
    use std::sync::{Arc, Mutex};

    /// An in-memory file that forgets, at a crash, any unsynced 512-byte sector it is told to.
    #[derive(Debug, Default)]
    struct Disk {
        current: Vec<u8>,
        durable: Vec<u8>,
        fail_sync: bool,
        dead: bool,
    }

    #[derive(Debug, Clone, Default)]
    struct MemFile(Arc<Mutex<Disk>>);

    const SECTOR: usize = 512;

    impl MemFile {
        fn with(image: Vec<u8>) -> Self {
            let f = MemFile::default();
            {
                let mut d = f.0.lock().unwrap();
                d.current = image.clone();
                d.durable = image;
            }
            f
        }

        fn current(&self) -> Vec<u8> {
            self.0.lock().unwrap().current.clone()
        }

        /// The image after a power loss: every synced byte, plus each unsynced sector with
        /// probability `keep_percent`.
        fn crash(&self, rng: &mut ChaCha8Rng, keep_percent: u64) -> Vec<u8> {
            let mut d = self.0.lock().unwrap();
            d.dead = true;
            let mut img = d.durable.clone();
            img.resize(d.current.len(), 0);
            for s in (0..d.current.len()).step_by(SECTOR) {
                let e = (s + SECTOR).min(d.current.len());
                if d.durable.get(s..e) != Some(&d.current[s..e])
                    && rng.next_u64() % 100 < keep_percent
                {
                    img[s..e].copy_from_slice(&d.current[s..e]);
                }
            }
            img
        }
    }

    impl StorageBackend for MemFile {
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.lock().unwrap().current.len() as u64)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            let d = self.0.lock().unwrap();
            let s = offset as usize;
            let src = d
                .current
                .get(s..s + out.len())
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
            out.copy_from_slice(src);
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            let mut d = self.0.lock().unwrap();
            if d.dead {
                return Err(io::Error::other("simulated power loss"));
            }
            d.current.resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            let mut d = self.0.lock().unwrap();
            if d.dead {
                return Err(io::Error::other("simulated power loss"));
            }
            if d.fail_sync {
                return Err(io::Error::other("injected fsync failure"));
            }
            d.durable = d.current.clone();
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let mut d = self.0.lock().unwrap();
            if d.dead {
                return Err(io::Error::other("simulated power loss"));
            }
            let (s, e) = (offset as usize, offset as usize + data.len());
            if d.current.len() < e {
                d.current.resize(e, 0);
            }
            d.current[s..e].copy_from_slice(data);
            Ok(())
        }
    }

    const SMALL: u64 = 24 * BLOCK;

    fn body(seq: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
    }

    /// Many lives of appends and restarts (the database made durable), each ended by a power
    /// loss at a random point: reopening returns exactly the records after the database's
    /// durable point up to the last acknowledged one (and the one being written when the power
    /// went, if all of it reached the disk), with their bodies.
    #[test]
    fn a_power_loss_returns_every_acknowledged_record_after_the_durable_point() {
        for seed in 0..500u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut file = MemFile::default();
            // The database: durable up to `durable`; `applied` holds every record's body.
            let mut durable = 0u64;
            let mut next = 1u64;
            let mut bodies: Vec<Vec<u8>> = vec![Vec::new()];
            for _life in 0..4 {
                let (mut j, records, report) =
                    Journal::open(Box::new(file.clone()), SMALL, durable)
                        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                // Everything acknowledged after the durable point comes back, in order.
                let want: Vec<u64> = (durable + 1..next).collect();
                let got: Vec<u64> = records.iter().map(|r| r.seq).collect();
                assert!(
                    got == want || (got.len() == want.len() + 1 && got[..want.len()] == want[..]),
                    "seed {seed}: durable {durable}, acknowledged up to {}, read back {got:?}",
                    next - 1
                );
                for r in &records {
                    if r.seq == next {
                        bodies.push(r.body.clone()); // the unacknowledged one made it whole
                        next += 1;
                    }
                    assert_eq!(
                        r.body, bodies[r.seq as usize],
                        "seed {seed}: record {}",
                        r.seq
                    );
                }
                assert_eq!(report.records_replayed, records.len() as u64);
                // The store applies them and commits durably, then restarts the journal.
                durable = next - 1;
                j.restart(false).unwrap();
                let steps = rng.next_u64() % 40;
                for _ in 0..steps {
                    let len = if rng.next_u64() % 10 == 0 {
                        (rng.next_u64() % (3 * BLOCK)) as usize
                    } else {
                        (rng.next_u64() % 600) as usize
                    };
                    if rng.next_u64() % 8 == 0 || !j.fits(len) {
                        // A durable database commit (it covers this batch too).
                        let full = !j.fits(len);
                        bodies.push(body(next, len));
                        durable = next;
                        next += 1;
                        j.restart(full).unwrap();
                        continue;
                    }
                    let b = body(next, len);
                    bodies.push(b.clone());
                    if rng.next_u64() % 20 == 0 {
                        // The power goes while this record is being written: not acknowledged.
                        let rec = frame_record(next, j.salt, &b);
                        let cut = (rng.next_u64() as usize) % (rec.len() + 1);
                        file.write(j.pos, &rec[..cut]).unwrap();
                        break;
                    }
                    j.append(next, &b).unwrap();
                    next += 1;
                }
                let keep = rng.next_u64() % 101;
                let img = file.crash(&mut rng, keep);
                drop(j);
                file = MemFile::with(img);
                // An unacknowledged record that did not come back is forgotten by the model.
                bodies.truncate(next as usize);
            }
        }
    }

    fn fresh() -> (MemFile, Journal) {
        let file = MemFile::default();
        let (mut j, records, _) = Journal::open(Box::new(file.clone()), SMALL, 0).unwrap();
        assert!(records.is_empty());
        j.restart(false).unwrap();
        (file, j)
    }

    #[test]
    fn a_damaged_record_before_a_valid_one_refuses_the_open() {
        let (file, mut j) = fresh();
        for seq in 1..=3 {
            j.append(seq, &body(seq, 100)).unwrap();
        }
        let mut img = file.current();
        // The second record starts two blocks in (after the header and the first record).
        img[2 * BLOCK as usize + RECORD_HEADER_BYTES + 10] ^= 0x40;
        let err = Journal::open(Box::new(MemFile::with(img)), SMALL, 0).unwrap_err();
        assert!(
            matches!(&err, JournalError::Corrupt { what } if what.contains("record 3 is valid")),
            "{err}"
        );
    }

    #[test]
    fn a_torn_last_record_is_ignored() {
        let (file, mut j) = fresh();
        for seq in 1..=3 {
            j.append(seq, &body(seq, 100)).unwrap();
        }
        let mut img = file.current();
        img[3 * BLOCK as usize + RECORD_HEADER_BYTES + 10] ^= 0x40;
        let (_, records, _) = Journal::open(Box::new(MemFile::with(img)), SMALL, 0).unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn records_before_the_durable_point_and_older_passes_are_not_returned() {
        let (file, mut j) = fresh();
        for seq in 1..=5 {
            j.append(seq, &body(seq, 5000)).unwrap();
        }
        // The database became durable at 6; the journal starts over and holds 7 and 8 over the
        // first records of the earlier pass.
        j.restart(false).unwrap();
        j.append(7, &body(7, 10)).unwrap();
        j.append(8, &body(8, 10)).unwrap();
        let (_, records, report) =
            Journal::open(Box::new(MemFile::with(file.current())), SMALL, 6).unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 8]);
        assert_eq!(report.durable_seq, 6);
        // A database durable up to 7 only needs 8.
        let (_, records, _) =
            Journal::open(Box::new(MemFile::with(file.current())), SMALL, 7).unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [8]);
    }

    #[test]
    fn a_database_behind_the_journal_is_corruption() {
        let (file, mut j) = fresh();
        j.restart(false).unwrap();
        j.append(7, &body(7, 10)).unwrap();
        // The database says it is durable up to 5, but the journal starts at 7: batch 6 is lost.
        let err = Journal::open(Box::new(MemFile::with(file.current())), SMALL, 5).unwrap_err();
        assert!(
            matches!(&err, JournalError::Corrupt { what } if what.contains("batch 6 is missing")),
            "{err}"
        );
    }

    #[test]
    fn user_bytes_that_look_like_a_record_are_not_taken_for_one() {
        let (file, mut j) = fresh();
        // A body holding a well-formed record of another journal (another salt) with a high
        // sequence number, at a block boundary, followed by a torn record.
        let mut b = vec![0u8; 2 * BLOCK as usize];
        let fake = frame_record(99, j.salt ^ 1, b"fake");
        let at = BLOCK as usize - RECORD_HEADER_BYTES;
        let n = fake.len().min(b.len() - at);
        b[at..at + n].copy_from_slice(&fake[..n]);
        j.append(1, &b).unwrap();
        j.append(2, b"x").unwrap();
        let mut img = file.current();
        let second = BLOCK + padded(b.len());
        img[second as usize + RECORD_HEADER_BYTES] ^= 1;
        let (_, records, _) = Journal::open(Box::new(MemFile::with(img)), SMALL, 0).unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn a_failed_sync_fails_the_journal_for_good() {
        let (file, mut j) = fresh();
        file.0.lock().unwrap().fail_sync = true;
        assert!(j.append(1, b"x").is_err());
        file.0.lock().unwrap().fail_sync = false;
        assert!(!j.fits(1));
        assert!(j.append(1, b"x").is_err());
        assert!(j.restart(false).is_err());
    }

    #[test]
    fn an_unknown_version_refuses_the_open_and_a_new_size_applies_at_the_restart() {
        let (file, mut j) = fresh();
        j.append(1, b"x").unwrap();
        let mut img = file.current();
        img[4..6].copy_from_slice(&1u16.to_le_bytes());
        let crc = crc32c(&img[..24]);
        img[24..28].copy_from_slice(&crc.to_le_bytes());
        let err = Journal::open(Box::new(MemFile::with(img)), SMALL, 0).unwrap_err();
        assert!(
            matches!(err, JournalError::UnknownFormatVersion { found: 1, .. }),
            "{err}"
        );
        let (mut j2, records, _) = Journal::open(Box::new(file.clone()), 2 * SMALL, 0).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(file.len().unwrap(), SMALL);
        j2.restart(false).unwrap();
        assert_eq!(file.len().unwrap(), 2 * SMALL);
        let (_, records, _) = Journal::open(Box::new(file.clone()), 2 * SMALL, 0).unwrap();
        assert!(records.is_empty());
    }
}
