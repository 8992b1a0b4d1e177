//! Scenario 7: acknowledged writes survive a crash; one data directory, one server.
//!
//! Most tests run the real `consentd` binary and kill it with SIGKILL; the
//! in-process ones use the harness in `common`.

use std::sync::Arc;

use crate::common::{process::*, *};
use consentd::{
    clock::{Clock, ManualClock},
    pb::{
        Channel, ConsentStatus, ExclusionReason, GetConsentRequest, GetProfileRequest,
        ListConsentHistoryRequest, OptOutRequest, Source, UpsertProfileRequest,
        consent_service_client::ConsentServiceClient,
        eligibility_service_client::EligibilityServiceClient,
        profile_service_client::ProfileServiceClient,
    },
    server::{App, Settings},
};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_opt_out_survives_sigkill() {
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let id = "durable-1";

    let mut first = ServerProcess::start(data_dir.path());
    let addr = first.wait_listening().await;
    let channel = connect(addr).await;
    ProfileServiceClient::new(channel.clone())
        .upsert_profile(UpsertProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            emails: vec!["durable@example.com".to_owned()],
            context: ctx(Source::Api),
            ..Default::default()
        })
        .await
        .expect("UpsertProfile");
    let out = ConsentServiceClient::new(channel.clone())
        .opt_out(OptOutRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            all_channels: true,
            context: ctx(Source::LandingPage),
            ..Default::default()
        })
        .await
        .expect("OptOut is acknowledged")
        .into_inner();
    assert!(out.changed);
    drop(channel);

    let status = first.kill();
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    }
    assert!(!status.success());

    let mut second = ServerProcess::start(data_dir.path());
    let addr = second.wait_listening().await;
    let channel = connect(addr).await;

    let consent = ConsentServiceClient::new(channel.clone())
        .get_consent(GetConsentRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
        })
        .await
        .expect("GetConsent after the crash")
        .into_inner()
        .consent
        .expect("consent is set");
    let all = consent.all_channels.expect("all_channels is set");
    assert_eq!(all.status(), ConsentStatus::OptedOut, "{all:?}");
    assert_eq!(all.source(), Source::LandingPage);

    let history = ConsentServiceClient::new(channel.clone())
        .list_consent_history(ListConsentHistoryRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("ListConsentHistory after the crash")
        .into_inner();
    assert_eq!(history.entries.len(), 1, "{history:?}");
    let entry = &history.entries[0];
    assert!(entry.all_channels);
    assert_eq!(entry.sequence, 1);
    assert_eq!(entry.new_status(), ConsentStatus::OptedOut);

    let profile = ProfileServiceClient::new(channel.clone())
        .get_profile(GetProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
        })
        .await
        .expect("GetProfile after the crash")
        .into_inner()
        .profile
        .expect("profile is set");
    assert_eq!(profile.emails, vec!["durable@example.com".to_owned()]);

    let decision = EligibilityServiceClient::new(channel)
        .check_eligibility(consentd::pb::CheckEligibilityRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            channel: Channel::Email as i32,
            ..Default::default()
        })
        .await
        .expect("CheckEligibility after the crash")
        .into_inner()
        .decision
        .expect("decision is set");
    assert_eq!(
        decision.reasons().collect::<Vec<_>>(),
        vec![ExclusionReason::OptedOutAllChannels]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let mut first = ServerProcess::start(data_dir.path());
    let addr = first.wait_listening().await;

    let mut second = ServerProcess::start(data_dir.path());
    let (status, stderr) = second.wait_exit().await;
    assert!(
        !status.success(),
        "exit status {status:?}; stderr:\n{stderr}"
    );
    assert!(
        status.code().is_some(),
        "exits with a code, not a signal: {status:?}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("in use"),
        "stderr says the data directory is in use:\n{stderr}"
    );

    // The first server is unaffected.
    let status = ProfileServiceClient::new(connect(addr).await)
        .get_profile(GetProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: "nobody".to_owned(),
        })
        .await
        .expect_err("no such profile");
    assert_profile_not_found("GetProfile on the first server", &status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_keeps_everything() {
    let app = spawn_app().await;
    upsert(
        &app,
        "p-restart",
        &["restart@example.com"],
        &["+33612345678"],
    )
    .await;
    opt_out(&app, "p-restart", Channel::Sms).await;
    app.advance_ms(MINUTE_MS);
    opt_out_all(&app, "p-restart").await;
    feedback(
        &app,
        "restart@example.com",
        consentd::pb::FeedbackKind::HardBounce,
        consentd::pb::DeliveryErrorReason::UserUnknown,
        "restart-hard",
        None,
    )
    .await;
    let before = get_consent(&app, "p-restart").await;

    let app = app.restart().await;

    assert_eq!(get_consent(&app, "p-restart").await, before);
    let history = consent_history(&app, "p-restart", 0, "").await;
    assert_eq!(
        history
            .entries
            .iter()
            .map(|e| e.sequence)
            .collect::<Vec<_>>(),
        vec![2, 1]
    );
    let state = address_state(&app, "restart@example.com").await;
    assert_eq!(state.status(), consentd::pb::AddressStatus::Quarantined);
    // The event id is remembered across restarts.
    let again = feedback(
        &app,
        "restart@example.com",
        consentd::pb::FeedbackKind::HardBounce,
        consentd::pb::DeliveryErrorReason::UserUnknown,
        "restart-hard",
        None,
    )
    .await;
    assert!(!again.recorded, "{again:?}");
    // Sequences continue after a restart.
    opt_in(&app, "p-restart", None).await;
    let history = consent_history(&app, "p-restart", 1, "").await;
    assert_eq!(history.entries.first().map(|e| e.sequence), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_open_refuses_a_data_dir_in_use() {
    let app = spawn_app().await;
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START_MS));
    match App::open(app.data_dir.path(), Settings::default(), clock) {
        Ok(_) => panic!("a second App opened a data directory that is in use"),
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("in use"), "{message}");
        }
    }
    // The running server still works.
    upsert(&app, "p-alive", &["alive@example.com"], &[]).await;
    assert_eq!(app.clock.now_ms(), START_MS);
}

/// SIGTERM: health goes NOT_SERVING, a stream that is already open is still
/// answered (drain), the store is flushed and the process exits 0; what was
/// acknowledged is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_flushes_and_exits_zero() {
    use consentd::pb::{
        StreamEligibilityRequest, eligibility_service_client::EligibilityServiceClient,
    };
    use tokio_stream::wrappers::ReceiverStream;

    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let mut server = ServerProcess::start(data_dir.path());
    let addr = server.wait_listening().await;
    let channel = connect(addr).await;
    let mut profiles = ProfileServiceClient::new(channel.clone());
    profiles
        .upsert_profile(UpsertProfileRequest {
            tenant: TENANT.into(),
            profile_id: "drain-1".into(),
            emails: vec!["drain@example.com".into()],
            context: ctx(Source::Api),
            ..Default::default()
        })
        .await
        .expect("upsert acknowledged");
    ConsentServiceClient::new(channel.clone())
        .opt_out(OptOutRequest {
            tenant: TENANT.into(),
            profile_id: "drain-1".into(),
            channel: Channel::Sms.into(),
            context: ctx(Source::LandingPage),
            ..Default::default()
        })
        .await
        .expect("opt-out acknowledged");

    let chunk = |ids: &[&str]| StreamEligibilityRequest {
        tenant: TENANT.into(),
        channel: Channel::Email.into(),
        profile_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        ..Default::default()
    };
    let (chunks, outbound) = mpsc::channel(4);
    chunks
        .send(chunk(&["drain-1"]))
        .await
        .expect("queue chunk 1");
    let mut answers = EligibilityServiceClient::new(channel.clone())
        .stream_eligibility(ReceiverStream::new(outbound))
        .await
        .expect("open the stream")
        .into_inner();
    let first = answers
        .message()
        .await
        .expect("answer 1")
        .expect("an answer");
    assert!(first.decisions[0].eligible);

    server.terminate();
    server.wait_for_line("shutting down").await;

    // The stream opened before the signal is still served.
    chunks
        .send(chunk(&["drain-1", "nobody"]))
        .await
        .expect("queue chunk 2");
    let second = answers
        .message()
        .await
        .expect("answer 2")
        .expect("an answer");
    assert_eq!(second.decisions.len(), 2);
    assert_eq!(
        second.decisions[1].reasons,
        vec![i32::from(ExclusionReason::ProfileNotFound)]
    );
    assert_eq!(second.total_summary.map(|s| s.total), Some(3));
    drop(chunks);
    assert!(answers.message().await.expect("clean end").is_none());
    drop(answers);
    drop(channel);

    let (status, stderr) = server.wait_exit().await;
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{stderr}"
    );
    assert!(stderr.contains("store flushed"), "stderr:\n{stderr}");

    let mut again = ServerProcess::start(data_dir.path());
    let addr = again.wait_listening().await;
    let consent = ConsentServiceClient::new(connect(addr).await)
        .get_consent(GetConsentRequest {
            tenant: TENANT.into(),
            profile_id: "drain-1".into(),
        })
        .await
        .expect("consent after restart")
        .into_inner()
        .consent
        .expect("consent state");
    let sms = consent
        .channels
        .iter()
        .find(|c| c.channel == i32::from(Channel::Sms))
        .expect("SMS entry");
    assert_eq!(sms.effective_status, i32::from(ConsentStatus::OptedOut));
}

/// The decisions of `ids` on e-mail, as (id, eligible, reasons).
async fn try_email_decisions(
    channel: &tonic::transport::Channel,
    ids: &[String],
) -> Result<Vec<(String, bool, Vec<i32>)>, tonic::Status> {
    Ok(EligibilityServiceClient::new(channel.clone())
        .batch_check_eligibility(consentd::pb::BatchCheckEligibilityRequest {
            tenant: TENANT.to_owned(),
            channel: Channel::Email.into(),
            profile_ids: ids.to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .decisions
        .into_iter()
        .map(|d| (d.profile_id, d.eligible, d.reasons))
        .collect())
}

async fn email_decisions(
    channel: &tonic::transport::Channel,
    ids: &[String],
) -> Vec<(String, bool, Vec<i32>)> {
    try_email_decisions(channel, ids)
        .await
        .expect("BatchCheckEligibility")
}

/// Opts `id` out of every channel.
async fn opt_out_everywhere(
    consent: &mut ConsentServiceClient<tonic::transport::Channel>,
    id: &str,
) {
    consent
        .opt_out(OptOutRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            all_channels: true,
            context: ctx(Source::Api),
            ..Default::default()
        })
        .await
        .expect("OptOut");
}

/// The store compacts itself (`--compaction-ratio`) while the server runs:
/// every decision is the same after it, writes go on, and a restart finds
/// the compacted store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_store_keeps_every_decision_across_a_restart() {
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let flags = [
        "--compaction-ratio",
        "2",
        "--compaction-min-size",
        "1MiB",
        "--retention-sweep-interval",
        "1s",
    ];
    let (mut server, addr) = ServerProcess::serve(data_dir.path(), "info", &flags).await;
    let channel = connect(addr).await;
    let ids: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
    let (mut profiles, mut consent) = (
        ProfileServiceClient::new(channel.clone()),
        ConsentServiceClient::new(channel.clone()),
    );
    for id in &ids {
        profiles
            .upsert_profile(UpsertProfileRequest {
                tenant: TENANT.to_owned(),
                profile_id: id.clone(),
                emails: vec![format!("{id}@example.com")],
                context: ctx(Source::Api),
                ..Default::default()
            })
            .await
            .expect("UpsertProfile");
    }
    // Churn: every profile rewritten (a new postal address of 400 bytes)
    // and opted out and back in, rounds over; a third stays out.
    for round in 0..6 {
        for (i, id) in ids.iter().enumerate() {
            profiles
                .upsert_profile(UpsertProfileRequest {
                    tenant: TENANT.to_owned(),
                    profile_id: id.clone(),
                    emails: vec![format!("{id}@example.com")],
                    postal_address: format!("{round} {}", "x".repeat(400)),
                    context: ctx(Source::Api),
                    ..Default::default()
                })
                .await
                .expect("UpsertProfile");
            opt_out_everywhere(&mut consent, id).await;
            if round < 5 || i % 3 != 0 {
                consent
                    .opt_in(consentd::pb::OptInRequest {
                        tenant: TENANT.to_owned(),
                        profile_id: id.clone(),
                        all_channels: true,
                        context: ctx(Source::Api),
                        ..Default::default()
                    })
                    .await
                    .expect("OptIn");
            }
        }
    }
    let before = email_decisions(&channel, &ids).await;
    assert_eq!(
        before.iter().filter(|(_, eligible, _)| !eligible).count(),
        67,
        "a third opted out"
    );
    let line = server.wait_for_line("store compacted").await;
    assert!(line.contains("bytes_before="), "{line}");
    let current = std::fs::read_to_string(data_dir.path().join("CURRENT")).expect("CURRENT");
    assert!(current.starts_with("gen-"), "{current}");
    assert!(
        !data_dir.path().join("db").exists(),
        "the first generation is gone"
    );
    assert_eq!(email_decisions(&channel, &ids).await, before);

    // Writes go on after it, and a restart finds everything.
    opt_out_everywhere(&mut consent, "c1").await;
    let after = email_decisions(&channel, &ids).await;
    assert!(!after[1].1, "c1 is out: {:?}", after[1]);
    drop((profiles, consent, channel));
    server.terminate();
    let (status, stderr) = server.wait_exit().await;
    assert!(status.success(), "{status:?}\n{stderr}");

    let (_again, addr) = ServerProcess::serve(data_dir.path(), "info", &flags).await;
    let channel = connect(addr).await;
    wait_for_decisions(&channel, &ids, &after).await;
}

/// Waits (briefly) until the restarted server answers `expected`: its
/// decision index is built before it serves, but the port listens first.
async fn wait_for_decisions(
    channel: &tonic::transport::Channel,
    ids: &[String],
    expected: &[(String, bool, Vec<i32>)],
) {
    let deadline = tokio::time::Instant::now() + PROCESS_TIMEOUT;
    loop {
        match try_email_decisions(channel, ids).await {
            Ok(decisions) => {
                assert_eq!(decisions, expected);
                return;
            }
            Err(status) if tokio::time::Instant::now() < deadline => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(status) => panic!("never served: {status:?}"),
        }
    }
}
