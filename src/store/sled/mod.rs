//! The embedded store: every record in one sled tree (the default).
//!
//! - Changes: a [`SledTxn`] takes its lock stripes (asynchronously, see
//!   `store::locks`), reads, stages its writes in order, and commits them as
//!   one `apply_batch` (atomic), or, when that costs more than it must, as
//!   ordered single inserts that are atomic all the same (see
//!   [`SledTxn::commit`]). sled transactions are not used: they take a
//!   process-wide lock that stalls readers. Reads never lock.
//! - Durability: the group committer (`commit.rs`) makes every applied
//!   change durable with one `flush` + `fdatasync`, then hands the feed
//!   everything that flush covers, then answers its waiters.
//! - The derived indexes (`u`: address → profiles, `s`: status, `c`:
//!   subscribers, `E`: marker expiry) are written by the same commit as the
//!   record they derive from.
//!
//! Invariant: only this module and its children name sled.

mod backup;
use super::codec;
#[doc(hidden)]
pub use codec::fuzz_decode_record;
mod commit;
mod dir_lock;
mod dump;
mod generation;
mod keys;
mod migrate;
mod shadow;
mod watch;

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock, RwLock},
    time::{Duration, Instant},
};

use ::sled::IVec;
use async_trait::async_trait;

use super::{
    Change, ChangeRetention, CompactionPolicy, Cursor, Direction, DumpItem, Expired, FeedSink,
    FlushObserver, Loaded, Lock, Page, Position, Reclaimed, Result, Snapshot, Store, StoreError,
    Txn, WatchRead,
    feed::FeedQueue,
    locks::{Held, LockTable},
};
use crate::engine::{
    Address, AddressConsent, AddressEvent, AddressHash, AddressState, AddressStatus,
    ConsentHistoryEntry, Erasure, ErasureKey, EventId, EventKey, Profile, ProfileId, Service,
    ServiceId, Subscription, SubscriptionStatus, Tenant, TenantSettings, TokenHash, TokenRecord,
    Tombstone, UnixMillis, UsageOptOut, UserId,
};

pub use codec::CodecError;
use commit::GroupCommit;
pub use commit::SyncFault;
use dir_lock::DirLock;
use shadow::Shadow;

/// Default size of sled's page cache. sled's own default is 1 GiB; the
/// decision index holds what the hot path reads, so the cache only serves
/// writes, listings and point reads of whole records.
pub const CACHE_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;

/// How the sled store is opened.
#[derive(Clone, Default)]
pub struct SledOptions {
    /// sled's page cache, in bytes; `None`: [`CACHE_BYTES_DEFAULT`].
    pub cache_bytes: Option<u64>,
    /// Called by the committer before each `fdatasync`; an error it returns
    /// is taken for a failed sync. For tests (a failpoint); `None` in service.
    pub sync_fault: Option<SyncFault>,
}

impl std::fmt::Debug for SledOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledOptions")
            .field("cache_bytes", &self.cache_bytes)
            .field("sync_fault", &self.sync_fault.is_some())
            .finish()
    }
}

/// The sled database in use: one tree (the default) with typed key
/// prefixes, in one generation of the data directory (`generation.rs`).
#[derive(Debug)]
pub(crate) struct Live {
    /// The database.
    db: ::sled::Db,
    /// Its log file: `fdatasync` of it makes a flush reach the disk.
    data_file: File,
    /// Where its files are.
    generation: generation::Generation,
}

/// The database in use, replaced by a compaction (see [`SledStore::reclaim`]).
pub(crate) type Current = Arc<RwLock<Arc<Live>>>;

/// The database in use, also when a panic poisoned the lock (the value is
/// only ever replaced whole, so it is never half-written).
pub(crate) fn live(current: &Current) -> Arc<Live> {
    Arc::clone(
        &current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// When [`SledStore::reclaim`] next counts the records.
#[derive(Debug, Default)]
struct ReclaimState {
    /// Bytes on disk up to which the records are not counted again: the
    /// threshold found by the last count, where it said "not yet".
    counted_until: u64,
}

/// The store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct SledStore {
    /// The data directory.
    dir: PathBuf,
    /// sled's page cache, in bytes.
    cache_bytes: u64,
    /// The database in use.
    current: Current,
    /// When to look at the records for a compaction; also keeps restores
    /// (whose writes do not reach a compaction's copy) and compactions apart.
    reclaim: tokio::sync::Mutex<ReclaimState>,
    /// The copy of a compaction in progress: every change reaches it too.
    shadow: ShadowSlot,
    /// The views of the online backups in progress: every change tells
    /// them first (see `backup.rs`).
    backups: Arc<backup::Views>,
    /// The group committer that makes changes durable and feeds them on.
    commit: GroupCommit,
    /// Stripes of locks for changes.
    locks: LockTable,
    /// Committed changes waiting for durability.
    feed: Arc<FeedQueue>,
    /// Why writes are refused, once a flush failed.
    failure: Arc<OnceLock<Arc<str>>>,
    /// The store's identity in watch tokens.
    watch_id: String,
    /// Held for the store's lifetime: one process per data directory.
    _dir_lock: DirLock,
}

fn corrupt(key: &[u8]) -> impl FnOnce(CodecError) -> StoreError + '_ {
    move |source| StoreError::Corrupt {
        key: key.escape_ascii().to_string(),
        reason: source.to_string(),
    }
}

impl From<::sled::Error> for StoreError {
    fn from(error: ::sled::Error) -> Self {
        match error {
            ::sled::Error::Io(e) => StoreError::io(e),
            other => StoreError::Corrupt {
                key: "sled".into(),
                reason: other.to_string(),
            },
        }
    }
}

fn open_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Open {
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

/// Where a compaction's copy is while one is made: shared with the
/// committer, which writes the watch log to it too.
pub(crate) type ShadowSlot = Arc<RwLock<Option<Arc<Shadow>>>>;

/// What a record costs in a freshly written sled file beyond its key and
/// value bytes: measured at 185–195 bytes over 290,000–390,000 records of
/// the retention soak (docs/performance.md, "Retention").
const FRESH_RECORD_OVERHEAD: u64 = 200;

/// Opens the log file of `generation` for `fdatasync`.
fn open_data_file(generation: &generation::Generation) -> Result<File> {
    // sled's log lives in `<generation>/db`: fdatasync of this file makes a flush reach the disk.
    let data_path: PathBuf = generation.path.join("db");
    OpenOptions::new()
        .read(true)
        .open(&data_path)
        .map_err(open_error(&data_path))
}

/// Records in `db`, and their bytes (keys and values).
fn count_records(db: &::sled::Db) -> Result<(u64, u64)> {
    let (mut records, mut bytes) = (0u64, 0u64);
    for item in db.iter() {
        let (key, value) = item?;
        records += 1;
        bytes = bytes.saturating_add(u64::try_from(key.len() + value.len()).unwrap_or(u64::MAX));
    }
    Ok((records, bytes))
}

/// How long [`open_sled`] waits for sled's own file lock.
const SLED_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens sled in `dir`, whose [`DirLock`] this process holds. If sled's own
/// lock on `db` is still taken, it can only be by this process: a store
/// dropped a moment ago whose sled threads are still winding down (an
/// in-process restart, as in tests). Wait for them, briefly.
fn open_sled(dir: &Path, cache_bytes: u64) -> Result<::sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match ::sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()
        {
            // sled wraps the OS error in a message ("could not acquire lock on ...").
            Err(::sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                // A blocking wait is right here: opening runs before serving, off the async workers.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(5));
            }
            opened => return Ok(opened?),
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir` with the default options.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, SledOptions::default())
    }

    /// Opens (or creates) the store in `dir`. Fails with
    /// [`StoreError::InUse`] when another process has it open. A store of
    /// an older format is migrated first (see `migrate.rs`).
    pub fn open_with(dir: &Path, options: SledOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(open_error(dir))?;
        let dir_lock = DirLock::acquire(dir)?;
        let generation = generation::open(dir).map_err(open_error(dir))?;
        let cache_bytes = options.cache_bytes.unwrap_or(CACHE_BYTES_DEFAULT);
        let db = open_sled(&generation.path, cache_bytes)?;
        // sled never fsyncs the directory. fdatasync of `db` makes its
        // contents durable but, by POSIX, not its name in the directory when
        // the file is new: sync the directory once, before any write is
        // acknowledged (see docs/durability.md).
        File::open(&generation.path)
            .and_then(|d| d.sync_all())
            .map_err(open_error(&generation.path))?;
        let data_file = open_data_file(&generation)?;
        migrate::run(&db)?;
        let opened = watch::open(&db)?;
        let current: Current = Arc::new(RwLock::new(Arc::new(Live {
            db,
            data_file,
            generation,
        })));
        let feed = Arc::new(FeedQueue::new(Position(opened.last)));
        let failure = Arc::new(OnceLock::new());
        let shadow: ShadowSlot = Arc::default();
        let commit = GroupCommit::start(
            Arc::clone(&current),
            Arc::clone(&feed),
            Arc::clone(&shadow),
            Arc::clone(&failure),
            options.sync_fault,
        )
        .map_err(open_error(dir))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cache_bytes,
            current,
            reclaim: tokio::sync::Mutex::new(ReclaimState::default()),
            shadow,
            backups: Arc::default(),
            commit,
            locks: LockTable::default(),
            feed,
            failure,
            watch_id: opened.id,
            _dir_lock: dir_lock,
        })
    }

    /// The database in use (a handle: cheap to clone).
    fn db(&self) -> ::sled::Db {
        live(&self.current).db.clone()
    }

    fn get(&self, key: &[u8]) -> Result<Option<IVec>> {
        Ok(self.db().get(key)?)
    }

    /// The record under `key`, decoded.
    fn read<T>(
        &self,
        key: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T, CodecError>,
    ) -> Result<Option<T>> {
        self.get(key)?
            .map(|bytes| decode(&bytes).map_err(corrupt(key)))
            .transpose()
    }

    /// A page of the records under `prefix`, each decoded from the UTF-8
    /// text of its key after the prefix (an id) and its value.
    fn decoded_page<T>(
        &self,
        prefix: &[u8],
        after: Option<&Cursor>,
        limit: usize,
        decode: impl Fn(String, &[u8]) -> Result<T, CodecError>,
    ) -> Result<Page<T>> {
        let (entries, next) = self.scan_page(prefix, after, limit)?;
        let items = entries
            .into_iter()
            .map(|(key, value)| {
                let id = utf8_tail(&key, prefix.len())?;
                decode(id, &value).map_err(corrupt(&key))
            })
            .collect::<Result<_>>()?;
        Ok(Page { items, next })
    }

    fn read_profile(&self, tenant: &Tenant, id: &ProfileId) -> Result<Option<Profile>> {
        let key = keys::profile(tenant, id);
        self.get(&key)?
            .map(|bytes| codec::decode_profile(id.clone(), &bytes).map_err(corrupt(&key)))
            .transpose()
    }

    fn read_address_state(&self, key: &[u8]) -> Result<Option<AddressState>> {
        self.get(key)?
            .map(|bytes| codec::decode_address_state(&bytes).map_err(corrupt(key)))
            .transpose()
    }

    /// At most `limit` entries under `prefix`, in key order, strictly after
    /// the cursor (a key tail from a previous page).
    fn scan_page(&self, prefix: &[u8], after: Option<&Cursor>, limit: usize) -> Result<RawPage> {
        let start = match after {
            // Resume strictly after the cursor: append a zero byte.
            Some(cursor) => [prefix, &cursor.0, &[0]].concat(),
            None => prefix.to_vec(),
        };
        let mut found: Vec<(IVec, IVec)> = Vec::new();
        for item in self.db().range(start..) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            if found.len() == limit {
                let next = found
                    .last()
                    .map(|(k, _)| Cursor(k[prefix.len()..].to_vec()));
                return Ok((found, next));
            }
            found.push((key, value));
        }
        Ok((found, None))
    }

    fn log_events(
        &self,
        tenant: &Tenant,
        address: &Address,
        from: Option<EventKey>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<AddressEvent>> {
        let prefix = keys::event_log_prefix(tenant, address);
        let mut end = prefix.clone();
        end.extend_from_slice(&[0xff; 17]);
        let decode = |item: ::sled::Result<(IVec, IVec)>| -> Result<AddressEvent> {
            let (key, value) = item?;
            codec::decode_address_event(&value).map_err(corrupt(&key))
        };
        match direction {
            Direction::After => {
                let start = match from {
                    // Strictly after: the key with one more byte sorts right after it.
                    Some(k) => [keys::event_log(tenant, address, k), vec![0]].concat(),
                    None => prefix,
                };
                self.db()
                    .range(start..end)
                    .take(limit)
                    .map(decode)
                    .collect()
            }
            Direction::Before => {
                let upper = match from {
                    Some(k) => keys::event_log(tenant, address, k),
                    None => end,
                };
                self.db()
                    .range(prefix..upper)
                    .rev()
                    .take(limit)
                    .map(decode)
                    .collect()
            }
        }
    }

    /// The copy of a compaction in progress, if any.
    fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shadow
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_shadow(&self, shadow: Option<Arc<Shadow>>) {
        *self
            .shadow
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = shadow;
    }

    /// Copies every record into the next generation while writes go on,
    /// and switches to it. Writes wait only while the copy is set up and
    /// while the switch is made (see `shadow.rs`).
    async fn compact(&self, bytes_before: u64) -> Result<Reclaimed> {
        let began = Instant::now();
        let old = live(&self.current);
        let next = old.generation.next(&self.dir);
        let mut paused_for = Duration::ZERO;
        let copied = async {
            let shadow = Arc::new(Shadow::new(open_sled(&next.path, self.cache_bytes)?));
            // 1. From now on, every change reaches the copy too.
            let started = Instant::now();
            let paused = self.locks.pause().await;
            self.set_shadow(Some(Arc::clone(&shadow)));
            drop(paused);
            paused_for += started.elapsed();
            // 2. The copy, and most of its sync, while writes go on.
            let records = shadow.copy_from(&old.db)?;
            shadow.db().flush()?;
            generation::make_durable(&self.dir, &next).map_err(StoreError::io)?;
            // 3. What came in meanwhile, with no change in flight.
            let started = Instant::now();
            let paused = self.locks.pause().await;
            // Every change applied so far is on the feed's way out, and in the copy.
            self.commit.wait().await?;
            shadow.check()?;
            shadow.db().flush()?;
            generation::make_durable(&self.dir, &next).map_err(StoreError::io)?;
            let data_file = open_data_file(&next)?;
            Ok((shadow, records, data_file, paused, started))
        }
        .await;
        let (shadow, records, data_file, paused, started) = match copied {
            Ok(copied) => copied,
            Err(error) => {
                // Still on the old generation: nothing changed.
                self.set_shadow(None);
                if let Err(e) = generation::remove_all_but(&self.dir, &old.generation) {
                    tracing::warn!(error = %e, "could not remove a compaction cut short");
                }
                return Err(error);
            }
        };
        if let Err(error) = generation::switch_to(&self.dir, &next) {
            // Which generation a restart opens is not known: both hold the
            // same records now, but a write to either one from now on could
            // be lost. Fatal to writes, as a failed flush is.
            let why: Arc<str> = Arc::from(format!(
                "switching to the compacted store failed ({error}); restart the server"
            ));
            let _ = self.failure.set(Arc::clone(&why));
            self.set_shadow(None);
            tracing::error!(%error, "compaction could not switch the store; writes are refused until a restart");
            return Err(StoreError::Failed(why));
        }
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Live {
            db: shadow.db().clone(),
            data_file,
            generation: next.clone(),
        });
        self.set_shadow(None);
        drop(shadow);
        paused_for += started.elapsed();
        drop(paused);
        // Readers may still hold the old database for a moment: its files
        // are unlinked, and go once they are done (what is left, at the next open).
        drop(old);
        if let Err(error) = generation::remove_all_but(&self.dir, &next) {
            tracing::warn!(%error, "could not remove the previous store generation; it goes at the next start");
        }
        Ok(Reclaimed {
            bytes_before,
            bytes_after: self.db().size_on_disk()?,
            records,
            paused: paused_for,
            took: began.elapsed(),
        })
    }

    fn check_healthy(&self) -> Result<()> {
        match self.failure.get() {
            Some(why) => Err(StoreError::Failed(Arc::clone(why))),
            None => Ok(()),
        }
    }

    /// Numbers a committed transaction's changes with their watch log
    /// record, which the committer writes before the flush (see `watch.rs`).
    fn log(&self, changes: Vec<Change>) -> Position {
        if changes.is_empty() {
            return self.feed.last();
        }
        let record = watch::record(&changes);
        self.feed.push_recorded(changes, record)
    }
}

impl Drop for SledStore {
    /// A clean close: everything written is flushed, then marked as such
    /// (see `watch.rs`). Not after a failed flush.
    fn drop(&mut self) {
        if self.failure.get().is_some() {
            return;
        }
        let live = live(&self.current);
        // Nobody holds the store: no flush is coming to write these.
        let records = self.feed.take_records();
        let closed = watch::write(&live.db, self.shadow().as_deref(), &records)
            .and_then(|()| watch::close(&live.db))
            .and_then(|()| {
                live.db.flush()?;
                live.data_file.sync_data().map_err(StoreError::io)
            });
        if let Err(error) = closed {
            tracing::warn!(%error, "closing the store cleanly failed: watchers will resync");
        }
    }
}

/// A page of raw records and where the next page starts.
type RawPage = (Vec<(IVec, IVec)>, Option<Cursor>);

fn utf8_tail(key: &[u8], start: usize) -> Result<String> {
    let tail = key.get(start..).unwrap_or_default();
    std::str::from_utf8(tail)
        .map(str::to_owned)
        .map_err(|_| corrupt(key)(CodecError::Utf8))
}

fn utf8<'a>(key: &[u8], bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|_| corrupt(key)(CodecError::Utf8))
}

fn tenant_of(key: &[u8], bytes: &[u8]) -> Result<Tenant> {
    Tenant::parse(utf8(key, bytes)?).map_err(|_| corrupt(key)(CodecError::Utf8))
}

fn address_of(key: &[u8], kind: u8, bytes: &[u8]) -> Result<Address> {
    let kind = codec::address_kind_from_byte(kind).map_err(corrupt(key))?;
    Ok(Address::from_trusted(kind, utf8(key, bytes)?.to_owned()))
}

#[async_trait]
impl Store for SledStore {
    async fn tenant_settings(&self, tenant: &Tenant) -> Result<Option<TenantSettings>> {
        self.read(
            &keys::tenant_settings(tenant),
            codec::decode_tenant_settings,
        )
    }

    async fn service(&self, tenant: &Tenant, id: &ServiceId) -> Result<Option<Service>> {
        self.read(&keys::service(tenant, id), |bytes| {
            codec::decode_service(id.clone(), bytes)
        })
    }

    async fn services(
        &self,
        tenant: &Tenant,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<Service>> {
        self.decoded_page(&keys::services_prefix(tenant), after, limit, |id, value| {
            codec::decode_service(ServiceId::from_trusted(id), value)
        })
    }

    async fn profile(&self, tenant: &Tenant, id: &ProfileId) -> Result<Option<Profile>> {
        self.read_profile(tenant, id)
    }

    async fn consent_history(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ConsentHistoryEntry>> {
        let Some(profile) = self.read_profile(tenant, id)? else {
            return Ok(Vec::new());
        };
        // No entry above the profile's last sequence: see `SledTxn::commit`
        // (an entry whose profile write was lost in a crash is never shown).
        let below = profile
            .history_seq
            .saturating_add(1)
            .min(before.unwrap_or(u64::MAX));
        let start = keys::consent_log(tenant, id, 0);
        let end = keys::consent_log(tenant, id, below);
        self.db()
            .range(start..end)
            .rev()
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                codec::decode_consent_entry(&value).map_err(corrupt(&key))
            })
            .collect()
    }

    async fn subscriptions(&self, tenant: &Tenant, id: &ProfileId) -> Result<Vec<Subscription>> {
        let prefix = keys::subscriptions_prefix(tenant, id);
        self.db()
            .scan_prefix(&prefix)
            .map(|item| {
                let (key, value) = item?;
                let service = utf8_tail(&key, prefix.len())?;
                codec::decode_subscription(ServiceId::from_trusted(service), &value)
                    .map_err(corrupt(&key))
            })
            .collect()
    }

    async fn subscribers(
        &self,
        tenant: &Tenant,
        service: &ServiceId,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<(ProfileId, SubscriptionStatus)>> {
        let prefix = keys::subscribers_prefix(tenant, service);
        self.decoded_page(&prefix, after, limit, |id, value| {
            Ok((
                ProfileId::from_trusted(id),
                codec::decode_subscription_status(value)?,
            ))
        })
    }

    async fn address_state(
        &self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressState>> {
        self.read_address_state(&keys::address(tenant, address))
    }

    async fn address_users(
        &self,
        tenant: &Tenant,
        address: &Address,
        limit: usize,
    ) -> Result<(Vec<ProfileId>, bool)> {
        let prefix = keys::address_users_prefix(tenant, address);
        let mut ids = Vec::new();
        for item in self.db().scan_prefix(&prefix).keys() {
            let key = item?;
            if ids.len() == limit {
                return Ok((ids, true));
            }
            ids.push(ProfileId::from_trusted(utf8_tail(&key, prefix.len())?));
        }
        Ok((ids, false))
    }

    async fn address_history(
        &self,
        tenant: &Tenant,
        address: &Address,
        before: Option<EventKey>,
        limit: usize,
    ) -> Result<Vec<AddressEvent>> {
        self.log_events(tenant, address, before, Direction::Before, limit)
    }

    async fn list_addresses(
        &self,
        tenant: &Tenant,
        status: Option<AddressStatus>,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<(Address, AddressState)>> {
        let prefix = keys::status_index_prefix(tenant, status);
        let tenant_prefix = keys::status_index_prefix(tenant, None);
        let start = match after {
            // Resume strictly after the cursor: append a zero byte.
            Some(cursor) => [tenant_prefix.as_slice(), &cursor.0, &[0]].concat(),
            None => prefix.clone(),
        };
        let mut items = Vec::new();
        let mut last_tail = Vec::new();
        for item in self.db().range(start..).keys() {
            let key = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            if items.len() == limit {
                return Ok(Page {
                    items,
                    next: Some(Cursor(last_tail)),
                });
            }
            let (_, kind, text) = keys::status_index_tail(tenant, &key)
                .ok_or_else(|| corrupt(&key)(CodecError::Truncated))?;
            let address = address_of(&key, kind, text)?;
            let state = self
                .read_address_state(&keys::address(tenant, &address))?
                .unwrap_or_default();
            items.push((address, state));
            last_tail = key[tenant_prefix.len()..].to_vec();
        }
        Ok(Page { items, next: None })
    }

    async fn address_consent(
        &self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressConsent>> {
        let key = keys::address_consent(tenant, address);
        self.get(&key)?
            .map(|bytes| codec::decode_address_consent(&bytes).map_err(corrupt(&key)))
            .transpose()
    }

    async fn usage_opt_out(&self, tenant: &Tenant, user: &UserId) -> Result<Option<UsageOptOut>> {
        let key = keys::usage_opt_out(tenant, user);
        self.get(&key)?
            .map(|bytes| codec::decode_usage_opt_out(user.clone(), &bytes).map_err(corrupt(&key)))
            .transpose()
    }

    async fn usage_opt_outs(
        &self,
        tenant: &Tenant,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<UsageOptOut>> {
        let prefix = keys::usage_opt_outs_prefix(tenant);
        let (entries, next) = self.scan_page(&prefix, after, limit)?;
        let items = entries
            .into_iter()
            .map(|(key, value)| {
                let id = utf8_tail(&key, prefix.len())?;
                codec::decode_usage_opt_out(UserId::from_trusted(id), &value).map_err(corrupt(&key))
            })
            .collect::<Result<_>>()?;
        Ok(Page { items, next })
    }

    async fn begin(&self, locks: Vec<Lock>) -> Result<Box<dyn Txn + '_>> {
        self.check_healthy()?;
        let held = self.locks.lock(&locks).await;
        Ok(Box::new(SledTxn {
            store: self,
            _held: held,
            ops: Vec::new(),
            staged: HashMap::new(),
            stored_profiles: HashMap::new(),
            changes: Vec::new(),
        }))
    }

    async fn sync(&self) -> Result<()> {
        self.commit.wait().await
    }

    fn position(&self) -> Position {
        self.feed.last()
    }

    async fn load_decision_state(
        &self,
        visit: &mut (dyn FnMut(Loaded) + Send),
    ) -> Result<Position> {
        dump::load_decision_state(&self.db(), visit)?;
        Ok(self.feed.last())
    }

    fn follow(&self, after: Position, sink: FeedSink) -> Result<()> {
        self.feed.follow(after, sink)
    }

    fn failure(&self) -> Option<Arc<str>> {
        self.failure.get().cloned()
    }

    async fn expire(
        &self,
        markers_before: UnixMillis,
        tokens_before: UnixMillis,
        changes: ChangeRetention,
        limit: usize,
    ) -> Result<Expired> {
        self.check_healthy()?;
        let db = self.db();
        let (mut expired, mut keys) = dump::expired(&db, markers_before, tokens_before, limit)?;
        let (logged, transactions) =
            watch::expired(&db, changes, limit.saturating_sub(keys.len()))?;
        expired.changes = transactions;
        keys.extend(logged.iter().map(|key| IVec::from(key.as_slice())));
        self.backups
            .preserve(&db, keys.iter().map(|key| key.as_ref()))?;
        let mut batch = ::sled::Batch::default();
        for key in &keys {
            batch.remove(key);
        }
        db.apply_batch(batch)?;
        // No lock is held: a compaction may have begun since. Its copy gets
        // the removals too (or never saw the records, or a compaction that
        // just switched leaves them for the next sweep).
        if let Some(shadow) = self.shadow() {
            shadow.apply(keys.iter().map(|key| (key.as_ref(), None)));
        }
        Ok(expired)
    }

    fn dump<'a>(
        &'a self,
        tenant: Option<&Tenant>,
    ) -> Box<dyn Iterator<Item = Result<DumpItem>> + Send + 'a> {
        Box::new(dump::dump(self.db(), tenant))
    }

    async fn snapshot(&self, tenant: Option<&Tenant>) -> Result<Box<dyn Snapshot>> {
        // Not during a compaction, which skips its turn while a backup runs
        // (it would switch databases under the backup).
        let no_compaction = self.reclaim.lock().await;
        let view = backup::BackupView::new(tenant);
        let started = Instant::now();
        let held = self.locks.pause().await;
        let pausing = Instant::now();
        // The cut: no change is in flight, and every later one tells the view.
        let view = backup::ViewSnapshot::register(&self.backups, view);
        drop(held);
        let paused = pausing.elapsed();
        drop(no_compaction);
        tracing::debug!(
            waited_ms = started.elapsed().as_secs_f64() * 1000.0,
            "backup: cut taken"
        );
        let snapshot =
            backup::ViewSnapshot::new(self.db(), view, Arc::clone(&self.backups), paused)?;
        Ok(Box::new(snapshot))
    }

    async fn restore(&self, items: &[DumpItem]) -> Result<()> {
        self.check_healthy()?;
        // Not beside a compaction's copy (taken before the locks, as a compaction does).
        let _no_compaction = self.reclaim.lock().await;
        let locks: Vec<Lock> = items.iter().map(dump::owner_lock).collect();
        let _held = self.locks.lock(&locks).await;
        let db = self.db();
        dump::restore_all(&db, items)?;
        self.log(items.iter().filter_map(DumpItem::change).collect());
        Ok(())
    }

    async fn watch_head(&self) -> Result<String> {
        Ok(super::watch::position_token(
            &self.watch_id,
            self.feed.delivered().0,
        ))
    }

    async fn watch_read(&self, token: &str, tenant: &Tenant, limit: usize) -> Result<WatchRead> {
        let durable = self.feed.delivered().0;
        watch::read(&self.db(), &self.watch_id, token, durable, tenant, limit)
    }

    async fn reclaim(&self, policy: CompactionPolicy) -> Result<Option<Reclaimed>> {
        // The smallest store that can be due: `threshold` grows with the records.
        let Some(smallest) = policy.threshold(0) else {
            return Ok(None);
        };
        self.check_healthy()?;
        // One at a time; the state says when counting is worth it again.
        let mut state = self.reclaim.lock().await;
        if self.backups.any() {
            // Its copy would switch databases under the backup: next sweep.
            return Ok(None);
        }
        let bytes_before = self.db().size_on_disk()?;
        if bytes_before <= smallest.max(state.counted_until) {
            return Ok(None);
        }
        // A read of every record, while writes go on.
        let (records, record_bytes) = count_records(&self.db())?;
        let fresh = record_bytes.saturating_add(records.saturating_mul(FRESH_RECORD_OVERHEAD));
        if !policy.due(bytes_before, fresh) {
            // Not worth counting again before the file reaches the threshold.
            state.counted_until = policy.threshold(fresh).unwrap_or(u64::MAX);
            return Ok(None);
        }
        let reclaimed = self.compact(bytes_before).await?;
        state.counted_until = policy.threshold(fresh).unwrap_or(u64::MAX);
        tracing::info!(
            bytes_before = reclaimed.bytes_before,
            bytes_after = reclaimed.bytes_after,
            records = reclaimed.records,
            record_bytes,
            fresh_estimate = fresh,
            paused_ms = u64::try_from(reclaimed.paused.as_millis()).unwrap_or(u64::MAX),
            took_ms = u64::try_from(reclaimed.took.as_millis()).unwrap_or(u64::MAX),
            "store compacted"
        );
        Ok(Some(reclaimed))
    }

    fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db().size_on_disk()?)
    }

    fn observe_flushes(&self, observer: FlushObserver) -> bool {
        self.commit.observe(observer)
    }
}

/// What a staged write is, for [`SledTxn::commit`]'s choice of how to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    History,
    Profile,
    Other,
}

/// A change to the sled store: staged writes in order, and the values they
/// stage for this change's own reads.
struct SledTxn<'a> {
    store: &'a SledStore,
    _held: Held<'a>,
    /// Writes in the order staged: key, value (`None`: remove), kind.
    ops: Vec<(Vec<u8>, Option<Vec<u8>>, OpKind)>,
    /// Where in `ops` each key was last staged, for reads.
    staged: HashMap<Vec<u8>, usize>,
    /// Profiles as stored before this change, as its reads found them: the
    /// address → profile index moves from these (no second read and decode).
    stored_profiles: HashMap<Vec<u8>, Option<Profile>>,
    /// The feed entries of this change.
    changes: Vec<Change>,
}

impl SledTxn<'_> {
    fn stage(&mut self, key: Vec<u8>, value: Option<Vec<u8>>, kind: OpKind) {
        self.staged.insert(key.clone(), self.ops.len());
        self.ops.push((key, value, kind));
    }

    /// The value of `key` as this change staged it, if it did.
    fn staged_value(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.staged
            .get(key)
            .and_then(|i| self.ops.get(*i))
            .map(|(_, value, _)| value.as_deref())
    }

    /// The value of `key` as this change sees it: staged, else stored.
    fn read(&self, key: &[u8]) -> Result<Option<IVec>> {
        match self.staged_value(key) {
            Some(value) => Ok(value.map(IVec::from)),
            None => self.store.get(key),
        }
    }

    fn read_profile(&self, tenant: &Tenant, id: &ProfileId) -> Result<Option<Profile>> {
        let key = keys::profile(tenant, id);
        self.read(&key)?
            .map(|bytes| codec::decode_profile(id.clone(), &bytes).map_err(corrupt(&key)))
            .transpose()
    }

    fn read_address_status(&self, tenant: &Tenant, address: &Address) -> Result<AddressStatus> {
        let key = keys::address(tenant, address);
        match self.read(&key)? {
            None => Ok(AddressStatus::Valid),
            Some(bytes) => codec::decode_address_status(&bytes).map_err(corrupt(&key)),
        }
    }
}

#[async_trait]
impl Txn for SledTxn<'_> {
    async fn profile(&mut self, tenant: &Tenant, id: &ProfileId) -> Result<Option<Profile>> {
        let found = self.read_profile(tenant, id)?;
        let key = keys::profile(tenant, id);
        if !self.staged.contains_key(&key) {
            self.stored_profiles.insert(key, found.clone());
        }
        Ok(found)
    }

    async fn subscription(
        &mut self,
        tenant: &Tenant,
        profile: &ProfileId,
        service: &ServiceId,
    ) -> Result<Option<Subscription>> {
        let key = keys::subscription(tenant, profile, service);
        self.read(&key)?
            .map(|bytes| codec::decode_subscription(service.clone(), &bytes).map_err(corrupt(&key)))
            .transpose()
    }

    async fn address_state(
        &mut self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressState>> {
        let key = keys::address(tenant, address);
        self.read(&key)?
            .map(|bytes| codec::decode_address_state(&bytes).map_err(corrupt(&key)))
            .transpose()
    }

    async fn address_events(
        &mut self,
        tenant: &Tenant,
        address: &Address,
        from: Option<EventKey>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<AddressEvent>> {
        self.store
            .log_events(tenant, address, from, direction, limit)
    }

    async fn event_marker(&mut self, tenant: &Tenant, id: &EventId) -> Result<bool> {
        Ok(self.read(&keys::event_id(tenant, id.as_str()))?.is_some())
    }

    async fn token(&mut self, tenant: &Tenant, hash: &TokenHash) -> Result<Option<TokenRecord>> {
        let key = keys::token(tenant, hash);
        self.read(&key)?
            .map(|bytes| {
                codec::decode_token(&bytes, migrate::LEGACY_TOKEN_EXPIRY).map_err(corrupt(&key))
            })
            .transpose()
    }

    async fn tenant_settings(&mut self, tenant: &Tenant) -> Result<Option<TenantSettings>> {
        let key = keys::tenant_settings(tenant);
        self.read(&key)?
            .map(|bytes| codec::decode_tenant_settings(&bytes).map_err(corrupt(&key)))
            .transpose()
    }

    async fn service(&mut self, tenant: &Tenant, id: &ServiceId) -> Result<Option<Service>> {
        let key = keys::service(tenant, id);
        self.read(&key)?
            .map(|bytes| codec::decode_service(id.clone(), &bytes).map_err(corrupt(&key)))
            .transpose()
    }

    async fn service_count(&mut self, tenant: &Tenant) -> Result<usize> {
        let prefix = keys::services_prefix(tenant);
        let stored = self.store.db().scan_prefix(&prefix).keys().count();
        let mut new = 0;
        for key in self.staged.keys() {
            let put = matches!(self.staged_value(key), Some(Some(_)));
            if key.starts_with(&prefix) && put && !self.store.db().contains_key(key)? {
                new += 1;
            }
        }
        Ok(stored + new)
    }

    async fn address_consent(
        &mut self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressConsent>> {
        let key = keys::address_consent(tenant, address);
        self.read(&key)?
            .map(|bytes| codec::decode_address_consent(&bytes).map_err(corrupt(&key)))
            .transpose()
    }

    async fn usage_opt_out(
        &mut self,
        tenant: &Tenant,
        user: &UserId,
    ) -> Result<Option<UsageOptOut>> {
        let key = keys::usage_opt_out(tenant, user);
        self.read(&key)?
            .map(|bytes| codec::decode_usage_opt_out(user.clone(), &bytes).map_err(corrupt(&key)))
            .transpose()
    }

    async fn erasure_key(&mut self, tenant: &Tenant) -> Result<Option<ErasureKey>> {
        let key = keys::erasure_key(tenant);
        self.read(&key)?
            .map(|bytes| codec::decode_erasure_key(&bytes).map_err(corrupt(&key)))
            .transpose()
    }

    async fn tombstone(
        &mut self,
        tenant: &Tenant,
        hash: &AddressHash,
    ) -> Result<Option<Tombstone>> {
        let key = keys::tombstone(tenant, hash);
        self.read(&key)?
            .map(|bytes| codec::decode_tombstone(&bytes).map_err(corrupt(&key)))
            .transpose()
    }

    fn put_erasure_key(&mut self, tenant: &Tenant, key: &ErasureKey) {
        self.stage(
            keys::erasure_key(tenant),
            Some(codec::encode_erasure_key(key)),
            OpKind::Other,
        );
    }

    fn put_tombstone(&mut self, tenant: &Tenant, hash: &AddressHash, tombstone: &Tombstone) {
        self.stage(
            keys::tombstone(tenant, hash),
            Some(codec::encode_tombstone(tombstone)),
            OpKind::Other,
        );
    }

    fn put_erasure(&mut self, tenant: &Tenant, erasure: &Erasure) {
        self.stage(
            keys::erasure(tenant, erasure.erased_at, erasure.id),
            Some(codec::encode_erasure(erasure)),
            OpKind::Other,
        );
    }

    async fn erase_profile(&mut self, tenant: &Tenant, profile: &Profile) -> Result<()> {
        let db = self.store.db();
        let id = &profile.id;
        let mut removed: Vec<Vec<u8>> = Vec::new();
        let history = keys::consent_log_prefix(tenant, id);
        let prefix = keys::subscriptions_prefix(tenant, id);
        // What is stored, and what this change staged before.
        let mut found: Vec<Vec<u8>> = self
            .staged
            .keys()
            .filter(|k| k.starts_with(&history) || k.starts_with(&prefix))
            .cloned()
            .collect();
        for key in db.scan_prefix(&history).keys() {
            found.push(key?.to_vec());
        }
        for key in db.scan_prefix(&prefix).keys() {
            found.push(key?.to_vec());
        }
        for key in found {
            if key.starts_with(&prefix) {
                let service = ServiceId::from_trusted(utf8_tail(&key, prefix.len())?);
                removed.push(keys::subscriber(tenant, &service, id));
            }
            removed.push(key);
        }
        // Tokens are found by their hash alone: the tenant's few live ones
        // are read (retention deletes them once expired).
        for item in db.scan_prefix(keys::tokens_prefix(tenant)) {
            let (key, value) = item?;
            let record =
                codec::decode_token(&value, migrate::LEGACY_TOKEN_EXPIRY).map_err(corrupt(&key))?;
            if &record.profile_id == id {
                removed.push(key.to_vec());
            }
        }
        let stored = self.read_profile(tenant, id)?;
        for address in stored
            .iter()
            .flat_map(|p| p.all_addresses())
            .chain(profile.all_addresses())
        {
            removed.push(keys::address_user(tenant, address, id));
        }
        removed.push(keys::profile(tenant, id));
        removed.sort();
        removed.dedup();
        for key in removed {
            self.stage(key, None, OpKind::Other);
        }
        self.changes.push(Change::ProfileErased {
            tenant: tenant.clone(),
            profile_id: id.clone(),
        });
        Ok(())
    }

    fn put_profile(&mut self, tenant: &Tenant, profile: &Profile) {
        // The address → profile index follows the addresses, from the
        // profile as stored (read by this change, or read now). A profile
        // that cannot be read back is replaced whole; its index entries, if
        // any, are rebuilt by the next restore.
        let key = keys::profile(tenant, &profile.id);
        let old = match (
            self.staged.contains_key(&key),
            self.stored_profiles.get(&key),
        ) {
            (false, Some(stored)) => stored.clone(),
            _ => self.read_profile(tenant, &profile.id).ok().flatten(),
        };
        let old_addresses: Vec<&Address> = old.iter().flat_map(|p| p.all_addresses()).collect();
        let new_addresses: Vec<&Address> = profile.all_addresses().collect();
        let (removed, added): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (
            old_addresses
                .iter()
                .filter(|a| !new_addresses.contains(a))
                .map(|a| keys::address_user(tenant, a, &profile.id))
                .collect(),
            new_addresses
                .iter()
                .filter(|a| !old_addresses.contains(a))
                .map(|a| keys::address_user(tenant, a, &profile.id))
                .collect(),
        );
        for key in removed {
            self.stage(key, None, OpKind::Other);
        }
        for key in added {
            self.stage(key, Some(Vec::new()), OpKind::Other);
        }
        self.stage(
            keys::profile(tenant, &profile.id),
            Some(codec::encode_profile(profile)),
            OpKind::Profile,
        );
        self.changes.push(Change::Profile {
            tenant: tenant.clone(),
            profile: Box::new(profile.clone()),
        });
    }

    fn append_history(&mut self, tenant: &Tenant, id: &ProfileId, entry: &ConsentHistoryEntry) {
        self.stage(
            keys::consent_log(tenant, id, entry.sequence),
            Some(codec::encode_consent_entry(entry)),
            OpKind::History,
        );
    }

    fn put_address_state(&mut self, tenant: &Tenant, address: &Address, state: &AddressState) {
        let old = self
            .read_address_status(tenant, address)
            .unwrap_or(AddressStatus::Valid);
        if old != state.status {
            if old != AddressStatus::Valid {
                self.stage(
                    keys::status_index(tenant, old, address),
                    None,
                    OpKind::Other,
                );
            }
            self.changes.push(Change::Address {
                tenant: tenant.clone(),
                address: address.clone(),
                status: state.status,
            });
        }
        if state.status != AddressStatus::Valid {
            self.stage(
                keys::status_index(tenant, state.status, address),
                Some(Vec::new()),
                OpKind::Other,
            );
        }
        self.stage(
            keys::address(tenant, address),
            Some(codec::encode_address_state(state)),
            OpKind::Other,
        );
    }

    fn put_address_event(&mut self, tenant: &Tenant, address: &Address, event: &AddressEvent) {
        self.stage(
            keys::event_log(tenant, address, event.key()),
            Some(codec::encode_address_event(event)),
            OpKind::Other,
        );
    }

    fn delete_address_events(&mut self, tenant: &Tenant, address: &Address, before: EventKey) {
        let start = keys::event_log_prefix(tenant, address);
        let end = keys::event_log(tenant, address, before);
        // Listed now, under the address's lock: nothing adds entries
        // meanwhile. The stored ones, and those this change staged.
        let mut found: Vec<Vec<u8>> = self
            .store
            .db()
            .range(start.clone()..end.clone())
            .keys()
            .filter_map(|k| k.ok().map(|k| k.to_vec()))
            .collect();
        found.extend(
            self.staged
                .keys()
                .filter(|k| k.starts_with(&start) && k.as_slice() < end.as_slice())
                .cloned(),
        );
        for key in found {
            self.stage(key, None, OpKind::Other);
        }
    }

    fn put_event_marker(
        &mut self,
        tenant: &Tenant,
        id: &EventId,
        address: &Address,
        recorded_at: UnixMillis,
    ) {
        let mut value = keys::address(tenant, address);
        value.extend_from_slice(&recorded_at.to_be_bytes());
        self.stage(
            keys::event_id(tenant, id.as_str()),
            Some(value),
            OpKind::Other,
        );
        self.stage(
            keys::event_id_expiry(tenant, id.as_str(), recorded_at),
            Some(Vec::new()),
            OpKind::Other,
        );
    }

    fn put_subscription(&mut self, tenant: &Tenant, profile: &ProfileId, sub: &Subscription) {
        self.stage(
            keys::subscription(tenant, profile, &sub.service_id),
            Some(codec::encode_subscription(sub)),
            OpKind::Other,
        );
        // The subscriber index entry has the same key whatever the status.
        self.stage(
            keys::subscriber(tenant, &sub.service_id, profile),
            Some(vec![codec::subscription_status_byte(sub.status)]),
            OpKind::Other,
        );
        self.changes.push(Change::Subscription {
            tenant: tenant.clone(),
            profile_id: profile.clone(),
            service_id: sub.service_id.clone(),
            status: sub.status,
        });
    }

    fn put_token(&mut self, tenant: &Tenant, hash: &TokenHash, record: &TokenRecord) {
        self.stage(
            keys::token(tenant, hash),
            Some(codec::encode_token(record)),
            OpKind::Other,
        );
    }

    fn delete_token(&mut self, tenant: &Tenant, hash: &TokenHash) {
        self.stage(keys::token(tenant, hash), None, OpKind::Other);
    }

    fn put_tenant_settings(&mut self, tenant: &Tenant, settings: &TenantSettings) {
        self.stage(
            keys::tenant_settings(tenant),
            Some(codec::encode_tenant_settings(settings)),
            OpKind::Other,
        );
        self.changes.push(Change::TenantSettings {
            tenant: tenant.clone(),
            settings: settings.clone(),
        });
    }

    fn put_service(&mut self, tenant: &Tenant, service: &Service) {
        self.stage(
            keys::service(tenant, &service.id),
            Some(codec::encode_service(service)),
            OpKind::Other,
        );
        self.changes.push(Change::Service {
            tenant: tenant.clone(),
            service: service.clone(),
        });
    }

    fn put_usage_opt_out(&mut self, tenant: &Tenant, opt_out: &UsageOptOut) {
        self.stage(
            keys::usage_opt_out(tenant, &opt_out.user_id),
            Some(codec::encode_usage_opt_out(opt_out)),
            OpKind::Other,
        );
        self.changes.push(Change::UsageOptOut {
            tenant: tenant.clone(),
            user_id: opt_out.user_id.clone(),
            opted_out: true,
        });
    }

    fn put_address_consent(
        &mut self,
        tenant: &Tenant,
        address: &Address,
        consent: &AddressConsent,
    ) {
        self.stage(
            keys::address_consent(tenant, address),
            Some(codec::encode_address_consent(consent)),
            OpKind::Other,
        );
        self.changes.push(Change::AddressConsent {
            tenant: tenant.clone(),
            address: address.clone(),
            opted_out: consent.mask(),
        });
    }

    fn delete_usage_opt_out(&mut self, tenant: &Tenant, user: &UserId) {
        self.stage(keys::usage_opt_out(tenant, user), None, OpKind::Other);
        self.changes.push(Change::UsageOptOut {
            tenant: tenant.clone(),
            user_id: user.clone(),
            opted_out: false,
        });
    }

    /// Applies the staged writes, then puts the change on the feed while its
    /// locks are still held (so the feed has one key's changes in commit order).
    ///
    /// How: one write is one `insert` or `remove`. A consent change (a
    /// history entry, then its profile) is two inserts in that order: sled's
    /// `apply_batch` seals its log buffer before and after every batch, and
    /// each sealed buffer costs a `pwrite` + `sync_file_range` on sled's I/O
    /// pool, about three times the CPU of the whole request. The two inserts
    /// are atomic all the same: sled recovers a prefix of its log, and
    /// `consent_history` shows no entry above the profile's last sequence, so
    /// an entry whose profile write was lost is never seen, and the next
    /// change overwrites it. Anything else is one `apply_batch` (atomic).
    async fn commit(self: Box<Self>) -> Result<Position> {
        let SledTxn {
            store,
            _held,
            ops,
            changes,
            ..
        } = *self;
        store.check_healthy()?;
        let db = &store.db();
        // Before anything is written: a backup keeps the values as of its cut.
        store
            .backups
            .preserve(db, ops.iter().map(|(key, _, _)| key.as_slice()))?;
        match ops.as_slice() {
            [] => return Ok(store.feed.last()),
            [(key, value, _)] => match value {
                Some(value) => {
                    db.insert(key.as_slice(), value.as_slice())?;
                }
                None => {
                    db.remove(key.as_slice())?;
                }
            },
            [
                (history, Some(entry), OpKind::History),
                (profile, Some(record), OpKind::Profile),
            ] => {
                db.insert(history.as_slice(), entry.as_slice())?;
                db.insert(profile.as_slice(), record.as_slice())?;
            }
            _ => {
                let mut batch = ::sled::Batch::default();
                for (key, value, _) in &ops {
                    match value {
                        Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                        None => batch.remove(key.as_slice()),
                    }
                }
                db.apply_batch(batch)?;
            }
        }
        if let Some(shadow) = store.shadow() {
            shadow.apply(
                ops.iter()
                    .map(|(key, value, _)| (key.as_slice(), value.as_deref())),
            );
        }
        Ok(store.log(changes))
    }
}

#[cfg(test)]
mod tests;
