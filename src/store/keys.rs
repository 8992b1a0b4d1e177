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
//! | `l`  | address kind, len16(address), address, seq (u64 BE) | address log entry |
//! | `e`  | event id                                 | address key (dedup of feedback) |
//! | `s`  | status, address kind, address            | empty (status index)   |
//!
//! Sequence numbers are big-endian so that a range scan returns them in order
//! (and a reverse scan newest first).
//!
//! Invariant: only this module knows how keys are laid out.

use crate::engine::{Address, AddressStatus, ProfileId, Tenant};

use super::codec::{address_kind_byte, address_status_byte};

const PROFILE: u8 = b'p';
const CONSENT_LOG: u8 = b'h';
const ADDRESS: u8 = b'a';
const ADDRESS_USER: u8 = b'u';
const ADDRESS_LOG: u8 = b'l';
const EVENT_ID: u8 = b'e';
const STATUS_INDEX: u8 = b's';

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

/// The prefix of an address's log.
pub(crate) fn address_log_prefix(tenant: &Tenant, address: &Address) -> Vec<u8> {
    address_scoped(ADDRESS_LOG, tenant, address, 8)
}

/// The key of one entry of an address's log.
pub(crate) fn address_log(tenant: &Tenant, address: &Address, seq: u64) -> Vec<u8> {
    let mut key = address_log_prefix(tenant, address);
    key.extend_from_slice(&seq.to_be_bytes());
    key
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
    fn an_address_is_not_a_prefix_of_a_longer_one() {
        let short = Address::email("a@b.io").expect("valid");
        let long = Address::email("a@b.io.uk").expect("valid");
        let pid = ProfileId::parse("p").expect("valid");
        assert!(
            !address_user(&t("a"), &long, &pid).starts_with(&address_users_prefix(&t("a"), &short))
        );
    }

    #[test]
    fn status_index_tail_reads_back() {
        let a = Address::email("a@b.io").expect("valid");
        let key = status_index(&t("x"), AddressStatus::Quarantined, &a);
        let (status, kind, addr) = status_index_tail(&t("x"), &key).expect("parses");
        assert_eq!((status, kind, addr), (3, 1, &b"a@b.io"[..]));
    }
}
