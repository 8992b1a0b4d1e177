//! One process per data directory: an exclusive advisory lock on
//! `<data-dir>/consentd.lock`, which also records the holder's pid so that the
//! refusal can say who holds it.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read, Seek, SeekFrom, Write},
    path::Path,
};

use crate::store::StoreError;

/// The lock file's name inside the data directory.
const LOCK_FILE: &str = "consentd.lock";

/// Holds the data directory until dropped (the OS releases the lock when the
/// file is closed, also on `kill -9`).
#[derive(Debug)]
pub(crate) struct DirLock {
    /// The locked file; kept open for the process's lifetime.
    _file: File,
}

impl DirLock {
    /// Takes the lock, or says which process holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source: source.into(),
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(StoreError::InUse {
                    path: dir.to_path_buf(),
                    holder: holder.trim().to_owned(),
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(StoreError::Open {
                    path,
                    source: source.into(),
                });
            }
        }
        let record = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "pid {}", std::process::id())?;
            file.sync_all()
        };
        record(&mut file).map_err(|source| StoreError::Open {
            path,
            source: source.into(),
        })?;
        Ok(Self { _file: file })
    }
}
