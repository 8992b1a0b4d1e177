//! Whole-store iteration and raw restore, for the data tools (`crate::data`):
//! export, import and online backup.
//!
//! A dump is every record of the [`keys::DUMPED_TYPES`] in key order, decoded
//! into a [`DumpItem`]. The derived indexes (`u`: address → profile, `s`:
//! status, `c`: service → subscribers) are not dumped: [`Store::restore`]
//! rebuilds them from the profile, address-state and subscription records,
//! so they always agree with what was restored.
//!
//! Consistency: [`Store::snapshot`] copies the raw records while it holds
//! every lock stripe ([`Store::pause_writes`]). Every write takes its stripes
//! before its read-modify-write and releases them after its one
//! `apply_batch`, so with all stripes held no write is half done and none
//! starts: the copy is the state as of one moment. Reads go on meanwhile.
//!
//! A new record type is one more [`DumpItem`] variant, one arm in
//! `decode_item`, and one arm in `restore_into` and `owner_key` (plus its key type in
//! `keys::DUMPED_TYPES` and `keys::parse`). A new derived index is rebuilt in
//! `restore_into`, never dumped.

use std::{
    collections::HashSet,
    sync::MutexGuard,
    time::{Duration, Instant},
};

use sled::IVec;

use super::{CodecError, Result, Store, StoreError, codec, corrupt, keys, keys::KeyParts};
use crate::engine::{
    Address, AddressEvent, AddressEventKind, AddressState, AddressStatus, ChangeContext,
    ConsentHistoryEntry, EventId, Profile, ProfileId, QuarantineRules, Service, ServiceId,
    Subscription, Tenant, TenantSettings, TokenHash, UnixMillis, UsageOptOut, UserId, replay,
};

/// An operator-style status change of an address, as a bulk import records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualEvent {
    /// The address.
    pub address: Address,
    /// QUARANTINED or DENYLISTED.
    pub status: AddressStatus,
    /// Event time.
    pub occurred_at: UnixMillis,
    /// Who, how and why.
    pub context: ChangeContext,
}

/// One record of a dump, decoded.
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
        /// The event (its sequence included).
        event: AddressEvent,
    },
    /// A feedback event id the tenant has recorded, and for which address.
    FeedbackEventId {
        /// Its tenant.
        tenant: Tenant,
        /// The event id.
        event_id: EventId,
        /// The address the event was about.
        address: Address,
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
        /// The profile whose subscription it confirms.
        profile_id: ProfileId,
        /// The service.
        service_id: ServiceId,
        /// When it was used, if it was.
        used_at: Option<UnixMillis>,
    },
    /// A product user's usage opt-out.
    UsageOptOut {
        /// Its tenant.
        tenant: Tenant,
        /// The opt-out (its user id included).
        opt_out: UsageOptOut,
    },
}

/// The raw records of a dump, copied while writes were paused: the state as
/// of one moment. Decode them with [`Snapshot::items`] after writes resume.
#[derive(Debug)]
pub struct Snapshot {
    /// Keys and values, in key order.
    entries: Vec<(IVec, IVec)>,
    /// How long writes were paused for the copy.
    pub paused: Duration,
}

impl Snapshot {
    /// How many records the snapshot holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the snapshot holds no record.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The records, decoded, in key order.
    pub fn items(&self) -> impl Iterator<Item = Result<DumpItem>> + '_ {
        self.entries
            .iter()
            .filter_map(|(key, value)| decode_item(key, value).transpose())
    }
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

/// Decodes one raw record; `None` for a key that is not of a dumped type.
fn decode_item(key: &[u8], value: &[u8]) -> Result<Option<DumpItem>> {
    let Some(parts) = keys::parse(key) else {
        return Ok(None);
    };
    let item = match parts {
        KeyParts::Profile { tenant, id } => DumpItem::Profile {
            tenant: tenant_of(key, tenant)?,
            profile: codec::decode_profile(
                ProfileId::from_trusted(utf8(key, id)?.to_owned()),
                value,
            )
            .map_err(corrupt(key))?,
        },
        KeyParts::ConsentLog { tenant, id } => DumpItem::ConsentEntry {
            tenant: tenant_of(key, tenant)?,
            profile_id: ProfileId::from_trusted(utf8(key, id)?.to_owned()),
            entry: codec::decode_consent_entry(value).map_err(corrupt(key))?,
        },
        KeyParts::Address {
            tenant,
            kind,
            address,
        } => DumpItem::AddressState {
            tenant: tenant_of(key, tenant)?,
            address: address_of(key, kind, address)?,
            state: codec::decode_address_state(value).map_err(corrupt(key))?,
        },
        KeyParts::AddressLog {
            tenant,
            kind,
            address,
        } => DumpItem::AddressEvent {
            tenant: tenant_of(key, tenant)?,
            address: address_of(key, kind, address)?,
            event: codec::decode_address_event(value).map_err(corrupt(key))?,
        },
        KeyParts::EventId { tenant, event_id } => {
            // The value is the key of the address's state.
            let Some(KeyParts::Address { kind, address, .. }) = keys::parse(value) else {
                return Err(corrupt(key)(CodecError::Truncated));
            };
            DumpItem::FeedbackEventId {
                tenant: tenant_of(key, tenant)?,
                event_id: EventId::from_trusted(utf8(key, event_id)?.to_owned()),
                address: address_of(key, kind, address)?,
            }
        }
        KeyParts::TenantSettings { tenant } => DumpItem::TenantSettings {
            tenant: tenant_of(key, tenant)?,
            settings: codec::decode_tenant_settings(value).map_err(corrupt(key))?,
        },
        KeyParts::Service { tenant, id } => DumpItem::Service {
            tenant: tenant_of(key, tenant)?,
            service: codec::decode_service(
                ServiceId::from_trusted(utf8(key, id)?.to_owned()),
                value,
            )
            .map_err(corrupt(key))?,
        },
        KeyParts::Subscription {
            tenant,
            profile_id,
            service_id,
        } => DumpItem::Subscription {
            tenant: tenant_of(key, tenant)?,
            profile_id: ProfileId::from_trusted(utf8(key, profile_id)?.to_owned()),
            subscription: codec::decode_subscription(
                ServiceId::from_trusted(utf8(key, service_id)?.to_owned()),
                value,
            )
            .map_err(corrupt(key))?,
        },
        KeyParts::Token { tenant, hash } => {
            let record = codec::decode_token(value).map_err(corrupt(key))?;
            DumpItem::ConfirmationToken {
                tenant: tenant_of(key, tenant)?,
                hash: TokenHash(*hash),
                profile_id: record.profile_id,
                service_id: record.service_id,
                used_at: record.used_at,
            }
        }
        KeyParts::UsageOptOut { tenant, user_id } => DumpItem::UsageOptOut {
            tenant: tenant_of(key, tenant)?,
            opt_out: codec::decode_usage_opt_out(
                UserId::from_trusted(utf8(key, user_id)?.to_owned()),
                value,
            )
            .map_err(corrupt(key))?,
        },
    };
    Ok(Some(item))
}

impl Store {
    /// Takes every lock stripe, in order: while the guards live, no write is
    /// between its read and its `apply_batch`, and no new write starts.
    /// Reads are not affected.
    pub(crate) fn pause_writes(&self) -> Vec<MutexGuard<'_, ()>> {
        self.locks
            .iter()
            .map(|stripe| stripe.lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }

    fn raw_records<'a>(
        &'a self,
        tenant: Option<&Tenant>,
    ) -> impl Iterator<Item = sled::Result<(IVec, IVec)>> + 'a {
        let tenant = tenant.cloned();
        keys::DUMPED_TYPES
            .into_iter()
            .flat_map(move |t| self.db.scan_prefix(keys::type_prefix(t, tenant.as_ref())))
    }

    /// Every record of `tenant` (all tenants when `None`), decoded, in key
    /// order, read live. Consistent only when nothing writes meanwhile, as in
    /// the offline export (the process holds the data directory); a running
    /// server uses [`Store::snapshot`].
    pub fn dump<'a>(
        &'a self,
        tenant: Option<&Tenant>,
    ) -> impl Iterator<Item = Result<DumpItem>> + 'a {
        self.raw_records(tenant).filter_map(|item| match item {
            Ok((key, value)) => decode_item(&key, &value).transpose(),
            Err(e) => Some(Err(StoreError::from(e))),
        })
    }

    /// Copies the raw records of `tenant` (all tenants when `None`) into
    /// memory with writes paused: the state as of one moment. Blocking; the
    /// pause lasts as long as the copy (see [`Snapshot::paused`]).
    pub fn snapshot(&self, tenant: Option<&Tenant>) -> Result<Snapshot> {
        let guards = self.pause_writes();
        let started = Instant::now();
        let entries = self.raw_records(tenant).collect::<sled::Result<Vec<_>>>();
        let paused = started.elapsed();
        drop(guards);
        Ok(Snapshot {
            entries: entries?,
            paused,
        })
    }

    /// Records many manual status changes of one tenant's addresses, with
    /// far fewer `apply_batch` calls than one [`Store::record_address_event`]
    /// each: the changes are folded exactly as that method folds them (state,
    /// log entry, status index; a late event replays the log), and written in
    /// atomic batches of many addresses. An event that changes nothing is
    /// skipped: the address already has the status, or it is DENYLISTED and
    /// the event says QUARANTINED (a weaker status never replaces a stronger
    /// one). Returns, per event, whether it was recorded. Not durable until
    /// [`Store::sync`].
    pub fn record_manual_events(
        &self,
        tenant: &Tenant,
        events: &[ManualEvent],
        now: UnixMillis,
        rules: &QuarantineRules,
    ) -> Result<Vec<bool>> {
        let keys: Vec<Vec<u8>> = events
            .iter()
            .map(|e| keys::address(tenant, &e.address))
            .collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let _guards = self.lock(&key_refs)?;
        let mut recorded = Vec::with_capacity(events.len());
        let mut batch = sled::Batch::default();
        let mut in_batch: HashSet<&[u8]> = HashSet::with_capacity(events.len());
        for (event, key) in events.iter().zip(&keys) {
            // An address met twice: write what is pending, so that reads see it.
            if !in_batch.insert(key) {
                self.apply(std::mem::take(&mut batch))?;
                in_batch.clear();
                in_batch.insert(key);
            }
            recorded.push(self.fold_manual_event(tenant, event, key, now, rules, &mut batch)?);
        }
        self.apply(batch)?;
        Ok(recorded)
    }

    /// Adds one manual event to `batch` the way [`Store::record_address_event`]
    /// writes it; false when it changes nothing.
    fn fold_manual_event(
        &self,
        tenant: &Tenant,
        e: &ManualEvent,
        key: &[u8],
        now: UnixMillis,
        rules: &QuarantineRules,
        batch: &mut sled::Batch,
    ) -> Result<bool> {
        let kind = AddressEventKind::Manual(e.status);
        let old = self.read_address_state(key)?;
        let current = old.as_of(now, rules);
        let weaker =
            e.status == AddressStatus::Quarantined && current.status == AddressStatus::Denylisted;
        if weaker || kind.is_noop_for(&current) {
            return Ok(false);
        }
        let mut event = AddressEvent {
            sequence: old.log_seq + 1,
            kind,
            occurred_at: e.occurred_at,
            recorded_at: now,
            old_status: current.status,
            new_status: AddressStatus::Valid,
            context: e.context.clone(),
        };
        let mut new = if old.is_late(e.occurred_at) {
            let mut log = self.address_log_all(tenant, &e.address)?;
            log.push(event.clone());
            replay(&mut log, rules)
        } else {
            let mut new = old.clone();
            new.apply(&event.kind, e.occurred_at, &e.context, rules);
            new
        };
        new.log_seq = event.sequence;
        event.new_status = new.as_of(now, rules).status;
        if old.status != AddressStatus::Valid {
            batch.remove(keys::status_index(tenant, old.status, &e.address));
        }
        if new.status != AddressStatus::Valid {
            batch.insert(
                keys::status_index(tenant, new.status, &e.address),
                IVec::default(),
            );
        }
        batch.insert(
            keys::address_log(tenant, &e.address, event.sequence),
            codec::encode_address_event(&event),
        );
        batch.insert(key, codec::encode_address_state(&new));
        Ok(true)
    }

    /// Writes one dumped record as it was, in one atomic batch, replacing a
    /// record with the same key and keeping the derived indexes in step: a
    /// profile moves its address → profile entries, an address state its
    /// status index entry. Restoring the same item twice changes nothing the
    /// second time. Not durable until [`Store::sync`].
    pub fn restore(&self, item: &DumpItem) -> Result<()> {
        self.restore_all(std::slice::from_ref(item))
    }

    /// Restores many items as [`Store::restore`] does each, in far fewer
    /// atomic batches: an item is always wholly in one batch, and an item
    /// that replaces a record read earlier in the same batch (a profile or
    /// address state met twice) starts a new batch, so that it reads what the
    /// earlier one wrote.
    pub fn restore_all(&self, items: &[DumpItem]) -> Result<()> {
        let owners: Vec<Vec<u8>> = items.iter().map(owner_key).collect();
        let owner_refs: Vec<&[u8]> = owners.iter().map(Vec::as_slice).collect();
        let _guards = self.lock(&owner_refs)?;
        let mut batch = sled::Batch::default();
        let mut read_in_batch: HashSet<&[u8]> = HashSet::new();
        for (item, owner) in items.iter().zip(&owners) {
            let reads = matches!(
                item,
                DumpItem::Profile { .. } | DumpItem::AddressState { .. }
            );
            if reads && !read_in_batch.insert(owner) {
                self.apply(std::mem::take(&mut batch))?;
                read_in_batch.clear();
                read_in_batch.insert(owner);
            }
            self.restore_into(item, owner, &mut batch)?;
        }
        self.apply(batch)
    }

    fn restore_into(&self, item: &DumpItem, owner: &[u8], batch: &mut sled::Batch) -> Result<()> {
        match item {
            DumpItem::Profile { tenant, profile } => {
                if let Some(old) = self.profile(tenant, &profile.id)? {
                    for address in old.all_addresses() {
                        batch.remove(keys::address_user(tenant, address, &old.id));
                    }
                }
                for address in profile.all_addresses() {
                    batch.insert(
                        keys::address_user(tenant, address, &profile.id),
                        IVec::default(),
                    );
                }
                batch.insert(owner, codec::encode_profile(profile));
            }
            DumpItem::ConsentEntry {
                tenant,
                profile_id,
                entry,
            } => batch.insert(
                keys::consent_log(tenant, profile_id, entry.sequence),
                codec::encode_consent_entry(entry),
            ),
            DumpItem::AddressState {
                tenant,
                address,
                state,
            } => {
                if self.db.contains_key(owner)? {
                    let old = self.read_address_state(owner)?;
                    if old.status != AddressStatus::Valid {
                        batch.remove(keys::status_index(tenant, old.status, address));
                    }
                }
                if state.status != AddressStatus::Valid {
                    batch.insert(
                        keys::status_index(tenant, state.status, address),
                        IVec::default(),
                    );
                }
                batch.insert(owner, codec::encode_address_state(state));
            }
            DumpItem::AddressEvent {
                tenant,
                address,
                event,
            } => batch.insert(
                keys::address_log(tenant, address, event.sequence),
                codec::encode_address_event(event),
            ),
            DumpItem::FeedbackEventId {
                tenant,
                event_id: _,
                address,
            } => batch.insert(owner, keys::address(tenant, address)),
            DumpItem::TenantSettings { settings, .. } => {
                batch.insert(owner, codec::encode_tenant_settings(settings));
            }
            DumpItem::Service { tenant, service } => batch.insert(
                keys::service(tenant, &service.id),
                codec::encode_service(service),
            ),
            DumpItem::Subscription {
                tenant,
                profile_id,
                subscription,
            } => {
                // The subscriber index entry has the same (service, profile)
                // whatever the old status was: inserting it replaces it.
                batch.insert(
                    keys::subscription(tenant, profile_id, &subscription.service_id),
                    codec::encode_subscription(subscription),
                );
                batch.insert(
                    keys::subscriber(tenant, &subscription.service_id, profile_id),
                    vec![codec::subscription_status_byte(subscription.status)],
                );
            }
            DumpItem::ConfirmationToken {
                profile_id,
                service_id,
                used_at,
                ..
            } => batch.insert(
                owner,
                codec::encode_token(&codec::TokenRecord {
                    profile_id: profile_id.clone(),
                    service_id: service_id.clone(),
                    used_at: *used_at,
                }),
            ),
            DumpItem::UsageOptOut { opt_out, .. } => {
                batch.insert(owner, codec::encode_usage_opt_out(opt_out));
            }
        }
        Ok(())
    }
}

/// The key whose lock stripe guards an item's write: the profile for its
/// history, the address state for its log, the item's own key otherwise.
fn owner_key(item: &DumpItem) -> Vec<u8> {
    match item {
        DumpItem::Profile { tenant, profile } => keys::profile(tenant, &profile.id),
        DumpItem::ConsentEntry {
            tenant, profile_id, ..
        } => keys::profile(tenant, profile_id),
        DumpItem::AddressState {
            tenant, address, ..
        }
        | DumpItem::AddressEvent {
            tenant, address, ..
        } => keys::address(tenant, address),
        DumpItem::FeedbackEventId {
            tenant, event_id, ..
        } => keys::event_id(tenant, event_id.as_str()),
        DumpItem::TenantSettings { tenant, .. } => keys::tenant_settings(tenant),
        // Service creation takes one stripe for all of a tenant's services.
        DumpItem::Service { tenant, .. } => keys::services_prefix(tenant),
        DumpItem::Subscription {
            tenant, profile_id, ..
        } => keys::profile(tenant, profile_id),
        DumpItem::ConfirmationToken { tenant, hash, .. } => keys::token(tenant, hash),
        DumpItem::UsageOptOut { tenant, opt_out } => keys::usage_opt_out(tenant, &opt_out.user_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ProfileAddresses, Scope, Source};

    fn ctx() -> ChangeContext {
        ChangeContext::new(Source::Operator, "ops", "test").expect("valid")
    }

    #[test]
    fn bulk_manual_events_write_what_one_by_one_events_write() {
        let t = Tenant::parse("acme").expect("valid");
        let rules = QuarantineRules::default();
        let a = Address::email("a@x.io").expect("valid");
        let b = Address::email("b@x.io").expect("valid");
        let event = |address: &Address, status, occurred_at| ManualEvent {
            address: address.clone(),
            status,
            occurred_at,
            context: ctx(),
        };
        // In order, a repeat, a late event, a no-op, and a weaker status.
        let events = vec![
            event(&a, AddressStatus::Quarantined, 10),
            event(&b, AddressStatus::Denylisted, 10),
            event(&a, AddressStatus::Denylisted, 5),
            event(&b, AddressStatus::Denylisted, 20),
            event(&b, AddressStatus::Quarantined, 30),
        ];
        let bulk_dir = tempfile::tempdir().expect("tempdir");
        let bulk = Store::open(bulk_dir.path()).expect("open");
        let recorded = bulk
            .record_manual_events(&t, &events, 100, &rules)
            .expect("bulk");
        assert_eq!(recorded, [true, true, true, false, false]);

        let one_dir = tempfile::tempdir().expect("tempdir");
        let one = Store::open(one_dir.path()).expect("open");
        for (e, expected) in events.iter().zip(&recorded) {
            if !expected {
                continue;
            }
            one.record_address_event(
                &t,
                &e.address,
                AddressEventKind::Manual(e.status),
                e.occurred_at,
                &e.context,
                100,
                &rules,
            )
            .expect("one");
        }
        let dumped = |s: &Store| s.dump(None).collect::<Result<Vec<_>>>().expect("dump");
        assert_eq!(dumped(&bulk), dumped(&one));
        let (listed, _) = bulk.list_addresses(&t, None, None, 10).expect("list");
        assert_eq!(listed.len(), 2);
    }

    #[test]
    fn a_snapshot_restored_elsewhere_dumps_the_same_and_rebuilds_the_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let t = Tenant::parse("acme").expect("valid");
        let id = ProfileId::parse("p1").expect("valid");
        let email = Address::email("a@x.io").expect("valid");
        let addresses = ProfileAddresses {
            emails: vec![email.clone()],
            ..ProfileAddresses::default()
        };
        store.upsert_profile(&t, &id, addresses, 1).expect("upsert");
        store
            .set_consent(
                &t,
                &id,
                Scope::AllChannels,
                crate::engine::ConsentStatus::OptedOut,
                &ctx(),
                2,
            )
            .expect("consent");
        store
            .record_address_event(
                &t,
                &email,
                AddressEventKind::Manual(AddressStatus::Denylisted),
                3,
                &ctx(),
                3,
                &QuarantineRules::default(),
            )
            .expect("event");
        let snapshot = store.snapshot(None).expect("snapshot");
        assert_eq!(snapshot.len(), 4);
        let items: Vec<DumpItem> = snapshot.items().collect::<Result<_>>().expect("decode");

        let other = tempfile::tempdir().expect("tempdir");
        let restored = Store::open(other.path()).expect("open");
        // One by one, then all at once with every item twice (a repeat in one batch).
        for item in &items {
            restored.restore(item).expect("restore");
        }
        let twice: Vec<DumpItem> = items.iter().chain(&items).cloned().collect();
        restored.restore_all(&twice).expect("restore all");
        let again: Vec<DumpItem> = restored.dump(None).collect::<Result<_>>().expect("dump");
        assert_eq!(again, items);
        let (users, _) = restored.address_users(&t, &email, 10).expect("users");
        assert_eq!(users, vec![id]);
        let (listed, _) = restored
            .list_addresses(&t, Some(AddressStatus::Denylisted), None, 10)
            .expect("list");
        assert_eq!(listed.len(), 1);
    }
}
