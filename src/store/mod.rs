//! The store: every piece of state consentd owns, behind one narrow
//! interface in domain terms.
//!
//! - [`Store`]: point reads and paged listings of committed state, [`Store::begin`]
//!   for changes, [`Store::sync`] for durability, the feed of committed
//!   changes ([`Store::follow`]) and what the data tools need.
//! - [`Txn`]: one read-modify-write change. It names what it locks when it
//!   begins ([`Lock`]), reads under those locks, stages its writes, and
//!   commits them as one unit ([`Txn::commit`]); dropping it uncommitted
//!   writes nothing.
//!
//! The rules (consent, the quarantine fold, subscriptions, tokens,
//! retention) are not here: they run above this interface, in `app`, once
//! for every implementation. An implementation keeps its own derived indexes
//! (address → profiles, status, subscribers) in step with what it is given.
//!
//! Implementations: [`sled::SledStore`] (the embedded default) and
//! [`memory::MemoryStore`] (for tests). Both pass the same conformance suite
//! (`conformance.rs`).
//!
//! Invariant: no sled type, key byte, lock stripe or lock protocol crosses
//! this interface.

pub(crate) mod codec;
pub mod memory;
pub mod postgres;
pub mod sled;

#[cfg(test)]
pub(crate) mod conformance;
mod feed;
mod locks;
pub mod watch;

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::engine::{
    Address, AddressConsent, AddressEvent, AddressHash, AddressState, AddressStatus,
    ConsentHistoryEntry, Erasure, ErasureKey, EventId, EventKey, Profile, ProfileId, Service,
    ServiceId, Subscription, SubscriptionStatus, Tenant, TenantSettings, TokenHash, TokenRecord,
    Tombstone, UnixMillis, UsageOptOut, UserId,
};

pub use feed::{Change, Committed, FeedSink, Position};
pub use watch::{WatchEntry, WatchRead};

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be opened or created.
    #[error("cannot open data directory {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
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
    /// Reading or writing failed; it may pass (a full disk, say).
    #[error("storage I/O: {0}")]
    Io(Arc<std::io::Error>),
    /// A stored record could not be decoded.
    #[error("corrupt record {key}: {reason}")]
    Corrupt {
        /// Which record, escaped.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Making writes durable failed once: from then on every write is
    /// refused, since a later flush may succeed without the writes whose
    /// flush failed (Linux reports a writeback error once). Reads go on.
    #[error(
        "a flush to disk failed ({0}); no write is accepted until the server is restarted \
         (writes not acknowledged before the failure may be lost)"
    )]
    Failed(Arc<str>),
}

impl StoreError {
    /// Whether the failure may pass (an I/O error such as a full disk) rather
    /// than show a defect (a corrupt record).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Io(_) | StoreError::Failed(_))
    }

    /// An I/O error.
    pub fn io(error: std::io::Error) -> Self {
        StoreError::Io(Arc::new(error))
    }
}

/// A store result.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where a listing continues: opaque, made by the store that listed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(pub Vec<u8>);

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// What a change locks: the records it reads and then writes. Two
/// transactions that name the same lock run one after the other; different
/// locks may (rarely) share a stripe, which only serialises them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lock {
    /// A profile: its record, consent history and subscriptions.
    Profile(Tenant, ProfileId),
    /// An address: its state and log.
    Address(Tenant, Address),
    /// A feedback event id (its marker).
    FeedbackEvent(Tenant, EventId),
    /// A confirmation token's record.
    Token(Tenant, TokenHash),
    /// The set of a tenant's services (creation checks the count).
    Services(Tenant),
    /// A tenant's settings.
    TenantSettings(Tenant),
    /// A product user's usage opt-out.
    UsageUser(Tenant, UserId),
    /// A tenant's erasure secret (its first erasure makes it).
    ErasureKey(Tenant),
}

/// Scan direction of an address's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first, strictly after the key.
    After,
    /// Newest first, strictly before the key.
    Before,
}

/// What the decision index is built from at start-up (see
/// [`Store::load_decision_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// A tenant's settings.
    TenantSettings(Tenant, TenantSettings),
    /// A service.
    Service(Tenant, Service),
    /// A profile.
    Profile(Tenant, Box<Profile>),
    /// An address whose stored status is not VALID.
    Address(Tenant, Address, AddressStatus),
    /// An address opted out of some channel: the channels, one bit each.
    AddressConsent(Tenant, Address, u8),
    /// A profile's subscription status.
    Subscription(Tenant, ProfileId, ServiceId, SubscriptionStatus),
}

impl From<Loaded> for Change {
    /// A record of the decision state's load as the change that writes it.
    fn from(item: Loaded) -> Change {
        match item {
            Loaded::TenantSettings(tenant, settings) => Change::TenantSettings { tenant, settings },
            Loaded::Service(tenant, service) => Change::Service { tenant, service },
            Loaded::Profile(tenant, profile) => Change::Profile { tenant, profile },
            Loaded::Address(tenant, address, status) => Change::Address {
                tenant,
                address,
                status,
            },
            Loaded::AddressConsent(tenant, address, opted_out) => Change::AddressConsent {
                tenant,
                address,
                opted_out,
            },
            Loaded::Subscription(tenant, profile_id, service_id, status) => Change::Subscription {
                tenant,
                profile_id,
                service_id,
                status,
            },
        }
    }
}

/// One record of a dump, decoded: what export, import and backup carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpItem {
    /// A profile: addresses, consent, history sequence.
    Profile {
        /// Its tenant.
        tenant: Tenant,
        /// The profile (its id included).
        profile: Profile,
    },
    /// One entry of a profile's consent history.
    ConsentEntry {
        /// Its tenant.
        tenant: Tenant,
        /// The profile it belongs to.
        profile_id: ProfileId,
        /// The entry (its sequence included).
        entry: ConsentHistoryEntry,
    },
    /// The folded state of an address.
    AddressState {
        /// Its tenant.
        tenant: Tenant,
        /// The address.
        address: Address,
        /// Its state.
        state: AddressState,
    },
    /// One entry of an address's log.
    AddressEvent {
        /// Its tenant.
        tenant: Tenant,
        /// The address.
        address: Address,
        /// The event (its key and checkpoint included).
        event: AddressEvent,
    },
    /// A feedback event id the tenant has recorded, for which address, and when.
    FeedbackEventId {
        /// Its tenant.
        tenant: Tenant,
        /// The event id.
        event_id: EventId,
        /// The address the event was about.
        address: Address,
        /// When it was recorded (it expires with the late-event horizon).
        recorded_at: UnixMillis,
    },
    /// A tenant's settings (regimes, quarantine rule overrides).
    TenantSettings {
        /// Its tenant.
        tenant: Tenant,
        /// The settings.
        settings: TenantSettings,
    },
    /// A service (newsletter or topic).
    Service {
        /// Its tenant.
        tenant: Tenant,
        /// The service (its id included).
        service: Service,
    },
    /// A profile's subscription to a service.
    Subscription {
        /// Its tenant.
        tenant: Tenant,
        /// The profile.
        profile_id: ProfileId,
        /// The subscription (its service id included).
        subscription: Subscription,
    },
    /// A double opt-in confirmation token, known by its hash.
    ConfirmationToken {
        /// Its tenant.
        tenant: Tenant,
        /// The SHA-256 of the token.
        hash: TokenHash,
        /// The record.
        record: TokenRecord,
    },
    /// A product user's usage opt-out.
    UsageOptOut {
        /// Its tenant.
        tenant: Tenant,
        /// The opt-out (its user id included).
        opt_out: UsageOptOut,
    },
    /// An address's opt-outs, per channel.
    AddressConsent {
        /// Its tenant.
        tenant: Tenant,
        /// The address.
        address: Address,
        /// Its opt-outs.
        consent: AddressConsent,
    },
    /// A tenant's erasure secret (the key of its tombstones' hashes).
    ErasureKey {
        /// Its tenant.
        tenant: Tenant,
        /// The secret.
        key: ErasureKey,
    },
    /// What an erased person had opted out of, under the keyed hash of one
    /// of their addresses.
    Tombstone {
        /// Its tenant.
        tenant: Tenant,
        /// The keyed hash of the address.
        hash: AddressHash,
        /// The scope opted out of.
        tombstone: Tombstone,
    },
    /// The record of one erasure (no personal data).
    Erasure {
        /// Its tenant.
        tenant: Tenant,
        /// The record.
        erasure: Erasure,
    },
}

impl DumpItem {
    /// What restoring this record changes for decisions and watchers (the
    /// feed's change), if anything.
    pub fn change(&self) -> Option<Change> {
        Some(match self {
            DumpItem::Profile { tenant, profile } => Change::Profile {
                tenant: tenant.clone(),
                profile: Box::new(profile.clone()),
            },
            DumpItem::AddressState {
                tenant,
                address,
                state,
            } => Change::Address {
                tenant: tenant.clone(),
                address: address.clone(),
                status: state.status,
            },
            DumpItem::TenantSettings { tenant, settings } => Change::TenantSettings {
                tenant: tenant.clone(),
                settings: settings.clone(),
            },
            DumpItem::Service { tenant, service } => Change::Service {
                tenant: tenant.clone(),
                service: service.clone(),
            },
            DumpItem::Subscription {
                tenant,
                profile_id,
                subscription,
            } => Change::Subscription {
                tenant: tenant.clone(),
                profile_id: profile_id.clone(),
                service_id: subscription.service_id.clone(),
                status: subscription.status,
            },
            DumpItem::UsageOptOut { tenant, opt_out } => Change::UsageOptOut {
                tenant: tenant.clone(),
                user_id: opt_out.user_id.clone(),
                opted_out: true,
            },
            DumpItem::AddressConsent {
                tenant,
                address,
                consent,
            } => Change::AddressConsent {
                tenant: tenant.clone(),
                address: address.clone(),
                opted_out: consent.mask(),
            },
            DumpItem::ConsentEntry { .. }
            | DumpItem::AddressEvent { .. }
            | DumpItem::FeedbackEventId { .. }
            | DumpItem::ConfirmationToken { .. }
            | DumpItem::ErasureKey { .. }
            | DumpItem::Tombstone { .. }
            | DumpItem::Erasure { .. } => return None,
        })
    }
}

/// The records of a dump as of one moment, read while writes go on (see
/// `sled/backup.rs`: a store on disk copies nothing; one in memory may).
pub trait Snapshot: Send + fmt::Debug {
    /// How many records it holds.
    fn len(&self) -> usize;
    /// Whether it holds none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// How long writes were held up while its moment was taken.
    fn paused(&self) -> Duration;
    /// The records, decoded.
    fn items(&self) -> Box<dyn Iterator<Item = Result<DumpItem>> + Send + '_>;
}

/// What [`Store::expire`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expired {
    /// Feedback event-id markers.
    pub event_markers: u64,
    /// Confirmation token records.
    pub tokens: u64,
    /// Transactions of the watch log.
    pub changes: u64,
}

/// How long the watch log keeps a committed transaction (see
/// [`Store::expire`]): whichever bound is reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeRetention {
    /// Transactions recorded before this time go.
    pub before: UnixMillis,
    /// At most this many of the newest transactions are kept.
    pub keep_max: u64,
}

impl ChangeRetention {
    /// Keeps everything (for the tests of the other retention rules).
    pub const KEEP_ALL: ChangeRetention = ChangeRetention {
        before: UnixMillis::MIN,
        keep_max: u64::MAX,
    };
}

/// When [`Store::reclaim`] compacts a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Compact once the store takes more than this many times what a fresh
    /// copy of its records would take on disk; 0: never.
    pub ratio: u32,
    /// Never compact a store smaller than this, in bytes.
    pub min_bytes: u64,
}

impl CompactionPolicy {
    /// The size on disk above which a store whose fresh copy would take
    /// `fresh_bytes` is compacted; `None` when it never is.
    pub fn threshold(&self, fresh_bytes: u64) -> Option<u64> {
        (self.ratio > 0).then(|| {
            fresh_bytes
                .saturating_mul(u64::from(self.ratio))
                .max(self.min_bytes)
        })
    }

    /// Whether a store of `bytes_on_disk` whose fresh copy would take
    /// `fresh_bytes` is compacted.
    pub fn due(&self, bytes_on_disk: u64, fresh_bytes: u64) -> bool {
        self.threshold(fresh_bytes)
            .is_some_and(|threshold| bytes_on_disk > threshold)
    }
}

/// What [`Store::reclaim`] did: it copied every record into a fresh
/// database and switched to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reclaimed {
    /// Bytes on disk before.
    pub bytes_before: u64,
    /// Bytes on disk after.
    pub bytes_after: u64,
    /// Records copied.
    pub records: u64,
    /// How long writes waited.
    pub paused: Duration,
    /// How long the whole compaction took.
    pub took: Duration,
}

/// Told the duration of each group flush and how many waiters it answered
/// (the metrics hook; a store knows nothing of metrics).
pub type FlushObserver = Box<dyn Fn(Duration, usize) + Send + Sync>;

/// The store. See the module documentation.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    // ---- reads of committed state (which may not be durable yet) --------

    /// A tenant's settings, if it set any.
    async fn tenant_settings(&self, tenant: &Tenant) -> Result<Option<TenantSettings>>;
    /// A service.
    async fn service(&self, tenant: &Tenant, id: &ServiceId) -> Result<Option<Service>>;
    /// A page of a tenant's services, by id.
    async fn services(
        &self,
        tenant: &Tenant,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<Service>>;
    /// A profile.
    async fn profile(&self, tenant: &Tenant, id: &ProfileId) -> Result<Option<Profile>>;
    /// History entries with a sequence below `before` (all when `None`),
    /// newest first, at most `limit`; never one above the profile's
    /// `history_seq`, none without a profile.
    async fn consent_history(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ConsentHistoryEntry>>;
    /// Every subscription of a profile, by service id.
    async fn subscriptions(&self, tenant: &Tenant, id: &ProfileId) -> Result<Vec<Subscription>>;
    /// A page of a service's subscribers with their status, by profile id.
    async fn subscribers(
        &self,
        tenant: &Tenant,
        service: &ServiceId,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<(ProfileId, SubscriptionStatus)>>;
    /// An address's stored state (not "as of now").
    async fn address_state(
        &self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressState>>;
    /// An address's opt-outs.
    async fn address_consent(
        &self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressConsent>>;
    /// The profiles that use an address, by id: at most `limit`, and whether
    /// there were more.
    async fn address_users(
        &self,
        tenant: &Tenant,
        address: &Address,
        limit: usize,
    ) -> Result<(Vec<ProfileId>, bool)>;
    /// An address's log entries strictly before `before` (all when `None`),
    /// newest first in event-time order, at most `limit`.
    async fn address_history(
        &self,
        tenant: &Tenant,
        address: &Address,
        before: Option<EventKey>,
        limit: usize,
    ) -> Result<Vec<AddressEvent>>;
    /// A page of the addresses whose stored status is not VALID (or is
    /// `status`), by status then address, with their stored state.
    async fn list_addresses(
        &self,
        tenant: &Tenant,
        status: Option<AddressStatus>,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<(Address, AddressState)>>;
    /// A user's usage opt-out.
    async fn usage_opt_out(&self, tenant: &Tenant, user: &UserId) -> Result<Option<UsageOptOut>>;
    /// A page of a tenant's usage opt-outs, by user id.
    async fn usage_opt_outs(
        &self,
        tenant: &Tenant,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<UsageOptOut>>;

    // ---- changes ---------------------------------------------------------

    /// Starts a change that holds `locks` until it commits or is dropped.
    /// Waits (asynchronously) for locks another change holds. Refused with
    /// [`StoreError::Failed`] once a flush has failed.
    async fn begin(&self, locks: Vec<Lock>) -> Result<Box<dyn Txn + '_>>;
    /// Waits until every change committed before the call is durable, and
    /// delivered to the feed's sink (see [`Store::follow`]).
    async fn sync(&self) -> Result<()>;
    /// The position of the last committed change.
    fn position(&self) -> Position;

    // ---- the feed of committed changes ------------------------------------

    /// Calls `visit` with everything a decision reads (settings, services,
    /// profiles, non-VALID addresses, subscriptions), as of the returned
    /// position. For start-up, before any change is made: the caller holds
    /// writes back until it has followed the feed from that position.
    async fn load_decision_state(&self, visit: &mut (dyn FnMut(Loaded) + Send))
    -> Result<Position>;
    /// From now on, hands every committed change after `after` to `sink`,
    /// once it is durable, in position order. Set once.
    fn follow(&self, after: Position, sink: FeedSink) -> Result<()>;
    /// Why writes are refused, once a flush failed; `None` while healthy.
    fn failure(&self) -> Option<Arc<str>>;
    /// How long the feed may have missed committed changes: for a store
    /// that other processes write to (PostgreSQL), the time since its last
    /// successful read of the change feed; `None` for a store whose every
    /// change passes through this process.
    fn staleness(&self) -> Option<Duration> {
        None
    }

    // ---- retention ---------------------------------------------------------

    /// Deletes at most `limit` records in all: feedback event-id markers
    /// recorded before `markers_before`, token records whose token
    /// expired before `tokens_before`, and transactions of the watch log
    /// past `changes` (the newest transaction always stays). Durable after
    /// [`Store::sync`].
    async fn expire(
        &self,
        markers_before: UnixMillis,
        tokens_before: UnixMillis,
        changes: ChangeRetention,
        limit: usize,
    ) -> Result<Expired>;

    // ---- the watch log -----------------------------------------------------

    /// The token after the newest durable change: a watch "from now"
    /// starts there.
    async fn watch_head(&self) -> Result<String>;
    /// The durable transactions after `token`, at most `limit`, with their
    /// changes of `tenant`, in commit order (see [`watch`]).
    async fn watch_read(&self, token: &str, tenant: &Tenant, limit: usize) -> Result<WatchRead>;

    /// Gives disk space back when `policy` says the store takes too much
    /// (stores in memory never do): copies every record into a fresh
    /// database while writes go on, and switches to it durably; writes wait
    /// only while the copy is set up and while the switch is made. `None`
    /// when it did nothing.
    async fn reclaim(&self, policy: CompactionPolicy) -> Result<Option<Reclaimed>>;

    // ---- data tools --------------------------------------------------------

    /// Every record of `tenant` (all tenants when `None`), read live:
    /// consistent only when nothing writes meanwhile (an offline export).
    fn dump<'a>(
        &'a self,
        tenant: Option<&Tenant>,
    ) -> Box<dyn Iterator<Item = Result<DumpItem>> + Send + 'a>;
    /// The records of `tenant` (all when `None`) as of one moment, for an
    /// online backup, counted (which reads them once): writes wait only
    /// while the moment is taken, reads go on.
    async fn snapshot(&self, tenant: Option<&Tenant>) -> Result<Box<dyn Snapshot>>;
    /// Writes dumped records as they are, replacing records with the same
    /// identity and keeping the derived indexes in step; restoring twice
    /// equals once. Durable after [`Store::sync`]; not on the feed (restores
    /// run offline, before a server starts).
    async fn restore(&self, items: &[DumpItem]) -> Result<()>;

    // ---- observation -------------------------------------------------------

    /// Bytes the store takes on disk (0 in memory).
    fn size_on_disk(&self) -> Result<u64>;
    /// Calls `observer` after each group flush; false when one was set already.
    fn observe_flushes(&self, observer: FlushObserver) -> bool;
}

/// One change: reads under its locks, staged writes, one commit. Reads see
/// committed state and this change's own staged point writes (not its
/// staged log entries). See the module documentation.
#[async_trait]
pub trait Txn: Send {
    /// A profile.
    async fn profile(&mut self, tenant: &Tenant, id: &ProfileId) -> Result<Option<Profile>>;
    /// A profile's subscription to a service.
    async fn subscription(
        &mut self,
        tenant: &Tenant,
        profile: &ProfileId,
        service: &ServiceId,
    ) -> Result<Option<Subscription>>;
    /// An address's stored state.
    async fn address_state(
        &mut self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressState>>;
    /// An address's opt-outs.
    async fn address_consent(
        &mut self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressConsent>>;
    /// Log entries of an address from `from` (exclusive; the start or the
    /// end of the log when `None`) in `direction`, at most `limit`.
    async fn address_events(
        &mut self,
        tenant: &Tenant,
        address: &Address,
        from: Option<EventKey>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<AddressEvent>>;
    /// Whether a feedback event id was recorded (and not expired).
    async fn event_marker(&mut self, tenant: &Tenant, id: &EventId) -> Result<bool>;
    /// A confirmation token's record.
    async fn token(&mut self, tenant: &Tenant, hash: &TokenHash) -> Result<Option<TokenRecord>>;
    /// A tenant's settings.
    async fn tenant_settings(&mut self, tenant: &Tenant) -> Result<Option<TenantSettings>>;
    /// A service.
    async fn service(&mut self, tenant: &Tenant, id: &ServiceId) -> Result<Option<Service>>;
    /// How many services a tenant has.
    async fn service_count(&mut self, tenant: &Tenant) -> Result<usize>;
    /// A user's usage opt-out.
    async fn usage_opt_out(
        &mut self,
        tenant: &Tenant,
        user: &UserId,
    ) -> Result<Option<UsageOptOut>>;
    /// A tenant's erasure secret.
    async fn erasure_key(&mut self, tenant: &Tenant) -> Result<Option<ErasureKey>>;
    /// The tombstone kept under an address's keyed hash.
    async fn tombstone(&mut self, tenant: &Tenant, hash: &AddressHash)
    -> Result<Option<Tombstone>>;

    /// Writes a profile (the address → profile index follows its addresses).
    fn put_profile(&mut self, tenant: &Tenant, profile: &Profile);
    /// Adds an entry to a profile's consent history.
    fn append_history(&mut self, tenant: &Tenant, id: &ProfileId, entry: &ConsentHistoryEntry);
    /// Writes an address's state (the status index follows its status).
    fn put_address_state(&mut self, tenant: &Tenant, address: &Address, state: &AddressState);
    /// Writes a log entry at its key, replacing one with the same key.
    fn put_address_event(&mut self, tenant: &Tenant, address: &Address, event: &AddressEvent);
    /// Deletes the log entries with a key strictly before `before`, those
    /// this change staged included.
    fn delete_address_events(&mut self, tenant: &Tenant, address: &Address, before: EventKey);
    /// Marks a feedback event id as recorded at `recorded_at`.
    fn put_event_marker(
        &mut self,
        tenant: &Tenant,
        id: &EventId,
        address: &Address,
        recorded_at: UnixMillis,
    );
    /// Writes a subscription (the subscriber index follows its status).
    fn put_subscription(&mut self, tenant: &Tenant, profile: &ProfileId, sub: &Subscription);
    /// Writes a token's record.
    fn put_token(&mut self, tenant: &Tenant, hash: &TokenHash, record: &TokenRecord);
    /// Deletes a token's record.
    fn delete_token(&mut self, tenant: &Tenant, hash: &TokenHash);
    /// Writes a tenant's settings.
    fn put_tenant_settings(&mut self, tenant: &Tenant, settings: &TenantSettings);
    /// Writes a service.
    fn put_service(&mut self, tenant: &Tenant, service: &Service);
    /// Writes a usage opt-out.
    fn put_usage_opt_out(&mut self, tenant: &Tenant, opt_out: &UsageOptOut);
    /// Deletes a usage opt-out.
    fn delete_usage_opt_out(&mut self, tenant: &Tenant, user: &UserId);
    /// Writes an address's opt-outs.
    fn put_address_consent(&mut self, tenant: &Tenant, address: &Address, consent: &AddressConsent);
    /// Writes a tenant's erasure secret (once: it is never replaced).
    fn put_erasure_key(&mut self, tenant: &Tenant, key: &ErasureKey);
    /// Writes the tombstone of an address's keyed hash, replacing one.
    fn put_tombstone(&mut self, tenant: &Tenant, hash: &AddressHash, tombstone: &Tombstone);
    /// Records an erasure.
    fn put_erasure(&mut self, tenant: &Tenant, erasure: &Erasure);
    /// Deletes `profile` (as read by this change) and everything of it: its
    /// record, consent history, subscriptions (with their subscriber index
    /// entries), its confirmation tokens and its address → profile index
    /// entries; puts [`Change::ProfileErased`] on the feed. Address states,
    /// logs and opt-outs are the addresses', not the profile's: they stay.
    /// Staged like any write; reads of this change no longer see the
    /// profile.
    async fn erase_profile(&mut self, tenant: &Tenant, profile: &Profile) -> Result<()>;

    /// Applies every staged write as one unit and puts the change on the
    /// feed. Visible to reads at once; durable after [`Store::sync`]. A
    /// change that staged nothing commits nothing and returns the current
    /// position.
    async fn commit(self: Box<Self>) -> Result<Position>;
}

#[cfg(test)]
mod tests {
    use super::CompactionPolicy;

    const MIB: u64 = 1 << 20;

    #[test]
    fn compaction_is_due_above_ratio_times_the_records_and_never_below_the_minimum() {
        let policy = CompactionPolicy {
            ratio: 4,
            min_bytes: 64 * MIB,
        };
        // Above the minimum: ratio times the records' bytes, exclusive.
        assert_eq!(policy.threshold(100 * MIB), Some(400 * MIB));
        assert!(!policy.due(400 * MIB, 100 * MIB));
        assert!(policy.due(400 * MIB + 1, 100 * MIB));
        // Small stores: the minimum rules.
        assert_eq!(policy.threshold(MIB), Some(64 * MIB));
        assert!(!policy.due(64 * MIB, MIB));
        assert!(policy.due(64 * MIB + 1, MIB));
        // No overflow for absurd counts.
        assert_eq!(policy.threshold(u64::MAX), Some(u64::MAX));
        assert!(!policy.due(u64::MAX, u64::MAX));
    }

    #[test]
    fn a_ratio_of_zero_never_compacts() {
        let never = CompactionPolicy {
            ratio: 0,
            min_bytes: 0,
        };
        assert_eq!(never.threshold(0), None);
        assert!(!never.due(u64::MAX, 0));
    }
}
