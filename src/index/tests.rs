//! The index's own rules: how it keeps profiles, addresses and services,
//! and that it decides as the engine does.

use super::*;
use crate::{
    engine::{ChangeContext, ProfileAddresses, Scope, Source, decide},
    store::Position,
};

fn t() -> Tenant {
    Tenant::parse("t").expect("valid")
}

fn email(text: &str) -> Address {
    Address::email(text).expect("valid")
}

fn profile(id: &str, emails: &[&str]) -> Profile {
    Profile::new(
        ProfileId::parse(id).expect("valid"),
        ProfileAddresses {
            emails: emails.iter().map(|e| email(e)).collect(),
            ..ProfileAddresses::default()
        },
        0,
    )
}

fn apply(index: &Index, position: u64, changes: Vec<Change>) {
    index.apply(&[Committed {
        position: Position(position),
        changes,
    }]);
}

fn put(profile: &Profile) -> Change {
    Change::Profile {
        tenant: t(),
        profile: Box::new(profile.clone()),
    }
}

fn status(address: &str, status: AddressStatus) -> Change {
    Change::Address {
        tenant: t(),
        address: email(address),
        status,
    }
}

fn email_delivery() -> Delivery {
    Delivery {
        channel: Channel::Email,
        regime: Regime::OptOut,
        service: None,
    }
}

fn verdict(
    index: &Index,
    id: &str,
    delivery: &Delivery,
) -> (Vec<crate::engine::ExclusionReason>, Vec<String>) {
    match index.tenant_index(&t()) {
        Some(tenant) => {
            let lookup = tenant.lookup(delivery);
            let v = lookup.decide(id);
            (
                v.reasons.iter().collect(),
                v.addresses().map(str::to_owned).collect(),
            )
        }
        None => {
            let lookup = empty_lookup(delivery);
            let v = lookup.decide(id);
            (
                v.reasons.iter().collect(),
                v.addresses().map(str::to_owned).collect(),
            )
        }
    }
}

#[test]
fn a_reset_forgets_everything_before_it_and_keeps_what_follows() {
    let index = Index::new();
    apply(
        &index,
        1,
        vec![
            put(&profile("gone", &["gone@x.io"])),
            put(&profile("kept", &["kept@x.io"])),
            status("kept@x.io", AddressStatus::Quarantined),
        ],
    );
    // A rebuild: the state after it is what follows the reset, whole.
    apply(
        &index,
        2,
        vec![Change::Reset, put(&profile("kept", &["kept@x.io"]))],
    );
    let (reasons, _) = verdict(&index, "gone", &email_delivery());
    assert_eq!(
        reasons,
        vec![crate::engine::ExclusionReason::ProfileNotFound]
    );
    let (reasons, addresses) = verdict(&index, "kept", &email_delivery());
    assert!(
        reasons.is_empty(),
        "the quarantine before the reset is gone: {reasons:?}"
    );
    assert_eq!(addresses, vec!["kept@x.io".to_owned()]);
    assert_eq!(index.position(), Position(2));
}

#[test]
fn an_unknown_tenant_or_profile_is_not_found() {
    let index = Index::new();
    use crate::engine::ExclusionReason::ProfileNotFound;
    assert_eq!(
        verdict(&index, "p", &email_delivery()).0,
        vec![ProfileNotFound]
    );
    apply(&index, 1, vec![put(&profile("p", &[]))]);
    assert_eq!(
        verdict(&index, "q", &email_delivery()).0,
        vec![ProfileNotFound]
    );
}

#[test]
fn a_shared_address_lives_while_used_or_not_usable() {
    let index = Index::new();
    apply(
        &index,
        1,
        vec![
            put(&profile("a", &["shared@x.io", "own@x.io"])),
            put(&profile("b", &["shared@x.io"])),
        ],
    );
    assert_eq!(index.counts(), (2, 2));
    // One user left: the address stays.
    apply(&index, 2, vec![put(&profile("a", &["own@x.io"]))]);
    assert_eq!(index.counts(), (2, 2));
    // No user left and usable: it goes.
    apply(&index, 3, vec![put(&profile("b", &[]))]);
    assert_eq!(index.counts(), (2, 1));
    // Quarantined without a user: kept, and a profile that takes it up is excluded.
    apply(
        &index,
        4,
        vec![status("shared@x.io", AddressStatus::Quarantined)],
    );
    assert_eq!(index.counts(), (2, 2));
    apply(&index, 5, vec![put(&profile("c", &["shared@x.io"]))]);
    use crate::engine::ExclusionReason::AddressQuarantined;
    assert_eq!(
        verdict(&index, "c", &email_delivery()).0,
        vec![AddressQuarantined]
    );
    // Released while unused by anyone else: freed once the last user leaves.
    apply(
        &index,
        6,
        vec![
            status("shared@x.io", AddressStatus::Valid),
            put(&profile("c", &[])),
        ],
    );
    assert_eq!(index.counts(), (3, 1));
    // A slot freed is reused.
    apply(&index, 7, vec![put(&profile("d", &["new@x.io"]))]);
    assert_eq!(index.counts(), (4, 2));
    assert_eq!(index.position(), Position(7));
}

const EMAIL_BIT: u8 = 1 << 0;

fn opt_out(address: &str, opted_out: u8) -> Change {
    Change::AddressConsent {
        tenant: t(),
        address: Address::email(address).expect("valid"),
        opted_out,
    }
}

#[test]
fn an_opted_out_address_lives_while_opted_out_and_is_decided_alone() {
    use crate::engine::ExclusionReason::{AddressOptedOut, AddressQuarantined};
    let index = Index::new();
    // Opted out with no profile: kept, and decided alone.
    apply(&index, 1, vec![opt_out("stop@x.io", EMAIL_BIT)]);
    assert_eq!(index.counts(), (0, 1));
    let lookup_reasons = |address: &str, channel: Channel| {
        let delivery = Delivery {
            channel,
            regime: Regime::OptOut,
            service: None,
        };
        let tenant = index.tenant_index(&t()).expect("tenant");
        let lookup = tenant.lookup(&delivery);
        lookup
            .decide_address(&Address::email(address).expect("valid"))
            .iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        lookup_reasons("stop@x.io", Channel::Email),
        vec![AddressOptedOut]
    );
    assert!(
        lookup_reasons("other@x.io", Channel::Email).is_empty(),
        "unknown: eligible"
    );
    // A profile that takes it up is excluded on e-mail through it.
    apply(&index, 2, vec![put(&profile("p", &["stop@x.io"]))]);
    assert_eq!(
        verdict(&index, "p", &email_delivery()),
        (vec![AddressOptedOut], vec![])
    );
    // Quarantined too: both reasons, the quarantine first.
    apply(
        &index,
        3,
        vec![status("stop@x.io", AddressStatus::Quarantined)],
    );
    assert_eq!(
        lookup_reasons("stop@x.io", Channel::Email),
        vec![AddressQuarantined, AddressOptedOut]
    );
    // Opted back in and released: eligible again, and freed once unused.
    apply(
        &index,
        4,
        vec![
            opt_out("stop@x.io", 0),
            status("stop@x.io", AddressStatus::Valid),
        ],
    );
    assert_eq!(
        verdict(&index, "p", &email_delivery()),
        (vec![], vec!["stop@x.io".to_owned()])
    );
    apply(&index, 5, vec![put(&profile("p", &[]))]);
    assert_eq!(index.counts(), (1, 0));
    // An opt-in for an address never seen keeps nothing.
    apply(&index, 6, vec![opt_out("never@x.io", 0)]);
    assert_eq!(index.counts(), (1, 0));
}

#[test]
fn decisions_match_the_engine_for_every_consent_and_status() {
    let ctx = ChangeContext::new(Source::Api, "", "").expect("valid");
    let statuses = [
        AddressStatus::Valid,
        AddressStatus::WithErrors,
        AddressStatus::Quarantined,
        AddressStatus::Denylisted,
    ];
    let consents = [
        ConsentStatus::NoPreference,
        ConsentStatus::OptedIn,
        ConsentStatus::OptedOut,
    ];
    let mut n = 0u64;
    for all in consents {
        for channel_status in consents {
            for first in statuses {
                for second in statuses {
                    for (regime, a_opted_out) in [
                        (Regime::OptOut, false),
                        (Regime::OptIn, false),
                        (Regime::OptOut, true),
                    ] {
                        n += 1;
                        let index = Index::new();
                        let mut p = profile("p", &["a@x.io", "b@x.io"]);
                        p.postal_address = "1 Main St".into();
                        p.set_consent(Scope::AllChannels, all, &ctx, 1);
                        p.set_consent(Scope::Channel(Channel::Email), channel_status, &ctx, 1);
                        apply(
                            &index,
                            n,
                            vec![
                                put(&p),
                                status("a@x.io", first),
                                status("b@x.io", second),
                                opt_out("a@x.io", if a_opted_out { EMAIL_BIT } else { 0 }),
                            ],
                        );
                        for channel in [Channel::Email, Channel::DirectMail, Channel::Sms] {
                            let delivery = Delivery {
                                channel,
                                regime,
                                service: None,
                            };
                            let expected: Result<_, std::convert::Infallible> = decide(
                                Some(&p),
                                channel,
                                Policy {
                                    regime,
                                    subscribed: None,
                                },
                                |a| {
                                    Ok(if a.as_str() == "a@x.io" {
                                        (first, a_opted_out && channel == Channel::Email)
                                    } else {
                                        (second, false)
                                    })
                                },
                            );
                            let expected = expected.unwrap_or_else(|never| match never {});
                            assert_eq!(
                                verdict(&index, "p", &delivery),
                                (expected.reasons, expected.addresses),
                                "{all:?} {channel_status:?} {first:?} {second:?} {regime:?} {channel:?} {a_opted_out}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn a_service_counts_only_active_subscriptions() {
    let index = Index::new();
    let service = Service {
        id: ServiceId::parse("news").expect("valid"),
        name: "News".into(),
        channel: Channel::Email,
        double_opt_in: false,
        created_at: 0,
    };
    let sub = |id: &str, status| Change::Subscription {
        tenant: t(),
        profile_id: ProfileId::parse(id).expect("valid"),
        service_id: service.id.clone(),
        status,
    };
    apply(
        &index,
        1,
        vec![
            Change::Service {
                tenant: t(),
                service: service.clone(),
            },
            put(&profile("a", &["a@x.io"])),
            put(&profile("b", &["b@x.io"])),
            sub("a", SubscriptionStatus::Active),
            sub("b", SubscriptionStatus::PendingConfirmation),
        ],
    );
    assert_eq!(index.service(&t(), &service.id), Some(service.clone()));
    let delivery = Delivery {
        channel: Channel::Email,
        regime: Regime::OptOut,
        service: Some(service.id.clone()),
    };
    use crate::engine::ExclusionReason::NotSubscribed;
    assert!(verdict(&index, "a", &delivery).0.is_empty());
    assert_eq!(verdict(&index, "b", &delivery).0, vec![NotSubscribed]);
    apply(&index, 2, vec![sub("a", SubscriptionStatus::Unsubscribed)]);
    assert_eq!(verdict(&index, "a", &delivery).0, vec![NotSubscribed]);
}

#[tokio::test]
async fn wait_for_returns_once_the_position_is_applied() {
    let index = Arc::new(Index::new());
    index.loaded(Position(3));
    index.wait_for(Position(2)).await;
    let waiting = {
        let index = Arc::clone(&index);
        tokio::spawn(async move { index.wait_for(Position(5)).await })
    };
    apply(&index, 4, vec![]);
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    apply(&index, 5, vec![]);
    tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("woken")
        .expect("no panic");
}
