//! `bench` and `soak`: durable writes under load, and a bounded soak of
//! mixed writes and batch checks that watches the server's memory.

use std::time::{Duration, Instant};

use clap::Args;
use consentd::pb::{
    self, ChangeContext, Source, consent_service_client::ConsentServiceClient,
    eligibility_service_client::EligibilityServiceClient,
    profile_service_client::ProfileServiceClient,
    quarantine_service_client::QuarantineServiceClient,
};
use hdrhistogram::Histogram;
use tonic::transport::Channel;

use crate::{
    Error,
    eligibility::MESSAGE_BYTES_MAX,
    report::{micros, new_histogram},
    retention::{self, RetentionArgs, create_profiles},
    server::{Server, Target, connect, cpu_time},
};

/// The tenant the load generator writes to.
const TENANT: &str = "load";

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    target: Target,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// HTTP/2 connections the clients share, each carrying the requests of
    /// clients/connections of them as concurrent streams (0: one connection
    /// per client).
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// How long each client count is measured.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before measuring starts, for each client count.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    #[command(flatten)]
    target: Target,
    /// How long the soak runs.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How often a line with throughput and RSS is printed.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    report_every: Duration,
    /// Concurrent writing clients (`growing`, `steady`).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Profiles the writers work on (created first).
    #[arg(long, default_value_t = 10_000)]
    profiles: usize,
    /// Profile ids per batch eligibility check (one checker runs alongside).
    #[arg(long, default_value_t = 1_000)]
    batch_size: usize,
    /// `growing`: consent toggles and new delivery feedback, so every write
    /// adds history and the data grows (and sled's cache with it, up to its
    /// capacity). `steady`: profile rewrites and repeated writes that change
    /// nothing, so the data stays the same size and RSS must level off.
    /// `retention`: constant feedback, subscription, opt-in/out and check
    /// traffic at fixed rates against a server with short retention periods,
    /// to show that what retention bounds levels off (see `retention.rs`).
    #[arg(long, value_enum, default_value = "growing")]
    workload: Workload,
    #[command(flatten)]
    retention: RetentionArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Workload {
    Growing,
    Steady,
    Retention,
}

fn context() -> Option<ChangeContext> {
    Some(ChangeContext {
        source: Source::Api.into(),
        actor: "consentd-load".to_owned(),
        reason: String::new(),
        ..Default::default()
    })
}

async fn upsert(
    profiles: &mut ProfileServiceClient<Channel>,
    id: &str,
    email: &str,
) -> Result<(), Error> {
    profiles
        .upsert_profile(pb::UpsertProfileRequest {
            tenant: TENANT.into(),
            profile_id: id.into(),
            emails: vec![email.into()],
            context: context(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// One durable write that always changes something: an opt-out of e-mail
/// when `out`, an opt-in otherwise.
async fn toggle(
    consent: &mut ConsentServiceClient<Channel>,
    id: &str,
    out: bool,
) -> Result<(), Error> {
    let channel = pb::Channel::Email.into();
    let changed = if out {
        consent
            .opt_out(pb::OptOutRequest {
                tenant: TENANT.into(),
                profile_id: id.into(),
                channel,
                all_channels: false,
                context: context(),
            })
            .await?
            .into_inner()
            .changed
    } else {
        consent
            .opt_in(pb::OptInRequest {
                tenant: TENANT.into(),
                profile_id: id.into(),
                channel,
                all_channels: false,
                context: context(),
            })
            .await?
            .into_inner()
            .changed
    };
    if !changed {
        return Err(format!("{id}: a toggle changed nothing; is another writer on it?").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// bench
// ---------------------------------------------------------------------------

/// The result of one client count.
struct Measured {
    clients: usize,
    /// HTTP/2 connections the clients shared.
    connections: usize,
    /// Server CPU time (user + system) during the measured part, if known.
    server_cpu: Option<Duration>,
    /// This load generator's CPU time during the measured part, if known.
    client_cpu: Option<Duration>,
    writes: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

pub(crate) async fn bench(args: BenchArgs) -> Result<(), Error> {
    let server = Server::start(&args.target)?;
    server.wait_serving(args.target.serving_timeout).await?;
    let mut results = Vec::new();
    for (round, &clients) in args.clients.iter().enumerate() {
        let measured = bench_round(
            &server,
            round,
            clients,
            args.connections,
            args.warmup,
            args.duration,
        )
        .await?;
        eprintln!(
            "{clients} clients: {} writes in {:.1} s",
            measured.writes,
            measured.elapsed.as_secs_f64()
        );
        results.push(measured);
    }
    println!(
        "| clients | connections | durable writes/s | p50 | p99 | max | server CPU per write | client CPU per write |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in &results {
        let per_s = m.writes as f64 / m.elapsed.as_secs_f64();
        let ms = |us: u64| us as f64 / 1000.0;
        let per_write = |cpu: Option<Duration>| {
            cpu.map_or_else(
                || "?".to_owned(),
                |cpu| format!("{:.0} µs", cpu.as_secs_f64() * 1e6 / m.writes.max(1) as f64),
            )
        };
        let (cpu, client_cpu) = (per_write(m.server_cpu), per_write(m.client_cpu));
        println!(
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.1} ms | {cpu} | {client_cpu} |",
            m.clients,
            m.connections,
            per_s,
            ms(m.latency.value_at_quantile(0.5)),
            ms(m.latency.value_at_quantile(0.99)),
            ms(m.latency.max()),
        );
    }
    server.stop().await;
    Ok(())
}

/// `clients` writers, each toggling its own profile's e-mail consent with
/// one request in flight, over `connections` shared connections (0: one
/// each), measured after the warm-up.
async fn bench_round(
    server: &Server,
    round: usize,
    clients: usize,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Measured, Error> {
    let connections = if connections == 0 {
        clients
    } else {
        connections.min(clients)
    };
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect(server.addr).await?);
    }
    let mut writers = Vec::with_capacity(clients);
    for client in 0..clients {
        let channel = channels[client % connections].clone();
        let id = format!("bench-r{round}-c{client}");
        upsert(
            &mut ProfileServiceClient::new(channel.clone()),
            &id,
            &format!("{id}@example.com"),
        )
        .await?;
        writers.push((ConsentServiceClient::new(channel), id));
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|(mut consent, id)| {
            tokio::spawn(async move {
                let mut latency = new_histogram()?;
                let mut out = true;
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        return Ok::<_, Error>(latency);
                    }
                    toggle(&mut consent, &id, out).await?;
                    out = !out;
                    if sent >= measure_from {
                        latency.record(micros(sent.elapsed()))?;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_from = server.cpu_time();
    let client_from = cpu_time("self");
    tokio::time::sleep_until(end.into()).await;
    let cpu_to = server.cpu_time();
    let client_to = cpu_time("self");
    let mut latency = new_histogram()?;
    for task in tasks {
        latency.add(task.await??)?;
    }
    Ok(Measured {
        clients,
        connections,
        server_cpu: cpu_from
            .zip(cpu_to)
            .map(|(from, to)| to.saturating_sub(from)),
        client_cpu: client_from
            .zip(client_to)
            .map(|(from, to)| to.saturating_sub(from)),
        writes: latency.len(),
        elapsed: end.saturating_duration_since(measure_from),
        latency,
    })
}

// ---------------------------------------------------------------------------
// soak
// ---------------------------------------------------------------------------

pub(crate) async fn soak(args: SoakArgs) -> Result<(), Error> {
    if args.workload == Workload::Retention {
        return retention::soak(
            args.target,
            args.duration,
            args.report_every,
            args.profiles,
            args.batch_size,
            args.retention,
        )
        .await;
    }
    if args.profiles == 0 || args.clients == 0 || args.batch_size == 0 {
        return Err("--profiles, --clients and --batch-size must be at least 1".into());
    }
    let server = Server::start(&args.target)?;
    server.wait_serving(args.target.serving_timeout).await?;
    let channel = connect(server.addr).await?;
    eprintln!("creating {} profiles", args.profiles);
    create_profiles(std::slice::from_ref(&channel), args.profiles).await?;

    let start = Instant::now();
    let end = start + args.duration;
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let channel = connect(server.addr).await?;
        let population = args.profiles;
        let clients = args.clients;
        let workload = args.workload;
        tasks.push(tokio::spawn(async move {
            soak_writer(channel, client, clients, population, workload, end).await
        }));
    }
    let checker = {
        let channel = channel.clone();
        let (population, batch) = (args.profiles, args.batch_size);
        tokio::spawn(async move { soak_checker(channel, population, batch, end).await })
    };

    println!("| elapsed | RSS | data on disk | writes (total) | batch checks (total) |");
    println!("|---:|---:|---:|---:|---:|");
    let mut interval = tokio::time::interval(args.report_every);
    loop {
        interval.tick().await;
        let now = Instant::now();
        let rss = server.rss_kib().map_or_else(
            || "?".to_owned(),
            |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
        );
        let data = server.data_bytes().map_or_else(
            || "?".to_owned(),
            |b| format!("{:.1} MiB", b as f64 / 1048576.0),
        );
        println!(
            "| {:.0} s | {rss} | {data} | {} | {} |",
            now.duration_since(start).as_secs_f64(),
            WRITES.load(std::sync::atomic::Ordering::Relaxed),
            CHECKS.load(std::sync::atomic::Ordering::Relaxed),
        );
        if now >= end {
            break;
        }
    }
    for task in tasks {
        task.await??;
    }
    checker.await??;
    server.stop().await;
    Ok(())
}

/// Writes acknowledged during the soak.
static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Batch checks answered during the soak.
static CHECKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Until `end`, on its share of the profiles: `growing` toggles consent and
/// reports delivery feedback (new event ids, so every one is recorded);
/// `steady` rewrites profiles with the same address and repeats an opt-out
/// (durable writes that add nothing).
async fn soak_writer(
    channel: Channel,
    client: usize,
    clients: usize,
    population: usize,
    workload: Workload,
    end: Instant,
) -> Result<(), Error> {
    let mut consent = ConsentServiceClient::new(channel.clone());
    let mut profiles = ProfileServiceClient::new(channel.clone());
    let mut quarantine = QuarantineServiceClient::new(channel);
    let mut rng = fastrand::Rng::with_seed(client as u64);
    // This writer's profiles: client, client + clients, ... so no two writers share one.
    let mine: Vec<usize> = (client..population).step_by(clients).collect();
    if mine.is_empty() {
        return Ok(());
    }
    let mut opted_out = vec![false; mine.len()];
    let mut event = 0u64;
    while Instant::now() < end {
        let pick = rng.usize(..mine.len());
        let id = format!("soak-{}", mine[pick]);
        if workload == Workload::Steady {
            if rng.bool() {
                upsert(&mut profiles, &id, &format!("{id}@example.com")).await?;
            } else {
                consent
                    .opt_out(pb::OptOutRequest {
                        tenant: TENANT.into(),
                        profile_id: id,
                        channel: pb::Channel::Sms.into(),
                        all_channels: false,
                        context: context(),
                    })
                    .await?;
            }
        } else if rng.u32(0..4) == 0 {
            event += 1;
            let kind = if rng.bool() {
                pb::FeedbackKind::SoftBounce
            } else {
                pb::FeedbackKind::Delivered
            };
            quarantine
                .record_delivery_feedback(pb::RecordDeliveryFeedbackRequest {
                    tenant: TENANT.into(),
                    address: format!("{id}@example.com"),
                    kind: kind.into(),
                    event_id: format!("soak-c{client}-e{event}"),
                    context: context(),
                    ..Default::default()
                })
                .await?;
        } else {
            toggle(&mut consent, &id, !opted_out[pick]).await?;
            opted_out[pick] = !opted_out[pick];
        }
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// Checks random batches of profiles on e-mail until `end`.
async fn soak_checker(
    channel: Channel,
    population: usize,
    batch: usize,
    end: Instant,
) -> Result<(), Error> {
    let mut eligibility = EligibilityServiceClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let mut rng = fastrand::Rng::with_seed(u64::MAX);
    while Instant::now() < end {
        let profile_ids = (0..batch)
            .map(|_| format!("soak-{}", rng.usize(..population)))
            .collect();
        let answer = eligibility
            .batch_check_eligibility(pb::BatchCheckEligibilityRequest {
                tenant: TENANT.into(),
                channel: pb::Channel::Email.into(),
                profile_ids,
                ..Default::default()
            })
            .await?
            .into_inner();
        if answer.decisions.len() != batch {
            return Err(format!("{} decisions for {batch} ids", answer.decisions.len()).into());
        }
        CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}
