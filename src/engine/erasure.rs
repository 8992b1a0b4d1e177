//! Erasure ("right to be forgotten") and what survives it.
//!
//! An erased profile leaves no personal data behind, but a person who had
//! opted out must never be contacted again when another system re-imports
//! them. So each address of an erased profile that had opted out of
//! something leaves a [`Tombstone`]: under the keyed hash of the address
//! ([`ErasureKey::hash`], HMAC-SHA256 with a secret of the tenant's, kept in
//! the store), the scope the person had opted out of. A profile that later
//! gets such an address starts opted out of that scope
//! ([`Tombstone::apply`]), until it opts in again.
//!
//! Invariant: a tombstone holds no address, no profile id and nothing the
//! person wrote; without the secret its hash cannot be tested against a
//! list of addresses.

use std::fmt;

use super::address::{Address, AddressKind};
use super::consent::{ConsentHistoryEntry, ConsentStatus, Profile, Scope};
use super::types::{ChangeContext, Channel, UnixMillis};

/// Bytes of an erasure secret.
pub const ERASURE_KEY_BYTES: usize = 32;

/// A tenant's erasure secret: the HMAC key of its address hashes. Made once,
/// at the tenant's first erasure, and never changed (a new one would make
/// every tombstone unreachable). `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct ErasureKey(pub [u8; ERASURE_KEY_BYTES]);

impl fmt::Debug for ErasureKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ErasureKey(…)")
    }
}

/// The keyed hash of one canonical address, its kind included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddressHash(pub [u8; 32]);

impl ErasureKey {
    /// HMAC-SHA256 of the address's kind byte and its canonical text.
    pub fn hash(&self, address: &Address) -> AddressHash {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let mut ctx = ring::hmac::Context::with_key(&key);
        let kind: u8 = match address.kind() {
            AddressKind::Email => 1,
            AddressKind::Phone => 2,
            AddressKind::PushToken => 3,
        };
        ctx.update(&[kind]);
        ctx.update(address.as_str().as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        AddressHash(out)
    }
}

/// What an erased person had opted out of, kept for one of their addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tombstone {
    /// Every channel.
    pub all_channels: bool,
    /// Channels that use the address's kind, one bit per [`Channel::index`].
    pub channels: u8,
}

impl Tombstone {
    /// What an erasure of `profile` keeps for `address` (one of its
    /// addresses): its all-channels opt-out, and its opt-outs of the
    /// channels that reach that kind of address. `None` when there is
    /// nothing to keep (a profile that never opted out leaves no trace).
    pub fn of(profile: &Profile, address: &Address) -> Option<Tombstone> {
        let all_channels = profile.consent.opted_out_all();
        let channels = Channel::ALL
            .iter()
            .filter(|c| c.address_kind() == Some(address.kind()))
            .filter(|c| profile.consent.channel(**c).status == ConsentStatus::OptedOut)
            .fold(0u8, |mask, c| mask | 1 << c.index());
        let tombstone = Tombstone {
            all_channels,
            channels,
        };
        (!tombstone.is_empty()).then_some(tombstone)
    }

    /// Whether it keeps nothing.
    pub fn is_empty(&self) -> bool {
        !self.all_channels && self.channels == 0
    }

    /// Both together (two erased profiles that shared an address).
    pub fn union(self, other: Tombstone) -> Tombstone {
        Tombstone {
            all_channels: self.all_channels || other.all_channels,
            channels: self.channels | other.channels,
        }
    }

    /// The scopes it opts out of.
    pub fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        let all = self.all_channels.then_some(Scope::AllChannels);
        all.into_iter().chain(
            Channel::ALL
                .iter()
                .filter(|c| self.channels & (1 << c.index()) != 0)
                .map(|c| Scope::Channel(*c)),
        )
    }

    /// Opts `profile` out of every scope of the tombstone for which the
    /// profile has no preference of its own (a choice made on this profile
    /// stands). Returns the history entries to record, one per scope set.
    pub fn apply(
        &self,
        profile: &mut Profile,
        context: &ChangeContext,
        now: UnixMillis,
    ) -> Vec<ConsentHistoryEntry> {
        let mut entries = Vec::new();
        for scope in self.scopes() {
            let current = match scope {
                Scope::AllChannels => profile.consent.all_channels.status,
                Scope::Channel(channel) => profile.consent.channel(channel).status,
            };
            if current != ConsentStatus::NoPreference {
                continue;
            }
            if let Some(entry) = profile.set_consent(scope, ConsentStatus::OptedOut, context, now) {
                entries.push(entry);
            }
        }
        entries
    }
}

/// The record of one erasure: when, by whom and why, and how many
/// tombstones it left. No profile id, no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// When it was made.
    pub erased_at: UnixMillis,
    /// A random number that tells apart two erasures of one millisecond.
    pub id: u64,
    /// Who asked and why (the request's context; its `reason` must not name
    /// the person).
    pub context: ChangeContext,
    /// Tombstones written (addresses whose opt-out was kept).
    pub tombstones: u32,
    /// Consent history entries deleted.
    pub history_entries: u64,
    /// Subscriptions deleted.
    pub subscriptions: u32,
}

/// The reason written into the history of a profile opted out by a
/// tombstone.
pub const TOMBSTONE_REASON: &str = "opted out before an erasure: an address of this profile was opted out by a person who was \
     later erased";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ProfileAddresses, ProfileId, Source};

    fn ctx() -> ChangeContext {
        ChangeContext::new(Source::Operator, "op", "asked").expect("valid")
    }

    fn profile() -> Profile {
        Profile::new(
            ProfileId::parse("p").expect("valid"),
            ProfileAddresses {
                emails: vec![email()],
                phones: vec![phone()],
                ..ProfileAddresses::default()
            },
            0,
        )
    }

    fn email() -> Address {
        Address::from_trusted(AddressKind::Email, "a@x.io".into())
    }

    fn phone() -> Address {
        Address::from_trusted(AddressKind::Phone, "+33612345678".into())
    }

    #[test]
    fn a_profile_that_never_opted_out_leaves_nothing() {
        let mut p = profile();
        p.set_consent(
            Scope::Channel(Channel::Email),
            ConsentStatus::OptedIn,
            &ctx(),
            1,
        );
        assert_eq!(Tombstone::of(&p, &email()), None);
        assert_eq!(Tombstone::of(&p, &phone()), None);
    }

    #[test]
    fn all_channels_is_kept_for_every_address_and_channels_only_for_their_kind() {
        let mut p = profile();
        p.set_consent(
            Scope::Channel(Channel::Sms),
            ConsentStatus::OptedOut,
            &ctx(),
            1,
        );
        p.set_consent(
            Scope::Channel(Channel::DirectMail),
            ConsentStatus::OptedOut,
            &ctx(),
            1,
        );
        // SMS reaches phones, not e-mail; direct mail reaches no address.
        assert_eq!(Tombstone::of(&p, &email()), None);
        assert_eq!(
            Tombstone::of(&p, &phone()),
            Some(Tombstone {
                all_channels: false,
                channels: 1 << Channel::Sms.index(),
            })
        );
        p.set_consent(Scope::AllChannels, ConsentStatus::OptedOut, &ctx(), 2);
        assert_eq!(
            Tombstone::of(&p, &email()),
            Some(Tombstone {
                all_channels: true,
                channels: 0,
            })
        );
    }

    #[test]
    fn applying_opts_out_only_where_the_profile_has_no_preference() {
        let stone = Tombstone {
            all_channels: true,
            channels: 1 << Channel::Email.index(),
        };
        let mut fresh = profile();
        let entries = stone.apply(&mut fresh, &ctx(), 5);
        assert_eq!(entries.len(), 2);
        assert!(fresh.consent.opted_out_all());
        assert_eq!(
            fresh.consent.channel(Channel::Email).status,
            ConsentStatus::OptedOut
        );
        // Applying again changes nothing.
        assert!(stone.apply(&mut fresh, &ctx(), 6).is_empty());

        let mut chose = profile();
        chose.set_consent(Scope::AllChannels, ConsentStatus::OptedIn, &ctx(), 1);
        let entries = stone.apply(&mut chose, &ctx(), 5);
        assert_eq!(entries.len(), 1);
        assert!(!chose.consent.opted_out_all());
    }

    #[test]
    fn the_hash_depends_on_the_key_the_kind_and_the_text() {
        let k1 = ErasureKey([1; 32]);
        let k2 = ErasureKey([2; 32]);
        assert_eq!(k1.hash(&email()), k1.hash(&email()));
        assert_ne!(k1.hash(&email()), k2.hash(&email()));
        let push = Address::from_trusted(AddressKind::PushToken, "a@x.io".into());
        assert_ne!(k1.hash(&email()), k1.hash(&push));
        assert_eq!(format!("{k1:?}"), "ErasureKey(…)");
    }

    #[test]
    fn union_keeps_both() {
        let a = Tombstone {
            all_channels: false,
            channels: 1,
        };
        let b = Tombstone {
            all_channels: true,
            channels: 2,
        };
        assert_eq!(
            a.union(b),
            Tombstone {
                all_channels: true,
                channels: 3
            }
        );
    }
}
