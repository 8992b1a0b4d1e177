//! Signed links to the preference page: what a link says, how it is sealed,
//! and the key file that seals it.
//!
//! A link carries a token, not a database id. The token is the link's claims
//! (profile, scope, expiry) encrypted and authenticated with
//! ChaCha20-Poly1305 under a key from the link key file; the tenant and the
//! key's id are authenticated too (associated data), so a token shown under
//! another tenant's address, cut short, altered or sealed with an unknown key
//! does not open. Encryption, not only a signature, because a profile id may
//! itself be personal data (an e-mail address, a customer number) and links
//! end up in mail logs and proxies.
//!
//! The nonce is synthetic (SIV-like): an HMAC of the associated data and the
//! claims, so a nonce repeats only for the very same claims sealed with the
//! same key, which then give the very same token. No random source is
//! needed, and no count of links per key limits safety.
//!
//! Keys rotate: the key file holds several keys; the last one seals, every
//! one opens. Links sent before a rotation keep working until the old key is
//! removed from the file.
//!
//! The page's form carries a CSRF token bound to its link: an HMAC of the
//! link token and the time the form was served, under the same key file.

use std::fmt;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{aead, hmac};
use serde::Deserialize;

use crate::engine::{Channel, ProfileId, ServiceId, Tenant, UnixMillis};

/// Bytes of a link key's secret.
pub const LINK_KEY_BYTES: usize = 32;
/// Most keys in a link key file.
pub const LINK_KEYS_MAX: usize = 64;
/// Longest key id, in bytes.
pub const LINK_KEY_ID_LEN_MAX: usize = 32;
/// Longest token this server accepts, in characters; longer ones are refused
/// before any work (the longest it makes is about 560).
pub const LINK_TOKEN_LEN_MAX: usize = 1024;
/// How long a CSRF token works after its form was served.
pub const CSRF_TTL_MS: UnixMillis = 12 * 60 * 60 * 1000;

/// The token format's version, first byte of every token.
const VERSION: u8 = 1;
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
const CSRF_MAC_BYTES: usize = 16;

/// What a link applies to when it is used for a one-click unsubscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkScope {
    /// Every channel.
    AllChannels,
    /// One channel.
    Channel(Channel),
    /// One service's subscription.
    Service(ServiceId),
}

/// What a link says: whose preferences it opens, the one-click scope, and
/// until when it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkClaims {
    /// The tenant (authenticated, not encrypted: it is in the link's address).
    pub tenant: Tenant,
    /// The profile.
    pub profile: ProfileId,
    /// The scope of a one-click unsubscribe.
    pub scope: LinkScope,
    /// The link works until this instant (exclusive).
    pub expires_at: UnixMillis,
}

/// Why a token did not open. Never shown to the person: every refusal gets
/// the same neutral page. Logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// Not a token of this format (bad characters, too short or long).
    Malformed,
    /// Sealed with a key this server does not have.
    UnknownKey,
    /// Does not authenticate: altered, cut short, or shown under another tenant.
    Forged,
    /// Past its expiry.
    Expired,
}

impl LinkRefusal {
    /// A short name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkRefusal::Malformed => "malformed",
            LinkRefusal::UnknownKey => "unknown_key",
            LinkRefusal::Forged => "forged",
            LinkRefusal::Expired => "expired",
        }
    }
}

/// One key of the key file.
struct LinkKey {
    id: String,
    aead: aead::LessSafeKey,
    nonce: hmac::Key,
    csrf: hmac::Key,
}

/// The keys of a link key file: the last seals, all open.
pub struct LinkKeys {
    keys: Vec<LinkKey>,
}

impl fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        f.debug_struct("LinkKeys")
            .field("ids", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    secret: String,
}

/// Checks a key id: 1 to 32 ASCII letters, digits, `.`, `_` or `-`.
fn check_key_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > LINK_KEY_ID_LEN_MAX
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "key id {id:?} must be 1 to {LINK_KEY_ID_LEN_MAX} ASCII letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(())
}

/// A key derived from the secret for one purpose, so that no two uses share a key.
fn derive(secret: &[u8], purpose: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, purpose);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

impl LinkKey {
    fn new(id: String, secret: &[u8; LINK_KEY_BYTES]) -> Result<Self, String> {
        let unbound = aead::UnboundKey::new(
            &aead::CHACHA20_POLY1305,
            &derive(secret, b"consentd link v1 aead"),
        )
        .map_err(|_| "the AEAD key is rejected".to_owned())?;
        Ok(Self {
            id,
            aead: aead::LessSafeKey::new(unbound),
            nonce: hmac::Key::new(
                hmac::HMAC_SHA256,
                &derive(secret, b"consentd link v1 nonce"),
            ),
            csrf: hmac::Key::new(hmac::HMAC_SHA256, &derive(secret, b"consentd link v1 csrf")),
        })
    }
}

impl LinkKeys {
    /// Reads a key file (TOML, one `[[key]]` table per key with `id` and a
    /// base64 `secret` of 32 bytes). Says what is wrong, naming the entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: KeyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.key.is_empty() {
            return Err("the link key file has no [[key]] entry".to_owned());
        }
        if file.key.len() > LINK_KEYS_MAX {
            return Err(format!(
                "the link key file has {} keys; at most {LINK_KEYS_MAX}",
                file.key.len()
            ));
        }
        let mut keys: Vec<LinkKey> = Vec::with_capacity(file.key.len());
        for (i, entry) in file.key.into_iter().enumerate() {
            let fail = |problem: String| format!("key[{i}]: {problem}");
            check_key_id(&entry.id).map_err(fail)?;
            if keys.iter().any(|k| k.id == entry.id) {
                return Err(fail(format!("id {:?} is given twice", entry.id)));
            }
            let secret = base64::engine::general_purpose::STANDARD
                .decode(entry.secret.trim())
                .ok()
                .and_then(|bytes| <[u8; LINK_KEY_BYTES]>::try_from(bytes).ok())
                .ok_or_else(|| {
                    fail(format!(
                        "secret must be {LINK_KEY_BYTES} bytes in base64 (consentd keys generate-link-key)"
                    ))
                })?;
            keys.push(LinkKey::new(entry.id, &secret).map_err(fail)?);
        }
        Ok(Self { keys })
    }

    /// The id of the key that seals new links.
    pub fn sealing_key_id(&self) -> &str {
        self.sealer().id.as_str()
    }

    fn sealer(&self) -> &LinkKey {
        // `parse` refuses a file without keys.
        &self.keys[self.keys.len() - 1]
    }

    fn key(&self, id: &[u8]) -> Option<&LinkKey> {
        self.keys.iter().find(|k| k.id.as_bytes() == id)
    }

    /// Seals claims into a token (URL-safe base64, no padding).
    pub fn seal(&self, claims: &LinkClaims) -> String {
        let key = self.sealer();
        let mut header = vec![VERSION];
        // At most LINK_KEY_ID_LEN_MAX (32) bytes: checked by `parse`.
        header.push(u8::try_from(key.id.len()).unwrap_or(u8::MAX));
        header.extend_from_slice(key.id.as_bytes());
        let aad = associated_data(&header, &claims.tenant);
        let mut plain = encode_claims(claims);
        let nonce = synthetic_nonce(&key.nonce, &aad, &plain);
        let sealed = key.aead.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(&aad),
            &mut plain,
        );
        // Sealing fails only for inputs beyond ChaCha20's 256 GiB.
        debug_assert!(sealed.is_ok());
        let mut token = header;
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&plain);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// Opens a token shown under `tenant`'s address at `now`.
    pub fn open(
        &self,
        tenant: &Tenant,
        token: &str,
        now: UnixMillis,
    ) -> Result<LinkClaims, LinkRefusal> {
        if token.len() > LINK_TOKEN_LEN_MAX {
            return Err(LinkRefusal::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| LinkRefusal::Malformed)?;
        let (&version, rest) = bytes.split_first().ok_or(LinkRefusal::Malformed)?;
        let (&id_len, rest) = rest.split_first().ok_or(LinkRefusal::Malformed)?;
        let id_len = usize::from(id_len);
        if version != VERSION || rest.len() < id_len + NONCE_BYTES + TAG_BYTES {
            return Err(LinkRefusal::Malformed);
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, sealed) = rest.split_at(NONCE_BYTES);
        let key = self.key(id).ok_or(LinkRefusal::UnknownKey)?;
        let aad = associated_data(&bytes[..2 + id_len], tenant);
        let nonce = <[u8; NONCE_BYTES]>::try_from(nonce).map_err(|_| LinkRefusal::Malformed)?;
        let mut buffer = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(&aad),
                &mut buffer,
            )
            .map_err(|_| LinkRefusal::Forged)?;
        // Authentic, so it was made by `seal`: a decoding failure is a bug
        // of an older format, refused like a forgery.
        let claims = decode_claims(tenant, plain).ok_or(LinkRefusal::Forged)?;
        if now >= claims.expires_at {
            return Err(LinkRefusal::Expired);
        }
        Ok(claims)
    }

    /// A CSRF token for the form of the page opened by `token`, served at `now`.
    pub fn csrf(&self, token: &str, now: UnixMillis) -> String {
        let key = self.sealer();
        let mut out = Vec::with_capacity(1 + LINK_KEY_ID_LEN_MAX + 8 + CSRF_MAC_BYTES);
        out.push(u8::try_from(key.id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&now.to_be_bytes());
        let mac = csrf_mac(&key.csrf, token, now);
        out.extend_from_slice(&mac[..CSRF_MAC_BYTES]);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Whether `csrf` was made by [`LinkKeys::csrf`] for this `token` within
    /// [`CSRF_TTL_MS`] before `now` (and not after it, beyond a minute of skew).
    pub fn csrf_valid(&self, token: &str, csrf: &str, now: UnixMillis) -> bool {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(csrf) else {
            return false;
        };
        let Some((&id_len, rest)) = bytes.split_first() else {
            return false;
        };
        let id_len = usize::from(id_len);
        if rest.len() != id_len + 8 + CSRF_MAC_BYTES {
            return false;
        }
        let (id, rest) = rest.split_at(id_len);
        let (issued, mac) = rest.split_at(8);
        let Some(key) = self.key(id) else {
            return false;
        };
        let issued = i64::from_be_bytes(issued.try_into().unwrap_or_default());
        if issued > now.saturating_add(60_000) || now.saturating_sub(issued) > CSRF_TTL_MS {
            return false;
        }
        let expected = csrf_mac(&key.csrf, token, issued);
        // Constant time: ring's verify compares the whole tag; here the
        // truncated one, with subtle.
        subtle::ConstantTimeEq::ct_eq(&expected[..CSRF_MAC_BYTES], mac).into()
    }
}

fn csrf_mac(key: &hmac::Key, token: &str, issued: UnixMillis) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(b"csrf\0");
    ctx.update(&issued.to_be_bytes());
    ctx.update(token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// The token's header and the tenant, authenticated but not encrypted.
fn associated_data(header: &[u8], tenant: &Tenant) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.extend_from_slice(tenant.as_str().as_bytes());
    aad
}

fn synthetic_nonce(key: &hmac::Key, aad: &[u8], plain: &[u8]) -> [u8; NONCE_BYTES] {
    let mut ctx = hmac::Context::with_key(key);
    // The length keeps the split between the two parts unambiguous.
    ctx.update(&(aad.len() as u64).to_be_bytes());
    ctx.update(aad);
    ctx.update(plain);
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&ctx.sign().as_ref()[..NONCE_BYTES]);
    nonce
}

const SCOPE_ALL: u8 = 0;
const SCOPE_CHANNEL: u8 = 1;
const SCOPE_SERVICE: u8 = 2;

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Profile and service ids are at most 256 bytes.
    out.extend_from_slice(&u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode_claims(claims: &LinkClaims) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + claims.profile.as_str().len());
    out.extend_from_slice(&claims.expires_at.to_be_bytes());
    put_str(&mut out, claims.profile.as_str());
    match &claims.scope {
        LinkScope::AllChannels => out.push(SCOPE_ALL),
        LinkScope::Channel(channel) => {
            out.push(SCOPE_CHANNEL);
            out.push(u8::try_from(channel.index()).unwrap_or(u8::MAX));
        }
        LinkScope::Service(service) => {
            out.push(SCOPE_SERVICE);
            put_str(&mut out, service.as_str());
        }
    }
    out
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if bytes.len() < n {
        return None;
    }
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    Some(head)
}

fn take_str<'a>(bytes: &mut &'a [u8]) -> Option<&'a str> {
    let len = usize::from(u16::from_be_bytes(take(bytes, 2)?.try_into().ok()?));
    std::str::from_utf8(take(bytes, len)?).ok()
}

fn decode_claims(tenant: &Tenant, mut bytes: &[u8]) -> Option<LinkClaims> {
    let expires_at = i64::from_be_bytes(take(&mut bytes, 8)?.try_into().ok()?);
    let profile = ProfileId::parse(take_str(&mut bytes)?).ok()?;
    let scope = match take(&mut bytes, 1)?[0] {
        SCOPE_ALL => LinkScope::AllChannels,
        SCOPE_CHANNEL => {
            let index = usize::from(take(&mut bytes, 1)?[0]);
            LinkScope::Channel(*Channel::ALL.get(index)?)
        }
        SCOPE_SERVICE => LinkScope::Service(ServiceId::parse(take_str(&mut bytes)?).ok()?),
        _ => return None,
    };
    bytes.is_empty().then(|| LinkClaims {
        tenant: tenant.clone(),
        profile,
        scope,
        expires_at,
    })
}

/// A new key-file entry with a fresh random secret, to append to the key
/// file (the last entry seals: appending rotates).
pub fn generate_link_key(id: &str) -> Result<String, String> {
    check_key_id(id).map_err(|p| format!("--id: {p}"))?;
    let mut secret = [0u8; LINK_KEY_BYTES];
    getrandom::fill(&mut secret)
        .map_err(|e| format!("the operating system's random source failed: {e}"))?;
    // Ids are restricted to characters that need no TOML escaping.
    Ok(format!(
        "[[key]]\nid = \"{id}\"\nsecret = \"{}\"\n",
        base64::engine::general_purpose::STANDARD.encode(secret)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(entries: &[(&str, u8)]) -> String {
        entries
            .iter()
            .map(|(id, fill)| {
                format!(
                    "[[key]]\nid = \"{id}\"\nsecret = \"{}\"\n",
                    base64::engine::general_purpose::STANDARD.encode([*fill; 32])
                )
            })
            .collect()
    }

    fn keys(entries: &[(&str, u8)]) -> LinkKeys {
        LinkKeys::parse(&key_file(entries)).expect("a valid key file")
    }

    fn tenant(name: &str) -> Tenant {
        Tenant::parse(name).expect("valid")
    }

    fn claims(scope: LinkScope) -> LinkClaims {
        LinkClaims {
            tenant: tenant("acme"),
            profile: ProfileId::parse("alice@example.com").expect("valid"),
            scope,
            expires_at: 1_000_000,
        }
    }

    #[test]
    fn a_sealed_link_opens_to_its_claims_for_every_scope_and_hides_the_profile() {
        let keys = keys(&[("k1", 1)]);
        for scope in [
            LinkScope::AllChannels,
            LinkScope::Channel(Channel::Email),
            LinkScope::Channel(Channel::DirectMail),
            LinkScope::Service(ServiceId::parse("weekly").expect("valid")),
        ] {
            let claims = claims(scope);
            let token = keys.seal(&claims);
            assert!(token.len() < LINK_TOKEN_LEN_MAX);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token}"
            );
            assert_eq!(keys.open(&tenant("acme"), &token, 999_999), Ok(claims));
            let raw = URL_SAFE_NO_PAD.decode(&token).expect("base64");
            assert!(
                !raw.windows(5).any(|w| w == b"alice"),
                "the profile id is encrypted"
            );
        }
    }

    #[test]
    fn the_same_claims_give_the_same_token_and_others_another() {
        let keys = keys(&[("k1", 1)]);
        let a = claims(LinkScope::AllChannels);
        let mut b = a.clone();
        b.expires_at += 1;
        assert_eq!(keys.seal(&a), keys.seal(&a));
        assert_ne!(keys.seal(&a), keys.seal(&b));
        let raw = |t: String| URL_SAFE_NO_PAD.decode(t).expect("base64");
        assert_ne!(raw(keys.seal(&a))[4..16], raw(keys.seal(&b))[4..16]);
    }

    #[test]
    fn a_link_expires_at_its_instant() {
        let keys = keys(&[("k1", 1)]);
        let token = keys.seal(&claims(LinkScope::AllChannels));
        assert!(keys.open(&tenant("acme"), &token, 999_999).is_ok());
        assert_eq!(
            keys.open(&tenant("acme"), &token, 1_000_000),
            Err(LinkRefusal::Expired)
        );
    }

    #[test]
    fn forged_truncated_altered_and_other_tenant_tokens_do_not_open() {
        let keys = keys(&[("k1", 1)]);
        let token = keys.seal(&claims(LinkScope::AllChannels));
        let acme = tenant("acme");
        assert_eq!(
            keys.open(&tenant("beta"), &token, 0),
            Err(LinkRefusal::Forged)
        );
        let mut raw = URL_SAFE_NO_PAD.decode(&token).expect("base64");
        for at in [0, 1, 2, 5, 20, raw.len() - 1] {
            let mut altered = raw.clone();
            altered[at] ^= 1;
            let refusal = keys
                .open(&acme, &URL_SAFE_NO_PAD.encode(&altered), 0)
                .expect_err("altered");
            assert_ne!(refusal, LinkRefusal::Expired, "byte {at}");
        }
        for cut in [0, 1, 3, 15, raw.len() - 1] {
            let refusal = keys
                .open(&acme, &URL_SAFE_NO_PAD.encode(&raw[..cut]), 0)
                .expect_err("cut");
            assert!(
                matches!(refusal, LinkRefusal::Malformed | LinkRefusal::Forged),
                "{cut}: {refusal:?}"
            );
        }
        raw.push(0);
        assert_eq!(
            keys.open(&acme, &URL_SAFE_NO_PAD.encode(&raw), 0),
            Err(LinkRefusal::Forged)
        );
        for junk in ["", "!!!!", "a+b/c=", &"A".repeat(LINK_TOKEN_LEN_MAX + 1)] {
            assert_eq!(keys.open(&acme, junk, 0), Err(LinkRefusal::Malformed));
        }
        let stranger = self::keys(&[("k1", 2)]);
        assert_eq!(stranger.open(&acme, &token, 0), Err(LinkRefusal::Forged));
        let other_id = self::keys(&[("k9", 1)]);
        assert_eq!(
            other_id.open(&acme, &token, 0),
            Err(LinkRefusal::UnknownKey)
        );
    }

    #[test]
    fn lengths_are_checked_at_their_exact_bounds() {
        let keys = keys(&[("k1", 1)]);
        let acme = tenant("acme");
        let token = keys.seal(&claims(LinkScope::AllChannels));
        // Padded past the limit, a token is refused before any work; at
        // the limit, it is read and fails to authenticate.
        let padded = |len: usize| format!("{token}{}", "A".repeat(len - token.len()));
        assert_eq!(
            keys.open(&acme, &padded(LINK_TOKEN_LEN_MAX), 0),
            Err(LinkRefusal::Forged)
        );
        assert_eq!(
            keys.open(&acme, &padded(LINK_TOKEN_LEN_MAX + 2), 0),
            Err(LinkRefusal::Malformed)
        );
        // The shortest token read: the header, a nonce and a tag (no claims).
        let raw = URL_SAFE_NO_PAD.decode(&token).expect("base64");
        let shortest = 2 + "k1".len() + NONCE_BYTES + TAG_BYTES;
        assert_eq!(
            keys.open(&acme, &URL_SAFE_NO_PAD.encode(&raw[..shortest]), 0),
            Err(LinkRefusal::Forged)
        );
        assert_eq!(
            keys.open(&acme, &URL_SAFE_NO_PAD.encode(&raw[..shortest - 1]), 0),
            Err(LinkRefusal::Malformed)
        );
    }

    #[test]
    fn refusals_are_named_for_the_log_and_a_csrf_token_lasts_twelve_hours() {
        assert_eq!(
            [
                LinkRefusal::Malformed,
                LinkRefusal::UnknownKey,
                LinkRefusal::Forged,
                LinkRefusal::Expired
            ]
            .map(LinkRefusal::as_str),
            ["malformed", "unknown_key", "forged", "expired"]
        );
        assert_eq!(CSRF_TTL_MS, 43_200_000);
    }

    #[test]
    fn the_last_key_seals_and_every_key_opens() {
        let old = keys(&[("old", 1)]);
        let rotated = keys(&[("old", 1), ("new", 2)]);
        let retired = keys(&[("new", 2)]);
        assert_eq!(rotated.sealing_key_id(), "new");
        let claims = claims(LinkScope::AllChannels);
        let before = old.seal(&claims);
        let after = rotated.seal(&claims);
        let acme = tenant("acme");
        assert_eq!(rotated.open(&acme, &before, 0), Ok(claims.clone()));
        assert_eq!(rotated.open(&acme, &after, 0), Ok(claims.clone()));
        assert_eq!(retired.open(&acme, &after, 0), Ok(claims));
        assert_eq!(
            retired.open(&acme, &before, 0),
            Err(LinkRefusal::UnknownKey)
        );
    }

    #[test]
    fn a_csrf_token_is_bound_to_its_link_and_its_time() {
        let keys = keys(&[("k1", 1)]);
        let csrf = keys.csrf("link-a", 5_000);
        assert!(keys.csrf_valid("link-a", &csrf, 5_000));
        assert!(keys.csrf_valid("link-a", &csrf, 5_000 + CSRF_TTL_MS));
        assert!(!keys.csrf_valid("link-a", &csrf, 5_001 + CSRF_TTL_MS));
        assert!(keys.csrf_valid("link-a", &csrf, 5_000 - 60_000));
        assert!(!keys.csrf_valid("link-a", &csrf, 5_000 - 60_001));
        assert!(!keys.csrf_valid("link-b", &csrf, 5_000));
        assert!(!keys.csrf_valid("link-a", "", 5_000));
        assert!(!keys.csrf_valid("link-a", &csrf[..csrf.len() - 2], 5_000));
        let mut raw = URL_SAFE_NO_PAD.decode(&csrf).expect("base64");
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(!keys.csrf_valid("link-a", &URL_SAFE_NO_PAD.encode(&raw), 5_000));
        let other = self::keys(&[("k1", 2)]);
        assert!(!other.csrf_valid("link-a", &csrf, 5_000));
        let rotated = self::keys(&[("k1", 1), ("k2", 2)]);
        assert!(rotated.csrf_valid("link-a", &csrf, 5_000));
    }

    #[test]
    fn key_files_are_checked_entry_by_entry() {
        assert!(LinkKeys::parse("").is_err());
        assert!(LinkKeys::parse("[[key]]\nid = \"a\"\n").is_err());
        let dup = key_file(&[("a", 1), ("a", 2)]);
        assert!(
            LinkKeys::parse(&dup)
                .expect_err("duplicate")
                .contains("key[1]")
        );
        assert!(LinkKeys::parse(&key_file(&[("bad id", 1)])).is_err());
        assert!(LinkKeys::parse(&key_file(&[(&"a".repeat(33), 1)])).is_err());
        assert!(LinkKeys::parse(&key_file(&[(&"a".repeat(32), 1)])).is_ok());
        let short = "[[key]]\nid = \"a\"\nsecret = \"AAAA\"\n";
        assert!(
            LinkKeys::parse(short)
                .expect_err("short")
                .contains("32 bytes")
        );
        let extra = format!("{}other = 1\n", key_file(&[("a", 1)]));
        assert!(LinkKeys::parse(&extra).is_err());
        let many: Vec<(String, u8)> = (0..=LINK_KEYS_MAX).map(|i| (format!("k{i}"), 1)).collect();
        let refs: Vec<(&str, u8)> = many.iter().map(|(id, f)| (id.as_str(), *f)).collect();
        assert!(LinkKeys::parse(&key_file(&refs)).is_err());
        assert!(LinkKeys::parse(&key_file(&refs[..LINK_KEYS_MAX])).is_ok());
        let debug = format!("{:?}", keys(&[("k1", 7), ("k2", 8)]));
        assert!(!debug.contains("BwcH"), "{debug}");
        assert_eq!(debug, r#"LinkKeys { ids: ["k1", "k2"] }"#);
    }

    #[test]
    fn a_generated_key_is_a_valid_entry_and_fresh() {
        let a = generate_link_key("2026-12").expect("generated");
        let b = generate_link_key("2026-12").expect("generated");
        assert_ne!(a, b);
        let keys = LinkKeys::parse(&a).expect("parses");
        assert_eq!(keys.sealing_key_id(), "2026-12");
        assert!(generate_link_key("no spaces").is_err());
    }
}
