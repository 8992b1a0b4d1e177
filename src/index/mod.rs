//! The decision index: everything an eligibility decision reads, in memory,
//! in a compact form, fed only by durable changes.
//!
//! Per tenant: its settings (regimes), its services with the profiles whose
//! subscription is ACTIVE, every profile (consent marks packed in two bits
//! each, its addresses as slots of the address table), and every address
//! that a profile uses or whose status is not VALID (its status).
//!
//! How it stays right:
//! - It is built from the store at start-up ([`Index::load`]), before any
//!   write is let in, and then changed only by [`Index::apply`], which the
//!   store calls with committed changes once they are durable. So a decision
//!   never sees a change that a crash could still take back.
//! - [`Index::wait_for`] lets a writer wait until its change is in, before
//!   it answers: a client that was told "done" then sees its change.
//! - The rule itself is not here: [`crate::engine::judge`] decides from the
//!   [`Facts`] this module reads off its tables.
//!
//! Concurrency: one `RwLock` per tenant. Readers take it for a bounded
//! stretch of a batch ([`Lookup`]), so a change waits at most that long.

mod table;
mod text;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, RwLock, RwLockReadGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::watch;

use crate::{
    engine::{
        Address, AddressKind, AddressStatus, Channel, ConsentState, ConsentStatus, Facts, Policy,
        Profile, ProfileId, Reach, Reasons, Regime, Service, ServiceId, SubscriptionStatus, Tenant,
        TenantSettings, judge,
    },
    store::{Change, Committed, Loaded, Position},
};

use table::{NONE, Table};
use text::Text;

/// Whether the index can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Being built from the store; how many records so far.
    Loading(u64),
    /// Built and following the feed.
    Ready,
    /// Building failed; the server cannot decide.
    Failed(Arc<str>),
}

/// The index. Shared behind an `Arc`.
#[derive(Debug)]
pub struct Index {
    /// Each tenant's part; a tenant appears with its first change.
    tenants: RwLock<HashMap<Tenant, Arc<TenantIndex>>>,
    /// The feed position applied so far.
    position: AtomicU64,
    /// Readiness, and a signal when the position moves.
    readiness: watch::Sender<Readiness>,
    /// Whether `readiness` is `Ready` (read on every request).
    ready: std::sync::atomic::AtomicBool,
    /// Bumped after every applied batch, for [`Index::wait_for`].
    applied: watch::Sender<u64>,
}

/// One tenant's part of the index.
#[derive(Debug, Default)]
pub struct TenantIndex {
    state: RwLock<TenantState>,
}

/// A profile as the index keeps it.
#[derive(Debug, Default)]
struct ProfileSlot {
    /// The id (empty: a free slot).
    id: Text,
    /// Consent, two bits per scope: all channels, then each channel.
    consent: u16,
    /// The first address's slot, or [`NONE`].
    first: u32,
    /// [`HAS_MORE`] when more addresses are in `more`; [`HAS_POSTAL`] when
    /// a postal address is in `postal`.
    flags: u8,
}

const HAS_MORE: u8 = 1;
const HAS_POSTAL: u8 = 2;

/// An address as the index keeps it.
#[derive(Debug)]
struct AddressSlot {
    /// The normalised text (empty: a free slot).
    text: Text,
    /// Its kind.
    kind: AddressKind,
    /// Its stored status.
    status: AddressStatus,
    /// The channels it is opted out of, one bit per [`Channel::index`].
    opted_out: u8,
    /// How many profiles use it; a slot no profile uses is kept only while
    /// its status is not usable or it is opted out of a channel.
    users: u32,
}

impl Default for AddressSlot {
    fn default() -> Self {
        Self {
            text: Text::default(),
            kind: AddressKind::Email,
            status: AddressStatus::Valid,
            opted_out: 0,
            users: 0,
        }
    }
}

impl AddressSlot {
    /// Whether the address is opted out of `channel`.
    fn opted_out_of(&self, channel: Channel) -> bool {
        self.opted_out & (1 << channel.index()) != 0
    }

    /// Whether a delivery on `channel` may use the address.
    fn usable_on(&self, channel: Channel) -> bool {
        self.status.is_usable() && !self.opted_out_of(channel)
    }
}

/// A service and who is subscribed to it.
#[derive(Debug)]
struct ServiceEntry {
    service: Service,
    /// Profile slots with an ACTIVE subscription.
    active: HashSet<u32>,
}

#[derive(Debug, Default)]
struct TenantState {
    settings: TenantSettings,
    services: HashMap<ServiceId, ServiceEntry>,
    profiles: Table<ProfileSlot>,
    addresses: Table<AddressSlot>,
    /// The second and later addresses of profiles that have several.
    more: HashMap<u32, Box<[u32]>>,
    /// Postal addresses, by profile slot.
    postal: HashMap<u32, Text>,
}

impl table::Keyed for ProfileSlot {
    fn key(&self) -> (u8, &str) {
        (0, self.id.as_str())
    }
    fn is(&self, key: (u8, &str)) -> bool {
        key.0 == 0 && self.id.is(key.1)
    }
    fn is_free(&self) -> bool {
        self.id.is_empty()
    }
}

impl table::Keyed for AddressSlot {
    fn key(&self) -> (u8, &str) {
        (kind_byte(self.kind), self.text.as_str())
    }
    fn is(&self, key: (u8, &str)) -> bool {
        key.0 == kind_byte(self.kind) && self.text.is(key.1)
    }
    fn is_free(&self) -> bool {
        self.text.is_empty()
    }
}

fn kind_byte(kind: AddressKind) -> u8 {
    match kind {
        AddressKind::Email => 1,
        AddressKind::Phone => 2,
        AddressKind::PushToken => 3,
    }
}

fn pack(consent: &ConsentState) -> u16 {
    let bits = |status: ConsentStatus| -> u16 {
        match status {
            ConsentStatus::NoPreference => 0,
            ConsentStatus::OptedIn => 1,
            ConsentStatus::OptedOut => 2,
        }
    };
    let mut packed = bits(consent.all_channels.status);
    for (i, mark) in consent.channels.iter().enumerate() {
        packed |= bits(mark.status) << (2 * (i + 1));
    }
    packed
}

/// The status packed at position `i` (0: all channels, 1 + channel index).
fn unpack(consent: u16, i: usize) -> ConsentStatus {
    match (consent >> (2 * i)) & 3 {
        1 => ConsentStatus::OptedIn,
        2 => ConsentStatus::OptedOut,
        _ => ConsentStatus::NoPreference,
    }
}

impl TenantState {
    /// The address slot of `address`, made (VALID, unused) when missing.
    fn address_slot(&mut self, kind: AddressKind, text: &str) -> u32 {
        self.addresses
            .find_or_insert((kind_byte(kind), text), || AddressSlot {
                text: text.into(),
                kind,
                status: AddressStatus::Valid,
                opted_out: 0,
                users: 0,
            })
    }

    /// Frees an address slot that nothing needs any more.
    fn release_if_unused(&mut self, slot: u32) {
        let unused = self
            .addresses
            .get(slot)
            .is_some_and(|a| a.users == 0 && a.status.is_usable() && a.opted_out == 0);
        if unused {
            self.addresses.remove(slot);
        }
    }

    fn profile_addresses(&self, slot: u32) -> impl Iterator<Item = u32> + '_ {
        let profile = self.profiles.get(slot);
        let first = profile.map_or(NONE, |p| p.first);
        let more: &[u32] = match profile {
            Some(p) if p.flags & HAS_MORE != 0 => self.more.get(&slot).map_or(&[], |m| m),
            _ => &[],
        };
        std::iter::once(first)
            .filter(|s| *s != NONE)
            .chain(more.iter().copied())
    }

    fn put_profile(&mut self, profile: &Profile) {
        let new: Vec<u32> = profile
            .all_addresses()
            .map(|a| self.address_slot(a.kind(), a.as_str()))
            .collect();
        for &a in &new {
            if let Some(address) = self.addresses.get_mut(a) {
                address.users += 1;
            }
        }
        let slot = self
            .profiles
            .find_or_insert((0, profile.id.as_str()), || ProfileSlot {
                id: profile.id.as_str().into(),
                consent: 0,
                first: NONE,
                flags: 0,
            });
        let old: Vec<u32> = self.profile_addresses(slot).collect();
        for a in old {
            if let Some(address) = self.addresses.get_mut(a) {
                address.users = address.users.saturating_sub(1);
            }
            self.release_if_unused(a);
        }
        let mut flags = 0;
        self.more.remove(&slot);
        if new.len() > 1 {
            flags |= HAS_MORE;
            self.more.insert(slot, new[1..].into());
        }
        self.postal.remove(&slot);
        if !profile.postal_address.is_empty() {
            flags |= HAS_POSTAL;
            self.postal
                .insert(slot, profile.postal_address.as_str().into());
        }
        if let Some(p) = self.profiles.get_mut(slot) {
            p.consent = pack(&profile.consent);
            p.first = new.first().copied().unwrap_or(NONE);
            p.flags = flags;
        }
    }

    /// Forgets a profile: its slot, its uses of addresses (an address slot
    /// stays while its status or opt-outs matter), its subscriptions.
    fn remove_profile(&mut self, id: &ProfileId) {
        let Some(slot) = self.profiles.find((0, id.as_str())) else {
            return;
        };
        let old: Vec<u32> = self.profile_addresses(slot).collect();
        for a in old {
            if let Some(address) = self.addresses.get_mut(a) {
                address.users = address.users.saturating_sub(1);
            }
            self.release_if_unused(a);
        }
        self.more.remove(&slot);
        self.postal.remove(&slot);
        for entry in self.services.values_mut() {
            entry.active.remove(&slot);
        }
        self.profiles.remove(slot);
    }

    fn put_address(&mut self, address: &Address, status: AddressStatus) {
        // Decisions tell usable from not; WITH_ERRORS is kept as VALID.
        let status = if status.is_usable() {
            AddressStatus::Valid
        } else {
            status
        };
        self.update_address(address, !status.is_usable(), |a| a.status = status);
    }

    fn put_address_consent(&mut self, address: &Address, opted_out: u8) {
        self.update_address(address, opted_out != 0, |a| a.opted_out = opted_out);
    }

    /// Changes an address's slot: made when `keep` (the address now matters
    /// to decisions), otherwise changed only if it exists; then freed if
    /// nothing needs it any more.
    fn update_address(
        &mut self,
        address: &Address,
        keep: bool,
        change: impl FnOnce(&mut AddressSlot),
    ) {
        let key = (kind_byte(address.kind()), address.as_str());
        let slot = if keep {
            self.address_slot(address.kind(), address.as_str())
        } else {
            match self.addresses.find(key) {
                Some(slot) => slot,
                // Unknown and nothing to keep.
                None => return,
            }
        };
        if let Some(a) = self.addresses.get_mut(slot) {
            change(a);
        }
        self.release_if_unused(slot);
    }

    /// An address's status (VALID when unknown; WITH_ERRORS reads as VALID)
    /// and whether it is opted out of `channel`.
    fn address(&self, address: &Address, channel: Channel) -> (AddressStatus, bool) {
        self.addresses
            .find((kind_byte(address.kind()), address.as_str()))
            .and_then(|slot| self.addresses.get(slot))
            .map_or((AddressStatus::Valid, false), |a| {
                (a.status, a.opted_out_of(channel))
            })
    }

    fn put_subscription(&mut self, profile: &ProfileId, service: &ServiceId, active: bool) {
        let Some(slot) = self.profiles.find((0, profile.as_str())) else {
            return;
        };
        if let Some(entry) = self.services.get_mut(service) {
            if active {
                entry.active.insert(slot);
            } else {
                entry.active.remove(&slot);
            }
        }
    }

    fn put_service(&mut self, service: &Service) {
        self.services
            .entry(service.id.clone())
            .and_modify(|e| e.service = service.clone())
            .or_insert_with(|| ServiceEntry {
                service: service.clone(),
                active: HashSet::new(),
            });
    }

    fn facts(&self, slot: u32, channel: Channel) -> Option<Facts> {
        let profile = self.profiles.get(slot)?;
        let reach = match channel.address_kind() {
            None => Reach::postal(profile.flags & HAS_POSTAL != 0),
            Some(kind) => {
                let mut reach = Reach::default();
                for a in self.profile_addresses(slot) {
                    if let Some(address) = self.addresses.get(a)
                        && address.kind == kind
                    {
                        reach.add_address(address.status, address.opted_out_of(channel));
                    }
                }
                reach
            }
        };
        Some(Facts {
            all_channels: unpack(profile.consent, 0),
            channel: unpack(profile.consent, 1 + channel.index()),
            reach,
        })
    }
}

/// What a delivery checks, resolved against the index once per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The channel.
    pub channel: Channel,
    /// The tenant's regime for the channel.
    pub regime: Regime,
    /// The service, when the delivery is for one.
    pub service: Option<ServiceId>,
}

/// One decision read off the index, borrowing it.
#[derive(Debug, Clone, Copy)]
pub struct Verdict<'a> {
    /// Why the profile is excluded; empty when eligible.
    pub reasons: Reasons,
    state: &'a TenantState,
    slot: u32,
    channel: Channel,
}

impl<'a> Verdict<'a> {
    /// The addresses the delivery may use: empty unless eligible.
    pub fn addresses(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.address_texts().map(Text::as_str)
    }

    /// [`Verdict::addresses`] as bytes (for an encoder: no UTF-8 check).
    pub fn address_bytes(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.address_texts().map(Text::as_bytes)
    }

    fn address_texts(&self) -> impl Iterator<Item = &'a Text> + 'a {
        let state = self.state;
        let eligible = self.reasons.is_empty() && self.slot != NONE;
        let channel = self.channel;
        let kind = channel.address_kind();
        let postal = match (eligible, kind) {
            (true, None) => state.postal.get(&self.slot),
            _ => None,
        };
        let listed = match (eligible, kind) {
            (true, Some(kind)) => Some((state.profile_addresses(self.slot), kind)),
            _ => None,
        };
        postal
            .into_iter()
            .chain(listed.into_iter().flat_map(move |(slots, kind)| {
                slots.filter_map(move |a| {
                    state
                        .addresses
                        .get(a)
                        .filter(|a| a.kind == kind && a.usable_on(channel))
                        .map(|a| &a.text)
                })
            }))
    }
}

/// Decisions for one delivery, under the tenant's read lock: hold it for a
/// bounded stretch (a few thousand decisions), then drop it.
#[derive(Debug)]
pub struct Lookup<'a> {
    state: Option<RwLockReadGuard<'a, TenantState>>,
    delivery: &'a Delivery,
}

/// Lookups started together in [`Lookup::decide_each`]: their memory
/// reads do not depend on each other, so the processor overlaps them.
const LOOKUP_GROUP: usize = 32;

static EMPTY_TENANT: std::sync::LazyLock<TenantState> =
    std::sync::LazyLock::new(TenantState::default);

impl Lookup<'_> {
    fn state(&self) -> &TenantState {
        self.state.as_deref().unwrap_or(&EMPTY_TENANT)
    }

    /// Decides for one profile id.
    pub fn decide(&self, id: &str) -> Verdict<'_> {
        let state = self.state();
        let slot = state.profiles.find((0, id)).unwrap_or(NONE);
        let subscribed = self.delivery.service.as_ref().map(|service| {
            state
                .services
                .get(service)
                .is_some_and(|s| s.active.contains(&slot))
        });
        let policy = Policy {
            regime: self.delivery.regime,
            subscribed,
        };
        Verdict {
            reasons: judge(state.facts(slot, self.delivery.channel), policy),
            state,
            slot,
            channel: self.delivery.channel,
        }
    }

    /// Decides for one address on the delivery's channel, from its status
    /// and its opt-outs alone (no profile's consent): the same rule as a
    /// profile with that one address and no consent of its own.
    pub fn decide_address(&self, address: &Address) -> Reasons {
        let (status, opted_out) = self.state().address(address, self.delivery.channel);
        let mut reach = Reach::default();
        reach.add_address(status, opted_out);
        let facts = Facts {
            all_channels: ConsentStatus::NoPreference,
            channel: ConsentStatus::NoPreference,
            reach,
        };
        judge(Some(facts), Policy::default())
    }

    /// Decides for ids `0..n` (`id(i)` gives each) and hands each verdict to
    /// `decided`, in order. Ids go through in groups: first every profile of
    /// a group is found, then every verdict is made, then handed on, so that
    /// the reads of one group overlap instead of waiting one for another.
    pub fn decide_each<'s, 'l>(
        &'l self,
        n: usize,
        id: impl Fn(usize) -> &'s str,
        mut decided: impl FnMut(&'s str, &Verdict<'l>),
    ) {
        let state = self.state();
        let channel = self.delivery.channel;
        // The service's subscribers, once per stretch.
        let service = self
            .delivery
            .service
            .as_ref()
            .map(|service| state.services.get(service).map(|s| &s.active));
        let mut slots = [NONE; LOOKUP_GROUP];
        let mut verdicts = [Verdict {
            reasons: Reasons::default(),
            state,
            slot: NONE,
            channel,
        }; LOOKUP_GROUP];
        let mut start = 0;
        while start < n {
            let len = LOOKUP_GROUP.min(n - start);
            for (k, slot) in slots[..len].iter_mut().enumerate() {
                *slot = state.profiles.find((0, id(start + k))).unwrap_or(NONE);
            }
            for (verdict, &slot) in verdicts[..len].iter_mut().zip(&slots[..len]) {
                let policy = Policy {
                    regime: self.delivery.regime,
                    subscribed: service.map(|active| active.is_some_and(|a| a.contains(&slot))),
                };
                verdict.slot = slot;
                verdict.reasons = judge(state.facts(slot, channel), policy);
            }
            for (k, verdict) in verdicts[..len].iter().enumerate() {
                decided(id(start + k), verdict);
            }
            start += len;
        }
    }
}

impl Default for Index {
    fn default() -> Self {
        Self {
            tenants: RwLock::new(HashMap::new()),
            position: AtomicU64::new(0),
            readiness: watch::Sender::new(Readiness::Loading(0)),
            ready: std::sync::atomic::AtomicBool::new(false),
            applied: watch::Sender::new(0),
        }
    }
}

impl Index {
    /// An empty index, loading.
    pub fn new() -> Self {
        Self::default()
    }

    fn tenant(&self, tenant: &Tenant) -> Option<Arc<TenantIndex>> {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
    }

    fn tenant_or_new(&self, tenant: &Tenant) -> Arc<TenantIndex> {
        if let Some(found) = self.tenant(tenant) {
            return found;
        }
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(tenants.entry(tenant.clone()).or_default())
    }

    fn write(&self, tenant: &Tenant, change: impl FnOnce(&mut TenantState)) {
        let index = self.tenant_or_new(tenant);
        let mut state = index.state.write().unwrap_or_else(|p| p.into_inner());
        change(&mut state);
    }

    // ---- building and following ---------------------------------------------

    /// Adds one record of the start-up load.
    pub fn load(&self, item: Loaded) {
        // A loaded record is the change that would have written it.
        self.apply_change(&Change::from(item));
    }

    /// Says how far the load has come (for health and the log).
    pub fn loading(&self, records: u64) {
        self.readiness.send_replace(Readiness::Loading(records));
    }

    /// Ends the load: the index holds the store as of `position`. Its tables
    /// give back the room that growing left unused.
    pub fn loaded(&self, position: Position) {
        for tenant in self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let mut state = tenant.state.write().unwrap_or_else(|p| p.into_inner());
            state.profiles.shrink_to_fit();
            state.addresses.shrink_to_fit();
        }
        self.position.store(position.0, Ordering::Release);
        self.readiness.send_replace(Readiness::Ready);
        self.ready.store(true, Ordering::Release);
    }

    /// The load failed; decisions are refused.
    pub fn failed(&self, why: &str) {
        self.readiness
            .send_replace(Readiness::Failed(Arc::from(why)));
    }

    /// Applies durable changes, in position order.
    pub fn apply(&self, committed: &[Committed]) {
        let mut last = None;
        for c in committed {
            for change in &c.changes {
                self.apply_change(change);
            }
            last = Some(c.position);
        }
        if let Some(position) = last {
            self.position.fetch_max(position.0, Ordering::AcqRel);
            self.applied.send_replace(position.0);
        }
    }

    fn apply_change(&self, change: &Change) {
        match change {
            Change::Profile { tenant, profile } => self.write(tenant, |s| s.put_profile(profile)),
            Change::Address {
                tenant,
                address,
                status,
            } => self.write(tenant, |s| s.put_address(address, *status)),
            Change::Subscription {
                tenant,
                profile_id,
                service_id,
                status,
            } => self.write(tenant, |s| {
                s.put_subscription(
                    profile_id,
                    service_id,
                    *status == SubscriptionStatus::Active,
                );
            }),
            Change::TenantSettings { tenant, settings } => {
                self.write(tenant, |s| s.settings = settings.clone());
            }
            Change::Service { tenant, service } => self.write(tenant, |s| s.put_service(service)),
            Change::AddressConsent {
                tenant,
                address,
                opted_out,
            } => self.write(tenant, |s| s.put_address_consent(address, *opted_out)),
            Change::ProfileErased { tenant, profile_id } => {
                self.write(tenant, |s| s.remove_profile(profile_id));
            }
            // Not read by decisions.
            Change::UsageOptOut { .. } => {}
            Change::Reset => self
                .tenants
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .clear(),
        }
    }

    /// The position applied so far.
    pub fn position(&self) -> Position {
        Position(self.position.load(Ordering::Acquire))
    }

    /// Waits until the index holds every change up to `position`.
    pub async fn wait_for(&self, position: Position) {
        if self.position() >= position {
            return;
        }
        let mut applied = self.applied.subscribe();
        while self.position() < position {
            if applied.changed().await.is_err() {
                return;
            }
        }
    }

    /// Whether the index is built and following the feed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The readiness now.
    pub fn readiness(&self) -> Readiness {
        self.readiness.borrow().clone()
    }

    /// A receiver that sees readiness change.
    pub fn watch_readiness(&self) -> watch::Receiver<Readiness> {
        self.readiness.subscribe()
    }

    // ---- reading --------------------------------------------------------------

    /// A tenant's settings as the index holds them (defaults when none).
    pub fn tenant_settings(&self, tenant: &Tenant) -> TenantSettings {
        self.tenant(tenant)
            .map_or_else(TenantSettings::default, |t| {
                t.state
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .settings
                    .clone()
            })
    }

    /// A service as the index holds it.
    pub fn service(&self, tenant: &Tenant, id: &ServiceId) -> Option<Service> {
        let t = self.tenant(tenant)?;
        let state = t.state.read().unwrap_or_else(|p| p.into_inner());
        state.services.get(id).map(|e| e.service.clone())
    }

    /// A tenant's part, to make [`Lookup`]s from (`None`: nothing of it yet).
    pub fn tenant_index(&self, tenant: &Tenant) -> Option<Arc<TenantIndex>> {
        self.tenant(tenant)
    }

    /// About how many bytes the index takes: its tables and what they own.
    pub fn memory_bytes(&self) -> usize {
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        tenants
            .values()
            .map(|t| {
                let state = t.state.read().unwrap_or_else(|p| p.into_inner());
                state.profiles.bytes()
                    + state.addresses.bytes()
                    + state.profiles.heap_bytes(|p| p.id.heap_bytes())
                    + state.addresses.heap_bytes(|a| a.text.heap_bytes())
                    + state.more.values().map(|m| 16 + 4 * m.len()).sum::<usize>()
                    + state
                        .postal
                        .values()
                        .map(|p| 32 + p.heap_bytes())
                        .sum::<usize>()
                    + state
                        .services
                        .values()
                        .map(|s| 64 + s.active.capacity() * 5)
                        .sum::<usize>()
            })
            .sum()
    }

    /// How many profiles and addresses the index holds in all.
    pub fn counts(&self) -> (usize, usize) {
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        tenants.values().fold((0, 0), |(p, a), t| {
            let state = t.state.read().unwrap_or_else(|p| p.into_inner());
            (p + state.profiles.len(), a + state.addresses.len())
        })
    }
}

/// What the index holds, in a form two indexes can be compared by: per
/// tenant, its regimes, each service's ACTIVE subscribers, each profile's
/// consent and addresses with their statuses, and every address kept for
/// its status alone.
#[cfg(test)]
pub(crate) type Canonical = std::collections::BTreeMap<String, CanonicalTenant>;

/// A profile of [`Canonical`]: packed consent, addresses with their
/// statuses, postal address.
#[cfg(test)]
pub(crate) type CanonicalProfile = (u16, Vec<(AddressKind, String, AddressStatus)>, String);

/// One tenant of [`Canonical`].
#[cfg(test)]
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CanonicalTenant {
    pub(crate) regimes: Vec<Regime>,
    pub(crate) services: std::collections::BTreeMap<String, Vec<String>>,
    pub(crate) profiles: std::collections::BTreeMap<String, CanonicalProfile>,
    pub(crate) unused: std::collections::BTreeSet<(AddressKind, String, AddressStatus)>,
}

#[cfg(test)]
impl Index {
    /// The index in comparable form.
    pub(crate) fn canonical(&self) -> Canonical {
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Canonical::new();
        for (tenant, index) in tenants.iter() {
            let state = index.state.read().unwrap_or_else(|p| p.into_inner());
            let mut c = CanonicalTenant {
                regimes: Channel::ALL
                    .iter()
                    .map(|ch| state.settings.regime(*ch))
                    .collect(),
                ..CanonicalTenant::default()
            };
            let id_of = |slot: u32| state.profiles.get(slot).map(|p| p.id.as_str().to_owned());
            for (id, entry) in &state.services {
                let mut active: Vec<String> =
                    entry.active.iter().filter_map(|s| id_of(*s)).collect();
                active.sort();
                c.services.insert(id.as_str().to_owned(), active);
            }
            for slot in 0..u32::try_from(state.profiles.slot_count()).unwrap_or(0) {
                let Some(p) = state.profiles.get(slot) else {
                    continue;
                };
                let addresses = state
                    .profile_addresses(slot)
                    .filter_map(|a| state.addresses.get(a))
                    .map(|a| (a.kind, a.text.as_str().to_owned(), a.status))
                    .collect();
                let postal = state
                    .postal
                    .get(&slot)
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                c.profiles
                    .insert(p.id.as_str().to_owned(), (p.consent, addresses, postal));
            }
            for slot in 0..u32::try_from(state.addresses.slot_count()).unwrap_or(0) {
                if let Some(a) = state.addresses.get(slot)
                    && a.users == 0
                {
                    c.unused
                        .insert((a.kind, a.text.as_str().to_owned(), a.status));
                }
            }
            let empty = c.services.is_empty()
                && c.profiles.is_empty()
                && c.unused.is_empty()
                && c.regimes.iter().all(|r| *r == Regime::default());
            if !empty {
                out.insert(tenant.as_str().to_owned(), c);
            }
        }
        out
    }
}

impl TenantIndex {
    /// Starts a stretch of decisions for `delivery`.
    pub fn lookup<'a>(&'a self, delivery: &'a Delivery) -> Lookup<'a> {
        Lookup {
            state: Some(self.state.read().unwrap_or_else(|p| p.into_inner())),
            delivery,
        }
    }
}

/// Decisions for a tenant the index has never seen: every profile is unknown.
pub fn empty_lookup(delivery: &Delivery) -> Lookup<'_> {
    Lookup {
        state: None,
        delivery,
    }
}

#[cfg(test)]
mod tests;
