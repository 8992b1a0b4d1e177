//! Subscriptions to services (newsletters, topics), with double opt-in.
//!
//! A subscription to a service without double opt-in is ACTIVE at once. With
//! double opt-in it is PENDING_CONFIRMATION until the person presents the
//! token they were sent; the token is 256 random bits, kept only as its
//! SHA-256, single-use, and expires. Only ACTIVE counts for eligibility.

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::types::{Channel, Invalid, ProfileId, ServiceId, UnixMillis};

/// Random bytes in a confirmation token (256 bits).
pub const TOKEN_BYTES: usize = 32;

/// A service (newsletter, topic) that profiles subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its id, unique in the tenant.
    pub id: ServiceId,
    /// A human-readable name.
    pub name: String,
    /// The channel it is delivered on.
    pub channel: Channel,
    /// Whether a subscription needs confirming.
    pub double_opt_in: bool,
    /// When it was created.
    pub created_at: UnixMillis,
}

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionStatus {
    /// Waiting for the person to confirm (double opt-in): not subscribed yet.
    PendingConfirmation,
    /// Subscribed.
    Active,
    /// Unsubscribed.
    Unsubscribed,
}

/// A confirmation waiting for its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingConfirmation {
    /// The SHA-256 of the token sent.
    pub token_hash: TokenHash,
    /// When the token stops working.
    pub expires_at: UnixMillis,
}

/// A profile's subscription to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The service.
    pub service_id: ServiceId,
    /// Where it stands.
    pub status: SubscriptionStatus,
    /// When the status last changed.
    pub changed_at: UnixMillis,
    /// The confirmation waited for, while PENDING_CONFIRMATION.
    pub pending: Option<PendingConfirmation>,
}

/// A confirmation token as sent to the person: 256 random bits.
#[derive(Clone, PartialEq, Eq)]
pub struct Token([u8; TOKEN_BYTES]);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<secret>)")
    }
}

impl Token {
    /// A token from random bytes (the caller draws them from the OS).
    pub fn from_random(bytes: [u8; TOKEN_BYTES]) -> Self {
        Self(bytes)
    }

    /// Parses the text form (64 lower- or upper-case hex digits).
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let raw = raw.trim();
        let mut bytes = [0u8; TOKEN_BYTES];
        if raw.len() != TOKEN_BYTES * 2 || !raw.is_ascii() {
            return Err(Invalid(format!(
                "token must be {} hex digits, as sent in the confirmation",
                TOKEN_BYTES * 2
            )));
        }
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&raw[2 * i..2 * i + 2], 16)
                .map_err(|_| Invalid("token must contain only hex digits".into()))?;
        }
        Ok(Self(bytes))
    }

    /// The text form sent to the person.
    pub fn to_text(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// What the store keeps instead of the token.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0).into())
    }
}

/// The SHA-256 of a token: what the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

/// What the store keeps of a confirmation token, under its hash: whose
/// subscription it confirms, and when it stops working.
///
/// Retention: the record of a superseded token (a new one was sent, or the
/// subscription was ended) is deleted with that change; a used or unused
/// record is deleted once the token has expired. A used token is kept until
/// then so that a second click is answered "already used".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The profile whose subscription it confirms.
    pub profile_id: ProfileId,
    /// The service.
    pub service_id: ServiceId,
    /// When it was used, if it was.
    pub used_at: Option<UnixMillis>,
    /// When it stops working (and its record may be deleted).
    pub expires_at: UnixMillis,
}

/// Why a token does not confirm anything (the subscription is left alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// It was used already.
    Used,
    /// It expired at this time.
    Expired(UnixMillis),
    /// A newer token was sent, or the subscription was cancelled or confirmed otherwise.
    Superseded,
}

/// What a change to a subscription did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionChange {
    /// The status before (`None`: never subscribed).
    pub old: Option<SubscriptionStatus>,
    /// The status after.
    pub new: SubscriptionStatus,
}

/// The result of `Subscribe`.
#[derive(Debug)]
pub struct Subscribed {
    /// The subscription afterwards.
    pub subscription: Subscription,
    /// The status change, if any (none when already ACTIVE, or when a
    /// pending subscription is sent a new token).
    pub change: Option<SubscriptionChange>,
    /// The token to send, when the subscription awaits confirmation.
    pub token: Option<Token>,
}

/// Subscribes: ACTIVE at once, or PENDING_CONFIRMATION with a new token
/// (from `token`) when the service needs double opt-in. A pending
/// subscription is sent a new token, which replaces the old one.
pub fn subscribe(
    current: Option<&Subscription>,
    service: &Service,
    now: UnixMillis,
    token_ttl_ms: i64,
    token: impl FnOnce() -> Token,
) -> Subscribed {
    let old = current.map(|s| s.status);
    if old == Some(SubscriptionStatus::Active) {
        let subscription = current.cloned().unwrap_or_else(|| unreachable_sub(service));
        return Subscribed {
            subscription,
            change: None,
            token: None,
        };
    }
    if !service.double_opt_in {
        return Subscribed {
            subscription: Subscription {
                service_id: service.id.clone(),
                status: SubscriptionStatus::Active,
                changed_at: now,
                pending: None,
            },
            change: Some(SubscriptionChange {
                old,
                new: SubscriptionStatus::Active,
            }),
            token: None,
        };
    }
    let token = token();
    let pending = PendingConfirmation {
        token_hash: token.hash(),
        expires_at: now.saturating_add(token_ttl_ms),
    };
    let (changed_at, change) = match current {
        Some(s) if s.status == SubscriptionStatus::PendingConfirmation => (s.changed_at, None),
        _ => (
            now,
            Some(SubscriptionChange {
                old,
                new: SubscriptionStatus::PendingConfirmation,
            }),
        ),
    };
    Subscribed {
        subscription: Subscription {
            service_id: service.id.clone(),
            status: SubscriptionStatus::PendingConfirmation,
            changed_at,
            pending: Some(pending),
        },
        change,
        token: Some(token),
    }
}

// `subscribe` only calls this when `current` is Some; kept total so that the
// function cannot panic.
fn unreachable_sub(service: &Service) -> Subscription {
    Subscription {
        service_id: service.id.clone(),
        status: SubscriptionStatus::Active,
        changed_at: 0,
        pending: None,
    }
}

/// Confirms a pending subscription with the token whose hash is `hash`.
/// `used_at` is when that token was used, if it was.
pub fn confirm(
    current: Option<&Subscription>,
    hash: &TokenHash,
    used_at: Option<UnixMillis>,
    now: UnixMillis,
) -> Result<(Subscription, SubscriptionChange), TokenRefusal> {
    if used_at.is_some() {
        return Err(TokenRefusal::Used);
    }
    let Some(current) = current else {
        return Err(TokenRefusal::Superseded);
    };
    let Some(pending) = current.pending.filter(|p| p.token_hash == *hash) else {
        return Err(TokenRefusal::Superseded);
    };
    if current.status != SubscriptionStatus::PendingConfirmation {
        return Err(TokenRefusal::Superseded);
    }
    if now >= pending.expires_at {
        return Err(TokenRefusal::Expired(pending.expires_at));
    }
    Ok((
        Subscription {
            service_id: current.service_id.clone(),
            status: SubscriptionStatus::Active,
            changed_at: now,
            pending: None,
        },
        SubscriptionChange {
            old: Some(SubscriptionStatus::PendingConfirmation),
            new: SubscriptionStatus::Active,
        },
    ))
}

/// Unsubscribes (from ACTIVE or PENDING_CONFIRMATION). `None` when there is
/// nothing to end: an idempotent repeat changes nothing.
pub fn unsubscribe(
    current: Option<&Subscription>,
    now: UnixMillis,
) -> Option<(Subscription, SubscriptionChange)> {
    let current = current?;
    if current.status == SubscriptionStatus::Unsubscribed {
        return None;
    }
    Some((
        Subscription {
            service_id: current.service_id.clone(),
            status: SubscriptionStatus::Unsubscribed,
            changed_at: now,
            pending: None,
        },
        SubscriptionChange {
            old: Some(current.status),
            new: SubscriptionStatus::Unsubscribed,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    fn service(double_opt_in: bool) -> Service {
        Service {
            id: ServiceId::parse("weekly").expect("valid"),
            name: "Weekly".into(),
            channel: Channel::Email,
            double_opt_in,
            created_at: 0,
        }
    }

    fn token(n: u8) -> impl FnOnce() -> Token {
        move || Token::from_random([n; TOKEN_BYTES])
    }

    #[test]
    fn single_opt_in_is_active_at_once_and_idempotent() {
        let s = subscribe(None, &service(false), 10, DAY_MS, token(1));
        assert_eq!(s.subscription.status, SubscriptionStatus::Active);
        assert_eq!(
            s.change,
            Some(SubscriptionChange {
                old: None,
                new: SubscriptionStatus::Active
            })
        );
        assert!(s.token.is_none());
        let again = subscribe(Some(&s.subscription), &service(false), 20, DAY_MS, token(2));
        assert_eq!(again.change, None);
        assert_eq!(again.subscription.changed_at, 10);
    }

    #[test]
    fn double_opt_in_confirms_once_before_expiry() {
        let s = subscribe(None, &service(true), 10, DAY_MS, token(1));
        assert_eq!(
            s.subscription.status,
            SubscriptionStatus::PendingConfirmation
        );
        let sent = s.token.expect("a token is sent");
        let hash = sent.hash();
        assert_eq!(
            confirm(Some(&s.subscription), &hash, None, 10 + DAY_MS).map(|(_, c)| c),
            Err(TokenRefusal::Expired(10 + DAY_MS))
        );
        let (active, change) = confirm(Some(&s.subscription), &hash, None, 20).expect("confirms");
        assert_eq!(active.status, SubscriptionStatus::Active);
        assert_eq!(change.old, Some(SubscriptionStatus::PendingConfirmation));
        assert_eq!(
            confirm(Some(&active), &hash, Some(20), 30).map(|(_, c)| c),
            Err(TokenRefusal::Used)
        );
    }

    #[test]
    fn a_new_token_supersedes_the_old_one() {
        let first = subscribe(None, &service(true), 10, DAY_MS, token(1));
        let old_hash = first.token.as_ref().map(Token::hash).expect("token");
        let second = subscribe(
            Some(&first.subscription),
            &service(true),
            20,
            DAY_MS,
            token(2),
        );
        assert_eq!(second.change, None, "still pending: no status change");
        assert_eq!(
            confirm(Some(&second.subscription), &old_hash, None, 30).map(|(_, c)| c),
            Err(TokenRefusal::Superseded)
        );
        let new_hash = second.token.as_ref().map(Token::hash).expect("token");
        assert!(confirm(Some(&second.subscription), &new_hash, None, 30).is_ok());
    }

    #[test]
    fn unsubscribing_cancels_a_pending_confirmation() {
        let s = subscribe(None, &service(true), 10, DAY_MS, token(1));
        let hash = s.token.as_ref().map(Token::hash).expect("token");
        let (gone, change) = unsubscribe(Some(&s.subscription), 20).expect("changes");
        assert_eq!(change.new, SubscriptionStatus::Unsubscribed);
        assert_eq!(unsubscribe(Some(&gone), 30), None);
        assert_eq!(
            confirm(Some(&gone), &hash, None, 30).map(|(_, c)| c),
            Err(TokenRefusal::Superseded)
        );
    }

    #[test]
    fn tokens_round_trip_as_text_and_never_print() {
        let t = Token::from_random([0xab; TOKEN_BYTES]);
        assert_eq!(Token::parse(&t.to_text()), Ok(t.clone()));
        assert_eq!(t.to_text().len(), 64);
        assert!(!format!("{t:?}").contains("ab"));
        assert!(Token::parse("abc").is_err());
        assert!(Token::parse(&"zz".repeat(32)).is_err());
        assert!(Token::parse(&"é".repeat(32)).is_err());
    }

    #[test]
    fn subscribing_again_after_unsubscribing_is_a_change_to_pending() {
        let s = subscribe(None, &service(true), 10, DAY_MS, token(1));
        let (gone, _) = unsubscribe(Some(&s.subscription), 20).expect("changes");
        let again = subscribe(Some(&gone), &service(true), 30, DAY_MS, token(2));
        assert_eq!(
            again.change,
            Some(SubscriptionChange {
                old: Some(SubscriptionStatus::Unsubscribed),
                new: SubscriptionStatus::PendingConfirmation,
            })
        );
        assert_eq!(again.subscription.changed_at, 30);
    }

    #[test]
    fn a_token_reads_upper_case_prints_as_a_secret_and_is_kept_as_its_sha256() {
        let t = Token::from_random([0xab; TOKEN_BYTES]);
        assert_eq!(t.to_text(), "ab".repeat(TOKEN_BYTES));
        assert_eq!(Token::parse(&"AB".repeat(TOKEN_BYTES)), Ok(t.clone()));
        assert_eq!(format!("{t:?}"), "Token(<secret>)");
        // SHA-256 of 32 zero bytes.
        let zero = Token::from_random([0; TOKEN_BYTES]).hash();
        let hex: String = zero.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
        assert_ne!(t.hash(), zero);
    }
}
