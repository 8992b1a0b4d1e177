//! The lock table both stores share: [`Lock`]s mapped onto a fixed set of
//! asynchronous mutex stripes.
//!
//! Asynchronous, so that a change waiting for a lock (or for a backup that
//! holds them all) never blocks an async worker: it yields. Stripes are
//! taken in index order, so two changes that take several cannot deadlock.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
};

use tokio::sync::{Mutex, MutexGuard};

use super::Lock;

/// How many stripes; two locks share one with probability 1/1024, which
/// only serialises them.
const STRIPES: usize = 1024;

/// The stripes.
#[derive(Debug)]
pub(crate) struct LockTable {
    stripes: Vec<Mutex<()>>,
}

/// Stripes held until dropped.
#[derive(Debug)]
pub(crate) struct Held<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl Default for LockTable {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl LockTable {
    fn stripe(lock: &Lock) -> usize {
        let mut hasher = DefaultHasher::new();
        lock.hash(&mut hasher);
        let stripes = u64::try_from(STRIPES).unwrap_or(1);
        usize::try_from(hasher.finish() % stripes).unwrap_or(0)
    }

    /// Takes the stripes of `locks`, waiting for each in index order.
    pub(crate) async fn lock(&self, locks: &[Lock]) -> Held<'_> {
        let mut stripes: Vec<usize> = locks.iter().map(Self::stripe).collect();
        stripes.sort_unstable();
        stripes.dedup();
        if stripes.is_empty() {
            // A change that names no lock still holds a stripe, so that
            // `pause` (a backup, a compaction) waits for it too.
            stripes.push(0);
        }
        let mut guards = Vec::with_capacity(stripes.len());
        for i in stripes {
            guards.push(self.stripes[i].lock().await);
        }
        Held { _guards: guards }
    }

    /// Takes every stripe: while held, no change is between its first read
    /// and its commit, and none starts.
    pub(crate) async fn pause(&self) -> Held<'_> {
        let mut guards = Vec::with_capacity(STRIPES);
        for stripe in &self.stripes {
            guards.push(stripe.lock().await);
        }
        Held { _guards: guards }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::LockTable;

    #[tokio::test]
    async fn a_change_without_locks_still_holds_back_a_pause() {
        let table = LockTable::default();
        let held = table.lock(&[]).await;
        let waited = tokio::time::timeout(Duration::from_millis(50), table.pause()).await;
        assert!(waited.is_err(), "pause went ahead of a change in flight");
        drop(held);
        let paused = tokio::time::timeout(Duration::from_secs(5), table.pause()).await;
        assert!(paused.is_ok(), "pause after the change");
    }
}
