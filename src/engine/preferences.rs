//! The preference page's rule: what a submitted form changes.
//!
//! The page shows, per channel, a box that is ticked when the person's own
//! setting lets the tenant contact them there (opted in, or no preference
//! under the OPT_OUT regime); an "unsubscribe from everything" box; and a box
//! per service of the tenant, ticked while the subscription is active or
//! waiting for confirmation. A service with double opt-in that the person is
//! not subscribed to has no box: subscribing to it needs a confirmation
//! message, which is the tenant's to send. A submission changes only what
//! differs from the current state, so a form sent twice, or sent unchanged,
//! writes nothing.

use super::consent::{ConsentState, ConsentStatus, Scope};
use super::subscription::{Service, Subscription, SubscriptionStatus};
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

/// Whether a service's box is ticked: the subscription is active or
/// waiting for confirmation.
pub fn service_ticked(subscription: Option<&Subscription>) -> bool {
    subscription.is_some_and(|s| {
        matches!(
            s.status,
            SubscriptionStatus::Active | SubscriptionStatus::PendingConfirmation
        )
    })
}

/// Whether a service has a box: it is ticked, or the person may subscribe
/// from the page (the service has no double opt-in).
pub fn service_has_box(service: &Service, subscription: Option<&Subscription>) -> bool {
    service_ticked(subscription) || !service.double_opt_in
}

/// What the person submitted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageChoice {
    /// The "unsubscribe from everything" box.
    pub everything_off: bool,
    /// The channel boxes, indexed by [`Channel::index`]: ticked or not.
    pub channels: [bool; 5],
    /// The services whose box is ticked.
    pub services_ticked: Vec<ServiceId>,
}

/// What a submission changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PreferenceChanges {
    /// Consent changes, the all-channels one first.
    pub consent: Vec<(Scope, ConsentStatus)>,
    /// Subscriptions to end.
    pub unsubscribe: Vec<ServiceId>,
    /// Services to subscribe to (never one with double opt-in).
    pub subscribe: Vec<ServiceId>,
}

/// The changes that turn the current state into what the person submitted.
/// `services` are the tenant's services with the profile's subscription to
/// each. A service without a box is never touched.
pub fn preference_changes(
    state: &ConsentState,
    settings: &TenantSettings,
    services: &[(Service, Option<Subscription>)],
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
    for (service, subscription) in services {
        let subscription = subscription.as_ref();
        if !service_has_box(service, subscription) {
            continue;
        }
        let ticked = choice.services_ticked.contains(&service.id);
        match (service_ticked(subscription), ticked) {
            (true, false) => changes.unsubscribe.push(service.id.clone()),
            (false, true) => changes.subscribe.push(service.id.clone()),
            _ => {}
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

    fn service(id: &str, double_opt_in: bool) -> Service {
        Service {
            id: ServiceId::parse(id).expect("valid"),
            name: id.to_owned(),
            channel: Channel::Email,
            double_opt_in,
            created_at: 0,
        }
    }

    fn sub(id: &str, status: SubscriptionStatus) -> (Service, Option<Subscription>) {
        (
            service(id, false),
            Some(Subscription {
                service_id: ServiceId::parse(id).expect("valid"),
                status,
                changed_at: 0,
                pending: None,
            }),
        )
    }

    fn ids(raw: &[&str]) -> Vec<ServiceId> {
        raw.iter()
            .map(|id| ServiceId::parse(id).expect("valid"))
            .collect()
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
            services_ticked: ids(&["news"]),
        };
        assert_eq!(
            preference_changes(&state, &settings, &subs, &choice),
            PreferenceChanges::default()
        );
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
                services_ticked: vec![],
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
            services_ticked: vec![],
        };
        assert_eq!(
            preference_changes(&state, &settings, &[], &choice).consent,
            vec![(Scope::AllChannels, ConsentStatus::OptedIn)]
        );
        let kept = PageChoice {
            everything_off: true,
            ..choice
        };
        assert_eq!(
            preference_changes(&state, &settings, &[], &kept),
            PreferenceChanges::default()
        );
    }

    #[test]
    fn unticked_subscriptions_end_and_ticked_services_without_double_opt_in_begin() {
        let settings = TenantSettings::default();
        let state = ConsentState::default();
        let services = [
            sub("active", SubscriptionStatus::Active),
            sub("pending", SubscriptionStatus::PendingConfirmation),
            sub("ended", SubscriptionStatus::Unsubscribed),
            sub("kept", SubscriptionStatus::Active),
            sub("back", SubscriptionStatus::Unsubscribed),
            (service("new", false), None),
            (service("untouched", false), None),
            (service("confirm-first", true), None),
        ];
        let choice = PageChoice {
            everything_off: false,
            channels: [true; 5],
            services_ticked: ids(&["kept", "back", "new", "confirm-first"]),
        };
        let changes = preference_changes(&state, &settings, &services, &choice);
        assert!(changes.consent.is_empty());
        assert_eq!(changes.unsubscribe, ids(&["active", "pending"]));
        assert_eq!(
            changes.subscribe,
            ids(&["back", "new"]),
            "never a service with double opt-in, whatever the form says"
        );
    }

    #[test]
    fn a_service_has_a_box_when_ticked_or_open_to_subscribe() {
        let doi = service("doi", true);
        let open = service("open", false);
        let (_, active) = sub("doi", SubscriptionStatus::Active);
        let (_, ended) = sub("doi", SubscriptionStatus::Unsubscribed);
        let (_, pending) = sub("doi", SubscriptionStatus::PendingConfirmation);
        assert!(service_has_box(&doi, active.as_ref()));
        assert!(service_has_box(&doi, pending.as_ref()));
        assert!(!service_has_box(&doi, ended.as_ref()));
        assert!(!service_has_box(&doi, None));
        assert!(service_has_box(&open, None));
        assert!(service_has_box(&open, ended.as_ref()));
        assert!(service_ticked(active.as_ref()) && service_ticked(pending.as_ref()));
        assert!(!service_ticked(ended.as_ref()) && !service_ticked(None));
    }
}
