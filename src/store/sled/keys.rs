//! The key layout of the one sled tree.
//!
//! Every key starts with a one-byte record type and the length-prefixed
//! tenant, so that everything of one tenant and type is one contiguous range:
//!
//! | type | key after `type, len(tenant), tenant`   | value                  |
//! |------|------------------------------------------|------------------------|
//! | `p`  | profile id                               | profile record         |
//! | `h`  | len16(profile id), id, seq (u64 BE)       | consent history entry  |
//! | `a`  | address kind, address                    | address state          |
//! | `u`  | address kind, len16(address), address, profile id | empty (address → profile index) |
//! | `g`  | address kind, len16(address), address, folded-at time (i64, sign-flipped BE), seq (u64 BE) | address log entry, in event-time order |
//! | `e`  | event id                                 | address key, recorded-at time (dedup of feedback) |
//! | `E`  | recorded-at time (sign-flipped BE), len(tenant), tenant, event id | empty (expiry of `e` markers) |
//! | `s`  | status, address kind, address            | empty (status index)   |
//! | `t`  | (nothing)                                | tenant settings        |
//! | `v`  | service id                               | service record         |
//! | `b`  | len16(profile id), id, service id         | subscription record    |
//! | `c`  | len16(service id), id, profile id         | status byte (subscriber index) |
//! | `k`  | SHA-256 of a confirmation token (32 bytes) | token record         |
//! | `x`  | user id                                  | usage opt-out record   |
//! | `o`  | address kind, address                    | address opt-outs, per channel |
//! | `r`  | (nothing)                                | the tenant's erasure secret |
//! | `q`  | keyed hash of an address (32 bytes)      | tombstone: the scope an erased person had opted out of |
//! | `y`  | erased-at time (sign-flipped BE), id (u64 BE) | erasure record (no personal data) |
//!
//! Outside the tenant layout, the watch log (see `store/watch.rs`):
//!
//! | key                     | value                                        |
//! |-------------------------|----------------------------------------------|
//! | `w`, position (u64 BE)  | recorded-at time (i64 BE), the feed changes of one transaction |
//! | `Wi`                    | the store's identity in watch tokens         |
//! | `Wc`                    | present while the store is closed cleanly    |
//!
//! And `M` alone: the store's format version (see `migrate.rs`). Format 2
//! stores kept the address log under `l`, in arrival order; `migrate.rs`
//! moves it to `g`.
//!
//! Sequence numbers are big-endian so that a range scan returns them in order
//! (and a reverse scan newest first); times are big-endian with the sign bit
//! flipped, so that negative times sort before positive ones.
//!
//! Invariant: only this module knows how keys are laid out.

use crate::engine::{
    Address, AddressHash, AddressStatus, EventKey, ProfileId, ServiceId, Tenant, TokenHash,
    UnixMillis, UserId,
};

use super::codec::{address_kind_byte, address_status_byte};

const PROFILE: u8 = b'p';
const CONSENT_LOG: u8 = b'h';
const ADDRESS: u8 = b'a';
const ADDRESS_USER: u8 = b'u';
/// The address log of format 2, in arrival order (migrated to `g`).
const LEGACY_ADDRESS_LOG: u8 = b'l';
const EVENT_LOG: u8 = b'g';
const EVENT_ID: u8 = b'e';
const EVENT_ID_EXPIRY: u8 = b'E';
/// Type bytes that whole-store scans start from.
pub(crate) const PROFILE_TYPE: u8 = PROFILE;
pub(crate) const ADDRESS_TYPE: u8 = ADDRESS;
pub(crate) const ADDRESS_CONSENT_TYPE: u8 = ADDRESS_CONSENT;
pub(crate) const STATUS_INDEX_TYPE: u8 = STATUS_INDEX;
pub(crate) const SUBSCRIPTION_TYPE: u8 = SUBSCRIPTION;
pub(crate) const TOKEN_TYPE: u8 = TOKEN;
pub(crate) const EVENT_ID_TYPE: u8 = EVENT_ID;
pub(crate) const TENANT_SETTINGS_TYPE: u8 = TENANT_SETTINGS;
pub(crate) const SERVICE_TYPE: u8 = SERVICE;
/// The type byte of the watch log.
pub(crate) const WATCH_LOG_TYPE: u8 = b'w';
/// The key of the store's identity in watch tokens.
pub(crate) const META_WATCH_ID: &[u8] = b"Wi";
/// The key that says the store was closed cleanly (written at close,
/// removed at open).
pub(crate) const META_CLEAN_CLOSE: &[u8] = b"Wc";

/// The key of the watch log's transaction at `position`.
pub(crate) fn watch_log(position: u64) -> [u8; 9] {
    let mut key = [WATCH_LOG_TYPE; 9];
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

/// The position of a watch log key.
pub(crate) fn watch_log_position(key: &[u8]) -> Option<u64> {
    match key.split_first() {
        Some((&WATCH_LOG_TYPE, position)) => Some(u64::from_be_bytes(position.try_into().ok()?)),
        _ => None,
    }
}

/// The key of the store's format version.
pub(crate) const META_FORMAT: &[u8] = b"M";
const STATUS_INDEX: u8 = b's';
const TENANT_SETTINGS: u8 = b't';
const SERVICE: u8 = b'v';
const SUBSCRIPTION: u8 = b'b';
const SUBSCRIBER: u8 = b'c';
const TOKEN: u8 = b'k';
const USAGE_OPT_OUT: u8 = b'x';
const ADDRESS_CONSENT: u8 = b'o';
const ERASURE_KEY: u8 = b'r';
const TOMBSTONE: u8 = b'q';
const ERASURE: u8 = b'y';

fn prefix(record_type: u8, tenant: &Tenant, extra: usize) -> Vec<u8> {
    let t = tenant.as_str().as_bytes();
    let mut key = Vec::with_capacity(2 + t.len() + extra);
    key.push(record_type);
    // Tenants are at most 64 bytes (engine::TENANT_LEN_MAX), so one byte holds the length.
    key.push(u8::try_from(t.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(t);
    key
}

fn push_len16(key: &mut Vec<u8>, bytes: &[u8]) {
    // Ids and addresses are at most 512 bytes (engine limits), well under u16::MAX.
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(bytes);
}

/// The key of a profile record.
pub(crate) fn profile(tenant: &Tenant, id: &ProfileId) -> Vec<u8> {
    let mut key = prefix(PROFILE, tenant, id.as_str().len());
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

/// The prefix of every consent history entry of a profile.
pub(crate) fn consent_log_prefix(tenant: &Tenant, id: &ProfileId) -> Vec<u8> {
    let mut key = prefix(CONSENT_LOG, tenant, 2 + id.as_str().len() + 8);
    push_len16(&mut key, id.as_str().as_bytes());
    key
}

/// The key of one consent history entry.
pub(crate) fn consent_log(tenant: &Tenant, id: &ProfileId, seq: u64) -> Vec<u8> {
    let mut key = consent_log_prefix(tenant, id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The key of an address's state.
pub(crate) fn address(tenant: &Tenant, address: &Address) -> Vec<u8> {
    let mut key = prefix(ADDRESS, tenant, 1 + address.as_str().len());
    key.push(address_kind_byte(address.kind()));
    key.extend_from_slice(address.as_str().as_bytes());
    key
}

fn address_scoped(record_type: u8, tenant: &Tenant, address: &Address, extra: usize) -> Vec<u8> {
    let mut key = prefix(record_type, tenant, 3 + address.as_str().len() + extra);
    key.push(address_kind_byte(address.kind()));
    push_len16(&mut key, address.as_str().as_bytes());
    key
}

/// The prefix of the index entries of the profiles that use an address.
pub(crate) fn address_users_prefix(tenant: &Tenant, address: &Address) -> Vec<u8> {
    address_scoped(ADDRESS_USER, tenant, address, 0)
}

/// The index entry saying that profile `id` uses `address`.
pub(crate) fn address_user(tenant: &Tenant, address: &Address, id: &ProfileId) -> Vec<u8> {
    let mut key = address_scoped(ADDRESS_USER, tenant, address, id.as_str().len());
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

/// The prefix of every `l` record (format 2's address log), for the migration.
pub(crate) fn legacy_address_log_prefix() -> Vec<u8> {
    vec![LEGACY_ADDRESS_LOG]
}

/// Takes apart a format-2 `l` key: the address's state key, its tenant and
/// the address.
pub(crate) fn parse_legacy_address_log(key: &[u8]) -> Option<(Vec<u8>, Tenant, Address)> {
    let (&record_type, rest) = key.split_first()?;
    if record_type != LEGACY_ADDRESS_LOG {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    let len = usize::from(len);
    let (tenant, rest) = (rest.get(..len)?, rest.get(len..)?);
    let (&kind, rest) = rest.split_first()?;
    let (text, seq) = take_len16(rest)?;
    if seq.len() != 8 {
        return None;
    }
    let tenant = Tenant::parse(std::str::from_utf8(tenant).ok()?).ok()?;
    let kind = super::codec::address_kind_from_byte(kind).ok()?;
    let address = Address::from_trusted(kind, std::str::from_utf8(text).ok()?.to_owned());
    Some((self::address(&tenant, &address), tenant, address))
}

/// Takes apart a status index key: tenant, status byte, kind byte, address.
pub(crate) fn parse_status_index(key: &[u8]) -> Option<(&[u8], u8, u8, &[u8])> {
    let (&record_type, rest) = key.split_first()?;
    if record_type != STATUS_INDEX {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    let len = usize::from(len);
    let (tenant, rest) = (rest.get(..len)?, rest.get(len..)?);
    match rest {
        [status, kind, address @ ..] => Some((tenant, *status, *kind, address)),
        _ => None,
    }
}

/// A time as key bytes that sort in time order.
fn time_bytes(at: UnixMillis) -> [u8; 8] {
    (u64::from_be_bytes(at.to_be_bytes()) ^ (1 << 63)).to_be_bytes()
}

/// The prefix of an address's log.
pub(crate) fn event_log_prefix(tenant: &Tenant, address: &Address) -> Vec<u8> {
    address_scoped(EVENT_LOG, tenant, address, 16)
}

/// The key of an address's log entry.
pub(crate) fn event_log(tenant: &Tenant, address: &Address, key: EventKey) -> Vec<u8> {
    let mut bytes = event_log_prefix(tenant, address);
    bytes.extend_from_slice(&time_bytes(key.at));
    bytes.extend_from_slice(&key.sequence.to_be_bytes());
    bytes
}

/// The prefix of the marker expiry index.
pub(crate) fn event_id_expiry_prefix() -> Vec<u8> {
    vec![EVENT_ID_EXPIRY]
}

/// The expiry index entry of a marker.
pub(crate) fn event_id_expiry(tenant: &Tenant, event_id: &str, recorded_at: UnixMillis) -> Vec<u8> {
    let t = tenant.as_str().as_bytes();
    let mut key = Vec::with_capacity(10 + t.len() + event_id.len());
    key.push(EVENT_ID_EXPIRY);
    key.extend_from_slice(&time_bytes(recorded_at));
    key.push(u8::try_from(t.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(t);
    key.extend_from_slice(event_id.as_bytes());
    key
}

/// The expiry index key for a time: every entry recorded before `at` sorts before it.
pub(crate) fn event_id_expiry_bound(at: UnixMillis) -> Vec<u8> {
    let mut key = vec![EVENT_ID_EXPIRY];
    key.extend_from_slice(&time_bytes(at));
    key
}

/// The marker key an expiry index entry points at.
pub(crate) fn event_id_of_expiry(key: &[u8]) -> Option<Vec<u8>> {
    let rest = key.get(9..)?;
    let (&len, rest) = rest.split_first()?;
    let len = usize::from(len);
    if rest.len() < len {
        return None;
    }
    let (tenant, event_id) = rest.split_at(len);
    let mut marker = vec![EVENT_ID, u8::try_from(len).ok()?];
    marker.extend_from_slice(tenant);
    marker.extend_from_slice(event_id);
    Some(marker)
}

/// The key that marks a feedback event id as recorded.
pub(crate) fn event_id(tenant: &Tenant, event_id: &str) -> Vec<u8> {
    let mut key = prefix(EVENT_ID, tenant, event_id.len());
    key.extend_from_slice(event_id.as_bytes());
    key
}

/// The prefix of the status index: the whole tenant, or one status.
pub(crate) fn status_index_prefix(tenant: &Tenant, status: Option<AddressStatus>) -> Vec<u8> {
    let mut key = prefix(STATUS_INDEX, tenant, 1);
    if let Some(status) = status {
        key.push(address_status_byte(status));
    }
    key
}

/// The status index entry of an address.
pub(crate) fn status_index(tenant: &Tenant, status: AddressStatus, address: &Address) -> Vec<u8> {
    let mut key = status_index_prefix(tenant, Some(status));
    key.push(address_kind_byte(address.kind()));
    key.extend_from_slice(address.as_str().as_bytes());
    key
}

/// The part of a status index key after the tenant: status byte, kind byte, address.
pub(crate) fn status_index_tail<'k>(tenant: &Tenant, key: &'k [u8]) -> Option<(u8, u8, &'k [u8])> {
    let rest = key.get(status_index_prefix(tenant, None).len()..)?;
    match rest {
        [status, kind, address @ ..] => Some((*status, *kind, address)),
        _ => None,
    }
}

/// The record types a logical export holds, in export order (settings first,
/// services before subscriptions). The `u`, `s` and `c` indexes are left
/// out: they are derived from profiles, address states and subscriptions.
pub(crate) const DUMPED_TYPES: [u8; 14] = [
    TENANT_SETTINGS,
    PROFILE,
    CONSENT_LOG,
    ADDRESS,
    EVENT_LOG,
    EVENT_ID,
    SERVICE,
    SUBSCRIPTION,
    TOKEN,
    USAGE_OPT_OUT,
    ADDRESS_CONSENT,
    ERASURE_KEY,
    TOMBSTONE,
    ERASURE,
];

/// The prefix of every record of one type: of one tenant, or of all tenants.
pub(crate) fn type_prefix(record_type: u8, tenant: Option<&Tenant>) -> Vec<u8> {
    match tenant {
        Some(tenant) => prefix(record_type, tenant, 0),
        None => vec![record_type],
    }
}

/// A key of a dumped record type, taken apart (byte slices borrow the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyParts<'k> {
    /// `p`: a profile record.
    Profile {
        /// The tenant's bytes.
        tenant: &'k [u8],
        /// The profile id's bytes.
        id: &'k [u8],
    },
    /// `h`: a consent history entry.
    ConsentLog {
        /// The tenant's bytes.
        tenant: &'k [u8],
        /// The profile id's bytes.
        id: &'k [u8],
    },
    /// `a`: an address state.
    Address {
        /// The tenant's bytes.
        tenant: &'k [u8],
        /// The address kind byte.
        kind: u8,
        /// The address's bytes.
        address: &'k [u8],
    },
    /// `g`: an address log entry.
    EventLog {
        /// The tenant's bytes.
        tenant: &'k [u8],
        /// The address kind byte.
        kind: u8,
        /// The address's bytes.
        address: &'k [u8],
    },
    /// `e`: a recorded feedback event id.
    EventId {
        /// The tenant's bytes.
        tenant: &'k [u8],
        /// The event id's bytes.
        event_id: &'k [u8],
    },
    /// `t`: a tenant's settings.
    TenantSettings {
        /// The tenant's bytes.
        tenant: &'k [u8],
    },
    /// `v`: a service.
    Service {
        /// The tenant's bytes.
        tenant: &'k [u8],
        /// The service id's bytes.
        id: &'k [u8],
    },
    /// `b`: a profile's subscription to a service.
    Subscription {
        /// The tenant's bytes.
        tenant: &'k [u8],
        /// The profile id's bytes.
        profile_id: &'k [u8],
        /// The service id's bytes.
        service_id: &'k [u8],
    },
    /// `k`: a confirmation token's record.
    Token {
        /// The tenant's bytes.
        tenant: &'k [u8],
        /// The token's SHA-256.
        hash: &'k [u8; 32],
    },
    /// `o`: an address's opt-outs.
    AddressConsent {
        /// The tenant's bytes.
        tenant: &'k [u8],
        /// The address kind byte.
        kind: u8,
        /// The address's bytes.
        address: &'k [u8],
    },
    /// `x`: a usage opt-out.
    UsageOptOut {
        /// The tenant's bytes.
        tenant: &'k [u8],
        /// The user id's bytes.
        user_id: &'k [u8],
    },
    /// `r`: a tenant's erasure secret.
    ErasureKey {
        /// The tenant's bytes.
        tenant: &'k [u8],
    },
    /// `q`: a tombstone.
    Tombstone {
        /// The tenant's bytes.
        tenant: &'k [u8],
        /// The keyed hash of the address.
        hash: &'k [u8; 32],
    },
    /// `y`: an erasure record.
    Erasure {
        /// The tenant's bytes.
        tenant: &'k [u8],
    },
}

fn take_len16(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Takes apart a key of one of the [`DUMPED_TYPES`]; `None` for a key of
/// another type or one that does not follow the layout.
pub(crate) fn parse(key: &[u8]) -> Option<KeyParts<'_>> {
    let (&record_type, rest) = key.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let len = usize::from(len);
    if rest.len() < len {
        return None;
    }
    let (tenant, rest) = rest.split_at(len);
    match record_type {
        PROFILE => Some(KeyParts::Profile { tenant, id: rest }),
        CONSENT_LOG => {
            let (id, seq) = take_len16(rest)?;
            (seq.len() == 8).then_some(KeyParts::ConsentLog { tenant, id })
        }
        ADDRESS => {
            let (&kind, address) = rest.split_first()?;
            Some(KeyParts::Address {
                tenant,
                kind,
                address,
            })
        }
        EVENT_LOG => {
            let (&kind, rest) = rest.split_first()?;
            let (address, key) = take_len16(rest)?;
            (key.len() == 16).then_some(KeyParts::EventLog {
                tenant,
                kind,
                address,
            })
        }
        EVENT_ID => Some(KeyParts::EventId {
            tenant,
            event_id: rest,
        }),
        TENANT_SETTINGS => rest
            .is_empty()
            .then_some(KeyParts::TenantSettings { tenant }),
        SERVICE => Some(KeyParts::Service { tenant, id: rest }),
        SUBSCRIPTION => {
            let (profile_id, service_id) = take_len16(rest)?;
            Some(KeyParts::Subscription {
                tenant,
                profile_id,
                service_id,
            })
        }
        TOKEN => Some(KeyParts::Token {
            tenant,
            hash: rest.try_into().ok()?,
        }),
        ADDRESS_CONSENT => {
            let (&kind, address) = rest.split_first()?;
            Some(KeyParts::AddressConsent {
                tenant,
                kind,
                address,
            })
        }
        USAGE_OPT_OUT => Some(KeyParts::UsageOptOut {
            tenant,
            user_id: rest,
        }),
        ERASURE_KEY => rest.is_empty().then_some(KeyParts::ErasureKey { tenant }),
        TOMBSTONE => Some(KeyParts::Tombstone {
            tenant,
            hash: rest.try_into().ok()?,
        }),
        ERASURE => (rest.len() == 16).then_some(KeyParts::Erasure { tenant }),
        _ => None,
    }
}

/// The key of a tenant's settings.
pub(crate) fn tenant_settings(tenant: &Tenant) -> Vec<u8> {
    prefix(TENANT_SETTINGS, tenant, 0)
}

/// The prefix of every service of a tenant.
pub(crate) fn services_prefix(tenant: &Tenant) -> Vec<u8> {
    prefix(SERVICE, tenant, 0)
}

/// The key of a service.
pub(crate) fn service(tenant: &Tenant, id: &ServiceId) -> Vec<u8> {
    let mut key = prefix(SERVICE, tenant, id.as_str().len());
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

/// The prefix of a profile's subscriptions.
pub(crate) fn subscriptions_prefix(tenant: &Tenant, profile: &ProfileId) -> Vec<u8> {
    let mut key = prefix(SUBSCRIPTION, tenant, 2 + profile.as_str().len());
    push_len16(&mut key, profile.as_str().as_bytes());
    key
}

/// The key of a profile's subscription to a service.
pub(crate) fn subscription(tenant: &Tenant, profile: &ProfileId, service: &ServiceId) -> Vec<u8> {
    let mut key = subscriptions_prefix(tenant, profile);
    key.extend_from_slice(service.as_str().as_bytes());
    key
}

/// The prefix of a service's subscriber index.
pub(crate) fn subscribers_prefix(tenant: &Tenant, service: &ServiceId) -> Vec<u8> {
    let mut key = prefix(SUBSCRIBER, tenant, 2 + service.as_str().len());
    push_len16(&mut key, service.as_str().as_bytes());
    key
}

/// The subscriber index entry of a profile.
pub(crate) fn subscriber(tenant: &Tenant, service: &ServiceId, profile: &ProfileId) -> Vec<u8> {
    let mut key = subscribers_prefix(tenant, service);
    key.extend_from_slice(profile.as_str().as_bytes());
    key
}

/// The key of a confirmation token's record.
pub(crate) fn token(tenant: &Tenant, hash: &TokenHash) -> Vec<u8> {
    let mut key = prefix(TOKEN, tenant, hash.0.len());
    key.extend_from_slice(&hash.0);
    key
}

/// The key of an address's opt-outs.
pub(crate) fn address_consent(tenant: &Tenant, address: &Address) -> Vec<u8> {
    let mut key = prefix(ADDRESS_CONSENT, tenant, 1 + address.as_str().len());
    key.push(address_kind_byte(address.kind()));
    key.extend_from_slice(address.as_str().as_bytes());
    key
}

/// The key of a tenant's erasure secret.
pub(crate) fn erasure_key(tenant: &Tenant) -> Vec<u8> {
    prefix(ERASURE_KEY, tenant, 0)
}

/// The key of a tombstone.
pub(crate) fn tombstone(tenant: &Tenant, hash: &AddressHash) -> Vec<u8> {
    let mut key = prefix(TOMBSTONE, tenant, hash.0.len());
    key.extend_from_slice(&hash.0);
    key
}

/// The key of an erasure record.
pub(crate) fn erasure(tenant: &Tenant, erased_at: UnixMillis, id: u64) -> Vec<u8> {
    let mut key = prefix(ERASURE, tenant, 16);
    key.extend_from_slice(&time_bytes(erased_at));
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The prefix of a tenant's confirmation tokens.
pub(crate) fn tokens_prefix(tenant: &Tenant) -> Vec<u8> {
    prefix(TOKEN, tenant, 0)
}

/// The prefix of a tenant's usage opt-outs.
pub(crate) fn usage_opt_outs_prefix(tenant: &Tenant) -> Vec<u8> {
    prefix(USAGE_OPT_OUT, tenant, 0)
}

/// The key of a user's usage opt-out.
pub(crate) fn usage_opt_out(tenant: &Tenant, user: &UserId) -> Vec<u8> {
    let mut key = prefix(USAGE_OPT_OUT, tenant, user.as_str().len());
    key.extend_from_slice(user.as_str().as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Tenant {
        Tenant::parse(name).expect("valid tenant")
    }

    #[test]
    fn tenants_never_share_a_range() {
        // "a" must not be a prefix of "ab"'s keys: the length byte separates them.
        let id = ProfileId::parse("x").expect("valid");
        assert!(!profile(&t("ab"), &id).starts_with(&profile(&t("a"), &id)[..3]));
    }

    #[test]
    fn history_keys_sort_by_sequence() {
        let id = ProfileId::parse("p").expect("valid");
        let keys: Vec<_> = [1u64, 255, 256, 70_000]
            .iter()
            .map(|s| consent_log(&t("a"), &id, *s))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn log_keys_sort_by_event_time_then_sequence() {
        let a = Address::email("a@b.io").expect("valid");
        let keys = [
            EventKey {
                at: i64::MIN,
                sequence: 9,
            },
            EventKey {
                at: -1,
                sequence: 1,
            },
            EventKey { at: 0, sequence: 0 },
            EventKey {
                at: 0,
                sequence: 256,
            },
            EventKey { at: 1, sequence: 2 },
            EventKey {
                at: i64::MAX,
                sequence: 0,
            },
        ];
        let bytes: Vec<_> = keys.iter().map(|k| event_log(&t("a"), &a, *k)).collect();
        let mut sorted = bytes.clone();
        sorted.sort();
        assert_eq!(bytes, sorted);
    }

    #[test]
    fn marker_expiry_entries_sort_by_time_and_point_at_their_marker() {
        let early = event_id_expiry(&t("zz"), "e1", -3);
        let late = event_id_expiry(&t("a"), "e2", 5);
        assert!(early < late);
        assert!(early < event_id_expiry_bound(-2) && event_id_expiry_bound(-2) < late);
        assert_eq!(event_id_of_expiry(&late), Some(event_id(&t("a"), "e2")));
    }

    #[test]
    fn an_address_is_not_a_prefix_of_a_longer_one() {
        let short = Address::email("a@b.io").expect("valid");
        let long = Address::email("a@b.io.uk").expect("valid");
        let pid = ProfileId::parse("p").expect("valid");
        assert!(
            !address_user(&t("a"), &long, &pid).starts_with(&address_users_prefix(&t("a"), &short))
        );
    }

    #[test]
    fn dumped_keys_parse_back() {
        let a = Address::email("a@b.io").expect("valid");
        let id = ProfileId::parse("p1").expect("valid");
        let tenant = t("acme");
        assert_eq!(
            parse(&profile(&tenant, &id)),
            Some(KeyParts::Profile {
                tenant: b"acme",
                id: b"p1"
            })
        );
        assert_eq!(
            parse(&consent_log(&tenant, &id, 7)),
            Some(KeyParts::ConsentLog {
                tenant: b"acme",
                id: b"p1"
            })
        );
        let kind = address_kind_byte(a.kind());
        assert_eq!(
            parse(&address(&tenant, &a)),
            Some(KeyParts::Address {
                tenant: b"acme",
                kind,
                address: b"a@b.io"
            })
        );
        assert_eq!(
            parse(&event_log(
                &tenant,
                &a,
                EventKey {
                    at: -5,
                    sequence: 3
                }
            )),
            Some(KeyParts::EventLog {
                tenant: b"acme",
                kind,
                address: b"a@b.io"
            })
        );
        assert_eq!(
            parse(&event_id(&tenant, "ev-1")),
            Some(KeyParts::EventId {
                tenant: b"acme",
                event_id: b"ev-1"
            })
        );
        assert_eq!(
            parse(&status_index(&tenant, AddressStatus::Quarantined, &a)),
            None
        );
        assert_eq!(
            parse(&address_consent(&tenant, &a)),
            Some(KeyParts::AddressConsent {
                tenant: b"acme",
                kind: address_kind_byte(a.kind()),
                address: a.as_str().as_bytes(),
            })
        );
        assert_eq!(parse(b"p\x09acme"), None);
        assert_eq!(
            parse(&tenant_settings(&tenant)),
            Some(KeyParts::TenantSettings { tenant: b"acme" })
        );
        let news = ServiceId::parse("news").expect("valid");
        assert_eq!(
            parse(&service(&tenant, &news)),
            Some(KeyParts::Service {
                tenant: b"acme",
                id: b"news"
            })
        );
        assert_eq!(
            parse(&subscription(&tenant, &id, &news)),
            Some(KeyParts::Subscription {
                tenant: b"acme",
                profile_id: b"p1",
                service_id: b"news"
            })
        );
        assert_eq!(parse(&subscriber(&tenant, &news, &id)), None);
        let hash = TokenHash([7; 32]);
        assert_eq!(
            parse(&token(&tenant, &hash)),
            Some(KeyParts::Token {
                tenant: b"acme",
                hash: &[7; 32]
            })
        );
        let user = UserId::parse("u1").expect("valid");
        assert_eq!(
            parse(&usage_opt_out(&tenant, &user)),
            Some(KeyParts::UsageOptOut {
                tenant: b"acme",
                user_id: b"u1"
            })
        );
        assert_eq!(
            parse(&erasure_key(&tenant)),
            Some(KeyParts::ErasureKey { tenant: b"acme" })
        );
        assert_eq!(
            parse(&tombstone(&tenant, &AddressHash([9; 32]))),
            Some(KeyParts::Tombstone {
                tenant: b"acme",
                hash: &[9; 32]
            })
        );
        assert_eq!(
            parse(&erasure(&tenant, -3, 8)),
            Some(KeyParts::Erasure { tenant: b"acme" })
        );
    }

    #[test]
    fn a_profile_s_subscriptions_are_not_a_prefix_of_another_s() {
        let news = ServiceId::parse("news").expect("valid");
        let p = ProfileId::parse("p").expect("valid");
        let p2 = ProfileId::parse("p2").expect("valid");
        assert!(subscription(&t("a"), &p, &news).starts_with(&subscriptions_prefix(&t("a"), &p)));
        assert!(!subscription(&t("a"), &p2, &news).starts_with(&subscriptions_prefix(&t("a"), &p)));
        let news2 = ServiceId::parse("news2").expect("valid");
        assert!(!subscriber(&t("a"), &news2, &p).starts_with(&subscribers_prefix(&t("a"), &news)));
    }

    #[test]
    fn status_index_tail_reads_back() {
        let a = Address::email("a@b.io").expect("valid");
        let key = status_index(&t("x"), AddressStatus::Quarantined, &a);
        let (status, kind, addr) = status_index_tail(&t("x"), &key).expect("parses");
        assert_eq!((status, kind, addr), (3, 1, &b"a@b.io"[..]));
    }
}
