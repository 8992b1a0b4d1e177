//! The copy a compaction makes while writes go on (see
//! [`super::SledStore::reclaim`] and `generation.rs`).
//!
//! 1. While no change is in flight (every lock stripe held, for as long as
//!    it takes to set this up), the store starts applying every change it
//!    commits to the copy as well as to the database in use.
//! 2. Writes go on; the copier walks the database in use and puts each
//!    record into the copy unless the copy already has the key (a change
//!    wrote it since: its value is newer) or a change removed the key since
//!    (the copy holds what the changes left). Both checks and the copier's
//!    write are made under one mutex that a change's removals take too, so a
//!    record read before a change removed it is never put back.
//! 3. The copy is flushed and synced while writes go on; then, with every
//!    stripe held again, what came in meanwhile is flushed, and the store
//!    switches to the copy.
//!
//! So every record of the database in use is in the copy at the switch, with
//! its latest value, and writes wait only for steps 1 and 3.
//!
//! Invariant: once a shadow is installed, every committed change reaches it
//! before its locks are released.

use std::{
    collections::HashSet,
    sync::{Mutex, OnceLock, PoisonError},
};

use sled::CompareAndSwapError;

use super::Result;
use crate::store::StoreError;

/// A staged write: a key, and its new value or `None` for a removal.
pub(crate) type Write<'a> = (&'a [u8], Option<&'a [u8]>);

/// A compaction's copy in progress.
#[derive(Debug)]
pub(crate) struct Shadow {
    /// The copy.
    db: sled::Db,
    /// Keys removed since the copy began (bounded by the removals of one
    /// copy's duration; dropped with the shadow).
    removed: Mutex<HashSet<Vec<u8>>>,
    /// Why a change could not be applied to the copy: the compaction is
    /// given up (the change itself stands, in the database in use).
    failed: OnceLock<String>,
}

impl Shadow {
    pub(crate) fn new(db: sled::Db) -> Self {
        Self {
            db,
            removed: Mutex::new(HashSet::new()),
            failed: OnceLock::new(),
        }
    }

    /// The copy.
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Applies a committed change's writes to the copy, as one batch.
    pub(crate) fn apply<'a>(&self, writes: impl IntoIterator<Item = Write<'a>>) {
        let mut removed = self.removed.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => {
                    removed.insert(key.to_vec());
                    batch.remove(key);
                }
            }
        }
        if let Err(error) = self.db.apply_batch(batch) {
            self.failed.get_or_init(|| error.to_string());
        }
    }

    /// Copies every record of `from` that no change has written or removed
    /// since the shadow was installed. Returns how many it copied.
    pub(crate) fn copy_from(&self, from: &sled::Db) -> Result<u64> {
        let mut copied = 0u64;
        for item in from.iter() {
            self.check()?;
            let (key, value) = item?;
            let removed = self.removed.lock().unwrap_or_else(PoisonError::into_inner);
            if removed.contains(key.as_ref()) {
                continue;
            }
            // Only where the key is absent: a change that wrote it since has the newer value.
            let swapped: std::result::Result<(), CompareAndSwapError> =
                self.db.compare_and_swap(&key, None::<&[u8]>, Some(value))?;
            if swapped.is_ok() {
                copied += 1;
            }
            drop(removed);
        }
        self.check()?;
        Ok(copied)
    }

    /// Fails when a change could not be applied to the copy.
    pub(crate) fn check(&self) -> Result<()> {
        match self.failed.get() {
            Some(why) => Err(StoreError::io(std::io::Error::other(format!(
                "a change could not be applied to the compacted copy: {why}"
            )))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> (sled::Db, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().path(dir.path()).open().expect("sled");
        (db, dir)
    }

    #[test]
    fn a_change_the_copy_could_not_take_fails_the_copy() {
        let (from, _a) = temp_db();
        let (to, _b) = temp_db();
        from.insert("k", "v").expect("insert");
        let shadow = Shadow::new(to);
        assert!(shadow.check().is_ok());
        let _ = shadow.failed.set("injected: disk full".into());
        let refused = shadow.copy_from(&from).expect_err("given up");
        assert!(refused.to_string().contains("injected"), "{refused}");
        assert!(shadow.check().is_err());
    }

    #[test]
    fn the_copy_keeps_what_changes_wrote_and_removed_since_it_began() {
        let (from, _a) = temp_db();
        let (to, _b) = temp_db();
        for key in ["kept", "rewritten", "removed", "removed-then-written"] {
            from.insert(key, "old").expect("insert");
        }
        let shadow = Shadow::new(to);
        // Changes made after the shadow was installed, to both databases.
        let changes: [Write<'_>; 4] = [
            (b"rewritten", Some(b"new")),
            (b"removed", None),
            (b"removed-then-written", None),
            (b"added", Some(b"new")),
        ];
        shadow.apply(changes);
        shadow.apply([(&b"removed-then-written"[..], Some(&b"new"[..]))]);
        // The copier may still read the old values (here: it does, as the
        // source is not changed): they must not win.
        assert_eq!(shadow.copy_from(&from).expect("copy"), 1, "only `kept`");
        let copy: Vec<(String, String)> = shadow
            .db()
            .iter()
            .map(|item| {
                let (k, v) = item.expect("read");
                (
                    String::from_utf8(k.to_vec()).expect("utf8"),
                    String::from_utf8(v.to_vec()).expect("utf8"),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = [
            ("added", "new"),
            ("kept", "old"),
            ("removed-then-written", "new"),
            ("rewritten", "new"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(copy, expected);
    }
}
