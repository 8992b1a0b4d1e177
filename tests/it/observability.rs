//! Metrics and request ids: a real server is scraped over HTTP after known
//! calls, and every answer carries the request's `x-request-id`.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use crate::common::{process, *};
use consentd::{
    clock::{Clock, ManualClock},
    metrics,
    pb::{
        BatchCheckEligibilityRequest, Channel, CheckEligibilityRequest, GetProfileRequest,
        OptOutRequest, Source, StreamEligibilityRequest, UpsertProfileRequest,
        consent_service_client::ConsentServiceClient,
        eligibility_service_client::EligibilityServiceClient,
        profile_service_client::ProfileServiceClient,
    },
    server::{App, Settings, run},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tonic::{Code, Request, metadata::MetadataMap};

/// Scrapes before giving up on seeing an abandoned stream counted (the
/// server learns of it asynchronously, from the client's RST_STREAM).
const CANCEL_SCRAPES_MAX: usize = 500;

/// One sample of the text format: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// `GET path` over HTTP/1.1; returns the status code and the body.
async fn http_get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to metrics");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4")
            || status != 200,
        "{head}"
    );
    (status, body.to_owned())
}

/// Scrapes `/metrics` and parses every sample.
async fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (status, body) = http_get(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let value: f64 = value.parse().expect("a number");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("label=value");
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value)
        })
        .collect()
}

/// The value of the sample `name{labels}`, 0 when absent (a counter not yet touched).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .iter()
        .find(|(n, l, _)| n == name && *l == wanted)
        .map_or(0.0, |(_, _, v)| *v)
}

fn requests(samples: &[Sample], method: &str, code: &str) -> f64 {
    value(
        samples,
        "consentd_grpc_requests_total",
        &[("code", code), ("method", method)],
    )
}

fn decisions(samples: &[Sample], channel: &str, outcome: &str) -> f64 {
    value(
        samples,
        "consentd_decisions_total",
        &[("channel", channel), ("outcome", outcome)],
    )
}

fn upsert_request(id: &str, emails: &[&str]) -> UpsertProfileRequest {
    UpsertProfileRequest {
        tenant: TENANT.into(),
        profile_id: id.into(),
        emails: emails.iter().map(|e| (*e).to_owned()).collect(),
        context: ctx(Source::Import),
        ..Default::default()
    }
}

#[tokio::test]
async fn counters_move_by_exactly_the_calls_made() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START_MS));
    let app = App::open(data_dir.path(), Settings::default(), clock).expect("open the app");
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_addr = metrics_listener.local_addr().expect("address");
    let endpoint = tokio::spawn(metrics::serve(app.metrics(), metrics_listener));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(run(app, listener, async move {
        let _ = stopped.await;
    }));
    let channel = process::connect(addr).await;
    let mut profiles = ProfileServiceClient::new(channel.clone());
    let mut consent = ConsentServiceClient::new(channel.clone());
    let mut eligibility = EligibilityServiceClient::new(channel.clone());

    let before = scrape(metrics_addr).await;
    assert_eq!(
        requests(&before, "consent.v1.ProfileService/UpsertProfile", "OK"),
        0.0
    );
    assert!(value(&before, "consentd_store_size_bytes", &[]) > 0.0);

    // Three durable writes, one refused write, one unknown profile.
    profiles
        .upsert_profile(upsert_request("alice", &["shared@example.com"]))
        .await
        .expect("upsert alice");
    profiles
        .upsert_profile(upsert_request("bob", &["shared@example.com"]))
        .await
        .expect("upsert bob");
    consent
        .opt_out(OptOutRequest {
            tenant: TENANT.into(),
            profile_id: "alice".into(),
            all_channels: true,
            context: ctx(Source::LandingPage),
            ..Default::default()
        })
        .await
        .expect("opt out");
    let refused = profiles
        .upsert_profile(upsert_request("carol", &["not-an-email"]))
        .await
        .expect_err("an invalid e-mail address is refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let missing = profiles
        .get_profile(GetProfileRequest {
            tenant: TENANT.into(),
            profile_id: "nobody".into(),
        })
        .await
        .expect_err("unknown profile");
    assert_eq!(missing.code(), Code::NotFound);

    // Decisions: a batch of three on e-mail, one check on SMS, a stream of two chunks.
    eligibility
        .batch_check_eligibility(BatchCheckEligibilityRequest {
            tenant: TENANT.into(),
            channel: Channel::Email.into(),
            profile_ids: vec!["alice".into(), "bob".into(), "nobody".into()],
            ..Default::default()
        })
        .await
        .expect("batch");
    eligibility
        .check_eligibility(CheckEligibilityRequest {
            tenant: TENANT.into(),
            profile_id: "bob".into(),
            channel: Channel::Sms.into(),
            ..Default::default()
        })
        .await
        .expect("check");
    let chunks = vec![
        StreamEligibilityRequest {
            tenant: TENANT.into(),
            channel: Channel::Email.into(),
            profile_ids: vec!["bob".into(), "bob".into()],
            ..Default::default()
        },
        StreamEligibilityRequest {
            profile_ids: vec!["alice".into()],
            ..Default::default()
        },
    ];
    let mut answers = eligibility
        .stream_eligibility(tokio_stream::iter(chunks))
        .await
        .expect("stream")
        .into_inner();
    let mut answered = 0;
    while let Some(answer) = answers.message().await.expect("a stream answer") {
        answered += answer.decisions.len();
    }
    assert_eq!(answered, 3);

    let after = scrape(metrics_addr).await;
    let upsert = "consent.v1.ProfileService/UpsertProfile";
    assert_eq!(requests(&after, upsert, "OK"), 2.0);
    assert_eq!(requests(&after, upsert, "INVALID_ARGUMENT"), 1.0);
    assert_eq!(
        requests(&after, "consent.v1.ConsentService/OptOut", "OK"),
        1.0
    );
    assert_eq!(
        requests(&after, "consent.v1.ProfileService/GetProfile", "NOT_FOUND"),
        1.0
    );
    for method in [
        "consent.v1.EligibilityService/BatchCheckEligibility",
        "consent.v1.EligibilityService/CheckEligibility",
        "consent.v1.EligibilityService/StreamEligibility",
    ] {
        assert_eq!(requests(&after, method, "OK"), 1.0, "{method}");
    }
    assert_eq!(
        value(
            &after,
            "consentd_grpc_request_duration_seconds_count",
            &[("method", upsert)]
        ),
        3.0
    );
    let upsert_fast = value(
        &after,
        "consentd_grpc_request_duration_seconds_bucket",
        &[("method", upsert), ("le", "+Inf")],
    );
    assert_eq!(upsert_fast, 3.0);

    // Batch: alice opted out, bob eligible, nobody not found; check: bob has no phone;
    // stream: bob twice, then alice.
    assert_eq!(decisions(&after, "email", "eligible"), 3.0);
    assert_eq!(decisions(&after, "email", "opted_out_all_channels"), 2.0);
    assert_eq!(decisions(&after, "email", "profile_not_found"), 1.0);
    assert_eq!(decisions(&after, "sms", "no_address"), 1.0);
    assert_eq!(decisions(&after, "sms", "eligible"), 0.0);

    // Each of the three writes waited once; the flushes made exactly those durable.
    assert_eq!(
        value(&after, "consentd_durable_write_wait_seconds_count", &[]),
        3.0
    );
    let flushes = value(&after, "consentd_group_commit_duration_seconds_count", &[]);
    assert!((1.0..=3.0).contains(&flushes), "{flushes} flushes");
    assert_eq!(value(&after, "consentd_group_commit_writes_sum", &[]), 3.0);
    assert!(value(&after, "consentd_store_size_bytes", &[]) > 0.0);

    // A stream the client abandons midway counts as CANCELLED once the server lets go of it.
    let (chunks, requests_rx) = tokio::sync::mpsc::channel(1);
    chunks
        .send(StreamEligibilityRequest {
            tenant: TENANT.into(),
            channel: Channel::Email.into(),
            profile_ids: vec!["bob".into()],
            ..Default::default()
        })
        .await
        .expect("send a chunk");
    let mut abandoned = eligibility
        .stream_eligibility(tokio_stream::wrappers::ReceiverStream::new(requests_rx))
        .await
        .expect("stream")
        .into_inner();
    abandoned
        .message()
        .await
        .expect("first answer")
        .expect("an answer");
    drop((abandoned, chunks));
    let stream_method = "consent.v1.EligibilityService/StreamEligibility";
    let mut cancelled = 0.0;
    for _ in 0..CANCEL_SCRAPES_MAX {
        cancelled = requests(&scrape(metrics_addr).await, stream_method, "CANCELLED");
        if cancelled > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(cancelled, 1.0, "the abandoned stream is counted once");

    // Only GET /metrics is served.
    assert_eq!(http_get(metrics_addr, "GET", "/other").await.0, 404);
    assert_eq!(http_get(metrics_addr, "POST", "/metrics").await.0, 405);

    drop((profiles, consent, eligibility, channel));
    stop.send(()).expect("server running");
    server.await.expect("server task").expect("clean stop");
    endpoint.abort();
}

fn request_id(metadata: &MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .expect("an x-request-id in the response")
        .to_str()
        .expect("ASCII")
        .to_owned()
}

fn with_id<T>(message: T, id: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().expect("metadata value"));
    request
}

fn assert_generated(id: &str) {
    let parsed = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id:?}: {e}"));
    assert_eq!(parsed.get_version_num(), 4, "{id}");
}

#[tokio::test]
async fn every_answer_carries_the_request_id_sent_or_a_generated_one() {
    let app = spawn_app().await;
    upsert(&app, "alice", &["alice@example.com"], &[]).await;
    let check = || CheckEligibilityRequest {
        tenant: TENANT.into(),
        profile_id: "alice".into(),
        channel: Channel::Email.into(),
        ..Default::default()
    };
    let get_missing = || GetProfileRequest {
        tenant: TENANT.into(),
        profile_id: "nobody".into(),
    };

    // Sent and usable: echoed, on a success and on an error.
    let answer = app
        .eligibility
        .clone()
        .check_eligibility(with_id(check(), "checkout-7f3a"))
        .await
        .expect("check");
    assert_eq!(request_id(answer.metadata()), "checkout-7f3a");
    let error = app
        .profiles
        .clone()
        .get_profile(with_id(get_missing(), "lookup 12/b"))
        .await
        .expect_err("unknown profile");
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(request_id(error.metadata()), "lookup 12/b");

    // Not sent: generated, different per request.
    let first = app
        .eligibility
        .clone()
        .check_eligibility(check())
        .await
        .expect("check");
    let second = app
        .profiles
        .clone()
        .get_profile(get_missing())
        .await
        .expect_err("unknown profile");
    let (first, second) = (request_id(first.metadata()), request_id(second.metadata()));
    assert_generated(&first);
    assert_generated(&second);
    assert_ne!(first, second);

    // Sent but unusable (too long): replaced.
    let long = "x".repeat(consentd::request_id::REQUEST_ID_LEN_MAX + 1);
    let answer = app
        .eligibility
        .clone()
        .check_eligibility(with_id(check(), &long))
        .await
        .expect("check");
    assert_generated(&request_id(answer.metadata()));
}

/// The address of `/metrics`, from the line the server logs when it starts serving it.
async fn metrics_address(server: &mut process::ServerProcess) -> SocketAddr {
    let line = server.wait_for_line("metrics on http://").await;
    process::after(&line, "metrics on http://")
        .trim_end_matches("/metrics")
        .parse()
        .expect("the metrics address")
}

#[tokio::test]
async fn the_binary_serves_metrics_and_logs_the_request_id_in_the_span() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let (mut server, addr) = process::ServerProcess::serve(
        data_dir.path(),
        "info,consentd=debug",
        &["--metrics-listen", "127.0.0.1:0"],
    )
    .await;
    let metrics_addr = metrics_address(&mut server).await;

    let channel = process::connect(addr).await;
    let refused = ProfileServiceClient::new(channel)
        .upsert_profile(with_id(
            upsert_request("dave", &["not-an-email"]),
            "trace-me-42",
        ))
        .await
        .expect_err("invalid");
    assert_eq!(request_id(refused.metadata()), "trace-me-42");

    // The refusal is logged at debug inside the request's span, which names the id.
    let line = server.wait_for_line("request refused").await;
    assert!(line.contains(r#"request_id="trace-me-42""#), "{line}");
    assert!(line.contains("UpsertProfile"), "{line}");

    let samples = scrape(metrics_addr).await;
    assert_eq!(
        requests(
            &samples,
            "consent.v1.ProfileService/UpsertProfile",
            "INVALID_ARGUMENT"
        ),
        1.0
    );
}

#[tokio::test]
async fn the_request_span_can_be_turned_off_by_its_target() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let filter = format!(
        "info,consentd=debug,{}=off",
        consentd::server::RPC_SPAN_TARGET
    );
    let (mut server, addr) = process::ServerProcess::serve(data_dir.path(), &filter, &[]).await;
    let channel = process::connect(addr).await;
    ProfileServiceClient::new(channel)
        .upsert_profile(with_id(
            upsert_request("erin", &["not-an-email"]),
            "untraced-7",
        ))
        .await
        .expect_err("invalid");
    // Still logged, but outside any span: no method, no request id.
    let line = server.wait_for_line("request refused").await;
    assert!(!line.contains("untraced-7"), "{line}");
    assert!(!line.contains("rpc{"), "{line}");
}

#[tokio::test]
async fn a_request_refused_by_access_control_is_counted_and_carries_its_id() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let key_file = data_dir.path().join("keys.toml");
    let digest = consentd::auth::sha256_hex("cdk_observability_test_key");
    std::fs::write(
        &key_file,
        format!(
            "[[key]]\nname = \"ops\"\nsha256 = \"{digest}\"\nrole = \"admin\"\ntenants = \"*\"\n"
        ),
    )
    .expect("write the key file");
    let store_dir = data_dir.path().join("store");
    let key_path = key_file.to_str().expect("UTF-8 path");
    let (mut server, addr) = process::ServerProcess::serve(
        &store_dir,
        "info",
        &["--auth-keys", key_path, "--metrics-listen", "127.0.0.1:0"],
    )
    .await;
    let metrics_addr = metrics_address(&mut server).await;
    let channel = process::connect(addr).await;
    let refused = ProfileServiceClient::new(channel)
        .get_profile(with_id(
            GetProfileRequest {
                tenant: TENANT.into(),
                profile_id: "alice".into(),
            },
            "no-key-1",
        ))
        .await
        .expect_err("no API key");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(request_id(refused.metadata()), "no-key-1");
    let samples = scrape(metrics_addr).await;
    assert_eq!(
        requests(
            &samples,
            "consent.v1.ProfileService/GetProfile",
            "UNAUTHENTICATED"
        ),
        1.0
    );
}

#[tokio::test]
async fn client_text_is_logged_escaped_so_it_cannot_forge_a_line() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let (mut server, addr) = process::ServerProcess::serve(data_dir.path(), "info", &[]).await;
    let channel = process::connect(addr).await;
    let mut request = upsert_request("frank", &["frank@example.com"]);
    let context = request.context.as_mut().expect("a context");
    context.actor = "mallory\nFORGED INFO consentd: admin key created".to_owned();
    context.reason = "\u{1b}[31mred alert".to_owned();
    ProfileServiceClient::new(channel)
        .upsert_profile(request)
        .await
        .expect("upsert");

    let line = server.wait_for_line("upsert profile").await;
    // The newline is escaped: the forged text stays on the event's own line.
    assert!(line.contains("mallory"), "{line}");
    assert!(line.contains("FORGED INFO"), "{line}");
    // The escape character is written escaped, so the sequence survives the
    // harness's stripping of real escape sequences (`ESC [ ... m`).
    assert!(line.contains("[31mred alert"), "{line}");
    assert!(
        !server
            .lines_so_far()
            .iter()
            .any(|l| l.starts_with("FORGED")),
        "a forged line: {}",
        server.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_paths_count_under_other_without_displacing_served_methods() {
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(START_MS));
    let app = App::open(data_dir.path(), Settings::default(), clock).expect("open the app");
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_addr = metrics_listener.local_addr().expect("address");
    let endpoint = tokio::spawn(metrics::serve(app.metrics(), metrics_listener));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(run(app, listener, async move {
        let _ = stopped.await;
    }));
    let channel = process::connect(addr).await;

    // 260 distinct made-up methods: more than the old limit of 256 labels.
    let made_up = 260;
    for i in 0..made_up {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let path = format!("/made.up.Service{i}/Method{i}");
        let status = grpc
            .unary::<GetProfileRequest, GetProfileRequest, _>(
                Request::new(GetProfileRequest::default()),
                path.parse().expect("a path"),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    }
    // A served method called only now still has its own label.
    let missing = ProfileServiceClient::new(channel.clone())
        .get_profile(GetProfileRequest {
            tenant: TENANT.into(),
            profile_id: "nobody".into(),
        })
        .await
        .expect_err("no such profile");
    assert_eq!(missing.code(), Code::NotFound);

    let samples = scrape(metrics_addr).await;
    assert_eq!(
        requests(
            &samples,
            "consent.v1.ProfileService/GetProfile",
            "NOT_FOUND"
        ),
        1.0
    );
    assert_eq!(
        requests(&samples, "other", "UNIMPLEMENTED"),
        f64::from(made_up)
    );
    let labels: std::collections::BTreeSet<&str> = samples
        .iter()
        .filter(|(name, _, _)| name == "consentd_grpc_requests_total")
        .filter_map(|(_, labels, _)| labels.get("method").map(String::as_str))
        .collect();
    assert_eq!(
        labels,
        ["consent.v1.ProfileService/GetProfile", "other"].into(),
        "no label per made-up path"
    );

    let _ = stop.send(());
    server.await.expect("join").expect("clean stop");
    endpoint.abort();
}
