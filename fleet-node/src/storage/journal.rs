//! The commit journal: a redb storage backend that makes a durable redb commit cost one
//! sequential write and one `fdatasync` of a preallocated file.
//!
//! # Why
//!
//! A durable redb commit writes every page it dirtied (about eight scattered pages for one
//! write-ahead record) and then syncs the database file. On this project's machines that sync
//! costs about 0.45 ms and 0.6 ms of CPU (each scattered page is a block request, and on a VM a
//! block request is a VM exit), while one contiguous write over already allocated blocks and its
//! `fdatasync` cost about 0.23 ms and 0.1 ms of CPU (figures in `docs/storage.md`). Group commit
//! pays one durable commit per batch, so this cost bounds the whole fleet's write rate.
//!
//! # How
//!
//! Like SQLite's WAL mode or a database's double-write buffer, underneath redb:
//!
//! - every write redb makes goes to the database file at once (into the page cache, not synced)
//!   **and** is copied into a buffer;
//! - when redb syncs (the end of a durable commit), the buffer becomes one **group**: a header
//!   with a sequence number and a checksum, then the writes, padded to whole blocks. The group is
//!   written at the journal's write position and the journal is synced; that sync is the commit's
//!   durability. The database file is not synced;
//! - the journal file has two halves used in turn. When one is full, writing moves to the other
//!   and a background **checkpoint** syncs the database file (which already holds every write of
//!   the full half), then records in the journal's header that the database is durable up to the
//!   half's last group. A half is overwritten only once a checkpoint covers all of its groups; if
//!   the other half is not free yet, the commit waits for that checkpoint (back-pressure, never
//!   a lost group);
//! - the journal file is filled with zeros to its full size when it is created, so that groups
//!   overwrite allocated blocks (a write that extends a file costs an inode write more);
//! - a group larger than a half is not journaled: the commit syncs the database file instead,
//!   through a checkpoint it waits for.
//!
//! On open, before redb reads anything, the journal's groups after the recorded checkpoint are
//! applied to the database file in order and the file is synced. The groups are full images of
//! what redb wrote, so replay is idempotent and turns any torn state of the unsynced database
//! file into exactly the state of the last completed sync, which is all redb's own crash safety
//! asks of a disk.
//!
//! # Failure rules
//!
//! - A group whose checksum fails after the newest valid group is a torn write of a sync that
//!   never returned: it is ignored.
//! - A missing or invalid group between the recorded checkpoint and the newest valid group is
//!   corruption: opening fails with [`JournalError::Corrupt`], never a silent truncation.
//! - Any failed write or sync (of the journal or, in a checkpoint, of the database) fails the
//!   backend for good: every later write and sync returns an error (a failed `fsync` is never
//!   retried).

use std::io;
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use redb::StorageBackend;

use super::codec::{crc32c, crc32c_append};

/// The journal file's name in the data directory.
pub const JOURNAL_FILE_NAME: &str = "fleet.journal";

/// The unit groups are aligned and padded to.
const BLOCK: u64 = 4096;
/// The two header slots, one block each, before the halves.
const HEADER_SLOTS: u64 = 2;
const HEADER_MAGIC: u32 = u32::from_le_bytes(*b"FJHD");
const GROUP_MAGIC: u32 = u32::from_le_bytes(*b"FJGR");
/// The journal's format version (headers and groups).
pub const JOURNAL_FORMAT_VERSION: u16 = 1;
const GROUP_HEADER_BYTES: usize = 32;
const HEADER_BYTES: usize = 40;
const OP_WRITE: u8 = 1;
const OP_SET_LEN: u8 = 2;
/// Zeros written per request when the journal file is created.
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// The write buffer's capacity kept between syncs (a larger burst's buffer is given back).
const PENDING_KEPT_BYTES_MAX: usize = 1 << 20;

/// The journal's size settings.
#[derive(Clone, Copy, Debug)]
pub struct JournalConfig {
    /// The size of each of the two halves. A commit larger than this syncs the database file
    /// instead; a larger half makes checkpoints rarer and replay on open longer. The journal
    /// file is filled with zeros to its full size (two halves and a header) when it is created,
    /// so that every group overwrites allocated blocks: the cheap kind of sync.
    pub half_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            half_bytes: 32 << 20,
        }
    }
}

impl JournalConfig {
    /// Rounds the sizes to whole blocks and refuses a half too small to hold any group.
    fn normalized(self) -> io::Result<Self> {
        let half_bytes = self.half_bytes / BLOCK * BLOCK;
        if half_bytes < 4 * BLOCK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "journal half of {} bytes is too small: the least is {} bytes",
                    self.half_bytes,
                    4 * BLOCK
                ),
            ));
        }
        Ok(JournalConfig { half_bytes })
    }
}

/// Why a journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing a file failed.
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

/// What opening a journal did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalReport {
    /// Groups applied to the database file.
    pub groups_replayed: u64,
    /// Their bytes (headers and padding included).
    pub bytes_replayed: u64,
    /// The sequence number the database file is durable up to after the open.
    pub checkpoint_seq: u64,
}

/// Counters of a running journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Groups written to the journal.
    pub groups: u64,
    /// Their bytes (headers and padding included).
    pub bytes: u64,
    /// Checkpoints completed (database file syncs).
    pub checkpoints: u64,
    /// Syncs that waited for a checkpoint (a half not yet free, or a group larger than a half).
    pub waits: u64,
}

/// A redb storage backend over a database file `M`, made durable through a journal file `L`.
/// See the module docs.
pub struct JournaledBackend<M: StorageBackend, L: StorageBackend> {
    shared: Arc<Shared<M, L>>,
    state: Mutex<State>,
    checkpointer: Option<JoinHandle<()>>,
}

impl<M: StorageBackend, L: StorageBackend> std::fmt::Debug for JournaledBackend<M, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournaledBackend")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

struct Shared<M, L> {
    main: M,
    log: L,
    config: JournalConfig,
    ckpt: Mutex<Checkpoint>,
    ckpt_changed: Condvar,
}

/// The checkpoint thread's inputs and outputs.
#[derive(Debug, Default)]
struct Checkpoint {
    /// Checkpoint up to this sequence number (every write of groups up to it is in the database
    /// file by the time it is requested).
    requested: u64,
    /// The database file is durable up to this sequence number, and the journal's header says so.
    done: u64,
    /// The number the next header written carries (the newest valid header wins on open).
    header_counter: u64,
    /// The first failure; sticky.
    failed: Option<String>,
    shutdown: bool,
    stats: JournalStats,
}

/// The writing side's position.
struct State {
    /// The writes since the last sync, encoded as group operations.
    pending: Vec<u8>,
    pending_ops: u32,
    next_seq: u64,
    /// The half being written, and the next offset in it.
    half: usize,
    offset: u64,
    /// The last sequence number written into each half in its current pass (0: none).
    half_last: [u64; 2],
}

impl<M: StorageBackend, L: StorageBackend> JournaledBackend<M, L> {
    /// Opens the journal over `main`: replays the groups after the last checkpoint into `main`,
    /// syncs it, and starts the checkpoint thread. A fresh (empty) journal is initialized.
    pub fn open(
        main: M,
        log: L,
        config: JournalConfig,
    ) -> Result<(Self, JournalReport), JournalError> {
        let config = config.normalized().map_err(|source| JournalError::Io {
            op: "check the journal settings",
            source,
        })?;
        let io = |op: &'static str| move |source: io::Error| JournalError::Io { op, source };
        let log_len = log.len().map_err(io("read the journal's length"))?;
        let header = read_header(&log, log_len)?;
        let mut report = JournalReport::default();
        let (mut checkpoint, mut counter) = (0, 0);
        if let Some(h) = header {
            checkpoint = h.checkpoint_seq;
            counter = h.counter + 1;
            let groups = scan(&log, log_len, h.half_bytes, checkpoint)?;
            for g in &groups {
                let body = read_group_body(&log, g)?;
                apply(&main, &body).map_err(io("apply a journal group to the database"))?;
                report.groups_replayed += 1;
                report.bytes_replayed += g.padded_len;
            }
            if let Some(last) = groups.last() {
                main.sync_data()
                    .map_err(io("sync the database after the journal replay"))?;
                checkpoint = last.seq;
            }
        } else if log_len > 0 && has_group(&log, log_len)? {
            return Err(JournalError::Corrupt {
                what: "the journal holds groups but neither header slot is valid".into(),
            });
        }
        let file_bytes = HEADER_SLOTS * BLOCK + 2 * config.half_bytes;
        if log_len < file_bytes {
            // A new (or larger) journal: zeros to its full size, synced with the header below.
            write_zeros(&log, log_len, file_bytes).map_err(io("fill the journal with zeros"))?;
        }
        write_header(&log, &config, counter, checkpoint).map_err(io("write the journal header"))?;
        log.sync_data().map_err(io("sync the journal header"))?;
        report.checkpoint_seq = checkpoint;
        let shared = Arc::new(Shared {
            main,
            log,
            config,
            ckpt: Mutex::new(Checkpoint {
                requested: checkpoint,
                done: checkpoint,
                header_counter: counter + 1,
                ..Checkpoint::default()
            }),
            ckpt_changed: Condvar::new(),
        });
        let state = State {
            pending: Vec::new(),
            pending_ops: 0,
            next_seq: checkpoint + 1,
            half: 0,
            offset: 0,
            half_last: [0, 0],
        };
        let s = shared.clone();
        let checkpointer = std::thread::Builder::new()
            .name("fleet-journal-checkpoint".into())
            .spawn(move || checkpoint_loop(&s))
            .map_err(io("start the journal checkpoint thread"))?;
        Ok((
            JournaledBackend {
                shared,
                state: Mutex::new(state),
                checkpointer: Some(checkpointer),
            },
            report,
        ))
    }

    /// The journal's counters so far.
    pub fn stats(&self) -> JournalStats {
        self.shared.lock_ckpt().stats
    }

    /// A handle that reads the counters while redb owns the backend.
    pub fn stats_handle(&self) -> JournalStatsHandle {
        let shared: Arc<dyn StatsSource> = self.shared.clone();
        JournalStatsHandle(shared)
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every write so far durable: one journal group, or a checkpoint for a group too
    /// large for a half.
    fn sync(&self, st: &mut State) -> io::Result<()> {
        self.shared.check_failed()?;
        if st.pending_ops == 0 {
            return Ok(());
        }
        // The group ends with the file's length, so that replay leaves the length exact too
        // (the length a crash leaves may be an older or a newer one).
        let len = self.shared.main.len();
        let len = self.shared.check_io(len)?;
        st.pending.push(OP_SET_LEN);
        st.pending.extend_from_slice(&len.to_le_bytes());
        st.pending_ops += 1;
        let seq = st.next_seq;
        let group = frame_group(seq, st.pending_ops, &st.pending);
        let half_bytes = self.shared.config.half_bytes;
        if group.len() as u64 > half_bytes {
            // Too large to journal: the database file already holds the writes; sync it.
            st.next_seq += 1;
            self.clear_pending(st);
            self.shared.request_checkpoint(seq);
            return self.shared.wait_checkpoint(seq, true);
        }
        if st.offset + group.len() as u64 > half_bytes {
            // This half is full: its groups are all in the database file, so a checkpoint can
            // start; the other half is reused once a checkpoint covers its groups.
            let (full, other) = (st.half, 1 - st.half);
            self.shared.request_checkpoint(st.half_last[full]);
            self.shared.wait_checkpoint(st.half_last[other], false)?;
            st.half = other;
            st.offset = 0;
            st.half_last[other] = 0;
        }
        let at = HEADER_SLOTS * BLOCK + st.half as u64 * half_bytes + st.offset;
        let r = self.shared.log.write(at, &group);
        self.shared.check_io(r)?;
        let r = self.shared.log.sync_data();
        self.shared.check_io(r)?;
        st.offset += group.len() as u64;
        st.half_last[st.half] = seq;
        st.next_seq += 1;
        {
            let mut c = self.shared.lock_ckpt();
            c.stats.groups += 1;
            c.stats.bytes += group.len() as u64;
        }
        self.clear_pending(st);
        Ok(())
    }

    fn clear_pending(&self, st: &mut State) {
        st.pending.clear();
        st.pending_ops = 0;
        // A burst (a checkpoint of many groups) may have grown the buffer: give it back.
        if st.pending.capacity() > PENDING_KEPT_BYTES_MAX {
            st.pending.shrink_to(PENDING_KEPT_BYTES_MAX);
        }
    }

    /// Checkpoints everything written so far and waits for it (on close).
    fn checkpoint_all(&self) -> io::Result<()> {
        let mut st = self.lock_state();
        self.sync(&mut st)?;
        let last = st.next_seq - 1;
        self.shared.request_checkpoint(last);
        self.shared.wait_checkpoint(last, false)
    }
}

impl<M: StorageBackend, L: StorageBackend> Drop for JournaledBackend<M, L> {
    fn drop(&mut self) {
        {
            let mut c = self.shared.lock_ckpt();
            c.shutdown = true;
        }
        self.shared.ckpt_changed.notify_all();
        if let Some(h) = self.checkpointer.take() {
            let _ = h.join();
        }
    }
}

/// Reads a journal's counters (the backend itself belongs to redb once the database is open).
#[derive(Clone)]
pub struct JournalStatsHandle(Arc<dyn StatsSource>);

impl std::fmt::Debug for JournalStatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("JournalStatsHandle")
            .field(&self.get())
            .finish()
    }
}

impl JournalStatsHandle {
    /// The counters now.
    pub fn get(&self) -> JournalStats {
        self.0.stats()
    }
}

trait StatsSource: Send + Sync {
    fn stats(&self) -> JournalStats;
}

impl<M: StorageBackend, L: StorageBackend> StatsSource for Shared<M, L> {
    fn stats(&self) -> JournalStats {
        self.lock_ckpt().stats
    }
}

impl<M: StorageBackend, L: StorageBackend> Shared<M, L> {
    fn lock_ckpt(&self) -> MutexGuard<'_, Checkpoint> {
        self.ckpt.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_failed(&self) -> io::Result<()> {
        match &self.lock_ckpt().failed {
            Some(why) => Err(io::Error::other(format!(
                "the journal has failed earlier ({why}); nothing more is written"
            ))),
            None => Ok(()),
        }
    }

    /// Records the first failure: every later write and sync fails.
    fn check_io<T>(&self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            let mut c = self.lock_ckpt();
            c.failed.get_or_insert_with(|| e.to_string());
            drop(c);
            self.ckpt_changed.notify_all();
        }
        r
    }

    fn request_checkpoint(&self, seq: u64) {
        let mut c = self.lock_ckpt();
        if seq > c.requested {
            c.requested = seq;
            drop(c);
            self.ckpt_changed.notify_all();
        }
    }

    /// Waits until the database file is durable up to `seq` (`counted`: count it as a wait even
    /// if it is already).
    fn wait_checkpoint(&self, seq: u64, counted: bool) -> io::Result<()> {
        let mut c = self.lock_ckpt();
        if counted || c.done < seq {
            c.stats.waits += 1;
        }
        while c.done < seq {
            if let Some(why) = &c.failed {
                return Err(io::Error::other(format!(
                    "the journal's checkpoint failed ({why}); nothing more is written"
                )));
            }
            c = self.ckpt_changed.wait(c).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }
}

/// The checkpoint thread: syncs the database file up to the requested sequence number, then
/// records it in the journal's header.
fn checkpoint_loop<M: StorageBackend, L: StorageBackend>(shared: &Shared<M, L>) {
    loop {
        let (target, counter) = {
            let mut c = shared.lock_ckpt();
            while !c.shutdown && (c.failed.is_some() || c.requested <= c.done) {
                c = shared
                    .ckpt_changed
                    .wait(c)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if c.shutdown {
                return;
            }
            c.header_counter += 1;
            (c.requested, c.header_counter - 1)
        };
        let r = shared
            .main
            .sync_data()
            .and_then(|()| write_header(&shared.log, &shared.config, counter, target))
            .and_then(|()| shared.log.sync_data());
        let mut c = shared.lock_ckpt();
        match r {
            Ok(()) => {
                c.done = c.done.max(target);
                c.stats.checkpoints += 1;
            }
            Err(e) => {
                tracing::error!(error = %e, "journal checkpoint failed: the store stops");
                c.failed.get_or_insert_with(|| e.to_string());
            }
        }
        drop(c);
        shared.ckpt_changed.notify_all();
    }
}

impl<M: StorageBackend, L: StorageBackend> StorageBackend for JournaledBackend<M, L> {
    fn len(&self) -> io::Result<u64> {
        self.shared.main.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.shared.main.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.lock_state();
        self.shared.check_failed()?;
        let r = self.shared.main.set_len(len);
        self.shared.check_io(r)?;
        st.pending.push(OP_SET_LEN);
        st.pending.extend_from_slice(&len.to_le_bytes());
        st.pending_ops += 1;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.lock_state();
        self.sync(&mut st)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.lock_state();
        self.shared.check_failed()?;
        let r = self.shared.main.write(offset, data);
        self.shared.check_io(r)?;
        let len = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a single write of {} bytes is too large to journal",
                    data.len()
                ),
            )
        })?;
        st.pending.push(OP_WRITE);
        st.pending.extend_from_slice(&offset.to_le_bytes());
        st.pending.extend_from_slice(&len.to_le_bytes());
        st.pending.extend_from_slice(data);
        st.pending_ops += 1;
        Ok(())
    }

    fn close(&self) -> io::Result<()> {
        self.checkpoint_all()?;
        self.shared.main.close()?;
        self.shared.log.close()
    }

    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.shared.main.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.shared.main.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.shared.main.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.shared.main.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.shared.main.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.shared.main.query_lock_range(start, end)
    }
}

/// Encodes one group: `[magic u32][version u16][0 u16][seq u64][body length u32][op count u32]
/// [crc32c u32][0 u32]`, the body, zeros to a whole block. The checksum covers the header's first
/// 24 bytes and the body.
fn frame_group(seq: u64, ops: u32, body: &[u8]) -> Vec<u8> {
    let len = GROUP_HEADER_BYTES + body.len();
    let padded = (len as u64).div_ceil(BLOCK) * BLOCK;
    let mut out = Vec::with_capacity(padded as usize);
    out.extend_from_slice(&GROUP_MAGIC.to_le_bytes());
    out.extend_from_slice(&JOURNAL_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&ops.to_le_bytes());
    let crc = crc32c_append(crc32c(&out[..24]), body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(body);
    out.resize(padded as usize, 0);
    out
}

/// A valid group found by [`scan`].
#[derive(Clone, Copy, Debug)]
struct GroupAt {
    seq: u64,
    at: u64,
    body_len: u64,
    crc: u32,
    padded_len: u64,
}

/// Reads and checks the group header at `at` (`None`: no valid group there).
fn group_at<L: StorageBackend>(
    log: &L,
    log_len: u64,
    at: u64,
    room: u64,
) -> io::Result<Option<GroupAt>> {
    if at + GROUP_HEADER_BYTES as u64 > log_len || room < GROUP_HEADER_BYTES as u64 {
        return Ok(None);
    }
    let mut h = [0u8; GROUP_HEADER_BYTES];
    log.read(at, &mut h)?;
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if u32_at(0) != GROUP_MAGIC {
        return Ok(None);
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    let seq = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let body_len = u64::from(u32_at(16));
    let padded_len = (GROUP_HEADER_BYTES as u64 + body_len).div_ceil(BLOCK) * BLOCK;
    if version != JOURNAL_FORMAT_VERSION || padded_len > room || at + padded_len > log_len {
        return Ok(None);
    }
    Ok(Some(GroupAt {
        seq,
        at,
        body_len,
        crc: u32_at(24),
        padded_len,
    }))
}

/// Reads a group's body and checks its checksum (`None`: torn or not a group).
fn checked_body<L: StorageBackend>(log: &L, g: &GroupAt) -> io::Result<Option<Vec<u8>>> {
    let mut h = [0u8; 24];
    log.read(g.at, &mut h)?;
    let mut body = vec![0u8; g.body_len as usize];
    log.read(g.at + GROUP_HEADER_BYTES as u64, &mut body)?;
    let crc = crc32c_append(crc32c(&h), &body);
    Ok((crc == g.crc).then_some(body))
}

fn read_group_body<L: StorageBackend>(log: &L, g: &GroupAt) -> Result<Vec<u8>, JournalError> {
    checked_body(log, g)
        .map_err(|source| JournalError::Io {
            op: "read a journal group",
            source,
        })?
        .ok_or_else(|| JournalError::Corrupt {
            what: format!("journal group {} changed while it was read", g.seq),
        })
}

/// Finds every valid group after `checkpoint` in both halves and checks that they run without
/// a gap from `checkpoint + 1`; returns them in order.
///
/// Every block boundary is probed (a valid group is skipped whole), not only the run from a
/// half's start: a damaged group followed by valid later ones must be found to be reported as
/// corruption rather than taken for the torn end of the journal.
fn scan<L: StorageBackend>(
    log: &L,
    log_len: u64,
    half_bytes: u64,
    checkpoint: u64,
) -> Result<Vec<GroupAt>, JournalError> {
    let io = |source| JournalError::Io {
        op: "read the journal",
        source,
    };
    let mut found = Vec::new();
    for half in 0..2u64 {
        let base = HEADER_SLOTS * BLOCK + half * half_bytes;
        let mut off = 0;
        while off < half_bytes && base + off < log_len {
            let valid = match group_at(log, log_len, base + off, half_bytes - off).map_err(io)? {
                Some(g) if checked_body(log, &g).map_err(io)?.is_some() => Some(g),
                _ => None,
            };
            match valid {
                Some(g) => {
                    if g.seq > checkpoint {
                        found.push(g);
                    }
                    off += g.padded_len;
                }
                None => off += BLOCK,
            }
        }
    }
    found.sort_by_key(|g| g.seq);
    for (i, g) in found.iter().enumerate() {
        let expected = checkpoint + 1 + i as u64;
        if g.seq != expected {
            let what = if g.seq < expected {
                format!("journal group {} is stored twice", g.seq)
            } else {
                format!(
                    "journal group {expected} is missing or damaged, but group {} after it is \
                     valid (the database is durable only up to group {checkpoint})",
                    g.seq
                )
            };
            return Err(JournalError::Corrupt { what });
        }
    }
    Ok(found)
}

/// Whether any block of the journal starts with a group's magic (to tell a damaged header from
/// a journal that never held anything).
fn has_group<L: StorageBackend>(log: &L, log_len: u64) -> Result<bool, JournalError> {
    let mut at = HEADER_SLOTS * BLOCK;
    let mut m = [0u8; 4];
    while at + 4 <= log_len {
        log.read(at, &mut m).map_err(|source| JournalError::Io {
            op: "read the journal",
            source,
        })?;
        if u32::from_le_bytes(m) == GROUP_MAGIC {
            return Ok(true);
        }
        at += BLOCK;
    }
    Ok(false)
}

/// Applies a group's operations to the database file.
fn apply<M: StorageBackend>(main: &M, body: &[u8]) -> io::Result<()> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "a journal group's operations are malformed",
        )
    };
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        match kind {
            OP_WRITE if tail.len() >= 12 => {
                let offset = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
                let len = u32::from_le_bytes(tail[8..12].try_into().expect("4 bytes")) as usize;
                let data = tail.get(12..12 + len).ok_or_else(bad)?;
                main.write(offset, data)?;
                rest = &tail[12 + len..];
            }
            OP_SET_LEN if tail.len() >= 8 => {
                main.set_len(u64::from_le_bytes(tail[..8].try_into().expect("8 bytes")))?;
                rest = &tail[8..];
            }
            _ => return Err(bad()),
        }
    }
    Ok(())
}

/// A valid header slot.
#[derive(Clone, Copy, Debug)]
struct Header {
    counter: u64,
    checkpoint_seq: u64,
    half_bytes: u64,
}

/// Writes header slot `counter % 2`: `[magic u32][version u16][0 u16][counter u64][checkpoint
/// u64][half bytes u64][crc32c u32][0 u32]`.
fn write_header<L: StorageBackend>(
    log: &L,
    config: &JournalConfig,
    counter: u64,
    checkpoint: u64,
) -> io::Result<()> {
    let mut b = vec![0u8; BLOCK as usize];
    b[0..4].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
    b[4..6].copy_from_slice(&JOURNAL_FORMAT_VERSION.to_le_bytes());
    b[8..16].copy_from_slice(&counter.to_le_bytes());
    b[16..24].copy_from_slice(&checkpoint.to_le_bytes());
    b[24..32].copy_from_slice(&config.half_bytes.to_le_bytes());
    let crc = crc32c(&b[..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    log.write((counter % HEADER_SLOTS) * BLOCK, &b)
}

/// The newest valid header slot, if any.
fn read_header<L: StorageBackend>(log: &L, log_len: u64) -> Result<Option<Header>, JournalError> {
    let mut best: Option<Header> = None;
    for slot in 0..HEADER_SLOTS {
        let at = slot * BLOCK;
        if at + HEADER_BYTES as u64 > log_len {
            continue;
        }
        let mut b = [0u8; HEADER_BYTES];
        log.read(at, &mut b).map_err(|source| JournalError::Io {
            op: "read the journal header",
            source,
        })?;
        let crc = u32::from_le_bytes(b[32..36].try_into().expect("4 bytes"));
        if u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) != HEADER_MAGIC
            || crc32c(&b[..32]) != crc
        {
            continue;
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != JOURNAL_FORMAT_VERSION {
            return Err(JournalError::UnknownFormatVersion {
                found: version,
                supported: JOURNAL_FORMAT_VERSION,
            });
        }
        let h = Header {
            counter: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            checkpoint_seq: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            half_bytes: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
        };
        if h.half_bytes < 4 * BLOCK || !h.half_bytes.is_multiple_of(BLOCK) {
            return Err(JournalError::Corrupt {
                what: format!("the journal header names a half of {} bytes", h.half_bytes),
            });
        }
        if best.is_none_or(|b| h.counter > b.counter) {
            best = Some(h);
        }
    }
    Ok(best)
}

/// Fills `[from, to)` of the journal with zeros, so that groups overwrite allocated blocks.
fn write_zeros<L: StorageBackend>(log: &L, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZERO_CHUNK_BYTES as u64);
        log.write(at, &zeros[..n as usize])?;
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{Rng, SeedableRng};

    /// An in-memory file that forgets, at a crash, any unsynced 512-byte sector it is told to.
    #[derive(Debug, Default)]
    struct Disk {
        current: Vec<u8>,
        durable: Vec<u8>,
        fail_sync: bool,
    }

    /// A file in memory. Files made by [`MemFile::pair`] share one power switch: after a
    /// crash, every write and sync of either fails, as the checkpoint thread would find after a
    /// real power loss.
    #[derive(Debug, Clone, Default)]
    struct MemFile(Arc<Mutex<Disk>>, Arc<std::sync::atomic::AtomicBool>);

    const SECTOR: usize = 512;

    impl MemFile {
        fn pair(main: Vec<u8>, log: Vec<u8>) -> (Self, Self) {
            let (m, mut l) = (MemFile::with(main), MemFile::with(log));
            l.1 = m.1.clone();
            (m, l)
        }

        fn powered(&self) -> io::Result<()> {
            if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(io::Error::other("simulated power loss"));
            }
            Ok(())
        }

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
        /// probability `keep_percent`, and the length either way.
        fn crash(&self, rng: &mut ChaCha8Rng, keep_percent: u64) -> Vec<u8> {
            self.1.store(true, std::sync::atomic::Ordering::SeqCst);
            let d = self.0.lock().unwrap();
            let len = if rng.next_u64().is_multiple_of(2) {
                d.current.len()
            } else {
                d.durable.len()
            };
            let mut img = d.durable.clone();
            img.resize(d.current.len().max(img.len()), 0);
            for s in (0..d.current.len()).step_by(SECTOR) {
                let e = (s + SECTOR).min(d.current.len());
                if d.durable.get(s..e) != Some(&d.current[s..e])
                    && rng.next_u64() % 100 < keep_percent
                {
                    img[s..e].copy_from_slice(&d.current[s..e]);
                }
            }
            img.truncate(len);
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
            self.powered()?;
            d.current.resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            let mut d = self.0.lock().unwrap();
            self.powered()?;
            if d.fail_sync {
                return Err(io::Error::other("injected fsync failure"));
            }
            d.durable = d.current.clone();
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let mut d = self.0.lock().unwrap();
            self.powered()?;
            let (s, e) = (offset as usize, offset as usize + data.len());
            if d.current.len() < e {
                d.current.resize(e, 0);
            }
            d.current[s..e].copy_from_slice(data);
            Ok(())
        }
    }

    fn small() -> JournalConfig {
        JournalConfig {
            half_bytes: 8 * BLOCK,
        }
    }

    fn open(
        main: &MemFile,
        log: &MemFile,
    ) -> Result<(JournaledBackend<MemFile, MemFile>, JournalReport), JournalError> {
        JournaledBackend::open(main.clone(), log.clone(), small())
    }

    /// What the database file may hold after a power loss: the state of the last sync, except
    /// bytes written since (each may hold either), and a length set since.
    #[derive(Default)]
    struct Expected {
        synced: Vec<u8>,
        dirty: Vec<bool>,
        lengths: Vec<usize>,
    }

    impl Expected {
        fn synced(&mut self, image: Vec<u8>) {
            self.dirty = vec![false; image.len()];
            self.lengths = vec![image.len()];
            self.synced = image;
        }
        fn written(&mut self, off: usize, len: usize, file_len: usize) {
            if self.dirty.len() < off + len {
                self.dirty.resize(off + len, false);
            }
            self.dirty[off..off + len]
                .iter_mut()
                .for_each(|d| *d = true);
            self.lengths.push(file_len);
        }
        fn check(&self, found: &[u8], seed: u64) {
            assert!(
                self.lengths.contains(&found.len()),
                "seed {seed}: length {} is none of {:?}",
                found.len(),
                self.lengths
            );
            for (i, &b) in found.iter().enumerate() {
                let dirty = self.dirty.get(i).copied().unwrap_or(true);
                let want = self.synced.get(i).copied().unwrap_or(0);
                assert!(
                    dirty || b == want || i >= self.synced.len(),
                    "seed {seed}: byte {i} is {b}, the last sync left {want}"
                );
            }
        }
    }

    /// Random writes and syncs with a power loss at a random point, many times over: after
    /// reopening, the database file holds what it held at the last completed sync (bytes written
    /// after it may hold either, as on a real disk).
    #[test]
    fn a_power_loss_leaves_the_database_as_of_the_last_sync() {
        for seed in 0..300u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (mut main, mut log) = MemFile::pair(Vec::new(), Vec::new());
            let mut expected = Expected::default();
            expected.synced(Vec::new());
            // Several lives: each reopens what the last power loss left.
            for _life in 0..3 {
                let (j, _) = open(&main, &log).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                expected.check(&main.current(), seed);
                // The replayed state is synced: it is the base of this life.
                expected.synced(main.current());
                let steps = rng.next_u64() % 120;
                for _ in 0..steps {
                    match rng.next_u64() % 10 {
                        0 => {
                            let len = (rng.next_u64() % (64 * 1024)) as usize;
                            let old = main.current().len();
                            j.set_len(len as u64).unwrap();
                            // Either way the bytes between the two lengths may be lost.
                            let (lo, hi) = (len.min(old), len.max(old));
                            expected.written(lo, hi - lo, len);
                        }
                        1..=6 => {
                            // Mostly small writes, sometimes one larger than a half.
                            let len = if rng.next_u64() % 25 == 0 {
                                12 * BLOCK as usize
                            } else {
                                1 + (rng.next_u64() % 5000) as usize
                            };
                            let off = (rng.next_u64() % (48 * 1024)) as usize;
                            let byte = rng.next_u64() as u8;
                            let old = main.current().len();
                            j.write(off as u64, &vec![byte; len]).unwrap();
                            let file_len = main.current().len();
                            // Growing the file zero-fills the bytes before the write.
                            let from = off.min(old);
                            expected.written(from, off + len - from, file_len);
                        }
                        _ => {
                            j.sync_data().unwrap();
                            expected.synced(main.current());
                        }
                    }
                }
                // The plug is pulled: nothing more reaches either file.
                let keep = rng.next_u64() % 101;
                let (m, l) = (main.crash(&mut rng, keep), log.crash(&mut rng, keep));
                drop(j);
                (main, log) = MemFile::pair(m, l);
            }
        }
    }

    fn write_and_sync(j: &JournaledBackend<MemFile, MemFile>, off: u64, byte: u8) {
        j.write(off, &[byte; 100]).unwrap();
        j.sync_data().unwrap();
    }

    #[test]
    fn a_damaged_group_before_the_newest_refuses_the_open() {
        let (main, log) = (MemFile::default(), MemFile::default());
        let (j, _) = open(&main, &log).unwrap();
        for i in 0..3 {
            write_and_sync(&j, i * 100, i as u8 + 1);
        }
        std::mem::forget(j);
        // The second group (seq 2) starts one block after the first.
        let mut img = log.current();
        let second = (HEADER_SLOTS + 1) * BLOCK + GROUP_HEADER_BYTES as u64 + 20;
        img[second as usize] ^= 0x40;
        let err = open(&MemFile::with(main.current()), &MemFile::with(img)).unwrap_err();
        assert!(
            matches!(&err, JournalError::Corrupt { what } if what.contains("group 2 is missing or damaged")),
            "{err}"
        );
    }

    #[test]
    fn a_torn_newest_group_is_ignored_and_the_rest_replayed() {
        let (main, log) = (MemFile::default(), MemFile::default());
        let (j, _) = open(&main, &log).unwrap();
        write_and_sync(&j, 0, 1);
        let after_first = main.current();
        write_and_sync(&j, 0, 2);
        std::mem::forget(j);
        let mut img = log.current();
        let second = (HEADER_SLOTS + 1) * BLOCK + GROUP_HEADER_BYTES as u64 + 20;
        img[second as usize] ^= 0x40;
        // The database file never got synced: only the journal can bring group 1 back.
        let main2 = MemFile::with(Vec::new());
        let (_j, report) = open(&main2, &MemFile::with(img)).unwrap();
        assert_eq!(report.groups_replayed, 1);
        assert_eq!(main2.current(), after_first);
    }

    #[test]
    fn the_halves_are_reused_only_after_a_checkpoint_and_reopen_replays_nothing_after_close() {
        let (main, log) = (MemFile::default(), MemFile::default());
        let (j, _) = open(&main, &log).unwrap();
        for i in 0..100u64 {
            write_and_sync(&j, (i % 7) * 300, i as u8);
        }
        let s = j.stats();
        assert_eq!(s.groups, 100);
        assert!(s.checkpoints >= 1, "{s:?}");
        // The journal never grows past its two halves.
        assert_eq!(log.len().unwrap(), (HEADER_SLOTS + 16) * BLOCK);
        let expected = main.current();
        j.close().unwrap();
        drop(j);
        let (_j, report) = open(&main, &log).unwrap();
        assert_eq!(report.groups_replayed, 0);
        assert_eq!(main.current(), expected);
    }

    #[test]
    fn a_commit_larger_than_a_half_syncs_the_database_file() {
        let (main, log) = (MemFile::default(), MemFile::default());
        let (j, _) = open(&main, &log).unwrap();
        j.write(0, &vec![9u8; 10 * BLOCK as usize]).unwrap();
        j.sync_data().unwrap();
        let s = j.stats();
        assert_eq!((s.groups, s.waits), (0, 1), "{s:?}");
        let durable = main.0.lock().unwrap().durable.clone();
        assert_eq!(durable, main.current());
    }

    #[test]
    fn a_failed_sync_fails_every_later_write() {
        let (main, log) = (MemFile::default(), MemFile::default());
        let (j, _) = open(&main, &log).unwrap();
        log.0.lock().unwrap().fail_sync = true;
        j.write(0, b"x").unwrap();
        assert!(j.sync_data().is_err());
        log.0.lock().unwrap().fail_sync = false;
        assert!(
            j.write(0, b"y").is_err(),
            "a write after a failed sync must fail"
        );
        assert!(j.sync_data().is_err());
    }

    #[test]
    fn an_unknown_journal_version_refuses_the_open() {
        let (main, log) = (MemFile::default(), MemFile::default());
        drop(open(&main, &log).unwrap());
        let mut img = log.current();
        img[4..6].copy_from_slice(&9u16.to_le_bytes());
        let crc = crc32c(&img[..32]);
        img[32..36].copy_from_slice(&crc.to_le_bytes());
        let err = open(&main, &MemFile::with(img)).unwrap_err();
        assert!(
            matches!(err, JournalError::UnknownFormatVersion { found: 9, .. }),
            "{err}"
        );
    }
}
