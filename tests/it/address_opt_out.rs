//! Addresses without profiles: a per-channel opt-out of an address (an SMS
//! STOP leaves voice calls alone), kept with its proof, honoured by the
//! profile checks and by BatchCheckAddresses, which answers "may we send to
//! these addresses?" from the same index.

use crate::common::*;
use consentd::pb::{
    AddressConsent, AddressType, BatchCheckAddressesRequest, BatchCheckAddressesResponse,
    ChangeContext, Channel, ConsentStatus, DeliveryErrorReason, ExclusionReason, FeedbackKind,
    GetAddressConsentRequest, OptInAddressRequest, OptOutAddressRequest, Source,
};
use tonic::{Code, Status};

const PHONE: &str = "+33612345678";

fn stop_context() -> Option<ChangeContext> {
    Some(ChangeContext {
        source: Source::Api as i32,
        actor: "sms-gateway".into(),
        reason: "STOP received".into(),
        ..Default::default()
    })
}

async fn opt_out_address(
    app: &TestApp,
    address: &str,
    channel: Channel,
) -> Result<(bool, AddressConsent), Status> {
    app.consent
        .clone()
        .opt_out_address(OptOutAddressRequest {
            tenant: TENANT.to_owned(),
            address: address.to_owned(),
            address_type: AddressType::Unspecified as i32,
            channel: channel as i32,
            context: stop_context(),
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.changed, r.consent.expect("consent is set"))
        })
}

async fn check_addresses(
    app: &TestApp,
    channel: Channel,
    addresses: &[&str],
) -> Result<BatchCheckAddressesResponse, Status> {
    app.eligibility
        .clone()
        .batch_check_addresses(BatchCheckAddressesRequest {
            tenant: TENANT.to_owned(),
            channel: channel as i32,
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn status_of(consent: &AddressConsent, channel: Channel) -> ConsentStatus {
    consent
        .channels
        .iter()
        .find(|c| c.channel == channel as i32)
        .map_or(ConsentStatus::Unspecified, |c| c.status())
}

fn reasons_of(response: &BatchCheckAddressesResponse) -> Vec<Vec<ExclusionReason>> {
    response
        .decisions
        .iter()
        .map(|d| d.reasons().collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_stop_opts_the_number_out_of_sms_and_leaves_voice_alone() {
    let app = spawn_app().await;
    // A STOP from a number no profile uses yet, written as the gateway gives it.
    let (changed, consent) = opt_out_address(&app, "+33 6 12 34 56 78", Channel::Sms)
        .await
        .expect("OptOutAddress");
    assert!(changed);
    assert_eq!(consent.address, PHONE, "kept in its canonical form");
    assert_eq!(status_of(&consent, Channel::Sms), ConsentStatus::OptedOut);
    assert_eq!(
        status_of(&consent, Channel::Voice),
        ConsentStatus::NoPreference
    );
    assert_eq!(
        consent.channels.len(),
        2,
        "a phone has SMS and voice: {consent:?}"
    );
    let sms = &consent.channels[0];
    let context = sms.context.as_ref().expect("the change's context");
    assert_eq!(
        (context.actor.as_str(), context.reason.as_str()),
        ("sms-gateway", "STOP received")
    );
    assert!(sms.changed_at.is_some());

    let (again, _) = opt_out_address(&app, PHONE, Channel::Sms)
        .await
        .expect("again");
    assert!(!again, "a repeated STOP changes nothing");

    let sms = check_addresses(&app, Channel::Sms, &[PHONE, "+33 6 87 65 43 21"])
        .await
        .expect("SMS check");
    assert_eq!(
        reasons_of(&sms),
        vec![vec![ExclusionReason::AddressOptedOut], vec![]]
    );
    assert_eq!(sms.decisions[1].canonical_address, "+33687654321");
    assert_eq!(sms.decisions[1].address, "+33 6 87 65 43 21", "as given");
    let summary = sms.summary.expect("summary");
    assert_eq!(
        (summary.total, summary.eligible, summary.excluded),
        (2, 1, 1)
    );
    let voice = check_addresses(&app, Channel::Voice, &[PHONE])
        .await
        .expect("voice check");
    assert_eq!(reasons_of(&voice), vec![Vec::<ExclusionReason>::new()]);

    // A profile that has the number is excluded on SMS through it, not on voice.
    upsert(&app, "p", &[], &[PHONE]).await;
    let sms = batch(&app, Channel::Sms, &["p"]).await;
    assert_eq!(
        reasons(&sms.decisions[0]),
        vec![ExclusionReason::AddressOptedOut]
    );
    let voice = batch(&app, Channel::Voice, &["p"]).await;
    assert!(voice.decisions[0].eligible, "{voice:?}");
    assert_eq!(voice.decisions[0].addresses, vec![PHONE.to_owned()]);

    // Durable, and back in the index after a restart.
    let app = app.restart().await;
    let sms = check_addresses(&app, Channel::Sms, &[PHONE])
        .await
        .expect("after restart");
    assert_eq!(
        reasons_of(&sms),
        vec![vec![ExclusionReason::AddressOptedOut]]
    );
    let sms = batch(&app, Channel::Sms, &["p"]).await;
    assert_eq!(
        reasons(&sms.decisions[0]),
        vec![ExclusionReason::AddressOptedOut]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_in_from_a_landing_page_needs_its_proof_and_lifts_the_opt_out() {
    let app = spawn_app().await;
    opt_out_address(&app, "a@example.com", Channel::Email)
        .await
        .expect("opt out");
    let opt_in = |context: ChangeContext| OptInAddressRequest {
        tenant: TENANT.to_owned(),
        address: "A@Example.com".into(),
        address_type: AddressType::Unspecified as i32,
        channel: Channel::Email as i32,
        context: Some(context),
    };
    let unproved = app
        .consent
        .clone()
        .opt_in_address(opt_in(ChangeContext {
            source: Source::LandingPage as i32,
            ..Default::default()
        }))
        .await
        .expect_err("no proof");
    assert_validation_failed(
        "no proof",
        &unproved,
        &["context.ip_address", "context.notice_version"],
    );
    let proved = app
        .consent
        .clone()
        .opt_in_address(opt_in(ChangeContext {
            source: Source::LandingPage as i32,
            ip_address: "192.0.2.7".into(),
            user_agent: "Mozilla/5.0".into(),
            notice_version: "2026-12".into(),
            ..Default::default()
        }))
        .await
        .expect("with proof")
        .into_inner();
    assert!(proved.changed);
    let consent = app
        .consent
        .clone()
        .get_address_consent(GetAddressConsentRequest {
            tenant: TENANT.to_owned(),
            address: "a@example.com".into(),
            address_type: AddressType::Email as i32,
        })
        .await
        .expect("GetAddressConsent")
        .into_inner()
        .consent
        .expect("consent");
    assert_eq!(
        status_of(&consent, Channel::Email),
        ConsentStatus::NoPreference
    );
    let context = consent.channels[0]
        .context
        .as_ref()
        .expect("the opt-in's context");
    assert_eq!(
        (
            context.source(),
            context.ip_address.as_str(),
            context.notice_version.as_str()
        ),
        (Source::LandingPage, "192.0.2.7", "2026-12"),
        "the opt-in is kept with its proof"
    );
    let email = check_addresses(&app, Channel::Email, &["a@example.com"])
        .await
        .expect("check");
    assert!(email.decisions[0].eligible, "{email:?}");
}

#[tokio::test]
async fn a_channel_must_use_the_address_kind() {
    let app = spawn_app().await;
    for (address, channel) in [
        ("a@example.com", Channel::Sms),
        (PHONE, Channel::Email),
        (PHONE, Channel::DirectMail),
    ] {
        let status = opt_out_address(&app, address, channel)
            .await
            .expect_err("refused");
        assert_validation_failed(&format!("{address} on {channel:?}"), &status, &["channel"]);
    }
    let missing = opt_out_address(&app, PHONE, Channel::Unspecified)
        .await
        .expect_err("refused");
    assert_validation_failed("no channel", &missing, &["channel"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_check_addresses_reads_quarantine_and_refuses_bad_input() {
    let app = spawn_app().await;
    feedback(
        &app,
        "bounced@example.com",
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "hb",
        None,
    )
    .await;
    let response = check_addresses(
        &app,
        Channel::Email,
        &["ok@example.com", "Bounced@Example.com"],
    )
    .await
    .expect("check");
    assert_eq!(
        reasons_of(&response),
        vec![vec![], vec![ExclusionReason::AddressQuarantined]]
    );
    assert_eq!(
        response.decisions[1].canonical_address,
        "bounced@example.com"
    );

    let bad = check_addresses(
        &app,
        Channel::Email,
        &["ok@example.com", "not an address", PHONE],
    )
    .await
    .expect_err("bad addresses");
    assert_validation_failed("bad address", &bad, &["addresses[1]"]);
    assert_validation_failed("phone on e-mail", &bad, &["addresses[2]"]);
    let mail = check_addresses(&app, Channel::DirectMail, &["ok@example.com"])
        .await
        .expect_err("direct mail");
    assert_validation_failed("direct mail", &mail, &["channel"]);
    let empty = check_addresses(&app, Channel::Email, &[])
        .await
        .expect_err("empty");
    assert_validation_failed("empty", &empty, &["addresses"]);
    let many: Vec<String> = (0..10_001).map(|i| format!("u{i}@example.com")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let too_many = check_addresses(&app, Channel::Email, &refs)
        .await
        .expect_err("too many");
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert_eq!(
        error_info(&too_many).reason,
        "BATCH_TOO_LARGE",
        "{too_many:?}"
    );
    let limit = check_addresses(&app, Channel::Email, &refs[..10_000])
        .await
        .expect("10,000");
    assert_eq!(limit.decisions.len(), 10_000);
}
