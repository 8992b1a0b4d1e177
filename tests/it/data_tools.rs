//! The data tools, run as the real binary: export → import → export gives the
//! same records (services, subscriptions, tenant settings and usage opt-outs
//! included) and a server on the restored directory answers as the original;
//! malformed lines are reported by number and nothing of them is
//! applied; import is idempotent; a CSV suppression list quarantines and
//! denylists; an online backup taken under write load holds everything
//! acknowledged before it began and is internally consistent.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::common::*;
use consentd::{
    clock::ManualClock,
    engine::{Address, AddressStatus as DomainStatus, ProfileId, Tenant},
    pb::{
        AddressStatus, AddressType, ChangeContext, Channel, ChannelRegime, CheckEligibilityRequest,
        CheckTrackingRequest, ConfirmSubscriptionRequest, ConsentRegime, CreateServiceRequest,
        DeliveryErrorReason, ExclusionReason, FeedbackKind, GetTenantSettingsRequest,
        ListConsentHistoryResponse, ListSubscribersRequest, OptInRequest, OptOutUserRequest,
        QuarantineAddressRequest, QuarantineRulesUpdate, ReleaseAddressRequest, Source,
        SubscribeRequest, Subscriber, SubscriptionStatus, TenantSettings,
        UpdateTenantSettingsRequest, UpsertProfileRequest,
        product_usage_service_client::ProductUsageServiceClient,
        subscription_service_client::SubscriptionServiceClient,
        tenant_service_client::TenantServiceClient,
    },
    store::{Store, sled::SledStore},
};
use serde_json::Value;
use tonic::transport::Channel as GrpcChannel;

/// Runs the consentd binary with `args` and returns its output.
fn consentd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_consentd"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the consentd binary")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Exports `data_dir` to `file` and returns its lines.
fn export(data_dir: &Path, file: &Path) -> Vec<String> {
    let out = consentd(&[
        "export",
        "--data-dir",
        path_str(data_dir),
        "--output",
        path_str(file),
    ]);
    assert!(out.status.success(), "export failed: {}", stderr(&out));
    std::fs::read_to_string(file)
        .expect("read the export")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn import(data_dir: &Path, file: &Path) -> Output {
    consentd(&["import", "--data-dir", path_str(data_dir), path_str(file)])
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {e}: {line}"))
}

/// The records of an export (header left out), each parsed.
fn records(lines: &[String]) -> Vec<Value> {
    assert_eq!(
        parse(&lines[0])["type"],
        "header",
        "first line: {}",
        lines[0]
    );
    assert_eq!(parse(&lines[0])["format"], "consentd-export");
    assert_eq!(parse(&lines[0])["version"], 1);
    lines[1..].iter().map(|l| parse(l)).collect()
}

fn count_by_type(records: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts
            .entry(r["type"].as_str().expect("type").to_owned())
            .or_default() += 1;
    }
    counts
}

async fn set_status(app: &TestApp, address: &str, status: AddressStatus) {
    app.quarantine
        .clone()
        .quarantine_address(QuarantineAddressRequest {
            tenant: TENANT.to_owned(),
            address: address.to_owned(),
            address_type: AddressType::Unspecified as i32,
            status: status as i32,
            context: operator("ops", "manual check"),
        })
        .await
        .expect("QuarantineAddress");
}

fn subscriptions(app: &TestApp) -> SubscriptionServiceClient<GrpcChannel> {
    SubscriptionServiceClient::new(app.channel.clone())
}

fn tenants(app: &TestApp) -> TenantServiceClient<GrpcChannel> {
    TenantServiceClient::new(app.channel.clone())
}

fn usage(app: &TestApp) -> ProductUsageServiceClient<GrpcChannel> {
    ProductUsageServiceClient::new(app.channel.clone())
}

/// A landing-page context with its proof of consent.
fn signup() -> Option<ChangeContext> {
    Some(ChangeContext {
        source: Source::LandingPage as i32,
        actor: "visitor".to_owned(),
        ip_address: "2001:DB8::7".to_owned(),
        user_agent: "Mozilla/5.0 (X11)".to_owned(),
        notice_version: "newsletter-2026-01".to_owned(),
        collected_at: Some(ts(START_MS - 1000)),
        ..Default::default()
    })
}

/// Subscribes `id` to the `weekly` service; returns the confirmation token.
async fn subscribe(app: &TestApp, id: &str) -> String {
    subscriptions(app)
        .subscribe(SubscribeRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            service_id: "weekly".to_owned(),
            context: signup(),
        })
        .await
        .unwrap_or_else(|s| panic!("Subscribe {id}: {s:?}"))
        .into_inner()
        .confirmation_token
}

async fn confirm(app: &TestApp, token: &str) -> Result<String, tonic::Status> {
    subscriptions(app)
        .confirm_subscription(ConfirmSubscriptionRequest {
            tenant: TENANT.to_owned(),
            token: token.to_owned(),
            context: signup(),
        })
        .await
        .map(|r| r.into_inner().profile_id)
}

async fn check_weekly(app: &TestApp, id: &str) -> Vec<ExclusionReason> {
    let decision = app
        .eligibility
        .clone()
        .check_eligibility(CheckEligibilityRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            service_id: "weekly".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("CheckEligibility {id} weekly: {s:?}"))
        .into_inner()
        .decision
        .expect("decision is set");
    reasons(&decision)
}

async fn tracking_allowed(app: &TestApp, user: &str) -> bool {
    usage(app)
        .check_tracking(CheckTrackingRequest {
            tenant: TENANT.to_owned(),
            user_id: user.to_owned(),
        })
        .await
        .expect("CheckTracking")
        .into_inner()
        .allowed
}

/// What a server answers about the sample's services, settings and usage.
#[derive(Debug, PartialEq)]
struct Answers {
    weekly: Vec<(String, Vec<ExclusionReason>)>,
    sms: Vec<(String, Vec<ExclusionReason>)>,
    settings: Option<TenantSettings>,
    subscribers: Vec<Subscriber>,
    tracking: Vec<(String, bool)>,
    erin_history: ListConsentHistoryResponse,
}

async fn answers(app: &TestApp) -> Answers {
    let mut weekly = Vec::new();
    for id in ["dave", "erin", "carol"] {
        weekly.push((id.to_owned(), check_weekly(app, id).await));
    }
    let mut sms = Vec::new();
    for id in ["alice", "bob"] {
        sms.push((id.to_owned(), reasons(&check(app, id, Channel::Sms).await)));
    }
    let settings = tenants(app)
        .get_tenant_settings(GetTenantSettingsRequest {
            tenant: TENANT.to_owned(),
        })
        .await
        .expect("GetTenantSettings")
        .into_inner()
        .settings;
    let subscribers = subscriptions(app)
        .list_subscribers(ListSubscribersRequest {
            tenant: TENANT.to_owned(),
            service_id: "weekly".to_owned(),
            ..Default::default()
        })
        .await
        .expect("ListSubscribers")
        .into_inner()
        .subscribers;
    let mut tracking = Vec::new();
    for user in ["user-42", "user-43"] {
        tracking.push((user.to_owned(), tracking_allowed(app, user).await));
    }
    Answers {
        weekly,
        sms,
        settings,
        subscribers,
        tracking,
        erin_history: consent_history(app, "erin", 100, "").await,
    }
}

/// A server's worth of every kind of state: profiles with every address kind,
/// consent changes of every kind (a landing-page opt-in with proof included),
/// quarantined, denylisted, released and with-errors addresses, feedback
/// event ids, a double opt-in service with a pending and a confirmed
/// subscription, tenant settings (an OPT_IN regime, a quarantine rule
/// override), a usage opt-out, and a second tenant. Returns the stopped
/// server's data directory.
async fn sample_data() -> tempfile::TempDir {
    sample().await.dir
}

/// What [`sample`] leaves: the stopped server's data directory and clock,
/// and the confirmation token of the subscription left pending.
struct Sample {
    dir: tempfile::TempDir,
    clock: ManualClock,
    pending_token: String,
}

async fn sample() -> Sample {
    let app = spawn_app().await;
    app.profiles
        .clone()
        .upsert_profile(UpsertProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: "alice".to_owned(),
            emails: vec![
                "Alice@Example.com".to_owned(),
                "shared@example.com".to_owned(),
            ],
            phones: vec!["+33 6 12 34 56 78".to_owned()],
            push_tokens: vec!["tok-alice".to_owned()],
            postal_address: "1 rue de la Paix, Paris".to_owned(),
            context: ctx(Source::Import),
        })
        .await
        .expect("upsert alice");
    upsert(&app, "bob", &["shared@example.com"], &["+447700900123"]).await;
    upsert(&app, "carol", &["carol@example.com"], &[]).await;
    opt_out_all(&app, "alice").await;
    opt_in(&app, "alice", Some(Channel::Sms)).await;
    opt_out(&app, "bob", Channel::Email).await;
    opt_out(&app, "bob", Channel::Voice).await;
    opt_in(&app, "bob", Some(Channel::Email)).await;
    opt_in(&app, "alice", None).await;
    opt_out(&app, "carol", Channel::DirectMail).await;
    app.advance_ms(MINUTE_MS);
    feedback(
        &app,
        "shared@example.com",
        FeedbackKind::HardBounce,
        DeliveryErrorReason::UserUnknown,
        "mta-1",
        None,
    )
    .await;
    soft_bounce(&app, "carol@example.com", "mta-2", app.now_ms()).await;
    feedback(
        &app,
        "+447700900123",
        FeedbackKind::Complaint,
        DeliveryErrorReason::Unspecified,
        "sms-1",
        None,
    )
    .await;
    set_status(&app, "alice@example.com", AddressStatus::Quarantined).await;
    app.quarantine
        .clone()
        .release_address(ReleaseAddressRequest {
            tenant: TENANT.to_owned(),
            address: "alice@example.com".to_owned(),
            address_type: AddressType::Unspecified as i32,
            context: operator("ops", "mailbox recreated"),
        })
        .await
        .expect("release");
    set_status(&app, "+33612345678", AddressStatus::Denylisted).await;
    // Proof of consent, services and subscriptions, tenant settings, usage.
    upsert(&app, "dave", &["dave@example.com"], &[]).await;
    upsert(&app, "erin", &["erin@example.com"], &[]).await;
    app.consent
        .clone()
        .opt_in(OptInRequest {
            tenant: TENANT.to_owned(),
            profile_id: "erin".to_owned(),
            channel: Channel::Email as i32,
            all_channels: false,
            context: signup(),
        })
        .await
        .expect("landing-page opt-in with proof");
    subscriptions(&app)
        .create_service(CreateServiceRequest {
            tenant: TENANT.to_owned(),
            service_id: "weekly".to_owned(),
            name: "The weekly".to_owned(),
            channel: Channel::Email as i32,
            double_opt_in: true,
            context: operator("marketing", "new list"),
        })
        .await
        .expect("CreateService");
    let pending_token = subscribe(&app, "dave").await;
    let used_token = subscribe(&app, "erin").await;
    assert_eq!(
        confirm(&app, &used_token).await.expect("confirm erin"),
        "erin"
    );
    tenants(&app)
        .update_tenant_settings(UpdateTenantSettingsRequest {
            tenant: TENANT.to_owned(),
            channel_regimes: vec![ChannelRegime {
                channel: Channel::Sms as i32,
                regime: ConsentRegime::OptIn as i32,
            }],
            quarantine_rules: Some(QuarantineRulesUpdate {
                soft_error_threshold: Some(2),
                ..Default::default()
            }),
            context: operator("admin", "policy"),
            ..Default::default()
        })
        .await
        .expect("UpdateTenantSettings");
    usage(&app)
        .opt_out_user(OptOutUserRequest {
            tenant: TENANT.to_owned(),
            user_id: "user-42".to_owned(),
            context: operator("product-admin", "asked by the customer"),
        })
        .await
        .expect("OptOutUser");
    // A second tenant, with a profile id and address the first one also has.
    app.profiles
        .clone()
        .upsert_profile(UpsertProfileRequest {
            tenant: "globex".to_owned(),
            profile_id: "alice".to_owned(),
            emails: vec!["shared@example.com".to_owned()],
            context: ctx(Source::Api),
            ..Default::default()
        })
        .await
        .expect("upsert globex alice");
    let (dir, clock) = app.stop().await;
    Sample {
        dir,
        clock,
        pending_token,
    }
}

#[tokio::test]
async fn export_import_export_gives_the_same_records_and_rebuilds_the_indexes() {
    let Sample {
        dir: data,
        clock,
        pending_token,
    } = sample().await;
    let work = tempfile::tempdir().expect("tempdir");
    let first = export(data.path(), &work.path().join("first.jsonl"));
    let first_records = records(&first);
    let counts = count_by_type(&first_records);
    for kind in [
        "profile",
        "consent_history",
        "address_state",
        "address_event",
        "feedback_event_id",
        "tenant_settings",
        "service",
        "subscription",
        "confirmation_token",
        "usage_opt_out",
    ] {
        assert!(counts.contains_key(kind), "no {kind} record in {counts:?}");
    }
    assert_eq!(counts["profile"], 6, "{counts:?}");
    assert_eq!(counts["feedback_event_id"], 3, "{counts:?}");
    assert_eq!(counts["subscription"], 2, "{counts:?}");
    assert_eq!(counts["confirmation_token"], 2, "{counts:?}");
    // History entries of both kinds; proof of consent in the contexts.
    let subscription_changes = first_records
        .iter()
        .filter(|r| r["type"] == "consent_history" && r["change"]["kind"] == "SUBSCRIPTION")
        .count();
    assert_eq!(
        subscription_changes, 3,
        "dave pending, erin pending then active"
    );
    let proven = first_records.iter().find(|r| {
        r["type"] == "consent_history"
            && r["profile_id"] == "erin"
            && r["change"]["kind"] == "CONSENT"
    });
    let proven = proven.expect("erin's landing-page opt-in");
    assert_eq!(proven["context"]["source"], "LANDING_PAGE");
    assert_eq!(proven["context"]["ip_address"], "2001:db8::7");
    assert_eq!(proven["context"]["notice_version"], "newsletter-2026-01");
    assert_eq!(proven["context"]["collected_at_ms"], START_MS - 1000);

    let restored_dir = tempfile::tempdir().expect("tempdir");
    let restored = restored_dir.path().to_owned();
    let out = import(&restored, &work.path().join("first.jsonl"));
    assert!(out.status.success(), "import failed: {}", stderr(&out));
    assert!(
        stderr(&out).contains("0 lines rejected"),
        "{}",
        stderr(&out)
    );
    let second = export(&restored, &work.path().join("second.jsonl"));
    assert_eq!(
        first[1..],
        second[1..],
        "the records differ after a round trip"
    );

    // The derived indexes were rebuilt: who uses an address, which are not VALID.
    let store = SledStore::open(&restored).expect("open the restored store");
    let acme = Tenant::parse(TENANT).expect("tenant");
    let shared = Address::email("shared@example.com").expect("address");
    let (users, _) = store
        .address_users(&acme, &shared, 10)
        .await
        .expect("users");
    let users: Vec<&str> = users.iter().map(ProfileId::as_str).collect();
    assert_eq!(users, ["alice", "bob"]);
    let listed = store
        .list_addresses(&acme, None, None, 100)
        .await
        .expect("list")
        .items;
    let listed: BTreeMap<String, DomainStatus> = listed
        .into_iter()
        .map(|(a, s)| (a.as_str().to_owned(), s.status))
        .collect();
    assert_eq!(
        listed,
        BTreeMap::from([
            ("+33612345678".to_owned(), DomainStatus::Denylisted),
            ("+447700900123".to_owned(), DomainStatus::Denylisted),
            ("carol@example.com".to_owned(), DomainStatus::WithErrors),
            ("shared@example.com".to_owned(), DomainStatus::Quarantined),
        ])
    );
    drop(store);

    // A server on the restored directory answers as the original does.
    let original = TestApp::start_on(data, clock.clone()).await;
    let expected = answers(&original).await;
    original.stop().await;
    let app = TestApp::start_on(restored_dir, clock).await;
    let got = answers(&app).await;
    assert_eq!(got, expected);
    assert_eq!(
        got.weekly,
        [
            ("dave".to_owned(), vec![ExclusionReason::NotSubscribed]),
            ("erin".to_owned(), vec![]),
            ("carol".to_owned(), vec![ExclusionReason::NotSubscribed]),
        ]
    );
    assert!(got.sms[1].1.contains(&ExclusionReason::NoOptIn), "{got:?}");
    let settings = got.settings.as_ref().expect("settings are set");
    assert!(
        settings
            .channel_regimes
            .iter()
            .any(|r| r.channel == Channel::Sms as i32 && r.regime == ConsentRegime::OptIn as i32),
        "{settings:?}"
    );
    assert_eq!(
        settings
            .quarantine_rules
            .as_ref()
            .map(|r| r.soft_error_threshold),
        Some(2)
    );
    let statuses: Vec<(&str, i32)> = got
        .subscribers
        .iter()
        .map(|s| (s.profile_id.as_str(), s.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("dave", SubscriptionStatus::PendingConfirmation as i32),
            ("erin", SubscriptionStatus::Active as i32),
        ],
        "the subscriber index was rebuilt"
    );
    assert_eq!(
        got.tracking,
        [("user-42".to_owned(), false), ("user-43".to_owned(), true)]
    );
    // The restored token hashes work: the pending one confirms once.
    assert_eq!(
        confirm(&app, &pending_token).await.as_deref().ok(),
        Some("dave")
    );
    assert!(confirm(&app, &pending_token).await.is_err(), "used once");
    assert_eq!(check_weekly(&app, "dave").await, vec![]);
    app.stop().await;
}

#[tokio::test]
async fn importing_twice_gives_the_same_state_as_once() {
    let data = sample_data().await;
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("export.jsonl");
    let original = export(data.path(), &file);
    // Into the directory the export came from, and twice into a new one.
    let out = import(data.path(), &file);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = export(data.path(), &work.path().join("again.jsonl"));
    assert_eq!(original[1..], again[1..]);
    let fresh = work.path().join("fresh");
    for _ in 0..2 {
        let out = import(&fresh, &file);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let twice = export(&fresh, &work.path().join("twice.jsonl"));
    assert_eq!(original[1..], twice[1..]);
    let store = SledStore::open(&fresh).expect("open");
    let acme = Tenant::parse(TENANT).expect("tenant");
    let shared = Address::email("shared@example.com").expect("address");
    let (users, _) = store
        .address_users(&acme, &shared, 10)
        .await
        .expect("users");
    assert_eq!(users.len(), 2, "index entries are not duplicated");
}

#[tokio::test]
async fn malformed_lines_are_reported_by_number_and_nothing_of_them_is_applied() {
    let data = sample_data().await;
    let work = tempfile::tempdir().expect("tempdir");
    let lines = export(data.path(), &work.path().join("export.jsonl"));
    let profile_line = lines
        .iter()
        .find(|l| parse(l)["type"] == "profile")
        .expect("a profile line");
    let good_profile = |id: &str, email: &str| {
        let mut v = parse(profile_line);
        v["profile_id"] = Value::from(id);
        v["emails"] = Value::from(vec![email]);
        v.to_string()
    };
    let mut bad = vec![lines[0].clone()];
    bad.push(good_profile("dave", "dave@example.com")); // line 2: good
    bad.push("{not json".to_owned()); // line 3
    bad.push(r#"{"type":"newsletter","tenant":"acme"}"#.to_owned()); // line 4
    bad.push(good_profile("erin", "not-an-email")); // line 5: invalid address
    let mut extra_field = parse(&good_profile("frank", "frank@example.com"));
    extra_field["favourite_colour"] = Value::from("blue");
    bad.push(extra_field.to_string()); // line 6: unknown field
    bad.push(good_profile("gina", "gina@example.com")); // line 7: good
    let file = work.path().join("bad.jsonl");
    std::fs::write(&file, bad.join("\n") + "\n").expect("write");

    let target = work.path().join("target");
    let out = import(&target, &file);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(65), "{err}");
    for line in [3, 4, 5, 6] {
        assert!(
            err.contains(&format!("line {line}: rejected")),
            "line {line}: {err}"
        );
    }
    assert!(err.contains("newsletter"), "{err}");
    assert!(err.contains("emails[0]"), "{err}");
    assert!(err.contains("favourite_colour"), "{err}");
    assert!(
        !err.contains("line 2:") && !err.contains("line 7:"),
        "{err}"
    );
    assert!(err.contains("4 lines rejected"), "{err}");

    let store = SledStore::open(&target).expect("open");
    let acme = Tenant::parse(TENANT).expect("tenant");
    let exists = async |id: &str| {
        store
            .profile(&acme, &ProfileId::parse(id).expect("id"))
            .await
            .expect("read")
            .is_some()
    };
    assert!(exists("dave").await && exists("gina").await);
    assert!(!exists("erin").await && !exists("frank").await);
    let (users, _) = store
        .address_users(&acme, &Address::email("frank@example.com").expect("a"), 10)
        .await
        .expect("users");
    assert!(users.is_empty(), "nothing of a rejected line is written");
    drop(store);

    // Without a header, nothing at all is imported.
    let headless = work.path().join("headless.jsonl");
    std::fs::write(&headless, bad[1..].join("\n")).expect("write");
    let empty = work.path().join("empty");
    let out = import(&empty, &headless);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
    let store = SledStore::open(&empty).expect("open");
    assert_eq!(store.dump(None).count(), 0);
}

#[tokio::test]
async fn a_csv_suppression_list_quarantines_and_denylists_with_source_import() {
    let work = tempfile::tempdir().expect("tempdir");
    let csv = work.path().join("suppressions.csv");
    std::fs::write(
        &csv,
        "Email Address,Reason,Created\n\
         Bounce@Example.com,hard_bounce,2025-01-02\n\
         soft@example.com,Soft Bounce,2025-01-03T10:00:00+01:00\n\
         spam@example.com,spam,\n\
         unsub@example.com,unsubscribed,2025-01-04 08:30:00\n\
         not-an-address,bounce,\n\
         who@example.com,vacation,\n\
         late@example.com,complaint,tomorrow\n\
         +33612345678,manual,\n\
         bounce@example.com,complaint,2025-01-05\n",
    )
    .expect("write");
    let dir = work.path().join("data");
    let run = || {
        consentd(&[
            "import-suppressions",
            "--data-dir",
            path_str(&dir),
            "--tenant",
            TENANT,
            "--format",
            "csv",
            path_str(&csv),
        ])
    };
    let out = run();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(65), "{err}");
    for line in [6, 7, 8] {
        assert!(
            err.contains(&format!("line {line}: rejected")),
            "line {line}: {err}"
        );
    }
    assert!(err.contains("3 rejected"), "{err}");

    let check = async |expect_events: usize| {
        let store = SledStore::open(&dir).expect("open");
        let acme = Tenant::parse(TENANT).expect("tenant");
        for (address, status, reason) in [
            // A complaint after a bounce denylists; the reason is the last one.
            ("bounce@example.com", DomainStatus::Denylisted, "complaint"),
            ("soft@example.com", DomainStatus::Quarantined, "Soft Bounce"),
            ("spam@example.com", DomainStatus::Denylisted, "spam"),
            (
                "unsub@example.com",
                DomainStatus::Denylisted,
                "unsubscribed",
            ),
            ("+33612345678", DomainStatus::Denylisted, "manual"),
        ] {
            let parsed = Address::parse(None, address).expect("address");
            let state = store
                .address_state(&acme, &parsed)
                .await
                .expect("state")
                .unwrap_or_default();
            assert_eq!(state.status, status, "{address}");
            assert_eq!(state.last_reason, reason, "{address}");
            let history = store
                .address_history(&acme, &parsed, None, 100)
                .await
                .expect("history");
            for event in &history {
                assert_eq!(event.context.source, consentd::engine::Source::Import);
                assert_eq!(event.context.actor, "import-suppressions:suppressions.csv");
                // The tenant set no rules of its own: each event keeps the defaults.
                assert_eq!(
                    event.rules,
                    Some(consentd::engine::QuarantineRules::default()),
                    "{address}"
                );
            }
        }
        let bounce = Address::email("bounce@example.com").expect("address");
        let history = store
            .address_history(&acme, &bounce, None, 100)
            .await
            .expect("history");
        assert_eq!(history.len(), expect_events);
        // The row's date is the event time.
        let jan_2 = 1_735_776_000_000;
        assert!(
            history.iter().any(|e| e.occurred_at == jan_2),
            "{history:?}"
        );
        let none = Address::email("who@example.com").expect("address");
        assert_eq!(
            store.address_state(&acme, &none).await.expect("state"),
            None,
            "an address never seen has no state"
        );
    };
    check(2).await;
    // Again: nothing new is recorded.
    let out = run();
    assert!(
        stderr(&out).contains("0 quarantined, 0 denylisted, 6 unchanged, 3 rejected"),
        "{}",
        stderr(&out)
    );
    check(2).await;
}

/// What the backup must hold: writes acknowledged before it started.
#[derive(Default)]
struct Acknowledged {
    /// Profiles opted out of every channel, with the bounce event id of their address.
    profiles: Vec<(String, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_write_load_holds_everything_acknowledged_before_it_and_is_consistent() {
    const PRELOAD: usize = 300;
    const WRITERS: usize = 4;
    let app = Arc::new(spawn_app().await);
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let backup_started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));

    // One unit of work: a profile, its all-channels opt-out and a bounce of its address.
    async fn unit(app: &TestApp, id: &str) -> String {
        let email = format!("{id}@example.com");
        upsert(app, id, &[&email], &[]).await;
        opt_out_all(app, id).await;
        let event = format!("ev-{id}");
        feedback(
            app,
            &email,
            FeedbackKind::HardBounce,
            DeliveryErrorReason::UserUnknown,
            &event,
            None,
        )
        .await;
        event
    }

    let mut preload = Vec::new();
    for w in 0..16 {
        let app = Arc::clone(&app);
        let acked = Arc::clone(&acked);
        preload.push(tokio::spawn(async move {
            for i in (w..PRELOAD).step_by(16) {
                let id = format!("pre-{i}");
                let event = unit(&app, &id).await;
                acked.lock().expect("lock").profiles.push((id, event));
            }
        }));
    }
    for task in preload {
        task.await.expect("preload");
    }

    let mut writers = Vec::new();
    let (running, mut all_running) = tokio::sync::mpsc::channel::<()>(WRITERS);
    for w in 0..WRITERS {
        let (app, acked, started, stop, running) = (
            Arc::clone(&app),
            Arc::clone(&acked),
            Arc::clone(&backup_started),
            Arc::clone(&stop),
            running.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            loop {
                if i == 1 {
                    // This writer is under way: the backup may start.
                    running.send(()).await.expect("the test waits");
                }
                if i > 0 && stop.load(Ordering::SeqCst) {
                    break;
                }
                let id = format!("live-{w}-{i}");
                let event = unit(&app, &id).await;
                // Acknowledged before the backup started: it must be in it.
                if !started.load(Ordering::SeqCst) {
                    acked.lock().expect("lock").profiles.push((id, event));
                }
                i += 1;
            }
            i
        }));
    }

    for _ in 0..WRITERS {
        all_running.recv().await.expect("a writer started");
    }
    let work = tempfile::tempdir().expect("tempdir");
    let backup_file = work.path().join("backup.jsonl");
    let server = format!("http://{}", app.addr);
    backup_started.store(true, Ordering::SeqCst);
    let must_have = std::mem::take(&mut acked.lock().expect("lock").profiles);
    let out = {
        let (server, file) = (server.clone(), backup_file.clone());
        tokio::task::spawn_blocking(move || {
            consentd(&["backup", "--server", &server, "--output", path_str(&file)])
        })
        .await
        .expect("backup task")
    };
    stop.store(true, Ordering::SeqCst);
    let mut live_units = 0;
    for task in writers {
        live_units += task.await.expect("writer");
    }
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    assert!(live_units >= WRITERS, "every writer wrote during the test");
    assert!(!PathBuf::from(format!("{}.partial", backup_file.display())).exists());

    let lines: Vec<String> = std::fs::read_to_string(&backup_file)
        .expect("read the backup")
        .lines()
        .map(str::to_owned)
        .collect();
    let backup = records(&lines);
    assert_internally_consistent(&backup);

    // Restore into a fresh directory and check everything acknowledged before the backup.
    let restored = work.path().join("restored");
    let out = import(&restored, &backup_file);
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    {
        let store = SledStore::open(&restored).expect("open");
        let acme = Tenant::parse(TENANT).expect("tenant");
        assert!(must_have.len() >= PRELOAD);
        for (id, _event) in &must_have {
            let profile = store
                .profile(&acme, &ProfileId::parse(id).expect("id"))
                .await
                .expect("read")
                .unwrap_or_else(|| {
                    panic!("{id} was acknowledged before the backup but is missing")
                });
            assert!(profile.consent.opted_out_all(), "{id}");
            assert_eq!(profile.history_seq, 1, "{id}");
            let email = Address::email(&format!("{id}@example.com")).expect("address");
            let state = store
                .address_state(&acme, &email)
                .await
                .expect("state")
                .unwrap_or_default();
            assert_eq!(state.status, DomainStatus::Quarantined, "{id}");
            let (users, _) = store.address_users(&acme, &email, 10).await.expect("users");
            assert_eq!(users.len(), 1, "{id}");
        }
    }

    // Everything in the backup is in the live server's final state, unchanged
    // where it cannot change (history and logs are append-only).
    let Ok(app) = Arc::try_unwrap(app) else {
        panic!("every writer has finished");
    };
    let (data_dir, _clock) = app.stop().await;
    let live = records(&export(data_dir.path(), &work.path().join("live.jsonl")));
    let live_lines: BTreeSet<String> = live
        .iter()
        .filter(|r| r["type"] != "profile" && r["type"] != "address_state")
        .map(Value::to_string)
        .collect();
    for r in backup
        .iter()
        .filter(|r| r["type"] != "profile" && r["type"] != "address_state")
    {
        assert!(
            live_lines.contains(&r.to_string()),
            "not in the live state: {r}"
        );
    }
}

/// Every history entry and log entry matches its owner's counters exactly,
/// and every recorded event id has its log entry: nothing half-written.
fn assert_internally_consistent(records: &[Value]) {
    let key = |r: &Value, field: &str| {
        format!(
            "{}/{}",
            r["tenant"].as_str().expect("tenant"),
            r[field].as_str().expect(field)
        )
    };
    let mut history: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut logs: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut event_ids: BTreeSet<(String, String)> = BTreeSet::new();
    for r in records.iter() {
        match r["type"].as_str() {
            Some("consent_history") => {
                history
                    .entry(key(r, "profile_id"))
                    .or_default()
                    .insert(r["sequence"].as_u64().expect("sequence"));
            }
            Some("address_event") => {
                logs.entry(key(r, "address"))
                    .or_default()
                    .insert(r["sequence"].as_u64().expect("sequence"));
                if let Some(id) = r["event"]["event_id"].as_str() {
                    event_ids.insert((key(r, "address"), id.to_owned()));
                }
            }
            _ => {}
        }
    }
    let mut profiles = 0;
    let mut states = 0;
    for r in records.iter() {
        match r["type"].as_str() {
            Some("profile") => {
                profiles += 1;
                let n = r["history_seq"].as_u64().expect("history_seq");
                let expected: BTreeSet<u64> = (1..=n).collect();
                let found = history.remove(&key(r, "profile_id")).unwrap_or_default();
                assert_eq!(found, expected, "history of {r}");
            }
            Some("address_state") => {
                states += 1;
                let n = r["log_seq"].as_u64().expect("log_seq");
                let expected: BTreeSet<u64> = (1..=n).collect();
                let found = logs.remove(&key(r, "address")).unwrap_or_default();
                assert_eq!(found, expected, "log of {r}");
            }
            Some("feedback_event_id") => {
                let id = r["event_id"].as_str().expect("event_id").to_owned();
                assert!(
                    event_ids.contains(&(key(r, "address"), id)),
                    "event id without its log entry: {r}"
                );
            }
            _ => {}
        }
    }
    assert!(profiles > 0 && states > 0);
    assert!(history.is_empty(), "history without a profile: {history:?}");
    assert!(logs.is_empty(), "log entries without a state: {logs:?}");
}

#[tokio::test]
async fn an_export_of_one_tenant_holds_that_tenant_only() {
    let data = sample_data().await;
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("globex.jsonl");
    let out = consentd(&[
        "export",
        "--data-dir",
        path_str(data.path()),
        "--tenant",
        "globex",
        "--output",
        path_str(&file),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .expect("read")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(parse(&lines[0])["tenant"], "globex");
    let globex = records(&lines);
    assert_eq!(
        count_by_type(&globex),
        BTreeMap::from([("profile".to_owned(), 1)])
    );
    assert!(globex.iter().all(|r| r["tenant"] == "globex"));

    let out = consentd(&[
        "export",
        "--data-dir",
        path_str(data.path()),
        "--tenant",
        "not a tenant",
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("--tenant"), "{}", stderr(&out));
}

#[tokio::test]
async fn the_backup_rpc_streams_one_tenant_in_whole_lines_and_refuses_a_bad_tenant() {
    use consentd::pb::{BackupRequest, admin_service_client::AdminServiceClient};
    let app = spawn_app().await;
    upsert(&app, "alice", &["alice@example.com"], &[]).await;
    opt_out_all(&app, "alice").await;
    app.profiles
        .clone()
        .upsert_profile(UpsertProfileRequest {
            tenant: "globex".to_owned(),
            profile_id: "zed".to_owned(),
            context: ctx(Source::Api),
            ..Default::default()
        })
        .await
        .expect("upsert globex");
    let mut admin = AdminServiceClient::new(app.channel.clone());

    let status = admin
        .backup(BackupRequest {
            tenant: "not a tenant".to_owned(),
        })
        .await
        .expect_err("a bad tenant is refused");
    assert_validation_failed("backup with a bad tenant", &status, &["tenant"]);

    let mut stream = admin
        .backup(BackupRequest {
            tenant: TENANT.to_owned(),
        })
        .await
        .expect("Backup")
        .into_inner();
    let mut data = Vec::new();
    let mut records_sum = 0;
    let mut totals = BTreeSet::new();
    while let Some(chunk) = stream.message().await.expect("a chunk") {
        assert_eq!(
            chunk.data.last(),
            Some(&b'\n'),
            "a chunk ends with a whole line"
        );
        data.extend_from_slice(&chunk.data);
        records_sum += chunk.records;
        totals.insert(chunk.records_total);
    }
    let lines: Vec<String> = String::from_utf8(data)
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect();
    let backup = records(&lines);
    assert_eq!(parse(&lines[0])["tenant"], TENANT);
    assert!(backup.iter().all(|r| r["tenant"] == TENANT));
    assert_eq!(
        count_by_type(&backup),
        BTreeMap::from([("consent_history".to_owned(), 1), ("profile".to_owned(), 1)])
    );
    assert_eq!(records_sum, 2);
    assert_eq!(totals, BTreeSet::from([2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_of_a_directory_a_server_holds_is_refused_and_points_to_backup() {
    let app = spawn_app().await;
    let dir = app.data_dir.path().to_owned();
    let out =
        tokio::task::spawn_blocking(move || consentd(&["export", "--data-dir", path_str(&dir)]))
            .await
            .expect("export task");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert!(err.contains("consentd backup --server"), "{err}");
    assert!(out.stdout.is_empty(), "nothing is exported");
}

/// Profiles with four addresses each: about 1 MB of backup per 2,000.
async fn seed_profiles(app: &TestApp, tenant: &str, count: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let mut profiles = app.profiles.clone();
        let tenant = tenant.to_owned();
        tasks.spawn(async move {
            for i in (worker..count).step_by(8) {
                let id = format!("p{i:05}");
                profiles
                    .upsert_profile(UpsertProfileRequest {
                        tenant: tenant.clone(),
                        profile_id: id.clone(),
                        emails: (0..4).map(|n| format!("{id}.{n}@example.com")).collect(),
                        context: ctx(Source::Api),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|s| panic!("UpsertProfile {id}: {s:?}"));
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("seeding task");
    }
}

/// A channel whose HTTP/2 windows are small: the server can send little
/// ahead of what the client reads, so a client that stops reading soon
/// holds the backup up.
async fn narrow_channel(app: &TestApp) -> GrpcChannel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("endpoint")
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .expect("connect")
}

/// The records of a backup (header line left out), as a set of lines.
fn backup_records(data: &[u8]) -> BTreeSet<String> {
    String::from_utf8(data.to_vec())
        .expect("UTF-8")
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_one_moment_while_writes_go_on_and_a_client_that_stops_reading_is_cut_off() {
    use consentd::pb::{BackupRequest, admin_service_client::AdminServiceClient};
    let app = spawn_app_with(consentd::server::Settings {
        stream_idle_timeout: std::time::Duration::from_secs(2),
        ..consentd::server::Settings::default()
    })
    .await;
    seed_profiles(&app, TENANT, 4000).await;
    seed_profiles(&app, "globex", 10).await;
    let mut admin = AdminServiceClient::new(narrow_channel(&app).await);
    let backup = || BackupRequest {
        tenant: String::new(),
    };

    // Backup 1, read at once: the state before the writes below.
    let mut stream = admin.backup(backup()).await.expect("Backup").into_inner();
    let mut before = Vec::new();
    while let Some(chunk) = stream.message().await.expect("a chunk") {
        before.extend_from_slice(&chunk.data);
    }
    let before = backup_records(&before);

    // Backup 2: its first chunk is read (the cut is taken), then writes of
    // its tenants, ahead of and behind its reading, are acknowledged while it
    // waits for its client.
    let mut stream = admin.backup(backup()).await.expect("Backup").into_inner();
    let first = stream
        .message()
        .await
        .expect("a chunk")
        .expect("the first chunk");
    let total = first.records_total;
    assert_eq!(usize::try_from(total).expect("fits"), before.len());
    let mut during = first.data;
    let writes = async {
        for (tenant, id) in [
            (TENANT, "p00000"),
            (TENANT, "p03999"),
            (TENANT, "zz-late"),
            ("globex", "p00001"),
            ("initech", "new"),
        ] {
            app.profiles
                .clone()
                .upsert_profile(UpsertProfileRequest {
                    tenant: tenant.to_owned(),
                    profile_id: id.to_owned(),
                    emails: vec!["changed@example.com".to_owned()],
                    context: ctx(Source::Api),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|s| panic!("UpsertProfile {id}: {s:?}"));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), writes)
        .await
        .expect("writes are not held up by a backup whose client is slow");
    while let Some(chunk) = stream.message().await.expect("a chunk") {
        during.extend_from_slice(&chunk.data);
    }
    let during = backup_records(&during);
    let missing: Vec<&String> = before.difference(&during).take(3).collect();
    let extra: Vec<&String> = during.difference(&before).take(3).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "a backup taken while writes go on is the state at its start; \
         missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(during.len(), before.len());

    // Backup 3, after the writes: they are in it.
    let mut stream = admin.backup(backup()).await.expect("Backup").into_inner();
    let mut after = Vec::new();
    while let Some(chunk) = stream.message().await.expect("a chunk") {
        after.extend_from_slice(&chunk.data);
    }
    let after = String::from_utf8(after).expect("UTF-8");
    assert!(after.contains("zz-late") && after.contains("initech"));

    // Backup 4: the client reads one chunk, then nothing for longer than
    // --stream-idle-timeout: the server gives up, and when the client reads
    // again it gets what was already sent, then DEADLINE_EXCEEDED.
    let mut stream = admin.backup(backup()).await.expect("Backup").into_inner();
    let first = stream
        .message()
        .await
        .expect("a chunk")
        .expect("the first chunk");
    let mut records = first.records;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let ended = loop {
        match stream.message().await {
            Ok(Some(chunk)) => records += chunk.records,
            Ok(None) => panic!("the backup ended as if complete ({records} of {total} records)"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::DeadlineExceeded, "{ended:?}");
    assert!(
        ended.message().contains("--stream-idle-timeout"),
        "{}",
        ended.message()
    );
    assert!(records < first.records_total, "{records} records received");
}

/// Moving from the embedded store to PostgreSQL: `export`, then `import
/// --database-url`; an `export --database-url` gives back the same records,
/// and a server on the database answers as the one on the directory did.
/// Skipped without PostgreSQL (see `common/pg.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_from_sled_to_postgres_is_export_then_import() {
    let Some(url) = crate::common::pg::database_url() else {
        return;
    };
    let schema = format!("it_move_{}", uuid::Uuid::new_v4().simple());
    crate::common::pg::create_schema(&url, &schema).await;
    let separator = if url.contains('?') { '&' } else { '?' };
    let schema_url = format!("{url}{separator}options=-c%20search_path%3D{schema}");
    let Sample {
        dir: data, clock, ..
    } = sample().await;
    let work = tempfile::tempdir().expect("tempdir");
    let from_sled = export(data.path(), &work.path().join("sled.jsonl"));
    let imported = consentd(&[
        "import",
        "--database-url",
        &schema_url,
        path_str(&work.path().join("sled.jsonl")),
    ]);
    assert!(imported.status.success(), "import: {}", stderr(&imported));
    let pg_file = work.path().join("postgres.jsonl");
    let exported = consentd(&[
        "export",
        "--database-url",
        &schema_url,
        "--output",
        path_str(&pg_file),
    ]);
    assert!(exported.status.success(), "export: {}", stderr(&exported));
    let from_postgres: Vec<String> = std::fs::read_to_string(&pg_file)
        .expect("read the export")
        .lines()
        .map(str::to_owned)
        .collect();
    // The same records (the header carries the export's time; the stores
    // list their records in different orders).
    let sorted = |lines: &[String]| {
        let mut records: Vec<String> = records(lines).iter().map(Value::to_string).collect();
        records.sort();
        records
    };
    assert_eq!(sorted(&from_sled), sorted(&from_postgres));
    // And the same answers.
    let on_sled = TestApp::start_on(data, clock.clone()).await;
    let expected = answers(&on_sled).await;
    drop(on_sled);
    let store = crate::common::pg::store(&url, &schema).await;
    let on_postgres = spawn_app_on_store(std::sync::Arc::new(store), Default::default()).await;
    on_postgres
        .clock
        .set(consentd::clock::Clock::now_ms(&clock));
    assert_eq!(answers(&on_postgres).await, expected);
}
