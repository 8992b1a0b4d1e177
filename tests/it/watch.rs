//! `consent.v1.WatchService/Watch` on the embedded store: a tenant's
//! committed changes in commit order, each message with a token to resume
//! after it; checkpoints when nothing changes; clear errors for a token
//! that is malformed, of another store or expired; a bounded number of
//! watches. (On PostgreSQL, across replicas: `replicas.rs`.)

use std::time::{Duration, Instant};

use crate::common::*;
use consentd::{
    app::{Settings, WatchSettings},
    pb::{
        AddressStatus, Channel, QuarantineAddressRequest, WatchRequest, WatchResponse,
        watch_change::Change as WatchedChange, watch_service_client::WatchServiceClient,
    },
};
use tonic::{Code, Status, Streaming};

/// How long a test waits for a message before it fails.
const WAIT: Duration = Duration::from_secs(10);

fn settings(checkpoint_interval: Duration) -> Settings {
    Settings {
        watch: WatchSettings {
            checkpoint_interval,
            ..WatchSettings::default()
        },
        ..Settings::default()
    }
}

async fn watch(
    app: &TestApp,
    tenant: &str,
    start_token: &str,
) -> Result<Streaming<WatchResponse>, Status> {
    WatchServiceClient::new(app.channel.clone())
        .watch(WatchRequest {
            tenant: tenant.to_owned(),
            start_token: start_token.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn next(stream: &mut Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a message within the wait")
        .expect("no error")
        .expect("the stream goes on")
}

/// Messages until `n` changes came (checkpoints skipped); the changes and
/// the token of the last message.
async fn changes(stream: &mut Streaming<WatchResponse>, n: usize) -> (Vec<WatchedChange>, String) {
    let mut seen = Vec::new();
    let mut token = String::new();
    while seen.len() < n {
        let message = next(stream).await;
        assert!(!message.token.is_empty(), "every message carries a token");
        token = message.token;
        for change in message.changes {
            assert!(change.committed_at.is_some(), "{change:?}");
            seen.push(change.change.expect("a change"));
        }
    }
    assert_eq!(seen.len(), n, "no more than asked: {seen:?}");
    (seen, token)
}

async fn denylist(app: &TestApp, address: &str) {
    app.quarantine
        .clone()
        .quarantine_address(QuarantineAddressRequest {
            tenant: TENANT.to_owned(),
            address: address.to_owned(),
            status: AddressStatus::Denylisted as i32,
            context: operator("ops", "fraud report"),
            ..Default::default()
        })
        .await
        .expect("QuarantineAddress");
}

fn sms_opted_out(change: &WatchedChange) -> Option<bool> {
    let WatchedChange::Profile(profile) = change else {
        return None;
    };
    let consent = profile.consent.as_ref()?;
    Some(
        channel_consent(consent, Channel::Sms).effective_status()
            == consentd::pb::ConsentStatus::OptedOut,
    )
}

#[tokio::test]
async fn a_watch_streams_the_tenant_s_changes_in_order_and_resumes_after_a_token() {
    let app = spawn_app_with(settings(Duration::from_millis(200))).await;
    let mut stream = watch(&app, TENANT, "").await.expect("Watch");
    let start = next(&mut stream).await;
    assert!(
        start.changes.is_empty(),
        "a watch from now starts with a checkpoint"
    );
    assert!(!start.token.is_empty());

    upsert(&app, "p1", &["a@example.com"], &[]).await;
    upsert_in(&app, "other", "p1", "other@example.com").await;
    opt_out(&app, "p1", Channel::Sms).await;
    denylist(&app, "a@example.com").await;

    let (seen, last) = changes(&mut stream, 3).await;
    assert_eq!(sms_opted_out(&seen[0]), Some(false), "{seen:?}");
    assert_eq!(sms_opted_out(&seen[1]), Some(true), "{seen:?}");
    match &seen[2] {
        WatchedChange::AddressStatus(address) => {
            assert_eq!(address.address, "a@example.com");
            assert_eq!(address.status(), AddressStatus::Denylisted);
        }
        other => panic!("an address status, not {other:?}"),
    }
    let WatchedChange::Profile(profile) = &seen[0] else {
        unreachable!()
    };
    assert_eq!(profile.profile_id, "p1");
    assert_eq!(
        profile.emails,
        ["a@example.com"],
        "tenant acme's p1, not other's"
    );
    drop(stream);

    // From the first token again: the same changes, in the same order.
    let mut again = watch(&app, TENANT, &start.token).await.expect("Watch");
    let (replayed, replayed_last) = changes(&mut again, 3).await;
    assert_eq!(replayed, seen);
    assert_eq!(replayed_last, last);
    drop(again);

    // From the last token: only what comes after it.
    let mut resumed = watch(&app, TENANT, &last).await.expect("Watch");
    opt_out_all(&app, "p1").await;
    let (after, _) = changes(&mut resumed, 1).await;
    assert!(matches!(&after[0], WatchedChange::Profile(p) if p.profile_id == "p1"));

    // Nothing changes: checkpoints, about every interval.
    let started = Instant::now();
    let checkpoint = next(&mut resumed).await;
    assert!(checkpoint.changes.is_empty(), "{checkpoint:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_token_survives_a_graceful_restart() {
    let app = spawn_app().await;
    upsert(&app, "p1", &["a@example.com"], &[]).await;
    let mut stream = watch(&app, TENANT, "").await.expect("Watch");
    let token = next(&mut stream).await.token;
    drop(stream);
    let app = app.restart().await;
    opt_out(&app, "p1", Channel::Email).await;
    let mut resumed = watch(&app, TENANT, &token).await.expect("Watch");
    let (seen, _) = changes(&mut resumed, 1).await;
    assert!(matches!(&seen[0], WatchedChange::Profile(p) if p.profile_id == "p1"));
}

#[tokio::test]
async fn bad_tokens_are_refused_with_what_to_do() {
    let app = spawn_app().await;
    for (tenant, token, field) in [("", "", "tenant"), (TENANT, "garbage", "start_token")] {
        let status = watch(&app, tenant, token).await.expect_err("refused");
        assert_validation_failed(token, &status, &[field]);
    }
    let long = "w".repeat(20_000);
    let status = watch(&app, TENANT, &long).await.expect_err("refused");
    assert_validation_failed("a long token", &status, &["start_token"]);

    // Another server's token: resync.
    let other = spawn_app().await;
    let mut stream = watch(&other, TENANT, "").await.expect("Watch");
    let foreign = next(&mut stream).await.token;
    let status = watch(&app, TENANT, &foreign).await.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(error_info(&status).reason, "WATCH_RESYNC_REQUIRED");
    assert!(status.message().contains("resync"), "{}", status.message());
}

#[tokio::test]
async fn a_token_past_retention_has_expired() {
    let app = spawn_app_with(Settings {
        retention_sweep_interval: Duration::from_millis(50),
        watch: WatchSettings {
            retention_changes: 1,
            ..WatchSettings::default()
        },
        ..Settings::default()
    })
    .await;
    let mut stream = watch(&app, TENANT, "").await.expect("Watch");
    let start = next(&mut stream).await.token;
    drop(stream);
    for id in ["p1", "p2", "p3"] {
        upsert(&app, id, &[&format!("{id}@example.com")], &[]).await;
    }
    let deadline = Instant::now() + WAIT;
    let status = loop {
        match watch(&app, TENANT, &start).await {
            Err(status) => break status,
            Ok(_) => {
                assert!(Instant::now() < deadline, "the token never expired");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(error_info(&status).reason, "WATCH_TOKEN_EXPIRED");
    assert!(
        status.message().contains("--watch-retention"),
        "{}",
        status.message()
    );
    // A watch from now works.
    let mut fresh = watch(&app, TENANT, "").await.expect("Watch");
    assert!(next(&mut fresh).await.changes.is_empty());
}

#[tokio::test]
async fn watches_beyond_the_limit_are_refused_until_one_ends() {
    let app = spawn_app_with(Settings {
        watch: WatchSettings {
            max_streams: 1,
            checkpoint_interval: Duration::from_millis(50),
            ..WatchSettings::default()
        },
        ..Settings::default()
    })
    .await;
    let first = watch(&app, TENANT, "").await.expect("Watch");
    let status = watch(&app, TENANT, "").await.expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "TOO_MANY_WATCHES");
    assert_eq!(info.metadata.get("limit").map(String::as_str), Some("1"));
    drop(first);
    // The server notices the client went away at its next checkpoint.
    let deadline = Instant::now() + WAIT;
    while watch(&app, TENANT, "").await.is_err() {
        assert!(Instant::now() < deadline, "the ended watch still counts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real binary: a token survives SIGTERM (a clean close), and after
/// SIGKILL it asks for a resync (a change that was not yet durable may be in
/// the store without being in the log), while a watch from now works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_a_token_asks_for_a_resync() {
    use crate::common::process::{ServerProcess, connect};
    async fn first_token(addr: std::net::SocketAddr, start_token: &str) -> Result<String, Status> {
        let mut stream = WatchServiceClient::new(connect(addr).await)
            .watch(WatchRequest {
                tenant: TENANT.to_owned(),
                start_token: start_token.to_owned(),
            })
            .await?
            .into_inner();
        Ok(next(&mut stream).await.token)
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, addr) = ServerProcess::serve(dir.path(), "info", &[]).await;
    let token = first_token(addr, "").await.expect("Watch");
    server.terminate();
    let (status, _) = server.wait_stopped().await;
    assert!(status.success());
    let (mut server, addr) = ServerProcess::serve(dir.path(), "info", &[]).await;
    first_token(addr, &token)
        .await
        .expect("a token survives a clean close");
    server.kill();
    let (_server, addr) = ServerProcess::serve(dir.path(), "info", &[]).await;
    let status = first_token(addr, &token).await.expect_err("resync");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(error_info(&status).reason, "WATCH_RESYNC_REQUIRED");
    first_token(addr, "").await.expect("a watch from now");
}
