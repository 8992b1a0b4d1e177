//! The statements of the PostgreSQL store, and the conversions between
//! rows and domain values. Values are the shared record codec's bytes
//! (`store/codec.rs`); only this module knows the SQL.

use tokio_postgres::{Row, types::ToSql};

use crate::engine::{
    Address, AddressConsent, AddressEvent, AddressHash, AddressKind, AddressState, AddressStatus,
    ConsentHistoryEntry, Erasure, ErasureKey, EventId, Profile, ProfileId, Service, ServiceId,
    Subscription, Tenant, TenantSettings, TokenHash, TokenRecord, Tombstone, UnixMillis,
    UsageOptOut, UserId,
};
use crate::store::{Change, DumpItem, Result, StoreError, codec};

/// A parameter of a staged statement.
pub(super) type Param = Box<dyn ToSql + Sync + Send>;

/// One staged write: a statement and its parameters.
pub(super) struct Op {
    /// The statement.
    pub(super) sql: &'static str,
    /// Its parameters.
    pub(super) params: Vec<Param>,
}

impl Op {
    fn new(sql: &'static str, params: Vec<Param>) -> Self {
        Self { sql, params }
    }

    /// The parameters as tokio-postgres takes them.
    pub(super) fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

fn t(tenant: &Tenant) -> Param {
    Box::new(tenant.as_str().to_owned())
}

fn b(text: &str) -> Param {
    Box::new(text.as_bytes().to_vec())
}

/// The column value of an address kind.
pub(super) fn kind(kind: AddressKind) -> i16 {
    i16::from(codec::address_kind_byte(kind))
}

/// The column value of an address status.
pub(super) fn status(status: AddressStatus) -> i16 {
    i16::from(codec::address_status_byte(status))
}

/// A sequence or count as PostgreSQL's `bigint`.
pub(super) fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// ---- writes -----------------------------------------------------------------

/// Writes a profile and moves the address → profile index to its addresses.
pub(super) fn put_profile(tenant: &Tenant, profile: &Profile) -> Op {
    let (kinds, addresses): (Vec<i16>, Vec<Vec<u8>>) = profile
        .all_addresses()
        .map(|a| (kind(a.kind()), a.as_str().as_bytes().to_vec()))
        .unzip();
    Op::new(
        "WITH p AS (
             INSERT INTO consentd_profiles (tenant, profile_id, value) VALUES ($1, $2, $3)
             ON CONFLICT (tenant, profile_id) DO UPDATE SET value = EXCLUDED.value
         ), gone AS (
             DELETE FROM consentd_address_users
             WHERE tenant = $1 AND profile_id = $2
               AND (kind, address) NOT IN (SELECT * FROM unnest($4::smallint[], $5::bytea[]))
         )
         INSERT INTO consentd_address_users (tenant, kind, address, profile_id)
         SELECT $1, k, a, $2 FROM unnest($4::smallint[], $5::bytea[]) AS u (k, a)
         ON CONFLICT DO NOTHING",
        vec![
            t(tenant),
            b(profile.id.as_str()),
            Box::new(codec::encode_profile(profile)),
            Box::new(kinds),
            Box::new(addresses),
        ],
    )
}

/// Writes a history entry.
pub(super) fn put_history(tenant: &Tenant, id: &ProfileId, entry: &ConsentHistoryEntry) -> Op {
    Op::new(
        "INSERT INTO consentd_history (tenant, profile_id, seq, value) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant, profile_id, seq) DO UPDATE SET value = EXCLUDED.value",
        vec![
            t(tenant),
            b(id.as_str()),
            Box::new(big(entry.sequence)),
            Box::new(codec::encode_consent_entry(entry)),
        ],
    )
}

/// Writes an address's state.
pub(super) fn put_address_state(tenant: &Tenant, address: &Address, state: &AddressState) -> Op {
    Op::new(
        "INSERT INTO consentd_addresses (tenant, kind, address, status, value)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant, kind, address)
         DO UPDATE SET status = EXCLUDED.status, value = EXCLUDED.value",
        vec![
            t(tenant),
            Box::new(kind(address.kind())),
            b(address.as_str()),
            Box::new(status(state.status)),
            Box::new(codec::encode_address_state(state)),
        ],
    )
}

/// Writes an address log entry at its key.
pub(super) fn put_address_event(tenant: &Tenant, address: &Address, event: &AddressEvent) -> Op {
    let key = event.key();
    Op::new(
        "INSERT INTO consentd_address_events (tenant, kind, address, event_time, seq, value)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant, kind, address, event_time, seq) DO UPDATE SET value = EXCLUDED.value",
        vec![
            t(tenant),
            Box::new(kind(address.kind())),
            b(address.as_str()),
            Box::new(key.at),
            Box::new(big(key.sequence)),
            Box::new(codec::encode_address_event(event)),
        ],
    )
}

/// Deletes an address's log entries before a key.
pub(super) fn delete_address_events(
    tenant: &Tenant,
    address: &Address,
    before: crate::engine::EventKey,
) -> Op {
    Op::new(
        "DELETE FROM consentd_address_events
         WHERE tenant = $1 AND kind = $2 AND address = $3 AND (event_time, seq) < ($4, $5)",
        vec![
            t(tenant),
            Box::new(kind(address.kind())),
            b(address.as_str()),
            Box::new(before.at),
            Box::new(big(before.sequence)),
        ],
    )
}

/// Marks a feedback event id as recorded.
pub(super) fn put_marker(
    tenant: &Tenant,
    id: &EventId,
    address: &Address,
    recorded_at: UnixMillis,
) -> Op {
    Op::new(
        "INSERT INTO consentd_event_markers (tenant, event_id, kind, address, recorded_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant, event_id) DO UPDATE
         SET kind = EXCLUDED.kind, address = EXCLUDED.address, recorded_at = EXCLUDED.recorded_at",
        vec![
            t(tenant),
            b(id.as_str()),
            Box::new(kind(address.kind())),
            b(address.as_str()),
            Box::new(recorded_at),
        ],
    )
}

/// Writes a subscription.
pub(super) fn put_subscription(tenant: &Tenant, profile: &ProfileId, sub: &Subscription) -> Op {
    Op::new(
        "INSERT INTO consentd_subscriptions (tenant, profile_id, service_id, status, value)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant, profile_id, service_id)
         DO UPDATE SET status = EXCLUDED.status, value = EXCLUDED.value",
        vec![
            t(tenant),
            b(profile.as_str()),
            b(sub.service_id.as_str()),
            Box::new(i16::from(codec::subscription_status_byte(sub.status))),
            Box::new(codec::encode_subscription(sub)),
        ],
    )
}

/// Writes a token's record.
pub(super) fn put_token(tenant: &Tenant, hash: &TokenHash, record: &TokenRecord) -> Op {
    Op::new(
        "INSERT INTO consentd_tokens (tenant, hash, expires_at, value) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant, hash)
         DO UPDATE SET expires_at = EXCLUDED.expires_at, value = EXCLUDED.value",
        vec![
            t(tenant),
            Box::new(hash.0.to_vec()),
            Box::new(record.expires_at),
            Box::new(codec::encode_token(record)),
        ],
    )
}

/// Deletes a token's record.
pub(super) fn delete_token(tenant: &Tenant, hash: &TokenHash) -> Op {
    Op::new(
        "DELETE FROM consentd_tokens WHERE tenant = $1 AND hash = $2",
        vec![t(tenant), Box::new(hash.0.to_vec())],
    )
}

/// Writes a tenant's settings.
pub(super) fn put_settings(tenant: &Tenant, settings: &TenantSettings) -> Op {
    Op::new(
        "INSERT INTO consentd_tenant_settings (tenant, value) VALUES ($1, $2)
         ON CONFLICT (tenant) DO UPDATE SET value = EXCLUDED.value",
        vec![t(tenant), Box::new(codec::encode_tenant_settings(settings))],
    )
}

/// Writes a service.
pub(super) fn put_service(tenant: &Tenant, service: &Service) -> Op {
    Op::new(
        "INSERT INTO consentd_services (tenant, service_id, value) VALUES ($1, $2, $3)
         ON CONFLICT (tenant, service_id) DO UPDATE SET value = EXCLUDED.value",
        vec![
            t(tenant),
            b(service.id.as_str()),
            Box::new(codec::encode_service(service)),
        ],
    )
}

/// Writes a usage opt-out.
pub(super) fn put_usage(tenant: &Tenant, opt_out: &UsageOptOut) -> Op {
    Op::new(
        "INSERT INTO consentd_usage_opt_outs (tenant, user_id, value) VALUES ($1, $2, $3)
         ON CONFLICT (tenant, user_id) DO UPDATE SET value = EXCLUDED.value",
        vec![
            t(tenant),
            b(opt_out.user_id.as_str()),
            Box::new(codec::encode_usage_opt_out(opt_out)),
        ],
    )
}

/// Deletes a usage opt-out.
pub(super) fn delete_usage(tenant: &Tenant, user: &UserId) -> Op {
    Op::new(
        "DELETE FROM consentd_usage_opt_outs WHERE tenant = $1 AND user_id = $2",
        vec![t(tenant), b(user.as_str())],
    )
}

/// Writes an address's opt-outs.
pub(super) fn put_address_consent(
    tenant: &Tenant,
    address: &Address,
    consent: &AddressConsent,
) -> Op {
    Op::new(
        "INSERT INTO consentd_address_consent (tenant, kind, address, value) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant, kind, address) DO UPDATE SET value = EXCLUDED.value",
        vec![
            t(tenant),
            Box::new(kind(address.kind())),
            b(address.as_str()),
            Box::new(codec::encode_address_consent(consent)),
        ],
    )
}

/// Writes a tenant's erasure secret.
pub(super) fn put_erasure_key(tenant: &Tenant, key: &ErasureKey) -> Op {
    Op::new(
        "INSERT INTO consentd_erasure_keys (tenant, value) VALUES ($1, $2)
         ON CONFLICT (tenant) DO UPDATE SET value = EXCLUDED.value",
        vec![t(tenant), Box::new(codec::encode_erasure_key(key))],
    )
}

/// Writes a tombstone.
pub(super) fn put_tombstone(tenant: &Tenant, hash: &AddressHash, tombstone: &Tombstone) -> Op {
    Op::new(
        "INSERT INTO consentd_tombstones (tenant, hash, value) VALUES ($1, $2, $3)
         ON CONFLICT (tenant, hash) DO UPDATE SET value = EXCLUDED.value",
        vec![
            t(tenant),
            Box::new(hash.0.to_vec()),
            Box::new(codec::encode_tombstone(tombstone)),
        ],
    )
}

/// Writes an erasure record.
pub(super) fn put_erasure(tenant: &Tenant, erasure: &Erasure) -> Op {
    Op::new(
        "INSERT INTO consentd_erasures (tenant, erased_at, id, value) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant, erased_at, id) DO UPDATE SET value = EXCLUDED.value",
        vec![
            t(tenant),
            Box::new(erasure.erased_at),
            Box::new(i64::from_be_bytes(erasure.id.to_be_bytes())),
            Box::new(codec::encode_erasure(erasure)),
        ],
    )
}

/// Deletes a profile and everything of it (history, subscriptions, address
/// → profile index entries, the tokens named in `tokens`).
pub(super) fn erase_profile(tenant: &Tenant, id: &ProfileId, tokens: Vec<Vec<u8>>) -> Op {
    Op::new(
        "WITH h AS (
             DELETE FROM consentd_history WHERE tenant = $1 AND profile_id = $2
         ), s AS (
             DELETE FROM consentd_subscriptions WHERE tenant = $1 AND profile_id = $2
         ), u AS (
             DELETE FROM consentd_address_users WHERE tenant = $1 AND profile_id = $2
         ), k AS (
             DELETE FROM consentd_tokens WHERE tenant = $1 AND hash = ANY($3::bytea[])
         )
         DELETE FROM consentd_profiles WHERE tenant = $1 AND profile_id = $2",
        vec![t(tenant), b(id.as_str()), Box::new(tokens)],
    )
}

/// Appends a committed transaction's feed entry (none without changes).
pub(super) fn put_changes(changes: &[Change]) -> Option<Op> {
    if changes.is_empty() {
        return None;
    }
    let mut tenants: Vec<String> = changes
        .iter()
        .filter_map(|c| c.tenant().map(|t| t.as_str().to_owned()))
        .collect();
    tenants.sort_unstable();
    tenants.dedup();
    Some(Op::new(
        "INSERT INTO consentd_changes (recorded_at, tenants, payload)
         VALUES ((extract(epoch FROM clock_timestamp()) * 1000)::bigint, $1, $2)",
        vec![Box::new(tenants), Box::new(codec::encode_changes(changes))],
    ))
}

/// The statement that restores one dumped record, as it was dumped.
pub(super) fn restore(item: &DumpItem) -> Op {
    match item {
        DumpItem::Profile { tenant, profile } => put_profile(tenant, profile),
        DumpItem::ConsentEntry {
            tenant,
            profile_id,
            entry,
        } => put_history(tenant, profile_id, entry),
        DumpItem::AddressState {
            tenant,
            address,
            state,
        } => put_address_state(tenant, address, state),
        DumpItem::AddressEvent {
            tenant,
            address,
            event,
        } => put_address_event(tenant, address, event),
        DumpItem::FeedbackEventId {
            tenant,
            event_id,
            address,
            recorded_at,
        } => put_marker(tenant, event_id, address, *recorded_at),
        DumpItem::TenantSettings { tenant, settings } => put_settings(tenant, settings),
        DumpItem::Service { tenant, service } => put_service(tenant, service),
        DumpItem::Subscription {
            tenant,
            profile_id,
            subscription,
        } => put_subscription(tenant, profile_id, subscription),
        DumpItem::ConfirmationToken {
            tenant,
            hash,
            record,
        } => put_token(tenant, hash, record),
        DumpItem::UsageOptOut { tenant, opt_out } => put_usage(tenant, opt_out),
        DumpItem::AddressConsent {
            tenant,
            address,
            consent,
        } => put_address_consent(tenant, address, consent),
        DumpItem::ErasureKey { tenant, key } => put_erasure_key(tenant, key),
        DumpItem::Tombstone {
            tenant,
            hash,
            tombstone,
        } => put_tombstone(tenant, hash, tombstone),
        DumpItem::Erasure { tenant, erasure } => put_erasure(tenant, erasure),
    }
}

// ---- reads ------------------------------------------------------------------

/// A stored record that cannot be read back.
pub(super) fn corrupt(what: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: what.to_owned(),
        reason: reason.to_string(),
    }
}

/// The text of a bytea id column.
pub(super) fn text(row: &Row, i: usize) -> Result<String> {
    let bytes: Vec<u8> = row.try_get(i).map_err(|e| corrupt("row", e))?;
    String::from_utf8(bytes).map_err(|_| corrupt("row", "an id is not UTF-8"))
}

/// A bytea column.
pub(super) fn bytes(row: &Row, i: usize) -> Result<Vec<u8>> {
    row.try_get(i).map_err(|e| corrupt("row", e))
}

/// The tenant column.
pub(super) fn tenant(row: &Row, i: usize) -> Result<Tenant> {
    let name: String = row.try_get(i).map_err(|e| corrupt("row", e))?;
    Tenant::parse(&name).map_err(|e| corrupt("tenant", e.0))
}

/// An address from its kind and text columns.
pub(super) fn address(row: &Row, kind_col: usize, text_col: usize) -> Result<Address> {
    let kind: i16 = row.try_get(kind_col).map_err(|e| corrupt("row", e))?;
    let kind = u8::try_from(kind)
        .ok()
        .and_then(|k| codec::address_kind_from_byte(k).ok())
        .ok_or_else(|| corrupt("address", format!("unknown address kind {kind}")))?;
    Ok(Address::from_trusted(kind, text(row, text_col)?))
}

/// Decodes a value with the record codec.
pub(super) fn decode<T>(
    what: &str,
    bytes: &[u8],
    decode: impl FnOnce(&[u8]) -> std::result::Result<T, codec::CodecError>,
) -> Result<T> {
    decode(bytes).map_err(|e| corrupt(what, e))
}

/// A profile from `tenant, profile_id, value` columns at `at`.
pub(super) fn profile(row: &Row, at: usize) -> Result<Profile> {
    let id = ProfileId::from_trusted(text(row, at)?);
    decode("profile", &bytes(row, at + 1)?, |v| {
        codec::decode_profile(id, v)
    })
}

/// A service from `service_id, value` columns at `at`.
pub(super) fn service(row: &Row, at: usize) -> Result<Service> {
    let id = ServiceId::from_trusted(text(row, at)?);
    decode("service", &bytes(row, at + 1)?, |v| {
        codec::decode_service(id, v)
    })
}

/// A subscription from `service_id, value` columns at `at`.
pub(super) fn subscription(row: &Row, at: usize) -> Result<Subscription> {
    let id = ServiceId::from_trusted(text(row, at)?);
    decode("subscription", &bytes(row, at + 1)?, |v| {
        codec::decode_subscription(id, v)
    })
}

/// A usage opt-out from `user_id, value` columns at `at`.
pub(super) fn usage(row: &Row, at: usize) -> Result<UsageOptOut> {
    let id = UserId::from_trusted(text(row, at)?);
    decode("usage opt-out", &bytes(row, at + 1)?, |v| {
        codec::decode_usage_opt_out(id, v)
    })
}

/// A token record from its value.
pub(super) fn token(value: &[u8]) -> Result<TokenRecord> {
    // Records written by this store always carry their expiry.
    decode("token", value, |v| codec::decode_token(v, UnixMillis::MAX))
}

/// A token hash column.
pub(super) fn token_hash(row: &Row, i: usize) -> Result<TokenHash> {
    let bytes = bytes(row, i)?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map(TokenHash)
        .map_err(|_| corrupt("token", "a token hash is not 32 bytes"))
}

/// A 32-byte hash column (a tombstone's).
pub(super) fn hash32(row: &Row, i: usize) -> Result<[u8; 32]> {
    let bytes = bytes(row, i)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| corrupt("hash", "a hash is not 32 bytes"))
}
