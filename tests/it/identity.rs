//! One address, one identity: every spelling of a mailbox or a phone number
//! that a client may send reaches the same stored address, so that a
//! quarantine recorded under one spelling cannot be dodged with another
//! (IDNA domains, fullwidth letters, NFC/NFD, trunk prefixes, national
//! numbers read in the tenant's default region); and what real mail systems
//! refuse, or what hides characters, is refused with the field named.

use crate::common::*;
use consentd::pb::{
    AddressType, Channel, DeliveryErrorReason, ExclusionReason, FeedbackKind,
    RecordDeliveryFeedbackRequest, Source, UpdateTenantSettingsRequest, UpsertProfileRequest,
    tenant_service_client::TenantServiceClient,
};
use tonic::Code;
use tonic_types::StatusExt;

async fn try_upsert(app: &TestApp, id: &str, emails: &[&str], phones: &[&str]) -> tonic::Status {
    app.profiles
        .clone()
        .upsert_profile(UpsertProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            emails: emails.iter().map(|s| (*s).to_owned()).collect(),
            phones: phones.iter().map(|s| (*s).to_owned()).collect(),
            context: ctx(Source::Api),
            ..Default::default()
        })
        .await
        .expect_err("the upsert must be refused")
}

fn excluded_for_quarantine(response: &consentd::pb::BatchCheckEligibilityResponse) -> Vec<String> {
    response
        .decisions
        .iter()
        .filter(|d| reasons(d) == vec![ExclusionReason::AddressQuarantined])
        .map(|d| d.profile_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_on_one_spelling_of_a_mailbox_excludes_every_spelling() {
    let app = spawn_app().await;
    let spellings = [
        ("idn", "user@bücher.de"),
        ("ace", "user@xn--bcher-kva.de"),
        ("upper", "USER@BÜCHER.DE"),
        ("nfd", "user@bu\u{308}cher.de"),
        ("fullwidth", "\u{FF55}\u{FF53}\u{FF45}\u{FF52}@bücher.de"),
    ];
    for (id, email) in spellings {
        let profile = upsert(&app, id, &[email], &[]).await;
        assert_eq!(
            profile.emails,
            vec!["user@xn--bcher-kva.de".to_owned()],
            "{email:?}"
        );
    }
    upsert(&app, "nfc-jose", &["jos\u{e9}@example.com"], &[]).await;
    upsert(&app, "nfd-jose", &["jose\u{301}@example.com"], &[]).await;

    let ids: Vec<&str> = spellings
        .iter()
        .map(|(id, _)| *id)
        .chain(["nfc-jose", "nfd-jose"])
        .collect();
    let before = batch(&app, Channel::Email, &ids).await;
    assert!(before.decisions.iter().all(|d| d.eligible), "{before:?}");

    let bounced = feedback(
        &app,
        "user@bücher.de",
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "hb-1",
        None,
    )
    .await;
    assert_eq!(
        bounced.state.expect("state").address,
        "user@xn--bcher-kva.de",
        "the state is kept under the canonical form"
    );
    feedback(
        &app,
        "jose\u{301}@EXAMPLE.com",
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "hb-2",
        None,
    )
    .await;

    let after = batch(&app, Channel::Email, &ids).await;
    assert_eq!(
        excluded_for_quarantine(&after),
        ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        "every spelling is excluded: {after:?}"
    );
    let status = address_status(&app, "\u{FF55}ser@xn--bcher-kva.de").await;
    assert_eq!(status.profile_ids.len(), spellings.len(), "{status:?}");
}

#[tokio::test]
async fn hidden_characters_and_what_mail_systems_refuse_are_invalid_arguments() {
    let app = spawn_app().await;
    for bad in [
        "us\u{200B}er@example.com",
        "\u{202E}resu@example.com",
        "user\u{2066}@example.com",
        ".a.@x.com",
        "a..b@x.com",
        "a,b;c@x.com",
        "a\"b@x.com",
        "a@1.2",
        "a@[192.0.2.1]",
    ] {
        let status = try_upsert(&app, "p", &["ok@example.com", bad], &[]).await;
        assert_validation_failed(&format!("{bad:?}"), &status, &["emails[1]"]);
    }
    let status = try_upsert(&app, "p", &[], &["+33 6 12\u{200B}34 56 78"]).await;
    assert_validation_failed("zero-width space in a phone", &status, &["phones[0]"]);
    assert!(
        status.message().contains("U+200B") || {
            let bad = status.get_details_bad_request().expect("BadRequest");
            bad.field_violations[0].description.contains("U+200B")
        },
        "the error names the hidden character: {status:?}"
    );
    assert!(get_profile(&app, "p").await.is_err(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_prefix_does_not_dodge_a_quarantined_number() {
    let app = spawn_app().await;
    let profile = upsert(&app, "p", &[], &["+33 (0)6 12 34 56 78"]).await;
    assert_eq!(profile.phones, vec!["+33612345678".to_owned()]);
    feedback(
        &app,
        "+33612345678",
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "sms-1",
        None,
    )
    .await;
    let response = batch(&app, Channel::Sms, &["p"]).await;
    assert_eq!(
        excluded_for_quarantine(&response),
        vec!["p".to_owned()],
        "{response:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn national_numbers_are_read_in_the_tenant_default_region() {
    let app = spawn_app().await;
    let feedback_of = |address: &str, event_id: &str| RecordDeliveryFeedbackRequest {
        tenant: TENANT.to_owned(),
        address: address.to_owned(),
        address_type: AddressType::Unspecified as i32,
        kind: FeedbackKind::HardBounce as i32,
        error_reason: DeliveryErrorReason::UserUnknown as i32,
        event_id: event_id.to_owned(),
        occurred_at: None,
        context: ctx(Source::DeliveryFeedback),
    };
    // Without a region: the first error says what is wrong and how to fix it.
    let status = app
        .quarantine
        .clone()
        .record_delivery_feedback(feedback_of("06 12 34 56 78", "n-1"))
        .await
        .expect_err("a national number without a region");
    assert_validation_failed("national number", &status, &["address"]);
    let description = &status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations[0]
        .description;
    assert!(
        description.contains("national form") && description.contains("default_region"),
        "{description}"
    );

    let mut tenants = TenantServiceClient::new(app.channel.clone());
    let bad = tenants
        .update_tenant_settings(UpdateTenantSettingsRequest {
            tenant: TENANT.to_owned(),
            default_region: Some("ZZ".into()),
            context: operator("admin", "region"),
            ..Default::default()
        })
        .await
        .expect_err("ZZ has no numbering plan");
    assert_validation_failed("region ZZ", &bad, &["default_region"]);
    let set = tenants
        .update_tenant_settings(UpdateTenantSettingsRequest {
            tenant: TENANT.to_owned(),
            default_region: Some("fr".into()),
            context: operator("admin", "region"),
            ..Default::default()
        })
        .await
        .expect("set the region")
        .into_inner();
    assert!(set.changed);
    assert_eq!(set.settings.expect("settings").default_region, "FR");

    let recorded = app
        .quarantine
        .clone()
        .record_delivery_feedback(feedback_of("06 12 34 56 78", "n-2"))
        .await
        .expect("read in FR")
        .into_inner();
    assert_eq!(recorded.state.expect("state").address, "+33612345678");
    let profile = upsert(&app, "p", &[], &["06.12.34.56.78"]).await;
    assert_eq!(profile.phones, vec!["+33612345678".to_owned()]);
    let response = batch(&app, Channel::Sms, &["p"]).await;
    assert_eq!(
        excluded_for_quarantine(&response),
        vec!["p".to_owned()],
        "{response:?}"
    );

    // The region survives a restart; an empty string clears it.
    let app = app.restart().await;
    let mut tenants = TenantServiceClient::new(app.channel.clone());
    let cleared = tenants
        .update_tenant_settings(UpdateTenantSettingsRequest {
            tenant: TENANT.to_owned(),
            default_region: Some(String::new()),
            context: operator("admin", "region"),
            ..Default::default()
        })
        .await
        .expect("clear the region")
        .into_inner();
    assert!(cleared.changed, "the region was still FR after the restart");
    assert_eq!(cleared.settings.expect("settings").default_region, "");
    let status = try_upsert(&app, "q", &[], &["06 12 34 56 78"]).await;
    assert_eq!(status.code(), Code::InvalidArgument);
}
