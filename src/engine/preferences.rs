//! The preference page's rule: what a submitted form changes.
//!
//! The page shows, per channel, a box that is ticked when the person's own
//! setting lets the tenant contact them there (opted in, or no preference
//! under the OPT_OUT regime); an "unsubscribe from everything" box; and a box
//! per subscription that is active or waiting for confirmation. A submission
//! changes only what differs from the current state, so a form sent twice,
//! or sent unchanged, writes nothing.

use super::consent::{ConsentState, ConsentStatus, Scope};
use super::subscription::{Subscription, SubscriptionStatus};
use super::tenant::{Regime, TenantSettings};
use super::types::{Channel, ServiceId};

/// Whether a channel's box is ticked: the person's own setting lets the
/// tenant contact them on it (the all-channels setting aside).
pub fn channel_ticked(state: &ConsentState, settings: &TenantSettings, channel: Channel) -> bool {
    match state.channel(channel).status {
        ConsentStatus::OptedIn => true,
        ConsentStatus::OptedOut => false,
        ConsentStatus::NoPreference => settings.regime(channel) == Regime::OptOut,
    }
}

/// Whether a subscription has a box: it is active or waiting for confirmation.
pub fn subscription_shown(subscription: &Subscription) -> bool {
    matches!(
        subscription.status,
        SubscriptionStatus::Active | SubscriptionStatus::PendingConfirmation
    )
}

/// What the person submitted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageChoice {
    /// The "unsubscribe from everything" box.
    pub everything_off: bool,
    /// The channel boxes, indexed by [`Channel::index`]: ticked or not.
    pub channels: [bool; 5],
    /// The services whose box is still ticked.
    pub services_kept: Vec<ServiceId>,
}

/// What a submission changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PreferenceChanges {
    /// Consent changes, the all-channels one first.
    pub consent: Vec<(Scope, ConsentStatus)>,
    /// Subscriptions to end.
    pub unsubscribe: Vec<ServiceId>,
}

impl PreferenceChanges {
    /// True when the submission changes nothing.
    pub fn is_empty(&self) -> bool {
        self.consent.is_empty() && self.unsubscribe.is_empty()
    }
}

/// The changes that turn the current state into what the person submitted.
/// Subscriptions not shown (ended ones) are never touched; a service
/// cannot be subscribed to from the page (double opt-in needs a
/// confirmation message, which consentd does not send).
pub fn preference_changes(
    state: &ConsentState,
    settings: &TenantSettings,
    subscriptions: &[Subscription],
    choice: &PageChoice,
) -> PreferenceChanges {
    let mut changes = PreferenceChanges::default();
    if choice.everything_off != state.opted_out_all() {
        let status = if choice.everything_off {
            ConsentStatus::OptedOut
        } else {
            ConsentStatus::OptedIn
        };
        changes.consent.push((Scope::AllChannels, status));
    }
    for channel in Channel::ALL {
        let ticked = choice.channels[channel.index()];
        if ticked != channel_ticked(state, settings, channel) {
            let status = if ticked {
                ConsentStatus::OptedIn
            } else {
                ConsentStatus::OptedOut
            };
            changes.consent.push((Scope::Channel(channel), status));
        }
    }
    for subscription in subscriptions.iter().filter(|s| subscription_shown(s)) {
        if !choice.services_kept.contains(&subscription.service_id) {
            changes.unsubscribe.push(subscription.service_id.clone());
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::consent::ConsentMark;

    fn mark(status: ConsentStatus) -> ConsentMark {
        ConsentMark {
            status,
            changed: None,
        }
    }

    fn sub(id: &str, status: SubscriptionStatus) -> Subscription {
        Subscription {
            service_id: ServiceId::parse(id).expect("valid"),
            status,
            changed_at: 0,
            pending: None,
        }
    }

    fn sms_opt_in() -> TenantSettings {
        let mut settings = TenantSettings::default();
        settings.regimes[Channel::Sms.index()] = Regime::OptIn;
        settings
    }

    #[test]
    fn a_box_is_ticked_when_the_own_setting_allows_contact() {
        let settings = sms_opt_in();
        let mut state = ConsentState::default();
        assert!(channel_ticked(&state, &settings, Channel::Email));
        assert!(!channel_ticked(&state, &settings, Channel::Sms));
        state.channels[Channel::Sms.index()] = mark(ConsentStatus::OptedIn);
        state.channels[Channel::Email.index()] = mark(ConsentStatus::OptedOut);
        assert!(channel_ticked(&state, &settings, Channel::Sms));
        assert!(!channel_ticked(&state, &settings, Channel::Email));
        state.all_channels = mark(ConsentStatus::OptedOut);
        assert!(
            channel_ticked(&state, &settings, Channel::Sms),
            "the all-channels box is separate"
        );
    }

    #[test]
    fn an_unchanged_form_changes_nothing() {
        let settings = sms_opt_in();
        let state = ConsentState::default();
        let subs = [sub("news", SubscriptionStatus::Active)];
        let choice = PageChoice {
            everything_off: false,
            channels: Channel::ALL.map(|c| channel_ticked(&state, &settings, c)),
            services_kept: vec![ServiceId::parse("news").expect("valid")],
        };
        assert!(preference_changes(&state, &settings, &subs, &choice).is_empty());
    }

    #[test]
    fn unticking_opts_out_ticking_opts_in_and_everything_comes_first() {
        let settings = sms_opt_in();
        let state = ConsentState::default();
        let mut channels = Channel::ALL.map(|c| channel_ticked(&state, &settings, c));
        channels[Channel::Email.index()] = false;
        channels[Channel::Sms.index()] = true;
        let changes = preference_changes(
            &state,
            &settings,
            &[],
            &PageChoice {
                everything_off: true,
                channels,
                services_kept: vec![],
            },
        );
        assert_eq!(
            changes.consent,
            vec![
                (Scope::AllChannels, ConsentStatus::OptedOut),
                (Scope::Channel(Channel::Email), ConsentStatus::OptedOut),
                (Scope::Channel(Channel::Sms), ConsentStatus::OptedIn),
            ]
        );
    }

    #[test]
    fn clearing_everything_lifts_the_all_channels_opt_out() {
        let settings = TenantSettings::default();
        let state = ConsentState {
            all_channels: mark(ConsentStatus::OptedOut),
            ..ConsentState::default()
        };
        let choice = PageChoice {
            everything_off: false,
            channels: [true; 5],
            services_kept: vec![],
        };
        assert_eq!(
            preference_changes(&state, &settings, &[], &choice).consent,
            vec![(Scope::AllChannels, ConsentStatus::OptedIn)]
        );
        let kept = PageChoice {
            everything_off: true,
            ..choice
        };
        assert!(preference_changes(&state, &settings, &[], &kept).is_empty());
    }

    #[test]
    fn only_shown_subscriptions_left_unticked_are_ended() {
        let settings = TenantSettings::default();
        let state = ConsentState::default();
        let subs = [
            sub("active", SubscriptionStatus::Active),
            sub("pending", SubscriptionStatus::PendingConfirmation),
            sub("ended", SubscriptionStatus::Unsubscribed),
            sub("kept", SubscriptionStatus::Active),
        ];
        let choice = PageChoice {
            everything_off: false,
            channels: [true; 5],
            services_kept: vec![ServiceId::parse("kept").expect("valid")],
        };
        let changes = preference_changes(&state, &settings, &subs, &choice);
        assert!(changes.consent.is_empty());
        assert_eq!(
            changes.unsubscribe,
            vec![
                ServiceId::parse("active").expect("valid"),
                ServiceId::parse("pending").expect("valid"),
            ]
        );
        assert!(!subscription_shown(&subs[2]));
    }
}
