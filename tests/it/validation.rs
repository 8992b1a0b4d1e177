//! Bad requests, NOT_FOUND, health and reflection, against a real in-process server.

use std::{future::Future, pin::Pin};

use crate::common::*;
use consentd::pb::{
    AddressStatus, AddressType, BatchCheckEligibilityRequest, ChangeContext, Channel,
    CheckEligibilityRequest, FeedbackKind, GetAddressStatusRequest, GetConsentRequest,
    GetProfileRequest, ListAddressHistoryRequest, ListConsentHistoryRequest,
    ListQuarantinedAddressesRequest, OptInRequest, OptOutRequest, QuarantineAddressRequest,
    RecordDeliveryFeedbackRequest, ReleaseAddressRequest, Source, StreamEligibilityRequest,
    UpsertProfileRequest,
};
use tonic::{Code, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt as _;

/// A call whose result does not matter, only its error.
type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// One table row: a name, the field paths any of which the violation may
/// name, and the call.
struct Case {
    name: &'static str,
    fields: &'static [&'static str],
    call: Call,
}

fn case<F, T>(name: &'static str, fields: &'static [&'static str], call: F) -> Case
where
    F: Future<Output = Result<tonic::Response<T>, Status>> + Send + 'static,
{
    Case {
        name,
        fields,
        call: Box::pin(async move { call.await.map(|_| ()) }),
    }
}

/// An existing profile used by the cases that need one.
const EXISTING: &str = "existing";

fn upsert_req(id: &str) -> UpsertProfileRequest {
    UpsertProfileRequest {
        tenant: TENANT.to_owned(),
        profile_id: id.to_owned(),
        emails: vec!["ok@example.com".to_owned()],
        phones: vec!["+33612345678".to_owned()],
        context: ctx(Source::Api),
        ..Default::default()
    }
}

fn opt_out_req() -> OptOutRequest {
    OptOutRequest {
        tenant: TENANT.to_owned(),
        profile_id: EXISTING.to_owned(),
        channel: Channel::Email as i32,
        all_channels: false,
        context: ctx(Source::Api),
    }
}

fn feedback_req(app: &TestApp) -> RecordDeliveryFeedbackRequest {
    RecordDeliveryFeedbackRequest {
        tenant: TENANT.to_owned(),
        address: "bounce@example.com".to_owned(),
        address_type: AddressType::Unspecified as i32,
        kind: FeedbackKind::SoftBounce as i32,
        error_reason: 0,
        event_id: "event-1".to_owned(),
        occurred_at: Some(ts(app.now_ms())),
        context: ctx(Source::DeliveryFeedback),
    }
}

fn history_req() -> ListConsentHistoryRequest {
    ListConsentHistoryRequest {
        tenant: TENANT.to_owned(),
        profile_id: EXISTING.to_owned(),
        page_size: 10,
        page_token: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_argument_naming_the_field() {
    let app = spawn_app().await;
    upsert(&app, EXISTING, &["existing@example.com"], &[]).await;
    let profiles = &app.profiles;
    let consent = &app.consent;
    let quarantine = &app.quarantine;
    let eligibility = &app.eligibility;
    let long_id = "x".repeat(257);

    let cases = vec![
        // --- ProfileService ---
        case("UpsertProfile without tenant", &["tenant"], {
            let mut c = profiles.clone();
            let req = UpsertProfileRequest {
                tenant: String::new(),
                ..upsert_req("p1")
            };
            async move { c.upsert_profile(req).await }
        }),
        case("UpsertProfile with a bad tenant", &["tenant"], {
            let mut c = profiles.clone();
            let req = UpsertProfileRequest {
                tenant: "not a tenant!".to_owned(),
                ..upsert_req("p1")
            };
            async move { c.upsert_profile(req).await }
        }),
        case("UpsertProfile with an empty profile_id", &["profile_id"], {
            let mut c = profiles.clone();
            let req = upsert_req("");
            async move { c.upsert_profile(req).await }
        }),
        case(
            "UpsertProfile with a 257-byte profile_id",
            &["profile_id"],
            {
                let mut c = profiles.clone();
                let req = upsert_req(&long_id);
                async move { c.upsert_profile(req).await }
            },
        ),
        case("UpsertProfile with a bad second email", &["emails[1]"], {
            let mut c = profiles.clone();
            let req = UpsertProfileRequest {
                emails: vec!["good@example.com".to_owned(), "not an email".to_owned()],
                ..upsert_req("p1")
            };
            async move { c.upsert_profile(req).await }
        }),
        case(
            "UpsertProfile with an email without a dotted domain",
            &["emails[0]"],
            {
                let mut c = profiles.clone();
                let req = UpsertProfileRequest {
                    emails: vec!["user@localhost".to_owned()],
                    ..upsert_req("p1")
                };
                async move { c.upsert_profile(req).await }
            },
        ),
        case("UpsertProfile with a bad phone", &["phones[0]"], {
            let mut c = profiles.clone();
            let req = UpsertProfileRequest {
                phones: vec!["0612".to_owned()],
                ..upsert_req("p1")
            };
            async move { c.upsert_profile(req).await }
        }),
        case(
            "UpsertProfile without context",
            &["context", "context.source"],
            {
                let mut c = profiles.clone();
                let req = UpsertProfileRequest {
                    context: None,
                    ..upsert_req("p1")
                };
                async move { c.upsert_profile(req).await }
            },
        ),
        case(
            "UpsertProfile with source unspecified",
            &["context.source"],
            {
                let mut c = profiles.clone();
                let req = UpsertProfileRequest {
                    context: Some(ChangeContext {
                        source: Source::Unspecified as i32,
                        actor: "someone".to_owned(),
                        reason: String::new(),
                        ..Default::default()
                    }),
                    ..upsert_req("p1")
                };
                async move { c.upsert_profile(req).await }
            },
        ),
        case("GetProfile without tenant", &["tenant"], {
            let mut c = profiles.clone();
            let req = GetProfileRequest {
                tenant: String::new(),
                profile_id: EXISTING.to_owned(),
            };
            async move { c.get_profile(req).await }
        }),
        case("GetProfile with a 257-byte profile_id", &["profile_id"], {
            let mut c = profiles.clone();
            let req = GetProfileRequest {
                tenant: TENANT.to_owned(),
                profile_id: long_id.clone(),
            };
            async move { c.get_profile(req).await }
        }),
        // --- ConsentService ---
        case(
            "OptOut with neither channel nor all_channels",
            &["channel", "all_channels"],
            {
                let mut c = consent.clone();
                let req = OptOutRequest {
                    channel: Channel::Unspecified as i32,
                    all_channels: false,
                    ..opt_out_req()
                };
                async move { c.opt_out(req).await }
            },
        ),
        case(
            "OptOut with both channel and all_channels",
            &["channel", "all_channels"],
            {
                let mut c = consent.clone();
                let req = OptOutRequest {
                    all_channels: true,
                    ..opt_out_req()
                };
                async move { c.opt_out(req).await }
            },
        ),
        case("OptOut with an unknown channel (99)", &["channel"], {
            let mut c = consent.clone();
            let req = OptOutRequest {
                channel: 99,
                ..opt_out_req()
            };
            async move { c.opt_out(req).await }
        }),
        case("OptOut without tenant", &["tenant"], {
            let mut c = consent.clone();
            let req = OptOutRequest {
                tenant: String::new(),
                ..opt_out_req()
            };
            async move { c.opt_out(req).await }
        }),
        case("OptOut with an empty profile_id", &["profile_id"], {
            let mut c = consent.clone();
            let req = OptOutRequest {
                profile_id: String::new(),
                ..opt_out_req()
            };
            async move { c.opt_out(req).await }
        }),
        case("OptOut without context", &["context", "context.source"], {
            let mut c = consent.clone();
            let req = OptOutRequest {
                context: None,
                ..opt_out_req()
            };
            async move { c.opt_out(req).await }
        }),
        case("OptOut with source unspecified", &["context.source"], {
            let mut c = consent.clone();
            let req = OptOutRequest {
                context: ctx(Source::Unspecified),
                ..opt_out_req()
            };
            async move { c.opt_out(req).await }
        }),
        case("OptOut with an unknown source (42)", &["context.source"], {
            let mut c = consent.clone();
            let req = OptOutRequest {
                context: Some(ChangeContext {
                    source: 42,
                    actor: String::new(),
                    reason: String::new(),
                    ..Default::default()
                }),
                ..opt_out_req()
            };
            async move { c.opt_out(req).await }
        }),
        case("OptOut with a 257-byte actor", &["context.actor"], {
            let mut c = consent.clone();
            let req = OptOutRequest {
                context: Some(ChangeContext {
                    source: Source::Api as i32,
                    actor: "a".repeat(257),
                    reason: String::new(),
                    ..Default::default()
                }),
                ..opt_out_req()
            };
            async move { c.opt_out(req).await }
        }),
        case(
            "OptIn with neither channel nor all_channels",
            &["channel", "all_channels"],
            {
                let mut c = consent.clone();
                let req = OptInRequest {
                    tenant: TENANT.to_owned(),
                    profile_id: EXISTING.to_owned(),
                    channel: 0,
                    all_channels: false,
                    context: ctx(Source::Api),
                };
                async move { c.opt_in(req).await }
            },
        ),
        case("GetConsent without tenant", &["tenant"], {
            let mut c = consent.clone();
            let req = GetConsentRequest {
                tenant: String::new(),
                profile_id: EXISTING.to_owned(),
            };
            async move { c.get_consent(req).await }
        }),
        case(
            "ListConsentHistory with a negative page_size",
            &["page_size"],
            {
                let mut c = consent.clone();
                let req = ListConsentHistoryRequest {
                    page_size: -1,
                    ..history_req()
                };
                async move { c.list_consent_history(req).await }
            },
        ),
        case(
            "ListConsentHistory with a garbage page_token",
            &["page_token"],
            {
                let mut c = consent.clone();
                let req = ListConsentHistoryRequest {
                    page_token: "garbage!!".to_owned(),
                    ..history_req()
                };
                async move { c.list_consent_history(req).await }
            },
        ),
        // --- QuarantineService ---
        case("RecordDeliveryFeedback without event_id", &["event_id"], {
            let mut c = quarantine.clone();
            let req = RecordDeliveryFeedbackRequest {
                event_id: String::new(),
                ..feedback_req(&app)
            };
            async move { c.record_delivery_feedback(req).await }
        }),
        case("RecordDeliveryFeedback without kind", &["kind"], {
            let mut c = quarantine.clone();
            let req = RecordDeliveryFeedbackRequest {
                kind: FeedbackKind::Unspecified as i32,
                ..feedback_req(&app)
            };
            async move { c.record_delivery_feedback(req).await }
        }),
        case(
            "RecordDeliveryFeedback one hour in the future",
            &["occurred_at"],
            {
                let mut c = quarantine.clone();
                let req = RecordDeliveryFeedbackRequest {
                    occurred_at: Some(ts(app.now_ms() + HOUR_MS)),
                    ..feedback_req(&app)
                };
                async move { c.record_delivery_feedback(req).await }
            },
        ),
        case(
            "RecordDeliveryFeedback to an address of no inferable type",
            &["address", "address_type"],
            {
                let mut c = quarantine.clone();
                let req = RecordDeliveryFeedbackRequest {
                    address: "not-an-address".to_owned(),
                    ..feedback_req(&app)
                };
                async move { c.record_delivery_feedback(req).await }
            },
        ),
        case(
            "RecordDeliveryFeedback to a phone typed as e-mail",
            &["address"],
            {
                let mut c = quarantine.clone();
                let req = RecordDeliveryFeedbackRequest {
                    address: "+33612345678".to_owned(),
                    address_type: AddressType::Email as i32,
                    ..feedback_req(&app)
                };
                async move { c.record_delivery_feedback(req).await }
            },
        ),
        case(
            "RecordDeliveryFeedback with source unspecified",
            &["context.source"],
            {
                let mut c = quarantine.clone();
                let req = RecordDeliveryFeedbackRequest {
                    context: ctx(Source::Unspecified),
                    ..feedback_req(&app)
                };
                async move { c.record_delivery_feedback(req).await }
            },
        ),
        case("QuarantineAddress with status VALID", &["status"], {
            let mut c = quarantine.clone();
            let req = QuarantineAddressRequest {
                tenant: TENANT.to_owned(),
                address: "q@example.com".to_owned(),
                address_type: AddressType::Unspecified as i32,
                status: AddressStatus::Valid as i32,
                context: operator("alice", "test"),
            };
            async move { c.quarantine_address(req).await }
        }),
        case("QuarantineAddress with status WITH_ERRORS", &["status"], {
            let mut c = quarantine.clone();
            let req = QuarantineAddressRequest {
                tenant: TENANT.to_owned(),
                address: "q@example.com".to_owned(),
                address_type: AddressType::Unspecified as i32,
                status: AddressStatus::WithErrors as i32,
                context: operator("alice", "test"),
            };
            async move { c.quarantine_address(req).await }
        }),
        case(
            "ReleaseAddress of an address of no inferable type",
            &["address", "address_type"],
            {
                let mut c = quarantine.clone();
                let req = ReleaseAddressRequest {
                    tenant: TENANT.to_owned(),
                    address: "not-an-address".to_owned(),
                    address_type: AddressType::Unspecified as i32,
                    context: operator("alice", "test"),
                };
                async move { c.release_address(req).await }
            },
        ),
        case(
            "GetAddressStatus of an address of no inferable type",
            &["address", "address_type"],
            {
                let mut c = quarantine.clone();
                let req = GetAddressStatusRequest {
                    tenant: TENANT.to_owned(),
                    address: "not-an-address".to_owned(),
                    address_type: AddressType::Unspecified as i32,
                };
                async move { c.get_address_status(req).await }
            },
        ),
        case("GetAddressStatus without tenant", &["tenant"], {
            let mut c = quarantine.clone();
            let req = GetAddressStatusRequest {
                tenant: String::new(),
                address: "ok@example.com".to_owned(),
                address_type: AddressType::Unspecified as i32,
            };
            async move { c.get_address_status(req).await }
        }),
        case("ListQuarantinedAddresses filtered on VALID", &["status"], {
            let mut c = quarantine.clone();
            let req = ListQuarantinedAddressesRequest {
                tenant: TENANT.to_owned(),
                status: AddressStatus::Valid as i32,
                page_size: 0,
                page_token: String::new(),
            };
            async move { c.list_quarantined_addresses(req).await }
        }),
        case(
            "ListQuarantinedAddresses with a negative page_size",
            &["page_size"],
            {
                let mut c = quarantine.clone();
                let req = ListQuarantinedAddressesRequest {
                    tenant: TENANT.to_owned(),
                    status: 0,
                    page_size: -5,
                    page_token: String::new(),
                };
                async move { c.list_quarantined_addresses(req).await }
            },
        ),
        case(
            "ListAddressHistory with a garbage page_token",
            &["page_token"],
            {
                let mut c = quarantine.clone();
                let req = ListAddressHistoryRequest {
                    tenant: TENANT.to_owned(),
                    address: "ok@example.com".to_owned(),
                    address_type: AddressType::Unspecified as i32,
                    page_size: 0,
                    page_token: "garbage!!".to_owned(),
                };
                async move { c.list_address_history(req).await }
            },
        ),
        // --- EligibilityService ---
        case("CheckEligibility with channel unspecified", &["channel"], {
            let mut c = eligibility.clone();
            let req = CheckEligibilityRequest {
                tenant: TENANT.to_owned(),
                profile_id: EXISTING.to_owned(),
                channel: Channel::Unspecified as i32,
                ..Default::default()
            };
            async move { c.check_eligibility(req).await }
        }),
        case("CheckEligibility without tenant", &["tenant"], {
            let mut c = eligibility.clone();
            let req = CheckEligibilityRequest {
                tenant: String::new(),
                profile_id: EXISTING.to_owned(),
                channel: Channel::Email as i32,
                ..Default::default()
            };
            async move { c.check_eligibility(req).await }
        }),
        case(
            "BatchCheckEligibility with an empty fourth id",
            &["profile_ids[3]"],
            {
                let mut c = eligibility.clone();
                let req = BatchCheckEligibilityRequest {
                    tenant: TENANT.to_owned(),
                    channel: Channel::Email as i32,
                    profile_ids: vec![
                        "a".to_owned(),
                        "b".to_owned(),
                        "c".to_owned(),
                        String::new(),
                    ],
                    ..Default::default()
                };
                async move { c.batch_check_eligibility(req).await }
            },
        ),
        case(
            "BatchCheckEligibility with a 257-byte second id",
            &["profile_ids[1]"],
            {
                let mut c = eligibility.clone();
                let req = BatchCheckEligibilityRequest {
                    tenant: TENANT.to_owned(),
                    channel: Channel::Email as i32,
                    profile_ids: vec!["a".to_owned(), long_id.clone()],
                    ..Default::default()
                };
                async move { c.batch_check_eligibility(req).await }
            },
        ),
        case("BatchCheckEligibility with no ids", &["profile_ids"], {
            let mut c = eligibility.clone();
            let req = BatchCheckEligibilityRequest {
                tenant: TENANT.to_owned(),
                channel: Channel::Email as i32,
                profile_ids: Vec::new(),
                ..Default::default()
            };
            async move { c.batch_check_eligibility(req).await }
        }),
        case(
            "BatchCheckEligibility with channel unspecified",
            &["channel"],
            {
                let mut c = eligibility.clone();
                let req = BatchCheckEligibilityRequest {
                    tenant: TENANT.to_owned(),
                    channel: Channel::Unspecified as i32,
                    profile_ids: vec!["a".to_owned()],
                    ..Default::default()
                };
                async move { c.batch_check_eligibility(req).await }
            },
        ),
    ];

    let mut failures = Vec::new();
    for Case { name, fields, call } in cases {
        // Collect every mismatch before failing, so one run shows them all.
        let problem = match call.await {
            Ok(()) => Err(format!("{name}: expected INVALID_ARGUMENT, got OK")),
            Err(status) => check_validation_failed(name, &status, fields),
        };
        if let Err(problem) = problem {
            failures.push(problem);
        }
    }
    assert!(
        failures.is_empty(),
        "{} validation case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_field_is_named() {
    let app = spawn_app().await;
    let status = app
        .profiles
        .clone()
        .upsert_profile(UpsertProfileRequest {
            emails: vec![
                "good@example.com".to_owned(),
                "bad".to_owned(),
                "also bad@".to_owned(),
            ],
            phones: vec!["12".to_owned()],
            ..upsert_req("p-many")
        })
        .await
        .expect_err("three bad addresses");
    assert_validation_failed("several bad fields", &status, &["emails[1]"]);
    let mut fields = violated_fields(&status);
    fields.sort();
    for expected in ["emails[1]", "emails[2]", "phones[0]"] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} is named: {fields:?}"
        );
    }
    assert!(
        !fields.iter().any(|f| f == "emails[0]"),
        "the good address is not named: {fields:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upsert_writes_nothing() {
    let app = spawn_app().await;
    let status = app
        .profiles
        .clone()
        .upsert_profile(UpsertProfileRequest {
            emails: vec!["good@example.com".to_owned(), "not an email".to_owned()],
            ..upsert_req("p-never")
        })
        .await
        .expect_err("a bad email");
    assert_validation_failed("bad email", &status, &["emails[1]"]);
    let status = get_profile(&app, "p-never")
        .await
        .expect_err("the profile was not created");
    assert_profile_not_found("GetProfile after a failed create", &status);
    assert!(
        address_status(&app, "good@example.com")
            .await
            .profile_ids
            .is_empty(),
        "the good address was not attached to anything"
    );

    // A failed update of an existing profile leaves it as it was.
    upsert(&app, "p-kept", &["kept@example.com"], &[]).await;
    let status = app
        .profiles
        .clone()
        .upsert_profile(UpsertProfileRequest {
            emails: vec!["new@example.com".to_owned()],
            phones: vec!["nope".to_owned()],
            ..upsert_req("p-kept")
        })
        .await
        .expect_err("a bad phone");
    assert_validation_failed("bad phone", &status, &["phones[0]"]);
    let profile = get_profile(&app, "p-kept").await.expect("GetProfile");
    assert_eq!(profile.emails, vec!["kept@example.com".to_owned()]);
    assert!(profile.phones.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_profiles_are_not_found() {
    let app = spawn_app().await;
    let status = app
        .consent
        .clone()
        .opt_out(OptOutRequest {
            profile_id: "nobody".to_owned(),
            all_channels: true,
            channel: 0,
            ..opt_out_req()
        })
        .await
        .expect_err("OptOut of an unknown profile");
    assert_profile_not_found("OptOut", &status);

    let status = app
        .consent
        .clone()
        .opt_in(OptInRequest {
            tenant: TENANT.to_owned(),
            profile_id: "nobody".to_owned(),
            channel: Channel::Sms as i32,
            all_channels: false,
            context: ctx(Source::Api),
        })
        .await
        .expect_err("OptIn of an unknown profile");
    assert_profile_not_found("OptIn", &status);

    let status = app
        .consent
        .clone()
        .get_consent(GetConsentRequest {
            tenant: TENANT.to_owned(),
            profile_id: "nobody".to_owned(),
        })
        .await
        .expect_err("GetConsent of an unknown profile");
    assert_profile_not_found("GetConsent", &status);

    let status = app
        .consent
        .clone()
        .list_consent_history(ListConsentHistoryRequest {
            profile_id: "nobody".to_owned(),
            ..history_req()
        })
        .await
        .expect_err("ListConsentHistory of an unknown profile");
    assert_profile_not_found("ListConsentHistory", &status);

    let status = get_profile(&app, "nobody")
        .await
        .expect_err("GetProfile of an unknown profile");
    assert_profile_not_found("GetProfile", &status);

    // Profiles are per tenant: one in another tenant is not found either.
    upsert(&app, "tenant-bound", &["tb@example.com"], &[]).await;
    let status = app
        .profiles
        .clone()
        .get_profile(GetProfileRequest {
            tenant: "other-tenant".to_owned(),
            profile_id: "tenant-bound".to_owned(),
        })
        .await
        .expect_err("the profile belongs to another tenant");
    assert_profile_not_found("GetProfile in another tenant", &status);

    // For eligibility an unknown profile is a decision, not an error.
    let decision = check(&app, "nobody", Channel::Email).await;
    assert!(!decision.eligible);
    assert_eq!(
        reasons(&decision),
        vec![consentd::pb::ExclusionReason::ProfileNotFound]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_token_is_only_valid_for_the_query_that_produced_it() {
    let app = spawn_app().await;
    for id in ["p-one", "p-two"] {
        upsert(&app, id, &[], &["+33612345678"]).await;
        opt_out(&app, id, Channel::Sms).await;
        opt_out(&app, id, Channel::Voice).await;
    }
    let first = consent_history(&app, "p-one", 1, "").await;
    assert_eq!(first.entries.len(), 1);
    assert!(!first.next_page_token.is_empty(), "{first:?}");

    let status = app
        .consent
        .clone()
        .list_consent_history(ListConsentHistoryRequest {
            tenant: TENANT.to_owned(),
            profile_id: "p-two".to_owned(),
            page_size: 1,
            page_token: first.next_page_token.clone(),
        })
        .await
        .expect_err("p-one's token used for p-two");
    assert_validation_failed("foreign page token", &status, &["page_token"]);

    // The token still works for the query that produced it.
    let second = consent_history(&app, "p-one", 1, &first.next_page_token).await;
    assert_eq!(
        second
            .entries
            .iter()
            .map(|e| e.sequence)
            .collect::<Vec<_>>(),
        vec![1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_up_to_five_minutes_ahead_is_accepted() {
    let app = spawn_app().await;
    let response = feedback(
        &app,
        "ahead@example.com",
        FeedbackKind::SoftBounce,
        consentd::pb::DeliveryErrorReason::Unreachable,
        "ahead-1",
        Some(app.now_ms() + 4 * MINUTE_MS),
    )
    .await;
    assert!(response.recorded, "{response:?}");

    let status = app
        .quarantine
        .clone()
        .record_delivery_feedback(RecordDeliveryFeedbackRequest {
            occurred_at: Some(ts(app.now_ms() + 6 * MINUTE_MS)),
            event_id: "ahead-2".to_owned(),
            ..feedback_req(&app)
        })
        .await
        .expect_err("six minutes ahead");
    assert_validation_failed("six minutes ahead", &status, &["occurred_at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_chunk_may_not_change_the_channel() {
    let app = spawn_app().await;
    upsert(&app, "p-stream", &["s@example.com"], &[]).await;
    let requests = vec![
        StreamEligibilityRequest {
            tenant: TENANT.to_owned(),
            channel: Channel::Email as i32,
            profile_ids: vec!["p-stream".to_owned()],
            ..Default::default()
        },
        StreamEligibilityRequest {
            tenant: TENANT.to_owned(),
            channel: Channel::Sms as i32,
            profile_ids: vec!["p-stream".to_owned()],
            ..Default::default()
        },
    ];
    let mut responses = app
        .eligibility
        .clone()
        .stream_eligibility(tokio_stream::iter(requests))
        .await
        .expect("the stream starts")
        .into_inner();
    let first = responses
        .message()
        .await
        .expect("the first chunk is answered")
        .expect("a first response");
    assert_eq!(first.decisions.len(), 1);
    assert!(first.decisions[0].eligible, "{first:?}");
    let status = responses
        .message()
        .await
        .expect_err("the second chunk changes the channel");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_reports_serving() {
    let app = spawn_app().await;
    let response = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("Health/Check")
        .into_inner();
    assert_eq!(response.status(), ServingStatus::Serving);
}

/// A test that lists services through one reflection version (v1 and v1alpha
/// have the same shape but separate generated types).
macro_rules! reflection_lists_the_consent_services {
    ($test:ident, $version:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            use tonic_reflection::pb::$version::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };
            let app = spawn_app().await;
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut responses = ServerReflectionClient::new(app.channel.clone())
                .server_reflection_info(tokio_stream::iter(vec![request]))
                .await
                .expect(concat!("ServerReflectionInfo ", stringify!($version)))
                .into_inner();
            let response = responses
                .message()
                .await
                .expect("a reflection response")
                .expect("a first message");
            let Some(MessageResponse::ListServicesResponse(list)) = response.message_response
            else {
                panic!("expected a list_services response, got {response:?}");
            };
            let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            for service in [
                "consent.v1.EligibilityService",
                "consent.v1.ProfileService",
                "consent.v1.ConsentService",
                "consent.v1.QuarantineService",
                "grpc.health.v1.Health",
            ] {
                assert!(names.iter().any(|n| n == service), "{service} in {names:?}");
            }
        }
    };
}

reflection_lists_the_consent_services!(reflection_v1_lists_the_consent_services, v1);
// grpcurl 1.8 speaks only v1alpha.
reflection_lists_the_consent_services!(reflection_v1alpha_lists_the_consent_services, v1alpha);

/// Each service has a decode limit: a request over it is refused before any
/// handler runs (tonic answers OUT_OF_RANGE), and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_decode_limit_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let mut request = upsert_req("too-big");
    // Over the 1 MiB limit of ProfileService (the postal address alone is far over its own limit).
    request.postal_address = "x".repeat(consentd::api::DECODE_LIMIT_DEFAULT_BYTES + 1);
    let status = app
        .profiles
        .clone()
        .upsert_profile(request)
        .await
        .expect_err("a request over the decode limit must fail");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let missing = app
        .profiles
        .clone()
        .get_profile(GetProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: "too-big".to_owned(),
        })
        .await
        .expect_err("nothing was written");
    assert_profile_not_found("oversized upsert", &missing);

    // The eligibility service takes more (10,000 ids of 256 bytes), but not without bound.
    let ids = vec!["i".repeat(256); 40_000];
    let status = app
        .eligibility
        .clone()
        .batch_check_eligibility(BatchCheckEligibilityRequest {
            tenant: TENANT.to_owned(),
            channel: Channel::Email.into(),
            profile_ids: ids,
            ..Default::default()
        })
        .await
        .expect_err("a 10 MB request is over the eligibility decode limit");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_out_of_range_are_invalid_argument_naming_the_field() {
    let app = spawn_app().await;
    upsert(&app, EXISTING, &["existing@example.com"], &[]).await;
    // 9223372036854775 s is 9223372036854775000 ms: the nanos push it past i64::MAX.
    let overflowing = prost_types::Timestamp {
        seconds: 9_223_372_036_854_775,
        nanos: 999_999_999,
    };
    let year_10000 = prost_types::Timestamp {
        seconds: 253_402_300_800,
        nanos: 0,
    };
    for at in [overflowing, year_10000] {
        let status = app
            .quarantine
            .clone()
            .record_delivery_feedback(RecordDeliveryFeedbackRequest {
                occurred_at: Some(at),
                ..feedback_req(&app)
            })
            .await
            .expect_err("occurred_at out of range");
        assert_validation_failed("occurred_at out of range", &status, &["occurred_at"]);

        let mut context = ctx(Source::Api).expect("a context");
        context.collected_at = Some(at);
        let status = app
            .consent
            .clone()
            .opt_in(OptInRequest {
                tenant: TENANT.to_owned(),
                profile_id: EXISTING.to_owned(),
                channel: Channel::Email as i32,
                all_channels: false,
                context: Some(context),
            })
            .await
            .expect_err("collected_at out of range");
        assert_validation_failed(
            "collected_at out of range",
            &status,
            &["context.collected_at"],
        );
    }
}

/// Sends and receives message bytes as they are, to send what no generated client would.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let len = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, len).to_vec()))
    }
}

/// Calls `path` with `body` as the request message's bytes.
async fn raw_call(app: &TestApp, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.expect("the channel is ready");
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_does_not_decode_is_invalid_argument_naming_the_field() {
    let app = spawn_app().await;
    // UpsertProfileRequest { tenant: "t", context (7) { actor (2): "\xff" } }.
    let bad_actor = vec![0x0a, 0x01, b't', 0x3a, 0x03, 0x12, 0x01, 0xff];
    let status = raw_call(&app, "/consent.v1.ProfileService/UpsertProfile", bad_actor)
        .await
        .expect_err("not UTF-8");
    assert_validation_failed("actor not UTF-8", &status, &["context.actor"]);

    // GetProfileRequest { profile_id (2): "\xc3" } (a UTF-8 sequence cut short).
    let bad_id = vec![0x12, 0x01, 0xc3];
    let status = raw_call(&app, "/consent.v1.ProfileService/GetProfile", bad_id)
        .await
        .expect_err("not UTF-8");
    assert_validation_failed("profile_id not UTF-8", &status, &["profile_id"]);

    // Not protobuf at all (a key of wire type 7), to a service of each kind.
    for path in [
        "/consent.v1.QuarantineService/GetAddressStatus",
        "/consent.v1.EligibilityService/CheckEligibility",
        "/consent.v1.EligibilityService/BatchCheckEligibility",
    ] {
        let status = raw_call(&app, path, vec![0x0f])
            .await
            .expect_err("not protobuf");
        assert_validation_failed(path, &status, &["request"]);
    }

    // The hand-written decoder of BatchCheckEligibility names the id.
    let bad_ids = vec![0x0a, 0x01, b't', 0x1a, 0x01, b'a', 0x1a, 0x01, 0xff];
    let status = raw_call(
        &app,
        "/consent.v1.EligibilityService/BatchCheckEligibility",
        bad_ids,
    )
    .await
    .expect_err("not UTF-8");
    assert_validation_failed("profile_ids[1] not UTF-8", &status, &["profile_ids[1]"]);
}

/// Every enum value name of the consent.v1 protos (`CHANNEL_EMAIL`, …).
fn wire_enum_value_names() -> std::collections::HashSet<String> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(consentd::pb::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let mut names = std::collections::HashSet::new();
    let mut enums: Vec<&prost_types::EnumDescriptorProto> = Vec::new();
    let mut messages: Vec<&prost_types::DescriptorProto> = Vec::new();
    for file in &set.file {
        enums.extend(&file.enum_type);
        messages.extend(&file.message_type);
    }
    while let Some(message) = messages.pop() {
        enums.extend(&message.enum_type);
        messages.extend(&message.nested_type);
    }
    for e in enums {
        names.extend(e.value.iter().map(|v| v.name().to_owned()));
    }
    names
}

/// The words of `text` written like enum values: capitals, digits and `_`,
/// at least four characters.
fn enum_like_words(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.len() >= 4 && w.chars().any(|c| c.is_ascii_uppercase()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_name_enum_values_as_the_wire_accepts_them() {
    let app = spawn_app().await;
    upsert(&app, EXISTING, &["existing@example.com"], &[]).await;
    let accepted = wire_enum_value_names();
    let landing_page = Some(ChangeContext {
        source: Source::LandingPage as i32,
        ..Default::default()
    });
    let cases = vec![
        case("OptOut without channel", &["channel"], {
            let mut c = app.consent.clone();
            let req = OptOutRequest {
                channel: Channel::Unspecified as i32,
                ..opt_out_req()
            };
            async move { c.opt_out(req).await }
        }),
        case("OptOut with channel 99", &["channel"], {
            let mut c = app.consent.clone();
            let req = OptOutRequest {
                channel: 99,
                ..opt_out_req()
            };
            async move { c.opt_out(req).await }
        }),
        case("CheckEligibility without channel", &["channel"], {
            let mut c = app.eligibility.clone();
            let req = CheckEligibilityRequest {
                tenant: TENANT.to_owned(),
                profile_id: EXISTING.to_owned(),
                ..Default::default()
            };
            async move { c.check_eligibility(req).await }
        }),
        case("OptOut without source", &["context.source"], {
            let mut c = app.consent.clone();
            let req = OptOutRequest {
                context: Some(ChangeContext::default()),
                ..opt_out_req()
            };
            async move { c.opt_out(req).await }
        }),
        case("RecordDeliveryFeedback without kind", &["kind"], {
            let mut c = app.quarantine.clone();
            let req = RecordDeliveryFeedbackRequest {
                kind: FeedbackKind::Unspecified as i32,
                ..feedback_req(&app)
            };
            async move { c.record_delivery_feedback(req).await }
        }),
        case("GetAddressStatus with address_type 9", &["address_type"], {
            let mut c = app.quarantine.clone();
            let req = GetAddressStatusRequest {
                tenant: TENANT.to_owned(),
                address: "a@example.com".to_owned(),
                address_type: 9,
            };
            async move { c.get_address_status(req).await }
        }),
        case(
            "OptIn from a landing page without proof",
            &["context.ip_address", "context.notice_version"],
            {
                let mut c = app.consent.clone();
                let req = OptInRequest {
                    tenant: TENANT.to_owned(),
                    profile_id: EXISTING.to_owned(),
                    channel: Channel::Email as i32,
                    all_channels: false,
                    context: landing_page,
                };
                async move { c.opt_in(req).await }
            },
        ),
    ];
    let mut failures = Vec::new();
    for Case { name, fields, call } in cases {
        let status = call.await.expect_err(name);
        if let Err(problem) = check_validation_failed(name, &status, fields) {
            failures.push(problem);
            continue;
        }
        let violations = status
            .get_details_bad_request()
            .expect("a BadRequest")
            .field_violations;
        let mut named = 0;
        for text in violations
            .iter()
            .map(|v| v.description.as_str())
            .chain([status.message()])
        {
            for word in enum_like_words(text) {
                named += 1;
                if !accepted.contains(word) {
                    failures.push(format!(
                        "{name}: {word:?} is no enum value name in {text:?}"
                    ));
                }
            }
        }
        if named == 0 {
            failures.push(format!("{name}: names no enum value: {status:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_landing_page_opt_in_without_proof_names_every_missing_field_at_once() {
    let app = spawn_app().await;
    upsert(&app, EXISTING, &["existing@example.com"], &[]).await;
    let status = app
        .consent
        .clone()
        .opt_in(OptInRequest {
            tenant: TENANT.to_owned(),
            profile_id: EXISTING.to_owned(),
            channel: Channel::Email as i32,
            all_channels: false,
            context: Some(ChangeContext {
                source: Source::LandingPage as i32,
                ..Default::default()
            }),
        })
        .await
        .expect_err("no proof");
    assert_validation_failed("no proof", &status, &["context.ip_address"]);
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(fields, ["context.ip_address", "context.notice_version"]);
}
