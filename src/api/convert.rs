//! Conversion between wire types (`pb`) and domain types, and request
//! validation: every request field is parsed here, once, and every problem
//! is reported with the field's path.
//!
//! Invariant: past these functions, no wire type and no unparsed value
//! reaches the application.

use prost_types::Timestamp;

use crate::{
    engine::{
        self, ADDRESSES_PER_KIND_MAX, Address, AddressKind, ChangeContext, Channel, ConsentMark,
        ConsentState, Invalid, ProfileAddresses, ProfileId, Tenant, UnixMillis,
    },
    error::{Error, FieldViolation},
    pb,
};

/// How far in the future a context's `collected_at` may lie (clock skew), in ms.
const COLLECTED_AT_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;

/// The seconds of a valid `google.protobuf.Timestamp`: 0001-01-01T00:00:00Z
/// to 9999-12-31T23:59:59Z, as its documentation says.
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// Collects the problems of one request, so that the caller hears of all of them at once.
#[derive(Debug, Default)]
pub(crate) struct Check {
    /// The problems found so far.
    violations: Vec<FieldViolation>,
    /// Where phone numbers in national form are read (the tenant's default region).
    region: Option<engine::Region>,
}

/// A tuple of options that are all `Some` when no violation was recorded.
pub(crate) trait AllSome {
    /// The tuple of values.
    type Out;
    /// The values, if all are present.
    fn all_some(self) -> Option<Self::Out>;
}

macro_rules! all_some {
    ($($t:ident $i:tt),+) => {
        impl<$($t),+> AllSome for ($(Option<$t>,)+) {
            type Out = ($($t,)+);
            fn all_some(self) -> Option<Self::Out> {
                Some(($(self.$i?,)+))
            }
        }
    };
}
all_some!(A 0);
all_some!(A 0, B 1);
all_some!(A 0, B 1, C 2);
all_some!(A 0, B 1, C 2, D 3);
all_some!(A 0, B 1, C 2, D 3, E 4);
all_some!(A 0, B 1, C 2, D 3, E 4, F 5);
all_some!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);

impl Check {
    /// Reads phone numbers in national form in `region` from now on (the
    /// tenant's default region; `None`: international numbers only).
    pub(crate) fn read_phones_in(&mut self, region: Option<engine::Region>) {
        self.region = region;
    }

    /// Records a violation of `field`.
    pub(crate) fn violation(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations
            .push(FieldViolation::new(field, description));
    }

    /// Keeps a parsed value, or records why it did not parse.
    pub(crate) fn field<T>(&mut self, field: &str, parsed: Result<T, Invalid>) -> Option<T> {
        parsed
            .map_err(|invalid| self.violation(field, invalid.0))
            .ok()
    }

    /// The values, or every violation recorded.
    pub(crate) fn finish<T: AllSome>(self, values: T) -> Result<T::Out, Error> {
        if !self.violations.is_empty() {
            return Err(Error::InvalidArgument(self.violations));
        }
        // Every `None` came with a violation, so this holds; say so if it ever does not.
        values
            .all_some()
            .ok_or_else(|| Error::invalid("request", "the request is incomplete"))
    }

    /// The tenant; also recorded on the request's span.
    pub(crate) fn tenant(&mut self, raw: &str) -> Option<Tenant> {
        let tenant = self.field("tenant", Tenant::parse(raw))?;
        tracing::Span::current().record("tenant", tenant.as_str());
        Some(tenant)
    }

    /// A profile id in field `field`.
    pub(crate) fn profile_id(&mut self, field: &str, raw: &str) -> Option<ProfileId> {
        self.field(field, ProfileId::parse(raw))
    }

    /// A required channel.
    pub(crate) fn channel(&mut self, field: &str, raw: i32) -> Option<Channel> {
        match pb::Channel::try_from(raw) {
            Ok(channel) => {
                let channel = channel_from_pb(channel);
                if channel.is_none() {
                    self.violation(
                        field,
                        format!("is required: one of {}", Channel::api_names()),
                    );
                }
                channel
            }
            Err(_) => {
                self.violation(
                    field,
                    format!(
                        "unknown channel value {raw}: one of {}",
                        Channel::api_names()
                    ),
                );
                None
            }
        }
    }

    /// A required change context with its proof of consent. `forced` is the
    /// source the caller's changes are always recorded with, if any; `now`
    /// bounds `collected_at`.
    pub(crate) fn context(
        &mut self,
        raw: Option<&pb::ChangeContext>,
        forced: Option<engine::Source>,
        now: UnixMillis,
    ) -> Option<ChangeContext> {
        let Some(raw) = raw else {
            if let Some(source) = forced {
                return ChangeContext::new(source, "", "").ok();
            }
            self.violation(
                "context",
                "is required: say where the change comes from (context.source)",
            );
            return None;
        };
        let source = match pb::Source::try_from(raw.source) {
            _ if forced.is_some() => forced,
            Ok(source) => {
                let source = source_from_pb(source);
                if source.is_none() {
                    self.violation(
                        "context.source",
                        format!(
                            "is required: every change must say where it comes from, one of {}",
                            source_names()
                        ),
                    );
                }
                source
            }
            Err(_) => {
                self.violation(
                    "context.source",
                    format!(
                        "unknown source value {}: one of {}",
                        raw.source,
                        source_names()
                    ),
                );
                None
            }
        };
        // The texts are checked even when the source is missing, so that every
        // problem is reported at once; the placeholder source is never kept.
        let context = match ChangeContext::new(
            source.unwrap_or(engine::Source::Api),
            &raw.actor,
            &raw.reason,
        ) {
            Ok(context) => Some(context),
            Err((field, invalid)) => {
                self.violation(format!("context.{field}"), invalid.0);
                None
            }
        };
        let collected_at = self
            .timestamp("context.collected_at", raw.collected_at.as_ref())
            .and_then(|at| match at {
                Some(at) if at > now.saturating_add(COLLECTED_AT_FUTURE_SKEW_MS) => {
                    self.violation(
                        "context.collected_at",
                        "is more than 5 minutes in the future: it must say when the person acted",
                    );
                    None
                }
                at => Some(at),
            });
        let proof = match engine::Proof::new(
            &raw.ip_address,
            &raw.user_agent,
            &raw.notice_version,
            collected_at.flatten(),
        ) {
            Ok(proof) => Some(proof),
            Err((field, invalid)) => {
                self.violation(format!("context.{field}"), invalid.0);
                None
            }
        };
        let (mut context, proof, _, _) = (context?, proof?, source?, collected_at?);
        context.proof = proof;
        Some(context)
    }

    /// Checks that a context that gives consent carries its proof when it
    /// comes from a landing page.
    pub(crate) fn consent_proof(&mut self, context: Option<&ChangeContext>) {
        if let Some(Err(missing)) = context.map(ChangeContext::require_proof) {
            for (field, invalid) in missing {
                self.violation(format!("context.{field}"), invalid.0);
            }
        }
    }

    /// An address and its type (inferred when unspecified).
    pub(crate) fn address(&mut self, raw: &str, address_type: i32) -> Option<Address> {
        let kind = match pb::AddressType::try_from(address_type) {
            Ok(pb::AddressType::Unspecified) => None,
            Ok(pb::AddressType::Email) => Some(AddressKind::Email),
            Ok(pb::AddressType::Phone) => Some(AddressKind::Phone),
            Ok(pb::AddressType::PushToken) => Some(AddressKind::PushToken),
            Err(_) => {
                self.violation(
                    "address_type",
                    format!(
                        "unknown address type value {address_type}: one of \
                         ADDRESS_TYPE_EMAIL, ADDRESS_TYPE_PHONE, ADDRESS_TYPE_PUSH_TOKEN, \
                         or leave it unspecified"
                    ),
                );
                return None;
            }
        };
        self.field("address", Address::parse_in(kind, raw, self.region))
    }

    /// A list of addresses of one kind: at most [`ADDRESSES_PER_KIND_MAX`],
    /// each parsed, duplicates dropped (first kept).
    pub(crate) fn addresses(
        &mut self,
        field: &str,
        raw: &[String],
        kind: AddressKind,
    ) -> Option<Vec<Address>> {
        if raw.len() > ADDRESSES_PER_KIND_MAX {
            self.violation(
                field,
                format!(
                    "has {} entries; at most {ADDRESSES_PER_KIND_MAX} are allowed",
                    raw.len()
                ),
            );
            return None;
        }
        let before = self.violations.len();
        let mut out: Vec<Address> = Vec::with_capacity(raw.len());
        for (i, text) in raw.iter().enumerate() {
            let parsed = Address::parse_in(Some(kind), text, self.region);
            if let Some(address) = self.field(&format!("{field}[{i}]"), parsed)
                && !out.contains(&address)
            {
                out.push(address);
            }
        }
        (self.violations.len() == before).then_some(out)
    }

    /// Every address of a list, each of `kind` (duplicates kept, in order):
    /// `None` when one is bad (each is named).
    pub(crate) fn each_address(
        &mut self,
        field: &str,
        raw: &[String],
        kind: AddressKind,
    ) -> Option<Vec<Address>> {
        let before = self.violations.len();
        let mut out = Vec::with_capacity(raw.len());
        for (i, text) in raw.iter().enumerate() {
            match Address::parse_in(Some(kind), text, self.region) {
                Ok(address) => out.push(address),
                Err(invalid) => self.violation(format!("{field}[{i}]"), invalid.0),
            }
        }
        (self.violations.len() == before).then_some(out)
    }

    /// The channel of an address opt-out: required, and one that uses the
    /// address's kind.
    pub(crate) fn address_channel(
        &mut self,
        raw: i32,
        address: Option<&Address>,
    ) -> Option<Channel> {
        let channel = self.channel("channel", raw)?;
        if let Some(address) = address {
            return self.field(
                "channel",
                engine::check_channel(address.kind(), channel).map(|()| channel),
            );
        }
        Some(channel)
    }

    /// The addresses of an upsert.
    pub(crate) fn profile_addresses(
        &mut self,
        req: &pb::UpsertProfileRequest,
    ) -> Option<ProfileAddresses> {
        let emails = self.addresses("emails", &req.emails, AddressKind::Email);
        let phones = self.addresses("phones", &req.phones, AddressKind::Phone);
        let push_tokens = self.addresses("push_tokens", &req.push_tokens, AddressKind::PushToken);
        let postal = self.field(
            "postal_address",
            engine::parse_postal_address(&req.postal_address),
        );
        Some(ProfileAddresses {
            emails: emails?,
            phones: phones?,
            push_tokens: push_tokens?,
            postal_address: postal?,
        })
    }

    /// A timestamp that must be a valid instant, if given.
    pub(crate) fn timestamp(
        &mut self,
        field: &str,
        raw: Option<&Timestamp>,
    ) -> Option<Option<UnixMillis>> {
        let Some(ts) = raw else {
            return Some(None);
        };
        if !(0..1_000_000_000).contains(&ts.nanos) {
            self.violation(field, "nanos must be 0 to 999,999,999");
            return None;
        }
        // The range google.protobuf.Timestamp documents; in it, the
        // milliseconds below cannot overflow (checked all the same).
        let ms = TIMESTAMP_SECONDS
            .contains(&ts.seconds)
            .then(|| ts.seconds.checked_mul(1000))
            .flatten()
            .and_then(|ms| ms.checked_add(i64::from(ts.nanos / 1_000_000)));
        if ms.is_none() {
            self.violation(
                field,
                format!(
                    "is out of range: seconds must be {} to {} \
                     (0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z), not {}",
                    TIMESTAMP_SECONDS.start(),
                    TIMESTAMP_SECONDS.end(),
                    ts.seconds
                ),
            );
            return None;
        }
        Some(ms)
    }

    /// A service id in field `field`.
    pub(crate) fn service_id(&mut self, field: &str, raw: &str) -> Option<engine::ServiceId> {
        self.field(field, engine::ServiceId::parse(raw))
    }

    /// An optional service id: empty means none.
    pub(crate) fn optional_service_id(
        &mut self,
        field: &str,
        raw: &str,
    ) -> Option<Option<engine::ServiceId>> {
        if raw.is_empty() {
            return Some(None);
        }
        self.service_id(field, raw).map(Some)
    }

    /// A product user id in field `field`.
    pub(crate) fn user_id(&mut self, field: &str, raw: &str) -> Option<engine::UserId> {
        self.field(field, engine::UserId::parse(raw))
    }

    /// A subscription status filter: UNSPECIFIED means none.
    pub(crate) fn subscription_status_filter(
        &mut self,
        field: &str,
        raw: i32,
    ) -> Option<Option<engine::SubscriptionStatus>> {
        use engine::SubscriptionStatus as S;
        match pb::SubscriptionStatus::try_from(raw) {
            Ok(pb::SubscriptionStatus::Unspecified) => Some(None),
            Ok(pb::SubscriptionStatus::PendingConfirmation) => Some(Some(S::PendingConfirmation)),
            Ok(pb::SubscriptionStatus::Active) => Some(Some(S::Active)),
            Ok(pb::SubscriptionStatus::Unsubscribed) => Some(Some(S::Unsubscribed)),
            Err(_) => {
                self.violation(field, format!("unknown subscription status value {raw}"));
                None
            }
        }
    }

    /// A duration that must be a valid, non-negative span, if given.
    pub(crate) fn duration(
        &mut self,
        field: &str,
        raw: Option<&prost_types::Duration>,
    ) -> Option<Option<std::time::Duration>> {
        let Some(d) = raw else {
            return Some(None);
        };
        match (u64::try_from(d.seconds), u32::try_from(d.nanos)) {
            (Ok(seconds), Ok(nanos)) if nanos < 1_000_000_000 => {
                Some(Some(std::time::Duration::new(seconds, nanos)))
            }
            _ => {
                self.violation(
                    field,
                    "must be a positive duration (seconds >= 0, nanos 0 to 999,999,999)",
                );
                None
            }
        }
    }

    /// The update of a tenant's settings.
    pub(crate) fn settings_update(
        &mut self,
        req: &pb::UpdateTenantSettingsRequest,
    ) -> Option<engine::SettingsUpdate> {
        const FIELD: &str = "channel_regimes";
        let before = self.violations.len();
        if req.channel_regimes.len() > Channel::ALL.len() {
            self.violation(
                FIELD,
                format!(
                    "has {} entries; at most {} (one per channel) are allowed",
                    req.channel_regimes.len(),
                    Channel::ALL.len()
                ),
            );
            return None;
        }
        let mut regimes: Vec<(Channel, engine::Regime)> = Vec::new();
        for (i, entry) in req.channel_regimes.iter().enumerate() {
            let channel = self.channel(&format!("{FIELD}[{i}].channel"), entry.channel);
            let regime = match pb::ConsentRegime::try_from(entry.regime) {
                Ok(pb::ConsentRegime::OptOut) => Some(engine::Regime::OptOut),
                Ok(pb::ConsentRegime::OptIn) => Some(engine::Regime::OptIn),
                Ok(pb::ConsentRegime::Unspecified) | Err(_) => {
                    self.violation(
                        format!("{FIELD}[{i}].regime"),
                        "is required: CONSENT_REGIME_OPT_OUT or CONSENT_REGIME_OPT_IN",
                    );
                    None
                }
            };
            if let (Some(channel), Some(regime)) = (channel, regime) {
                if regimes.iter().any(|(c, _)| *c == channel) {
                    self.violation(
                        format!("{FIELD}[{i}].channel"),
                        "is given twice; give each channel at most once",
                    );
                }
                regimes.push((channel, regime));
            }
        }
        let raw = req.quarantine_rules.unwrap_or_default();
        let rules = engine::RuleOverrides {
            soft_error_threshold: raw.soft_error_threshold,
            significant_error_interval: self
                .duration(
                    "quarantine_rules.significant_error_interval",
                    raw.significant_error_interval.as_ref(),
                )
                .flatten(),
            error_reset_period: self
                .duration(
                    "quarantine_rules.error_reset_period",
                    raw.error_reset_period.as_ref(),
                )
                .flatten(),
            mailbox_full_reset_period: self
                .duration(
                    "quarantine_rules.mailbox_full_reset_period",
                    raw.mailbox_full_reset_period.as_ref(),
                )
                .flatten(),
        };
        if let Err((field, invalid)) = rules.validate() {
            self.violation(format!("quarantine_rules.{field}"), invalid.0);
        }
        let default_region = match req.default_region.as_deref().map(str::trim) {
            None => None,
            Some("") => Some(None),
            Some(code) => self
                .field("default_region", engine::Region::parse(code))
                .map(Some),
        };
        let display_name = req
            .display_name
            .as_deref()
            .and_then(|raw| self.field("display_name", engine::parse_display_name(raw)));
        let privacy_policy_url = req.privacy_policy_url.as_deref().and_then(|raw| {
            self.field("privacy_policy_url", engine::parse_privacy_policy_url(raw))
        });
        (self.violations.len() == before).then_some(engine::SettingsUpdate {
            regimes,
            rules,
            reset_rules: req.reset_quarantine_rules,
            default_region,
            display_name,
            privacy_policy_url,
        })
    }

    /// A page size: 0 means `default`, over `max` is clamped, negative is invalid.
    pub(crate) fn page_size(&mut self, raw: i32, default: usize, max: usize) -> Option<usize> {
        match usize::try_from(raw) {
            Err(_) => {
                self.violation("page_size", "must not be negative");
                None
            }
            Ok(0) => Some(default),
            Ok(n) => Some(n.min(max)),
        }
    }
}

/// The domain channel; `None` for UNSPECIFIED (never guessed).
fn channel_from_pb(channel: pb::Channel) -> Option<Channel> {
    match channel {
        pb::Channel::Unspecified => None,
        pb::Channel::Email => Some(Channel::Email),
        pb::Channel::Sms => Some(Channel::Sms),
        pb::Channel::Push => Some(Channel::Push),
        pb::Channel::Voice => Some(Channel::Voice),
        pb::Channel::DirectMail => Some(Channel::DirectMail),
    }
}

pub(crate) fn channel_to_pb(channel: Channel) -> pb::Channel {
    match channel {
        Channel::Email => pb::Channel::Email,
        Channel::Sms => pb::Channel::Sms,
        Channel::Push => pb::Channel::Push,
        Channel::Voice => pb::Channel::Voice,
        Channel::DirectMail => pb::Channel::DirectMail,
    }
}

/// The sources a client may give, as the wire names them.
fn source_names() -> String {
    [
        pb::Source::LandingPage,
        pb::Source::Operator,
        pb::Source::Api,
        pb::Source::Import,
        pb::Source::DeliveryFeedback,
    ]
    .map(|s| s.as_str_name())
    .join(", ")
}

/// The feedback kinds, as the wire names them.
fn feedback_kind_names() -> String {
    [
        pb::FeedbackKind::HardBounce,
        pb::FeedbackKind::SoftBounce,
        pb::FeedbackKind::Ignored,
        pb::FeedbackKind::Complaint,
        pb::FeedbackKind::Delivered,
    ]
    .map(|k| k.as_str_name())
    .join(", ")
}

/// The domain source; `None` for UNSPECIFIED (never guessed).
fn source_from_pb(source: pb::Source) -> Option<engine::Source> {
    match source {
        pb::Source::Unspecified => None,
        pb::Source::LandingPage => Some(engine::Source::LandingPage),
        pb::Source::Operator => Some(engine::Source::Operator),
        pb::Source::Api => Some(engine::Source::Api),
        pb::Source::Import => Some(engine::Source::Import),
        pb::Source::DeliveryFeedback => Some(engine::Source::DeliveryFeedback),
    }
}

pub(crate) fn source_to_pb(source: engine::Source) -> pb::Source {
    match source {
        engine::Source::LandingPage => pb::Source::LandingPage,
        engine::Source::Operator => pb::Source::Operator,
        engine::Source::Api => pb::Source::Api,
        engine::Source::Import => pb::Source::Import,
        engine::Source::DeliveryFeedback => pb::Source::DeliveryFeedback,
    }
}

pub(crate) fn context_to_pb(context: &ChangeContext) -> pb::ChangeContext {
    pb::ChangeContext {
        source: source_to_pb(context.source).into(),
        actor: context.actor.clone(),
        reason: context.reason.clone(),
        principal: context.principal.clone(),
        ip_address: context
            .proof
            .ip_address
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        user_agent: context.proof.user_agent.clone(),
        notice_version: context.proof.notice_version.clone(),
        collected_at: context.proof.collected_at.map(timestamp),
    }
}

pub(crate) fn timestamp(ms: UnixMillis) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid(1000) is 0..999, so the product fits an i32.
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

pub(crate) fn consent_status_to_pb(status: engine::ConsentStatus) -> pb::ConsentStatus {
    match status {
        engine::ConsentStatus::NoPreference => pb::ConsentStatus::NoPreference,
        engine::ConsentStatus::OptedIn => pb::ConsentStatus::OptedIn,
        engine::ConsentStatus::OptedOut => pb::ConsentStatus::OptedOut,
    }
}

fn mark_to_pb(mark: &ConsentMark) -> pb::ConsentMark {
    pb::ConsentMark {
        status: consent_status_to_pb(mark.status).into(),
        changed_at: mark.changed.map(|(at, _)| timestamp(at)),
        source: mark
            .changed
            .map_or(pb::Source::Unspecified, |(_, source)| source_to_pb(source))
            .into(),
    }
}

pub(crate) fn consent_to_pb(consent: &ConsentState) -> pb::ConsentState {
    pb::ConsentState {
        all_channels: Some(mark_to_pb(&consent.all_channels)),
        channels: Channel::ALL
            .iter()
            .map(|&channel| pb::ChannelConsent {
                channel: channel_to_pb(channel).into(),
                mark: Some(mark_to_pb(&consent.channel(channel))),
                effective_status: consent_status_to_pb(consent.effective(channel)).into(),
            })
            .collect(),
    }
}

pub(crate) fn profile_to_pb(profile: &engine::Profile) -> pb::Profile {
    let texts = |list: &[Address]| list.iter().map(|a| a.as_str().to_owned()).collect();
    pb::Profile {
        profile_id: profile.id.as_str().to_owned(),
        emails: texts(&profile.emails),
        phones: texts(&profile.phones),
        push_tokens: texts(&profile.push_tokens),
        postal_address: profile.postal_address.clone(),
        consent: Some(consent_to_pb(&profile.consent)),
        created_at: Some(timestamp(profile.created_at)),
        updated_at: Some(timestamp(profile.updated_at)),
    }
}

pub(crate) fn address_type_to_pb(kind: AddressKind) -> pb::AddressType {
    match kind {
        AddressKind::Email => pb::AddressType::Email,
        AddressKind::Phone => pb::AddressType::Phone,
        AddressKind::PushToken => pb::AddressType::PushToken,
    }
}

pub(crate) fn address_status_to_pb(status: engine::AddressStatus) -> pb::AddressStatus {
    match status {
        engine::AddressStatus::Valid => pb::AddressStatus::Valid,
        engine::AddressStatus::WithErrors => pb::AddressStatus::WithErrors,
        engine::AddressStatus::Quarantined => pb::AddressStatus::Quarantined,
        engine::AddressStatus::Denylisted => pb::AddressStatus::Denylisted,
    }
}

pub(crate) fn error_reason_from_pb(raw: i32) -> Result<engine::ErrorReason, Invalid> {
    use engine::ErrorReason as R;
    Ok(match pb::DeliveryErrorReason::try_from(raw) {
        Ok(pb::DeliveryErrorReason::Unspecified) => R::Unspecified,
        Ok(pb::DeliveryErrorReason::UserUnknown) => R::UserUnknown,
        Ok(pb::DeliveryErrorReason::InvalidDomain) => R::InvalidDomain,
        Ok(pb::DeliveryErrorReason::Unreachable) => R::Unreachable,
        Ok(pb::DeliveryErrorReason::AccountDisabled) => R::AccountDisabled,
        Ok(pb::DeliveryErrorReason::MailboxFull) => R::MailboxFull,
        Ok(pb::DeliveryErrorReason::Refused) => R::Refused,
        Ok(pb::DeliveryErrorReason::NotConnected) => R::NotConnected,
        Ok(pb::DeliveryErrorReason::Other) => R::Other,
        Err(_) => return Err(Invalid(format!("unknown error reason value {raw}"))),
    })
}

pub(crate) fn error_reason_to_pb(reason: engine::ErrorReason) -> pb::DeliveryErrorReason {
    use engine::ErrorReason as R;
    match reason {
        R::Unspecified => pb::DeliveryErrorReason::Unspecified,
        R::UserUnknown => pb::DeliveryErrorReason::UserUnknown,
        R::InvalidDomain => pb::DeliveryErrorReason::InvalidDomain,
        R::Unreachable => pb::DeliveryErrorReason::Unreachable,
        R::AccountDisabled => pb::DeliveryErrorReason::AccountDisabled,
        R::MailboxFull => pb::DeliveryErrorReason::MailboxFull,
        R::Refused => pb::DeliveryErrorReason::Refused,
        R::NotConnected => pb::DeliveryErrorReason::NotConnected,
        R::Other => pb::DeliveryErrorReason::Other,
    }
}

pub(crate) fn feedback_kind_from_pb(raw: i32) -> Result<engine::FeedbackKind, Invalid> {
    use engine::FeedbackKind as K;
    match pb::FeedbackKind::try_from(raw) {
        Ok(pb::FeedbackKind::HardBounce) => Ok(K::HardBounce),
        Ok(pb::FeedbackKind::SoftBounce) => Ok(K::SoftBounce),
        Ok(pb::FeedbackKind::Ignored) => Ok(K::Ignored),
        Ok(pb::FeedbackKind::Complaint) => Ok(K::Complaint),
        Ok(pb::FeedbackKind::Delivered) => Ok(K::Delivered),
        Ok(pb::FeedbackKind::Unspecified) => Err(Invalid(format!(
            "is required: one of {}",
            feedback_kind_names()
        ))),
        Err(_) => Err(Invalid(format!(
            "unknown feedback kind value {raw}: one of {}",
            feedback_kind_names()
        ))),
    }
}

pub(crate) fn feedback_kind_to_pb(kind: engine::FeedbackKind) -> pb::FeedbackKind {
    use engine::FeedbackKind as K;
    match kind {
        K::HardBounce => pb::FeedbackKind::HardBounce,
        K::SoftBounce => pb::FeedbackKind::SoftBounce,
        K::Ignored => pb::FeedbackKind::Ignored,
        K::Complaint => pb::FeedbackKind::Complaint,
        K::Delivered => pb::FeedbackKind::Delivered,
    }
}

/// An address status filter or target: `allow_unspecified` makes UNSPECIFIED
/// mean `None`; `allowed` lists the statuses accepted.
pub(crate) fn address_status_from_pb(
    raw: i32,
    allowed: &[engine::AddressStatus],
    allow_unspecified: bool,
) -> Result<Option<engine::AddressStatus>, Invalid> {
    use engine::AddressStatus as S;
    let status = match pb::AddressStatus::try_from(raw) {
        Ok(pb::AddressStatus::Unspecified) if allow_unspecified => return Ok(None),
        Ok(pb::AddressStatus::Unspecified) => None,
        Ok(pb::AddressStatus::Valid) => Some(S::Valid),
        Ok(pb::AddressStatus::WithErrors) => Some(S::WithErrors),
        Ok(pb::AddressStatus::Quarantined) => Some(S::Quarantined),
        Ok(pb::AddressStatus::Denylisted) => Some(S::Denylisted),
        Err(_) => return Err(Invalid(format!("unknown address status value {raw}"))),
    };
    match status {
        Some(status) if allowed.contains(&status) => Ok(Some(status)),
        _ => {
            let names: Vec<String> = allowed
                .iter()
                .map(|s| address_status_to_pb(*s).as_str_name().to_owned())
                .collect();
            Err(Invalid(format!("must be one of {}", names.join(", "))))
        }
    }
}

pub(crate) fn address_state_to_pb(
    address: &Address,
    state: &engine::AddressState,
) -> pb::AddressState {
    pb::AddressState {
        address: address.as_str().to_owned(),
        address_type: address_type_to_pb(address.kind()).into(),
        status: address_status_to_pb(state.status).into(),
        last_error_reason: error_reason_to_pb(state.last_error_reason).into(),
        last_reason: state.last_reason.clone(),
        error_count: state.error_count,
        first_error_at: state.first_error_at.map(timestamp),
        last_error_at: state.last_error_at.map(timestamp),
        updated_at: state.updated_at.map(timestamp),
    }
}

pub(crate) fn address_event_to_pb(event: &engine::AddressEvent) -> pb::AddressHistoryEntry {
    use engine::AddressEventKind as K;
    let mut entry = pb::AddressHistoryEntry {
        sequence: event.sequence,
        occurred_at: Some(timestamp(event.occurred_at)),
        recorded_at: Some(timestamp(event.recorded_at)),
        old_status: address_status_to_pb(event.old_status).into(),
        new_status: address_status_to_pb(event.new_status).into(),
        context: Some(context_to_pb(&event.context)),
        ..Default::default()
    };
    match &event.kind {
        K::Feedback {
            kind,
            reason,
            event_id,
        } => {
            entry.event_type = pb::AddressEventType::Feedback.into();
            entry.feedback_kind = feedback_kind_to_pb(*kind).into();
            entry.error_reason = error_reason_to_pb(*reason).into();
            entry.event_id = event_id.as_str().to_owned();
        }
        K::Manual(status) => {
            entry.event_type = pb::AddressEventType::ManualQuarantine.into();
            entry.requested_status = address_status_to_pb(*status).into();
        }
        K::Release => entry.event_type = pb::AddressEventType::Release.into(),
    }
    entry
}

pub(crate) fn exclusion_reason_to_pb(reason: engine::ExclusionReason) -> pb::ExclusionReason {
    use engine::ExclusionReason as R;
    match reason {
        R::ProfileNotFound => pb::ExclusionReason::ProfileNotFound,
        R::OptedOutAllChannels => pb::ExclusionReason::OptedOutAllChannels,
        R::OptedOutChannel => pb::ExclusionReason::OptedOutChannel,
        R::NoOptIn => pb::ExclusionReason::NoOptIn,
        R::NotSubscribed => pb::ExclusionReason::NotSubscribed,
        R::NoAddress => pb::ExclusionReason::NoAddress,
        R::AddressQuarantined => pb::ExclusionReason::AddressQuarantined,
        R::AddressDenylisted => pb::ExclusionReason::AddressDenylisted,
        R::AddressOptedOut => pb::ExclusionReason::AddressOptedOut,
    }
}

pub(crate) fn decision_to_pb(id: ProfileId, decision: engine::Decision) -> pb::Decision {
    pb::Decision {
        profile_id: id.as_str().to_owned(),
        eligible: decision.eligible(),
        reasons: decision
            .reasons
            .iter()
            .map(|r| exclusion_reason_to_pb(*r).into())
            .collect(),
        addresses: decision.addresses,
    }
}

pub(crate) fn summary_to_pb(summary: &engine::Summary) -> pb::EligibilitySummary {
    pb::EligibilitySummary {
        total: summary.total,
        eligible: summary.eligible,
        excluded: summary.excluded(),
        excluded_by_reason: summary
            .by_reason()
            .map(|(reason, count)| pb::ReasonCount {
                reason: exclusion_reason_to_pb(reason).into(),
                count,
            })
            .collect(),
    }
}

pub(crate) fn history_entry_to_pb(e: &engine::ConsentHistoryEntry) -> pb::ConsentHistoryEntry {
    let mut entry = pb::ConsentHistoryEntry {
        sequence: e.sequence,
        changed_at: Some(timestamp(e.changed_at)),
        context: Some(context_to_pb(&e.context)),
        ..Default::default()
    };
    match &e.change {
        engine::Change::Consent {
            scope,
            old_status,
            new_status,
        } => {
            match scope {
                engine::Scope::AllChannels => entry.all_channels = true,
                engine::Scope::Channel(c) => entry.channel = channel_to_pb(*c).into(),
            }
            entry.old_status = consent_status_to_pb(*old_status).into();
            entry.new_status = consent_status_to_pb(*new_status).into();
        }
        engine::Change::Subscription {
            service_id,
            channel,
            change,
        } => {
            entry.service_id = service_id.as_str().to_owned();
            entry.channel = channel_to_pb(*channel).into();
            entry.old_subscription_status = change
                .old
                .map_or(
                    pb::SubscriptionStatus::Unspecified,
                    subscription_status_to_pb,
                )
                .into();
            entry.new_subscription_status = subscription_status_to_pb(change.new).into();
        }
    }
    entry
}

pub(crate) fn subscription_status_to_pb(
    status: engine::SubscriptionStatus,
) -> pb::SubscriptionStatus {
    match status {
        engine::SubscriptionStatus::PendingConfirmation => {
            pb::SubscriptionStatus::PendingConfirmation
        }
        engine::SubscriptionStatus::Active => pb::SubscriptionStatus::Active,
        engine::SubscriptionStatus::Unsubscribed => pb::SubscriptionStatus::Unsubscribed,
    }
}

pub(crate) fn service_to_pb(service: &engine::Service) -> pb::Service {
    pb::Service {
        service_id: service.id.as_str().to_owned(),
        name: service.name.clone(),
        channel: channel_to_pb(service.channel).into(),
        double_opt_in: service.double_opt_in,
        created_at: Some(timestamp(service.created_at)),
    }
}

pub(crate) fn subscription_to_pb(subscription: &engine::Subscription) -> pb::Subscription {
    pb::Subscription {
        service_id: subscription.service_id.as_str().to_owned(),
        status: subscription_status_to_pb(subscription.status).into(),
        changed_at: Some(timestamp(subscription.changed_at)),
        confirmation_expires_at: subscription.pending.map(|p| timestamp(p.expires_at)),
    }
}

fn duration_to_pb(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// An address's opt-outs: one entry per channel of its kind.
pub(crate) fn address_consent_to_pb(
    address: &Address,
    consent: &engine::AddressConsent,
) -> pb::AddressConsent {
    pb::AddressConsent {
        address: address.as_str().to_owned(),
        address_type: address_type_to_pb(address.kind()).into(),
        channels: Channel::ALL
            .iter()
            .filter(|channel| channel.address_kind() == Some(address.kind()))
            .map(|&channel| {
                let mark = consent.channels[channel.index()].as_ref();
                pb::AddressChannelConsent {
                    channel: channel_to_pb(channel).into(),
                    status: if consent.opted_out(channel) {
                        pb::ConsentStatus::OptedOut
                    } else {
                        pb::ConsentStatus::NoPreference
                    }
                    .into(),
                    changed_at: mark.map(|m| timestamp(m.changed_at)),
                    context: mark.map(|m| context_to_pb(&m.context)),
                }
            })
            .collect(),
    }
}

pub(crate) fn tenant_settings_to_pb(
    settings: &engine::TenantSettings,
    server: &engine::QuarantineRules,
) -> pb::TenantSettings {
    let rules = settings.rules(server);
    let o = &settings.rules;
    let overridden = [
        ("soft_error_threshold", o.soft_error_threshold.is_some()),
        (
            "significant_error_interval",
            o.significant_error_interval.is_some(),
        ),
        ("error_reset_period", o.error_reset_period.is_some()),
        (
            "mailbox_full_reset_period",
            o.mailbox_full_reset_period.is_some(),
        ),
    ];
    pb::TenantSettings {
        channel_regimes: Channel::ALL
            .iter()
            .map(|&channel| pb::ChannelRegime {
                channel: channel_to_pb(channel).into(),
                regime: match settings.regime(channel) {
                    engine::Regime::OptOut => pb::ConsentRegime::OptOut,
                    engine::Regime::OptIn => pb::ConsentRegime::OptIn,
                }
                .into(),
            })
            .collect(),
        quarantine_rules: Some(pb::QuarantineRules {
            soft_error_threshold: rules.soft_error_threshold,
            significant_error_interval: Some(duration_to_pb(rules.significant_error_interval)),
            error_reset_period: Some(duration_to_pb(rules.error_reset_period)),
            mailbox_full_reset_period: Some(duration_to_pb(rules.mailbox_full_reset_period)),
        }),
        overridden_quarantine_rules: overridden
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| (*name).to_owned())
            .collect(),
        updated_at: settings.updated_at.map(timestamp),
        default_region: settings
            .default_region
            .map(|r| r.to_string())
            .unwrap_or_default(),
        display_name: settings.display_name.clone(),
        privacy_policy_url: settings.privacy_policy_url.clone(),
    }
}

pub(crate) fn usage_opt_out_to_pb(opt_out: &engine::UsageOptOut) -> pb::UsageOptOut {
    pb::UsageOptOut {
        user_id: opt_out.user_id.as_str().to_owned(),
        opted_out_at: Some(timestamp(opt_out.opted_out_at)),
        context: Some(context_to_pb(&opt_out.context)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_through_millis() {
        for ms in [0i64, 1, 999, 1_767_225_600_123, -1, -1001] {
            let mut check = Check::default();
            let back = check.timestamp("t", Some(&timestamp(ms)));
            assert_eq!(back, Some(Some(ms)), "{ms}");
        }
    }

    #[test]
    fn timestamps_out_of_range_are_violations_not_overflows() {
        // Each of these overflowed (or wrapped) a bare `seconds * 1000 + ms`.
        for (seconds, nanos) in [
            (9_223_372_036_854_775, 999_999_999),
            (i64::MAX, 0),
            (i64::MIN, 0),
            (253_402_300_800, 0),
            (-62_135_596_801, 999_999_999),
        ] {
            let mut check = Check::default();
            let raw = Timestamp { seconds, nanos };
            assert_eq!(check.timestamp("at", Some(&raw)), None, "{raw:?}");
            let Err(Error::InvalidArgument(violations)) = check.finish((None::<()>,)) else {
                panic!("expected a violation for {raw:?}");
            };
            assert_eq!(violations.len(), 1, "{violations:?}");
            assert_eq!(violations[0].field, "at");
            assert!(
                violations[0].description.contains("out of range"),
                "{violations:?}"
            );
        }
        // The ends of the range are instants.
        for (seconds, nanos, ms) in [
            (253_402_300_799, 999_999_999, 253_402_300_799_999),
            (-62_135_596_800, 0, -62_135_596_800_000),
        ] {
            let mut check = Check::default();
            let raw = Timestamp { seconds, nanos };
            assert_eq!(check.timestamp("at", Some(&raw)), Some(Some(ms)));
        }
    }

    #[test]
    fn channel_api_names_are_the_wire_names() {
        for channel in Channel::ALL {
            assert_eq!(channel.api_name(), channel_to_pb(channel).as_str_name());
        }
    }

    #[test]
    fn all_violations_are_reported_at_once() {
        let mut check = Check::default();
        let tenant = check.tenant("");
        let id = check.profile_id("profile_id", "");
        let channel = check.channel("channel", 99);
        let Err(Error::InvalidArgument(violations)) = check.finish((tenant, id, channel)) else {
            panic!("expected violations");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["tenant", "profile_id", "channel"]);
    }

    #[test]
    fn page_sizes_follow_aip_158() {
        let mut check = Check::default();
        assert_eq!(check.page_size(0, 100, 1000), Some(100));
        assert_eq!(check.page_size(5000, 100, 1000), Some(1000));
        assert_eq!(check.page_size(-1, 100, 1000), None);
    }
}
