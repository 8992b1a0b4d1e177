//! Several replicas on one PostgreSQL database: a change made through one is
//! honoured by the others' decisions within the staleness bound, a replica
//! that restarts catches up, and a replica cut off from the database's
//! change feed fails closed (UNAVAILABLE, health NOT_SERVING) until it is
//! back. Skipped without a database (see `common/pg.rs`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::{pg, *};
use consentd::{
    app::Settings,
    pb::{Channel, ExclusionReason, OptOutRequest, Source},
    store::postgres::{PgOptions, PgStore},
};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

/// The bound the tests hold replicas to: the default `--max-staleness`.
const BOUND: Duration = consentd::app::MAX_STALENESS_DEFAULT;

async fn replica(url: &str, schema: &str, settings: Settings) -> TestApp {
    let store = pg::store(url, schema).await;
    spawn_app_on_store(Arc::new(store), settings).await
}

async fn upsert(app: &TestApp, id: &str, email: &str) {
    upsert_in(app, TENANT, id, email).await;
}

async fn opt_out(app: &TestApp, id: &str) {
    app.consent
        .clone()
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

async fn eligible(app: &TestApp, id: &str) -> bool {
    batch(app, Channel::Email, &[id]).await.decisions[0].eligible
}

/// Waits until `app` decides `id` as `wanted`; returns how long it took, or
/// panics after `limit`.
async fn until_decided(app: &TestApp, id: &str, wanted: bool, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if eligible(app, id).await == wanted {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{id} was not decided eligible={wanted} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_through_one_replica_is_honoured_by_the_others_within_the_bound() {
    let Some(url) = pg::database_url() else {
        return;
    };
    let schema = format!("it_replicas_{}", uuid::Uuid::new_v4().simple());
    let a = replica(&url, &schema, Settings::default()).await;
    let b = replica(&url, &schema, Settings::default()).await;
    let c = replica(&url, &schema, Settings::default()).await;
    upsert(&a, "p1", "p1@example.com").await;
    // Written through A: seen by B and C once their feed has it.
    until_decided(&b, "p1", true, BOUND).await;
    until_decided(&c, "p1", true, BOUND).await;
    // The writer's own index has it when the write is answered.
    opt_out(&a, "p1").await;
    assert!(!eligible(&a, "p1").await, "read your writes on the writer");
    let seen_b = until_decided(&b, "p1", false, BOUND).await;
    let seen_c = until_decided(&c, "p1", false, BOUND).await;
    let decision = &batch(&b, Channel::Email, &["p1"]).await.decisions[0];
    assert_eq!(
        decision.reasons,
        vec![ExclusionReason::OptedOutAllChannels as i32],
        "{decision:?}"
    );
    eprintln!("an opt-out through A reached B in {seen_b:?} and C in {seen_c:?}");
    // And the other way round, through C.
    upsert(&c, "p2", "p2@example.com").await;
    until_decided(&a, "p2", true, BOUND).await;
}

async fn next(
    stream: &mut tonic::Streaming<consentd::pb::WatchResponse>,
) -> consentd::pb::WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message in time")
        .expect("no error")
        .expect("more")
}

/// Watch on replicas: a watch through B streams a change written through
/// A within the staleness bound, and B's token resumes on A (tokens are
/// the database's, not a replica's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_one_replica_sees_the_others_changes_and_its_token_resumes_on_any() {
    use consentd::pb::{
        WatchRequest, watch_change::Change as Watched, watch_service_client::WatchServiceClient,
    };
    let Some(url) = pg::database_url() else {
        return;
    };
    let schema = format!("it_replicas_{}", uuid::Uuid::new_v4().simple());
    let a = replica(&url, &schema, Settings::default()).await;
    let b = replica(&url, &schema, Settings::default()).await;
    let watch = |app: &TestApp, start_token: String| {
        let mut client = WatchServiceClient::new(app.channel.clone());
        async move {
            client
                .watch(WatchRequest {
                    tenant: TENANT.to_owned(),
                    start_token,
                })
                .await
                .expect("Watch")
                .into_inner()
        }
    };
    let mut on_b = watch(&b, String::new()).await;
    let start = next(&mut on_b).await.token;
    let written = Instant::now();
    upsert(&a, "p1", "p1@example.com").await;
    let message = loop {
        let message = next(&mut on_b).await;
        if !message.changes.is_empty() {
            break message;
        }
    };
    let seen_after = written.elapsed();
    assert!(
        seen_after < BOUND,
        "the watch on B saw A's write after {seen_after:?}"
    );
    assert!(
        matches!(&message.changes[0].change, Some(Watched::Profile(p)) if p.profile_id == "p1"),
        "{message:?}"
    );
    eprintln!("a write through A reached a watch on B in {seen_after:?}");
    // B's first token, on A: the same change.
    let mut on_a = watch(&a, start).await;
    let replayed = loop {
        let message = next(&mut on_a).await;
        if !message.changes.is_empty() {
            break message;
        }
    };
    assert_eq!(replayed.changes, message.changes);
    // B's newest token, on A: only what is newer.
    let mut resumed = watch(&a, message.token.clone()).await;
    opt_out(&b, "p1").await;
    let newer = loop {
        let message = next(&mut resumed).await;
        if !message.changes.is_empty() {
            break message;
        }
    };
    let Some(Watched::Profile(profile)) = &newer.changes[0].change else {
        panic!("a profile: {newer:?}");
    };
    assert_eq!(
        profile
            .consent
            .as_ref()
            .and_then(|c| c.all_channels.as_ref())
            .map(|m| m.status()),
        Some(consentd::pb::ConsentStatus::OptedOut)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_restarts_catches_up_with_what_it_missed() {
    let Some(url) = pg::database_url() else {
        return;
    };
    let schema = format!("it_replicas_{}", uuid::Uuid::new_v4().simple());
    let a = replica(&url, &schema, Settings::default()).await;
    let b = replica(&url, &schema, Settings::default()).await;
    upsert(&a, "p1", "p1@example.com").await;
    until_decided(&b, "p1", true, BOUND).await;
    b.stop().await;
    // While B is down.
    opt_out(&a, "p1").await;
    upsert(&a, "p2", "p2@example.com").await;
    let b = replica(&url, &schema, Settings::default()).await;
    assert!(
        !eligible(&b, "p1").await,
        "the opt-out made while B was down"
    );
    assert!(
        eligible(&b, "p2").await,
        "the profile created while B was down"
    );
}

/// A TCP relay to the database that the test can cut: while cut, it
/// forwards nothing (and closes what it holds), as a network partition does.
struct Relay {
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Relay {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let cut = Arc::new(AtomicBool::new(false));
        let relay_cut = Arc::clone(&cut);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if relay_cut.load(Ordering::Acquire) {
                    continue;
                }
                let target = target.clone();
                let cut = Arc::clone(&relay_cut);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let watch_cut = async {
                        while !cut.load(Ordering::Acquire) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        () = watch_cut => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_feed_fails_closed_until_it_is_back() {
    let Some(url) = pg::database_url() else {
        return;
    };
    let schema = format!("it_replicas_{}", uuid::Uuid::new_v4().simple());
    let a = replica(&url, &schema, Settings::default()).await;
    upsert(&a, "p1", "p1@example.com").await;
    // B reaches the database through a relay that the test cuts.
    let config: tokio_postgres::Config = url.parse().expect("a database URL");
    let (host, port) = match (config.get_hosts().first(), config.get_ports().first()) {
        (Some(tokio_postgres::config::Host::Tcp(host)), Some(port)) => (host.clone(), *port),
        _ => panic!("the test database must be reached over TCP: {url}"),
    };
    let relay = Relay::start(format!("{host}:{port}")).await;
    let relayed = format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or("postgres"),
        relay.addr,
        config.get_dbname().unwrap_or("postgres")
    );
    let mut options = PgOptions::new(relayed);
    options.schema = Some(schema.clone());
    options.pool_size = 4;
    options.feed_timeout = Duration::from_millis(500);
    let store = PgStore::connect(options).await.expect("B connects");
    let settings = Settings {
        max_staleness: Duration::from_millis(300),
        ..Settings::default()
    };
    let b = spawn_app_on_store(Arc::new(store), settings).await;
    until_decided(&b, "p1", true, BOUND).await;

    relay.cut.store(true, Ordering::Release);
    // A keeps writing; B cannot know: it must stop deciding.
    opt_out(&a, "p1").await;
    let started = Instant::now();
    let refused = loop {
        match try_batch(&b, Channel::Email, vec!["p1".to_owned()]).await {
            Err(status) => break status,
            Ok(response) => {
                assert!(
                    response.decisions[0].eligible,
                    "B cannot have seen the opt-out"
                );
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "B kept deciding while cut off"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("--max-staleness"),
        "{}",
        refused.message()
    );
    // Health follows within its polling interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&b).await != "NOT_SERVING" {
        assert!(
            Instant::now() < deadline,
            "B's health stayed SERVING while cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Back: B catches up by itself and answers again, with the opt-out.
    relay.cut.store(false, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match try_batch(&b, Channel::Email, vec!["p1".to_owned()]).await {
            Ok(response) => {
                assert!(
                    !response.decisions[0].eligible,
                    "B answers again only once it has caught up: {response:?}"
                );
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        assert!(Instant::now() < deadline, "B did not recover by itself");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&b).await != "SERVING" {
        assert!(Instant::now() < deadline, "B's health did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn health(app: &TestApp) -> &'static str {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let status = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health")
        .into_inner()
        .status();
    status.as_str_name()
}
