//! AIP-158 page tokens: opaque to clients, bound to the query that made them.
//!
//! A token is the hex form of `kind, hash(query), cursor`. The hash (FNV-1a,
//! stable across builds) makes a token from another query (another tenant,
//! profile or filter) an `INVALID_ARGUMENT` instead of a wrong page.

use crate::engine::{EventKey, Invalid};

/// Default page size of every listing.
pub(crate) const PAGE_SIZE_DEFAULT: usize = 100;
/// Largest page size of every listing; larger requests are clamped.
pub(crate) const PAGE_SIZE_MAX: usize = 1000;
/// Longest page token accepted, in characters.
const PAGE_TOKEN_LEN_MAX: usize = 2048;

/// What a token pages through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum TokenKind {
    /// A profile's consent history.
    ConsentHistory = 1,
    /// An address's history.
    AddressHistory = 2,
    /// The quarantined-address listing.
    Addresses = 3,
    /// A tenant's services.
    Services = 4,
    /// A service's subscribers.
    Subscribers = 5,
    /// The users opted out of usage tracking.
    UsageOptOuts = 6,
}

fn fnv1a(parts: &[&[u8]]) -> [u8; 4] {
    let mut hash: u32 = 0x811c_9dc5;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash.to_be_bytes()
}

/// Makes a token for `cursor` in the query described by `query`.
pub(crate) fn encode(kind: TokenKind, query: &[&[u8]], cursor: &[u8]) -> String {
    let mut bytes = vec![kind as u8];
    bytes.extend_from_slice(&fnv1a(query));
    bytes.extend_from_slice(cursor);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a token back: `None` for the empty (first-page) token.
pub(crate) fn decode(
    kind: TokenKind,
    query: &[&[u8]],
    token: &str,
) -> Result<Option<Vec<u8>>, Invalid> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        Invalid("is not a page token of this query; pass next_page_token unchanged, with the same request fields".into())
    };
    if token.len() > PAGE_TOKEN_LEN_MAX || !token.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    match bytes.split_first() {
        Some((&k, rest)) if k == kind as u8 && rest.len() >= 4 && rest[..4] == fnv1a(query) => {
            Ok(Some(rest[4..].to_vec()))
        }
        _ => Err(invalid()),
    }
}

/// A token for a sequence-number cursor.
pub(crate) fn encode_seq(kind: TokenKind, query: &[&[u8]], seq: u64) -> String {
    encode(kind, query, &seq.to_be_bytes())
}

/// Reads a sequence-number cursor.
pub(crate) fn decode_seq(
    kind: TokenKind,
    query: &[&[u8]],
    token: &str,
) -> Result<Option<u64>, Invalid> {
    match decode(kind, query, token)? {
        None => Ok(None),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(|b| Some(u64::from_be_bytes(b)))
            .map_err(|_| Invalid("is not a valid page token".into())),
    }
}

/// A token for an address-history cursor (event time, then sequence).
pub(crate) fn encode_event_key(kind: TokenKind, query: &[&[u8]], key: EventKey) -> String {
    let mut cursor = key.at.to_be_bytes().to_vec();
    cursor.extend_from_slice(&key.sequence.to_be_bytes());
    encode(kind, query, &cursor)
}

/// Reads an address-history cursor.
pub(crate) fn decode_event_key(
    kind: TokenKind,
    query: &[&[u8]],
    token: &str,
) -> Result<Option<EventKey>, Invalid> {
    match decode(kind, query, token)? {
        None => Ok(None),
        Some(bytes) => match <[u8; 16]>::try_from(bytes.as_slice()) {
            Ok(b) => {
                let (at, sequence) = b.split_at(8);
                Ok(Some(EventKey {
                    at: i64::from_be_bytes(at.try_into().unwrap_or_default()),
                    sequence: u64::from_be_bytes(sequence.try_into().unwrap_or_default()),
                }))
            }
            Err(_) => Err(Invalid("is not a valid page token".into())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_query() {
        let token = encode_seq(TokenKind::ConsentHistory, &[b"t", b"p1"], 42);
        assert_eq!(
            decode_seq(TokenKind::ConsentHistory, &[b"t", b"p1"], &token),
            Ok(Some(42))
        );
        assert!(decode_seq(TokenKind::ConsentHistory, &[b"t", b"p2"], &token).is_err());
        assert!(decode_seq(TokenKind::AddressHistory, &[b"t", b"p1"], &token).is_err());
        assert_eq!(decode_seq(TokenKind::ConsentHistory, &[b"t"], ""), Ok(None));
        for garbage in ["zz", "abc", "00", "ü"] {
            assert!(
                decode(TokenKind::Addresses, &[], garbage).is_err(),
                "{garbage}"
            );
        }
    }
}
