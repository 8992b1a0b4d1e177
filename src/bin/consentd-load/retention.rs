//! `soak --workload retention`: a fixed population under constant traffic
//! that goes through every retention rule, to show that the server's state
//! levels off.
//!
//! First `--profiles` profiles with one e-mail address each and one service
//! with double opt-in (`soak-news`). Then, until the end, at fixed rates
//! (open loop: each kind has workers on a fixed tick, each with its own
//! share of the population, so that no two workers touch the same profile
//! or address of that kind):
//! - delivery feedback (`--feedback-rate`), each with a new event id and an
//!   event time up to 3 s in the past (slightly out of order, as mail
//!   systems send it), over the population's addresses: 60 % deliveries,
//!   35 % soft bounces (one in ten MAILBOX_FULL), 4 % hard bounces, 1 %
//!   complaints; an address seen quarantined or denylisted is released when
//!   its worker next picks it, 5 s or more later. Every 100th event is sent
//!   again with the same id: it must be ignored (its marker is kept for the
//!   horizon);
//! - subscription steps (`--subscription-rate`), in cycles: Subscribe;
//!   half the time Subscribe again while pending, which supersedes the
//!   token (the old one must then be NOT_FOUND); ConfirmSubscription;
//!   Unsubscribe once more than a fifth of the worker's profiles are active.
//!   One subscription in ten is never confirmed: once its token expired and
//!   a sweep ran, the token must be NOT_FOUND, and the profile is
//!   unsubscribed;
//! - opt-in/opt-out of e-mail (`--toggle-rate`): half of them change the
//!   state (one consent history entry each), half repeat it (nothing is
//!   written);
//! - batch eligibility checks (`--check-rate`, `--batch-size` ids), on
//!   e-mail and on the service by turns.
//!
//! Time is compressed: the server it starts keeps events and markers for
//! `--late-event-horizon` (60 s), tokens for `--confirmation-token-ttl`
//! (60 s), sweeps every `--retention-sweep-interval` (10 s), and gets the
//! quarantine periods scaled down as 14 days are to the horizon (unless
//! `--server-arg` gives them). Every `--report-every` it prints the server's
//! RSS, the data directory and sled's `db` file, writes per second by kind,
//! the consent history entries written so far (the one record that grows by
//! design: it is the legal record) and the records the sweeps deleted. At
//! the end: the totals by kind and, when it started the server, the records
//! left in the store by type (`consentd export`, once the server stopped),
//! and the size of a fresh data directory with the same records (`consentd
//! import` of that export): the live data, without the space sled has not
//! reclaimed yet.
//! It expects a fresh data directory (the default).

use std::{
    collections::{BTreeMap, VecDeque},
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use consentd::pb::{
    self, ChangeContext, Source, consent_service_client::ConsentServiceClient,
    eligibility_service_client::EligibilityServiceClient,
    profile_service_client::ProfileServiceClient,
    quarantine_service_client::QuarantineServiceClient,
    subscription_service_client::SubscriptionServiceClient,
};
use tokio::time::MissedTickBehavior;
use tonic::{Code, transport::Channel};

use crate::{
    Error,
    eligibility::MESSAGE_BYTES_MAX,
    server::{Server, Target, connect, consentd_bin, dir_bytes},
};

/// The tenant the soak writes to.
const TENANT: &str = "load";
/// The service the profiles subscribe to.
const SERVICE: &str = "soak-news";
/// Connections the workers share.
const CONNECTIONS: usize = 4;
/// Workers per kind (each with one call in flight).
const FEEDBACK_WORKERS: usize = 16;
const SUBSCRIPTION_WORKERS: usize = 8;
const TOGGLE_WORKERS: usize = 2;
/// How long an address stays quarantined or denylisted before its worker
/// may release it.
const RELEASE_AFTER: Duration = Duration::from_secs(5);
/// The quarantine periods of `consentd serve` by default, scaled down with
/// the horizon: (flag, default).
const SCALED_PERIODS: [(&str, Duration); 3] = [
    ("--significant-error-interval", Duration::from_secs(86_400)),
    ("--error-reset-period", Duration::from_secs(10 * 86_400)),
    (
        "--mailbox-full-reset-period",
        Duration::from_secs(30 * 86_400),
    ),
];
/// The late-event horizon of `consentd serve` by default.
const HORIZON_DEFAULT: Duration = Duration::from_secs(14 * 86_400);
/// Unexpected answers printed (all are counted).
const UNEXPECTED_PRINTED: u64 = 20;

/// The flags of `--workload retention`.
#[derive(Debug, Args)]
pub(crate) struct RetentionArgs {
    /// `retention`: delivery feedback events per second.
    #[arg(long, default_value_t = 400.0)]
    feedback_rate: f64,
    /// `retention`: subscription steps per second (each a Subscribe,
    /// ConfirmSubscription or Unsubscribe; a step with nothing to do is skipped).
    #[arg(long, default_value_t = 40.0)]
    subscription_rate: f64,
    /// `retention`: opt-in/opt-out calls per second (half change the state).
    #[arg(long, default_value_t = 10.0)]
    toggle_rate: f64,
    /// `retention`: batch eligibility checks per second.
    #[arg(long, default_value_t = 2.0)]
    check_rate: f64,
    /// `retention`: `--late-event-horizon` of the started server.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    late_event_horizon: Duration,
    /// `retention`: `--confirmation-token-ttl` of the started server (and
    /// how the workers time confirmations).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    confirmation_token_ttl: Duration,
    /// `retention`: `--retention-sweep-interval` of the started server.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    retention_sweep_interval: Duration,
    /// `retention`: `--address-log-events-max` of the started server.
    #[arg(long, default_value_t = 100)]
    address_log_events_max: u32,
}

/// What the soak counts, by kind.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// RecordDeliveryFeedback with a new event id (recorded).
    Feedback,
    /// ReleaseAddress of a quarantined or denylisted address.
    Release,
    /// A feedback event sent again with its id: ignored, nothing written.
    Redelivery,
    /// Subscribe of a profile not subscribed (PENDING_CONFIRMATION).
    Subscribe,
    /// Subscribe while pending: a new token supersedes the old one.
    Resubscribe,
    /// ConfirmSubscription with a live token.
    Confirm,
    /// Unsubscribe of an active or pending subscription.
    Unsubscribe,
    /// A superseded or expired token answered NOT_FOUND (its record is gone).
    RetiredToken,
    /// OptIn/OptOut that changed the state.
    ToggleChanged,
    /// OptIn/OptOut that repeated the state (nothing written).
    ToggleRepeated,
    /// BatchCheckEligibility calls.
    Check,
    /// Consent history entries written (toggles and subscription changes).
    History,
    /// Answers other than the expected one, and failed calls.
    Unexpected,
}

const KINDS: usize = 13;

/// Counters by [`Kind`].
#[derive(Debug, Default)]
struct Counts([AtomicU64; KINDS]);

impl Counts {
    fn add(&self, kind: Kind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; KINDS] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }

    /// Counts an unexpected answer; prints the first few.
    fn unexpected(&self, what: &str) {
        let n = self.0[Kind::Unexpected as usize].fetch_add(1, Ordering::Relaxed);
        if n < UNEXPECTED_PRINTED {
            eprintln!("unexpected: {what}");
        }
    }
}

/// What every worker shares.
#[derive(Debug, Clone)]
struct Ctx {
    channels: Arc<Vec<Channel>>,
    counts: Arc<Counts>,
    population: usize,
    end: Instant,
    ttl: Duration,
    sweep: Duration,
    /// Makes event ids unique across runs.
    nonce: u64,
}

impl Ctx {
    fn channel(&self, worker: usize) -> Channel {
        self.channels[worker % self.channels.len()].clone()
    }

    /// This worker's share of the population: worker, worker + workers, ...
    fn share(&self, worker: usize, workers: usize) -> Vec<usize> {
        (worker..self.population).step_by(workers).collect()
    }

    /// A ticker for one of `workers` workers sharing `rate` per second,
    /// their ticks spread evenly; `None` for a zero rate.
    fn ticker(&self, worker: usize, workers: usize, rate: f64) -> Option<tokio::time::Interval> {
        if rate <= 0.0 {
            return None;
        }
        let period = Duration::from_secs_f64(workers as f64 / rate);
        let first = Instant::now() + period.mul_f64(worker as f64 / workers as f64);
        let mut ticker = tokio::time::interval_at(first.into(), period);
        // A server that falls behind slows the soak down (the rates
        // reported are the achieved ones) rather than getting a burst.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Some(ticker)
    }

    /// Waits for the next tick; false once the soak is over.
    async fn next(&self, ticker: &mut tokio::time::Interval) -> bool {
        ticker.tick().await;
        Instant::now() < self.end
    }
}

fn context() -> Option<ChangeContext> {
    Some(ChangeContext {
        source: Source::Api.into(),
        actor: "consentd-load".to_owned(),
        reason: String::new(),
        ..Default::default()
    })
}

fn profile_id(n: usize) -> String {
    format!("soak-{n}")
}

fn email(n: usize) -> String {
    format!("soak-{n}@example.com")
}

/// The flags the started server gets: the retention flags, and the
/// quarantine periods scaled down as 14 days are to the horizon, each
/// unless `--server-arg` gives it.
fn server_args(args: &RetentionArgs, given: &[String]) -> Vec<String> {
    let scale = args.late_event_horizon.as_secs_f64() / HORIZON_DEFAULT.as_secs_f64();
    let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
    let mut flags = vec![
        ("--late-event-horizon", ms(args.late_event_horizon)),
        ("--confirmation-token-ttl", ms(args.confirmation_token_ttl)),
        (
            "--retention-sweep-interval",
            ms(args.retention_sweep_interval),
        ),
        (
            "--address-log-events-max",
            args.address_log_events_max.to_string(),
        ),
    ];
    for (flag, default) in SCALED_PERIODS {
        flags.push((flag, ms(default.mul_f64(scale))));
    }
    flags
        .into_iter()
        .filter(|(flag, _)| !given.iter().any(|arg| arg.starts_with(flag)))
        .map(|(flag, value)| format!("{flag}={value}"))
        .collect()
}

/// Runs the soak: see the module documentation.
pub(crate) async fn soak(
    mut target: Target,
    duration: Duration,
    report_every: Duration,
    population: usize,
    batch_size: usize,
    args: RetentionArgs,
) -> Result<(), Error> {
    if population < FEEDBACK_WORKERS.max(SUBSCRIPTION_WORKERS) || batch_size == 0 {
        return Err(format!(
            "--profiles must be at least {} and --batch-size at least 1",
            FEEDBACK_WORKERS.max(SUBSCRIPTION_WORKERS)
        )
        .into());
    }
    let started_here = target.addr.is_none();
    if started_here {
        let mut flags = server_args(&args, &target.server_arg);
        eprintln!("server flags: {}", flags.join(" "));
        flags.append(&mut target.server_arg);
        target.server_arg = flags;
        // The sweeps log what they deleted at debug level.
        target.log_filter = Some("info,consentd::app=debug".to_owned());
    }
    let mut server = Server::start(&target)?;
    server.wait_serving(target.serving_timeout).await?;
    let mut channels = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        channels.push(connect(server.addr).await?);
    }
    eprintln!("creating {population} profiles and the service {SERVICE}");
    create_profiles(&channels, population).await?;
    let created = SubscriptionServiceClient::new(channels[0].clone())
        .create_service(pb::CreateServiceRequest {
            tenant: TENANT.into(),
            service_id: SERVICE.into(),
            name: "Soak news".into(),
            channel: pb::Channel::Email.into(),
            double_opt_in: true,
            context: context(),
        })
        .await;
    match created {
        Ok(_) => {}
        Err(status) if status.code() == Code::AlreadyExists => {}
        Err(status) => return Err(format!("CreateService: {status}").into()),
    }

    let start = Instant::now();
    let ctx = Ctx {
        channels: Arc::new(channels),
        counts: Arc::default(),
        population,
        end: start + duration,
        ttl: args.confirmation_token_ttl,
        sweep: args.retention_sweep_interval,
        nonce: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let mut tasks = Vec::new();
    for w in 0..FEEDBACK_WORKERS {
        if let Some(ticker) = ctx.ticker(w, FEEDBACK_WORKERS, args.feedback_rate) {
            tasks.push(tokio::spawn(feedback_worker(ctx.clone(), w, ticker)));
        }
    }
    for w in 0..SUBSCRIPTION_WORKERS {
        if let Some(ticker) = ctx.ticker(w, SUBSCRIPTION_WORKERS, args.subscription_rate) {
            tasks.push(tokio::spawn(subscription_worker(ctx.clone(), w, ticker)));
        }
    }
    for w in 0..TOGGLE_WORKERS {
        if let Some(ticker) = ctx.ticker(w, TOGGLE_WORKERS, args.toggle_rate) {
            tasks.push(tokio::spawn(toggle_worker(ctx.clone(), w, ticker)));
        }
    }
    if let Some(ticker) = ctx.ticker(0, 1, args.check_rate) {
        tasks.push(tokio::spawn(checker(ctx.clone(), batch_size, ticker)));
    }

    println!(
        "| elapsed | server RSS | data dir | `db` | feedback/s | subscription/s | opt-in/out/s (changed + repeated) | batch checks/s | history entries | records swept | compactions |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mib = |bytes: Option<u64>| {
        bytes.map_or_else(
            || "?".to_owned(),
            |b| format!("{:.1} MiB", b as f64 / 1048576.0),
        )
    };
    let mut ticker = tokio::time::interval_at((start + report_every).into(), report_every);
    let mut before = ctx.counts.snapshot();
    let mut at = start;
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let counts = ctx.counts.snapshot();
        let secs = now.duration_since(at).as_secs_f64().max(1e-3);
        let rate = |kinds: &[Kind]| {
            kinds
                .iter()
                .map(|&k| counts[k as usize] - before[k as usize])
                .sum::<u64>() as f64
                / secs
        };
        println!(
            "| {:.0} s | {} | {} | {} | {:.0} | {:.1} | {:.1} + {:.1} | {:.1} | {} | {} | {} |",
            now.duration_since(start).as_secs_f64(),
            mib(server.rss_kib().map(|kib| kib * 1024)),
            mib(server.data_bytes()),
            mib(server.db_bytes()),
            rate(&[Kind::Feedback, Kind::Release]),
            rate(&[
                Kind::Subscribe,
                Kind::Resubscribe,
                Kind::Confirm,
                Kind::Unsubscribe
            ]),
            rate(&[Kind::ToggleChanged]),
            rate(&[Kind::ToggleRepeated]),
            rate(&[Kind::Check]),
            counts[Kind::History as usize],
            server.swept(),
            server.compactions(),
        );
        before = counts;
        at = now;
        if now >= ctx.end {
            break;
        }
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = start.elapsed();
    let counts = ctx.counts.snapshot();
    print_totals(&counts, elapsed, server.swept());
    if started_here {
        server.shut_down().await;
        if let Some(dir) = server.data_dir() {
            println!();
            println!(
                "Data directory once the server stopped: {} (`db` {}).",
                mib(server.data_bytes()),
                mib(server.db_bytes()),
            );
            let bin = consentd_bin(target.server_bin.as_deref())?;
            let dir = dir.to_path_buf();
            let census = tokio::task::spawn_blocking(move || census(&bin, &dir)).await??;
            println!();
            println!("| records left, by type (`consentd export`) | count |");
            println!("|---|---:|");
            for (kind, n) in &census.records {
                println!("| {kind} | {n} |");
            }
            println!();
            println!(
                "The export: {}; imported into a fresh data directory: {} (`db` {}).",
                mib(Some(census.export_bytes)),
                mib(Some(census.fresh_bytes)),
                mib(Some(census.fresh_db_bytes)),
            );
        }
    }
    server.stop().await;
    let unexpected = counts[Kind::Unexpected as usize];
    if unexpected > 0 {
        return Err(
            format!("{unexpected} unexpected answers (the first are printed above)").into(),
        );
    }
    Ok(())
}

fn print_totals(counts: &[u64; KINDS], elapsed: Duration, swept: u64) {
    let secs = elapsed.as_secs_f64().max(1e-3);
    println!();
    println!("| kind | calls | per second |");
    println!("|---|---:|---:|");
    for (kind, label) in [
        (Kind::Feedback, "RecordDeliveryFeedback (new event id)"),
        (Kind::Release, "ReleaseAddress"),
        (
            Kind::Redelivery,
            "RecordDeliveryFeedback again (same id: ignored, nothing written)",
        ),
        (Kind::Subscribe, "Subscribe (to PENDING_CONFIRMATION)"),
        (
            Kind::Resubscribe,
            "Subscribe while pending (new token, old record deleted)",
        ),
        (Kind::Confirm, "ConfirmSubscription"),
        (Kind::Unsubscribe, "Unsubscribe"),
        (
            Kind::RetiredToken,
            "ConfirmSubscription with a superseded or expired token: NOT_FOUND",
        ),
        (Kind::ToggleChanged, "OptIn/OptOut that changed the state"),
        (
            Kind::ToggleRepeated,
            "OptIn/OptOut that repeated it (nothing written)",
        ),
        (Kind::Check, "BatchCheckEligibility"),
        (Kind::History, "consent history entries written"),
        (Kind::Unexpected, "unexpected answers"),
    ] {
        let n = counts[kind as usize];
        println!("| {label} | {n} | {:.1} |", n as f64 / secs);
    }
    println!("| records deleted by the retention sweeps (server log) | {swept} | |");
}

/// What the store holds at the end.
struct Census {
    /// Records by type (`consentd export`).
    records: BTreeMap<String, u64>,
    /// Bytes of the export.
    export_bytes: u64,
    /// The data directory and its `db` after `consentd import` of the
    /// export into a fresh one: the same records without the space sled
    /// has not reclaimed.
    fresh_bytes: u64,
    fresh_db_bytes: u64,
}

/// Exports the data directory (no server may hold it), counts the records
/// by their `type`, and imports them into a fresh directory beside it to
/// measure them; removes both copies.
fn census(bin: &Path, dir: &Path) -> Result<Census, Error> {
    let file = dir.with_extension("export.jsonl");
    let fresh = dir.with_extension("reimported");
    let result = census_via(bin, dir, &file, &fresh);
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir_all(&fresh);
    result
}

fn census_via(bin: &Path, dir: &Path, file: &Path, fresh: &Path) -> Result<Census, Error> {
    let run = |args: &[&std::ffi::OsStr]| -> Result<(), Error> {
        let status = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("consentd {:?}: {status}", args.first()).into())
        }
    };
    run(&[
        "export".as_ref(),
        "--data-dir".as_ref(),
        dir.as_os_str(),
        "--output".as_ref(),
        file.as_os_str(),
    ])?;
    let mut records = BTreeMap::new();
    for line in BufReader::new(std::fs::File::open(file)?).lines() {
        let line = line?;
        let kind = line
            .split("\"type\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("?");
        if kind != "header" {
            *records.entry(kind.to_owned()).or_insert(0) += 1;
        }
    }
    let _ = std::fs::remove_dir_all(fresh);
    run(&[
        "import".as_ref(),
        "--data-dir".as_ref(),
        fresh.as_os_str(),
        file.as_os_str(),
    ])?;
    Ok(Census {
        records,
        export_bytes: std::fs::metadata(file)?.len(),
        fresh_bytes: dir_bytes(fresh),
        fresh_db_bytes: super::server::db_bytes(fresh).unwrap_or(0),
    })
}

/// Delivery feedback over this worker's addresses; see the module documentation.
async fn feedback_worker(ctx: Ctx, worker: usize, mut ticker: tokio::time::Interval) {
    let mut quarantine = QuarantineServiceClient::new(ctx.channel(worker));
    let mine = ctx.share(worker, FEEDBACK_WORKERS);
    let mut blocked_since: Vec<Option<Instant>> = vec![None; mine.len()];
    let mut rng = fastrand::Rng::with_seed(0xFEED_0000 + worker as u64);
    let mut sent = 0u64;
    let mut last: Option<(String, String)> = None;
    let counts = &ctx.counts;
    while ctx.next(&mut ticker).await {
        sent += 1;
        if sent.is_multiple_of(100)
            && let Some((address, event_id)) = last.take()
        {
            let request = feedback_request(address, event_id, pb::FeedbackKind::Delivered, 0);
            match quarantine.record_delivery_feedback(request).await {
                Ok(answer) if !answer.get_ref().recorded => counts.add(Kind::Redelivery),
                Ok(_) => counts.unexpected("an event sent again with its id was recorded again"),
                Err(status) => counts.unexpected(&format!("RecordDeliveryFeedback: {status}")),
            }
            continue;
        }
        let i = rng.usize(..mine.len());
        let address = email(mine[i]);
        if blocked_since[i].is_some_and(|since| since.elapsed() >= RELEASE_AFTER) {
            let released = quarantine
                .release_address(pb::ReleaseAddressRequest {
                    tenant: TENANT.into(),
                    address,
                    context: context(),
                    ..Default::default()
                })
                .await;
            match released {
                Ok(answer) if answer.get_ref().changed => {
                    counts.add(Kind::Release);
                    blocked_since[i] = None;
                }
                Ok(_) => counts.unexpected("releasing a quarantined address changed nothing"),
                Err(status) => counts.unexpected(&format!("ReleaseAddress: {status}")),
            }
            continue;
        }
        let (kind, reason) = match rng.u32(0..100) {
            0..60 => (
                pb::FeedbackKind::Delivered,
                pb::DeliveryErrorReason::Unspecified,
            ),
            60..95 if rng.u32(0..10) == 0 => (
                pb::FeedbackKind::SoftBounce,
                pb::DeliveryErrorReason::MailboxFull,
            ),
            60..95 => (
                pb::FeedbackKind::SoftBounce,
                pb::DeliveryErrorReason::Unreachable,
            ),
            95..99 => (
                pb::FeedbackKind::HardBounce,
                pb::DeliveryErrorReason::UserUnknown,
            ),
            _ => (
                pb::FeedbackKind::Complaint,
                pb::DeliveryErrorReason::Unspecified,
            ),
        };
        let event_id = format!("soak-{}-w{worker}-e{sent}", ctx.nonce);
        let mut request =
            feedback_request(address.clone(), event_id.clone(), kind, rng.u64(0..3000));
        request.error_reason = reason.into();
        match quarantine.record_delivery_feedback(request).await {
            Ok(answer) if answer.get_ref().recorded => {
                counts.add(Kind::Feedback);
                let status = answer
                    .get_ref()
                    .state
                    .as_ref()
                    .map_or(pb::AddressStatus::Unspecified, |s| s.status());
                let blocked = matches!(
                    status,
                    pb::AddressStatus::Quarantined | pb::AddressStatus::Denylisted
                );
                if !blocked {
                    blocked_since[i] = None;
                } else if blocked_since[i].is_none() {
                    blocked_since[i] = Some(Instant::now());
                }
                last = Some((address, event_id));
            }
            Ok(_) => counts.unexpected("an event with a new id was not recorded"),
            Err(status) => counts.unexpected(&format!("RecordDeliveryFeedback: {status}")),
        }
    }
}

/// A feedback event that happened `late_ms` before now.
fn feedback_request(
    address: String,
    event_id: String,
    kind: pb::FeedbackKind,
    late_ms: u64,
) -> pb::RecordDeliveryFeedbackRequest {
    let at = SystemTime::now()
        .checked_sub(Duration::from_millis(late_ms))
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    pb::RecordDeliveryFeedbackRequest {
        tenant: TENANT.into(),
        address,
        kind: kind.into(),
        event_id,
        occurred_at: Some(prost_types::Timestamp {
            seconds: i64::try_from(at.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(at.subsec_nanos()).unwrap_or(0),
        }),
        context: Some(ChangeContext {
            source: Source::DeliveryFeedback.into(),
            actor: "consentd-load".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pending subscription and the token it waits for.
#[derive(Debug)]
struct Pending {
    profile: usize,
    token: String,
    issued: Instant,
}

/// Subscription calls for one worker's profiles.
struct Subscriptions {
    client: SubscriptionServiceClient<Channel>,
    counts: Arc<Counts>,
}

impl Subscriptions {
    /// Subscribe; the token of the pending subscription (a new one each
    /// time), or `None` after an unexpected answer (counted).
    async fn subscribe(&mut self, profile: usize) -> Option<String> {
        let answer = self
            .client
            .subscribe(pb::SubscribeRequest {
                tenant: TENANT.into(),
                profile_id: profile_id(profile),
                service_id: SERVICE.into(),
                context: context(),
            })
            .await;
        match answer {
            Ok(answer) => {
                let answer = answer.into_inner();
                let pending = answer.subscription.as_ref().map(|s| s.status())
                    == Some(pb::SubscriptionStatus::PendingConfirmation);
                if answer.changed && pending && !answer.confirmation_token.is_empty() {
                    Some(answer.confirmation_token)
                } else {
                    self.counts
                        .unexpected("Subscribe did not answer a pending subscription with a token");
                    None
                }
            }
            Err(status) => {
                self.counts.unexpected(&format!("Subscribe: {status}"));
                None
            }
        }
    }

    /// ConfirmSubscription: Ok(()) when confirmed, Err(code) when refused.
    async fn confirm(&mut self, token: &str) -> Result<(), Code> {
        self.client
            .confirm_subscription(pb::ConfirmSubscriptionRequest {
                tenant: TENANT.into(),
                token: token.to_owned(),
                context: context(),
            })
            .await
            .map(|_| ())
            .map_err(|status| status.code())
    }

    /// A token whose record must be gone (superseded, or expired and swept).
    async fn confirm_retired(&mut self, token: &str, why: &str) {
        match self.confirm(token).await {
            Err(Code::NotFound) => self.counts.add(Kind::RetiredToken),
            Err(code) => self
                .counts
                .unexpected(&format!("ConfirmSubscription with a {why} token: {code:?}")),
            Ok(()) => self
                .counts
                .unexpected(&format!("ConfirmSubscription with a {why} token worked")),
        }
    }

    /// Unsubscribe; true when it changed the subscription.
    async fn unsubscribe(&mut self, profile: usize) -> bool {
        let answer = self
            .client
            .unsubscribe(pb::UnsubscribeRequest {
                tenant: TENANT.into(),
                profile_id: profile_id(profile),
                service_id: SERVICE.into(),
                context: context(),
            })
            .await;
        match answer {
            Ok(answer) if answer.get_ref().changed => {
                self.counts.add(Kind::Unsubscribe);
                self.counts.add(Kind::History);
                true
            }
            Ok(_) => {
                self.counts.unexpected("Unsubscribe changed nothing");
                false
            }
            Err(status) => {
                self.counts.unexpected(&format!("Unsubscribe: {status}"));
                false
            }
        }
    }
}

/// Subscription cycles over this worker's profiles: each tick takes the
/// next step of four (subscribe, maybe subscribe again, confirm,
/// unsubscribe), skipping one with nothing to do.
async fn subscription_worker(ctx: Ctx, worker: usize, mut ticker: tokio::time::Interval) {
    let mut calls = Subscriptions {
        client: SubscriptionServiceClient::new(ctx.channel(worker)),
        counts: Arc::clone(&ctx.counts),
    };
    let counts = Arc::clone(&ctx.counts);
    let mut idle = ctx.share(worker, SUBSCRIPTION_WORKERS);
    let active_target = idle.len() / 5;
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut abandoned: VecDeque<Pending> = VecDeque::new();
    let mut active: VecDeque<usize> = VecDeque::new();
    let mut rng = fastrand::Rng::with_seed(0x5AB5_0000 + worker as u64);
    // Confirm only a token this much younger than its expiry.
    let confirm_before = ctx.ttl.saturating_sub(Duration::from_secs(5));
    // An abandoned token is expired and swept after this.
    let swept_after = ctx.ttl + 2 * ctx.sweep + Duration::from_secs(5);
    let mut step = 0u64;
    while ctx.next(&mut ticker).await {
        step += 1;
        match step % 4 {
            // A new subscription.
            0 if !idle.is_empty() => {
                let profile = idle.swap_remove(rng.usize(..idle.len()));
                let Some(token) = calls.subscribe(profile).await else {
                    idle.push(profile);
                    continue;
                };
                counts.add(Kind::Subscribe);
                counts.add(Kind::History);
                let entry = Pending {
                    profile,
                    token,
                    issued: Instant::now(),
                };
                if rng.u32(0..10) == 0 {
                    abandoned.push_back(entry);
                } else {
                    pending.push_back(entry);
                }
            }
            // Half the time, Subscribe again while pending: a new token.
            1 if !pending.is_empty() && rng.bool() => {
                let j = rng.usize(..pending.len());
                if let Some(token) = calls.subscribe(pending[j].profile).await {
                    counts.add(Kind::Resubscribe);
                    let old = std::mem::replace(&mut pending[j].token, token);
                    pending[j].issued = Instant::now();
                    calls.confirm_retired(&old, "superseded").await;
                }
            }
            // Confirm the oldest pending subscription (or, with a token
            // too old, send a new one); or end an abandoned one whose token
            // expired and was swept.
            2 => {
                if let Some(entry) = pending.pop_front() {
                    if entry.issued.elapsed() < confirm_before {
                        match calls.confirm(&entry.token).await {
                            Ok(()) => {
                                counts.add(Kind::Confirm);
                                counts.add(Kind::History);
                                active.push_back(entry.profile);
                            }
                            Err(code) => {
                                counts.unexpected(&format!("ConfirmSubscription: {code:?}"));
                                pending.push_back(entry);
                            }
                        }
                    } else if let Some(token) = calls.subscribe(entry.profile).await {
                        counts.add(Kind::Resubscribe);
                        pending.push_back(Pending {
                            profile: entry.profile,
                            token,
                            issued: Instant::now(),
                        });
                    } else {
                        pending.push_back(entry);
                    }
                } else if abandoned
                    .front()
                    .is_some_and(|entry| entry.issued.elapsed() >= swept_after)
                    && let Some(entry) = abandoned.pop_front()
                {
                    calls.confirm_retired(&entry.token, "expired").await;
                    if calls.unsubscribe(entry.profile).await {
                        idle.push(entry.profile);
                    } else {
                        abandoned.push_back(entry);
                    }
                }
            }
            // End the oldest active subscription, above a fifth of the profiles.
            3 if active.len() > active_target => {
                if let Some(profile) = active.pop_front() {
                    if calls.unsubscribe(profile).await {
                        idle.push(profile);
                    } else {
                        active.push_back(profile);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Opt-in/opt-out of e-mail over this worker's profiles: half of them
/// change the state, half repeat it.
async fn toggle_worker(ctx: Ctx, worker: usize, mut ticker: tokio::time::Interval) {
    let mut consent = ConsentServiceClient::new(ctx.channel(worker));
    let mine = ctx.share(worker, TOGGLE_WORKERS);
    // Whether each profile is opted out of e-mail, once set here.
    let mut opted_out: Vec<Option<bool>> = vec![None; mine.len()];
    let mut rng = fastrand::Rng::with_seed(0x7066_0000 + worker as u64);
    let counts = &ctx.counts;
    while ctx.next(&mut ticker).await {
        let i = rng.usize(..mine.len());
        let (out, expect_change) = match opted_out[i] {
            None => (true, None),
            Some(out) if rng.bool() => (!out, Some(true)),
            Some(out) => (out, Some(false)),
        };
        let id = profile_id(mine[i]);
        let channel = pb::Channel::Email.into();
        let changed = if out {
            consent
                .opt_out(pb::OptOutRequest {
                    tenant: TENANT.into(),
                    profile_id: id,
                    channel,
                    all_channels: false,
                    context: context(),
                })
                .await
                .map(|answer| answer.into_inner().changed)
        } else {
            consent
                .opt_in(pb::OptInRequest {
                    tenant: TENANT.into(),
                    profile_id: id,
                    channel,
                    all_channels: false,
                    context: context(),
                })
                .await
                .map(|answer| answer.into_inner().changed)
        };
        match changed {
            Ok(changed) if expect_change.is_none_or(|expected| expected == changed) => {
                opted_out[i] = Some(out);
                if changed {
                    counts.add(Kind::ToggleChanged);
                    counts.add(Kind::History);
                } else {
                    counts.add(Kind::ToggleRepeated);
                }
            }
            Ok(changed) => counts.unexpected(&format!(
                "an opt-{} answered changed={changed}",
                if out { "out" } else { "in" }
            )),
            Err(status) => counts.unexpected(&format!("OptIn/OptOut: {status}")),
        }
    }
}

/// Batch checks of random profiles, on e-mail and on the service by turns.
async fn checker(ctx: Ctx, batch: usize, mut ticker: tokio::time::Interval) {
    let mut eligibility = EligibilityServiceClient::new(ctx.channel(0))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let mut rng = fastrand::Rng::with_seed(0xC4EC_0000);
    let mut on_service = false;
    while ctx.next(&mut ticker).await {
        on_service = !on_service;
        let profile_ids = (0..batch)
            .map(|_| profile_id(rng.usize(..ctx.population)))
            .collect();
        let mut request = pb::BatchCheckEligibilityRequest {
            tenant: TENANT.into(),
            profile_ids,
            ..Default::default()
        };
        if on_service {
            request.service_id = SERVICE.into();
        } else {
            request.channel = pb::Channel::Email.into();
        }
        match eligibility.batch_check_eligibility(request).await {
            Ok(answer) if answer.get_ref().decisions.len() == batch => ctx.counts.add(Kind::Check),
            Ok(answer) => ctx.counts.unexpected(&format!(
                "{} decisions for {batch} ids",
                answer.get_ref().decisions.len()
            )),
            Err(status) => ctx
                .counts
                .unexpected(&format!("BatchCheckEligibility: {status}")),
        }
    }
}

/// Creates (or rewrites) profiles `soak-0..n`, each with one e-mail
/// address, 64 at a time over the given connections.
pub(crate) async fn create_profiles(channels: &[Channel], n: usize) -> Result<(), Error> {
    const IN_FLIGHT: usize = 64;
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|task| {
            let mut profiles = ProfileServiceClient::new(channels[task % channels.len()].clone());
            tokio::spawn(async move {
                for i in (task..n).step_by(IN_FLIGHT) {
                    profiles
                        .upsert_profile(pb::UpsertProfileRequest {
                            tenant: TENANT.into(),
                            profile_id: profile_id(i),
                            emails: vec![email(i)],
                            context: context(),
                            ..Default::default()
                        })
                        .await?;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}
