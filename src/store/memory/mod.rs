//! An in-memory [`Store`]: typed maps under one mutex, for tests.
//!
//! It holds no derived index: listings that another store answers from an
//! index (address users, non-VALID addresses, subscribers) scan the maps.
//! Every commit is "durable" at once, so it is delivered to the feed before
//! `commit` returns. Nothing survives the process.

use std::{
    collections::BTreeMap,
    ops::Bound,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use async_trait::async_trait;

use super::{
    Change, ChangeRetention, CompactionPolicy, Cursor, Direction, DumpItem, Expired, FeedSink,
    FlushObserver, Loaded, Lock, Page, Position, Reclaimed, Result, Snapshot, Store, Txn,
    WatchRead,
    feed::FeedQueue,
    locks::{Held, LockTable},
    watch::{self, Logged},
};
use crate::clock::{Clock, SystemClock};
use crate::engine::{
    Address, AddressConsent, AddressEvent, AddressHash, AddressState, AddressStatus,
    ConsentHistoryEntry, Erasure, ErasureKey, EventId, EventKey, Profile, ProfileId, Service,
    ServiceId, Subscription, SubscriptionStatus, Tenant, TenantSettings, TokenHash, TokenRecord,
    Tombstone, UnixMillis, UsageOptOut, UserId,
};

/// Everything, in typed maps.
#[derive(Debug, Default, Clone)]
struct State {
    settings: BTreeMap<Tenant, TenantSettings>,
    services: BTreeMap<(Tenant, ServiceId), Service>,
    profiles: BTreeMap<(Tenant, ProfileId), Profile>,
    history: BTreeMap<(Tenant, ProfileId, u64), ConsentHistoryEntry>,
    addresses: BTreeMap<(Tenant, Address), AddressState>,
    log: BTreeMap<(Tenant, Address, EventKey), AddressEvent>,
    markers: BTreeMap<(Tenant, EventId), (Address, UnixMillis)>,
    subscriptions: BTreeMap<(Tenant, ProfileId, ServiceId), Subscription>,
    tokens: BTreeMap<(Tenant, TokenHash), TokenRecord>,
    usage: BTreeMap<(Tenant, UserId), UsageOptOut>,
    address_consent: BTreeMap<(Tenant, Address), AddressConsent>,
    erasure_keys: BTreeMap<Tenant, ErasureKey>,
    tombstones: BTreeMap<(Tenant, AddressHash), Tombstone>,
    erasures: BTreeMap<(Tenant, UnixMillis, u64), Erasure>,
}

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    locks: LockTable,
    feed: FeedQueueSlot,
    watch: WatchLog,
}

/// The watch log: every transaction with changes, by position.
#[derive(Debug)]
struct WatchLog {
    /// The store's identity in its tokens.
    id: String,
    log: Mutex<BTreeMap<u64, Logged>>,
}

impl Default for WatchLog {
    fn default() -> Self {
        Self {
            id: watch::new_store_id(),
            log: Mutex::default(),
        }
    }
}

impl WatchLog {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Logged>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The feed queue, starting at position 0.
#[derive(Debug)]
struct FeedQueueSlot(FeedQueue);

impl Default for FeedQueueSlot {
    fn default() -> Self {
        Self(FeedQueue::new(Position(0)))
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers and logs a transaction's changes, and delivers them (in
    /// memory a commit is as durable as it gets).
    fn publish(&self, changes: Vec<Change>) -> Position {
        let record = watch::encode_logged(SystemClock.now_ms(), &changes);
        let position = self.feed.0.push_recorded(changes, record);
        let mut log = self.watch.lock();
        for (at, record) in self.feed.0.take_records() {
            // Encoded just above: it decodes.
            if let Ok(logged) = watch::decode_logged(at, &record) {
                log.insert(at, logged);
            }
        }
        drop(log);
        self.feed.0.deliver_through(position);
        position
    }
}

/// A staged write.
#[derive(Debug, Clone)]
enum Op {
    Profile(Tenant, Profile),
    History(Tenant, ProfileId, ConsentHistoryEntry),
    AddressState(Tenant, Address, AddressState),
    AddressEvent(Tenant, Address, AddressEvent),
    DeleteEvents(Tenant, Address, EventKey),
    Marker(Tenant, EventId, Address, UnixMillis),
    Subscription(Tenant, ProfileId, Subscription),
    Token(Tenant, TokenHash, Option<TokenRecord>),
    Settings(Tenant, TenantSettings),
    Service(Tenant, Service),
    Usage(Tenant, UserId, Option<UsageOptOut>),
    AddressConsent(Tenant, Address, AddressConsent),
    ErasureKey(Tenant, ErasureKey),
    Tombstone(Tenant, AddressHash, Tombstone),
    Erasure(Tenant, Erasure),
    EraseProfile(Tenant, ProfileId),
}

fn page<T, K: Ord + Clone>(
    items: impl Iterator<Item = (K, T)>,
    after: Option<K>,
    limit: usize,
    cursor: impl Fn(&K) -> Cursor,
) -> Page<T> {
    let mut found: Vec<(K, T)> = items
        .filter(|(k, _)| after.as_ref().is_none_or(|a| k > a))
        .take(limit + 1)
        .collect();
    let next = if found.len() > limit {
        found.truncate(limit);
        found.last().map(|(k, _)| cursor(k))
    } else {
        None
    };
    Page {
        items: found.into_iter().map(|(_, t)| t).collect(),
        next,
    }
}

fn text_cursor(c: Option<&Cursor>) -> Option<String> {
    c.map(|c| String::from_utf8_lossy(&c.0).into_owned())
}

/// `(status, address)` as a cursor: a status byte, a kind byte, the text.
fn address_cursor((status, address): &(AddressStatus, Address)) -> Cursor {
    let mut bytes = vec![*status as u8, address.kind() as u8];
    bytes.extend_from_slice(address.as_str().as_bytes());
    Cursor(bytes)
}

fn address_from_cursor(c: &Cursor) -> Option<(AddressStatus, Address)> {
    let (&status, rest) = c.0.split_first()?;
    let (&kind, text) = rest.split_first()?;
    let status = [
        AddressStatus::Valid,
        AddressStatus::WithErrors,
        AddressStatus::Quarantined,
        AddressStatus::Denylisted,
    ]
    .into_iter()
    .find(|s| *s as u8 == status)?;
    let kind = [
        crate::engine::AddressKind::Email,
        crate::engine::AddressKind::Phone,
        crate::engine::AddressKind::PushToken,
    ]
    .into_iter()
    .find(|k| *k as u8 == kind)?;
    Some((
        status,
        Address::from_trusted(kind, String::from_utf8_lossy(text).into_owned()),
    ))
}

fn all_items(state: &State, tenant: Option<&Tenant>) -> Vec<DumpItem> {
    let mine = |t: &Tenant| tenant.is_none_or(|wanted| wanted == t);
    let mut items = Vec::new();
    for ((t, _), profile) in &state.profiles {
        if mine(t) {
            items.push(DumpItem::Profile {
                tenant: t.clone(),
                profile: profile.clone(),
            });
        }
    }
    for ((t, id, _), entry) in &state.history {
        if mine(t) {
            items.push(DumpItem::ConsentEntry {
                tenant: t.clone(),
                profile_id: id.clone(),
                entry: entry.clone(),
            });
        }
    }
    for ((t, address), s) in &state.addresses {
        if mine(t) {
            items.push(DumpItem::AddressState {
                tenant: t.clone(),
                address: address.clone(),
                state: s.clone(),
            });
        }
    }
    for ((t, address, _), event) in &state.log {
        if mine(t) {
            items.push(DumpItem::AddressEvent {
                tenant: t.clone(),
                address: address.clone(),
                event: event.clone(),
            });
        }
    }
    for ((t, id), (address, at)) in &state.markers {
        if mine(t) {
            items.push(DumpItem::FeedbackEventId {
                tenant: t.clone(),
                event_id: id.clone(),
                address: address.clone(),
                recorded_at: *at,
            });
        }
    }
    for (t, settings) in &state.settings {
        if mine(t) {
            items.push(DumpItem::TenantSettings {
                tenant: t.clone(),
                settings: settings.clone(),
            });
        }
    }
    for ((t, _), service) in &state.services {
        if mine(t) {
            items.push(DumpItem::Service {
                tenant: t.clone(),
                service: service.clone(),
            });
        }
    }
    for ((t, profile, _), sub) in &state.subscriptions {
        if mine(t) {
            items.push(DumpItem::Subscription {
                tenant: t.clone(),
                profile_id: profile.clone(),
                subscription: sub.clone(),
            });
        }
    }
    for ((t, hash), record) in &state.tokens {
        if mine(t) {
            items.push(DumpItem::ConfirmationToken {
                tenant: t.clone(),
                hash: *hash,
                record: record.clone(),
            });
        }
    }
    for ((t, _), opt_out) in &state.usage {
        if mine(t) {
            items.push(DumpItem::UsageOptOut {
                tenant: t.clone(),
                opt_out: opt_out.clone(),
            });
        }
    }
    for ((t, address), consent) in &state.address_consent {
        if mine(t) {
            items.push(DumpItem::AddressConsent {
                tenant: t.clone(),
                address: address.clone(),
                consent: consent.clone(),
            });
        }
    }
    for (t, key) in &state.erasure_keys {
        if mine(t) {
            items.push(DumpItem::ErasureKey {
                tenant: t.clone(),
                key: key.clone(),
            });
        }
    }
    for ((t, hash), tombstone) in &state.tombstones {
        if mine(t) {
            items.push(DumpItem::Tombstone {
                tenant: t.clone(),
                hash: *hash,
                tombstone: *tombstone,
            });
        }
    }
    for ((t, _, _), erasure) in &state.erasures {
        if mine(t) {
            items.push(DumpItem::Erasure {
                tenant: t.clone(),
                erasure: erasure.clone(),
            });
        }
    }
    items
}

/// A copy taken with writes paused.
#[derive(Debug)]
struct Copied {
    items: Vec<DumpItem>,
    paused: Duration,
}

impl Snapshot for Copied {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn paused(&self) -> Duration {
        self.paused
    }

    fn items(&self) -> Box<dyn Iterator<Item = Result<DumpItem>> + Send + '_> {
        Box::new(self.items.iter().cloned().map(Ok))
    }
}

fn restore_into(state: &mut State, item: &DumpItem) {
    match item.clone() {
        DumpItem::Profile { tenant, profile } => {
            state.profiles.insert((tenant, profile.id.clone()), profile);
        }
        DumpItem::ConsentEntry {
            tenant,
            profile_id,
            entry,
        } => {
            state
                .history
                .insert((tenant, profile_id, entry.sequence), entry);
        }
        DumpItem::AddressState {
            tenant,
            address,
            state: s,
        } => {
            state.addresses.insert((tenant, address), s);
        }
        DumpItem::AddressEvent {
            tenant,
            address,
            event,
        } => {
            state.log.insert((tenant, address, event.key()), event);
        }
        DumpItem::FeedbackEventId {
            tenant,
            event_id,
            address,
            recorded_at,
        } => {
            state
                .markers
                .insert((tenant, event_id), (address, recorded_at));
        }
        DumpItem::TenantSettings { tenant, settings } => {
            state.settings.insert(tenant, settings);
        }
        DumpItem::Service { tenant, service } => {
            state.services.insert((tenant, service.id.clone()), service);
        }
        DumpItem::Subscription {
            tenant,
            profile_id,
            subscription,
        } => {
            state.subscriptions.insert(
                (tenant, profile_id, subscription.service_id.clone()),
                subscription,
            );
        }
        DumpItem::ConfirmationToken {
            tenant,
            hash,
            record,
        } => {
            state.tokens.insert((tenant, hash), record);
        }
        DumpItem::UsageOptOut { tenant, opt_out } => {
            state
                .usage
                .insert((tenant, opt_out.user_id.clone()), opt_out);
        }
        DumpItem::AddressConsent {
            tenant,
            address,
            consent,
        } => {
            state.address_consent.insert((tenant, address), consent);
        }
        DumpItem::ErasureKey { tenant, key } => {
            state.erasure_keys.insert(tenant, key);
        }
        DumpItem::Tombstone {
            tenant,
            hash,
            tombstone,
        } => {
            state.tombstones.insert((tenant, hash), tombstone);
        }
        DumpItem::Erasure { tenant, erasure } => {
            state
                .erasures
                .insert((tenant, erasure.erased_at, erasure.id), erasure);
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn tenant_settings(&self, tenant: &Tenant) -> Result<Option<TenantSettings>> {
        Ok(self.state().settings.get(tenant).cloned())
    }

    async fn service(&self, tenant: &Tenant, id: &ServiceId) -> Result<Option<Service>> {
        Ok(self
            .state()
            .services
            .get(&(tenant.clone(), id.clone()))
            .cloned())
    }

    async fn services(
        &self,
        tenant: &Tenant,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<Service>> {
        let state = self.state();
        let items = state
            .services
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, id), s)| (id.as_str().to_owned(), s.clone()));
        Ok(page(items, text_cursor(after), limit, |k| {
            Cursor(k.as_bytes().to_vec())
        }))
    }

    async fn profile(&self, tenant: &Tenant, id: &ProfileId) -> Result<Option<Profile>> {
        Ok(self
            .state()
            .profiles
            .get(&(tenant.clone(), id.clone()))
            .cloned())
    }

    async fn consent_history(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ConsentHistoryEntry>> {
        let state = self.state();
        let Some(profile) = state.profiles.get(&(tenant.clone(), id.clone())) else {
            return Ok(Vec::new());
        };
        let below = profile
            .history_seq
            .saturating_add(1)
            .min(before.unwrap_or(u64::MAX));
        Ok(state
            .history
            .range((tenant.clone(), id.clone(), 0)..(tenant.clone(), id.clone(), below))
            .rev()
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn subscriptions(&self, tenant: &Tenant, id: &ProfileId) -> Result<Vec<Subscription>> {
        Ok(self
            .state()
            .subscriptions
            .iter()
            .filter(|((t, p, _), _)| t == tenant && p == id)
            .map(|(_, s)| s.clone())
            .collect())
    }

    async fn subscribers(
        &self,
        tenant: &Tenant,
        service: &ServiceId,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<(ProfileId, SubscriptionStatus)>> {
        let state = self.state();
        let items = state
            .subscriptions
            .iter()
            .filter(|((t, _, s), _)| t == tenant && s == service)
            .map(|((_, p, _), s)| (p.as_str().to_owned(), (p.clone(), s.status)));
        let mut found: Vec<_> = items.collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(page(found.into_iter(), text_cursor(after), limit, |k| {
            Cursor(k.as_bytes().to_vec())
        }))
    }

    async fn address_state(
        &self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressState>> {
        Ok(self
            .state()
            .addresses
            .get(&(tenant.clone(), address.clone()))
            .cloned())
    }

    async fn address_users(
        &self,
        tenant: &Tenant,
        address: &Address,
        limit: usize,
    ) -> Result<(Vec<ProfileId>, bool)> {
        let state = self.state();
        let mut users: Vec<ProfileId> = state
            .profiles
            .iter()
            .filter(|((t, _), p)| t == tenant && p.all_addresses().any(|a| a == address))
            .map(|((_, id), _)| id.clone())
            .collect();
        users.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let more = users.len() > limit;
        users.truncate(limit);
        Ok((users, more))
    }

    async fn address_history(
        &self,
        tenant: &Tenant,
        address: &Address,
        before: Option<EventKey>,
        limit: usize,
    ) -> Result<Vec<AddressEvent>> {
        let state = self.state();
        let start = (tenant.clone(), address.clone(), EventKey::default());
        let start = (
            start.0,
            start.1,
            EventKey {
                at: i64::MIN,
                sequence: 0,
            },
        );
        let end = match before {
            Some(key) => Bound::Excluded((tenant.clone(), address.clone(), key)),
            None => Bound::Included((
                tenant.clone(),
                address.clone(),
                EventKey {
                    at: i64::MAX,
                    sequence: u64::MAX,
                },
            )),
        };
        Ok(state
            .log
            .range((Bound::Included(start), end))
            .rev()
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn list_addresses(
        &self,
        tenant: &Tenant,
        status: Option<AddressStatus>,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<(Address, AddressState)>> {
        let state = self.state();
        let mut found: Vec<((AddressStatus, Address), (Address, AddressState))> = state
            .addresses
            .iter()
            .filter(|((t, _), s)| {
                t == tenant
                    && s.status != AddressStatus::Valid
                    && status.is_none_or(|wanted| wanted == s.status)
            })
            .map(|((_, a), s)| ((s.status, a.clone()), (a.clone(), s.clone())))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(page(
            found.into_iter(),
            after.and_then(address_from_cursor),
            limit,
            address_cursor,
        ))
    }

    async fn address_consent(
        &self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressConsent>> {
        Ok(self
            .state()
            .address_consent
            .get(&(tenant.clone(), address.clone()))
            .cloned())
    }

    async fn usage_opt_out(&self, tenant: &Tenant, user: &UserId) -> Result<Option<UsageOptOut>> {
        Ok(self
            .state()
            .usage
            .get(&(tenant.clone(), user.clone()))
            .cloned())
    }

    async fn usage_opt_outs(
        &self,
        tenant: &Tenant,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<UsageOptOut>> {
        let state = self.state();
        let items = state
            .usage
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, u), o)| (u.as_str().to_owned(), o.clone()));
        Ok(page(items, text_cursor(after), limit, |k| {
            Cursor(k.as_bytes().to_vec())
        }))
    }

    async fn begin(&self, locks: Vec<Lock>) -> Result<Box<dyn Txn + '_>> {
        let held = self.locks.lock(&locks).await;
        Ok(Box::new(MemoryTxn {
            store: self,
            _held: held,
            ops: Vec::new(),
        }))
    }

    async fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn position(&self) -> Position {
        self.feed.0.last()
    }

    async fn load_decision_state(
        &self,
        visit: &mut (dyn FnMut(Loaded) + Send),
    ) -> Result<Position> {
        let state = self.state().clone();
        let position = self.feed.0.last();
        for (t, settings) in state.settings {
            visit(Loaded::TenantSettings(t, settings));
        }
        for ((t, _), service) in state.services {
            visit(Loaded::Service(t, service));
        }
        for ((t, _), profile) in state.profiles {
            visit(Loaded::Profile(t, Box::new(profile)));
        }
        for ((t, address), s) in state.addresses {
            if s.status != AddressStatus::Valid {
                visit(Loaded::Address(t, address, s.status));
            }
        }
        for ((t, profile, service), sub) in state.subscriptions {
            visit(Loaded::Subscription(t, profile, service, sub.status));
        }
        for ((t, address), consent) in &state.address_consent {
            if consent.mask() != 0 {
                visit(Loaded::AddressConsent(
                    t.clone(),
                    address.clone(),
                    consent.mask(),
                ));
            }
        }
        Ok(position)
    }

    fn follow(&self, after: Position, sink: FeedSink) -> Result<()> {
        self.feed.0.follow(after, sink)
    }

    fn failure(&self) -> Option<Arc<str>> {
        None
    }

    async fn expire(
        &self,
        markers_before: UnixMillis,
        tokens_before: UnixMillis,
        changes: ChangeRetention,
        limit: usize,
    ) -> Result<Expired> {
        let mut state = self.state();
        let markers: Vec<_> = state
            .markers
            .iter()
            .filter(|(_, (_, at))| *at < markers_before)
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect();
        for key in &markers {
            state.markers.remove(key);
        }
        let tokens: Vec<_> = state
            .tokens
            .iter()
            .filter(|(_, r)| r.expires_at < tokens_before)
            .map(|(k, _)| k.clone())
            .take(limit.saturating_sub(markers.len()))
            .collect();
        for key in &tokens {
            state.tokens.remove(key);
        }
        let mut log = self.watch.lock();
        let last = log.last_key_value().map_or(0, |(position, _)| *position);
        let gone: Vec<u64> = log
            .values()
            .take_while(|l| watch::retention_removes(l.position, l.recorded_at, last, changes))
            .map(|l| l.position)
            .take(limit.saturating_sub(markers.len() + tokens.len()))
            .collect();
        for position in &gone {
            log.remove(position);
        }
        Ok(Expired {
            event_markers: u64::try_from(markers.len()).unwrap_or(u64::MAX),
            tokens: u64::try_from(tokens.len()).unwrap_or(u64::MAX),
            changes: u64::try_from(gone.len()).unwrap_or(u64::MAX),
        })
    }

    fn dump<'a>(
        &'a self,
        tenant: Option<&Tenant>,
    ) -> Box<dyn Iterator<Item = Result<DumpItem>> + Send + 'a> {
        Box::new(all_items(&self.state(), tenant).into_iter().map(Ok))
    }

    async fn snapshot(&self, tenant: Option<&Tenant>) -> Result<Box<dyn Snapshot>> {
        let paused = self.locks.pause().await;
        let started = Instant::now();
        let items = all_items(&self.state(), tenant);
        let elapsed = started.elapsed();
        drop(paused);
        Ok(Box::new(Copied {
            items,
            paused: elapsed,
        }))
    }

    async fn restore(&self, items: &[DumpItem]) -> Result<()> {
        let mut state = self.state();
        for item in items {
            restore_into(&mut state, item);
        }
        self.publish(items.iter().filter_map(DumpItem::change).collect());
        Ok(())
    }

    async fn watch_head(&self) -> Result<String> {
        Ok(watch::position_token(
            &self.watch.id,
            self.feed.0.delivered().0,
        ))
    }

    async fn watch_read(&self, token: &str, tenant: &Tenant, limit: usize) -> Result<WatchRead> {
        let after = match watch::parse_position_token(token, &self.watch.id) {
            watch::PositionToken::At(after) => after,
            watch::PositionToken::Refused(answer) => return Ok(answer),
        };
        let durable = self.feed.0.delivered().0;
        let taken: Vec<Logged> = self
            .watch
            .lock()
            .range(after.saturating_add(1)..)
            .take(limit.saturating_add(1))
            .map(|(_, logged)| logged.clone())
            .collect();
        watch::read_dense(
            &self.watch.id,
            after,
            durable,
            tenant,
            limit,
            taken.into_iter().map(Ok),
        )
    }

    fn size_on_disk(&self) -> Result<u64> {
        Ok(0)
    }

    async fn reclaim(&self, _policy: CompactionPolicy) -> Result<Option<Reclaimed>> {
        Ok(None)
    }

    fn observe_flushes(&self, _observer: FlushObserver) -> bool {
        false
    }
}

/// A change to the in-memory store.
struct MemoryTxn<'a> {
    store: &'a MemoryStore,
    _held: Held<'a>,
    ops: Vec<Op>,
}

impl MemoryTxn<'_> {
    /// The last staged value for a key, if any write staged one:
    /// `Some(None)` when it was deleted.
    fn staged<T>(&self, find: impl Fn(&Op) -> Option<Option<T>>) -> Option<Option<T>> {
        self.ops.iter().rev().find_map(find)
    }
}

#[async_trait]
impl Txn for MemoryTxn<'_> {
    async fn profile(&mut self, tenant: &Tenant, id: &ProfileId) -> Result<Option<Profile>> {
        if let Some(staged) = self.staged(|op| match op {
            Op::Profile(t, p) if t == tenant && &p.id == id => Some(Some(p.clone())),
            Op::EraseProfile(t, p) if t == tenant && p == id => Some(None),
            _ => None,
        }) {
            return Ok(staged);
        }
        self.store.profile(tenant, id).await
    }

    async fn subscription(
        &mut self,
        tenant: &Tenant,
        profile: &ProfileId,
        service: &ServiceId,
    ) -> Result<Option<Subscription>> {
        if let Some(staged) = self.staged(|op| match op {
            Op::Subscription(t, p, s)
                if t == tenant && p == profile && &s.service_id == service =>
            {
                Some(Some(s.clone()))
            }
            _ => None,
        }) {
            return Ok(staged);
        }
        Ok(self
            .store
            .state()
            .subscriptions
            .get(&(tenant.clone(), profile.clone(), service.clone()))
            .cloned())
    }

    async fn address_state(
        &mut self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressState>> {
        if let Some(staged) = self.staged(|op| match op {
            Op::AddressState(t, a, s) if t == tenant && a == address => Some(Some(s.clone())),
            _ => None,
        }) {
            return Ok(staged);
        }
        self.store.address_state(tenant, address).await
    }

    async fn address_events(
        &mut self,
        tenant: &Tenant,
        address: &Address,
        from: Option<EventKey>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<AddressEvent>> {
        let state = self.store.state();
        let first = EventKey {
            at: i64::MIN,
            sequence: 0,
        };
        let last = EventKey {
            at: i64::MAX,
            sequence: u64::MAX,
        };
        let key = |k| (tenant.clone(), address.clone(), k);
        let events: Vec<AddressEvent> = match direction {
            Direction::After => {
                let lower = match from {
                    Some(k) => Bound::Excluded(key(k)),
                    None => Bound::Included(key(first)),
                };
                state
                    .log
                    .range((lower, Bound::Included(key(last))))
                    .take(limit)
                    .map(|(_, e)| e.clone())
                    .collect()
            }
            Direction::Before => {
                let upper = match from {
                    Some(k) => Bound::Excluded(key(k)),
                    None => Bound::Included(key(last)),
                };
                state
                    .log
                    .range((Bound::Included(key(first)), upper))
                    .rev()
                    .take(limit)
                    .map(|(_, e)| e.clone())
                    .collect()
            }
        };
        Ok(events)
    }

    async fn event_marker(&mut self, tenant: &Tenant, id: &EventId) -> Result<bool> {
        if self
            .ops
            .iter()
            .any(|op| matches!(op, Op::Marker(t, e, ..) if t == tenant && e == id))
        {
            return Ok(true);
        }
        Ok(self
            .store
            .state()
            .markers
            .contains_key(&(tenant.clone(), id.clone())))
    }

    async fn token(&mut self, tenant: &Tenant, hash: &TokenHash) -> Result<Option<TokenRecord>> {
        if let Some(staged) = self.staged(|op| match op {
            Op::Token(t, h, r) if t == tenant && h == hash => Some(r.clone()),
            _ => None,
        }) {
            return Ok(staged);
        }
        Ok(self
            .store
            .state()
            .tokens
            .get(&(tenant.clone(), *hash))
            .cloned())
    }

    async fn tenant_settings(&mut self, tenant: &Tenant) -> Result<Option<TenantSettings>> {
        if let Some(staged) = self.staged(|op| match op {
            Op::Settings(t, s) if t == tenant => Some(Some(s.clone())),
            _ => None,
        }) {
            return Ok(staged);
        }
        self.store.tenant_settings(tenant).await
    }

    async fn service(&mut self, tenant: &Tenant, id: &ServiceId) -> Result<Option<Service>> {
        if let Some(staged) = self.staged(|op| match op {
            Op::Service(t, s) if t == tenant && &s.id == id => Some(Some(s.clone())),
            _ => None,
        }) {
            return Ok(staged);
        }
        self.store.service(tenant, id).await
    }

    async fn service_count(&mut self, tenant: &Tenant) -> Result<usize> {
        let state = self.store.state();
        let stored = state.services.keys().filter(|(t, _)| t == tenant).count();
        let staged = self
            .ops
            .iter()
            .filter(|op| {
                matches!(op, Op::Service(t, s)
                    if t == tenant && !state.services.contains_key(&(t.clone(), s.id.clone())))
            })
            .count();
        Ok(stored + staged)
    }

    async fn address_consent(
        &mut self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressConsent>> {
        if let Some(staged) = self.staged(|op| match op {
            Op::AddressConsent(t, a, c) if t == tenant && a == address => Some(Some(c.clone())),
            _ => None,
        }) {
            return Ok(staged);
        }
        self.store.address_consent(tenant, address).await
    }

    async fn usage_opt_out(
        &mut self,
        tenant: &Tenant,
        user: &UserId,
    ) -> Result<Option<UsageOptOut>> {
        if let Some(staged) = self.staged(|op| match op {
            Op::Usage(t, u, o) if t == tenant && u == user => Some(o.clone()),
            _ => None,
        }) {
            return Ok(staged);
        }
        self.store.usage_opt_out(tenant, user).await
    }

    async fn erasure_key(&mut self, tenant: &Tenant) -> Result<Option<ErasureKey>> {
        if let Some(staged) = self.staged(|op| match op {
            Op::ErasureKey(t, k) if t == tenant => Some(Some(k.clone())),
            _ => None,
        }) {
            return Ok(staged);
        }
        Ok(self.store.state().erasure_keys.get(tenant).cloned())
    }

    async fn tombstone(
        &mut self,
        tenant: &Tenant,
        hash: &AddressHash,
    ) -> Result<Option<Tombstone>> {
        if let Some(staged) = self.staged(|op| match op {
            Op::Tombstone(t, h, stone) if t == tenant && h == hash => Some(Some(*stone)),
            _ => None,
        }) {
            return Ok(staged);
        }
        Ok(self
            .store
            .state()
            .tombstones
            .get(&(tenant.clone(), *hash))
            .copied())
    }

    fn put_erasure_key(&mut self, tenant: &Tenant, key: &ErasureKey) {
        self.ops.push(Op::ErasureKey(tenant.clone(), key.clone()));
    }

    fn put_tombstone(&mut self, tenant: &Tenant, hash: &AddressHash, tombstone: &Tombstone) {
        self.ops
            .push(Op::Tombstone(tenant.clone(), *hash, *tombstone));
    }

    fn put_erasure(&mut self, tenant: &Tenant, erasure: &Erasure) {
        self.ops.push(Op::Erasure(tenant.clone(), erasure.clone()));
    }

    async fn erase_profile(&mut self, tenant: &Tenant, profile: &Profile) -> Result<()> {
        self.ops
            .push(Op::EraseProfile(tenant.clone(), profile.id.clone()));
        Ok(())
    }

    fn put_profile(&mut self, tenant: &Tenant, profile: &Profile) {
        self.ops.push(Op::Profile(tenant.clone(), profile.clone()));
    }

    fn append_history(&mut self, tenant: &Tenant, id: &ProfileId, entry: &ConsentHistoryEntry) {
        self.ops
            .push(Op::History(tenant.clone(), id.clone(), entry.clone()));
    }

    fn put_address_state(&mut self, tenant: &Tenant, address: &Address, state: &AddressState) {
        self.ops.push(Op::AddressState(
            tenant.clone(),
            address.clone(),
            state.clone(),
        ));
    }

    fn put_address_event(&mut self, tenant: &Tenant, address: &Address, event: &AddressEvent) {
        self.ops.push(Op::AddressEvent(
            tenant.clone(),
            address.clone(),
            event.clone(),
        ));
    }

    fn delete_address_events(&mut self, tenant: &Tenant, address: &Address, before: EventKey) {
        self.ops
            .push(Op::DeleteEvents(tenant.clone(), address.clone(), before));
    }

    fn put_event_marker(
        &mut self,
        tenant: &Tenant,
        id: &EventId,
        address: &Address,
        recorded_at: UnixMillis,
    ) {
        self.ops.push(Op::Marker(
            tenant.clone(),
            id.clone(),
            address.clone(),
            recorded_at,
        ));
    }

    fn put_subscription(&mut self, tenant: &Tenant, profile: &ProfileId, sub: &Subscription) {
        self.ops.push(Op::Subscription(
            tenant.clone(),
            profile.clone(),
            sub.clone(),
        ));
    }

    fn put_token(&mut self, tenant: &Tenant, hash: &TokenHash, record: &TokenRecord) {
        self.ops
            .push(Op::Token(tenant.clone(), *hash, Some(record.clone())));
    }

    fn delete_token(&mut self, tenant: &Tenant, hash: &TokenHash) {
        self.ops.push(Op::Token(tenant.clone(), *hash, None));
    }

    fn put_tenant_settings(&mut self, tenant: &Tenant, settings: &TenantSettings) {
        self.ops
            .push(Op::Settings(tenant.clone(), settings.clone()));
    }

    fn put_service(&mut self, tenant: &Tenant, service: &Service) {
        self.ops.push(Op::Service(tenant.clone(), service.clone()));
    }

    fn put_usage_opt_out(&mut self, tenant: &Tenant, opt_out: &UsageOptOut) {
        self.ops.push(Op::Usage(
            tenant.clone(),
            opt_out.user_id.clone(),
            Some(opt_out.clone()),
        ));
    }

    fn delete_usage_opt_out(&mut self, tenant: &Tenant, user: &UserId) {
        self.ops.push(Op::Usage(tenant.clone(), user.clone(), None));
    }

    fn put_address_consent(
        &mut self,
        tenant: &Tenant,
        address: &Address,
        consent: &AddressConsent,
    ) {
        self.ops.push(Op::AddressConsent(
            tenant.clone(),
            address.clone(),
            consent.clone(),
        ));
    }

    async fn commit(self: Box<Self>) -> Result<Position> {
        let MemoryTxn { store, _held, ops } = *self;
        let mut state = store.state();
        let mut changes = Vec::new();
        for op in ops {
            match op {
                Op::Profile(t, p) => {
                    changes.push(Change::Profile {
                        tenant: t.clone(),
                        profile: Box::new(p.clone()),
                    });
                    state.profiles.insert((t, p.id.clone()), p);
                }
                Op::History(t, id, e) => {
                    state.history.insert((t, id, e.sequence), e);
                }
                Op::AddressState(t, a, s) => {
                    let old = state
                        .addresses
                        .get(&(t.clone(), a.clone()))
                        .map_or(AddressStatus::Valid, |s| s.status);
                    if old != s.status {
                        changes.push(Change::Address {
                            tenant: t.clone(),
                            address: a.clone(),
                            status: s.status,
                        });
                    }
                    state.addresses.insert((t, a), s);
                }
                Op::AddressEvent(t, a, e) => {
                    state.log.insert((t, a, e.key()), e);
                }
                Op::DeleteEvents(t, a, before) => {
                    let keys: Vec<_> = state
                        .log
                        .range(
                            (
                                t.clone(),
                                a.clone(),
                                EventKey {
                                    at: i64::MIN,
                                    sequence: 0,
                                },
                            )..(t.clone(), a.clone(), before),
                        )
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in keys {
                        state.log.remove(&key);
                    }
                }
                Op::Marker(t, id, a, at) => {
                    state.markers.insert((t, id), (a, at));
                }
                Op::Subscription(t, p, s) => {
                    changes.push(Change::Subscription {
                        tenant: t.clone(),
                        profile_id: p.clone(),
                        service_id: s.service_id.clone(),
                        status: s.status,
                    });
                    state.subscriptions.insert((t, p, s.service_id.clone()), s);
                }
                Op::Token(t, h, Some(r)) => {
                    state.tokens.insert((t, h), r);
                }
                Op::Token(t, h, None) => {
                    state.tokens.remove(&(t, h));
                }
                Op::Settings(t, s) => {
                    changes.push(Change::TenantSettings {
                        tenant: t.clone(),
                        settings: s.clone(),
                    });
                    state.settings.insert(t, s);
                }
                Op::Service(t, s) => {
                    changes.push(Change::Service {
                        tenant: t.clone(),
                        service: s.clone(),
                    });
                    state.services.insert((t, s.id.clone()), s);
                }
                Op::Usage(t, u, o) => {
                    changes.push(Change::UsageOptOut {
                        tenant: t.clone(),
                        user_id: u.clone(),
                        opted_out: o.is_some(),
                    });
                    match o {
                        Some(o) => state.usage.insert((t, u), o),
                        None => state.usage.remove(&(t, u)),
                    };
                }
                Op::AddressConsent(t, a, c) => {
                    changes.push(Change::AddressConsent {
                        tenant: t.clone(),
                        address: a.clone(),
                        opted_out: c.mask(),
                    });
                    state.address_consent.insert((t, a), c);
                }
                Op::ErasureKey(t, k) => {
                    state.erasure_keys.insert(t, k);
                }
                Op::Tombstone(t, h, stone) => {
                    state.tombstones.insert((t, h), stone);
                }
                Op::Erasure(t, e) => {
                    state.erasures.insert((t, e.erased_at, e.id), e);
                }
                Op::EraseProfile(t, id) => {
                    state.profiles.remove(&(t.clone(), id.clone()));
                    state
                        .history
                        .retain(|(ht, hid, _), _| !(ht == &t && hid == &id));
                    state
                        .subscriptions
                        .retain(|(st, sid, _), _| !(st == &t && sid == &id));
                    state
                        .tokens
                        .retain(|(kt, _), record| !(kt == &t && record.profile_id == id));
                    changes.push(Change::ProfileErased {
                        tenant: t,
                        profile_id: id,
                    });
                }
            }
        }
        // In memory a commit is as durable as it gets: deliver it now, in
        // commit order (the state lock is still held).
        let position = store.publish(changes);
        drop(state);
        Ok(position)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::MemoryStore;
    use crate::store::Store;

    crate::store::conformance::conformance_suite!((
        Arc::new(MemoryStore::new()) as Arc<dyn Store>,
        ()
    ));
}
