//! The decision: may this profile be contacted on this channel, now?
//!
//! Pure: it takes the profile and a way to look up the status of each of its
//! addresses, so that it can be tested and benchmarked without a store.

use super::consent::{ConsentStatus, Profile};
use super::quarantine::AddressStatus;
use super::tenant::Regime;
use super::types::{Address, Channel};

/// Why a profile may not be contacted, in the order in which reasons are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExclusionReason {
    /// No such profile.
    ProfileNotFound,
    /// Opted out of every channel.
    OptedOutAllChannels,
    /// Opted out of this channel.
    OptedOutChannel,
    /// The channel needs an opt-in (OPT_IN regime) and the profile has not opted in to it.
    NoOptIn,
    /// The delivery is for a service and the profile has no ACTIVE subscription to it.
    NotSubscribed,
    /// No address for this channel.
    NoAddress,
    /// No usable address, and at least one is quarantined.
    AddressQuarantined,
    /// No usable address, and at least one is denylisted.
    AddressDenylisted,
    /// No usable address, and at least one is opted out of this channel
    /// (an address opt-out, such as an SMS STOP).
    AddressOptedOut,
}

impl ExclusionReason {
    /// Every reason, in order.
    pub const ALL: [ExclusionReason; 9] = [
        ExclusionReason::ProfileNotFound,
        ExclusionReason::OptedOutAllChannels,
        ExclusionReason::OptedOutChannel,
        ExclusionReason::NoOptIn,
        ExclusionReason::NotSubscribed,
        ExclusionReason::NoAddress,
        ExclusionReason::AddressQuarantined,
        ExclusionReason::AddressDenylisted,
        ExclusionReason::AddressOptedOut,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// A set of exclusion reasons, listed in [`ExclusionReason::ALL`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Reasons(u16);

impl Reasons {
    /// Adds a reason.
    fn add(&mut self, reason: ExclusionReason) {
        self.0 |= 1 << reason.index();
    }

    /// Whether no reason applies: the profile may be contacted.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The primary reason, if any.
    pub fn primary(self) -> Option<ExclusionReason> {
        self.iter().next()
    }

    /// How many reasons.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The reasons, primary first.
    pub fn iter(self) -> impl Iterator<Item = ExclusionReason> + Clone {
        ExclusionReason::ALL
            .into_iter()
            .filter(move |r| self.0 & (1 << r.index()) != 0)
    }
}

/// What a delivery can reach of a profile on one channel: its addresses of
/// the channel's kind by status (or, for direct mail, its postal address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reach {
    /// Addresses the channel could use.
    pub addresses: u32,
    /// Of those, usable now (VALID or WITH_ERRORS).
    pub usable: u32,
    /// Whether one of them is quarantined.
    pub quarantined: bool,
    /// Whether one of them is denylisted.
    pub denylisted: bool,
    /// Whether one of them is opted out of the channel.
    pub opted_out: bool,
}

impl Reach {
    /// Counts one address with its status and whether it is opted out of
    /// the channel: it is usable when its status is and it is not.
    pub fn add_address(&mut self, status: AddressStatus, opted_out: bool) {
        self.addresses += 1;
        if status.is_usable() && !opted_out {
            self.usable += 1;
        }
        self.quarantined |= status == AddressStatus::Quarantined;
        self.denylisted |= status == AddressStatus::Denylisted;
        self.opted_out |= opted_out;
    }

    /// A postal address (never quarantined), when there is one.
    pub fn postal(present: bool) -> Self {
        let n = u32::from(present);
        Self {
            addresses: n,
            usable: n,
            ..Self::default()
        }
    }
}

/// Everything a decision about an existing profile depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The profile's all-channels setting.
    pub all_channels: ConsentStatus,
    /// The profile's own setting for the channel.
    pub channel: ConsentStatus,
    /// What the delivery can reach.
    pub reach: Reach,
}

/// The rule: which reasons exclude a profile (`None`: it does not exist).
/// Every decision is made here, whether from a [`Profile`] ([`decide`]) or
/// from the decision index's compact form of one.
pub fn judge(facts: Option<Facts>, policy: Policy) -> Reasons {
    let mut reasons = Reasons::default();
    let Some(facts) = facts else {
        reasons.add(ExclusionReason::ProfileNotFound);
        return reasons;
    };
    if facts.all_channels == ConsentStatus::OptedOut {
        reasons.add(ExclusionReason::OptedOutAllChannels);
    }
    match facts.channel {
        ConsentStatus::OptedOut => reasons.add(ExclusionReason::OptedOutChannel),
        ConsentStatus::NoPreference if policy.regime == Regime::OptIn => {
            reasons.add(ExclusionReason::NoOptIn);
        }
        ConsentStatus::NoPreference | ConsentStatus::OptedIn => {}
    }
    if policy.subscribed == Some(false) {
        reasons.add(ExclusionReason::NotSubscribed);
    }
    let reach = facts.reach;
    if reach.addresses == 0 {
        reasons.add(ExclusionReason::NoAddress);
    } else if reach.usable == 0 {
        if reach.quarantined {
            reasons.add(ExclusionReason::AddressQuarantined);
        }
        if reach.denylisted {
            reasons.add(ExclusionReason::AddressDenylisted);
        }
        if reach.opted_out {
            reasons.add(ExclusionReason::AddressOptedOut);
        }
    }
    reasons
}

/// The answer for one profile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Every reason that applies, primary first; empty when eligible.
    pub reasons: Vec<ExclusionReason>,
    /// The addresses that may be used; empty when not eligible.
    pub addresses: Vec<String>,
}

impl Decision {
    /// Whether the profile may be contacted.
    pub fn eligible(&self) -> bool {
        self.reasons.is_empty()
    }

    /// The primary reason, if excluded.
    pub fn primary(&self) -> Option<ExclusionReason> {
        self.reasons.first().copied()
    }
}

/// What applies to a delivery beyond its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// The tenant's regime for the channel.
    pub regime: Regime,
    /// For a delivery of a service: whether the profile has an ACTIVE
    /// subscription to it. `None` when no service is asked about.
    pub subscribed: Option<bool>,
}

/// Decides for one profile (`None`: it does not exist). `status_of` gives
/// the status of each of its addresses on the channel and whether the
/// address is opted out of the channel (one lookup each).
pub fn decide<E>(
    profile: Option<&Profile>,
    channel: Channel,
    policy: Policy,
    mut status_of: impl FnMut(&Address) -> Result<(AddressStatus, bool), E>,
) -> Result<Decision, E> {
    let Some(profile) = profile else {
        return Ok(Decision {
            reasons: judge(None, policy).iter().collect(),
            addresses: Vec::new(),
        });
    };
    let mut usable = Vec::new();
    let reach = match channel.address_kind() {
        None => {
            let present = !profile.postal_address.is_empty();
            if present {
                usable.push(profile.postal_address.clone());
            }
            Reach::postal(present)
        }
        Some(kind) => {
            let mut reach = Reach::default();
            for address in profile.addresses(kind) {
                let (status, opted_out) = status_of(address)?;
                if status.is_usable() && !opted_out {
                    usable.push(address.as_str().to_owned());
                }
                reach.add_address(status, opted_out);
            }
            reach
        }
    };
    let facts = Facts {
        all_channels: profile.consent.all_channels.status,
        channel: profile.consent.channel(channel).status,
        reach,
    };
    let reasons = judge(Some(facts), policy);
    if !reasons.is_empty() {
        usable.clear();
    }
    Ok(Decision {
        reasons: reasons.iter().collect(),
        addresses: usable,
    })
}

/// A delivery's exclusion report: counts by primary reason.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// Decisions counted.
    pub total: u64,
    /// Eligible decisions.
    pub eligible: u64,
    /// Excluded decisions per primary reason, indexed like [`ExclusionReason::ALL`].
    excluded: [u64; ExclusionReason::ALL.len()],
}

impl Summary {
    /// Counts one decision.
    pub fn add(&mut self, decision: &Decision) {
        self.count(decision.primary());
    }

    /// Counts one decision by its primary reason (`None`: eligible).
    pub fn count(&mut self, primary: Option<ExclusionReason>) {
        self.total += 1;
        match primary {
            None => self.eligible += 1,
            Some(reason) => self.excluded[reason.index()] += 1,
        }
    }

    /// Adds another summary's counts.
    pub fn merge(&mut self, other: &Summary) {
        self.total += other.total;
        self.eligible += other.eligible;
        for (mine, theirs) in self.excluded.iter_mut().zip(other.excluded) {
            *mine += theirs;
        }
    }

    /// Excluded decisions.
    pub fn excluded(&self) -> u64 {
        self.total - self.eligible
    }

    /// The non-zero counts per primary reason, in reason order.
    pub fn by_reason(&self) -> impl Iterator<Item = (ExclusionReason, u64)> + '_ {
        ExclusionReason::ALL
            .into_iter()
            .zip(self.excluded)
            .filter(|(_, count)| *count > 0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use super::super::consent::{ProfileAddresses, Scope};
    use super::super::types::{ChangeContext, ProfileId, Source};
    use super::*;
    use ExclusionReason::*;

    fn email(s: &str) -> Address {
        Address::email(s).expect("valid email")
    }

    #[test]
    fn reasons_list_in_order_with_the_primary_first_and_count_themselves() {
        let none = Reasons::default();
        assert_eq!(
            (none.primary(), none.len(), none.is_empty()),
            (None, 0, true)
        );
        assert_eq!(none.iter().count(), 0);
        let mut some = Reasons::default();
        some.add(AddressDenylisted);
        some.add(OptedOutChannel);
        some.add(NoAddress);
        assert_eq!(
            (some.primary(), some.len(), some.is_empty()),
            (Some(OptedOutChannel), 3, false)
        );
        assert_eq!(
            some.iter().collect::<Vec<_>>(),
            [OptedOutChannel, NoAddress, AddressDenylisted]
        );
        let mut one = Reasons::default();
        one.add(ProfileNotFound);
        assert_eq!((one.primary(), one.len()), (Some(ProfileNotFound), 1));
    }

    fn profile(emails: &[&str]) -> Profile {
        Profile::new(
            ProfileId::parse("p").expect("valid id"),
            ProfileAddresses {
                emails: emails.iter().map(|e| email(e)).collect(),
                postal_address: "1 Main St".into(),
                ..ProfileAddresses::default()
            },
            0,
        )
    }

    fn run(
        p: Option<&Profile>,
        channel: Channel,
        statuses: &[(&str, AddressStatus, bool)],
    ) -> Decision {
        let map: HashMap<String, (AddressStatus, bool)> = statuses
            .iter()
            .map(|(a, s, o)| ((*a).to_owned(), (*s, *o)))
            .collect();
        let result: Result<Decision, Infallible> = decide(p, channel, Policy::default(), |a| {
            Ok(map.get(a.as_str()).copied().unwrap_or_default())
        });
        result.unwrap_or_else(|never| match never {})
    }

    /// Name, profile, channel, address statuses, expected reasons, expected addresses.
    type Case<'a> = (
        &'a str,
        Option<&'a Profile>,
        Channel,
        Vec<(&'a str, AddressStatus, bool)>,
        Vec<ExclusionReason>,
        Vec<&'a str>,
    );

    #[test]
    fn decision_table() {
        let ctx = ChangeContext::new(Source::Api, "", "").expect("valid");
        let plain = profile(&["a@x.io", "b@x.io"]);
        let mut opted_out = plain.clone();
        opted_out.set_consent(Scope::AllChannels, ConsentStatus::OptedOut, &ctx, 1);
        opted_out.set_consent(
            Scope::Channel(Channel::Email),
            ConsentStatus::OptedOut,
            &ctx,
            1,
        );
        let no_email = profile(&[]);
        let q = AddressStatus::Quarantined;
        let d = AddressStatus::Denylisted;
        let cases: Vec<Case<'_>> = vec![
            (
                "unknown",
                None,
                Channel::Email,
                vec![],
                vec![ProfileNotFound],
                vec![],
            ),
            (
                "eligible",
                Some(&plain),
                Channel::Email,
                vec![],
                vec![],
                vec!["a@x.io", "b@x.io"],
            ),
            (
                "one quarantined",
                Some(&plain),
                Channel::Email,
                vec![("a@x.io", q, false)],
                vec![],
                vec!["b@x.io"],
            ),
            (
                "all unusable",
                Some(&plain),
                Channel::Email,
                vec![("a@x.io", q, false), ("b@x.io", d, false)],
                vec![AddressQuarantined, AddressDenylisted],
                vec![],
            ),
            (
                "opted out, all reasons",
                Some(&opted_out),
                Channel::Email,
                vec![("a@x.io", d, false), ("b@x.io", d, false)],
                vec![OptedOutAllChannels, OptedOutChannel, AddressDenylisted],
                vec![],
            ),
            (
                "one opted out of the channel",
                Some(&plain),
                Channel::Email,
                vec![("a@x.io", AddressStatus::Valid, true)],
                vec![],
                vec!["b@x.io"],
            ),
            (
                "all opted out of the channel",
                Some(&plain),
                Channel::Email,
                vec![
                    ("a@x.io", AddressStatus::Valid, true),
                    ("b@x.io", AddressStatus::WithErrors, true),
                ],
                vec![AddressOptedOut],
                vec![],
            ),
            (
                "opted out and quarantined",
                Some(&plain),
                Channel::Email,
                vec![("a@x.io", q, false), ("b@x.io", AddressStatus::Valid, true)],
                vec![AddressQuarantined, AddressOptedOut],
                vec![],
            ),
            (
                "no address",
                Some(&no_email),
                Channel::Email,
                vec![],
                vec![NoAddress],
                vec![],
            ),
            (
                "no phone",
                Some(&plain),
                Channel::Sms,
                vec![],
                vec![NoAddress],
                vec![],
            ),
            (
                "postal",
                Some(&plain),
                Channel::DirectMail,
                vec![],
                vec![],
                vec!["1 Main St"],
            ),
        ];
        for (name, p, channel, statuses, reasons, addresses) in cases {
            let decision = run(p, channel, &statuses);
            assert_eq!(decision.reasons, reasons, "{name}");
            assert_eq!(decision.addresses, addresses, "{name}");
        }
    }

    #[test]
    fn opt_in_regime_and_subscriptions() {
        let ctx = ChangeContext::new(Source::Api, "", "").expect("valid");
        let decide_with = |p: &Profile, policy: Policy| -> Vec<ExclusionReason> {
            let result: Result<Decision, Infallible> =
                decide(Some(p), Channel::Email, policy, |_| {
                    Ok((AddressStatus::Valid, false))
                });
            result.unwrap_or_else(|never| match never {}).reasons
        };
        let opt_in = Policy {
            regime: Regime::OptIn,
            subscribed: None,
        };
        let mut p = profile(&["a@x.io"]);
        assert_eq!(decide_with(&p, opt_in), vec![NoOptIn]);
        assert_eq!(decide_with(&p, Policy::default()), vec![]);
        p.set_consent(
            Scope::Channel(Channel::Sms),
            ConsentStatus::OptedIn,
            &ctx,
            1,
        );
        assert_eq!(
            decide_with(&p, opt_in),
            vec![NoOptIn],
            "another channel's opt-in"
        );
        p.set_consent(Scope::AllChannels, ConsentStatus::OptedIn, &ctx, 2);
        assert_eq!(
            decide_with(&p, opt_in),
            vec![NoOptIn],
            "consent is specific: an all-channels opt-in is not an e-mail opt-in"
        );
        p.set_consent(
            Scope::Channel(Channel::Email),
            ConsentStatus::OptedIn,
            &ctx,
            3,
        );
        assert_eq!(decide_with(&p, opt_in), vec![]);
        p.set_consent(Scope::AllChannels, ConsentStatus::OptedOut, &ctx, 4);
        assert_eq!(
            decide_with(&p, opt_in),
            vec![OptedOutAllChannels],
            "an all-channels opt-out still wins"
        );
        let unsubscribed = Policy {
            regime: Regime::OptOut,
            subscribed: Some(false),
        };
        let fresh = profile(&["a@x.io"]);
        assert_eq!(decide_with(&fresh, unsubscribed), vec![NotSubscribed]);
        let subscribed = Policy {
            subscribed: Some(true),
            ..unsubscribed
        };
        assert_eq!(decide_with(&fresh, subscribed), vec![]);
    }

    #[test]
    fn a_postal_address_is_one_usable_address_and_never_quarantined() {
        assert_eq!(
            Reach::postal(true),
            Reach {
                addresses: 1,
                usable: 1,
                quarantined: false,
                denylisted: false,
                opted_out: false,
            }
        );
        assert_eq!(Reach::postal(false), Reach::default());
    }

    #[test]
    fn a_decision_with_a_reason_is_not_eligible() {
        let excluded = Decision {
            reasons: vec![AddressQuarantined],
            addresses: vec![],
        };
        assert!(!excluded.eligible());
        assert_eq!(excluded.primary(), Some(AddressQuarantined));
        let eligible = Decision {
            reasons: vec![],
            addresses: vec!["a@x.io".into()],
        };
        assert!(eligible.eligible());
        assert_eq!(eligible.primary(), None);
    }

    #[test]
    fn summary_counts_primary_reasons() {
        let mut summary = Summary::default();
        summary.add(&Decision::default());
        summary.add(&Decision {
            reasons: vec![OptedOutAllChannels, AddressQuarantined],
            addresses: vec![],
        });
        summary.add(&Decision {
            reasons: vec![ProfileNotFound],
            addresses: vec![],
        });
        let mut total = Summary::default();
        total.merge(&summary);
        total.merge(&summary);
        assert_eq!((total.total, total.eligible, total.excluded()), (6, 2, 4));
        let by: Vec<_> = total.by_reason().collect();
        assert_eq!(by, vec![(ProfileNotFound, 2), (OptedOutAllChannels, 2)]);
    }
}
