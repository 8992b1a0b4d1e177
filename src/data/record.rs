//! The export format: one JSON object per line, tagged by `type`.
//!
//! These serde types are the format's contract, kept apart from the domain
//! types on purpose (as the protos are for the API): a field renamed in the
//! engine must not silently change the files operators keep. Enum values are
//! the proto names without their prefix (`OPTED_OUT`, `QUARANTINED`,
//! `DELIVERY_FEEDBACK`); times are milliseconds since the Unix epoch (`*_ms`),
//! durations milliseconds too; SHA-256 hashes are 64 lower-case hex digits.
//!
//! Reading a record validates it with the engine's parsers ([`Record::into_item`]),
//! so that an edited or damaged file cannot put an invalid value in the store.
//!
//! A new record type is one new [`Record`] variant with its struct, one arm
//! in [`Record::from_item`] and one in [`Record::into_item`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    engine::{
        ACTOR_LEN_MAX, ADDRESSES_PER_KIND_MAX, Address, AddressConsent, AddressEvent,
        AddressEventKind, AddressHash, AddressKind, AddressMark, AddressState, AddressStatus,
        Change, ChangeContext, Channel, ConsentHistoryEntry, ConsentMark, ConsentState,
        ConsentStatus, Erasure, ErasureKey, ErrorReason, EventId, EventKey, FeedbackKind, LogMeta,
        PendingConfirmation, Profile, ProfileId, Proof, QuarantineRules, REASON_LEN_MAX, Regime,
        Region, RuleOverrides, SERVICE_NAME_LEN_MAX, Scope, Service, ServiceId, Source,
        Subscription, SubscriptionChange, SubscriptionStatus, Tenant, TenantSettings, TokenHash,
        TokenRecord, Tombstone, UnixMillis, UsageOptOut, UserId, check_channel, parse_display_name,
        parse_name, parse_postal_address, parse_privacy_policy_url,
    },
    store::DumpItem,
};

/// The `format` of the header line.
pub const FORMAT_NAME: &str = "consentd-export";
/// The version of the format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// The first line: what the file is.
    Header(Header),
    /// A profile with its addresses and consent.
    Profile(ProfileRecord),
    /// One entry of a profile's consent history.
    ConsentHistory(ConsentHistoryRecord),
    /// The state of an address.
    AddressState(AddressStateRecord),
    /// One entry of an address's log.
    AddressEvent(AddressEventRecord),
    /// A feedback event id already recorded (so that a redelivery is ignored).
    FeedbackEventId(FeedbackEventIdRecord),
    /// A tenant's settings: regimes and quarantine rule overrides.
    TenantSettings(TenantSettingsRecord),
    /// A service (newsletter or topic).
    Service(ServiceRecord),
    /// A profile's subscription to a service.
    Subscription(SubscriptionRecord),
    /// A double opt-in confirmation token, by its hash (the token itself is never stored).
    ConfirmationToken(ConfirmationTokenRecord),
    /// A product user's usage opt-out.
    UsageOptOut(UsageOptOutRecord),
    /// An address's opt-outs, per channel.
    AddressConsent(AddressConsentRecord),
    /// A tenant's erasure secret (the key of its tombstones' hashes).
    ErasureKey(ErasureKeyRecord),
    /// What an erased person had opted out of, under the keyed hash of one
    /// of their addresses.
    Tombstone(TombstoneRecord),
    /// The record of one erasure (no personal data of the person erased).
    Erasure(ErasureRecord),
}

/// The header line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written by this build.
    pub version: u32,
    /// The consentd version that wrote the file.
    pub written_by: String,
    /// When the export was taken (ms since the Unix epoch).
    pub created_at_ms: UnixMillis,
    /// The one tenant exported, or `null` for all.
    pub tenant: Option<String>,
}

impl Header {
    /// A header for an export taken now.
    pub fn new(tenant: Option<&Tenant>, created_at_ms: UnixMillis) -> Self {
        Self {
            format: FORMAT_NAME.to_owned(),
            version: FORMAT_VERSION,
            written_by: format!("consentd {}", env!("CARGO_PKG_VERSION")),
            created_at_ms,
            tenant: tenant.map(|t| t.as_str().to_owned()),
        }
    }

    /// Checks that a file is an export this build can read.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT_NAME {
            return Err(format!(
                "format is '{}', expected '{FORMAT_NAME}'",
                self.format
            ));
        }
        if self.version != FORMAT_VERSION {
            return Err(format!(
                "format version {} is not supported (this build reads version {FORMAT_VERSION})",
                self.version
            ));
        }
        Ok(())
    }
}

/// Mirrors an engine enum as a serde enum with SCREAMING_SNAKE_CASE names.
macro_rules! mirror {
    ($(#[$doc:meta])* $name:ident <=> $engine:ident { $($variant:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        #[allow(missing_docs)]
        pub enum $name { $($variant),* }

        impl From<$engine> for $name {
            fn from(value: $engine) -> Self {
                match value { $($engine::$variant => Self::$variant),* }
            }
        }

        impl From<$name> for $engine {
            fn from(value: $name) -> Self {
                match value { $($name::$variant => Self::$variant),* }
            }
        }
    };
}

mirror!(
    /// A consent setting.
    ConsentStatusName <=> ConsentStatus { NoPreference, OptedIn, OptedOut }
);
mirror!(
    /// Where a change came from.
    SourceName <=> Source { LandingPage, Operator, Api, Import, DeliveryFeedback }
);
mirror!(
    /// An address kind.
    AddressTypeName <=> AddressKind { Email, Phone, PushToken }
);
mirror!(
    /// An address status.
    AddressStatusName <=> AddressStatus { Valid, WithErrors, Quarantined, Denylisted }
);
mirror!(
    /// A channel.
    ChannelName <=> Channel { Email, Sms, Push, Voice, DirectMail }
);
mirror!(
    /// Where a subscription stands.
    SubscriptionStatusName <=> SubscriptionStatus { PendingConfirmation, Active, Unsubscribed }
);
mirror!(
    /// A channel's regime.
    RegimeName <=> Regime { OptOut, OptIn }
);
mirror!(
    /// A delivery feedback kind.
    FeedbackKindName <=> FeedbackKind { HardBounce, SoftBounce, Ignored, Complaint, Delivered }
);
mirror!(
    /// A delivery error reason.
    ErrorReasonName <=> ErrorReason {
        Unspecified, UserUnknown, InvalidDomain, Unreachable, AccountDisabled, MailboxFull,
        Refused, NotConnected, Other,
    }
);

/// The scope of a consent change: every channel, or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum ScopeName {
    AllChannels,
    Email,
    Sms,
    Push,
    Voice,
    DirectMail,
}

impl From<Scope> for ScopeName {
    fn from(scope: Scope) -> Self {
        match scope {
            Scope::AllChannels => Self::AllChannels,
            Scope::Channel(Channel::Email) => Self::Email,
            Scope::Channel(Channel::Sms) => Self::Sms,
            Scope::Channel(Channel::Push) => Self::Push,
            Scope::Channel(Channel::Voice) => Self::Voice,
            Scope::Channel(Channel::DirectMail) => Self::DirectMail,
        }
    }
}

impl From<ScopeName> for Scope {
    fn from(scope: ScopeName) -> Self {
        match scope {
            ScopeName::AllChannels => Scope::AllChannels,
            ScopeName::Email => Scope::Channel(Channel::Email),
            ScopeName::Sms => Scope::Channel(Channel::Sms),
            ScopeName::Push => Scope::Channel(Channel::Push),
            ScopeName::Voice => Scope::Channel(Channel::Voice),
            ScopeName::DirectMail => Scope::Channel(Channel::DirectMail),
        }
    }
}

/// Who made a change, how and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextRecord {
    /// Where the change came from.
    pub source: SourceName,
    /// Who made it (may be empty).
    pub actor: String,
    /// Why (may be empty).
    pub reason: String,
    /// The authenticated caller (API key name); empty when access control was off.
    pub principal: String,
    /// Proof of consent: the person's IP address (canonical text form), or `null`.
    pub ip_address: Option<String>,
    /// Proof of consent: the person's User-Agent (may be empty).
    pub user_agent: String,
    /// Proof of consent: the notice version the person saw (may be empty).
    pub notice_version: String,
    /// Proof of consent: when the person acted, if given.
    pub collected_at_ms: Option<UnixMillis>,
}

impl From<&ChangeContext> for ContextRecord {
    fn from(c: &ChangeContext) -> Self {
        Self {
            source: c.source.into(),
            actor: c.actor.clone(),
            reason: c.reason.clone(),
            principal: c.principal.clone(),
            ip_address: c.proof.ip_address.map(|ip| ip.to_string()),
            user_agent: c.proof.user_agent.clone(),
            notice_version: c.proof.notice_version.clone(),
            collected_at_ms: c.proof.collected_at,
        }
    }
}

impl ContextRecord {
    fn parse(&self) -> Result<ChangeContext, String> {
        let mut context = ChangeContext::new(self.source.into(), &self.actor, &self.reason)
            .map_err(|(field, e)| format!("context.{field}: {e}"))?;
        if self.principal.len() > ACTOR_LEN_MAX {
            return Err(format!(
                "context.principal: {} bytes, at most {ACTOR_LEN_MAX} are allowed",
                self.principal.len()
            ));
        }
        context.principal.clone_from(&self.principal);
        context.proof = Proof::new(
            self.ip_address.as_deref().unwrap_or(""),
            &self.user_agent,
            &self.notice_version,
            self.collected_at_ms,
        )
        .map_err(|(field, e)| format!("context.{field}: {e}"))?;
        Ok(context)
    }
}

/// The setting of one consent scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkRecord {
    /// The setting.
    pub status: ConsentStatusName,
    /// When it last changed; `null` if never set.
    pub changed_at_ms: Option<UnixMillis>,
    /// By what source it last changed; `null` if never set.
    pub source: Option<SourceName>,
}

impl From<&ConsentMark> for MarkRecord {
    fn from(m: &ConsentMark) -> Self {
        Self {
            status: m.status.into(),
            changed_at_ms: m.changed.map(|(at, _)| at),
            source: m.changed.map(|(_, source)| source.into()),
        }
    }
}

impl MarkRecord {
    fn parse(&self, field: &str) -> Result<ConsentMark, String> {
        let changed = match (self.changed_at_ms, self.source) {
            (Some(at), Some(source)) => Some((at, source.into())),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "{field}: changed_at_ms and source are both set or both null"
                ));
            }
        };
        Ok(ConsentMark {
            status: self.status.into(),
            changed,
        })
    }
}

/// A profile's consent: the all-channels setting and one per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRecord {
    /// The all-channels setting.
    pub all_channels: MarkRecord,
    /// E-mail.
    pub email: MarkRecord,
    /// Text messages.
    pub sms: MarkRecord,
    /// Push notifications.
    pub push: MarkRecord,
    /// Voice calls.
    pub voice: MarkRecord,
    /// Letters.
    pub direct_mail: MarkRecord,
}

/// A profile record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRecord {
    /// Its tenant.
    pub tenant: String,
    /// Its id.
    pub profile_id: String,
    /// E-mail addresses.
    pub emails: Vec<String>,
    /// Phone numbers (E.164).
    pub phones: Vec<String>,
    /// Push tokens.
    pub push_tokens: Vec<String>,
    /// Postal address; empty for none.
    pub postal_address: String,
    /// Consent.
    pub consent: ConsentRecord,
    /// Sequence of the last consent history entry (0: none).
    pub history_seq: u64,
    /// When the profile was first stored.
    pub created_at_ms: UnixMillis,
    /// When its addresses were last written.
    pub updated_at_ms: UnixMillis,
}

/// A consent history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentHistoryRecord {
    /// Its tenant.
    pub tenant: String,
    /// The profile.
    pub profile_id: String,
    /// Position in the profile's history, from 1.
    pub sequence: u64,
    /// When the change was made.
    pub changed_at_ms: UnixMillis,
    /// What changed.
    pub change: ChangeRecord,
    /// Who, how and why.
    pub context: ContextRecord,
}

/// What a consent history entry changed: a consent setting or a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
pub enum ChangeRecord {
    /// An opt-in or opt-out.
    Consent {
        /// The setting changed.
        scope: ScopeName,
        /// The setting before.
        old_status: ConsentStatusName,
        /// The setting after.
        new_status: ConsentStatusName,
    },
    /// A subscription to a service changed.
    Subscription {
        /// The service.
        service_id: String,
        /// The service's channel.
        channel: ChannelName,
        /// The status before; `null` when the profile had never subscribed.
        old_status: Option<SubscriptionStatusName>,
        /// The status after.
        new_status: SubscriptionStatusName,
    },
}

impl From<&Change> for ChangeRecord {
    fn from(change: &Change) -> Self {
        match change {
            Change::Consent {
                scope,
                old_status,
                new_status,
            } => ChangeRecord::Consent {
                scope: (*scope).into(),
                old_status: (*old_status).into(),
                new_status: (*new_status).into(),
            },
            Change::Subscription {
                service_id,
                channel,
                change,
            } => ChangeRecord::Subscription {
                service_id: service_id.as_str().to_owned(),
                channel: (*channel).into(),
                old_status: change.old.map(Into::into),
                new_status: change.new.into(),
            },
        }
    }
}

impl ChangeRecord {
    fn parse(&self) -> Result<Change, String> {
        Ok(match self {
            ChangeRecord::Consent {
                scope,
                old_status,
                new_status,
            } => Change::Consent {
                scope: (*scope).into(),
                old_status: (*old_status).into(),
                new_status: (*new_status).into(),
            },
            ChangeRecord::Subscription {
                service_id,
                channel,
                old_status,
                new_status,
            } => Change::Subscription {
                service_id: service_id_of(service_id, "change.service_id")?,
                channel: (*channel).into(),
                change: SubscriptionChange {
                    old: old_status.map(Into::into),
                    new: (*new_status).into(),
                },
            },
        })
    }
}

/// An address state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressStateRecord {
    /// Its tenant.
    pub tenant: String,
    /// The address kind.
    pub address_type: AddressTypeName,
    /// The address (normalised).
    pub address: String,
    /// The status as of the last event.
    pub status: AddressStatusName,
    /// Soft errors counted since the address was last VALID.
    pub error_count: u32,
    /// Event time of the first counted error.
    pub first_error_at_ms: Option<UnixMillis>,
    /// Event time of the last counted error.
    pub last_error_at_ms: Option<UnixMillis>,
    /// Reason of the last counted error or hard bounce.
    pub last_error_reason: ErrorReasonName,
    /// Reason text of the last status change.
    pub last_reason: String,
    /// Event time of the last status change.
    pub updated_at_ms: Option<UnixMillis>,
    /// Latest event time folded in.
    pub last_event_at_ms: Option<UnixMillis>,
    /// Sequence of the last log entry.
    pub log_seq: u64,
    /// How the address's log is kept; absent in files from before format 3
    /// (the log was then never pruned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogRecord>,
}

/// How an address's log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRecord {
    /// Entries kept.
    pub len: u32,
    /// Entries after the newest checkpoint.
    pub since_checkpoint: u32,
    /// The oldest entry kept once older ones were dropped: its event time
    /// and sequence, or `null`.
    pub start_at_ms: Option<UnixMillis>,
    /// See `start_at_ms`.
    pub start_sequence: Option<u64>,
}

/// The state of an address right after one log entry (a checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRecord {
    /// The status.
    pub status: AddressStatusName,
    /// Soft errors counted.
    pub error_count: u32,
    /// Event time of the first counted error.
    pub first_error_at_ms: Option<UnixMillis>,
    /// Event time of the last counted error.
    pub last_error_at_ms: Option<UnixMillis>,
    /// Reason of the last counted error or hard bounce.
    pub last_error_reason: ErrorReasonName,
    /// Reason text of the last status change.
    pub last_reason: String,
    /// Event time of the last status change.
    pub updated_at_ms: Option<UnixMillis>,
    /// Latest event time folded in.
    pub last_event_at_ms: Option<UnixMillis>,
    /// Sequence of the last event folded in.
    pub log_seq: u64,
}

impl From<&AddressState> for CheckpointRecord {
    fn from(s: &AddressState) -> Self {
        Self {
            status: s.status.into(),
            error_count: s.error_count,
            first_error_at_ms: s.first_error_at,
            last_error_at_ms: s.last_error_at,
            last_error_reason: s.last_error_reason.into(),
            last_reason: s.last_reason.clone(),
            updated_at_ms: s.updated_at,
            last_event_at_ms: s.last_event_at,
            log_seq: s.log_seq,
        }
    }
}

impl CheckpointRecord {
    fn parse(self, log: LogMeta) -> Result<AddressState, String> {
        if self.last_reason.len() > REASON_LEN_MAX {
            return Err(format!("last_reason: longer than {REASON_LEN_MAX} bytes"));
        }
        Ok(AddressState {
            status: self.status.into(),
            error_count: self.error_count,
            first_error_at: self.first_error_at_ms,
            last_error_at: self.last_error_at_ms,
            last_error_reason: self.last_error_reason.into(),
            last_reason: self.last_reason,
            updated_at: self.updated_at_ms,
            last_event_at: self.last_event_at_ms,
            log_seq: self.log_seq,
            log,
        })
    }
}

/// What happened to an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKindRecord {
    /// Delivery feedback.
    Feedback {
        /// What the delivery reported.
        feedback_kind: FeedbackKindName,
        /// Why it failed.
        error_reason: ErrorReasonName,
        /// The sender's event id.
        event_id: String,
    },
    /// An operator (or an import) set the status.
    Manual {
        /// QUARANTINED or DENYLISTED.
        status: AddressStatusName,
    },
    /// The address was released.
    Release,
}

/// An address log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressEventRecord {
    /// Its tenant.
    pub tenant: String,
    /// The address kind.
    pub address_type: AddressTypeName,
    /// The address.
    pub address: String,
    /// Position in the address's log, from 1.
    pub sequence: u64,
    /// What happened.
    pub event: EventKindRecord,
    /// Event time.
    pub occurred_at_ms: UnixMillis,
    /// When consentd recorded it.
    pub recorded_at_ms: UnixMillis,
    /// Status before.
    pub old_status: AddressStatusName,
    /// Status after.
    pub new_status: AddressStatusName,
    /// Who, how and why.
    pub context: ContextRecord,
    /// The event time it was folded at, when not `occurred_at_ms` (an event
    /// beyond the late-event horizon); absent before format 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded_at_ms: Option<UnixMillis>,
    /// The address's state right after this entry, on checkpoint entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointRecord>,
    /// The quarantine rules in force when it was received, which every fold
    /// of it uses; absent on entries recorded before they were kept (folded
    /// under the tenant's rules of the moment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<EventRulesRecord>,
}

/// The quarantine rules an address log entry is folded under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRulesRecord {
    /// Soft errors that quarantine an address.
    pub soft_error_threshold: u32,
    /// Least time between two counted soft errors.
    pub significant_error_interval_ms: u64,
    /// Quiet time after which errors are forgotten.
    pub error_reset_period_ms: u64,
    /// Quiet time after which a full mailbox is forgotten.
    pub mailbox_full_reset_period_ms: u64,
}

impl From<&QuarantineRules> for EventRulesRecord {
    fn from(r: &QuarantineRules) -> Self {
        Self {
            soft_error_threshold: r.soft_error_threshold,
            significant_error_interval_ms: millis(r.significant_error_interval),
            error_reset_period_ms: millis(r.error_reset_period),
            mailbox_full_reset_period_ms: millis(r.mailbox_full_reset_period),
        }
    }
}

impl EventRulesRecord {
    /// The rules, validated as a tenant's overrides are.
    fn parse(&self) -> Result<QuarantineRules, String> {
        let overrides = RuleOverrides {
            soft_error_threshold: Some(self.soft_error_threshold),
            significant_error_interval: Some(Duration::from_millis(
                self.significant_error_interval_ms,
            )),
            error_reset_period: Some(Duration::from_millis(self.error_reset_period_ms)),
            mailbox_full_reset_period: Some(Duration::from_millis(
                self.mailbox_full_reset_period_ms,
            )),
        };
        overrides.validate().map_err(|(field, e)| {
            let unit = if field == "soft_error_threshold" {
                ""
            } else {
                "_ms"
            };
            format!("{field}{unit}: {e}")
        })?;
        Ok(QuarantineRules {
            soft_error_threshold: self.soft_error_threshold,
            significant_error_interval: Duration::from_millis(self.significant_error_interval_ms),
            error_reset_period: Duration::from_millis(self.error_reset_period_ms),
            mailbox_full_reset_period: Duration::from_millis(self.mailbox_full_reset_period_ms),
        })
    }
}

/// A recorded feedback event id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackEventIdRecord {
    /// Its tenant.
    pub tenant: String,
    /// The event id.
    pub event_id: String,
    /// The kind of the address the event was about.
    pub address_type: AddressTypeName,
    /// The address.
    pub address: String,
    /// When it was recorded (it expires with the late-event horizon);
    /// absent before format 3, when it is taken as expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at_ms: Option<UnixMillis>,
}

/// A channel's regime per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegimesRecord {
    /// E-mail.
    pub email: RegimeName,
    /// Text messages.
    pub sms: RegimeName,
    /// Push notifications.
    pub push: RegimeName,
    /// Voice calls.
    pub voice: RegimeName,
    /// Letters.
    pub direct_mail: RegimeName,
}

/// A tenant's settings. A rule left `null` follows the server's flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettingsRecord {
    /// Its tenant.
    pub tenant: String,
    /// OPT_OUT or OPT_IN per channel.
    pub regimes: RegimesRecord,
    /// Soft errors that quarantine an address, or `null`.
    pub soft_error_threshold: Option<u32>,
    /// Least time between two counted soft errors, or `null`.
    pub significant_error_interval_ms: Option<u64>,
    /// Quiet time after which errors are forgotten, or `null`.
    pub error_reset_period_ms: Option<u64>,
    /// Quiet time after which a full mailbox is forgotten, or `null`.
    pub mailbox_full_reset_period_ms: Option<u64>,
    /// When the settings last changed; `null` if never.
    pub updated_at_ms: Option<UnixMillis>,
    /// Where phone numbers in national form are read (ISO 3166-1 alpha-2);
    /// absent if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_region: Option<String>,
    /// The name the preference page shows; absent if none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    /// The privacy-policy address the preference page links to; absent if none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub privacy_policy_url: String,
}

/// A service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRecord {
    /// Its tenant.
    pub tenant: String,
    /// Its id.
    pub service_id: String,
    /// Its display name.
    pub name: String,
    /// The channel it sends on.
    pub channel: ChannelName,
    /// Whether subscribing needs a confirmation.
    pub double_opt_in: bool,
    /// When it was created.
    pub created_at_ms: UnixMillis,
}

/// A confirmation a subscription waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingRecord {
    /// The SHA-256 of the token sent, in hex.
    pub token_hash: String,
    /// When the token stops working.
    pub expires_at_ms: UnixMillis,
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRecord {
    /// Its tenant.
    pub tenant: String,
    /// The profile.
    pub profile_id: String,
    /// The service.
    pub service_id: String,
    /// Where it stands.
    pub status: SubscriptionStatusName,
    /// When the status last changed.
    pub changed_at_ms: UnixMillis,
    /// The confirmation waited for (only while PENDING_CONFIRMATION), or `null`.
    pub pending: Option<PendingRecord>,
}

/// A confirmation token's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmationTokenRecord {
    /// Its tenant.
    pub tenant: String,
    /// The SHA-256 of the token, in hex.
    pub token_hash: String,
    /// The profile whose subscription it confirms.
    pub profile_id: String,
    /// The service.
    pub service_id: String,
    /// When it was used; `null` if not yet.
    pub used_at_ms: Option<UnixMillis>,
    /// When the token expires (and its record is deleted); absent before
    /// format 3, when the record is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<UnixMillis>,
}

/// A usage opt-out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageOptOutRecord {
    /// Its tenant.
    pub tenant: String,
    /// The product user.
    pub user_id: String,
    /// When the user was opted out.
    pub opted_out_at_ms: UnixMillis,
    /// Who, how and why.
    pub context: ContextRecord,
}

/// An address's opt-outs: the last change of each channel that has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressConsentRecord {
    /// Its tenant.
    pub tenant: String,
    /// EMAIL, PHONE or PUSH_TOKEN.
    pub address_type: AddressTypeName,
    /// The address.
    pub address: String,
    /// One entry per channel that has a mark.
    pub channels: Vec<AddressMarkRecord>,
}

/// The last change of one channel of an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressMarkRecord {
    /// The channel.
    pub channel: ChannelName,
    /// True: opted out; false: opted back in.
    pub opted_out: bool,
    /// When it changed.
    pub changed_at_ms: UnixMillis,
    /// Who, how and why, with the proof.
    pub context: ContextRecord,
}

/// A tenant's erasure secret: keep the export as secret as the data it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureKeyRecord {
    /// Its tenant.
    pub tenant: String,
    /// The 32-byte secret, in hex.
    pub key: String,
}

/// A tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TombstoneRecord {
    /// Its tenant.
    pub tenant: String,
    /// HMAC-SHA256 of the address (kind byte, canonical text) under the
    /// tenant's erasure secret, in hex.
    pub address_hash: String,
    /// Opted out of every channel.
    pub all_channels: bool,
    /// Channels opted out of.
    pub channels: Vec<ChannelName>,
}

/// An erasure record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureRecord {
    /// Its tenant.
    pub tenant: String,
    /// When the erasure was made.
    pub erased_at_ms: UnixMillis,
    /// Tells apart two erasures of one millisecond.
    pub id: u64,
    /// Who asked, how and why.
    pub context: ContextRecord,
    /// Tombstones written.
    pub tombstones: u32,
    /// Consent history entries deleted.
    pub history_entries: u64,
    /// Subscriptions deleted.
    pub subscriptions: u32,
}

fn hex(hash: &TokenHash) -> String {
    hash.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn token_hash(raw: &str, field: &str) -> Result<TokenHash, String> {
    let mut bytes = [0u8; 32];
    if raw.len() != 64 || !raw.is_ascii() {
        return Err(format!("{field}: a SHA-256 is 64 hex digits"));
    }
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&raw[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("{field}: a SHA-256 is 64 hex digits"))?;
    }
    Ok(TokenHash(bytes))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn user_id(raw: &str) -> Result<UserId, String> {
    UserId::parse(raw).map_err(|e| format!("user_id: {e}"))
}

fn strings(addresses: &[Address]) -> Vec<String> {
    addresses.iter().map(|a| a.as_str().to_owned()).collect()
}

fn tenant(raw: &str) -> Result<Tenant, String> {
    Tenant::parse(raw).map_err(|e| format!("tenant: {e}"))
}

fn profile_id(raw: &str) -> Result<ProfileId, String> {
    ProfileId::parse(raw).map_err(|e| format!("profile_id: {e}"))
}

fn service_id_of(raw: &str, field: &str) -> Result<ServiceId, String> {
    ServiceId::parse(raw).map_err(|e| format!("{field}: {e}"))
}

fn address(kind: AddressTypeName, raw: &str, field: &str) -> Result<Address, String> {
    Address::parse(Some(kind.into()), raw).map_err(|e| format!("{field}: {e}"))
}

fn address_list(raw: &[String], kind: AddressKind, field: &str) -> Result<Vec<Address>, String> {
    if raw.len() > ADDRESSES_PER_KIND_MAX {
        return Err(format!(
            "{field}: {} entries, at most {ADDRESSES_PER_KIND_MAX} are allowed",
            raw.len()
        ));
    }
    let mut out: Vec<Address> = Vec::with_capacity(raw.len());
    for (i, text) in raw.iter().enumerate() {
        let parsed = Address::parse(Some(kind), text).map_err(|e| format!("{field}[{i}]: {e}"))?;
        if out.contains(&parsed) {
            return Err(format!(
                "{field}[{i}]: '{}' is listed twice",
                parsed.as_str()
            ));
        }
        out.push(parsed);
    }
    Ok(out)
}

fn manual_status(status: AddressStatusName) -> Result<AddressStatus, String> {
    match status.into() {
        s @ (AddressStatus::Quarantined | AddressStatus::Denylisted) => Ok(s),
        _ => Err("event.status: a manual event sets QUARANTINED or DENYLISTED".to_owned()),
    }
}

impl Record {
    /// The line for a dumped record.
    pub fn from_item(item: &DumpItem) -> Self {
        match item {
            DumpItem::Profile { tenant, profile: p } => {
                let c = &p.consent;
                let mark = |channel: Channel| MarkRecord::from(&c.channels[channel.index()]);
                Record::Profile(ProfileRecord {
                    tenant: tenant.as_str().to_owned(),
                    profile_id: p.id.as_str().to_owned(),
                    emails: strings(&p.emails),
                    phones: strings(&p.phones),
                    push_tokens: strings(&p.push_tokens),
                    postal_address: p.postal_address.clone(),
                    consent: ConsentRecord {
                        all_channels: MarkRecord::from(&c.all_channels),
                        email: mark(Channel::Email),
                        sms: mark(Channel::Sms),
                        push: mark(Channel::Push),
                        voice: mark(Channel::Voice),
                        direct_mail: mark(Channel::DirectMail),
                    },
                    history_seq: p.history_seq,
                    created_at_ms: p.created_at,
                    updated_at_ms: p.updated_at,
                })
            }
            DumpItem::ConsentEntry {
                tenant,
                profile_id,
                entry: e,
            } => Record::ConsentHistory(ConsentHistoryRecord {
                tenant: tenant.as_str().to_owned(),
                profile_id: profile_id.as_str().to_owned(),
                sequence: e.sequence,
                changed_at_ms: e.changed_at,
                change: (&e.change).into(),
                context: (&e.context).into(),
            }),
            DumpItem::AddressState {
                tenant,
                address,
                state: s,
            } => Record::AddressState(AddressStateRecord {
                tenant: tenant.as_str().to_owned(),
                address_type: address.kind().into(),
                address: address.as_str().to_owned(),
                status: s.status.into(),
                error_count: s.error_count,
                first_error_at_ms: s.first_error_at,
                last_error_at_ms: s.last_error_at,
                last_error_reason: s.last_error_reason.into(),
                last_reason: s.last_reason.clone(),
                updated_at_ms: s.updated_at,
                last_event_at_ms: s.last_event_at,
                log_seq: s.log_seq,
                log: Some(LogRecord {
                    len: s.log.len,
                    since_checkpoint: s.log.since_checkpoint,
                    start_at_ms: s.log.start.map(|k| k.at),
                    start_sequence: s.log.start.map(|k| k.sequence),
                }),
            }),
            DumpItem::AddressEvent {
                tenant,
                address,
                event: e,
            } => Record::AddressEvent(AddressEventRecord {
                tenant: tenant.as_str().to_owned(),
                address_type: address.kind().into(),
                address: address.as_str().to_owned(),
                sequence: e.sequence,
                event: match &e.kind {
                    AddressEventKind::Feedback {
                        kind,
                        reason,
                        event_id,
                    } => EventKindRecord::Feedback {
                        feedback_kind: (*kind).into(),
                        error_reason: (*reason).into(),
                        event_id: event_id.as_str().to_owned(),
                    },
                    AddressEventKind::Manual(status) => EventKindRecord::Manual {
                        status: (*status).into(),
                    },
                    AddressEventKind::Release => EventKindRecord::Release,
                },
                occurred_at_ms: e.occurred_at,
                recorded_at_ms: e.recorded_at,
                old_status: e.old_status.into(),
                new_status: e.new_status.into(),
                context: (&e.context).into(),
                folded_at_ms: (e.folded_at != e.occurred_at).then_some(e.folded_at),
                checkpoint: e.checkpoint.as_deref().map(CheckpointRecord::from),
                rules: e.rules.as_ref().map(EventRulesRecord::from),
            }),
            DumpItem::FeedbackEventId {
                tenant,
                event_id,
                address,
                recorded_at,
            } => Record::FeedbackEventId(FeedbackEventIdRecord {
                tenant: tenant.as_str().to_owned(),
                event_id: event_id.as_str().to_owned(),
                address_type: address.kind().into(),
                address: address.as_str().to_owned(),
                recorded_at_ms: Some(*recorded_at),
            }),
            DumpItem::TenantSettings { tenant, settings } => {
                let regime = |channel: Channel| settings.regime(channel).into();
                let rules = &settings.rules;
                Record::TenantSettings(TenantSettingsRecord {
                    tenant: tenant.as_str().to_owned(),
                    regimes: RegimesRecord {
                        email: regime(Channel::Email),
                        sms: regime(Channel::Sms),
                        push: regime(Channel::Push),
                        voice: regime(Channel::Voice),
                        direct_mail: regime(Channel::DirectMail),
                    },
                    soft_error_threshold: rules.soft_error_threshold,
                    significant_error_interval_ms: rules.significant_error_interval.map(millis),
                    error_reset_period_ms: rules.error_reset_period.map(millis),
                    mailbox_full_reset_period_ms: rules.mailbox_full_reset_period.map(millis),
                    updated_at_ms: settings.updated_at,
                    default_region: settings.default_region.map(|r| r.to_string()),
                    display_name: settings.display_name.clone(),
                    privacy_policy_url: settings.privacy_policy_url.clone(),
                })
            }
            DumpItem::Service { tenant, service } => Record::Service(ServiceRecord {
                tenant: tenant.as_str().to_owned(),
                service_id: service.id.as_str().to_owned(),
                name: service.name.clone(),
                channel: service.channel.into(),
                double_opt_in: service.double_opt_in,
                created_at_ms: service.created_at,
            }),
            DumpItem::Subscription {
                tenant,
                profile_id,
                subscription: s,
            } => Record::Subscription(SubscriptionRecord {
                tenant: tenant.as_str().to_owned(),
                profile_id: profile_id.as_str().to_owned(),
                service_id: s.service_id.as_str().to_owned(),
                status: s.status.into(),
                changed_at_ms: s.changed_at,
                pending: s.pending.map(|p| PendingRecord {
                    token_hash: hex(&p.token_hash),
                    expires_at_ms: p.expires_at,
                }),
            }),
            DumpItem::ConfirmationToken {
                tenant,
                hash,
                record,
            } => Record::ConfirmationToken(ConfirmationTokenRecord {
                tenant: tenant.as_str().to_owned(),
                token_hash: hex(hash),
                profile_id: record.profile_id.as_str().to_owned(),
                service_id: record.service_id.as_str().to_owned(),
                used_at_ms: record.used_at,
                expires_at_ms: Some(record.expires_at),
            }),
            DumpItem::UsageOptOut { tenant, opt_out } => Record::UsageOptOut(UsageOptOutRecord {
                tenant: tenant.as_str().to_owned(),
                user_id: opt_out.user_id.as_str().to_owned(),
                opted_out_at_ms: opt_out.opted_out_at,
                context: (&opt_out.context).into(),
            }),
            DumpItem::AddressConsent {
                tenant,
                address,
                consent,
            } => Record::AddressConsent(AddressConsentRecord {
                tenant: tenant.as_str().to_owned(),
                address_type: address.kind().into(),
                address: address.as_str().to_owned(),
                channels: Channel::ALL
                    .iter()
                    .filter_map(|&channel| {
                        consent.channels[channel.index()]
                            .as_ref()
                            .map(|mark| AddressMarkRecord {
                                channel: channel.into(),
                                opted_out: mark.opted_out,
                                changed_at_ms: mark.changed_at,
                                context: (&mark.context).into(),
                            })
                    })
                    .collect(),
            }),
            DumpItem::ErasureKey { tenant, key } => Record::ErasureKey(ErasureKeyRecord {
                tenant: tenant.as_str().to_owned(),
                key: hex(&TokenHash(key.0)),
            }),
            DumpItem::Tombstone {
                tenant,
                hash,
                tombstone,
            } => Record::Tombstone(TombstoneRecord {
                tenant: tenant.as_str().to_owned(),
                address_hash: hex(&TokenHash(hash.0)),
                all_channels: tombstone.all_channels,
                channels: Channel::ALL
                    .iter()
                    .filter(|c| tombstone.channels & (1 << c.index()) != 0)
                    .map(|&c| c.into())
                    .collect(),
            }),
            DumpItem::Erasure { tenant, erasure } => Record::Erasure(ErasureRecord {
                tenant: tenant.as_str().to_owned(),
                erased_at_ms: erasure.erased_at,
                id: erasure.id,
                context: (&erasure.context).into(),
                tombstones: erasure.tombstones,
                history_entries: erasure.history_entries,
                subscriptions: erasure.subscriptions,
            }),
        }
    }

    /// The record's `type`, as written in the file.
    pub fn type_name(&self) -> &'static str {
        match self {
            Record::Header(_) => "header",
            Record::Profile(_) => "profile",
            Record::ConsentHistory(_) => "consent_history",
            Record::AddressState(_) => "address_state",
            Record::AddressEvent(_) => "address_event",
            Record::FeedbackEventId(_) => "feedback_event_id",
            Record::TenantSettings(_) => "tenant_settings",
            Record::Service(_) => "service",
            Record::Subscription(_) => "subscription",
            Record::ConfirmationToken(_) => "confirmation_token",
            Record::UsageOptOut(_) => "usage_opt_out",
            Record::AddressConsent(_) => "address_consent",
            Record::ErasureKey(_) => "erasure_key",
            Record::Tombstone(_) => "tombstone",
            Record::Erasure(_) => "erasure",
        }
    }

    /// Validates the record with the engine's parsers and turns it into
    /// what the store restores. A header is not a record to restore (`Ok(None)`).
    pub fn into_item(self) -> Result<Option<DumpItem>, String> {
        let item = match self {
            Record::Header(_) => return Ok(None),
            Record::Profile(r) => {
                let mut channels = [ConsentMark::default(); 5];
                for (channel, mark, field) in [
                    (Channel::Email, &r.consent.email, "consent.email"),
                    (Channel::Sms, &r.consent.sms, "consent.sms"),
                    (Channel::Push, &r.consent.push, "consent.push"),
                    (Channel::Voice, &r.consent.voice, "consent.voice"),
                    (
                        Channel::DirectMail,
                        &r.consent.direct_mail,
                        "consent.direct_mail",
                    ),
                ] {
                    channels[channel.index()] = mark.parse(field)?;
                }
                let postal_address = parse_postal_address(&r.postal_address)
                    .map_err(|e| format!("postal_address: {e}"))?;
                DumpItem::Profile {
                    tenant: tenant(&r.tenant)?,
                    profile: Profile {
                        id: profile_id(&r.profile_id)?,
                        emails: address_list(&r.emails, AddressKind::Email, "emails")?,
                        phones: address_list(&r.phones, AddressKind::Phone, "phones")?,
                        push_tokens: address_list(
                            &r.push_tokens,
                            AddressKind::PushToken,
                            "push_tokens",
                        )?,
                        postal_address,
                        consent: ConsentState {
                            all_channels: r.consent.all_channels.parse("consent.all_channels")?,
                            channels,
                        },
                        history_seq: r.history_seq,
                        created_at: r.created_at_ms,
                        updated_at: r.updated_at_ms,
                    },
                }
            }
            Record::ConsentHistory(r) => {
                if r.sequence == 0 {
                    return Err("sequence: starts at 1".to_owned());
                }
                DumpItem::ConsentEntry {
                    tenant: tenant(&r.tenant)?,
                    profile_id: profile_id(&r.profile_id)?,
                    entry: ConsentHistoryEntry {
                        sequence: r.sequence,
                        changed_at: r.changed_at_ms,
                        change: r.change.parse()?,
                        context: r.context.parse()?,
                    },
                }
            }
            Record::AddressState(r) => {
                let log = match r.log {
                    None => LogMeta::default(),
                    Some(log) => LogMeta {
                        len: log.len,
                        since_checkpoint: log.since_checkpoint,
                        start: match (log.start_at_ms, log.start_sequence) {
                            (Some(at), Some(sequence)) => Some(EventKey { at, sequence }),
                            (None, None) => None,
                            _ => {
                                return Err(
                                    "log: start_at_ms and start_sequence go together".to_owned()
                                );
                            }
                        },
                    },
                };
                let fold = CheckpointRecord {
                    status: r.status,
                    error_count: r.error_count,
                    first_error_at_ms: r.first_error_at_ms,
                    last_error_at_ms: r.last_error_at_ms,
                    last_error_reason: r.last_error_reason,
                    last_reason: r.last_reason,
                    updated_at_ms: r.updated_at_ms,
                    last_event_at_ms: r.last_event_at_ms,
                    log_seq: r.log_seq,
                };
                DumpItem::AddressState {
                    tenant: tenant(&r.tenant)?,
                    address: address(r.address_type, &r.address, "address")?,
                    state: fold.parse(log)?,
                }
            }
            Record::AddressEvent(r) => {
                if r.sequence == 0 {
                    return Err("sequence: starts at 1".to_owned());
                }
                let kind = match r.event {
                    EventKindRecord::Feedback {
                        feedback_kind,
                        error_reason,
                        event_id,
                    } => AddressEventKind::Feedback {
                        kind: feedback_kind.into(),
                        reason: error_reason.into(),
                        event_id: EventId::parse(&event_id)
                            .map_err(|e| format!("event.event_id: {e}"))?,
                    },
                    EventKindRecord::Manual { status } => {
                        AddressEventKind::Manual(manual_status(status)?)
                    }
                    EventKindRecord::Release => AddressEventKind::Release,
                };
                DumpItem::AddressEvent {
                    tenant: tenant(&r.tenant)?,
                    address: address(r.address_type, &r.address, "address")?,
                    event: AddressEvent {
                        sequence: r.sequence,
                        kind,
                        occurred_at: r.occurred_at_ms,
                        recorded_at: r.recorded_at_ms,
                        old_status: r.old_status.into(),
                        new_status: r.new_status.into(),
                        context: r.context.parse()?,
                        folded_at: r.folded_at_ms.unwrap_or(r.occurred_at_ms),
                        checkpoint: r
                            .checkpoint
                            .map(|c| c.parse(LogMeta::default()).map(Box::new))
                            .transpose()
                            .map_err(|e| format!("checkpoint.{e}"))?,
                        rules: r
                            .rules
                            .map(|rules| rules.parse())
                            .transpose()
                            .map_err(|e| format!("rules.{e}"))?,
                    },
                }
            }
            Record::FeedbackEventId(r) => DumpItem::FeedbackEventId {
                tenant: tenant(&r.tenant)?,
                event_id: EventId::parse(&r.event_id).map_err(|e| format!("event_id: {e}"))?,
                address: address(r.address_type, &r.address, "address")?,
                recorded_at: r.recorded_at_ms.unwrap_or(UnixMillis::MIN),
            },
            Record::TenantSettings(r) => {
                let mut regimes = [Regime::OptOut; 5];
                for (channel, regime) in [
                    (Channel::Email, r.regimes.email),
                    (Channel::Sms, r.regimes.sms),
                    (Channel::Push, r.regimes.push),
                    (Channel::Voice, r.regimes.voice),
                    (Channel::DirectMail, r.regimes.direct_mail),
                ] {
                    regimes[channel.index()] = regime.into();
                }
                let rules = RuleOverrides {
                    soft_error_threshold: r.soft_error_threshold,
                    significant_error_interval: r
                        .significant_error_interval_ms
                        .map(Duration::from_millis),
                    error_reset_period: r.error_reset_period_ms.map(Duration::from_millis),
                    mailbox_full_reset_period: r
                        .mailbox_full_reset_period_ms
                        .map(Duration::from_millis),
                };
                rules.validate().map_err(|(field, e)| {
                    let unit = if field == "soft_error_threshold" {
                        ""
                    } else {
                        "_ms"
                    };
                    format!("{field}{unit}: {e}")
                })?;
                DumpItem::TenantSettings {
                    tenant: tenant(&r.tenant)?,
                    settings: TenantSettings {
                        regimes,
                        rules,
                        updated_at: r.updated_at_ms,
                        default_region: r
                            .default_region
                            .as_deref()
                            .map(Region::parse)
                            .transpose()
                            .map_err(|e| format!("default_region: {e}"))?,
                        display_name: parse_display_name(&r.display_name)
                            .map_err(|e| format!("display_name: {e}"))?,
                        privacy_policy_url: parse_privacy_policy_url(&r.privacy_policy_url)
                            .map_err(|e| format!("privacy_policy_url: {e}"))?,
                    },
                }
            }
            Record::Service(r) => DumpItem::Service {
                tenant: tenant(&r.tenant)?,
                service: Service {
                    id: service_id_of(&r.service_id, "service_id")?,
                    name: parse_name(&r.name, "name", SERVICE_NAME_LEN_MAX)
                        .map_err(|e| format!("name: {e}"))?,
                    channel: r.channel.into(),
                    double_opt_in: r.double_opt_in,
                    created_at: r.created_at_ms,
                },
            },
            Record::Subscription(r) => {
                let status: SubscriptionStatus = r.status.into();
                if r.pending.is_some() && status != SubscriptionStatus::PendingConfirmation {
                    return Err(
                        "pending: only a PENDING_CONFIRMATION subscription waits for a token"
                            .to_owned(),
                    );
                }
                let pending = match &r.pending {
                    Some(p) => Some(PendingConfirmation {
                        token_hash: token_hash(&p.token_hash, "pending.token_hash")?,
                        expires_at: p.expires_at_ms,
                    }),
                    None => None,
                };
                DumpItem::Subscription {
                    tenant: tenant(&r.tenant)?,
                    profile_id: profile_id(&r.profile_id)?,
                    subscription: Subscription {
                        service_id: service_id_of(&r.service_id, "service_id")?,
                        status,
                        changed_at: r.changed_at_ms,
                        pending,
                    },
                }
            }
            Record::ConfirmationToken(r) => DumpItem::ConfirmationToken {
                tenant: tenant(&r.tenant)?,
                hash: token_hash(&r.token_hash, "token_hash")?,
                record: TokenRecord {
                    profile_id: profile_id(&r.profile_id)?,
                    service_id: service_id_of(&r.service_id, "service_id")?,
                    used_at: r.used_at_ms,
                    expires_at: r.expires_at_ms.unwrap_or(UnixMillis::MAX),
                },
            },
            Record::UsageOptOut(r) => DumpItem::UsageOptOut {
                tenant: tenant(&r.tenant)?,
                opt_out: UsageOptOut {
                    user_id: user_id(&r.user_id)?,
                    opted_out_at: r.opted_out_at_ms,
                    context: r.context.parse()?,
                },
            },
            Record::AddressConsent(r) => {
                let address = address(r.address_type, &r.address, "address")?;
                let mut consent = AddressConsent::default();
                for (i, mark) in r.channels.iter().enumerate() {
                    let channel: Channel = mark.channel.into();
                    check_channel(address.kind(), channel)
                        .map_err(|e| format!("channels[{i}].channel: {e}"))?;
                    let slot = &mut consent.channels[channel.index()];
                    if slot.is_some() {
                        return Err(format!("channels[{i}].channel: given twice"));
                    }
                    *slot = Some(Box::new(AddressMark {
                        opted_out: mark.opted_out,
                        changed_at: mark.changed_at_ms,
                        context: mark
                            .context
                            .parse()
                            .map_err(|e| format!("channels[{i}].context: {e}"))?,
                    }));
                }
                DumpItem::AddressConsent {
                    tenant: tenant(&r.tenant)?,
                    address,
                    consent,
                }
            }
            Record::ErasureKey(r) => DumpItem::ErasureKey {
                tenant: tenant(&r.tenant)?,
                key: ErasureKey(token_hash(&r.key, "key")?.0),
            },
            Record::Tombstone(r) => {
                let mut channels = 0u8;
                for (i, channel) in r.channels.iter().enumerate() {
                    let channel: Channel = (*channel).into();
                    if channel.address_kind().is_none() {
                        return Err(format!(
                            "channels[{i}]: {} reaches no address",
                            channel.api_name()
                        ));
                    }
                    channels |= 1 << channel.index();
                }
                let tombstone = Tombstone {
                    all_channels: r.all_channels,
                    channels,
                };
                if tombstone.is_empty() {
                    return Err("a tombstone keeps all_channels or at least one channel".into());
                }
                DumpItem::Tombstone {
                    tenant: tenant(&r.tenant)?,
                    hash: AddressHash(token_hash(&r.address_hash, "address_hash")?.0),
                    tombstone,
                }
            }
            Record::Erasure(r) => DumpItem::Erasure {
                tenant: tenant(&r.tenant)?,
                erasure: Erasure {
                    erased_at: r.erased_at_ms,
                    id: r.id,
                    context: r.context.parse()?,
                    tombstones: r.tombstones,
                    history_entries: r.history_entries,
                    subscriptions: r.subscriptions,
                },
            },
        };
        Ok(Some(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_type_or_field_is_refused() {
        let unknown: Result<Record, _> = serde_json::from_str(r#"{"type":"newsletter"}"#);
        assert!(unknown.is_err());
        let extra: Result<Record, _> = serde_json::from_str(
            r#"{"type":"feedback_event_id","tenant":"a","event_id":"e","address_type":"EMAIL","address":"a@b.io","x":1}"#,
        );
        assert!(extra.is_err(), "{extra:?}");
        let good: Record = serde_json::from_str(
            r#"{"type":"feedback_event_id","tenant":"a","event_id":"e","address_type":"EMAIL","address":"A@B.io"}"#,
        )
        .expect("parses");
        let Ok(Some(DumpItem::FeedbackEventId { address, .. })) = good.into_item() else {
            panic!("valid record");
        };
        assert_eq!(address.as_str(), "a@b.io");
    }

    #[test]
    fn an_address_event_keeps_its_rules_and_refuses_invalid_ones() {
        let rules = QuarantineRules {
            soft_error_threshold: 2,
            significant_error_interval: Duration::from_millis(3_600_000),
            error_reset_period: Duration::from_millis(86_400_000),
            mailbox_full_reset_period: Duration::from_millis(172_800_000),
        };
        let item = DumpItem::AddressEvent {
            tenant: Tenant::parse("acme").expect("tenant"),
            address: Address::email("x@y.io").expect("address"),
            event: AddressEvent {
                sequence: 1,
                kind: AddressEventKind::Release,
                occurred_at: 5,
                recorded_at: 5,
                old_status: AddressStatus::Quarantined,
                new_status: AddressStatus::Valid,
                context: ChangeContext::new(crate::engine::Source::Operator, "ops", "")
                    .expect("context"),
                folded_at: 9,
                checkpoint: None,
                rules: Some(rules),
            },
        };
        let line = serde_json::to_string(&Record::from_item(&item)).expect("serialises");
        assert!(
            line.contains(r#""rules":{"soft_error_threshold":2,"significant_error_interval_ms":3600000,"error_reset_period_ms":86400000,"mailbox_full_reset_period_ms":172800000}"#),
            "{line}"
        );
        assert!(line.contains(r#""folded_at_ms":9"#), "{line}");
        let back: Record = serde_json::from_str(&line).expect("parses");
        assert_eq!(back.into_item().expect("valid"), Some(item.clone()));

        // Without rules (an older export): none.
        let older = line.replace(
            r#","rules":{"soft_error_threshold":2,"significant_error_interval_ms":3600000,"error_reset_period_ms":86400000,"mailbox_full_reset_period_ms":172800000}"#,
            "",
        );
        let Some(DumpItem::AddressEvent { event, .. }) = serde_json::from_str::<Record>(&older)
            .expect("parses")
            .into_item()
            .expect("valid")
        else {
            panic!("an address event");
        };
        assert_eq!(event.rules, None);

        for (bad, field) in [
            (r#""soft_error_threshold":0"#, "rules.soft_error_threshold:"),
            (
                r#""error_reset_period_ms":0"#,
                "rules.error_reset_period_ms:",
            ),
        ] {
            let key = bad.split(':').next().expect("key");
            let start = line.find(key).expect("field");
            let end = start + line[start..].find([',', '}']).expect("end");
            let broken = format!("{}{bad}{}", &line[..start], &line[end..]);
            let err = serde_json::from_str::<Record>(&broken)
                .expect("parses")
                .into_item()
                .expect_err("invalid rules");
            assert!(err.starts_with(field), "{err}");
        }
    }

    #[test]
    fn invalid_values_name_their_field() {
        let bad: Record = serde_json::from_str(
            r#"{"type":"address_state","tenant":"a b","address_type":"EMAIL","address":"x@y.io","status":"VALID","error_count":0,"first_error_at_ms":null,"last_error_at_ms":null,"last_error_reason":"UNSPECIFIED","last_reason":"","updated_at_ms":null,"last_event_at_ms":null,"log_seq":0}"#,
        )
        .expect("parses");
        let err = bad.into_item().expect_err("bad tenant");
        assert!(err.starts_with("tenant:"), "{err}");
    }

    #[test]
    fn a_context_with_principal_and_proof_reads_back_as_written() {
        let line = r#"{"source":"LANDING_PAGE","actor":"jane","reason":"","principal":"signup-key","ip_address":"2001:db8::1","user_agent":"Mozilla/5.0","notice_version":"v3","collected_at_ms":5}"#;
        let record: ContextRecord = serde_json::from_str(line).expect("parses");
        let context = record.parse().expect("valid");
        assert_eq!(context.principal, "signup-key");
        assert_eq!(context.proof.collected_at, Some(5));
        assert_eq!(ContextRecord::from(&context), record);
        let long = ContextRecord {
            principal: "k".repeat(ACTOR_LEN_MAX + 1),
            ..record
        };
        let err = long.parse().expect_err("too long");
        assert!(err.starts_with("context.principal:"), "{err}");
    }

    fn rejected(line: &str) -> String {
        let record: Record = serde_json::from_str(line).expect("parses");
        record.into_item().expect_err("invalid")
    }

    #[test]
    fn new_record_types_are_validated_with_the_engine_parsers() {
        let hash = "ab".repeat(32);
        let token = format!(
            r#"{{"type":"confirmation_token","tenant":"a","token_hash":"{hash}","profile_id":"p","service_id":"news","used_at_ms":null}}"#
        );
        let record: Record = serde_json::from_str(&token).expect("parses");
        assert!(matches!(
            record.into_item(),
            Ok(Some(DumpItem::ConfirmationToken { hash, .. })) if hash.0 == [0xab; 32]
        ));
        let short = token.replace(&hash, "abcd");
        assert!(rejected(&short).starts_with("token_hash:"));
        let bad_service = token.replace("news", "has space");
        assert!(rejected(&bad_service).starts_with("service_id:"));
        let active_pending = format!(
            r#"{{"type":"subscription","tenant":"a","profile_id":"p","service_id":"news","status":"ACTIVE","changed_at_ms":1,"pending":{{"token_hash":"{hash}","expires_at_ms":2}}}}"#
        );
        assert!(rejected(&active_pending).starts_with("pending:"));
        let settings = r#"{"type":"tenant_settings","tenant":"a","regimes":{"email":"OPT_IN","sms":"OPT_OUT","push":"OPT_OUT","voice":"OPT_OUT","direct_mail":"OPT_OUT"},"soft_error_threshold":0,"significant_error_interval_ms":null,"error_reset_period_ms":null,"mailbox_full_reset_period_ms":null,"updated_at_ms":1}"#;
        assert!(rejected(settings).starts_with("soft_error_threshold:"));
        let zero_period = settings
            .replace(r#""soft_error_threshold":0"#, r#""soft_error_threshold":3"#)
            .replace(
                r#""error_reset_period_ms":null"#,
                r#""error_reset_period_ms":0"#,
            );
        assert!(rejected(&zero_period).starts_with("error_reset_period_ms:"));
        let usage = r#"{"type":"usage_opt_out","tenant":"a","user_id":"","opted_out_at_ms":1,"context":{"source":"API","actor":"","reason":"","principal":"","ip_address":null,"user_agent":"","notice_version":"","collected_at_ms":null}}"#;
        assert!(rejected(usage).starts_with("user_id:"));
        let bad_ip = usage
            .replace(r#""user_id":"""#, r#""user_id":"u""#)
            .replace(r#""ip_address":null"#, r#""ip_address":"300.1.1.1""#);
        assert!(rejected(&bad_ip).starts_with("context.ip_address:"));
    }
}
