//! The ledger file's health (SPEC §4 `GET /healthz`): whether the path still names the
//! file the master opened, and why writes fail when they do.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use ledger::LedgerError;

/// The files the master opened, by device and inode. `rm master.db*` or a file moved
/// over the path leaves the open descriptors writing to a file nobody will ever read
/// again: every write after that would be acknowledged and lost at the next start.
pub(super) struct Identity {
    files: Vec<(PathBuf, (u64, u64))>,
}

impl Identity {
    /// The database file and, when there is one, its WAL, as they are now.
    pub(super) fn of(db: &Path) -> std::io::Result<Self> {
        let mut files = vec![(db.to_path_buf(), inode(db)?)];
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        if let Ok(id) = inode(&wal) {
            files.push((wal, id));
        }
        Ok(Self { files })
    }

    /// `Err` with the reason when a path no longer names the file opened.
    pub(super) fn check(&self) -> Result<(), String> {
        for (path, opened) in &self.files {
            match inode(path) {
                Ok(now) if now == *opened => {}
                Ok(_) => return Err(format!("{} was replaced by another file", path.display())),
                Err(error) => return Err(format!("{} is gone ({error})", path.display())),
            }
        }
        Ok(())
    }
}

fn inode(path: &Path) -> std::io::Result<(u64, u64)> {
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
}

/// Why ledger writes fail now, shared by the writer (which sets and clears it) and the
/// callers (who read it when their write was dropped). Cheap to clone.
#[derive(Clone, Default)]
pub struct Fault(Arc<Mutex<Option<String>>>);

impl Fault {
    /// The current fault, if any.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Records the state after a batch: `Some(reason)` when it failed, `None` when it
    /// committed. Logs each change once, loudly when writes start failing.
    pub(super) fn set(&self, fault: Option<String>) {
        let mut current = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *current == fault {
            return;
        }
        match &fault {
            Some(reason) => {
                tracing::error!(%reason, "LEDGER UNAVAILABLE: writes are refused until this is fixed")
            }
            None => tracing::warn!("ledger writable again"),
        }
        *current = fault;
    }
}

/// A database error that means the storage, not the statement, is at fault (disk full,
/// I/O error, read-only file, file cannot be opened) becomes `Unavailable`.
pub(super) fn storage_fault_to_unavailable(error: LedgerError) -> LedgerError {
    // SQLite primary result codes (the low byte of an extended code).
    const SQLITE_READONLY: i64 = 8;
    const SQLITE_IOERR: i64 = 10;
    const SQLITE_FULL: i64 = 13;
    const SQLITE_CANTOPEN: i64 = 14;
    let LedgerError::Database(database) = &error else { return error };
    let code = database.as_database_error().and_then(|e| e.code()).and_then(|code| code.parse::<i64>().ok());
    match code.map(|code| code & 0xff) {
        Some(SQLITE_READONLY | SQLITE_IOERR | SQLITE_FULL | SQLITE_CANTOPEN) => {
            LedgerError::Unavailable(database.to_string())
        }
        _ => error,
    }
}
