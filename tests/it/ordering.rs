//! Event ordering that holds: a replay (a late event folds the log again)
//! never rewrites what was decided. A release lifts everything received
//! before it, each event keeps the rules it was received under, and a
//! weaker status never replaces a stronger one except through a release.

use crate::common::*;
use consentd::pb::{
    AddressStatus, AddressType, Channel, DeliveryErrorReason, ExclusionReason, FeedbackKind,
    QuarantineAddressRequest, QuarantineAddressResponse, QuarantineRulesUpdate,
    ReleaseAddressRequest, ReleaseAddressResponse, UpdateTenantSettingsRequest,
    tenant_service_client::TenantServiceClient,
};

async fn release(app: &TestApp, address: &str) -> ReleaseAddressResponse {
    app.quarantine
        .clone()
        .release_address(ReleaseAddressRequest {
            tenant: TENANT.to_owned(),
            address: address.to_owned(),
            address_type: AddressType::Unspecified as i32,
            context: operator("alice", "customer called"),
        })
        .await
        .unwrap_or_else(|s| panic!("ReleaseAddress {address}: {s:?}"))
        .into_inner()
}

async fn set_status(
    app: &TestApp,
    address: &str,
    status: AddressStatus,
) -> QuarantineAddressResponse {
    app.quarantine
        .clone()
        .quarantine_address(QuarantineAddressRequest {
            tenant: TENANT.to_owned(),
            address: address.to_owned(),
            address_type: AddressType::Unspecified as i32,
            status: status as i32,
            context: operator("bob", &format!("set {status:?}")),
        })
        .await
        .unwrap_or_else(|s| panic!("QuarantineAddress {address} {status:?}: {s:?}"))
        .into_inner()
}

#[tokio::test]
async fn a_release_lifts_a_bounce_dated_in_the_allowed_future() {
    let app = spawn_app().await;
    let address = "ahead@example.com";
    upsert(&app, "p-ahead", &[address], &[]).await;
    // The sender's clock runs 3 minutes ahead (5 are allowed).
    let bounced = feedback(
        &app,
        address,
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "hb-ahead",
        Some(app.now_ms() + 3 * MINUTE_MS),
    )
    .await;
    assert_eq!(
        bounced.state.expect("state").status(),
        AddressStatus::Quarantined
    );

    // The operator releases it now, before the bounce's event time.
    let released = release(&app, address).await;
    assert!(released.changed, "{released:?}");
    assert_eq!(
        released.state.expect("state").status(),
        AddressStatus::Valid,
        "the release lifts the bounce received before it"
    );
    assert_eq!(
        address_state(&app, address).await.status(),
        AddressStatus::Valid
    );
    assert!(check(&app, "p-ahead", Channel::Email).await.eligible);

    // A late event makes the log fold again: the release stays after the bounce.
    let late = feedback(
        &app,
        address,
        FeedbackKind::Ignored,
        DeliveryErrorReason::Unspecified,
        "ignored-late",
        Some(app.now_ms() - HOUR_MS),
    )
    .await;
    assert!(late.recorded, "{late:?}");
    assert_eq!(late.state.expect("state").status(), AddressStatus::Valid);

    // And after a restart (the state as stored).
    let app = app.restart().await;
    assert_eq!(
        address_state(&app, address).await.status(),
        AddressStatus::Valid
    );
    // A bounce received after the release still counts.
    app.advance_ms(10 * MINUTE_MS);
    let after = feedback(
        &app,
        address,
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "hb-after",
        None,
    )
    .await;
    assert_eq!(
        after.state.expect("state").status(),
        AddressStatus::Quarantined
    );
}

#[tokio::test]
async fn a_change_of_rules_never_rewrites_past_events() {
    let app = spawn_app().await;
    let address = "counted@example.com";
    let now = app.now_ms();
    // Three counted soft bounces under the default threshold (5).
    for day in 0..3 {
        soft_bounce(
            &app,
            address,
            &format!("sb-{day}"),
            now - (3 - day) * DAY_MS,
        )
        .await;
    }
    let state = address_state(&app, address).await;
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::WithErrors, 3)
    );

    // The tenant lowers the threshold to 2.
    TenantServiceClient::new(app.channel.clone())
        .update_tenant_settings(UpdateTenantSettingsRequest {
            tenant: TENANT.to_owned(),
            quarantine_rules: Some(QuarantineRulesUpdate {
                soft_error_threshold: Some(2),
                ..Default::default()
            }),
            context: operator("admin", "stricter"),
            ..Default::default()
        })
        .await
        .expect("UpdateTenantSettings");

    // A late IGNORED event changes nothing, although the log folds again.
    let ignored = feedback(
        &app,
        address,
        FeedbackKind::Ignored,
        DeliveryErrorReason::Unspecified,
        "ignored-late",
        Some(now - 2 * DAY_MS - HOUR_MS),
    )
    .await;
    assert!(ignored.recorded, "{ignored:?}");
    let state = ignored.state.expect("state");
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::WithErrors, 3),
        "past soft bounces keep the threshold they were received under"
    );
    let app = app.restart().await;
    assert_eq!(
        address_state(&app, address).await.status(),
        AddressStatus::WithErrors
    );

    // A soft bounce received now is judged by the rules in force now.
    let state = soft_bounce(&app, address, "sb-now", app.now_ms()).await;
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::Quarantined, 4)
    );
}

#[tokio::test]
async fn a_manual_quarantine_never_weakens_a_denylisted_address() {
    let app = spawn_app().await;
    let address = "strong@example.com";
    upsert(&app, "p-strong", &[address], &[]).await;
    let denylisted = set_status(&app, address, AddressStatus::Denylisted).await;
    assert!(denylisted.changed);

    app.advance_ms(MINUTE_MS);
    let weaker = set_status(&app, address, AddressStatus::Quarantined).await;
    assert!(!weaker.changed, "{weaker:?}");
    let state = weaker.state.expect("state");
    assert_eq!(state.status(), AddressStatus::Denylisted);
    assert_eq!(state.last_reason, "set Denylisted");
    assert_eq!(address_history(&app, address).await.len(), 1);
    assert_eq!(
        reasons(&check(&app, "p-strong", Channel::Email).await),
        vec![ExclusionReason::AddressDenylisted]
    );

    // A stronger status replaces a weaker one; only a release lowers it.
    let other = "weak@example.com";
    assert!(
        set_status(&app, other, AddressStatus::Quarantined)
            .await
            .changed
    );
    let stronger = set_status(&app, other, AddressStatus::Denylisted).await;
    assert!(stronger.changed);
    assert_eq!(
        stronger.state.expect("state").status(),
        AddressStatus::Denylisted
    );
    assert!(release(&app, address).await.changed);
    let requarantined = set_status(&app, address, AddressStatus::Quarantined).await;
    assert!(requarantined.changed);
    assert_eq!(
        requarantined.state.expect("state").status(),
        AddressStatus::Quarantined
    );
}

#[tokio::test]
async fn a_soft_bounce_leaves_a_denylisted_address_as_it_is() {
    let app = spawn_app().await;
    let address = "blocked@example.com";
    upsert(&app, "p-blocked", &[address], &[]).await;
    set_status(&app, address, AddressStatus::Denylisted).await;
    let state = soft_bounce(&app, address, "sb-blocked", app.now_ms()).await;
    assert_eq!(
        (state.status(), state.error_count),
        (AddressStatus::Denylisted, 0)
    );
    assert_eq!(
        reasons(&check(&app, "p-blocked", Channel::Email).await),
        vec![ExclusionReason::AddressDenylisted]
    );
}
