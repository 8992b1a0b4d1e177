//! The domain's value types, parsed once at the edge: past `parse`, an invalid
//! tenant, id or address cannot exist.

use std::fmt;

pub(crate) use super::address::{Address, AddressKind};

/// Longest tenant name, in bytes.
pub const TENANT_LEN_MAX: usize = 64;
/// Longest profile id, in bytes.
pub const PROFILE_ID_LEN_MAX: usize = 256;
/// Longest e-mail address, in bytes (RFC 5321's path limit).
pub const EMAIL_LEN_MAX: usize = 254;
/// Longest push token, in bytes.
pub const PUSH_TOKEN_LEN_MAX: usize = 512;
/// Longest address as given, before normalisation, in bytes.
pub const ADDRESS_INPUT_LEN_MAX: usize = 512;
/// Longest postal address, in bytes.
pub const POSTAL_ADDRESS_LEN_MAX: usize = 1024;
/// Most addresses of one kind (e-mails, phones or push tokens) on a profile.
pub const ADDRESSES_PER_KIND_MAX: usize = 16;
/// Longest `actor` of a change context, in bytes.
pub const ACTOR_LEN_MAX: usize = 256;
/// Longest `reason` of a change context, in bytes.
pub const REASON_LEN_MAX: usize = 1024;
/// Longest delivery-feedback event id, in bytes.
pub const EVENT_ID_LEN_MAX: usize = 256;
/// Longest `user_agent` of a change context, in bytes.
pub const USER_AGENT_LEN_MAX: usize = 512;
/// Longest `notice_version` of a change context, in bytes.
pub const NOTICE_VERSION_LEN_MAX: usize = 128;
/// Longest `ip_address` of a change context as given, in bytes (an IPv6 text form is at most 45).
pub const IP_ADDRESS_LEN_MAX: usize = 64;
/// Longest service id, in bytes.
pub const SERVICE_ID_LEN_MAX: usize = 128;
/// Longest service name, in bytes.
pub const SERVICE_NAME_LEN_MAX: usize = 256;
/// Longest product user id, in bytes.
pub const USER_ID_LEN_MAX: usize = 256;

/// Why a value did not parse: a sentence for a human, naming the rule broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl Invalid {
    pub(crate) fn new(description: impl Into<String>) -> Self {
        Self(description.into())
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

pub(crate) fn check_len(value: &str, what: &str, min: usize, max: usize) -> Result<(), Invalid> {
    if value.is_empty() && min > 0 {
        return Err(Invalid::new(format!("{what} is required")));
    }
    if value.len() < min || value.len() > max {
        return Err(Invalid::new(format!(
            "{what} must be {min} to {max} bytes long, not {}",
            value.len()
        )));
    }
    Ok(())
}

/// A tenant: the unit of isolation. 1 to 64 bytes of ASCII letters, digits, `.`, `_`, `-`.
///
/// ```
/// use consentd::engine::Tenant;
///
/// assert!(Tenant::parse("acme-eu.prod").is_ok());
/// let invalid = Tenant::parse("acme eu").unwrap_err();
/// assert!(invalid.0.contains("only ASCII letters"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(String);

impl Tenant {
    /// Parses a tenant name.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        check_len(raw, "tenant", 1, TENANT_LEN_MAX)?;
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(Invalid::new(
                "tenant may contain only ASCII letters, digits, '.', '_' and '-'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The tenant's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A profile's id: opaque, 1 to 256 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileId(String);

impl ProfileId {
    /// Parses a profile id.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        Self::check(raw)?;
        Ok(Self(raw.to_owned()))
    }

    /// Checks that `raw` is a valid profile id, without keeping it.
    pub fn check(raw: &str) -> Result<(), Invalid> {
        check_len(raw, "profile_id", 1, PROFILE_ID_LEN_MAX)
    }

    /// Rebuilds an id that was valid when it was stored. Only the store calls this.
    pub(crate) fn from_trusted(id: String) -> Self {
        Self(id)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A communication channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// E-mail, to the profile's e-mail addresses.
    Email,
    /// Text messages, to the profile's phones.
    Sms,
    /// Push notifications, to the profile's push tokens.
    Push,
    /// Voice calls, to the profile's phones.
    Voice,
    /// Letters, to the profile's postal address.
    DirectMail,
}

impl Channel {
    /// Every channel, in the order of the wire enum.
    pub const ALL: [Channel; 5] = [
        Channel::Email,
        Channel::Sms,
        Channel::Push,
        Channel::Voice,
        Channel::DirectMail,
    ];

    /// The channel's name in the API, as clients write it (`CHANNEL_EMAIL`):
    /// for messages that tell a client what to send.
    pub fn api_name(self) -> &'static str {
        match self {
            Channel::Email => "CHANNEL_EMAIL",
            Channel::Sms => "CHANNEL_SMS",
            Channel::Push => "CHANNEL_PUSH",
            Channel::Voice => "CHANNEL_VOICE",
            Channel::DirectMail => "CHANNEL_DIRECT_MAIL",
        }
    }

    /// The channel's short name, in lower case (`email`, `direct_mail`):
    /// the metrics label and the preference page's form value.
    pub fn short_name(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
            Channel::Voice => "voice",
            Channel::DirectMail => "direct_mail",
        }
    }

    /// Every channel's [`Channel::api_name`], for "one of …" in messages.
    pub fn api_names() -> String {
        Channel::ALL.map(Channel::api_name).join(", ")
    }

    /// The channel's position in [`Channel::ALL`].
    pub fn index(self) -> usize {
        match self {
            Channel::Email => 0,
            Channel::Sms => 1,
            Channel::Push => 2,
            Channel::Voice => 3,
            Channel::DirectMail => 4,
        }
    }

    /// The kind of quarantinable address the channel uses; `None` for direct
    /// mail, whose postal addresses are never quarantined.
    pub fn address_kind(self) -> Option<AddressKind> {
        match self {
            Channel::Email => Some(AddressKind::Email),
            Channel::Sms | Channel::Voice => Some(AddressKind::Phone),
            Channel::Push => Some(AddressKind::PushToken),
            Channel::DirectMail => None,
        }
    }
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A self-service page used by the person themself.
    LandingPage,
    /// A human operator.
    Operator,
    /// Another system, on its own behalf.
    Api,
    /// A bulk import.
    Import,
    /// Delivery feedback.
    DeliveryFeedback,
}

/// Evidence that a person consented (GDPR Art. 7(1)): where and when they
/// acted, and which consent text they saw. Every field is optional in
/// general; a landing-page opt-in or subscription needs `ip_address` and
/// `notice_version` (see [`ChangeContext::require_proof`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Proof {
    /// The person's IP address.
    pub ip_address: Option<std::net::IpAddr>,
    /// The person's browser or app (User-Agent), may be empty.
    pub user_agent: String,
    /// The version of the consent notice the person saw, may be empty.
    pub notice_version: String,
    /// When the person acted, if before the request.
    pub collected_at: Option<UnixMillis>,
}

impl Proof {
    /// Checks the fields: the IP address parses (it is stored in its
    /// canonical form), the texts are bounded.
    pub fn new(
        ip_address: &str,
        user_agent: &str,
        notice_version: &str,
        collected_at: Option<UnixMillis>,
    ) -> Result<Self, (&'static str, Invalid)> {
        let ip_address = match ip_address.trim() {
            "" => None,
            raw => {
                check_len(raw, "ip_address", 1, IP_ADDRESS_LEN_MAX)
                    .map_err(|e| ("ip_address", e))?;
                Some(raw.parse::<std::net::IpAddr>().map_err(|_| {
                    (
                        "ip_address",
                        Invalid::new(format!("ip_address {raw:?} is not an IPv4 or IPv6 address")),
                    )
                })?)
            }
        };
        check_len(user_agent, "user_agent", 0, USER_AGENT_LEN_MAX)
            .map_err(|e| ("user_agent", e))?;
        check_len(notice_version, "notice_version", 0, NOTICE_VERSION_LEN_MAX)
            .map_err(|e| ("notice_version", e))?;
        Ok(Self {
            ip_address,
            user_agent: user_agent.to_owned(),
            notice_version: notice_version.to_owned(),
            collected_at,
        })
    }
}

/// Who made a change, how and why. Stored with every history entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeContext {
    /// Where the change came from.
    pub source: Source,
    /// Whom the caller acts for: an end user or operator (may be empty).
    pub actor: String,
    /// Why (may be empty).
    pub reason: String,
    /// The authenticated caller (the API key's name); empty when access
    /// control is off. Set by the server, never by the client.
    pub principal: String,
    /// Evidence of consent.
    pub proof: Proof,
}

impl ChangeContext {
    /// Checks the free-text fields' lengths.
    pub fn new(source: Source, actor: &str, reason: &str) -> Result<Self, (&'static str, Invalid)> {
        check_len(actor, "actor", 0, ACTOR_LEN_MAX).map_err(|e| ("actor", e))?;
        check_len(reason, "reason", 0, REASON_LEN_MAX).map_err(|e| ("reason", e))?;
        Ok(Self {
            source,
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            principal: String::new(),
            proof: Proof::default(),
        })
    }

    /// A giving of consent from a landing page must carry its proof: the
    /// IP address and the notice version. Returns every missing field.
    pub fn require_proof(&self) -> Result<(), Vec<(&'static str, Invalid)>> {
        if self.source != Source::LandingPage {
            return Ok(());
        }
        let mut missing = Vec::new();
        if self.proof.ip_address.is_none() {
            missing.push((
                "ip_address",
                Invalid::new(
                    "ip_address is required when source is SOURCE_LANDING_PAGE and consent is given (proof of consent)",
                ),
            ));
        }
        if self.proof.notice_version.is_empty() {
            missing.push((
                "notice_version",
                Invalid::new(
                    "notice_version is required when source is SOURCE_LANDING_PAGE and consent is given (proof of consent)",
                ),
            ));
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

/// A delivery-feedback event id: 1 to 256 bytes, unique per tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

impl EventId {
    /// Parses an event id.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        check_len(raw, "event_id", 1, EVENT_ID_LEN_MAX)?;
        Ok(Self(raw.to_owned()))
    }

    /// Rebuilds an id that was valid when it was stored. Only the store calls this.
    pub(crate) fn from_trusted(id: String) -> Self {
        Self(id)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks an identifier made of ASCII letters, digits, `.`, `_`, `-`, `:`.
fn check_identifier(raw: &str, what: &str, max: usize) -> Result<(), Invalid> {
    check_len(raw, what, 1, max)?;
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        return Err(Invalid::new(format!(
            "{what} may contain only ASCII letters, digits, '.', '_', '-' and ':'"
        )));
    }
    Ok(())
}

/// A service's id (a newsletter or topic): 1 to 128 bytes of ASCII letters,
/// digits, `.`, `_`, `-`, `:`; unique per tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(String);

impl ServiceId {
    /// Parses a service id.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        check_identifier(raw, "service_id", SERVICE_ID_LEN_MAX)?;
        Ok(Self(raw.to_owned()))
    }

    /// Rebuilds an id that was valid when it was stored. Only the store calls this.
    pub(crate) fn from_trusted(id: String) -> Self {
        Self(id)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A product user's id (for usage tracking): opaque, 1 to 256 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Parses a user id.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        check_len(raw, "user_id", 1, USER_ID_LEN_MAX)?;
        Ok(Self(raw.to_owned()))
    }

    /// Rebuilds an id that was valid when it was stored. Only the store calls this.
    pub(crate) fn from_trusted(id: String) -> Self {
        Self(id)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a human-readable name: 1 to `max` bytes, no control characters.
pub fn parse_name(raw: &str, what: &str, max: usize) -> Result<String, Invalid> {
    let trimmed = raw.trim();
    check_len(trimmed, what, 1, max)?;
    if trimmed.chars().any(char::is_control) {
        return Err(Invalid::new(format!(
            "{what} may not contain control characters"
        )));
    }
    Ok(trimmed.to_owned())
}

/// A postal address: free-form, at most 1024 bytes, never quarantined.
pub fn parse_postal_address(raw: &str) -> Result<String, Invalid> {
    check_len(raw.trim(), "postal_address", 0, POSTAL_ADDRESS_LEN_MAX)?;
    Ok(raw.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Address, AddressKind};

    #[test]
    fn tenants() {
        assert!(Tenant::parse("acme-prod_1.eu").is_ok());
        for bad in ["", "has space", "ümlaut", &"t".repeat(65)] {
            assert!(Tenant::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn profile_ids_are_opaque_but_bounded() {
        assert!(ProfileId::parse("any thing/ü").is_ok());
        assert!(ProfileId::parse(&"x".repeat(256)).is_ok());
        assert!(ProfileId::parse(&"x".repeat(257)).is_err());
        assert!(ProfileId::parse("").is_err());
    }

    proptest::proptest! {
        /// Any input, however odd, parses or is refused: never a panic. What
        /// parses is normalised once and for all (parsing it again changes nothing).
        #[test]
        fn parsing_never_panics_and_normalises_idempotently(
            raw in proptest::prop_oneof![
                "\\PC{0,80}",
                " {0,2}[a-zA-Z0-9._%+-]{1,20}@[a-zA-Z0-9-]{1,10}\\.[a-zA-Z]{2,5} {0,2}",
                " ?\\+[1-9][0-9 .()-]{7,20}",
            ],
            kind in 0..4u8,
        ) {
            let kind = [None, Some(AddressKind::Email), Some(AddressKind::Phone), Some(AddressKind::PushToken)][usize::from(kind)];
            if let Ok(address) = Address::parse(kind, &raw) {
                let again = Address::parse(Some(address.kind()), address.as_str());
                proptest::prop_assert_eq!(again, Ok(address));
            }
            let _ = Tenant::parse(&raw);
            let _ = ProfileId::parse(&raw);
            let _ = EventId::parse(&raw);
        }
    }

    #[test]
    fn proof_is_validated_and_required_from_landing_pages() {
        let proof = Proof::new(" 2001:DB8::1 ", "Mozilla/5.0", "v3", Some(5));
        assert_eq!(
            proof
                .as_ref()
                .map(|p| p.ip_address.map(|ip| ip.to_string())),
            Ok(Some("2001:db8::1".to_owned()))
        );
        assert_eq!(
            Proof::new("300.1.1.1", "", "", None).map_err(|(f, _)| f),
            Err("ip_address")
        );
        assert_eq!(
            Proof::new("", &"u".repeat(USER_AGENT_LEN_MAX + 1), "", None).map_err(|(f, _)| f),
            Err("user_agent")
        );
        let mut ctx = ChangeContext::new(Source::LandingPage, "", "").expect("valid");
        let fields = |ctx: &ChangeContext| {
            ctx.require_proof()
                .map_err(|missing| missing.into_iter().map(|(f, _)| f).collect::<Vec<_>>())
        };
        assert_eq!(fields(&ctx), Err(vec!["ip_address", "notice_version"]));
        ctx.proof = Proof::new("192.0.2.1", "", "", None).expect("valid");
        assert_eq!(fields(&ctx), Err(vec!["notice_version"]));
        ctx.proof = Proof::new("", "", "2026-01", None).expect("valid");
        assert_eq!(fields(&ctx), Err(vec!["ip_address"]));
        ctx.proof = Proof::new("192.0.2.1", "", "", None).expect("valid");
        ctx.proof.notice_version = "2026-01".into();
        assert_eq!(ctx.require_proof(), Ok(()));
        ctx.source = Source::Operator;
        ctx.proof = Proof::default();
        assert_eq!(ctx.require_proof(), Ok(()), "only landing pages must prove");
    }

    #[test]
    fn service_ids_and_names() {
        assert!(ServiceId::parse("news:weekly-1.eu").is_ok());
        assert!(ServiceId::parse("has space").is_err());
        assert!(ServiceId::parse(&"s".repeat(SERVICE_ID_LEN_MAX + 1)).is_err());
        assert_eq!(
            parse_name("  Weekly  ", "name", 10),
            Ok("Weekly".to_owned())
        );
        assert!(parse_name("a\u{7}b", "name", 10).is_err());
        assert!(parse_name("   ", "name", 10).is_err());
    }

    #[test]
    fn an_empty_required_value_is_named_as_required_not_as_too_short() {
        assert_eq!(Tenant::parse(""), Err(Invalid::new("tenant is required")));
        assert_eq!(
            ProfileId::parse(""),
            Err(Invalid::new("profile_id is required"))
        );
        assert_eq!(
            Tenant::parse(&"t".repeat(TENANT_LEN_MAX + 1)),
            Err(Invalid::new("tenant must be 1 to 64 bytes long, not 65"))
        );
    }

    #[test]
    fn the_channel_names_listed_to_clients_are_every_wire_name_in_order() {
        assert_eq!(
            Channel::api_names(),
            "CHANNEL_EMAIL, CHANNEL_SMS, CHANNEL_PUSH, CHANNEL_VOICE, CHANNEL_DIRECT_MAIL"
        );
        assert_eq!(
            Channel::ALL.map(Channel::short_name),
            ["email", "sms", "push", "voice", "direct_mail"]
        );
    }

    #[test]
    fn a_postal_address_is_kept_trimmed_and_bounded() {
        assert_eq!(
            parse_postal_address("  1 Main St\nSpringfield  "),
            Ok("1 Main St\nSpringfield".to_owned())
        );
        assert_eq!(parse_postal_address("   "), Ok(String::new()), "none");
        assert!(parse_postal_address(&"a".repeat(POSTAL_ADDRESS_LEN_MAX)).is_ok());
        assert!(parse_postal_address(&"a".repeat(POSTAL_ADDRESS_LEN_MAX + 1)).is_err());
    }

    #[test]
    fn change_context_lengths_are_bounded() {
        assert!(ChangeContext::new(Source::Api, "bot", "why").is_ok());
        let long = "x".repeat(ACTOR_LEN_MAX + 1);
        assert_eq!(
            ChangeContext::new(Source::Api, &long, "").map_err(|(f, _)| f),
            Err("actor")
        );
    }
}
