//! Faults a test switches on in a running node's storage: the database file is redb's own file
//! backend, wrapped so that `fdatasync` can be made to fail on demand. Used only when a test asks
//! for it (`FleetBuilder::storage_faults`); production opens the file directly.

use std::fmt;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::StorageBackend;
use redb::backends::FileBackend;

/// Switches a test flips while the node runs.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct StorageFaults {
    /// Every `fdatasync` of the database fails (as `EIO` would) while this is set.
    pub fail_sync: AtomicBool,
}

/// redb's file backend with [`StorageFaults`] applied.
pub(crate) struct FaultyFile {
    file: FileBackend,
    faults: Arc<StorageFaults>,
}

impl fmt::Debug for FaultyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyFile")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl FaultyFile {
    /// Opens (creating if needed) the database file at `path`.
    pub(crate) fn open(path: &Path, faults: Arc<StorageFaults>) -> std::io::Result<FaultyFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let file = FileBackend::new(file).map_err(std::io::Error::other)?;
        Ok(FaultyFile { file, faults })
    }
}

impl StorageBackend for FaultyFile {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected fsync failure (EIO)"));
        }
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }

    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.file.query_lock_range(start, end)
    }
}
