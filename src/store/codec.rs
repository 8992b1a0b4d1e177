//! The on-disk encoding of records: our own, versioned, explicit field by
//! field. Prost messages are a wire contract and never reach the disk.
//!
//! Every value starts with a format version byte; a reader refuses a version
//! it does not know rather than guess.
//!
//! Invariant: only this module knows the byte layout of values.

use std::time::Duration;

use crate::engine::{
    Address, AddressConsent, AddressEvent, AddressEventKind, AddressKind, AddressMark,
    AddressState, AddressStatus, Change, ChangeContext, Channel, ConsentHistoryEntry, ConsentMark,
    ConsentState, ConsentStatus, ERASURE_KEY_BYTES, Erasure, ErasureKey, ErrorReason, EventId,
    FeedbackKind, PendingConfirmation, Profile, ProfileId, Proof, QuarantineRules, Regime, Region,
    RuleOverrides, Scope, Service, ServiceId, Source, Subscription, SubscriptionChange,
    SubscriptionStatus, TenantSettings, TokenHash, TokenRecord, Tombstone, UnixMillis, UsageOptOut,
    UserId,
};
use crate::engine::{EventKey, LogMeta, Tenant};
use crate::store::Change as FeedChange;

/// The first record format: contexts without proof of consent, history
/// entries that are always consent changes. Still read.
const FORMAT_V1: u8 = 1;
/// Contexts carry the principal and proof of consent; history entries say
/// what kind of change they record. Still read.
const FORMAT_V2: u8 = 2;
/// The format written by this build: address states carry their log's
/// bookkeeping, log entries the time they were folded at and an optional
/// checkpoint, token records their expiry.
const FORMAT_V3: u8 = 3;
/// Address log entries carry the quarantine rules in force when they were
/// received (other records are still written in format 3). Entries of
/// earlier formats read as carrying none.
const FORMAT_V4: u8 = 4;

/// A value could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value ended early.
    #[error("record truncated")]
    Truncated,
    /// A tag byte has no meaning in this format.
    #[error("unknown {what} tag {tag}")]
    BadTag {
        /// What the tag was for.
        what: &'static str,
        /// The byte found.
        tag: u8,
    },
    /// The record was written by a format this build does not know.
    #[error("unknown record format version {0}")]
    Version(u8),
    /// A string is not UTF-8.
    #[error("record holds invalid UTF-8")]
    Utf8,
}

/// Appends primitives to a buffer.
#[derive(Debug, Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn new() -> Self {
        Self(vec![FORMAT_V3])
    }
    fn with_version(version: u8) -> Self {
        Self(vec![version])
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, mut v: u64) {
        // LEB128: small numbers take one byte.
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.i64(v);
            }
        }
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn strs<'a>(&mut self, items: impl ExactSizeIterator<Item = &'a str>) {
        self.u64(items.len() as u64);
        for s in items {
            self.str(s);
        }
    }
}

/// Reads primitives from a buffer, and knows the format version it was written in.
#[derive(Debug)]
struct Reader<'a>(&'a [u8], u8);

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, CodecError> {
        let mut r = Self(bytes, 0);
        match r.u8()? {
            v @ (FORMAT_V1 | FORMAT_V2 | FORMAT_V3 | FORMAT_V4) => {
                r.1 = v;
                Ok(r)
            }
            v => Err(CodecError::Version(v)),
        }
    }
    fn version(&self) -> u8 {
        self.1
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CodecError::BadTag {
            what: "varint",
            tag: 0x80,
        })
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        u32::try_from(self.u64()?).map_err(|_| CodecError::BadTag {
            what: "u32",
            tag: 0xff,
        })
    }
    fn i64(&mut self) -> Result<i64, CodecError> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(i64::from_be_bytes(array))
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, CodecError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.i64()?)),
            tag => Err(CodecError::BadTag {
                what: "option",
                tag,
            }),
        }
    }
    fn len(&mut self) -> Result<usize, CodecError> {
        let len = usize::try_from(self.u64()?).map_err(|_| CodecError::Truncated)?;
        if len > self.0.len() {
            return Err(CodecError::Truncated);
        }
        Ok(len)
    }
    fn string(&mut self) -> Result<String, CodecError> {
        let len = self.len()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::Utf8)
    }
    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.len()?;
        self.take(len)
    }
    fn strings(&mut self) -> Result<Vec<String>, CodecError> {
        let count = self.len()?;
        (0..count).map(|_| self.string()).collect()
    }
}

macro_rules! tag_enum {
    ($name:ident, $ty:ty, $what:literal, [$($variant:path = $tag:literal),* $(,)?]) => {
        fn $name(v: $ty) -> u8 {
            match v { $($variant => $tag,)* }
        }
        impl TagDecode for $ty {
            fn from_tag(tag: u8) -> Result<Self, CodecError> {
                match tag {
                    $($tag => Ok($variant),)*
                    tag => Err(CodecError::BadTag { what: $what, tag }),
                }
            }
        }
    };
}

/// Decoding of the one-byte tags of domain enums.
trait TagDecode: Sized {
    fn from_tag(tag: u8) -> Result<Self, CodecError>;
}

impl Reader<'_> {
    fn tag<T: TagDecode>(&mut self) -> Result<T, CodecError> {
        T::from_tag(self.u8()?)
    }
}

tag_enum!(
    channel_tag,
    Channel,
    "channel",
    [
        Channel::Email = 1,
        Channel::Sms = 2,
        Channel::Push = 3,
        Channel::Voice = 4,
        Channel::DirectMail = 5,
    ]
);
tag_enum!(
    source_tag,
    Source,
    "source",
    [
        Source::LandingPage = 1,
        Source::Operator = 2,
        Source::Api = 3,
        Source::Import = 4,
        Source::DeliveryFeedback = 5,
    ]
);
tag_enum!(
    consent_tag,
    ConsentStatus,
    "consent status",
    [
        ConsentStatus::NoPreference = 1,
        ConsentStatus::OptedIn = 2,
        ConsentStatus::OptedOut = 3,
    ]
);
tag_enum!(
    status_tag,
    AddressStatus,
    "address status",
    [
        AddressStatus::Valid = 1,
        AddressStatus::WithErrors = 2,
        AddressStatus::Quarantined = 3,
        AddressStatus::Denylisted = 4,
    ]
);
tag_enum!(
    feedback_tag,
    FeedbackKind,
    "feedback kind",
    [
        FeedbackKind::HardBounce = 1,
        FeedbackKind::SoftBounce = 2,
        FeedbackKind::Ignored = 3,
        FeedbackKind::Complaint = 4,
        FeedbackKind::Delivered = 5,
    ]
);
tag_enum!(
    reason_tag,
    ErrorReason,
    "error reason",
    [
        ErrorReason::Unspecified = 0,
        ErrorReason::UserUnknown = 1,
        ErrorReason::InvalidDomain = 2,
        ErrorReason::Unreachable = 3,
        ErrorReason::AccountDisabled = 4,
        ErrorReason::MailboxFull = 5,
        ErrorReason::Refused = 6,
        ErrorReason::NotConnected = 7,
        ErrorReason::Other = 8,
    ]
);
tag_enum!(
    kind_tag,
    AddressKind,
    "address kind",
    [
        AddressKind::Email = 1,
        AddressKind::Phone = 2,
        AddressKind::PushToken = 3,
    ]
);

tag_enum!(
    subscription_tag,
    SubscriptionStatus,
    "subscription status",
    [
        SubscriptionStatus::PendingConfirmation = 1,
        SubscriptionStatus::Active = 2,
        SubscriptionStatus::Unsubscribed = 3,
    ]
);
tag_enum!(
    regime_tag,
    Regime,
    "regime",
    [Regime::OptOut = 1, Regime::OptIn = 2]
);

/// The byte of a subscription status (the value of a subscriber index entry).
pub(crate) fn subscription_status_byte(status: SubscriptionStatus) -> u8 {
    subscription_tag(status)
}

/// The subscription status of a subscriber index entry's value.
pub(crate) fn decode_subscription_status(bytes: &[u8]) -> Result<SubscriptionStatus, CodecError> {
    match bytes {
        [tag] => SubscriptionStatus::from_tag(*tag),
        _ => Err(CodecError::Truncated),
    }
}

/// The key byte of an address kind (shared with the key layout).
pub(crate) fn address_kind_byte(kind: AddressKind) -> u8 {
    kind_tag(kind)
}

/// The key byte of an address status (shared with the key layout).
pub(crate) fn address_status_byte(status: AddressStatus) -> u8 {
    status_tag(status)
}

/// The address kind of a key byte.
pub(crate) fn address_kind_from_byte(byte: u8) -> Result<AddressKind, CodecError> {
    AddressKind::from_tag(byte)
}

/// The address status a tag byte stands for.
pub(crate) fn address_status_from_byte(byte: u8) -> Result<AddressStatus, CodecError> {
    AddressStatus::from_tag(byte)
}

fn put_context(w: &mut Writer, c: &ChangeContext) {
    w.u8(source_tag(c.source));
    w.str(&c.actor);
    w.str(&c.reason);
    w.str(&c.principal);
    let ip = c
        .proof
        .ip_address
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    w.str(&ip);
    w.str(&c.proof.user_agent);
    w.str(&c.proof.notice_version);
    w.opt_i64(c.proof.collected_at);
}

fn get_context(r: &mut Reader<'_>) -> Result<ChangeContext, CodecError> {
    let source = r.tag()?;
    let actor = r.string()?;
    let reason = r.string()?;
    if r.version() == FORMAT_V1 {
        return Ok(ChangeContext {
            source,
            actor,
            reason,
            principal: String::new(),
            proof: Proof::default(),
        });
    }
    let principal = r.string()?;
    let ip = r.string()?;
    let ip_address = match ip.as_str() {
        "" => None,
        text => Some(text.parse().map_err(|_| CodecError::BadTag {
            what: "ip address",
            tag: 0,
        })?),
    };
    Ok(ChangeContext {
        source,
        actor,
        reason,
        principal,
        proof: Proof {
            ip_address,
            user_agent: r.string()?,
            notice_version: r.string()?,
            collected_at: r.opt_i64()?,
        },
    })
}

fn put_mark(w: &mut Writer, m: &ConsentMark) {
    w.u8(consent_tag(m.status));
    match m.changed {
        None => w.u8(0),
        Some((at, source)) => {
            w.u8(1);
            w.i64(at);
            w.u8(source_tag(source));
        }
    }
}

fn get_mark(r: &mut Reader<'_>) -> Result<ConsentMark, CodecError> {
    let status = r.tag()?;
    let changed = match r.u8()? {
        0 => None,
        1 => Some((r.i64()?, r.tag()?)),
        tag => {
            return Err(CodecError::BadTag {
                what: "option",
                tag,
            });
        }
    };
    Ok(ConsentMark { status, changed })
}

/// Encodes a profile record (its id lives in the key).
pub(crate) fn encode_profile(p: &Profile) -> Vec<u8> {
    let mut w = Writer::new();
    w.strs(p.emails.iter().map(Address::as_str));
    w.strs(p.phones.iter().map(Address::as_str));
    w.strs(p.push_tokens.iter().map(Address::as_str));
    w.str(&p.postal_address);
    put_mark(&mut w, &p.consent.all_channels);
    for mark in &p.consent.channels {
        put_mark(&mut w, mark);
    }
    w.u64(p.history_seq);
    w.i64(p.created_at);
    w.i64(p.updated_at);
    w.0
}

/// Decodes a profile record.
pub(crate) fn decode_profile(id: ProfileId, bytes: &[u8]) -> Result<Profile, CodecError> {
    let mut r = Reader::new(bytes)?;
    let addresses = |r: &mut Reader<'_>, kind| -> Result<Vec<Address>, CodecError> {
        Ok(r.strings()?
            .into_iter()
            .map(|s| Address::from_trusted(kind, s))
            .collect())
    };
    let emails = addresses(&mut r, AddressKind::Email)?;
    let phones = addresses(&mut r, AddressKind::Phone)?;
    let push_tokens = addresses(&mut r, AddressKind::PushToken)?;
    let postal_address = r.string()?;
    let all_channels = get_mark(&mut r)?;
    let mut channels = [ConsentMark::default(); 5];
    for mark in &mut channels {
        *mark = get_mark(&mut r)?;
    }
    Ok(Profile {
        id,
        emails,
        phones,
        push_tokens,
        postal_address,
        consent: ConsentState {
            all_channels,
            channels,
        },
        history_seq: r.u64()?,
        created_at: r.i64()?,
        updated_at: r.i64()?,
    })
}

/// Encodes a consent history entry.
pub(crate) fn encode_consent_entry(e: &ConsentHistoryEntry) -> Vec<u8> {
    let mut w = Writer::new();
    w.u64(e.sequence);
    w.i64(e.changed_at);
    match &e.change {
        Change::Consent {
            scope,
            old_status,
            new_status,
        } => {
            w.u8(0);
            match scope {
                Scope::AllChannels => w.u8(0),
                Scope::Channel(c) => w.u8(channel_tag(*c)),
            }
            w.u8(consent_tag(*old_status));
            w.u8(consent_tag(*new_status));
        }
        Change::Subscription {
            service_id,
            channel,
            change,
        } => {
            w.u8(1);
            w.str(service_id.as_str());
            w.u8(channel_tag(*channel));
            w.u8(change.old.map_or(0, subscription_tag));
            w.u8(subscription_tag(change.new));
        }
    }
    put_context(&mut w, &e.context);
    w.0
}

fn get_consent_change(r: &mut Reader<'_>) -> Result<Change, CodecError> {
    let scope = match r.u8()? {
        0 => Scope::AllChannels,
        tag => Scope::Channel(Channel::from_tag(tag)?),
    };
    Ok(Change::Consent {
        scope,
        old_status: r.tag()?,
        new_status: r.tag()?,
    })
}

/// Decodes a consent history entry.
pub(crate) fn decode_consent_entry(bytes: &[u8]) -> Result<ConsentHistoryEntry, CodecError> {
    let mut r = Reader::new(bytes)?;
    let sequence = r.u64()?;
    let changed_at = r.i64()?;
    let change = if r.version() == FORMAT_V1 {
        get_consent_change(&mut r)?
    } else {
        match r.u8()? {
            0 => get_consent_change(&mut r)?,
            1 => {
                let service_id = ServiceId::from_trusted(r.string()?);
                let channel = r.tag()?;
                let old = match r.u8()? {
                    0 => None,
                    tag => Some(SubscriptionStatus::from_tag(tag)?),
                };
                Change::Subscription {
                    service_id,
                    channel,
                    change: SubscriptionChange { old, new: r.tag()? },
                }
            }
            tag => {
                return Err(CodecError::BadTag {
                    what: "history change",
                    tag,
                });
            }
        }
    };
    Ok(ConsentHistoryEntry {
        sequence,
        changed_at,
        change,
        context: get_context(&mut r)?,
    })
}

fn put_opt_duration(w: &mut Writer, d: Option<Duration>) {
    w.opt_i64(d.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
}

fn get_opt_duration(r: &mut Reader<'_>) -> Result<Option<Duration>, CodecError> {
    Ok(r.opt_i64()?
        .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
}

/// Encodes a tenant's settings.
pub(crate) fn encode_tenant_settings(t: &TenantSettings) -> Vec<u8> {
    let mut w = Writer::new();
    for regime in t.regimes {
        w.u8(regime_tag(regime));
    }
    w.opt_i64(t.rules.soft_error_threshold.map(i64::from));
    put_opt_duration(&mut w, t.rules.significant_error_interval);
    put_opt_duration(&mut w, t.rules.error_reset_period);
    put_opt_duration(&mut w, t.rules.mailbox_full_reset_period);
    w.opt_i64(t.updated_at);
    // Added after format 3 without a new version: a record that ends
    // before it has no default region.
    w.str(t.default_region.as_ref().map_or("", |r| r.as_str()));
    // Added later in the same way: a record that ends before them has neither.
    w.str(&t.display_name);
    w.str(&t.privacy_policy_url);
    w.0
}

/// Decodes a tenant's settings.
pub(crate) fn decode_tenant_settings(bytes: &[u8]) -> Result<TenantSettings, CodecError> {
    let mut r = Reader::new(bytes)?;
    let mut regimes = [Regime::OptOut; 5];
    for regime in &mut regimes {
        *regime = r.tag()?;
    }
    let soft_error_threshold = r
        .opt_i64()?
        .map(|n| {
            u32::try_from(n).map_err(|_| CodecError::BadTag {
                what: "threshold",
                tag: 0xff,
            })
        })
        .transpose()?;
    Ok(TenantSettings {
        regimes,
        rules: RuleOverrides {
            soft_error_threshold,
            significant_error_interval: get_opt_duration(&mut r)?,
            error_reset_period: get_opt_duration(&mut r)?,
            mailbox_full_reset_period: get_opt_duration(&mut r)?,
        },
        updated_at: r.opt_i64()?,
        default_region: if r.0.is_empty() {
            None
        } else {
            match r.string()?.as_str() {
                "" => None,
                code => Some(Region::parse(code).map_err(|_| CodecError::BadTag {
                    what: "region",
                    tag: 0xff,
                })?),
            }
        },
        display_name: if r.0.is_empty() {
            String::new()
        } else {
            r.string()?
        },
        privacy_policy_url: if r.0.is_empty() {
            String::new()
        } else {
            r.string()?
        },
    })
}

/// Encodes a service (its id lives in the key).
pub(crate) fn encode_service(s: &Service) -> Vec<u8> {
    let mut w = Writer::new();
    w.str(&s.name);
    w.u8(channel_tag(s.channel));
    w.u8(u8::from(s.double_opt_in));
    w.i64(s.created_at);
    w.0
}

/// Decodes a service.
pub(crate) fn decode_service(id: ServiceId, bytes: &[u8]) -> Result<Service, CodecError> {
    let mut r = Reader::new(bytes)?;
    Ok(Service {
        id,
        name: r.string()?,
        channel: r.tag()?,
        double_opt_in: r.u8()? != 0,
        created_at: r.i64()?,
    })
}

/// Encodes a subscription (profile and service live in the key).
pub(crate) fn encode_subscription(s: &Subscription) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(subscription_tag(s.status));
    w.i64(s.changed_at);
    match &s.pending {
        None => w.u8(0),
        Some(p) => {
            w.u8(1);
            w.0.extend_from_slice(&p.token_hash.0);
            w.i64(p.expires_at);
        }
    }
    w.0
}

/// Decodes a subscription.
pub(crate) fn decode_subscription(
    service_id: ServiceId,
    bytes: &[u8],
) -> Result<Subscription, CodecError> {
    let mut r = Reader::new(bytes)?;
    let status = r.tag()?;
    let changed_at = r.i64()?;
    let pending = match r.u8()? {
        0 => None,
        1 => {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(r.take(32)?);
            Some(PendingConfirmation {
                token_hash: TokenHash(hash),
                expires_at: r.i64()?,
            })
        }
        tag => {
            return Err(CodecError::BadTag {
                what: "option",
                tag,
            });
        }
    };
    Ok(Subscription {
        service_id,
        status,
        changed_at,
        pending,
    })
}

/// Encodes a token record.
pub(crate) fn encode_token(t: &TokenRecord) -> Vec<u8> {
    let mut w = Writer::new();
    w.str(t.profile_id.as_str());
    w.str(t.service_id.as_str());
    w.opt_i64(t.used_at);
    w.i64(t.expires_at);
    w.0
}

/// Decodes a token record. Records written before V3 have no expiry: they
/// read as expiring at `legacy_expiry` (the migration at open rewrites them).
pub(crate) fn decode_token(
    bytes: &[u8],
    legacy_expiry: UnixMillis,
) -> Result<TokenRecord, CodecError> {
    let mut r = Reader::new(bytes)?;
    Ok(TokenRecord {
        profile_id: ProfileId::from_trusted(r.string()?),
        service_id: ServiceId::from_trusted(r.string()?),
        used_at: r.opt_i64()?,
        expires_at: if r.version() >= FORMAT_V3 {
            r.i64()?
        } else {
            legacy_expiry
        },
    })
}

/// Encodes a tombstone (the address hash lives in the key).
pub(crate) fn encode_tombstone(t: &Tombstone) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(u8::from(t.all_channels));
    w.u8(t.channels);
    w.0
}

/// Decodes a tombstone.
pub(crate) fn decode_tombstone(bytes: &[u8]) -> Result<Tombstone, CodecError> {
    let mut r = Reader::new(bytes)?;
    let all_channels = match r.u8()? {
        0 => false,
        1 => true,
        tag => {
            return Err(CodecError::BadTag {
                what: "tombstone",
                tag,
            });
        }
    };
    Ok(Tombstone {
        all_channels,
        channels: r.u8()?,
    })
}

/// Encodes an erasure secret.
pub(crate) fn encode_erasure_key(k: &ErasureKey) -> Vec<u8> {
    let mut w = Writer::new();
    w.bytes(&k.0);
    w.0
}

/// Decodes an erasure secret.
pub(crate) fn decode_erasure_key(bytes: &[u8]) -> Result<ErasureKey, CodecError> {
    let mut r = Reader::new(bytes)?;
    let key = r.bytes()?;
    <[u8; ERASURE_KEY_BYTES]>::try_from(key)
        .map(ErasureKey)
        .map_err(|_| CodecError::Truncated)
}

/// Encodes an erasure record (its time and id live in the key too).
pub(crate) fn encode_erasure(e: &Erasure) -> Vec<u8> {
    let mut w = Writer::new();
    w.i64(e.erased_at);
    w.u64(e.id);
    put_context(&mut w, &e.context);
    w.u64(u64::from(e.tombstones));
    w.u64(e.history_entries);
    w.u64(u64::from(e.subscriptions));
    w.0
}

/// Decodes an erasure record.
pub(crate) fn decode_erasure(bytes: &[u8]) -> Result<Erasure, CodecError> {
    let mut r = Reader::new(bytes)?;
    Ok(Erasure {
        erased_at: r.i64()?,
        id: r.u64()?,
        context: get_context(&mut r)?,
        tombstones: u32::try_from(r.u64()?).unwrap_or(u32::MAX),
        history_entries: r.u64()?,
        subscriptions: u32::try_from(r.u64()?).unwrap_or(u32::MAX),
    })
}

/// Encodes a usage opt-out (the user id lives in the key).
pub(crate) fn encode_usage_opt_out(u: &UsageOptOut) -> Vec<u8> {
    let mut w = Writer::new();
    w.i64(u.opted_out_at);
    put_context(&mut w, &u.context);
    w.0
}

/// Decodes a usage opt-out.
pub(crate) fn decode_usage_opt_out(
    user_id: UserId,
    bytes: &[u8],
) -> Result<UsageOptOut, CodecError> {
    let mut r = Reader::new(bytes)?;
    Ok(UsageOptOut {
        user_id,
        opted_out_at: r.i64()?,
        context: get_context(&mut r)?,
    })
}

/// Encodes an address's opt-outs (the address lives in the key): per
/// channel, 0 for no mark, or 1 (opted back in) / 2 (opted out) and the mark.
pub(crate) fn encode_address_consent(c: &AddressConsent) -> Vec<u8> {
    let mut w = Writer::new();
    for mark in &c.channels {
        match mark {
            None => w.u8(0),
            Some(mark) => {
                w.u8(if mark.opted_out { 2 } else { 1 });
                w.i64(mark.changed_at);
                put_context(&mut w, &mark.context);
            }
        }
    }
    w.0
}

/// Decodes an address's opt-outs.
pub(crate) fn decode_address_consent(bytes: &[u8]) -> Result<AddressConsent, CodecError> {
    let mut r = Reader::new(bytes)?;
    let mut consent = AddressConsent::default();
    for mark in &mut consent.channels {
        *mark = match r.u8()? {
            0 => None,
            tag @ (1 | 2) => Some(Box::new(AddressMark {
                opted_out: tag == 2,
                changed_at: r.i64()?,
                context: get_context(&mut r)?,
            })),
            tag => {
                return Err(CodecError::BadTag {
                    what: "address mark",
                    tag,
                });
            }
        };
    }
    Ok(consent)
}

/// Encodes an address state.
pub(crate) fn encode_address_state(s: &AddressState) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(status_tag(s.status));
    w.u64(u64::from(s.error_count));
    w.opt_i64(s.first_error_at);
    w.opt_i64(s.last_error_at);
    w.u8(reason_tag(s.last_error_reason));
    w.str(&s.last_reason);
    w.opt_i64(s.updated_at);
    w.opt_i64(s.last_event_at);
    w.u64(s.log_seq);
    w.u64(u64::from(s.log.len));
    w.u64(u64::from(s.log.since_checkpoint));
    match s.log.start {
        None => w.u8(0),
        Some(key) => {
            w.u8(1);
            w.i64(key.at);
            w.u64(key.sequence);
        }
    }
    w.0
}

/// Decodes an address state.
pub(crate) fn decode_address_state(bytes: &[u8]) -> Result<AddressState, CodecError> {
    let mut r = Reader::new(bytes)?;
    Ok(AddressState {
        status: r.tag()?,
        error_count: r.u32()?,
        first_error_at: r.opt_i64()?,
        last_error_at: r.opt_i64()?,
        last_error_reason: r.tag()?,
        last_reason: r.string()?,
        updated_at: r.opt_i64()?,
        last_event_at: r.opt_i64()?,
        log_seq: r.u64()?,
        log: if r.version() >= FORMAT_V3 {
            LogMeta {
                len: r.u32()?,
                since_checkpoint: r.u32()?,
                start: match r.u8()? {
                    0 => None,
                    _ => Some(EventKey {
                        at: r.i64()?,
                        sequence: r.u64()?,
                    }),
                },
            }
        } else {
            LogMeta::default()
        },
    })
}

/// Decodes only the status of an address state (its first field).
pub(crate) fn decode_address_status(bytes: &[u8]) -> Result<AddressStatus, CodecError> {
    Reader::new(bytes)?.tag()
}

/// Encodes an address log entry.
pub(crate) fn encode_address_event(e: &AddressEvent) -> Vec<u8> {
    let mut w = Writer::with_version(FORMAT_V4);
    w.u64(e.sequence);
    match &e.kind {
        AddressEventKind::Feedback {
            kind,
            reason,
            event_id,
        } => {
            w.u8(1);
            w.u8(feedback_tag(*kind));
            w.u8(reason_tag(*reason));
            w.str(event_id.as_str());
        }
        AddressEventKind::Manual(status) => {
            w.u8(2);
            w.u8(status_tag(*status));
        }
        AddressEventKind::Release => w.u8(3),
    }
    w.i64(e.occurred_at);
    w.i64(e.recorded_at);
    w.u8(status_tag(e.old_status));
    w.u8(status_tag(e.new_status));
    put_context(&mut w, &e.context);
    w.i64(e.folded_at);
    match &e.checkpoint {
        None => w.u8(0),
        Some(state) => {
            w.u8(1);
            // The state as its own record, length-prefixed.
            let bytes = encode_address_state(state);
            w.u64(bytes.len() as u64);
            w.0.extend_from_slice(&bytes);
        }
    }
    match &e.rules {
        None => w.u8(0),
        Some(rules) => {
            w.u8(1);
            w.u64(u64::from(rules.soft_error_threshold));
            put_opt_duration(&mut w, Some(rules.significant_error_interval));
            put_opt_duration(&mut w, Some(rules.error_reset_period));
            put_opt_duration(&mut w, Some(rules.mailbox_full_reset_period));
        }
    }
    w.0
}

/// The rules of an address log entry (format 4 on); `None` before.
fn get_event_rules(r: &mut Reader<'_>) -> Result<Option<QuarantineRules>, CodecError> {
    if r.version() < FORMAT_V4 || r.u8()? == 0 {
        return Ok(None);
    }
    let soft_error_threshold = r.u32()?;
    let mut period = || get_opt_duration(r).map(Option::unwrap_or_default);
    Ok(Some(QuarantineRules {
        soft_error_threshold,
        significant_error_interval: period()?,
        error_reset_period: period()?,
        mailbox_full_reset_period: period()?,
    }))
}

/// Decodes an address log entry.
pub(crate) fn decode_address_event(bytes: &[u8]) -> Result<AddressEvent, CodecError> {
    let mut r = Reader::new(bytes)?;
    let sequence = r.u64()?;
    let kind = match r.u8()? {
        1 => AddressEventKind::Feedback {
            kind: r.tag()?,
            reason: r.tag()?,
            event_id: EventId::from_trusted(r.string()?),
        },
        2 => AddressEventKind::Manual(r.tag()?),
        3 => AddressEventKind::Release,
        tag => {
            return Err(CodecError::BadTag {
                what: "address event",
                tag,
            });
        }
    };
    let occurred_at = r.i64()?;
    let recorded_at = r.i64()?;
    let old_status = r.tag()?;
    let new_status = r.tag()?;
    let context = get_context(&mut r)?;
    let (folded_at, checkpoint) = if r.version() >= FORMAT_V3 {
        let folded_at = r.i64()?;
        let checkpoint = match r.u8()? {
            0 => None,
            _ => {
                let len = usize::try_from(r.u64()?).map_err(|_| CodecError::Truncated)?;
                Some(Box::new(decode_address_state(r.take(len)?)?))
            }
        };
        (folded_at, checkpoint)
    } else {
        (occurred_at, None)
    };
    let rules = get_event_rules(&mut r)?;
    Ok(AddressEvent {
        sequence,
        kind,
        occurred_at,
        recorded_at,
        old_status,
        new_status,
        context,
        folded_at,
        checkpoint,
        rules,
    })
}

/// Encodes the changes of one committed transaction: what the PostgreSQL
/// store's change feed carries to every replica (the state after each
/// change, as [`FeedChange`] holds it).
pub(crate) fn encode_changes(changes: &[FeedChange]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u64(changes.len() as u64);
    for change in changes {
        match change {
            FeedChange::Profile { tenant, profile } => {
                w.u8(1);
                w.str(tenant.as_str());
                w.str(profile.id.as_str());
                w.bytes(&encode_profile(profile));
            }
            FeedChange::Address {
                tenant,
                address,
                status,
            } => {
                w.u8(2);
                w.str(tenant.as_str());
                put_address(&mut w, address);
                w.u8(status_tag(*status));
            }
            FeedChange::Subscription {
                tenant,
                profile_id,
                service_id,
                status,
            } => {
                w.u8(3);
                w.str(tenant.as_str());
                w.str(profile_id.as_str());
                w.str(service_id.as_str());
                w.u8(subscription_tag(*status));
            }
            FeedChange::TenantSettings { tenant, settings } => {
                w.u8(4);
                w.str(tenant.as_str());
                w.bytes(&encode_tenant_settings(settings));
            }
            FeedChange::Service { tenant, service } => {
                w.u8(5);
                w.str(tenant.as_str());
                w.str(service.id.as_str());
                w.bytes(&encode_service(service));
            }
            FeedChange::UsageOptOut {
                tenant,
                user_id,
                opted_out,
            } => {
                w.u8(6);
                w.str(tenant.as_str());
                w.str(user_id.as_str());
                w.u8(u8::from(*opted_out));
            }
            FeedChange::Reset => w.u8(8),
            FeedChange::AddressConsent {
                tenant,
                address,
                opted_out,
            } => {
                w.u8(7);
                w.str(tenant.as_str());
                put_address(&mut w, address);
                w.u8(*opted_out);
            }
            FeedChange::ProfileErased { tenant, profile_id } => {
                w.u8(9);
                w.str(tenant.as_str());
                w.str(profile_id.as_str());
            }
        }
    }
    w.0
}

fn put_address(w: &mut Writer, address: &Address) {
    w.u8(kind_tag(address.kind()));
    w.str(address.as_str());
}

fn get_address(r: &mut Reader<'_>) -> Result<Address, CodecError> {
    let kind = r.tag()?;
    Ok(Address::from_trusted(kind, r.string()?))
}

fn get_tenant(r: &mut Reader<'_>) -> Result<Tenant, CodecError> {
    Tenant::parse(&r.string()?).map_err(|_| CodecError::BadTag {
        what: "tenant",
        tag: 0,
    })
}

/// Decodes what [`encode_changes`] wrote.
pub(crate) fn decode_changes(bytes: &[u8]) -> Result<Vec<FeedChange>, CodecError> {
    let mut r = Reader::new(bytes)?;
    let count = r.len()?;
    let mut changes = Vec::with_capacity(count);
    for _ in 0..count {
        let change = match r.u8()? {
            1 => {
                let tenant = get_tenant(&mut r)?;
                let id = ProfileId::from_trusted(r.string()?);
                let bytes = r.bytes()?;
                FeedChange::Profile {
                    tenant,
                    profile: Box::new(decode_profile(id, bytes)?),
                }
            }
            2 => FeedChange::Address {
                tenant: get_tenant(&mut r)?,
                address: get_address(&mut r)?,
                status: r.tag()?,
            },
            3 => FeedChange::Subscription {
                tenant: get_tenant(&mut r)?,
                profile_id: ProfileId::from_trusted(r.string()?),
                service_id: ServiceId::from_trusted(r.string()?),
                status: r.tag()?,
            },
            4 => FeedChange::TenantSettings {
                tenant: get_tenant(&mut r)?,
                settings: decode_tenant_settings(r.bytes()?)?,
            },
            5 => {
                let tenant = get_tenant(&mut r)?;
                let id = ServiceId::from_trusted(r.string()?);
                FeedChange::Service {
                    tenant,
                    service: decode_service(id, r.bytes()?)?,
                }
            }
            6 => FeedChange::UsageOptOut {
                tenant: get_tenant(&mut r)?,
                user_id: UserId::from_trusted(r.string()?),
                opted_out: r.u8()? != 0,
            },
            7 => FeedChange::AddressConsent {
                tenant: get_tenant(&mut r)?,
                address: get_address(&mut r)?,
                opted_out: r.u8()?,
            },
            8 => FeedChange::Reset,
            9 => FeedChange::ProfileErased {
                tenant: get_tenant(&mut r)?,
                profile_id: ProfileId::from_trusted(r.string()?),
            },
            tag => {
                return Err(CodecError::BadTag {
                    what: "feed change",
                    tag,
                });
            }
        };
        changes.push(change);
    }
    Ok(changes)
}

/// For the fuzz target `record_codec` (not an API): decodes `bytes[1..]` as
/// the record type `bytes[0]` selects (mod 10), and checks that a value that
/// decodes encodes to bytes that decode to the same value. Returns whether
/// the bytes decoded. Panics only when that round trip fails.
#[doc(hidden)]
#[allow(clippy::missing_panics_doc)]
pub fn fuzz_decode_record(bytes: &[u8]) -> bool {
    fn round_trip<T: PartialEq + std::fmt::Debug>(
        decoded: Result<T, CodecError>,
        encode: impl Fn(&T) -> Vec<u8>,
        decode: impl Fn(&[u8]) -> Result<T, CodecError>,
    ) -> bool {
        let Ok(value) = decoded else {
            return false;
        };
        let again = decode(&encode(&value));
        assert_eq!(again.as_ref().ok(), Some(&value), "{again:?}");
        true
    }
    let Some((&selector, value)) = bytes.split_first() else {
        return false;
    };
    let (Ok(profile_id), Ok(service_id), Ok(user_id)) = (
        ProfileId::parse("p"),
        ServiceId::parse("s"),
        UserId::parse("u"),
    ) else {
        return false;
    };
    match selector % 10 {
        0 => round_trip(
            decode_profile(profile_id.clone(), value),
            encode_profile,
            |b| decode_profile(profile_id.clone(), b),
        ),
        1 => round_trip(
            decode_consent_entry(value),
            encode_consent_entry,
            decode_consent_entry,
        ),
        2 => round_trip(
            decode_tenant_settings(value),
            encode_tenant_settings,
            decode_tenant_settings,
        ),
        3 => round_trip(
            decode_service(service_id.clone(), value),
            encode_service,
            |b| decode_service(service_id.clone(), b),
        ),
        4 => round_trip(
            decode_subscription(service_id.clone(), value),
            encode_subscription,
            |b| decode_subscription(service_id.clone(), b),
        ),
        5 => round_trip(decode_token(value, 0), encode_token, |b| decode_token(b, 0)),
        6 => round_trip(
            decode_usage_opt_out(user_id.clone(), value),
            encode_usage_opt_out,
            |b| decode_usage_opt_out(user_id.clone(), b),
        ),
        7 => round_trip(
            decode_address_state(value),
            encode_address_state,
            decode_address_state,
        ),
        8 => round_trip(
            decode_address_event(value),
            encode_address_event,
            decode_address_event,
        ),
        _ => decode_address_status(value).is_ok() | decode_subscription_status(value).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ProfileAddresses;

    fn ctx() -> ChangeContext {
        ChangeContext {
            source: Source::LandingPage,
            actor: "ü-actor".into(),
            reason: "because".into(),
            principal: "web-signup".into(),
            proof: Proof::new("2001:db8::7", "Mozilla/5.0", "notice-v3", Some(-3))
                .expect("valid proof"),
        }
    }

    #[test]
    fn feed_changes_round_trip_in_order() {
        let tenant = Tenant::parse("acme").expect("valid");
        let profile = Profile::new(
            ProfileId::parse("p\u{0}1").expect("valid"),
            ProfileAddresses {
                emails: vec![Address::email("a@b.io").expect("valid")],
                ..ProfileAddresses::default()
            },
            7,
        );
        let phone = Address::phone("+33612345678").expect("valid");
        let changes = vec![
            FeedChange::Reset,
            FeedChange::Profile {
                tenant: tenant.clone(),
                profile: Box::new(profile),
            },
            FeedChange::Address {
                tenant: tenant.clone(),
                address: phone.clone(),
                status: AddressStatus::Denylisted,
            },
            FeedChange::Subscription {
                tenant: tenant.clone(),
                profile_id: ProfileId::parse("p").expect("valid"),
                service_id: ServiceId::parse("news").expect("valid"),
                status: SubscriptionStatus::Unsubscribed,
            },
            FeedChange::TenantSettings {
                tenant: tenant.clone(),
                settings: TenantSettings::default(),
            },
            FeedChange::Service {
                tenant: tenant.clone(),
                service: Service {
                    id: ServiceId::parse("news").expect("valid"),
                    name: "News".into(),
                    channel: Channel::Sms,
                    double_opt_in: true,
                    created_at: 3,
                },
            },
            FeedChange::UsageOptOut {
                tenant: tenant.clone(),
                user_id: UserId::parse("u").expect("valid"),
                opted_out: false,
            },
            FeedChange::AddressConsent {
                tenant: tenant.clone(),
                address: phone,
                opted_out: 0b10,
            },
            FeedChange::ProfileErased {
                tenant,
                profile_id: ProfileId::parse("gone").expect("valid"),
            },
        ];
        let bytes = encode_changes(&changes);
        assert_eq!(decode_changes(&bytes).expect("decodes"), changes);
        // Cut anywhere: an error, never a panic or a shorter list.
        for end in 0..bytes.len() {
            assert!(decode_changes(&bytes[..end]).is_err(), "cut at {end}");
        }
    }

    #[test]
    fn erasure_records_round_trip() {
        let stone = Tombstone {
            all_channels: true,
            channels: 0b1_0010,
        };
        assert_eq!(
            decode_tombstone(&encode_tombstone(&stone)).ok(),
            Some(stone)
        );
        let key = ErasureKey([7; ERASURE_KEY_BYTES]);
        assert_eq!(
            decode_erasure_key(&encode_erasure_key(&key)).ok(),
            Some(key.clone())
        );
        let short = encode_erasure_key(&key);
        assert!(decode_erasure_key(&short[..short.len() - 1]).is_err());
        let erasure = Erasure {
            erased_at: -5,
            id: u64::MAX,
            context: ctx(),
            tombstones: 3,
            history_entries: 12,
            subscriptions: 2,
        };
        assert_eq!(
            decode_erasure(&encode_erasure(&erasure)).ok(),
            Some(erasure)
        );
    }

    #[test]
    fn profile_round_trips() {
        let mut p = Profile::new(
            ProfileId::parse("p-1").expect("valid"),
            ProfileAddresses {
                emails: vec![Address::email("a@b.io").expect("valid")],
                phones: vec![Address::phone("+33123456789").expect("valid")],
                push_tokens: vec![Address::push_token("tok").expect("valid")],
                postal_address: "1 rue X".into(),
            },
            42,
        );
        p.set_consent(
            Scope::Channel(Channel::Voice),
            ConsentStatus::OptedOut,
            &ctx(),
            50,
        );
        p.set_consent(Scope::AllChannels, ConsentStatus::OptedIn, &ctx(), -5);
        let bytes = encode_profile(&p);
        let back = decode_profile(p.id.clone(), &bytes).expect("decodes");
        assert_eq!(back, p);
        for cut in 0..bytes.len() {
            assert!(
                decode_profile(p.id.clone(), &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn entries_and_states_round_trip() {
        let entry = ConsentHistoryEntry {
            sequence: 300,
            changed_at: 1_700_000_000_000,
            change: Change::Consent {
                scope: Scope::AllChannels,
                old_status: ConsentStatus::NoPreference,
                new_status: ConsentStatus::OptedOut,
            },
            context: ctx(),
        };
        let back = decode_consent_entry(&encode_consent_entry(&entry)).expect("decodes");
        assert_eq!(back, entry);
        let subscription_entry = ConsentHistoryEntry {
            change: Change::Subscription {
                service_id: ServiceId::parse("news").expect("valid"),
                channel: Channel::Sms,
                change: SubscriptionChange {
                    old: None,
                    new: SubscriptionStatus::PendingConfirmation,
                },
            },
            ..entry.clone()
        };
        let bytes = encode_consent_entry(&subscription_entry);
        assert_eq!(
            decode_consent_entry(&bytes).expect("decodes"),
            subscription_entry
        );
        for cut in 0..bytes.len() {
            assert!(decode_consent_entry(&bytes[..cut]).is_err(), "cut at {cut}");
        }

        let state = AddressState {
            status: AddressStatus::WithErrors,
            error_count: 3,
            first_error_at: Some(1),
            last_error_at: Some(2),
            last_error_reason: ErrorReason::MailboxFull,
            last_reason: "soft".into(),
            updated_at: Some(2),
            last_event_at: None,
            log_seq: 9,
            log: LogMeta {
                len: 7,
                since_checkpoint: 3,
                start: Some(EventKey {
                    at: -4,
                    sequence: 2,
                }),
            },
        };
        let bytes = encode_address_state(&state);
        assert_eq!(decode_address_state(&bytes).expect("decodes"), state);
        assert_eq!(
            decode_address_status(&bytes).expect("decodes"),
            state.status
        );

        for kind in [
            AddressEventKind::Feedback {
                kind: FeedbackKind::SoftBounce,
                reason: ErrorReason::Refused,
                event_id: EventId::parse("ev").expect("valid"),
            },
            AddressEventKind::Manual(AddressStatus::Denylisted),
            AddressEventKind::Release,
        ] {
            let rules = QuarantineRules {
                soft_error_threshold: 2,
                significant_error_interval: Duration::from_millis(3),
                error_reset_period: Duration::from_millis(4),
                mailbox_full_reset_period: Duration::from_millis(5),
            };
            for (checkpoint, rules) in [
                (None, None),
                (Some(Box::new(state.clone())), Some(rules)),
                (None, Some(QuarantineRules::default())),
            ] {
                let event = AddressEvent {
                    sequence: 1,
                    kind: kind.clone(),
                    occurred_at: 5,
                    recorded_at: 6,
                    old_status: AddressStatus::Valid,
                    new_status: AddressStatus::Denylisted,
                    context: ctx(),
                    folded_at: 8,
                    checkpoint,
                    rules,
                };
                let bytes = encode_address_event(&event);
                assert_eq!(decode_address_event(&bytes).expect("decodes"), event);
                for cut in 0..bytes.len() {
                    assert!(decode_address_event(&bytes[..cut]).is_err(), "cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn format_3_log_entries_decode_without_rules() {
        let event = AddressEvent {
            sequence: 3,
            kind: AddressEventKind::Release,
            occurred_at: 5,
            recorded_at: 6,
            old_status: AddressStatus::Quarantined,
            new_status: AddressStatus::Valid,
            context: ctx(),
            folded_at: 7,
            checkpoint: None,
            rules: Some(QuarantineRules::default()),
        };
        let mut v3 = encode_address_event(&event);
        assert_eq!(v3[0], FORMAT_V4);
        // Format 3 is format 4 without the trailing rules.
        v3[0] = FORMAT_V3;
        v3.truncate(v3.len() - 1 - 1 - 3 * 9);
        let decoded = decode_address_event(&v3).expect("decodes");
        assert_eq!(
            decoded,
            AddressEvent {
                rules: None,
                ..event
            }
        );
    }

    #[test]
    fn version_1_entries_still_decode() {
        // A history entry as the first release wrote it: version, sequence 1,
        // time 0, channel SMS, NO_PREFERENCE -> OPTED_OUT, source API, actor "a", reason "".
        let mut v1 = vec![FORMAT_V1, 1];
        v1.extend_from_slice(&0i64.to_be_bytes());
        v1.extend_from_slice(&[2, 1, 3, 3, 1, b'a', 0]);
        let entry = decode_consent_entry(&v1).expect("decodes");
        assert_eq!(
            entry.change,
            Change::Consent {
                scope: Scope::Channel(Channel::Sms),
                old_status: ConsentStatus::NoPreference,
                new_status: ConsentStatus::OptedOut,
            }
        );
        assert_eq!(entry.context.actor, "a");
        assert_eq!(entry.context.proof, Proof::default());
    }

    #[test]
    fn new_records_round_trip() {
        let settings = TenantSettings {
            regimes: [
                Regime::OptIn,
                Regime::OptOut,
                Regime::OptIn,
                Regime::OptOut,
                Regime::OptOut,
            ],
            rules: RuleOverrides {
                soft_error_threshold: Some(3),
                error_reset_period: Some(Duration::from_secs(60)),
                ..RuleOverrides::default()
            },
            updated_at: Some(9),
            default_region: Region::parse("SE").ok(),
            display_name: "Acme".to_owned(),
            privacy_policy_url: "https://acme.example/p".to_owned(),
        };
        let bytes = encode_tenant_settings(&settings);
        assert_eq!(decode_tenant_settings(&bytes).expect("decodes"), settings);
        // Settings written before the page branding existed end before it.
        let unbranded = TenantSettings {
            display_name: String::new(),
            privacy_policy_url: String::new(),
            ..settings.clone()
        };
        let branding = 1 + "Acme".len() + 1 + "https://acme.example/p".len();
        let before_branding = &bytes[..bytes.len() - branding];
        assert_eq!(
            decode_tenant_settings(before_branding).expect("decodes"),
            unbranded
        );
        // Settings written before the default region existed end before it.
        let without = TenantSettings {
            default_region: None,
            ..unbranded.clone()
        };
        let old = &before_branding[..before_branding.len() - 3];
        assert_eq!(decode_tenant_settings(old).expect("decodes"), without);
        assert_eq!(
            decode_tenant_settings(&encode_tenant_settings(&without)).expect("decodes"),
            without
        );

        let id = ServiceId::parse("weekly").expect("valid");
        let service = Service {
            id: id.clone(),
            name: "Weekly ü".into(),
            channel: Channel::Email,
            double_opt_in: true,
            created_at: 5,
        };
        let bytes = encode_service(&service);
        assert_eq!(
            decode_service(id.clone(), &bytes).expect("decodes"),
            service
        );

        let subscription = Subscription {
            service_id: id.clone(),
            status: SubscriptionStatus::PendingConfirmation,
            changed_at: 7,
            pending: Some(PendingConfirmation {
                token_hash: TokenHash([7; 32]),
                expires_at: 99,
            }),
        };
        let bytes = encode_subscription(&subscription);
        assert_eq!(
            decode_subscription(id.clone(), &bytes).expect("decodes"),
            subscription
        );
        for cut in 0..bytes.len() {
            assert!(decode_subscription(id.clone(), &bytes[..cut]).is_err());
        }

        let token = TokenRecord {
            profile_id: ProfileId::parse("p").expect("valid"),
            service_id: id,
            used_at: Some(3),
            expires_at: 99,
        };
        assert_eq!(
            decode_token(&encode_token(&token), 0).expect("decodes"),
            token
        );
        // A record written before V3 reads with the expiry it is given.
        let mut v2 = encode_token(&token);
        v2[0] = FORMAT_V2;
        v2.truncate(v2.len() - 8);
        assert_eq!(
            decode_token(&v2, 42).expect("decodes").expires_at,
            42,
            "a V2 token has no expiry of its own"
        );

        let user = UserId::parse("u-1").expect("valid");
        let opt_out = UsageOptOut {
            user_id: user.clone(),
            opted_out_at: 11,
            context: ctx(),
        };
        let mut consent = AddressConsent::default();
        let phone = Address::phone("+33612345678").expect("valid");
        consent
            .set(&phone, Channel::Sms, true, 5, &ctx())
            .expect("sms");
        consent
            .set(&phone, Channel::Voice, true, 6, &ctx())
            .expect("voice");
        consent
            .set(&phone, Channel::Voice, false, 7, &ctx())
            .expect("voice back in");
        let bytes = encode_address_consent(&consent);
        assert_eq!(decode_address_consent(&bytes).expect("decodes"), consent);
        assert!(decode_address_consent(&bytes[..bytes.len() - 1]).is_err());
        let bytes = encode_usage_opt_out(&opt_out);
        assert_eq!(
            decode_usage_opt_out(user, &bytes).expect("decodes"),
            opt_out
        );
    }

    #[test]
    fn unknown_versions_are_refused() {
        assert!(matches!(
            decode_address_state(&[9, 1]),
            Err(CodecError::Version(9))
        ));
    }
}
