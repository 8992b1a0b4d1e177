//! Subscriptions to services, double opt-in and proof of consent, against a
//! real server with an injected clock.

use crate::common::*;
use consentd::pb::{
    ChangeContext, Channel, ConfirmSubscriptionRequest, CreateServiceRequest, ExclusionReason,
    ListServicesRequest, ListSubscribersRequest, ListSubscriptionsRequest, OptInRequest, Service,
    Source, SubscribeRequest, SubscribeResponse, SubscriptionStatus, UnsubscribeRequest,
    subscription_service_client::SubscriptionServiceClient,
};
use tonic::{Code, Status, transport::Channel as GrpcChannel};

fn client(app: &TestApp) -> SubscriptionServiceClient<GrpcChannel> {
    SubscriptionServiceClient::new(app.channel.clone())
}

/// A landing-page context with its proof of consent.
fn signup(ip: &str) -> Option<ChangeContext> {
    Some(ChangeContext {
        source: Source::LandingPage as i32,
        actor: "jane@example.com".to_owned(),
        ip_address: ip.to_owned(),
        user_agent: "Mozilla/5.0 (X11)".to_owned(),
        notice_version: "newsletter-2026-01".to_owned(),
        ..Default::default()
    })
}

async fn create_service(app: &TestApp, id: &str, channel: Channel, double_opt_in: bool) -> Service {
    client(app)
        .create_service(CreateServiceRequest {
            tenant: TENANT.to_owned(),
            service_id: id.to_owned(),
            name: format!("The {id}"),
            channel: channel as i32,
            double_opt_in,
            context: operator("marketing", "new list"),
        })
        .await
        .unwrap_or_else(|s| panic!("CreateService {id}: {s:?}"))
        .into_inner()
        .service
        .expect("service is set")
}

async fn try_subscribe(
    app: &TestApp,
    id: &str,
    service: &str,
) -> Result<SubscribeResponse, Status> {
    client(app)
        .subscribe(SubscribeRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            service_id: service.to_owned(),
            context: signup("192.0.2.10"),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn subscribe(app: &TestApp, id: &str, service: &str) -> SubscribeResponse {
    try_subscribe(app, id, service)
        .await
        .unwrap_or_else(|s| panic!("Subscribe {id} {service}: {s:?}"))
}

async fn try_confirm(app: &TestApp, token: &str) -> Result<String, Status> {
    client(app)
        .confirm_subscription(ConfirmSubscriptionRequest {
            tenant: TENANT.to_owned(),
            token: token.to_owned(),
            context: signup("192.0.2.11"),
        })
        .await
        .map(|r| r.into_inner().profile_id)
}

async fn unsubscribe(app: &TestApp, id: &str, service: &str) -> bool {
    client(app)
        .unsubscribe(UnsubscribeRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            service_id: service.to_owned(),
            context: ctx(Source::LandingPage),
        })
        .await
        .unwrap_or_else(|s| panic!("Unsubscribe {id} {service}: {s:?}"))
        .into_inner()
        .changed
}

async fn check_service(app: &TestApp, id: &str, service: &str) -> Vec<ExclusionReason> {
    let decision = app
        .eligibility
        .clone()
        .check_eligibility(consentd::pb::CheckEligibilityRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            service_id: service.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("CheckEligibility {id} {service}: {s:?}"))
        .into_inner()
        .decision
        .expect("decision is set");
    reasons(&decision)
}

fn assert_refused(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let info = error_info(status);
    assert_eq!(
        (info.domain.as_str(), info.reason.as_str()),
        ("consentd", reason)
    );
}

#[tokio::test]
async fn double_opt_in_is_pending_until_confirmed_once() {
    let app = spawn_app().await;
    upsert(&app, "jane", &["jane@example.com"], &[]).await;
    create_service(&app, "weekly", Channel::Email, true).await;

    let pending = subscribe(&app, "jane", "weekly").await;
    let subscription = pending.subscription.clone().expect("subscription is set");
    assert_eq!(
        subscription.status,
        SubscriptionStatus::PendingConfirmation as i32
    );
    assert_eq!(
        ms_of(subscription.confirmation_expires_at.as_ref()),
        Some(app.now_ms() + 7 * DAY_MS),
        "tokens expire after 7 days by default"
    );
    let token = pending.confirmation_token;
    assert_eq!(token.len(), 64, "256 random bits in hex");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        check_service(&app, "jane", "weekly").await,
        vec![ExclusionReason::NotSubscribed],
        "pending is not subscribed"
    );

    app.advance_ms(HOUR_MS);
    assert_eq!(try_confirm(&app, &token).await.expect("confirms"), "jane");
    assert!(check_service(&app, "jane", "weekly").await.is_empty());

    let again = try_confirm(&app, &token).await.expect_err("single use");
    assert_refused(&again, Code::FailedPrecondition, "TOKEN_ALREADY_USED");
    assert!(
        check_service(&app, "jane", "weekly").await.is_empty(),
        "a refused token changes nothing"
    );

    // The history holds both changes with their proof of consent.
    let history = consent_history(&app, "jane", 0, "").await.entries;
    let statuses: Vec<(i32, i32)> = history
        .iter()
        .map(|e| (e.old_subscription_status, e.new_subscription_status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (
                SubscriptionStatus::PendingConfirmation as i32,
                SubscriptionStatus::Active as i32
            ),
            (
                SubscriptionStatus::Unspecified as i32,
                SubscriptionStatus::PendingConfirmation as i32
            ),
        ]
    );
    assert!(history.iter().all(|e| e.service_id == "weekly"));
    assert!(history.iter().all(|e| e.channel == Channel::Email as i32));
    let confirmation = history[0].context.clone().expect("context is set");
    assert_eq!(confirmation.ip_address, "192.0.2.11");
    assert_eq!(confirmation.notice_version, "newsletter-2026-01");
    let signup_ctx = history[1].context.clone().expect("context is set");
    assert_eq!(signup_ctx.ip_address, "192.0.2.10");
    assert_eq!(signup_ctx.user_agent, "Mozilla/5.0 (X11)");
    assert_eq!(signup_ctx.source, Source::LandingPage as i32);
}

#[tokio::test]
async fn expired_unknown_superseded_and_malformed_tokens_change_nothing() {
    let app = spawn_app().await;
    upsert(&app, "jane", &["jane@example.com"], &[]).await;
    create_service(&app, "weekly", Channel::Email, true).await;

    let first = subscribe(&app, "jane", "weekly").await.confirmation_token;
    let second = subscribe(&app, "jane", "weekly").await;
    assert!(!second.confirmation_token.is_empty());
    assert_ne!(first, second.confirmation_token);
    // A superseded token's record is deleted with the change that replaced it.
    let superseded = try_confirm(&app, &first).await.expect_err("superseded");
    assert_refused(&superseded, Code::NotFound, "TOKEN_NOT_FOUND");

    let unknown = try_confirm(&app, &"ab".repeat(32))
        .await
        .expect_err("unknown");
    assert_refused(&unknown, Code::NotFound, "TOKEN_NOT_FOUND");
    let malformed = try_confirm(&app, "not-a-token")
        .await
        .expect_err("malformed");
    assert_validation_failed("malformed token", &malformed, &["token"]);

    app.advance_ms(7 * DAY_MS);
    let expired = try_confirm(&app, &second.confirmation_token)
        .await
        .expect_err("expired after 7 days");
    assert_refused(&expired, Code::FailedPrecondition, "TOKEN_EXPIRED");
    assert_eq!(
        check_service(&app, "jane", "weekly").await,
        vec![ExclusionReason::NotSubscribed]
    );
    // A new subscription sends a new token, which works.
    let fresh = subscribe(&app, "jane", "weekly").await.confirmation_token;
    try_confirm(&app, &fresh)
        .await
        .expect("a fresh token confirms");

    // A token of another tenant is unknown here.
    let other = client(&app)
        .confirm_subscription(ConfirmSubscriptionRequest {
            tenant: "other".to_owned(),
            token: fresh,
            context: signup("192.0.2.1"),
        })
        .await
        .expect_err("tokens are per tenant");
    assert_refused(&other, Code::NotFound, "TOKEN_NOT_FOUND");
}

#[tokio::test]
async fn unsubscribing_from_one_service_leaves_the_others_and_channel_consent_alone() {
    let app = spawn_app().await;
    upsert(&app, "p1", &["p1@example.com"], &[]).await;
    create_service(&app, "news", Channel::Email, false).await;
    create_service(&app, "offers", Channel::Email, false).await;
    for service in ["news", "offers"] {
        let response = subscribe(&app, "p1", service).await;
        assert!(response.changed);
        assert!(
            response.confirmation_token.is_empty(),
            "single opt-in: no token"
        );
        assert_eq!(
            response.subscription.map(|s| s.status),
            Some(SubscriptionStatus::Active as i32)
        );
    }
    assert!(!subscribe(&app, "p1", "news").await.changed, "idempotent");

    assert!(unsubscribe(&app, "p1", "news").await);
    assert!(!unsubscribe(&app, "p1", "news").await, "idempotent");
    assert_eq!(
        check_service(&app, "p1", "news").await,
        vec![ExclusionReason::NotSubscribed]
    );
    assert!(check_service(&app, "p1", "offers").await.is_empty());
    assert!(
        check(&app, "p1", Channel::Email).await.eligible,
        "the channel consent is untouched"
    );

    // A channel opt-out excludes from every service on that channel.
    opt_out(&app, "p1", Channel::Email).await;
    assert_eq!(
        check_service(&app, "p1", "offers").await,
        vec![ExclusionReason::OptedOutChannel]
    );

    let listed = client(&app)
        .list_subscriptions(ListSubscriptionsRequest {
            tenant: TENANT.to_owned(),
            profile_id: "p1".to_owned(),
        })
        .await
        .expect("ListSubscriptions")
        .into_inner()
        .subscriptions;
    let statuses: Vec<(String, i32)> = listed
        .into_iter()
        .map(|s| (s.service_id, s.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("news".to_owned(), SubscriptionStatus::Unsubscribed as i32),
            ("offers".to_owned(), SubscriptionStatus::Active as i32),
        ]
    );
}

#[tokio::test]
async fn batch_checks_for_a_service_count_not_subscribed() {
    let app = spawn_app().await;
    create_service(&app, "sms-alerts", Channel::Sms, false).await;
    for i in 0..10 {
        upsert(&app, &format!("p{i}"), &[], &["+33612345678"]).await;
        if i % 2 == 0 {
            subscribe(&app, &format!("p{i}"), "sms-alerts").await;
        }
    }
    let ids: Vec<String> = (0..11).map(|i| format!("p{i}")).collect();
    let response = app
        .eligibility
        .clone()
        .batch_check_eligibility(consentd::pb::BatchCheckEligibilityRequest {
            tenant: TENANT.to_owned(),
            profile_ids: ids,
            service_id: "sms-alerts".to_owned(),
            ..Default::default()
        })
        .await
        .expect("batch for a service")
        .into_inner();
    let summary = response.summary.expect("summary");
    assert_eq!((summary.total, summary.eligible), (11, 5));
    assert_eq!(
        by_reason(&summary),
        vec![
            (ExclusionReason::ProfileNotFound, 1),
            (ExclusionReason::NotSubscribed, 5)
        ]
    );

    // The channel, if given, must be the service's.
    let wrong = app
        .eligibility
        .clone()
        .batch_check_eligibility(consentd::pb::BatchCheckEligibilityRequest {
            tenant: TENANT.to_owned(),
            channel: Channel::Email as i32,
            profile_ids: vec!["p0".to_owned()],
            service_id: "sms-alerts".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("e-mail check of an SMS service");
    assert_validation_failed("channel mismatch", &wrong, &["channel"]);
    let unknown = app
        .eligibility
        .clone()
        .batch_check_eligibility(consentd::pb::BatchCheckEligibilityRequest {
            tenant: TENANT.to_owned(),
            profile_ids: vec!["p0".to_owned()],
            service_id: "nope".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("unknown service");
    assert_refused(&unknown, Code::NotFound, "SERVICE_NOT_FOUND");
}

#[tokio::test]
async fn services_and_subscribers_are_listed_in_pages() {
    let app = spawn_app().await;
    create_service(&app, "a-news", Channel::Email, true).await;
    let exists = client(&app)
        .create_service(CreateServiceRequest {
            tenant: TENANT.to_owned(),
            service_id: "a-news".to_owned(),
            name: "again".to_owned(),
            channel: Channel::Email as i32,
            double_opt_in: false,
            context: ctx(Source::Api),
        })
        .await
        .expect_err("the id is taken");
    assert_refused(&exists, Code::AlreadyExists, "SERVICE_EXISTS");
    create_service(&app, "b-push", Channel::Push, false).await;
    let services = client(&app)
        .list_services(ListServicesRequest {
            tenant: TENANT.to_owned(),
            ..Default::default()
        })
        .await
        .expect("ListServices")
        .into_inner()
        .services;
    let listed: Vec<(String, bool)> = services
        .into_iter()
        .map(|s| (s.service_id, s.double_opt_in))
        .collect();
    assert_eq!(
        listed,
        vec![("a-news".to_owned(), true), ("b-push".to_owned(), false)]
    );

    for i in 0..5 {
        upsert(&app, &format!("s{i}"), &[&format!("s{i}@example.com")], &[]).await;
        let token = subscribe(&app, &format!("s{i}"), "a-news")
            .await
            .confirmation_token;
        if i < 3 {
            try_confirm(&app, &token).await.expect("confirms");
        }
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client(&app)
            .list_subscribers(ListSubscribersRequest {
                tenant: TENANT.to_owned(),
                service_id: "a-news".to_owned(),
                status: SubscriptionStatus::Active as i32,
                page_size: 2,
                page_token: page_token.clone(),
            })
            .await
            .expect("ListSubscribers")
            .into_inner();
        seen.extend(page.subscribers.into_iter().map(|s| s.profile_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, vec!["s0", "s1", "s2"]);
}

#[tokio::test]
async fn landing_pages_must_prove_consent() {
    let app = spawn_app().await;
    upsert(&app, "jane", &["jane@example.com"], &[]).await;
    create_service(&app, "weekly", Channel::Email, false).await;
    let without_proof = client(&app)
        .subscribe(SubscribeRequest {
            tenant: TENANT.to_owned(),
            profile_id: "jane".to_owned(),
            service_id: "weekly".to_owned(),
            context: ctx(Source::LandingPage),
        })
        .await
        .expect_err("no IP address");
    assert_validation_failed("subscribe", &without_proof, &["context.ip_address"]);
    let opt_in = |context: Option<ChangeContext>| {
        let mut consent = app.consent.clone();
        async move {
            consent
                .opt_in(OptInRequest {
                    tenant: TENANT.to_owned(),
                    profile_id: "jane".to_owned(),
                    channel: Channel::Email as i32,
                    all_channels: false,
                    context,
                })
                .await
        }
    };
    let mut no_notice = signup("192.0.2.1");
    if let Some(c) = no_notice.as_mut() {
        c.notice_version.clear();
    }
    let refused = opt_in(no_notice).await.expect_err("no notice version");
    assert_validation_failed("opt in", &refused, &["context.notice_version"]);
    let bad_ip = opt_in(signup("300.1.2.3")).await.expect_err("bad IP");
    assert_validation_failed("opt in", &bad_ip, &["context.ip_address"]);
    let mut future = signup("192.0.2.1");
    if let Some(c) = future.as_mut() {
        c.collected_at = Some(ts(app.now_ms() + HOUR_MS));
    }
    let later = opt_in(future).await.expect_err("collected in the future");
    assert_validation_failed("opt in", &later, &["context.collected_at"]);
    assert!(
        consent_history(&app, "jane", 0, "")
            .await
            .entries
            .is_empty(),
        "nothing refused was recorded"
    );

    let mut proven = signup("2001:DB8::1");
    if let Some(c) = proven.as_mut() {
        c.collected_at = Some(ts(app.now_ms() - MINUTE_MS));
        c.principal = "forged".to_owned();
    }
    opt_in(proven).await.expect("opt-in with proof");
    let entry = consent_history(&app, "jane", 0, "").await.entries.remove(0);
    let context = entry.context.expect("context");
    assert_eq!(
        context.ip_address, "2001:db8::1",
        "stored in canonical form"
    );
    assert_eq!(
        ms_of(context.collected_at.as_ref()),
        Some(app.now_ms() - MINUTE_MS)
    );
    assert_eq!(
        context.principal, "",
        "principal is the server's to set, never the client's"
    );

    // An operator needs no proof.
    let operator_opt_in = opt_in(operator("alice", "phone call")).await;
    assert!(operator_opt_in.is_ok());
}

#[tokio::test]
async fn subscriptions_survive_a_restart() {
    let app = spawn_app().await;
    upsert(&app, "jane", &["jane@example.com"], &[]).await;
    create_service(&app, "weekly", Channel::Email, true).await;
    let token = subscribe(&app, "jane", "weekly").await.confirmation_token;
    let app = app.restart().await;
    try_confirm(&app, &token)
        .await
        .expect("the token survives a restart");
    let app = app.restart().await;
    assert!(check_service(&app, "jane", "weekly").await.is_empty());
}

/// A flush the test can hold, then fail: the state an answer reports is
/// applied but not yet durable while it is held.
struct FlushGate {
    state: std::sync::Arc<(std::sync::Mutex<u8>, std::sync::Condvar)>,
    entered: std::sync::Arc<tokio::sync::Notify>,
}

const FLUSH_PASSES: u8 = 0;
const FLUSH_HELD: u8 = 1;
const FLUSH_FAILS: u8 = 2;

impl FlushGate {
    /// `None` (the test skips) when the harness runs on PostgreSQL: the
    /// gate is a failpoint of the sled store's flush.
    async fn spawn_app() -> Option<(TestApp, Self)> {
        use std::sync::{Arc, Condvar, Mutex};
        if crate::common::pg::harness_on_postgres() {
            eprintln!("skipped on PostgreSQL: it holds the sled store's flush");
            return None;
        }
        let state = Arc::new((Mutex::new(FLUSH_PASSES), Condvar::new()));
        let entered = Arc::new(tokio::sync::Notify::new());
        let (held, seen) = (Arc::clone(&state), Arc::clone(&entered));
        let app = spawn_app_with_store_options(consentd::store::sled::SledOptions {
            // Runs on the committer thread, which may block.
            sync_fault: Some(Arc::new(move || {
                let (lock, changed) = &*held;
                let mut state = lock.lock().expect("gate lock");
                if *state == FLUSH_HELD {
                    seen.notify_one();
                }
                while *state == FLUSH_HELD {
                    state = changed.wait(state).expect("gate lock");
                }
                if *state == FLUSH_FAILS {
                    return Err(std::io::Error::other("injected: EIO on fdatasync"));
                }
                Ok(())
            })),
            ..consentd::store::sled::SledOptions::default()
        })
        .await;
        Some((app, Self { state, entered }))
    }

    fn set(&self, to: u8) {
        let (lock, changed) = &*self.state;
        *lock.lock().expect("gate lock") = to;
        changed.notify_all();
    }

    fn hold(&self) {
        self.set(FLUSH_HELD);
    }

    fn fail(&self) {
        self.set(FLUSH_FAILS);
    }

    /// Waits until a flush is held.
    async fn until_held(&self) {
        self.entered.notified().await;
    }
}

/// Gives `task` a moment to answer while the flush is held (an answer then
/// would report state that is not durable), then lets the flush fail, and
/// returns what `task` answered.
async fn answer_once_the_flush_failed<T: std::fmt::Debug>(
    gate: &FlushGate,
    task: tokio::task::JoinHandle<Result<T, Status>>,
) -> Result<T, Status> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while !task.is_finished() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    gate.fail();
    task.await.expect("the request task")
}

#[tokio::test]
async fn already_exists_is_answered_only_once_the_service_is_durable() {
    let Some((app, gate)) = FlushGate::spawn_app().await else {
        return;
    };
    let create = |app: &TestApp| {
        let mut client = client(app);
        tokio::spawn(async move {
            client
                .create_service(CreateServiceRequest {
                    tenant: TENANT.to_owned(),
                    service_id: "news".to_owned(),
                    name: "The news".to_owned(),
                    channel: Channel::Email as i32,
                    double_opt_in: false,
                    context: operator("marketing", "new list"),
                })
                .await
                .map(tonic::Response::into_inner)
        })
    };
    gate.hold();
    let first = create(&app);
    gate.until_held().await;
    // The service is written, not yet durable: a second create sees it.
    let second = answer_once_the_flush_failed(&gate, create(&app)).await;
    let refused = second.expect_err("the service never became durable");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let first = first.await.expect("the request task");
    assert_eq!(first.expect_err("not durable").code(), Code::Unavailable);
}

#[tokio::test]
async fn token_already_used_is_answered_only_once_the_use_is_durable() {
    let Some((app, gate)) = FlushGate::spawn_app().await else {
        return;
    };
    upsert(&app, "jane", &["jane@example.com"], &[]).await;
    create_service(&app, "weekly", Channel::Email, true).await;
    let token = subscribe(&app, "jane", "weekly").await.confirmation_token;
    let confirm = |app: &TestApp| {
        let (mut client, token) = (client(app), token.clone());
        tokio::spawn(async move {
            client
                .confirm_subscription(ConfirmSubscriptionRequest {
                    tenant: TENANT.to_owned(),
                    token,
                    context: signup("192.0.2.11"),
                })
                .await
                .map(tonic::Response::into_inner)
        })
    };
    gate.hold();
    let first = confirm(&app);
    gate.until_held().await;
    // The token is marked used, not yet durably: a second click sees it.
    let second = answer_once_the_flush_failed(&gate, confirm(&app)).await;
    let refused = second.expect_err("the confirmation never became durable");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let first = first.await.expect("the request task");
    assert_eq!(first.expect_err("not durable").code(), Code::Unavailable);
}

#[tokio::test]
async fn too_many_services_is_answered_only_once_the_services_are_durable() {
    let Some((app, gate)) = FlushGate::spawn_app().await else {
        return;
    };
    let limit = consentd::app::SERVICES_PER_TENANT_MAX;
    for n in 1..limit {
        create_service(&app, &format!("s{n}"), Channel::Email, false).await;
    }
    let create = |app: &TestApp, id: String| {
        let mut client = client(app);
        tokio::spawn(async move {
            client
                .create_service(CreateServiceRequest {
                    tenant: TENANT.to_owned(),
                    service_id: id.clone(),
                    name: format!("The {id}"),
                    channel: Channel::Email as i32,
                    double_opt_in: false,
                    context: operator("marketing", "new list"),
                })
                .await
                .map(tonic::Response::into_inner)
        })
    };
    gate.hold();
    let last = create(&app, format!("s{limit}"));
    gate.until_held().await;
    // The last service is written, not yet durable: one more is refused
    // only once it is.
    let one_more = answer_once_the_flush_failed(&gate, create(&app, "extra".to_owned())).await;
    let refused = one_more.expect_err("the last service never became durable");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let last = last.await.expect("the request task");
    assert_eq!(last.expect_err("not durable").code(), Code::Unavailable);
}
