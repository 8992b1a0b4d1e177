//! The store: every piece of state consentd owns, in one sled tree.
//!
//! The interface is narrow and speaks domain types only: point reads for the
//! hot path (one profile record, one state record per address), atomic
//! read-modify-write operations that write a change and its history entry in
//! one `apply_batch`, range scans for listings, and [`Store::sync`] to wait for
//! durability. An in-memory index or a PostgreSQL backend can stand behind the
//! same methods.
//!
//! Concurrency: sled transactions take a process-global lock that stalls
//! readers, so writes use per-key striped locks for read-modify-write and one
//! `apply_batch` (atomic) per change; reads never lock.
//!
//! Durability: a write is visible to readers as soon as it is applied and
//! durable once [`Store::sync`] returns (group commit, see `commit.rs`).
//! The service layer calls `sync` before it acknowledges any write.
//!
//! Invariant: only this module and its children name sled.

mod codec;
mod commit;
mod dump;
mod keys;
mod lock;
mod scan;
mod subscriptions;
mod tenants;
mod usage;

use std::{
    cell::Cell,
    collections::hash_map::DefaultHasher,
    fs::{File, OpenOptions},
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, TryLockError},
};

use sled::IVec;

use crate::engine::{
    Address, AddressEvent, AddressEventKind, AddressState, AddressStatus, ChangeContext,
    ConsentHistoryEntry, ConsentStatus, Profile, ProfileAddresses, ProfileId, QuarantineRules,
    Scope, Tenant, UnixMillis, replay,
};

pub use codec::CodecError;
pub use commit::FlushObserver;
use commit::GroupCommit;
pub use dump::{DumpItem, ManualEvent, Snapshot};
use lock::DirLock;
pub use subscriptions::{
    ConfirmRefusal, Confirmed, Created, SERVICES_PER_TENANT_MAX, SubscriberPage,
};

/// How many lock stripes guard read-modify-write; two keys share a stripe
/// with probability 1/1024, which only serialises them.
const LOCK_STRIPES: usize = 1024;

thread_local! {
    /// True while [`Store::without_waiting`] runs on this thread: a lock
    /// stripe held by another write is refused ([`StoreError::WouldWait`])
    /// instead of waited for.
    static NO_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be opened or created.
    #[error("cannot open data directory {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error(
        "data directory {path} is in use by another consentd process ({holder}); stop it, or \
         choose another --data-dir"
    )]
    InUse {
        /// The data directory.
        path: PathBuf,
        /// What the lock file says of the holder (its pid).
        holder: String,
    },
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record under key {key}: {source}")]
    Corrupt {
        /// The key, escaped.
        key: String,
        /// The decoding error.
        #[source]
        source: CodecError,
    },
    /// Making writes durable failed; they were not acknowledged.
    #[error("flush to disk failed: {0}")]
    Durability(Arc<std::io::Error>),
    /// Under [`Store::without_waiting`], a write found its lock stripe held by
    /// another write and changed nothing; run it again where it may wait.
    #[error("the write would wait for a lock held by another write")]
    WouldWait,
}

impl StoreError {
    /// Whether the failure may pass (an I/O error such as a full disk) rather
    /// than show a defect (a corrupt record).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Durability(_) | StoreError::Sled(sled::Error::Io(_))
        )
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn corrupt(key: &[u8]) -> impl FnOnce(CodecError) -> StoreError + '_ {
    move |source| StoreError::Corrupt {
        key: key.escape_ascii().to_string(),
        source,
    }
}

/// The outcome of a write that may be an idempotent repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<T> {
    /// The state after the request.
    pub value: T,
    /// False when the request changed nothing.
    pub changed: bool,
}

/// A page of [`Store::list_addresses`]: addresses with their stored state,
/// and the cursor to continue after when there may be more.
pub type ListedAddresses = (Vec<(Address, AddressState)>, Option<Vec<u8>>);

/// The store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    /// The sled database; one tree (the default) with typed key prefixes.
    db: sled::Db,
    /// The group committer that makes writes durable.
    commit: GroupCommit,
    /// Stripes of locks for read-modify-write.
    locks: Vec<Mutex<()>>,
    /// Held for the store's lifetime: one process per data directory.
    _dir_lock: DirLock,
}

/// How long [`open_sled`] waits for sled's own file lock.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens sled in `dir`, whose [`DirLock`] this process holds. If sled's own
/// lock on `db` is still taken, it can only be by this process: a store
/// dropped a moment ago whose sled threads are still winding down (an
/// in-process restart, as in tests). Wait for them, briefly.
fn open_sled(dir: &Path) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match sled::Config::new().path(dir).open() {
            // sled wraps the OS error in a message ("could not acquire lock on ...").
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                // A blocking wait is right here: opening runs before serving, off the async workers.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            opened => return Ok(opened?),
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`. Fails with [`StoreError::InUse`]
    /// when another process has it open.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        let dir_lock = DirLock::acquire(dir)?;
        let db = open_sled(dir)?;
        // sled never fsyncs the directory. fdatasync of `db` makes its
        // contents durable but, by POSIX, not its name in the directory when
        // the file is new: sync the directory once, before any write is
        // acknowledged (see ARCHITECTURE.md, "What makes a write durable").
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Open {
                path: dir.to_path_buf(),
                source,
            })?;
        // sled's log lives in `<dir>/db`: fdatasync of this file makes a flush reach the disk.
        let data_path = dir.join("db");
        let data_file = OpenOptions::new()
            .read(true)
            .open(&data_path)
            .map_err(|source| StoreError::Open {
                path: data_path.clone(),
                source,
            })?;
        let commit =
            GroupCommit::start(db.clone(), data_file).map_err(|source| StoreError::Open {
                path: data_path,
                source,
            })?;
        Ok(Self {
            db,
            commit,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            _dir_lock: dir_lock,
        })
    }

    /// Waits until every write applied before the call is durable (group commit).
    pub async fn sync(&self) -> Result<()> {
        self.commit.wait().await.map_err(StoreError::Durability)
    }

    /// Calls `observer` after each group flush with its duration and the
    /// number of writes it made durable. Set once; false when already set.
    pub fn observe_flushes(&self, observer: FlushObserver) -> bool {
        self.commit.observe(observer)
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    /// Runs `work` on this thread with lock waits refused: a write whose
    /// lock stripe another write holds (a write of the same key, or a backup
    /// pausing every write) fails with [`StoreError::WouldWait`] at once,
    /// before it changes anything. For callers that must not block, such as
    /// an async worker: a write is a few point reads and inserts, but a
    /// stripe can be held for a long time (a backup holds them all).
    pub fn without_waiting<T>(&self, work: impl FnOnce(&Store) -> T) -> T {
        /// Restores the flag even if `work` panics.
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                NO_WAIT.set(self.0);
            }
        }
        let _restore = Restore(NO_WAIT.replace(true));
        work(self)
    }

    /// Takes the lock stripes of `keys`, waiting for them, or refusing to
    /// wait under [`Store::without_waiting`]. Every write takes its stripes
    /// before it reads or writes anything, so a refusal changes nothing.
    fn lock<'a>(&'a self, keys: &[&[u8]]) -> Result<Vec<MutexGuard<'a, ()>>> {
        let mut stripes: Vec<usize> = keys
            .iter()
            .map(|key| {
                let mut hasher = DefaultHasher::new();
                key.hash(&mut hasher);
                let stripes = u64::try_from(LOCK_STRIPES).unwrap_or(1);
                usize::try_from(hasher.finish() % stripes).unwrap_or(0)
            })
            .collect();
        // A fixed order prevents deadlock between writers that take two stripes.
        stripes.sort_unstable();
        stripes.dedup();
        let no_wait = NO_WAIT.get();
        stripes
            .into_iter()
            .map(|i| {
                let stripe = &self.locks[i];
                if !no_wait {
                    return Ok(stripe.lock().unwrap_or_else(|p| p.into_inner()));
                }
                match stripe.try_lock() {
                    Ok(guard) => Ok(guard),
                    Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
                    Err(TryLockError::WouldBlock) => Err(StoreError::WouldWait),
                }
            })
            .collect()
    }

    fn apply(&self, batch: sled::Batch) -> Result<()> {
        Ok(self.db.apply_batch(batch)?)
    }

    // ---- profiles -------------------------------------------------------

    /// A profile, or `None` when the tenant has none with this id. One point read.
    pub fn profile(&self, tenant: &Tenant, id: &ProfileId) -> Result<Option<Profile>> {
        let key = keys::profile(tenant, id);
        self.db
            .get(&key)?
            .map(|bytes| codec::decode_profile(id.clone(), &bytes).map_err(corrupt(&key)))
            .transpose()
    }

    /// Creates a profile or replaces its addresses (consent is kept), keeping
    /// the address → profile index in step. `changed` is true when it was created.
    pub fn upsert_profile(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        addresses: ProfileAddresses,
        now: UnixMillis,
    ) -> Result<Written<Profile>> {
        let key = keys::profile(tenant, id);
        let _guard = self.lock(&[&key])?;
        let old = self.profile(tenant, id)?;
        let mut batch = sled::Batch::default();
        let (profile, created) = match old {
            Some(mut profile) => {
                for address in profile.all_addresses() {
                    batch.remove(keys::address_user(tenant, address, id));
                }
                profile.set_addresses(addresses, now);
                (profile, false)
            }
            None => (Profile::new(id.clone(), addresses, now), true),
        };
        // Inserts after removals: an address kept by the upsert stays indexed.
        for address in profile.all_addresses() {
            batch.insert(keys::address_user(tenant, address, id), IVec::default());
        }
        batch.insert(key, codec::encode_profile(&profile));
        self.apply(batch)?;
        Ok(Written {
            value: profile,
            changed: created,
        })
    }

    /// Sets a profile's consent for `scope` and records the change in its
    /// history. `None` when the profile does not exist.
    ///
    /// Two inserts, not one `apply_batch`: sled's `apply_batch` seals its log
    /// buffer before and after every batch, and each sealed buffer is a
    /// `pwrite` + `sync_file_range` on sled's I/O pool (waking all its idle
    /// threads), so a batch per write costs about three times the CPU of the
    /// whole request and defeats the group commit. Atomic all the same: the
    /// history entry is inserted first and the profile, which holds the last
    /// history sequence, second; sled recovers a prefix of its log, and
    /// [`Store::consent_history`] reads no entry above the profile's last
    /// sequence, so an entry whose profile write was lost (or is not yet
    /// applied) is never seen, and the next change overwrites it.
    pub fn set_consent(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        scope: Scope,
        status: ConsentStatus,
        context: &ChangeContext,
        now: UnixMillis,
    ) -> Result<Option<Written<Profile>>> {
        let key = keys::profile(tenant, id);
        let _guard = self.lock(&[&key])?;
        let Some(mut profile) = self.profile(tenant, id)? else {
            return Ok(None);
        };
        let Some(entry) = profile.set_consent(scope, status, context, now) else {
            return Ok(Some(Written {
                value: profile,
                changed: false,
            }));
        };
        self.db.insert(
            keys::consent_log(tenant, id, entry.sequence),
            codec::encode_consent_entry(&entry),
        )?;
        self.db.insert(key, codec::encode_profile(&profile))?;
        Ok(Some(Written {
            value: profile,
            changed: true,
        }))
    }

    /// Consent history entries with a sequence below `before` (all when
    /// `None`), newest first, at most `limit`; none above the profile's last
    /// history sequence (see [`Store::set_consent`]), none without a profile.
    pub fn consent_history(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ConsentHistoryEntry>> {
        let Some(profile) = self.profile(tenant, id)? else {
            return Ok(Vec::new());
        };
        let below = profile
            .history_seq
            .saturating_add(1)
            .min(before.unwrap_or(u64::MAX));
        let start = keys::consent_log(tenant, id, 0);
        let end = keys::consent_log(tenant, id, below);
        self.db
            .range(start..end)
            .rev()
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                codec::decode_consent_entry(&value).map_err(corrupt(&key))
            })
            .collect()
    }

    // ---- addresses ------------------------------------------------------

    /// The stored state of an address; the default (VALID) for one never seen.
    pub fn address_state(&self, tenant: &Tenant, address: &Address) -> Result<AddressState> {
        let key = keys::address(tenant, address);
        self.read_address_state(&key)
    }

    /// The status of an address (VALID when never seen), for the hot path:
    /// one point read, and only the status is decoded.
    pub fn address_status(&self, tenant: &Tenant, address: &Address) -> Result<AddressStatus> {
        let key = keys::address(tenant, address);
        match self.db.get(&key)? {
            None => Ok(AddressStatus::Valid),
            Some(bytes) => codec::decode_address_status(&bytes).map_err(corrupt(&key)),
        }
    }

    fn read_address_state(&self, key: &[u8]) -> Result<AddressState> {
        match self.db.get(key)? {
            None => Ok(AddressState::default()),
            Some(bytes) => codec::decode_address_state(&bytes).map_err(corrupt(key)),
        }
    }

    /// The ids of the profiles that use an address, in id order; at most
    /// `limit`, and whether there were more.
    pub fn address_users(
        &self,
        tenant: &Tenant,
        address: &Address,
        limit: usize,
    ) -> Result<(Vec<ProfileId>, bool)> {
        let prefix = keys::address_users_prefix(tenant, address);
        let mut ids = Vec::new();
        for item in self.db.scan_prefix(&prefix).keys() {
            let key = item?;
            if ids.len() == limit {
                return Ok((ids, true));
            }
            let id = std::str::from_utf8(&key[prefix.len()..])
                .map_err(|_| corrupt(&key)(CodecError::Utf8))?;
            ids.push(ProfileId::from_trusted(id.to_owned()));
        }
        Ok((ids, false))
    }

    /// Records an event for an address and folds it into the address's state,
    /// atomically with its log entry and the status index. A feedback event
    /// whose id the tenant already recorded changes nothing (`changed: false`).
    /// An event older than one already folded in replays the log in event time.
    #[allow(clippy::too_many_arguments)]
    pub fn record_address_event(
        &self,
        tenant: &Tenant,
        address: &Address,
        kind: AddressEventKind,
        occurred_at: UnixMillis,
        context: &ChangeContext,
        now: UnixMillis,
        rules: &QuarantineRules,
    ) -> Result<Written<AddressState>> {
        let key = keys::address(tenant, address);
        let event_key = match &kind {
            AddressEventKind::Feedback { event_id, .. } => {
                Some(keys::event_id(tenant, event_id.as_str()))
            }
            _ => None,
        };
        let _guard = match &event_key {
            Some(event_key) => self.lock(&[&key, event_key])?,
            None => self.lock(&[&key])?,
        };
        let old = self.read_address_state(&key)?;
        let duplicate = match &event_key {
            Some(event_key) => self.db.contains_key(event_key)?,
            None => false,
        };
        if duplicate || kind.is_noop_for(&old.as_of(now, rules)) {
            return Ok(Written {
                value: old,
                changed: false,
            });
        }
        let mut event = AddressEvent {
            sequence: old.log_seq + 1,
            kind,
            occurred_at,
            recorded_at: now,
            old_status: old.as_of(now, rules).status,
            new_status: AddressStatus::Valid,
            context: context.clone(),
        };
        let mut new = if old.is_late(occurred_at) {
            let mut log = self.address_log_all(tenant, address)?;
            log.push(event.clone());
            replay(&mut log, rules)
        } else {
            let mut new = old.clone();
            new.apply(&event.kind, occurred_at, context, rules);
            new
        };
        new.log_seq = event.sequence;
        event.new_status = new.as_of(now, rules).status;

        let mut batch = sled::Batch::default();
        if old.status != AddressStatus::Valid {
            batch.remove(keys::status_index(tenant, old.status, address));
        }
        if new.status != AddressStatus::Valid {
            batch.insert(
                keys::status_index(tenant, new.status, address),
                IVec::default(),
            );
        }
        if let Some(event_key) = event_key {
            batch.insert(event_key, key.clone());
        }
        batch.insert(
            keys::address_log(tenant, address, event.sequence),
            codec::encode_address_event(&event),
        );
        batch.insert(key, codec::encode_address_state(&new));
        self.apply(batch)?;
        Ok(Written {
            value: new,
            changed: true,
        })
    }

    fn address_log_all(&self, tenant: &Tenant, address: &Address) -> Result<Vec<AddressEvent>> {
        self.db
            .scan_prefix(keys::address_log_prefix(tenant, address))
            .map(|item| {
                let (key, value) = item?;
                codec::decode_address_event(&value).map_err(corrupt(&key))
            })
            .collect()
    }

    /// An address's log entries with a sequence below `before` (all when
    /// `None`), newest first, at most `limit`.
    pub fn address_history(
        &self,
        tenant: &Tenant,
        address: &Address,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AddressEvent>> {
        let start = keys::address_log(tenant, address, 0);
        let end = keys::address_log(tenant, address, before.unwrap_or(u64::MAX));
        self.db
            .range(start..end)
            .rev()
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                codec::decode_address_event(&value).map_err(corrupt(&key))
            })
            .collect()
    }

    /// Addresses whose stored status is not VALID (or is `status`), in key
    /// order, starting after `after` (a cursor from a previous page). Returns
    /// at most `limit` addresses with their stored state, and the cursor of
    /// the last key examined when there may be more.
    pub fn list_addresses(
        &self,
        tenant: &Tenant,
        status: Option<AddressStatus>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListedAddresses> {
        let prefix = keys::status_index_prefix(tenant, status);
        let tenant_prefix = keys::status_index_prefix(tenant, None);
        let start = match after {
            // Resume strictly after the cursor: append a zero byte.
            Some(cursor) => [tenant_prefix.as_slice(), cursor, &[0]].concat(),
            None => prefix.clone(),
        };
        let mut found = Vec::new();
        let mut last_tail = Vec::new();
        for item in self.db.range(start..).keys() {
            let key = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            if found.len() == limit {
                return Ok((found, Some(last_tail)));
            }
            let (_, kind, text) = keys::status_index_tail(tenant, &key)
                .ok_or_else(|| corrupt(&key)(CodecError::Truncated))?;
            let kind = codec::address_kind_from_byte(kind).map_err(corrupt(&key))?;
            let text = std::str::from_utf8(text).map_err(|_| corrupt(&key)(CodecError::Utf8))?;
            let address = Address::from_trusted(kind, text.to_owned());
            let state = self.address_state(tenant, &address)?;
            found.push((address, state));
            last_tail = key[tenant_prefix.len()..].to_vec();
        }
        Ok((found, None))
    }
}

#[cfg(test)]
mod tests {
    //! Model-based tests: random operations against the store and against a
    //! plain in-memory model, with restarts, then every index and history
    //! checked against the model.

    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::engine::{Channel, ErrorReason, EventId, FeedbackKind, Source};

    const EMAILS: [&str; 4] = ["a@x.io", "b@x.io", "c@x.io", "d@x.io"];
    const IDS: [&str; 3] = ["p0", "p1", "p2"];

    #[derive(Debug, Clone)]
    enum Op {
        Upsert {
            id: usize,
            emails: Vec<usize>,
        },
        Consent {
            id: usize,
            channel: Option<usize>,
            out: bool,
        },
        Bounce {
            email: usize,
            hard: bool,
            day: i64,
            event: u8,
        },
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0..IDS.len(),
                proptest::collection::vec(0..EMAILS.len(), 0..3)
            )
                .prop_map(|(id, emails)| Op::Upsert { id, emails }),
            (0..IDS.len(), proptest::option::of(0..5usize), any::<bool>())
                .prop_map(|(id, channel, out)| Op::Consent { id, channel, out }),
            (0..EMAILS.len(), any::<bool>(), 0..20i64, 0..6u8).prop_map(
                |(email, hard, day, event)| Op::Bounce {
                    email,
                    hard,
                    day,
                    event
                }
            ),
            Just(Op::Restart),
        ]
    }

    fn ctx() -> ChangeContext {
        ChangeContext::new(Source::Api, "model", "").expect("valid")
    }

    fn tenant() -> Tenant {
        Tenant::parse("t").expect("valid tenant")
    }

    fn pid(i: usize) -> ProfileId {
        ProfileId::parse(IDS[i]).expect("valid id")
    }

    fn email(i: usize) -> Address {
        Address::email(EMAILS[i]).expect("valid email")
    }

    /// One profile as the model sees it: emails, consent (true = opted out)
    /// for all channels and per channel, and the number of changes made.
    type ModelProfile = (Vec<usize>, Option<bool>, [Option<bool>; 5], u64);

    /// What the store should hold.
    #[derive(Debug, Default)]
    struct Model {
        /// Profile id index → its model.
        profiles: BTreeMap<usize, ModelProfile>,
        /// Event ids recorded per email.
        events: BTreeMap<usize, BTreeSet<u8>>,
    }

    fn run_ops(ops: &[Op]) -> std::result::Result<(), TestCaseError> {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let open = || Store::open(dir.path()).map_err(|e| TestCaseError::fail(e.to_string()));
        let mut store = open()?;
        let mut model = Model::default();
        let rules = QuarantineRules::default();
        let t = tenant();
        for op in ops {
            match op {
                Op::Upsert { id, emails } => {
                    let mut distinct: Vec<usize> = Vec::new();
                    for e in emails {
                        if !distinct.contains(e) {
                            distinct.push(*e);
                        }
                    }
                    let addresses = ProfileAddresses {
                        emails: distinct.iter().map(|e| email(*e)).collect(),
                        ..ProfileAddresses::default()
                    };
                    store
                        .upsert_profile(&t, &pid(*id), addresses, 1)
                        .map_err(fail)?;
                    model.profiles.entry(*id).or_default().0 = distinct;
                }
                Op::Consent { id, channel, out } => {
                    let scope = match channel {
                        None => Scope::AllChannels,
                        Some(c) => Scope::Channel(Channel::ALL[*c]),
                    };
                    let status = if *out {
                        ConsentStatus::OptedOut
                    } else {
                        ConsentStatus::OptedIn
                    };
                    let written = store
                        .set_consent(&t, &pid(*id), scope, status, &ctx(), 2)
                        .map_err(fail)?;
                    match model.profiles.get_mut(id) {
                        None => prop_assert!(written.is_none()),
                        Some(entry) => {
                            let slot = match channel {
                                None => &mut entry.1,
                                Some(c) => &mut entry.2[*c],
                            };
                            let changed = *slot != Some(*out);
                            *slot = Some(*out);
                            entry.3 += u64::from(changed);
                            prop_assert_eq!(written.map(|w| w.changed), Some(changed));
                        }
                    }
                }
                Op::Bounce {
                    email: e,
                    hard,
                    day,
                    event,
                } => {
                    let kind = AddressEventKind::Feedback {
                        kind: if *hard {
                            FeedbackKind::HardBounce
                        } else {
                            FeedbackKind::SoftBounce
                        },
                        reason: ErrorReason::Unreachable,
                        event_id: EventId::parse(&format!("{e}-{event}")).expect("valid"),
                    };
                    let written = store
                        .record_address_event(
                            &t,
                            &email(*e),
                            kind,
                            day * 86_400_000,
                            &ctx(),
                            0,
                            &rules,
                        )
                        .map_err(fail)?;
                    let fresh = model.events.entry(*e).or_default().insert(*event);
                    prop_assert_eq!(written.changed, fresh);
                }
                Op::Restart => {
                    drop(store);
                    store = open()?;
                }
            }
        }
        drop(store);
        let store = open()?;
        check(&store, &model, &rules)
    }

    fn fail(e: StoreError) -> TestCaseError {
        TestCaseError::fail(e.to_string())
    }

    fn check(
        store: &Store,
        model: &Model,
        rules: &QuarantineRules,
    ) -> std::result::Result<(), TestCaseError> {
        let t = tenant();
        for (i, _) in IDS.iter().enumerate() {
            let stored = store.profile(&t, &pid(i)).map_err(fail)?;
            let Some((emails, all, channels, changes)) = model.profiles.get(&i) else {
                prop_assert!(stored.is_none());
                continue;
            };
            let stored = stored.ok_or_else(|| TestCaseError::fail("profile lost"))?;
            let stored_emails: Vec<&str> = stored.emails.iter().map(Address::as_str).collect();
            let model_emails: Vec<&str> = emails.iter().map(|e| EMAILS[*e]).collect();
            prop_assert_eq!(stored_emails, model_emails);
            let as_status = |v: &Option<bool>| match v {
                None => ConsentStatus::NoPreference,
                Some(true) => ConsentStatus::OptedOut,
                Some(false) => ConsentStatus::OptedIn,
            };
            prop_assert_eq!(stored.consent.all_channels.status, as_status(all));
            for (c, v) in channels.iter().enumerate() {
                prop_assert_eq!(stored.consent.channels[c].status, as_status(v));
            }
            // History: one entry per change, numbered 1..=n, newest first.
            prop_assert_eq!(stored.history_seq, *changes);
            let history = store
                .consent_history(&t, &pid(i), None, 1000)
                .map_err(fail)?;
            let seqs: Vec<u64> = history.iter().map(|e| e.sequence).collect();
            let expected: Vec<u64> = (1..=*changes).rev().collect();
            prop_assert_eq!(seqs, expected);
        }
        for (e, _) in EMAILS.iter().enumerate() {
            // The address → profile index matches the profiles exactly.
            let (users, truncated) = store.address_users(&t, &email(e), 100).map_err(fail)?;
            prop_assert!(!truncated);
            let users: BTreeSet<String> = users.iter().map(|p| p.as_str().to_owned()).collect();
            let expected: BTreeSet<String> = model
                .profiles
                .iter()
                .filter(|(_, (emails, ..))| emails.contains(&e))
                .map(|(i, _)| IDS[*i].to_owned())
                .collect();
            prop_assert_eq!(users, expected);
            // The state equals a replay of the whole log, and the status index agrees.
            let state = store.address_state(&t, &email(e)).map_err(fail)?;
            let mut log = store.address_log_all(&t, &email(e)).map_err(fail)?;
            prop_assert_eq!(log.len() as u64, state.log_seq);
            let replayed = replay(&mut log, rules);
            prop_assert_eq!(&replayed, &state);
            let (listed, _) = store
                .list_addresses(&t, Some(state.status), None, 100)
                .map_err(fail)?;
            let indexed = listed.iter().any(|(a, _)| a == &email(e));
            prop_assert_eq!(indexed, state.status != AddressStatus::Valid);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn store_matches_the_model_across_restarts(ops in proptest::collection::vec(op(), 1..40)) {
            run_ops(&ops)?;
        }
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Store::open(dir.path()).expect("first open");
        let second = Store::open(dir.path());
        let Err(StoreError::InUse { holder, .. }) = second else {
            panic!("second open must fail with InUse, got {second:?}");
        };
        assert_eq!(holder, format!("pid {}", std::process::id()));
    }

    /// A new store holding profile `pid(0)` of `tenant()`, with no consent
    /// yet; the directory lives as long as the returned guard.
    fn store_with_one_profile() -> (tempfile::TempDir, Store, Tenant) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let t = tenant();
        store
            .upsert_profile(&t, &pid(0), ProfileAddresses::default(), 1)
            .expect("upsert");
        (dir, store, t)
    }

    #[test]
    fn a_history_entry_whose_profile_write_is_missing_is_not_listed_and_is_overwritten() {
        let (_dir, store, t) = store_with_one_profile();
        let out = Scope::Channel(Channel::Email);
        store
            .set_consent(&t, &pid(0), out, ConsentStatus::OptedOut, &ctx(), 2)
            .expect("opt out")
            .expect("profile exists");
        // What a crash between the two inserts of `set_consent` leaves: the
        // next history entry without the profile record that counts it.
        let mut ahead = store.profile(&t, &pid(0)).expect("read").expect("exists");
        let orphan = ahead
            .set_consent(out, ConsentStatus::OptedIn, &ctx(), 3)
            .expect("a change");
        store
            .db
            .insert(
                keys::consent_log(&t, &pid(0), orphan.sequence),
                codec::encode_consent_entry(&orphan),
            )
            .expect("insert");
        let listed = store
            .consent_history(&t, &pid(0), None, 10)
            .expect("history");
        assert_eq!(
            listed.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            vec![1]
        );
        // The next change takes the orphan's sequence and replaces it.
        store
            .set_consent(&t, &pid(0), out, ConsentStatus::OptedIn, &ctx(), 4)
            .expect("opt in")
            .expect("profile exists");
        let listed = store
            .consent_history(&t, &pid(0), None, 10)
            .expect("history");
        assert_eq!(
            listed
                .iter()
                .map(|e| (e.sequence, e.changed_at))
                .collect::<Vec<_>>(),
            vec![(2, 4), (1, 2)]
        );
    }

    #[test]
    fn a_write_that_would_wait_is_refused_before_it_changes_anything() {
        let (_dir, store, t) = store_with_one_profile();
        let out = Scope::Channel(Channel::Email);
        let opt_out =
            |store: &Store| store.set_consent(&t, &pid(0), out, ConsentStatus::OptedOut, &ctx(), 2);
        {
            // As a backup does: every stripe held by someone else.
            let _paused = store.pause_writes();
            let refused = std::thread::scope(|s| {
                s.spawn(|| store.without_waiting(opt_out))
                    .join()
                    .expect("no panic")
            });
            assert!(matches!(refused, Err(StoreError::WouldWait)), "{refused:?}");
            let profile = store.profile(&t, &pid(0)).expect("read").expect("exists");
            assert_eq!(profile.history_seq, 0, "nothing was written");
        }
        // The flag is this thread's and only for the call: it is off again.
        assert!(!NO_WAIT.get());
        // With the stripe free, the same call goes through.
        let written = store
            .without_waiting(opt_out)
            .expect("written")
            .expect("profile exists");
        assert!(written.changed);
        assert_eq!(written.value.history_seq, 1);
        // Waiting is the default: a write queued behind a held stripe goes
        // through once it is released.
        let paused = store.pause_writes();
        std::thread::scope(|s| {
            let waiting =
                s.spawn(|| store.set_consent(&t, &pid(0), out, ConsentStatus::OptedIn, &ctx(), 3));
            drop(paused);
            let written = waiting.join().expect("no panic").expect("written");
            assert!(written.expect("profile exists").changed);
        });
    }

    #[tokio::test]
    async fn sync_waits_for_a_flush_and_many_writers_share_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        let t = tenant();
        let mut tasks = Vec::new();
        for i in 0..32 {
            let store = Arc::clone(&store);
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                let id = ProfileId::parse(&format!("p{i}")).expect("valid");
                store
                    .upsert_profile(&t, &id, ProfileAddresses::default(), 0)
                    .expect("upsert");
                store.sync().await.expect("durable");
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let id = ProfileId::parse("p31").expect("valid");
        assert!(store.profile(&t, &id).expect("read").is_some());
    }
}
