//! An online backup's consistent view of the records, without a copy of them
//! (see [`super::SledStore`]'s `snapshot`).
//!
//! 1. The cut: while no change is in flight (every lock stripe held, for as
//!    long as it takes to register a [`BackupView`]: no record is read), the
//!    store starts telling the view about every change it commits.
//! 2. From then on, before a change writes or removes a record the view
//!    covers, the view keeps that record's value as of the cut (its value
//!    then, or "absent"), the first time only: [`BackupView::preserve`].
//! 3. The backup reads the live database in key order and, for every key the
//!    view kept, gives the kept value instead of the live one; keys that were
//!    removed since the cut are merged back in from the view, in key order;
//!    keys written since that did not exist at the cut are left out
//!    ([`BackupView::records`]).
//!
//! Why that is the state as of the cut, key by key: a key the view has not
//! kept when the backup looks (after reading its live value) had no change
//! before that read, since a change keeps the old value before it writes;
//! so the live value read is the value at the cut. A key the view kept has
//! its value at the cut in the view. A key removed since the cut was kept
//! before it was removed, so before the live read passed its place.
//!
//! Memory: the view holds the records changed since the cut (the first
//! time each), not the whole store; it is dropped with the backup.

use std::{
    collections::BTreeMap,
    ops::Bound,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use sled::IVec;

use super::{Result, StoreError, dump, keys};
use crate::{
    engine::Tenant,
    store::{DumpItem, Snapshot},
};

/// The records a backup covers, as of its cut (see the module docs).
#[derive(Debug)]
pub(crate) struct BackupView {
    /// The key prefixes the backup covers, in the order it reads them.
    prefixes: Vec<Vec<u8>>,
    /// For each covered key changed since the cut: its value at the cut.
    before: Mutex<BTreeMap<Vec<u8>, Option<IVec>>>,
}

impl BackupView {
    /// The view of `tenant`'s records (every tenant's when `None`).
    pub(crate) fn new(tenant: Option<&Tenant>) -> Self {
        Self {
            prefixes: keys::DUMPED_TYPES
                .into_iter()
                .map(|t| keys::type_prefix(t, tenant))
                .collect(),
            before: Mutex::new(BTreeMap::new()),
        }
    }

    fn before(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, Option<IVec>>> {
        self.before.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn covers(&self, key: &[u8]) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p))
    }

    /// Keeps the values in `db` of the covered `keys` not kept yet: called
    /// before a change writes or removes them.
    pub(crate) fn preserve<'a>(
        &self,
        db: &sled::Db,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<()> {
        let mut before = None;
        for key in keys {
            if !self.covers(key) {
                continue;
            }
            let before = before.get_or_insert_with(|| self.before());
            if !before.contains_key(key) {
                before.insert(key.to_vec(), db.get(key)?);
            }
        }
        Ok(())
    }

    /// How many records the view keeps (changed since the cut).
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.before().len()
    }

    /// The raw records as of the cut, in the order of a dump, read from `db`.
    pub(crate) fn records<'a>(
        &'a self,
        db: &'a sled::Db,
    ) -> impl Iterator<Item = Result<(IVec, IVec)>> + Send + 'a {
        self.prefixes
            .iter()
            .flat_map(move |prefix| Merged::new(self, db, prefix))
    }
}

/// The records of one prefix as of the cut: the live ones merged with what
/// the view kept.
struct Merged<'a> {
    view: &'a BackupView,
    prefix: &'a [u8],
    live: std::iter::Peekable<sled::Iter>,
    /// The last key given (or passed over).
    last: Option<Vec<u8>>,
}

impl<'a> Merged<'a> {
    fn new(view: &'a BackupView, db: &sled::Db, prefix: &'a [u8]) -> Self {
        Self {
            view,
            prefix,
            live: db.scan_prefix(prefix).peekable(),
            last: None,
        }
    }

    /// The first kept record that existed at the cut, after `last` and
    /// before `until` (the end of the prefix when `None`).
    fn kept_between(&self, until: Option<&[u8]>) -> Option<(Vec<u8>, IVec)> {
        let before = self.view.before();
        let from = match &self.last {
            Some(last) => Bound::Excluded(last.as_slice()),
            None => Bound::Included(self.prefix),
        };
        before
            .range::<[u8], _>((from, Bound::Unbounded))
            .take_while(|(key, _)| {
                key.starts_with(self.prefix) && until.is_none_or(|until| key.as_slice() < until)
            })
            .find_map(|(key, value)| value.clone().map(|value| (key.clone(), value)))
    }
}

impl Iterator for Merged<'_> {
    type Item = Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let until = match self.live.peek() {
                Some(Ok((key, _))) => Some(key.to_vec()),
                Some(Err(_)) => match self.live.next() {
                    Some(Err(error)) => return Some(Err(StoreError::from(error))),
                    _ => continue,
                },
                None => None,
            };
            // A record removed since the cut, before the next live one.
            if let Some((key, value)) = self.kept_between(until.as_deref()) {
                self.last = Some(key.clone());
                return Some(Ok((IVec::from(key), value)));
            }
            let (key, live) = match self.live.next()? {
                Ok(record) => record,
                Err(error) => return Some(Err(StoreError::from(error))),
            };
            self.last = Some(key.to_vec());
            // Looked at after the live read: see the module docs.
            let kept = self.view.before().get(key.as_ref()).cloned();
            match kept {
                // Changed since the cut: its value then.
                Some(Some(value)) => return Some(Ok((key, value))),
                // Written since the cut: not in the backup.
                Some(None) => {}
                None => return Some(Ok((key, live))),
            }
        }
    }
}

/// The active backups' views, told about every change.
#[derive(Debug, Default)]
pub(crate) struct Views(Mutex<Vec<Arc<BackupView>>>);

impl Views {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<BackupView>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The views to tell about a change (empty when no backup runs).
    pub(crate) fn active(&self) -> Vec<Arc<BackupView>> {
        self.lock().clone()
    }

    /// Whether a backup runs.
    pub(crate) fn any(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Keeps the values as of each active backup's cut of the `keys` a
    /// change is about to write or remove in `db`.
    pub(crate) fn preserve<'a>(
        &self,
        db: &sled::Db,
        keys: impl IntoIterator<Item = &'a [u8]> + Clone,
    ) -> Result<()> {
        for view in self.active() {
            view.preserve(db, keys.clone())?;
        }
        Ok(())
    }
}

/// An online backup in progress: the view registered with the store, and
/// the count of its records. Dropping it unregisters the view.
#[derive(Debug)]
pub(crate) struct ViewSnapshot {
    db: sled::Db,
    view: Arc<BackupView>,
    views: Arc<Views>,
    records: usize,
    paused: Duration,
}

impl ViewSnapshot {
    /// Registers `view` with `views` (the caller holds every lock stripe:
    /// this is the cut).
    pub(crate) fn register(views: &Arc<Views>, view: BackupView) -> Arc<BackupView> {
        let view = Arc::new(view);
        views.lock().push(Arc::clone(&view));
        view
    }

    /// The backup of `view` over `db`: counts its records (while writes go on).
    pub(crate) fn new(
        db: sled::Db,
        view: Arc<BackupView>,
        views: Arc<Views>,
        paused: Duration,
    ) -> Result<Self> {
        let mut snapshot = Self {
            db,
            view,
            views,
            records: 0,
            paused,
        };
        let mut records = 0;
        for record in snapshot.view.records(&snapshot.db) {
            let (key, _) = record?;
            if dump::is_dumped(&key) {
                records += 1;
            }
        }
        snapshot.records = records;
        Ok(snapshot)
    }
}

impl Drop for ViewSnapshot {
    fn drop(&mut self) {
        self.views.lock().retain(|v| !Arc::ptr_eq(v, &self.view));
    }
}

impl Snapshot for ViewSnapshot {
    fn len(&self) -> usize {
        self.records
    }

    fn paused(&self) -> Duration {
        self.paused
    }

    fn items(&self) -> Box<dyn Iterator<Item = Result<DumpItem>> + Send + '_> {
        Box::new(
            self.view
                .records(&self.db)
                .filter_map(|record| match record {
                    Ok((key, value)) => dump::decode_item(&key, &value).transpose(),
                    Err(error) => Some(Err(error)),
                }),
        )
    }
}
