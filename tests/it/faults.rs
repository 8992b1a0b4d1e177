//! Faults: a full disk, and SIGTERM under load, against the real binary.
//!
//! Disk full: the data directory is a small tmpfs. Mounting it needs root, so
//! the test is ignored unless asked for (`cargo test -- --include-ignored`,
//! as in CI), and then fails when it cannot mount. A write that cannot be made durable is
//! refused with `UNAVAILABLE` and a message that says so, the server keeps
//! answering reads, and once there is space again a restart finds every
//! acknowledged write intact.
//!
//! A failed flush (an fdatasync error injected in process): every write is
//! refused from then on with `UNAVAILABLE` / `STORAGE_FAILED`, even once the
//! disk would take a flush again; reads and eligibility checks go on; health
//! says NOT_SERVING overall and for the services that write.
//!
//! SIGTERM under load: requests in flight when the signal arrives finish,
//! later calls fail with `UNAVAILABLE` instead of hanging, the process exits
//! 0, and every acknowledged write is there after a restart.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::common::{
    error_info,
    process::{ServerProcess, connect},
};
use consentd::pb::{
    self, ChangeContext, Source, consent_service_client::ConsentServiceClient,
    profile_service_client::ProfileServiceClient,
};
use tonic::{Code, transport::Channel as GrpcChannel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The tmpfs size: room for the empty store and some writes, full soon after.
const TMPFS_SIZE: &str = "2m";
/// Writes tried before the test gives up waiting for the disk to fill.
const FILL_ATTEMPTS_MAX: usize = 50_000;
/// A call that takes longer has hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn context() -> Option<ChangeContext> {
    Some(ChangeContext {
        source: Source::Api.into(),
        actor: "faults".into(),
        reason: String::new(),
        ..Default::default()
    })
}

async fn upsert(
    profiles: &mut ProfileServiceClient<GrpcChannel>,
    tenant: &str,
    id: &str,
    postal: String,
) -> Result<(), tonic::Status> {
    let call = profiles.upsert_profile(pb::UpsertProfileRequest {
        tenant: tenant.into(),
        profile_id: id.into(),
        emails: vec![format!("{id}@example.com")],
        postal_address: postal,
        context: context(),
        ..Default::default()
    });
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => panic!("UpsertProfile {id} hung for {CALL_TIMEOUT:?}"),
    }
}

async fn get_profile(
    profiles: &mut ProfileServiceClient<GrpcChannel>,
    tenant: &str,
    id: &str,
) -> pb::Profile {
    profiles
        .get_profile(pb::GetProfileRequest {
            tenant: tenant.into(),
            profile_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("GetProfile {id}: {e:?}"))
        .into_inner()
        .profile
        .expect("a profile")
}

/// A tmpfs mounted on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one, or says why it cannot (not root, no mount).
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the file system more room (the operator freed space).
    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "remount the tmpfs with size {size}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts a 2 MiB tmpfs"]
async fn a_full_disk_refuses_writes_keeps_reads_and_damages_nothing() {
    let tmpfs = Tmpfs::mount(TMPFS_SIZE)
        .unwrap_or_else(|reason| panic!("cannot mount a tmpfs ({reason}): run the test as root"));
    let data_dir: PathBuf = tmpfs.path().join("data");
    let mut server = ServerProcess::start(&data_dir);
    let addr = server.wait_listening().await;
    let mut profiles = ProfileServiceClient::new(connect(addr).await);

    // Fill the disk: every acknowledged write is remembered.
    let postal = "x".repeat(1000);
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for n in 0..FILL_ATTEMPTS_MAX {
        let id = format!("full-{n}");
        match upsert(&mut profiles, "full", &id, format!("{n} {postal}")).await {
            Ok(()) => acknowledged.push(id),
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let refusal = refusal.unwrap_or_else(|| {
        panic!("{FILL_ATTEMPTS_MAX} writes fitted in a {TMPFS_SIZE} tmpfs; the disk never filled")
    });
    eprintln!(
        "disk full after {} acknowledged writes: {:?} {}",
        acknowledged.len(),
        refusal.code(),
        refusal.message()
    );
    assert!(!acknowledged.is_empty(), "no write fitted at all");
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    // sled meets the full disk while it applies the write (STORAGE_UNAVAILABLE)
    // or in the group's flush (STORAGE_FAILED), as timing has it.
    assert!(
        ["STORAGE_UNAVAILABLE", "STORAGE_FAILED"].contains(&error_info(&refusal).reason.as_str()),
        "{refusal:?}"
    );
    assert!(
        refusal.message().contains("disk full")
            && refusal.message().contains("no write is acknowledged"),
        "the message says the write was not made durable: {refusal:?}"
    );

    // The server stays up: it answers health checks, and reads of stored
    // profiles give the stored value, or UNAVAILABLE when sled would have
    // to rewrite a page to serve them (sled keeps its first I/O error).
    let mut health = HealthClient::new(connect(addr).await);
    let serving = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers with the disk full")
        .into_inner();
    assert_eq!(serving.status(), ServingStatus::Serving);
    let mut read = 0;
    for (n, id) in acknowledged.iter().enumerate() {
        match profiles
            .get_profile(pb::GetProfileRequest {
                tenant: "full".into(),
                profile_id: id.clone(),
            })
            .await
        {
            Ok(response) => {
                let profile = response.into_inner().profile.expect("a profile");
                assert_eq!(profile.postal_address, format!("{n} {postal}"), "{id}");
                read += 1;
            }
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{id}: {status:?}"),
        }
    }
    assert!(
        read > 0,
        "with the disk full, no stored profile could be read"
    );
    eprintln!(
        "with the disk full, {read} of {} stored profiles read back; the rest UNAVAILABLE",
        acknowledged.len()
    );
    let again = upsert(&mut profiles, "full", "full-after", postal.clone())
        .await
        .expect_err("the disk is still full");
    assert_eq!(again.code(), Code::Unavailable, "{again:?}");

    // Space comes back; after a restart every acknowledged write is intact.
    drop(profiles);
    server.kill();
    tmpfs.grow("64m");
    let mut server = ServerProcess::start(&data_dir);
    let addr = server.wait_listening().await;
    let mut profiles = ProfileServiceClient::new(connect(addr).await);
    for (n, id) in acknowledged.iter().enumerate() {
        let profile = get_profile(&mut profiles, "full", id).await;
        assert_eq!(profile.postal_address, format!("{n} {postal}"), "{id}");
    }
    upsert(&mut profiles, "full", "full-after", postal)
        .await
        .expect("with space again, writes are acknowledged");
    drop(profiles);
    server.terminate();
    let (status, stderr) = server.wait_stopped().await;
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
}

/// What one writer had acknowledged before SIGTERM stopped the server.
#[derive(Debug)]
struct Writer {
    profile: String,
    /// The e-mail consent status last acknowledged.
    status: Option<pb::ConsentStatus>,
    /// Consent changes acknowledged (each a history entry).
    changes: u64,
    /// Whether the last call failed, so its outcome is unknown.
    unknown: bool,
    /// The codes of the calls that failed after the signal.
    refused: Vec<Code>,
}

/// Toggles e-mail consent on its own profile until a call fails after
/// `terminated` is set; a failure before it fails the test.
async fn toggle_until_refused(
    channel: GrpcChannel,
    profile: String,
    terminated: Arc<AtomicBool>,
) -> Writer {
    let mut consent = ConsentServiceClient::new(channel);
    let mut writer = Writer {
        profile,
        status: None,
        changes: 0,
        unknown: false,
        refused: Vec::new(),
    };
    loop {
        let out = writer.status != Some(pb::ConsentStatus::OptedOut);
        let channel = pb::Channel::Email.into();
        let profile_id = writer.profile.clone();
        let call = async {
            if out {
                consent
                    .opt_out(pb::OptOutRequest {
                        tenant: "term".into(),
                        profile_id,
                        channel,
                        all_channels: false,
                        context: context(),
                    })
                    .await
                    .map(|r| r.into_inner().changed)
            } else {
                consent
                    .opt_in(pb::OptInRequest {
                        tenant: "term".into(),
                        profile_id,
                        channel,
                        all_channels: false,
                        context: context(),
                    })
                    .await
                    .map(|r| r.into_inner().changed)
            }
        };
        let result = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| panic!("{}: a call hung during shutdown", writer.profile));
        match result {
            Ok(changed) => {
                assert!(changed, "{}: a toggle changed nothing", writer.profile);
                writer.status = Some(if out {
                    pb::ConsentStatus::OptedOut
                } else {
                    pb::ConsentStatus::OptedIn
                });
                writer.changes += 1;
            }
            Err(status) => {
                assert!(
                    terminated.load(Ordering::SeqCst),
                    "{}: failed before SIGTERM: {status:?}",
                    writer.profile
                );
                writer.unknown = true;
                // UNAVAILABLE is what the server (or a refused connection)
                // gives. A call that raced the server's GOAWAY on an open
                // connection is failed by the client library itself
                // (hyper: CANCELLED "connection closed", or INTERNAL "GoAway
                // NO_ERROR"); the server never ran it. Anything else fails.
                let from_transport = std::error::Error::source(&status)
                    .is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some());
                assert!(
                    status.code() == Code::Unavailable || from_transport,
                    "{}: after SIGTERM the server answered {status:?}, not UNAVAILABLE",
                    writer.profile
                );
                writer.refused.push(status.code());
                return writer;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_refuses_new_calls_and_keeps_every_ack() {
    const WRITERS: usize = 16;
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let mut server = ServerProcess::start(data_dir.path());
    let addr = server.wait_listening().await;

    let terminated = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for n in 0..WRITERS {
        let channel = connect(addr).await;
        let profile = format!("term-{n}");
        upsert(
            &mut ProfileServiceClient::new(channel.clone()),
            "term",
            &profile,
            String::new(),
        )
        .await
        .expect("upsert before the signal");
        tasks.push(tokio::spawn(toggle_until_refused(
            channel,
            profile,
            Arc::clone(&terminated),
        )));
    }
    // Let the writers get going: wait until a few hundred writes were made.
    let mut probe = ConsentServiceClient::new(connect(addr).await);
    loop {
        let history = probe
            .list_consent_history(pb::ListConsentHistoryRequest {
                tenant: "term".into(),
                profile_id: "term-0".into(),
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .expect("history while writing")
            .into_inner();
        if history.entries.len() >= 20 {
            break;
        }
        tokio::task::yield_now().await;
    }
    drop(probe);

    terminated.store(true, Ordering::SeqCst);
    server.terminate();
    let mut writers = Vec::new();
    for task in tasks {
        writers.push(task.await.expect("a writer panicked"));
    }
    let (status, stderr) = server.wait_stopped().await;
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
    assert!(stderr.contains("store flushed"), "stderr:\n{stderr}");
    let unavailable = writers
        .iter()
        .filter(|w| w.refused == [Code::Unavailable])
        .count();
    assert!(
        unavailable > 0,
        "no writer saw UNAVAILABLE after SIGTERM: {writers:?}"
    );

    // Every acknowledged write survived.
    let mut server = ServerProcess::start(data_dir.path());
    let addr = server.wait_listening().await;
    let mut consent = ConsentServiceClient::new(connect(addr).await);
    let mut total = 0;
    for writer in &writers {
        let state = consent
            .get_consent(pb::GetConsentRequest {
                tenant: "term".into(),
                profile_id: writer.profile.clone(),
            })
            .await
            .expect("consent after restart")
            .into_inner()
            .consent
            .expect("consent");
        let email = state
            .channels
            .iter()
            .find(|c| c.channel == i32::from(pb::Channel::Email))
            .and_then(|c| c.mark.as_ref())
            .map(|m| m.status());
        let history = consent
            .list_consent_history(pb::ListConsentHistoryRequest {
                tenant: "term".into(),
                profile_id: writer.profile.clone(),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .expect("history after restart")
            .into_inner();
        let len = history.entries.len() as u64;
        if len == writer.changes {
            assert_eq!(
                email.filter(|s| *s != pb::ConsentStatus::NoPreference),
                writer.status,
                "{}: the last acknowledged status",
                writer.profile
            );
        } else {
            // The call that failed at the signal may have been applied: wholly.
            assert!(
                writer.unknown && len == writer.changes + 1,
                "{}: {} changes acknowledged, {len} in the history",
                writer.profile,
                writer.changes
            );
            assert_ne!(
                email, writer.status,
                "{}: the in-flight toggle applied",
                writer.profile
            );
        }
        total += writer.changes;
    }
    eprintln!("SIGTERM under load: {total} acknowledged writes of {WRITERS} writers all survived");
    server.terminate();
    let (status, _) = server.wait_stopped().await;
    assert!(status.success());
}

#[tokio::test]
async fn after_a_failed_flush_writes_are_refused_until_a_restart_and_reads_go_on() {
    use crate::common::{TENANT, get_consent, spawn_app_with_store_options};
    use consentd::store::sled::SledOptions;

    let fail = Arc::new(AtomicBool::new(false));
    let failing = Arc::clone(&fail);
    let app = spawn_app_with_store_options(SledOptions {
        sync_fault: Some(Arc::new(move || {
            if failing.swap(false, Ordering::SeqCst) {
                Err(std::io::Error::other("injected: EIO on fdatasync"))
            } else {
                Ok(())
            }
        })),
        ..SledOptions::default()
    })
    .await;
    let mut profiles = app.profiles.clone();
    upsert(&mut profiles, TENANT, "before", String::new())
        .await
        .expect("a write before the failure");
    fail.store(true, Ordering::SeqCst);
    let failed = upsert(&mut profiles, TENANT, "during", String::new())
        .await
        .expect_err("the write whose flush failed is not acknowledged");
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert_eq!(error_info(&failed).reason, "STORAGE_FAILED");
    // The fault is gone; a flush would succeed, but nothing is acknowledged.
    assert!(!fail.load(Ordering::SeqCst));
    let refused = upsert(&mut profiles, TENANT, "after", String::new())
        .await
        .expect_err("no write after a failed flush");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.message().contains("restarted"), "{refused:?}");
    // Reads go on, and decisions, from what was durable.
    get_consent(&app, "before").await;
    let decision = crate::common::check(&app, "before", pb::Channel::Email).await;
    assert!(decision.eligible, "{decision:?}");
    // Health says so (it looks every 250 ms).
    let health = HealthClient::new(app.channel.clone());
    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_owned();
        async move {
            health
                .check(HealthCheckRequest { service })
                .await
                .expect("health")
                .into_inner()
                .status()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status("").await == ServingStatus::Serving {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health still SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status("consent.v1.ConsentService").await,
        ServingStatus::NotServing
    );
    assert_eq!(
        status("consent.v1.EligibilityService").await,
        ServingStatus::Serving
    );
}
