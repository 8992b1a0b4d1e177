//! Profiles and their consent: the opt-in/opt-out rules.
//!
//! An all-channels opt-out wins over every per-channel setting; lifting it
//! (`OptIn` for all channels) leaves the per-channel settings as they were.

use super::subscription::SubscriptionChange;
use super::types::{
    Address, AddressKind, ChangeContext, Channel, ProfileId, ServiceId, Source, UnixMillis,
};

/// A profile's own setting for one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsentStatus {
    /// Never set.
    #[default]
    NoPreference,
    /// Opted in.
    OptedIn,
    /// Opted out.
    OptedOut,
}

/// The setting of one scope and when and by what it last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsentMark {
    /// The setting.
    pub status: ConsentStatus,
    /// When and by what source it last changed; `None` if never set.
    pub changed: Option<(UnixMillis, Source)>,
}

/// A profile's consent: the all-channels setting and one per channel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsentState {
    /// "No longer contact by any channel" when `OptedOut`.
    pub all_channels: ConsentMark,
    /// Per channel, indexed by [`Channel::index`].
    pub channels: [ConsentMark; 5],
}

impl ConsentState {
    /// Whether the profile opted out of every channel.
    pub fn opted_out_all(&self) -> bool {
        self.all_channels.status == ConsentStatus::OptedOut
    }

    /// The profile's own setting for a channel.
    pub fn channel(&self, channel: Channel) -> ConsentMark {
        self.channels[channel.index()]
    }

    /// What applies to a channel in the end: an all-channels opt-out wins.
    pub fn effective(&self, channel: Channel) -> ConsentStatus {
        if self.opted_out_all() {
            ConsentStatus::OptedOut
        } else {
            self.channel(channel).status
        }
    }
}

/// Which setting a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every channel.
    AllChannels,
    /// One channel.
    Channel(Channel),
}

/// What a history entry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An opt-in or opt-out.
    Consent {
        /// The setting changed.
        scope: Scope,
        /// The setting before.
        old_status: ConsentStatus,
        /// The setting after.
        new_status: ConsentStatus,
    },
    /// A subscription to a service changed.
    Subscription {
        /// The service.
        service_id: ServiceId,
        /// The service's channel.
        channel: Channel,
        /// Before and after.
        change: SubscriptionChange,
    },
}

/// One recorded change to a profile's consent or subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentHistoryEntry {
    /// Position in the profile's history, from 1.
    pub sequence: u64,
    /// When the change was made.
    pub changed_at: UnixMillis,
    /// What changed.
    pub change: Change,
    /// Who, how and why.
    pub context: ChangeContext,
}

/// A profile: its addresses and its consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The profile's id.
    pub id: ProfileId,
    /// E-mail addresses (normalised, distinct).
    pub emails: Vec<Address>,
    /// Phone numbers (E.164, distinct).
    pub phones: Vec<Address>,
    /// Push tokens (distinct).
    pub push_tokens: Vec<Address>,
    /// Free-form postal address; empty when none.
    pub postal_address: String,
    /// The consent state.
    pub consent: ConsentState,
    /// The sequence number of the last history entry (0: none yet).
    pub history_seq: u64,
    /// When the profile was first stored.
    pub created_at: UnixMillis,
    /// When its addresses were last written.
    pub updated_at: UnixMillis,
}

/// The addresses a profile is given by an upsert.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfileAddresses {
    /// E-mail addresses.
    pub emails: Vec<Address>,
    /// Phone numbers.
    pub phones: Vec<Address>,
    /// Push tokens.
    pub push_tokens: Vec<Address>,
    /// Postal address, empty for none.
    pub postal_address: String,
}

impl Profile {
    /// A new profile with the given addresses and no consent set.
    pub fn new(id: ProfileId, addresses: ProfileAddresses, now: UnixMillis) -> Self {
        Self {
            id,
            emails: addresses.emails,
            phones: addresses.phones,
            push_tokens: addresses.push_tokens,
            postal_address: addresses.postal_address,
            consent: ConsentState::default(),
            history_seq: 0,
            created_at: now,
            updated_at: now,
        }
    }

    /// Replaces the addresses, keeping consent and history.
    pub fn set_addresses(&mut self, addresses: ProfileAddresses, now: UnixMillis) {
        self.emails = addresses.emails;
        self.phones = addresses.phones;
        self.push_tokens = addresses.push_tokens;
        self.postal_address = addresses.postal_address;
        self.updated_at = now;
    }

    /// The quarantinable addresses of one kind.
    pub fn addresses(&self, kind: AddressKind) -> &[Address] {
        match kind {
            AddressKind::Email => &self.emails,
            AddressKind::Phone => &self.phones,
            AddressKind::PushToken => &self.push_tokens,
        }
    }

    /// Every quarantinable address of the profile.
    pub fn all_addresses(&self) -> impl Iterator<Item = &Address> {
        self.emails
            .iter()
            .chain(&self.phones)
            .chain(&self.push_tokens)
    }

    /// Sets the consent of `scope` to `status`. Returns the history entry to
    /// record, or `None` when the setting already had that value (an
    /// idempotent repeat changes nothing and records nothing).
    pub fn set_consent(
        &mut self,
        scope: Scope,
        status: ConsentStatus,
        context: &ChangeContext,
        now: UnixMillis,
    ) -> Option<ConsentHistoryEntry> {
        let mark = match scope {
            Scope::AllChannels => &mut self.consent.all_channels,
            Scope::Channel(channel) => &mut self.consent.channels[channel.index()],
        };
        let old_status = mark.status;
        if old_status == status {
            return None;
        }
        *mark = ConsentMark {
            status,
            changed: Some((now, context.source)),
        };
        Some(self.record(
            Change::Consent {
                scope,
                old_status,
                new_status: status,
            },
            context,
            now,
        ))
    }

    /// Numbers a change as the next entry of the profile's history.
    pub fn record(
        &mut self,
        change: Change,
        context: &ChangeContext,
        now: UnixMillis,
    ) -> ConsentHistoryEntry {
        self.history_seq += 1;
        ConsentHistoryEntry {
            sequence: self.history_seq,
            changed_at: now,
            change,
            context: context.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile::new(
            ProfileId::parse("p1").expect("valid id"),
            ProfileAddresses::default(),
            0,
        )
    }

    fn ctx() -> ChangeContext {
        ChangeContext::new(Source::Operator, "alice", "asked").expect("valid")
    }

    #[test]
    fn opt_out_is_idempotent_and_numbered() {
        let mut p = profile();
        let first = p.set_consent(Scope::AllChannels, ConsentStatus::OptedOut, &ctx(), 10);
        assert_eq!(
            first.map(|e| (e.sequence, e.change)),
            Some((
                1,
                Change::Consent {
                    scope: Scope::AllChannels,
                    old_status: ConsentStatus::NoPreference,
                    new_status: ConsentStatus::OptedOut
                }
            ))
        );
        assert_eq!(
            p.set_consent(Scope::AllChannels, ConsentStatus::OptedOut, &ctx(), 20),
            None
        );
        assert_eq!(p.history_seq, 1);
        assert_eq!(p.consent.all_channels.changed, Some((10, Source::Operator)));
    }

    #[test]
    fn all_channels_opt_out_wins_over_channel_opt_in() {
        let mut p = profile();
        p.set_consent(
            Scope::Channel(Channel::Sms),
            ConsentStatus::OptedIn,
            &ctx(),
            1,
        );
        p.set_consent(Scope::AllChannels, ConsentStatus::OptedOut, &ctx(), 2);
        assert_eq!(p.consent.effective(Channel::Sms), ConsentStatus::OptedOut);
        p.set_consent(Scope::AllChannels, ConsentStatus::OptedIn, &ctx(), 3);
        assert_eq!(p.consent.effective(Channel::Sms), ConsentStatus::OptedIn);
        assert_eq!(
            p.consent.effective(Channel::Email),
            ConsentStatus::NoPreference
        );
    }
}
