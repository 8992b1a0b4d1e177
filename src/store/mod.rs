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
mod keys;
mod lock;

use std::{
    collections::hash_map::DefaultHasher,
    fs::OpenOptions,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use sled::IVec;

use crate::engine::{
    Address, AddressEvent, AddressEventKind, AddressState, AddressStatus, ChangeContext,
    ConsentHistoryEntry, ConsentStatus, Profile, ProfileAddresses, ProfileId, QuarantineRules,
    Scope, Tenant, UnixMillis, replay,
};

pub use codec::CodecError;
use commit::GroupCommit;
use lock::DirLock;

/// How many lock stripes guard read-modify-write; two keys share a stripe
/// with probability 1/1024, which only serialises them.
const LOCK_STRIPES: usize = 1024;

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
}

impl StoreError {
    /// Whether the failure may pass (an I/O error such as a full disk) rather
    /// than show a defect (a corrupt record).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Durability(_) | StoreError::Sled(sled::Error::Io(_)))
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

impl Store {
    /// Opens (or creates) the store in `dir`. Fails with [`StoreError::InUse`]
    /// when another process has it open.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        let dir_lock = DirLock::acquire(dir)?;
        let db = sled::Config::new().path(dir).open()?;
        // sled's log lives in `<dir>/db`: fdatasync of this file makes a flush reach the disk.
        let data_path = dir.join("db");
        let data_file = OpenOptions::new()
            .read(true)
            .open(&data_path)
            .map_err(|source| StoreError::Open {
                path: data_path.clone(),
                source,
            })?;
        let commit = GroupCommit::start(db.clone(), data_file).map_err(|source| {
            StoreError::Open {
                path: data_path,
                source,
            }
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

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    fn lock<'a>(&'a self, keys: &[&[u8]]) -> Vec<MutexGuard<'a, ()>> {
        let mut stripes: Vec<usize> = keys
            .iter()
            .map(|key| {
                let mut hasher = DefaultHasher::new();
                key.hash(&mut hasher);
                // Truncation is the point: any bits pick a stripe.
                (hasher.finish() as usize) % LOCK_STRIPES
            })
            .collect();
        // A fixed order prevents deadlock between writers that take two stripes.
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|i| self.locks[i].lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
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
        let _guard = self.lock(&[&key]);
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
    /// history, atomically. `None` when the profile does not exist.
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
        let _guard = self.lock(&[&key]);
        let Some(mut profile) = self.profile(tenant, id)? else {
            return Ok(None);
        };
        let Some(entry) = profile.set_consent(scope, status, context, now) else {
            return Ok(Some(Written {
                value: profile,
                changed: false,
            }));
        };
        let mut batch = sled::Batch::default();
        batch.insert(key, codec::encode_profile(&profile));
        batch.insert(
            keys::consent_log(tenant, id, entry.sequence),
            codec::encode_consent_entry(&entry),
        );
        self.apply(batch)?;
        Ok(Some(Written {
            value: profile,
            changed: true,
        }))
    }

    /// Consent history entries with a sequence below `before` (all when
    /// `None`), newest first, at most `limit`.
    pub fn consent_history(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ConsentHistoryEntry>> {
        let start = keys::consent_log(tenant, id, 0);
        let end = keys::consent_log(tenant, id, before.unwrap_or(u64::MAX));
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
            Some(event_key) => self.lock(&[&key, event_key]),
            None => self.lock(&[&key]),
        };
        let old = self.read_address_state(&key)?;
        if let Some(event_key) = &event_key {
            if self.db.contains_key(event_key)? {
                return Ok(Written {
                    value: old,
                    changed: false,
                });
            }
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
            batch.insert(keys::status_index(tenant, new.status, address), IVec::default());
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
    ) -> Result<(Vec<(Address, AddressState)>, Option<Vec<u8>>)> {
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
