//! Whole-store work: the decision index's start-up load, retention sweeps,
//! and the data tools' dump, snapshot and raw restore.
//!
//! A dump is every record of the [`keys::DUMPED_TYPES`] in key order, decoded
//! into a [`DumpItem`]. The derived indexes (`u`: address → profile, `s`:
//! status, `c`: service → subscribers, `E`: marker expiry) are not dumped:
//! [`restore_all`] rebuilds them from the records they derive from.
//!
//! Consistency of an online backup: see `backup.rs` (a view registered
//! while every lock stripe is held, which keeps the values as of that moment
//! of the records changed since).
//!
//! A new record type is one more [`DumpItem`] variant, one arm in
//! `decode_item`, in `restore_into` and in `owner_lock` (plus its key type
//! in `keys::DUMPED_TYPES` and `keys::parse`). A new derived index is
//! rebuilt in `restore_into`, never dumped.

use sled::IVec;

use super::{
    CodecError, Result, StoreError, address_of, codec, corrupt, keys, keys::KeyParts, migrate,
    tenant_of, utf8,
};
use crate::engine::Tenant;
use crate::{
    engine::{
        AddressHash, AddressStatus, EventId, ProfileId, ServiceId, TokenHash, UnixMillis, UserId,
    },
    store::{DumpItem, Expired, Loaded, Lock},
};

/// The value of an `e` marker: the address key, then the recorded-at time
/// (absent before format 3).
fn decode_marker(key: &[u8], value: &[u8]) -> Result<(Vec<u8>, UnixMillis)> {
    let Some(split) = value.len().checked_sub(8) else {
        return Err(corrupt(key)(CodecError::Truncated));
    };
    let (address, at) = value.split_at(split);
    if matches!(keys::parse(address), Some(KeyParts::Address { .. })) {
        let at = i64::from_be_bytes(
            at.try_into()
                .map_err(|_| corrupt(key)(CodecError::Truncated))?,
        );
        return Ok((address.to_vec(), at));
    }
    // A format-2 marker: the address key alone (the migration rewrites these).
    Ok((value.to_vec(), migrate::LEGACY_MARKER_TIME))
}

/// Whether `key` is of a dumped record type (one [`decode_item`] decodes).
pub(crate) fn is_dumped(key: &[u8]) -> bool {
    keys::parse(key).is_some()
}

/// Decodes one raw record; `None` for a key that is not of a dumped type.
pub(crate) fn decode_item(key: &[u8], value: &[u8]) -> Result<Option<DumpItem>> {
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
        KeyParts::EventLog {
            tenant,
            kind,
            address,
        } => DumpItem::AddressEvent {
            tenant: tenant_of(key, tenant)?,
            address: address_of(key, kind, address)?,
            event: codec::decode_address_event(value).map_err(corrupt(key))?,
        },
        KeyParts::EventId { tenant, event_id } => {
            let (address_key, recorded_at) = decode_marker(key, value)?;
            let Some(KeyParts::Address { kind, address, .. }) = keys::parse(&address_key) else {
                return Err(corrupt(key)(CodecError::Truncated));
            };
            DumpItem::FeedbackEventId {
                tenant: tenant_of(key, tenant)?,
                event_id: EventId::from_trusted(utf8(key, event_id)?.to_owned()),
                address: address_of(key, kind, address)?,
                recorded_at,
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
        KeyParts::Token { tenant, hash } => DumpItem::ConfirmationToken {
            tenant: tenant_of(key, tenant)?,
            hash: TokenHash(*hash),
            record: codec::decode_token(value, migrate::LEGACY_TOKEN_EXPIRY)
                .map_err(corrupt(key))?,
        },
        KeyParts::AddressConsent {
            tenant,
            kind,
            address,
        } => DumpItem::AddressConsent {
            tenant: tenant_of(key, tenant)?,
            address: address_of(key, kind, address)?,
            consent: codec::decode_address_consent(value).map_err(corrupt(key))?,
        },
        KeyParts::UsageOptOut { tenant, user_id } => DumpItem::UsageOptOut {
            tenant: tenant_of(key, tenant)?,
            opt_out: codec::decode_usage_opt_out(
                UserId::from_trusted(utf8(key, user_id)?.to_owned()),
                value,
            )
            .map_err(corrupt(key))?,
        },
        KeyParts::ErasureKey { tenant } => DumpItem::ErasureKey {
            tenant: tenant_of(key, tenant)?,
            key: codec::decode_erasure_key(value).map_err(corrupt(key))?,
        },
        KeyParts::Tombstone { tenant, hash } => DumpItem::Tombstone {
            tenant: tenant_of(key, tenant)?,
            hash: AddressHash(*hash),
            tombstone: codec::decode_tombstone(value).map_err(corrupt(key))?,
        },
        KeyParts::Erasure { tenant } => DumpItem::Erasure {
            tenant: tenant_of(key, tenant)?,
            erasure: codec::decode_erasure(value).map_err(corrupt(key))?,
        },
    };
    Ok(Some(item))
}

fn raw_records(
    db: sled::Db,
    tenant: Option<&Tenant>,
) -> impl Iterator<Item = sled::Result<(IVec, IVec)>> + Send + 'static {
    let tenant = tenant.cloned();
    keys::DUMPED_TYPES
        .into_iter()
        .flat_map(move |t| db.scan_prefix(keys::type_prefix(t, tenant.as_ref())))
}

/// Every record of `tenant` (all tenants when `None`), decoded, in key order, read live.
pub(crate) fn dump(
    db: sled::Db,
    tenant: Option<&Tenant>,
) -> impl Iterator<Item = Result<DumpItem>> + Send + 'static {
    raw_records(db, tenant).filter_map(|item| match item {
        Ok((key, value)) => decode_item(&key, &value).transpose(),
        Err(e) => Some(Err(StoreError::from(e))),
    })
}

/// Visits what the decision index is built from: settings, services,
/// profiles, the status index (no address state is decoded) and subscriptions.
pub(crate) fn load_decision_state(
    db: &sled::Db,
    visit: &mut (dyn FnMut(Loaded) + Send),
) -> Result<()> {
    for item in dump_types(db, &[keys::TENANT_SETTINGS_TYPE, keys::SERVICE_TYPE]) {
        match item? {
            DumpItem::TenantSettings { tenant, settings } => {
                visit(Loaded::TenantSettings(tenant, settings));
            }
            DumpItem::Service { tenant, service } => visit(Loaded::Service(tenant, service)),
            _ => {}
        }
    }
    for item in db.scan_prefix([keys::PROFILE_TYPE]) {
        let (key, value) = item?;
        if let Some(KeyParts::Profile { tenant, id }) = keys::parse(&key) {
            let profile =
                codec::decode_profile(ProfileId::from_trusted(utf8(&key, id)?.to_owned()), &value)
                    .map_err(corrupt(&key))?;
            visit(Loaded::Profile(tenant_of(&key, tenant)?, Box::new(profile)));
        }
    }
    for item in db.scan_prefix([keys::STATUS_INDEX_TYPE]).keys() {
        let key = item?;
        let (tenant, status, kind, address) =
            keys::parse_status_index(&key).ok_or_else(|| corrupt(&key)(CodecError::Truncated))?;
        let status: AddressStatus =
            codec::address_status_from_byte(status).map_err(corrupt(&key))?;
        visit(Loaded::Address(
            tenant_of(&key, tenant)?,
            address_of(&key, kind, address)?,
            status,
        ));
    }
    for item in db.scan_prefix([keys::ADDRESS_CONSENT_TYPE]) {
        let (key, value) = item?;
        if let Some(KeyParts::AddressConsent {
            tenant,
            kind,
            address,
        }) = keys::parse(&key)
        {
            let consent = codec::decode_address_consent(&value).map_err(corrupt(&key))?;
            if consent.mask() != 0 {
                visit(Loaded::AddressConsent(
                    tenant_of(&key, tenant)?,
                    address_of(&key, kind, address)?,
                    consent.mask(),
                ));
            }
        }
    }
    for item in db.scan_prefix([keys::SUBSCRIPTION_TYPE]) {
        let (key, value) = item?;
        if let Some(KeyParts::Subscription {
            tenant,
            profile_id,
            service_id,
        }) = keys::parse(&key)
        {
            let service = ServiceId::from_trusted(utf8(&key, service_id)?.to_owned());
            let sub = codec::decode_subscription(service.clone(), &value).map_err(corrupt(&key))?;
            visit(Loaded::Subscription(
                tenant_of(&key, tenant)?,
                ProfileId::from_trusted(utf8(&key, profile_id)?.to_owned()),
                service,
                sub.status,
            ));
        }
    }
    Ok(())
}

fn dump_types<'a>(
    db: &'a sled::Db,
    types: &'a [u8],
) -> impl Iterator<Item = Result<DumpItem>> + 'a {
    types
        .iter()
        .flat_map(move |t| db.scan_prefix([*t]))
        .filter_map(|item| match item {
            Ok((key, value)) => decode_item(&key, &value).transpose(),
            Err(e) => Some(Err(StoreError::from(e))),
        })
}

/// Finds expired markers (by their expiry index) and expired token records
/// (a scan: only live and recently used tokens exist), at most `limit` in
/// all: the keys to remove, in one atomic batch.
pub(crate) fn expired(
    db: &sled::Db,
    markers_before: UnixMillis,
    tokens_before: UnixMillis,
    limit: usize,
) -> Result<(Expired, Vec<IVec>)> {
    let mut batch = Vec::new();
    let mut expired = Expired::default();
    let mut budget = limit;
    let start = keys::event_id_expiry_prefix();
    let end = keys::event_id_expiry_bound(markers_before);
    for item in db.range(start..end).keys() {
        if budget == 0 {
            break;
        }
        let key = item?;
        if let Some(marker) = keys::event_id_of_expiry(&key) {
            batch.push(IVec::from(marker));
        }
        batch.push(key);
        expired.event_markers += 1;
        budget -= 1;
    }
    for item in db.scan_prefix([keys::TOKEN_TYPE]) {
        if budget == 0 {
            break;
        }
        let (key, value) = item?;
        let record =
            codec::decode_token(&value, migrate::LEGACY_TOKEN_EXPIRY).map_err(corrupt(&key))?;
        if record.expires_at < tokens_before {
            batch.push(key);
            expired.tokens += 1;
            budget -= 1;
        }
    }
    Ok((expired, batch))
}

/// Writes dumped items as they are, keeping the derived indexes in step: a
/// profile moves its address → profile entries, an address state its status
/// index entry, a marker its expiry entry. An item whose owner record was
/// written earlier in the same batch starts a new batch, so that its reads
/// see what the earlier one wrote. The caller holds the items' locks.
pub(crate) fn restore_all(db: &sled::Db, items: &[DumpItem]) -> Result<()> {
    let mut batch = sled::Batch::default();
    let mut read_in_batch: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    for item in items {
        let reads = match item {
            DumpItem::Profile { tenant, profile } => Some(keys::profile(tenant, &profile.id)),
            DumpItem::AddressState {
                tenant, address, ..
            } => Some(keys::address(tenant, address)),
            DumpItem::FeedbackEventId {
                tenant, event_id, ..
            } => Some(keys::event_id(tenant, event_id.as_str())),
            _ => None,
        };
        if let Some(owner) = reads
            && !read_in_batch.insert(owner.clone())
        {
            db.apply_batch(std::mem::take(&mut batch))?;
            read_in_batch.clear();
            read_in_batch.insert(owner);
        }
        restore_into(db, item, &mut batch)?;
    }
    db.apply_batch(batch)?;
    Ok(())
}

fn restore_into(db: &sled::Db, item: &DumpItem, batch: &mut sled::Batch) -> Result<()> {
    match item {
        DumpItem::Profile { tenant, profile } => {
            let key = keys::profile(tenant, &profile.id);
            if let Some(bytes) = db.get(&key)? {
                let old =
                    codec::decode_profile(profile.id.clone(), &bytes).map_err(corrupt(&key))?;
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
            batch.insert(key, codec::encode_profile(profile));
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
            let key = keys::address(tenant, address);
            if let Some(bytes) = db.get(&key)? {
                let old = codec::decode_address_status(&bytes).map_err(corrupt(&key))?;
                if old != AddressStatus::Valid {
                    batch.remove(keys::status_index(tenant, old, address));
                }
            }
            if state.status != AddressStatus::Valid {
                batch.insert(
                    keys::status_index(tenant, state.status, address),
                    IVec::default(),
                );
            }
            batch.insert(key, codec::encode_address_state(state));
        }
        DumpItem::AddressEvent {
            tenant,
            address,
            event,
        } => batch.insert(
            keys::event_log(tenant, address, event.key()),
            codec::encode_address_event(event),
        ),
        DumpItem::FeedbackEventId {
            tenant,
            event_id,
            address,
            recorded_at,
        } => {
            let key = keys::event_id(tenant, event_id.as_str());
            if let Some(bytes) = db.get(&key)? {
                let (_, old_at) = decode_marker(&key, &bytes)?;
                batch.remove(keys::event_id_expiry(tenant, event_id.as_str(), old_at));
            }
            let mut value = keys::address(tenant, address);
            value.extend_from_slice(&recorded_at.to_be_bytes());
            batch.insert(key, value);
            batch.insert(
                keys::event_id_expiry(tenant, event_id.as_str(), *recorded_at),
                IVec::default(),
            );
        }
        DumpItem::TenantSettings { tenant, settings } => {
            batch.insert(
                keys::tenant_settings(tenant),
                codec::encode_tenant_settings(settings),
            );
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
            tenant,
            hash,
            record,
        } => batch.insert(keys::token(tenant, hash), codec::encode_token(record)),
        DumpItem::UsageOptOut { tenant, opt_out } => batch.insert(
            keys::usage_opt_out(tenant, &opt_out.user_id),
            codec::encode_usage_opt_out(opt_out),
        ),
        DumpItem::AddressConsent {
            tenant,
            address,
            consent,
        } => batch.insert(
            keys::address_consent(tenant, address),
            codec::encode_address_consent(consent),
        ),
        DumpItem::ErasureKey { tenant, key } => {
            batch.insert(keys::erasure_key(tenant), codec::encode_erasure_key(key));
        }
        DumpItem::Tombstone {
            tenant,
            hash,
            tombstone,
        } => batch.insert(
            keys::tombstone(tenant, hash),
            codec::encode_tombstone(tombstone),
        ),
        DumpItem::Erasure { tenant, erasure } => batch.insert(
            keys::erasure(tenant, erasure.erased_at, erasure.id),
            codec::encode_erasure(erasure),
        ),
    }
    Ok(())
}

/// The lock that guards an item's record: the profile for its history and
/// subscriptions, the address for its log, the item's own otherwise.
pub(crate) fn owner_lock(item: &DumpItem) -> Lock {
    match item {
        DumpItem::Profile { tenant, profile } => Lock::Profile(tenant.clone(), profile.id.clone()),
        DumpItem::ConsentEntry {
            tenant, profile_id, ..
        }
        | DumpItem::Subscription {
            tenant, profile_id, ..
        } => Lock::Profile(tenant.clone(), profile_id.clone()),
        DumpItem::AddressState {
            tenant, address, ..
        }
        | DumpItem::AddressEvent {
            tenant, address, ..
        }
        | DumpItem::AddressConsent {
            tenant, address, ..
        } => Lock::Address(tenant.clone(), address.clone()),
        DumpItem::FeedbackEventId {
            tenant, event_id, ..
        } => Lock::FeedbackEvent(tenant.clone(), event_id.clone()),
        DumpItem::TenantSettings { tenant, .. } => Lock::TenantSettings(tenant.clone()),
        DumpItem::Service { tenant, .. } => Lock::Services(tenant.clone()),
        DumpItem::ConfirmationToken { tenant, hash, .. } => Lock::Token(tenant.clone(), *hash),
        DumpItem::UsageOptOut { tenant, opt_out } => {
            Lock::UsageUser(tenant.clone(), opt_out.user_id.clone())
        }
        DumpItem::ErasureKey { tenant, .. }
        | DumpItem::Tombstone { tenant, .. }
        | DumpItem::Erasure { tenant, .. } => Lock::ErasureKey(tenant.clone()),
    }
}
