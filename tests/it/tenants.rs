//! Tenant settings (opt-in regimes, per-tenant quarantine rules) and
//! product-usage tracking opt-out, against a real server.

use crate::common::*;
use consentd::pb::{
    AddressStatus, Channel, ChannelRegime, CheckTrackingRequest, ConsentRegime,
    DeliveryErrorReason, ExclusionReason, FeedbackKind, FilterUsageEventsRequest,
    GetTenantSettingsRequest, ListOptedOutUsersRequest, OptInUserRequest, OptOutUserRequest,
    QuarantineRulesUpdate, Source, TenantSettings, UpdateTenantSettingsRequest, UsageEvent,
    product_usage_service_client::ProductUsageServiceClient,
    tenant_service_client::TenantServiceClient,
};
use tonic::{Code, Status, transport::Channel as GrpcChannel};

fn tenants(app: &TestApp) -> TenantServiceClient<GrpcChannel> {
    TenantServiceClient::new(app.channel.clone())
}

fn usage(app: &TestApp) -> ProductUsageServiceClient<GrpcChannel> {
    ProductUsageServiceClient::new(app.channel.clone())
}

async fn update(
    app: &TestApp,
    req: UpdateTenantSettingsRequest,
) -> Result<(bool, TenantSettings), Status> {
    tenants(app)
        .update_tenant_settings(UpdateTenantSettingsRequest {
            tenant: TENANT.to_owned(),
            context: operator("admin", "policy"),
            ..req
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.changed, r.settings.expect("settings are set"))
        })
}

fn regime(settings: &TenantSettings, channel: Channel) -> i32 {
    settings
        .channel_regimes
        .iter()
        .find(|r| r.channel == channel as i32)
        .map_or(-1, |r| r.regime)
}

/// Settings that put SMS under the OPT_IN regime.
fn sms_opt_in_regime() -> UpdateTenantSettingsRequest {
    UpdateTenantSettingsRequest {
        channel_regimes: vec![ChannelRegime {
            channel: Channel::Sms as i32,
            regime: ConsentRegime::OptIn as i32,
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn opt_in_regime_needs_an_explicit_channel_opt_in() {
    let app = spawn_app().await;
    upsert(&app, "p1", &["p1@example.com"], &["+33612345678"]).await;
    let (changed, settings) = update(&app, sms_opt_in_regime()).await.expect("update");
    assert!(changed);
    assert_eq!(regime(&settings, Channel::Sms), ConsentRegime::OptIn as i32);
    assert_eq!(
        regime(&settings, Channel::Email),
        ConsentRegime::OptOut as i32
    );

    assert_eq!(
        reasons(&check(&app, "p1", Channel::Sms).await),
        vec![ExclusionReason::NoOptIn]
    );
    assert!(
        check(&app, "p1", Channel::Email).await.eligible,
        "e-mail stays OPT_OUT"
    );
    opt_in(&app, "p1", None).await;
    assert_eq!(
        reasons(&check(&app, "p1", Channel::Sms).await),
        vec![ExclusionReason::NoOptIn],
        "an all-channels opt-in is not an SMS opt-in"
    );
    opt_in(&app, "p1", Some(Channel::Sms)).await;
    assert!(check(&app, "p1", Channel::Sms).await.eligible);
    opt_out_all(&app, "p1").await;
    assert_eq!(
        reasons(&check(&app, "p1", Channel::Sms).await),
        vec![ExclusionReason::OptedOutAllChannels],
        "an all-channels opt-out still wins"
    );

    // Another tenant keeps the default regime.
    let other = tenants(&app)
        .get_tenant_settings(GetTenantSettingsRequest {
            tenant: "other".to_owned(),
        })
        .await
        .expect("get")
        .into_inner()
        .settings
        .expect("settings");
    assert_eq!(regime(&other, Channel::Sms), ConsentRegime::OptOut as i32);

    // Settings survive a restart.
    let app = app.restart().await;
    let (changed, _) = update(&app, sms_opt_in_regime()).await.expect("update");
    assert!(!changed, "the regime was kept across the restart");
}

#[tokio::test]
async fn quarantine_rules_are_per_tenant_and_default_to_the_server_s() {
    let app = spawn_app().await;
    let (_, settings) = update(
        &app,
        UpdateTenantSettingsRequest {
            quarantine_rules: Some(QuarantineRulesUpdate {
                soft_error_threshold: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .expect("update");
    let rules = settings.quarantine_rules.expect("rules");
    assert_eq!(rules.soft_error_threshold, 2);
    assert_eq!(
        rules.error_reset_period.map(|d| d.seconds),
        Some(10 * 86_400),
        "unset parameters stay the server's"
    );
    assert_eq!(
        settings.overridden_quarantine_rules,
        vec!["soft_error_threshold"]
    );

    let start = app.now_ms();
    soft_bounce(&app, "a@example.com", "e1", start).await;
    app.advance_ms(DAY_MS);
    let state = soft_bounce(&app, "a@example.com", "e2", start + DAY_MS).await;
    assert_eq!(
        state.status,
        AddressStatus::Quarantined as i32,
        "two soft errors quarantine in this tenant"
    );
    // The default tenant rule (5) still applies elsewhere.
    let other = app
        .quarantine
        .clone()
        .record_delivery_feedback(consentd::pb::RecordDeliveryFeedbackRequest {
            tenant: "other".to_owned(),
            address: "a@example.com".to_owned(),
            kind: FeedbackKind::SoftBounce as i32,
            error_reason: DeliveryErrorReason::Unreachable as i32,
            event_id: "x1".to_owned(),
            context: ctx(Source::DeliveryFeedback),
            ..Default::default()
        })
        .await
        .expect("feedback")
        .into_inner()
        .state
        .expect("state");
    assert_eq!(other.status, AddressStatus::WithErrors as i32);

    let (changed, settings) = update(
        &app,
        UpdateTenantSettingsRequest {
            reset_quarantine_rules: true,
            ..Default::default()
        },
    )
    .await
    .expect("reset");
    assert!(changed);
    assert!(settings.overridden_quarantine_rules.is_empty());
    assert_eq!(
        settings.quarantine_rules.map(|r| r.soft_error_threshold),
        Some(5)
    );
}

#[tokio::test]
async fn bad_settings_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (
            "unspecified regime",
            UpdateTenantSettingsRequest {
                channel_regimes: vec![ChannelRegime {
                    channel: Channel::Sms as i32,
                    regime: 0,
                }],
                ..Default::default()
            },
            "channel_regimes[0].regime",
        ),
        (
            "channel twice",
            UpdateTenantSettingsRequest {
                channel_regimes: vec![
                    ChannelRegime {
                        channel: Channel::Sms as i32,
                        regime: ConsentRegime::OptIn as i32,
                    },
                    ChannelRegime {
                        channel: Channel::Sms as i32,
                        regime: ConsentRegime::OptOut as i32,
                    },
                ],
                ..Default::default()
            },
            "channel_regimes[1].channel",
        ),
        (
            "zero threshold",
            UpdateTenantSettingsRequest {
                quarantine_rules: Some(QuarantineRulesUpdate {
                    soft_error_threshold: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "quarantine_rules.soft_error_threshold",
        ),
        (
            "negative period",
            UpdateTenantSettingsRequest {
                quarantine_rules: Some(QuarantineRulesUpdate {
                    error_reset_period: Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "quarantine_rules.error_reset_period",
        ),
    ];
    for (case, req, field) in cases {
        let status = update(&app, req).await.expect_err(case);
        assert_validation_failed(case, &status, &[field]);
    }
    let settings = tenants(&app)
        .get_tenant_settings(GetTenantSettingsRequest {
            tenant: TENANT.to_owned(),
        })
        .await
        .expect("get")
        .into_inner()
        .settings
        .expect("settings");
    assert_eq!(settings.updated_at, None, "nothing refused was written");
}

async fn filter(app: &TestApp, users: &[&str]) -> (Vec<String>, u64) {
    let events = users
        .iter()
        .enumerate()
        .map(|(i, u)| UsageEvent {
            user_id: (*u).to_owned(),
            payload: format!("event-{i}").into_bytes(),
        })
        .collect();
    let response = usage(app)
        .filter_usage_events(FilterUsageEventsRequest {
            tenant: TENANT.to_owned(),
            events,
        })
        .await
        .expect("FilterUsageEvents")
        .into_inner();
    let kept = response
        .kept_events
        .into_iter()
        .map(|e| String::from_utf8(e.payload).expect("utf-8 payload"))
        .collect();
    (kept, response.dropped_count)
}

#[tokio::test]
async fn usage_tracking_opt_out_drops_exactly_that_user_s_events() {
    let app = spawn_app().await;
    let users = ["u", "v", "u", "w", "u"];
    assert_eq!(filter(&app, &users).await.1, 0);

    let out = usage(&app)
        .opt_out_user(OptOutUserRequest {
            tenant: TENANT.to_owned(),
            user_id: "u".to_owned(),
            context: operator("product-admin", "asked by the customer"),
        })
        .await
        .expect("OptOutUser")
        .into_inner();
    assert!(out.changed);
    let (kept, dropped) = filter(&app, &users).await;
    assert_eq!(kept, vec!["event-1", "event-3"]);
    assert_eq!(dropped, 3);
    let allowed = |user: &str| {
        let mut client = usage(&app);
        let user = user.to_owned();
        async move {
            client
                .check_tracking(CheckTrackingRequest {
                    tenant: TENANT.to_owned(),
                    user_id: user,
                })
                .await
                .expect("CheckTracking")
                .into_inner()
                .allowed
        }
    };
    assert!(!allowed("u").await);
    assert!(allowed("v").await);

    let listed = usage(&app)
        .list_opted_out_users(ListOptedOutUsersRequest {
            tenant: TENANT.to_owned(),
            ..Default::default()
        })
        .await
        .expect("ListOptedOutUsers")
        .into_inner()
        .opt_outs;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].user_id, "u");
    assert_eq!(ms_of(listed[0].opted_out_at.as_ref()), Some(app.now_ms()));
    assert_eq!(
        listed[0].context.as_ref().map(|c| c.actor.as_str()),
        Some("product-admin")
    );

    let opt_in = || {
        let mut client = usage(&app);
        async move {
            client
                .opt_in_user(OptInUserRequest {
                    tenant: TENANT.to_owned(),
                    user_id: "u".to_owned(),
                    context: operator("product-admin", "back in"),
                })
                .await
                .expect("OptInUser")
                .into_inner()
                .changed
        }
    };
    assert!(opt_in().await);
    assert!(!opt_in().await, "idempotent");
    assert_eq!(
        filter(&app, &users).await,
        (
            vec!["event-0", "event-1", "event-2", "event-3", "event-4"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            0
        )
    );
}

#[tokio::test]
async fn usage_events_are_bounded() {
    let app = spawn_app().await;
    let too_many = vec![
        UsageEvent {
            user_id: "u".to_owned(),
            payload: Vec::new(),
        };
        10_001
    ];
    let status = usage(&app)
        .filter_usage_events(FilterUsageEventsRequest {
            tenant: TENANT.to_owned(),
            events: too_many,
        })
        .await
        .expect_err("over 10,000 events");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(error_info(&status).reason, "BATCH_TOO_LARGE");
    let status = usage(&app)
        .filter_usage_events(FilterUsageEventsRequest {
            tenant: TENANT.to_owned(),
            events: vec![
                UsageEvent {
                    user_id: String::new(),
                    payload: Vec::new(),
                },
                UsageEvent {
                    user_id: "v".to_owned(),
                    payload: vec![0; 64 * 1024 + 1],
                },
            ],
        })
        .await
        .expect_err("bad events");
    assert_eq!(
        violated_fields(&status),
        vec!["events[0].user_id", "events[1].payload"]
    );
}
