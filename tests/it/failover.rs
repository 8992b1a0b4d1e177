//! PostgreSQL going away under load, with the real `consentd` binary and
//! clusters of the test's own (`tools/pg/cluster`): a primary crashed and
//! its synchronous standby promoted keeps every write consentd
//! acknowledged; a database that crashes and restarts under load loses no
//! acknowledged write, and the replicas recover by themselves. Skipped
//! without PostgreSQL (see `common/pg.rs`).

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::common::{
    ctx, error_info, pg,
    process::{ServerProcess, connect},
};
use consentd::pb::{
    BatchCheckEligibilityRequest, Channel, ExclusionReason, OptOutRequest, Source,
    UpsertProfileRequest, WatchRequest, consent_service_client::ConsentServiceClient,
    eligibility_service_client::EligibilityServiceClient,
    profile_service_client::ProfileServiceClient, watch_service_client::WatchServiceClient,
};

const TENANT: &str = "failover";
/// `--max-staleness` of the replicas.
const STALENESS_BOUND: Duration = Duration::from_secs(1);
/// Clients writing at once.
const WRITERS: usize = 8;

/// Runs `tools/pg/cluster` with `args`; its standard output.
fn cluster(args: &[&str]) -> String {
    let output = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/pg/cluster"))
        .args(args)
        .output()
        .expect("run tools/pg/cluster");
    assert!(
        output.status.success(),
        "tools/pg/cluster {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A cluster of the test's own, stopped and removed when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    url: String,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = cluster(&["start", &dir.path().join("pg").to_string_lossy()]);
        Self { dir, url }
    }

    fn standby_of(primary: &Cluster) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = cluster(&[
            "standby",
            &primary.port().to_string(),
            &dir.path().join("pg").to_string_lossy(),
        ]);
        Self { dir, url }
    }

    fn path(&self) -> String {
        self.dir.path().join("pg").to_string_lossy().into_owned()
    }

    fn port(&self) -> u16 {
        let config: tokio_postgres::Config = self.url.parse().expect("url");
        config.get_ports()[0]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/pg/cluster"))
            .args(["stop", &self.path()])
            .output();
    }
}

fn serve(url: &str) -> ServerProcess {
    ServerProcess::start_with(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        url,
        "--max-staleness",
        "1s",
    ])
}

/// What the writers had acknowledged: profiles created, profiles opted out.
#[derive(Default)]
struct Acknowledged {
    created: Vec<String>,
    opted_out: Vec<String>,
}

/// `WRITERS` clients creating profiles and opting every other one out,
/// through `addrs` in turn, until `stop`; errors (the database is away) are
/// retried with the next id.
fn write_until(
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Acknowledged>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|writer| {
            let (addrs, stop, acknowledged) =
                (addrs.clone(), Arc::clone(&stop), Arc::clone(&acknowledged));
            tokio::spawn(async move {
                let channel = connect(addrs[writer % addrs.len()]).await;
                let mut profiles = ProfileServiceClient::new(channel.clone());
                let mut consent = ConsentServiceClient::new(channel);
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    let id = format!("w{writer}-{n}");
                    let created = profiles
                        .upsert_profile(UpsertProfileRequest {
                            tenant: TENANT.to_owned(),
                            profile_id: id.clone(),
                            emails: vec![format!("{id}@example.com")],
                            context: ctx(Source::Api),
                            ..Default::default()
                        })
                        .await;
                    if created.is_err() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    acknowledged.lock().expect("lock").created.push(id.clone());
                    if n.is_multiple_of(2) {
                        let opted = consent
                            .opt_out(OptOutRequest {
                                tenant: TENANT.to_owned(),
                                profile_id: id.clone(),
                                all_channels: true,
                                context: ctx(Source::Api),
                                ..Default::default()
                            })
                            .await;
                        if opted.is_ok() {
                            acknowledged.lock().expect("lock").opted_out.push(id);
                        }
                    }
                }
            })
        })
        .collect()
}

/// Checks every acknowledged write through the server at `addr`, waiting
/// (up to a deadline) for it to answer at all.
async fn check_acknowledged(addr: SocketAddr, acknowledged: &Acknowledged) {
    let mut eligibility = EligibilityServiceClient::new(connect(addr).await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let deadline = Instant::now() + Duration::from_secs(60);
    for ids in acknowledged.created.chunks(5_000) {
        let response = loop {
            match eligibility
                .batch_check_eligibility(BatchCheckEligibilityRequest {
                    tenant: TENANT.to_owned(),
                    channel: Channel::Email as i32,
                    profile_ids: ids.to_vec(),
                    ..Default::default()
                })
                .await
            {
                Ok(response) => break response.into_inner(),
                Err(status) => {
                    assert!(
                        Instant::now() < deadline,
                        "the server did not answer again: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        for decision in response.decisions {
            assert!(
                !decision
                    .reasons
                    .contains(&(ExclusionReason::ProfileNotFound as i32)),
                "an acknowledged profile is gone: {decision:?}"
            );
            if acknowledged.opted_out.contains(&decision.profile_id) {
                assert!(
                    decision
                        .reasons
                        .contains(&(ExclusionReason::OptedOutAllChannels as i32)),
                    "an acknowledged opt-out is gone: {decision:?}"
                );
            }
        }
    }
}

fn have_postgres() -> bool {
    pg::database_url().is_some() && Path::new("/usr/lib/postgresql").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_is_on_the_synchronous_standby_after_failover() {
    if !have_postgres() {
        return;
    }
    let primary = Cluster::start();
    let standby = Cluster::standby_of(&primary);
    let mut server = serve(&primary.url);
    let addr = server.wait_listening().await;
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let writers = write_until(vec![addr], Arc::clone(&stop), Arc::clone(&acknowledged));
    // Writes go on; then the primary crashes under them.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cluster(&["crash", &primary.path()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Release);
    for writer in writers {
        writer.await.expect("writer");
    }
    server.kill();
    // The standby takes over; consentd is pointed at it.
    cluster(&["promote", &standby.path()]);
    let mut server = serve(&standby.url);
    let addr = server.wait_listening().await;
    let acknowledged = std::mem::take(&mut *acknowledged.lock().expect("lock"));
    assert!(
        acknowledged.created.len() > 10 && !acknowledged.opted_out.is_empty(),
        "too few writes before the crash to tell anything: {} created, {} opted out",
        acknowledged.created.len(),
        acknowledged.opted_out.len()
    );
    check_acknowledged(addr, &acknowledged).await;
    eprintln!(
        "failover: {} profiles and {} opt-outs acknowledged by the primary, all on the promoted standby",
        acknowledged.created.len(),
        acknowledged.opted_out.len()
    );
    server.kill();
}

/// The token of a new watch of the test tenant on the server at `addr`.
async fn watch_token(addr: SocketAddr) -> String {
    let mut stream = WatchServiceClient::new(connect(addr).await)
        .watch(WatchRequest {
            tenant: TENANT.to_owned(),
            start_token: String::new(),
        })
        .await
        .expect("Watch")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a first message in time")
        .expect("no error")
        .expect("a first message")
        .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_nothing_and_the_replicas_recover() {
    if !have_postgres() {
        return;
    }
    let database = Cluster::start();
    let mut a = serve(&database.url);
    let mut b = serve(&database.url);
    let (addr_a, addr_b) = (a.wait_listening().await, b.wait_listening().await);
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let writers = write_until(
        vec![addr_a, addr_b],
        Arc::clone(&stop),
        Arc::clone(&acknowledged),
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let token = watch_token(addr_a).await;
    // A crash, then the database comes back while the writers go on.
    cluster(&["crash", &database.path()]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cluster(&["restart", &database.path()]);
    let before = acknowledged.lock().expect("lock").created.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().expect("lock").created.len() < before + 20 {
        assert!(
            Instant::now() < deadline,
            "the replicas took no write after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Release);
    for writer in writers {
        writer.await.expect("writer");
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().expect("lock"));
    // Both replicas, by themselves, answer with every acknowledged write,
    // the other replica's last ones included once the staleness bound has
    // passed (a replica that could not read the feed for that long refuses
    // to answer instead).
    tokio::time::sleep(STALENESS_BOUND).await;
    check_acknowledged(addr_a, &acknowledged).await;
    check_acknowledged(addr_b, &acknowledged).await;
    // Each replica saw the restart and rebuilt its index from the database
    // (transaction ids may be given again after a crash).
    for server in [&mut a, &mut b] {
        assert!(
            server
                .lines_so_far()
                .iter()
                .any(|line| line.contains("the decision index was rebuilt from the database")),
            "a replica did not rebuild after the database restarted:\n{}",
            server.stderr_text()
        );
    }
    // A watch token from before the restart cannot be trusted (transaction
    // ids again): resync, on either replica.
    for addr in [addr_a, addr_b] {
        let status = WatchServiceClient::new(connect(addr).await)
            .watch(WatchRequest {
                tenant: TENANT.to_owned(),
                start_token: token.clone(),
            })
            .await
            .expect_err("a token from before the restart");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert_eq!(error_info(&status).reason, "WATCH_RESYNC_REQUIRED");
    }
    eprintln!(
        "database restart: {} profiles and {} opt-outs acknowledged, all read back through both replicas",
        acknowledged.created.len(),
        acknowledged.opted_out.len()
    );
    a.kill();
    b.kill();
}
