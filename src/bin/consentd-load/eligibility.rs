//! `batch`, `stream` and `check`: the three eligibility RPCs under load, on
//! the seeded data shape (see `seed`), against consentd or any server with
//! its message shapes.
//!
//! Requests are drawn and encoded before measuring (a pool of distinct
//! ones, reused in turn), sent as raw bytes and answered into skims
//! ([`crate::wire`]): the client's cost per call is small and the same for
//! every server. Every answer is checked: one decision per id sent, and a
//! summary that counts them.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use consentd::pb;
use hdrhistogram::Histogram;
use http::uri::PathAndQuery;
use prost::{Message as _, bytes::Bytes};
use tonic::{Request, client::Grpc, transport::Channel};

use crate::{
    Error,
    report::{Output, Report, cpu_ms_per_1000, cpu_us_per, mib, micros, new_histogram, per_s},
    seed::{self, DirState, PROFILES_DEFAULT, TENANT_DEFAULT},
    server::{CpuMark, RssSampler, Server, Target, connect, consentd_bin},
};

const BATCH_PATH: &str = "/consent.v1.EligibilityService/BatchCheckEligibility";
const STREAM_PATH: &str = "/consent.v1.EligibilityService/StreamEligibility";
const CHECK_PATH: &str = "/consent.v1.EligibilityService/CheckEligibility";
/// Largest message either way (10,000 decisions exceed tonic's 4 MiB default).
pub(crate) const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Seed of the id draws (the Redis peer's `pipe` starts from this one).
const DRAW_SEED: u64 = 0x765_4321;

/// The seeded population the ids are drawn from.
#[derive(Debug, Args)]
pub(crate) struct Population {
    /// Profiles seeded (ids `0..N`); ids are drawn uniformly from
    /// `0..N + N/50`, so 2 % are unknown. Default: N of the seed in
    /// --data-dir, else 1,000,000. Without --addr, a missing seed is made
    /// first (see `seed`).
    #[arg(long)]
    profiles: Option<u64>,
    /// The tenant of the profiles.
    #[arg(long, default_value = TENANT_DEFAULT)]
    tenant: String,
}

/// How much of each decision to ask for (`view`, AIP-157).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum View {
    /// `DECISION_VIEW_BASIC`: verdict and primary reason, no addresses.
    Basic,
    /// `DECISION_VIEW_FULL`: every field.
    Full,
}

impl View {
    fn wire(self) -> i32 {
        match self {
            View::Basic => pb::DecisionView::Basic.into(),
            View::Full => pb::DecisionView::Full.into(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            View::Basic => "basic",
            View::Full => "full",
        }
    }
}

/// Draws profile ids uniformly from `0..N + N/50` with the Redis peer's xorshift.
#[derive(Debug)]
struct Draw {
    state: u64,
    range: u64,
}

impl Draw {
    fn new(profiles: u64, stream: u64) -> Self {
        Self {
            state: DRAW_SEED + stream,
            range: (profiles + profiles / 50).max(1),
        }
    }

    fn id(&mut self) -> String {
        (seed::rng(&mut self.state) % self.range).to_string()
    }

    fn ids(&mut self, count: usize) -> Vec<String> {
        (0..count).map(|_| self.id()).collect()
    }
}

/// The server to load, ready, with the population's size: without --addr,
/// `consentd serve` on the seed directory, seeded first if needed.
async fn prepare(
    target: &mut Target,
    population: &Population,
) -> Result<(Server, u64, Option<Duration>), Error> {
    let tenant = &population.tenant;
    let profiles = if target.addr.is_some() {
        population.profiles.unwrap_or(PROFILES_DEFAULT)
    } else {
        let bin = consentd_bin(target.server_bin.as_deref())?;
        let dir = match &target.data_dir {
            Some(dir) => dir.clone(),
            None => {
                let dir =
                    seed::default_dir(population.profiles.unwrap_or(PROFILES_DEFAULT), tenant);
                target.data_dir = Some(dir.clone());
                dir
            }
        };
        match seed::dir_state(&dir) {
            DirState::Seeded {
                profiles,
                tenant: seeded,
            } if population.profiles.is_none_or(|n| n == profiles) && &seeded == tenant => profiles,
            DirState::Other => {
                let profiles = population.profiles.unwrap_or(PROFILES_DEFAULT);
                eprintln!(
                    "note: {} is not a seed of consentd-load; its data is used as it is, \
                     with ids drawn from 0..{}",
                    dir.display(),
                    profiles + profiles / 50
                );
                profiles
            }
            // Missing, empty, or another seed (which `ensure` refuses).
            _ => {
                let profiles = population.profiles.unwrap_or(PROFILES_DEFAULT);
                seed::ensure(&dir, profiles, tenant, &bin, false)?;
                profiles
            }
        }
    };
    let server = Server::start(target)?;
    let serving = server.wait_serving(target.serving_timeout).await?;
    if let Some(serving) = serving {
        eprintln!("serving {:.2} s after start", serving.as_secs_f64());
    }
    Ok((server, profiles, serving))
}

fn client(channel: Channel) -> Grpc<Channel> {
    Grpc::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX)
}

async fn channels(server: &Server, connections: usize) -> Result<Vec<Channel>, Error> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect(server.addr).await?);
    }
    Ok(channels)
}

/// The measured part of a timed run: calls that complete inside it count.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    end: Instant,
}

impl Window {
    fn after(warmup: Duration, duration: Duration) -> Self {
        let from = Instant::now() + warmup;
        Self {
            from,
            end: from + duration,
        }
    }
}

/// One in-flight slot of a timed run: calls `path` with requests `first`,
/// `first + step`, ... of `pool` (round and round) until the window ends,
/// skims every answer and hands it to `tally` (with whether it completed
/// inside the window). Returns the latencies of the calls inside the window
/// and the accumulator.
#[allow(clippy::too_many_arguments)]
async fn call_until<T: Send + Sync + 'static, A>(
    mut grpc: Grpc<Channel>,
    pool: Arc<Vec<Bytes>>,
    path: &'static str,
    skim: fn(&[u8]) -> Result<T, String>,
    first: usize,
    step: usize,
    window: Window,
    mut acc: A,
    tally: fn(&mut A, T, bool) -> Result<(), String>,
) -> Result<(Histogram<u64>, A), Error> {
    let mut latency = new_histogram()?;
    let codec = crate::wire::Raw::new(skim);
    let mut next = first;
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            return Ok((latency, acc));
        }
        let request = pool[next % pool.len()].clone();
        next += step;
        grpc.ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let answer = grpc
            .unary(
                Request::new(request),
                PathAndQuery::from_static(path),
                codec,
            )
            .await?
            .into_inner();
        let done = Instant::now();
        let inside = done >= window.from && done <= window.end;
        tally(&mut acc, answer, inside)?;
        if inside {
            latency.record(micros(done - sent))?;
        }
    }
}

// ---------------------------------------------------------------------------
// batch
// ---------------------------------------------------------------------------

#[derive(Debug, Args)]
pub(crate) struct BatchArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    population: Population,
    /// Profile ids per BatchCheckEligibility call.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// HTTP/2 connections the calls share.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// How long the measured part lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before the measured part.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// How much of each decision to ask for.
    #[arg(long, value_enum, default_value = "full")]
    view: View,
    /// Distinct batches drawn and encoded before measuring, sent in turn.
    #[arg(long, default_value_t = 64)]
    pool: usize,
    #[command(flatten)]
    output: Output,
}

/// What the calls of a batch run answered.
#[derive(Debug, Default)]
struct Decided {
    /// Ids per call, for the check.
    batch: u64,
    calls: u64,
    decisions: u64,
    eligible: u64,
    bytes: u64,
}

fn tally_batch(
    acc: &mut Decided,
    answer: crate::wire::Decisions,
    inside: bool,
) -> Result<(), String> {
    if answer.decisions != acc.batch {
        return Err(format!(
            "{} decisions for {} ids",
            answer.decisions, acc.batch
        ));
    }
    if inside {
        acc.calls += 1;
        acc.decisions += answer.decisions;
        acc.eligible += answer.summary.eligible;
        acc.bytes += answer.bytes as u64;
    }
    Ok(())
}

/// The lines a batch and a stream run share: what the decisions were and
/// what they cost.
fn add_decided(
    report: &mut Report,
    (decisions, eligible, bytes): (u64, u64, u64),
    server_cpu: Option<Duration>,
    client_cpu: Option<Duration>,
) {
    report.add(
        "eligible_pct",
        "eligible (%)",
        format!("{:.2}", 100.0 * eligible as f64 / decisions.max(1) as f64),
    );
    report.add(
        "bytes_per_decision",
        "answer bytes per decision",
        format!("{:.1}", bytes as f64 / decisions.max(1) as f64),
    );
    report.add_opt(
        "server_cpu_ms_per_1000",
        "server CPU per 1,000 decisions (ms)",
        cpu_ms_per_1000(server_cpu, decisions),
    );
    report.add_opt(
        "client_cpu_ms_per_1000",
        "client CPU per 1,000 decisions (ms)",
        cpu_ms_per_1000(client_cpu, decisions),
    );
}

pub(crate) async fn batch(mut args: BatchArgs) -> Result<(), Error> {
    if args.batch == 0 || args.in_flight == 0 || args.connections == 0 || args.pool == 0 {
        return Err("--batch, --in-flight, --connections and --pool must be at least 1".into());
    }
    let (server, profiles, serving) = prepare(&mut args.target, &args.population).await?;
    let mut draw = Draw::new(profiles, 0);
    let pool: Arc<Vec<Bytes>> = Arc::new(
        (0..args.pool)
            .map(|_| {
                Bytes::from(
                    pb::BatchCheckEligibilityRequest {
                        tenant: args.population.tenant.clone(),
                        channel: pb::Channel::Email.into(),
                        profile_ids: draw.ids(args.batch),
                        service_id: String::new(),
                        view: args.view.wire(),
                    }
                    .encode_to_vec(),
                )
            })
            .collect(),
    );
    let channels = channels(&server, args.connections).await?;
    let window = Window::after(args.warmup, args.duration);
    let tasks: Vec<_> = (0..args.in_flight)
        .map(|slot| {
            let grpc = client(channels[slot % channels.len()].clone());
            let acc = Decided {
                batch: args.batch as u64,
                ..Decided::default()
            };
            tokio::spawn(call_until(
                grpc,
                pool.clone(),
                BATCH_PATH,
                crate::wire::skim_decisions,
                slot,
                args.in_flight,
                window,
                acc,
                tally_batch,
            ))
        })
        .collect();
    tokio::time::sleep_until(window.from.into()).await;
    let cpu = CpuMark::now(&server);
    tokio::time::sleep_until(window.end.into()).await;
    let (server_cpu, client_cpu) = cpu.since(&server);
    let rss = server.rss_kib();
    let mut latency = new_histogram()?;
    let mut all = Decided::default();
    for task in tasks {
        let (l, d) = task.await??;
        latency.add(l)?;
        all.calls += d.calls;
        all.decisions += d.decisions;
        all.eligible += d.eligible;
        all.bytes += d.bytes;
    }
    let elapsed = window.end - window.from;
    let mut report = Report::default();
    report.add("mode", "mode", "batch");
    report.add("view", "view", args.view.name());
    report.add("profiles", "profiles", profiles);
    report.add("batch", "ids per call", args.batch);
    report.add("in_flight", "calls in flight", args.in_flight);
    report.add("connections", "connections", args.connections);
    report.add(
        "duration_s",
        "measured (s)",
        format!("{:.1}", elapsed.as_secs_f64()),
    );
    report.add("calls", "calls", all.calls);
    report.add("decisions", "decisions", all.decisions);
    report.add(
        "decisions_per_s",
        "decisions/s",
        per_s(all.decisions, elapsed),
    );
    report.add("calls_per_s", "calls/s", per_s(all.calls, elapsed));
    report.add_latency(&latency);
    add_decided(
        &mut report,
        (all.decisions, all.eligible, all.bytes),
        server_cpu,
        client_cpu,
    );
    report.add_opt(
        "server_rss_mib",
        "server RSS at the end (MiB)",
        rss.map(mib),
    );
    report.add_opt(
        "serving_s",
        "server age when first SERVING (s)",
        serving.map(|d| format!("{:.2}", d.as_secs_f64())),
    );
    report.print(&args.output);
    server.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// stream
// ---------------------------------------------------------------------------

#[derive(Debug, Args)]
pub(crate) struct StreamArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    population: Population,
    /// Recipients in all, shared out among the streams.
    #[arg(long, default_value_t = 10_000_000)]
    recipients: u64,
    /// Profile ids per request chunk.
    #[arg(long, default_value_t = 10_000)]
    chunk: usize,
    /// Concurrent StreamEligibility calls (over one connection each).
    #[arg(long, default_value_t = 2)]
    streams: usize,
    /// How much of each decision to ask for.
    #[arg(long, value_enum, default_value = "full")]
    view: View,
    /// Distinct chunks drawn and encoded before measuring, sent in turn.
    #[arg(long, default_value_t = 64)]
    pool: usize,
    /// How often the server's RSS is sampled during the run.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    #[command(flatten)]
    output: Output,
}

fn stream_chunk(tenant: &str, view: View, ids: Vec<String>) -> Bytes {
    // Every chunk repeats tenant, channel and view (allowed: they must not
    // change), so that any chunk of the pool can come first.
    Bytes::from(
        pb::StreamEligibilityRequest {
            tenant: tenant.to_owned(),
            channel: pb::Channel::Email.into(),
            profile_ids: ids,
            service_id: String::new(),
            view: view.wire(),
        }
        .encode_to_vec(),
    )
}

/// What one stream answered.
#[derive(Debug, Default)]
struct Streamed {
    decisions: u64,
    eligible: u64,
    bytes: u64,
}

/// One StreamEligibility call: `ids` recipients in chunks of `chunk` (the
/// pool's, in turn, then a shorter last one), every answer checked.
async fn one_stream(
    mut grpc: Grpc<Channel>,
    pool: Arc<Vec<Bytes>>,
    remainder: Option<Bytes>,
    stream: usize,
    streams: usize,
    ids: u64,
    chunk: u64,
) -> Result<Streamed, Error> {
    let full = usize::try_from(ids / chunk)?;
    let last = ids % chunk;
    let expected: Vec<u64> = std::iter::repeat_n(chunk, full)
        .chain((last > 0).then_some(last))
        .collect();
    let requests = (0..full)
        .map(move |k| pool[(stream + k * streams) % pool.len()].clone())
        .chain(remainder.filter(|_| last > 0));
    grpc.ready()
        .await
        .map_err(|e| format!("connection not ready: {e}"))?;
    let mut answers = grpc
        .streaming(
            Request::new(tokio_stream::iter(requests)),
            PathAndQuery::from_static(STREAM_PATH),
            crate::wire::Raw::new(crate::wire::skim_decisions),
        )
        .await?
        .into_inner();
    let mut got = Streamed::default();
    let mut index = 0;
    let mut total = crate::wire::Summary::default();
    while let Some(answer) = answers.message().await? {
        let want = expected
            .get(index)
            .copied()
            .ok_or("more answers than chunks")?;
        if answer.decisions != want {
            return Err(format!(
                "stream {stream}, chunk {index}: {} decisions for {want} ids",
                answer.decisions
            )
            .into());
        }
        index += 1;
        got.decisions += answer.decisions;
        got.eligible += answer.summary.eligible;
        got.bytes += answer.bytes as u64;
        total = answer.total;
    }
    if index != expected.len() || total.total != ids {
        return Err(format!(
            "stream {stream}: {index} answers for {} chunks, total_summary {} for {ids} ids",
            expected.len(),
            total.total
        )
        .into());
    }
    Ok(got)
}

pub(crate) async fn stream(mut args: StreamArgs) -> Result<(), Error> {
    if args.chunk == 0 || args.streams == 0 || args.pool == 0 || args.recipients == 0 {
        return Err("--recipients, --chunk, --streams and --pool must be at least 1".into());
    }
    let (server, profiles, serving) = prepare(&mut args.target, &args.population).await?;
    let tenant = &args.population.tenant;
    let mut draw = Draw::new(profiles, 0);
    let pool: Arc<Vec<Bytes>> = Arc::new(
        (0..args.pool)
            .map(|_| stream_chunk(tenant, args.view, draw.ids(args.chunk)))
            .collect(),
    );
    let chunk = args.chunk as u64;
    let streams = args.streams as u64;
    let mut plan = Vec::with_capacity(args.streams);
    for s in 0..args.streams {
        let ids = args.recipients / streams + u64::from((s as u64) < args.recipients % streams);
        let last = usize::try_from(ids % chunk)?;
        let remainder = (last > 0).then(|| stream_chunk(tenant, args.view, draw.ids(last)));
        plan.push((s, ids, remainder, connect(server.addr).await?));
    }
    let rss_before = server.rss_kib();
    let sampler = RssSampler::start(server.pid, args.sample_every);
    let cpu = CpuMark::now(&server);
    let start = Instant::now();
    let tasks: Vec<_> = plan
        .into_iter()
        .map(|(s, ids, remainder, channel)| {
            tokio::spawn(one_stream(
                client(channel),
                pool.clone(),
                remainder,
                s,
                args.streams,
                ids,
                chunk,
            ))
        })
        .collect();
    let mut all = Streamed::default();
    for task in tasks {
        let got = task.await??;
        all.decisions += got.decisions;
        all.eligible += got.eligible;
        all.bytes += got.bytes;
    }
    let elapsed = start.elapsed();
    let (server_cpu, client_cpu) = cpu.since(&server);
    let rss_range = match sampler {
        Some(sampler) => sampler.finish().await,
        None => None,
    };
    let rss_after = server.rss_kib();
    if all.decisions != args.recipients {
        return Err(format!(
            "{} decisions for {} recipients",
            all.decisions, args.recipients
        )
        .into());
    }
    let mut report = Report::default();
    report.add("mode", "mode", "stream");
    report.add("view", "view", args.view.name());
    report.add("profiles", "profiles", profiles);
    report.add("recipients", "recipients", args.recipients);
    report.add("chunk", "ids per chunk", args.chunk);
    report.add("streams", "streams", args.streams);
    report.add(
        "elapsed_s",
        "elapsed (s)",
        format!("{:.2}", elapsed.as_secs_f64()),
    );
    report.add(
        "decisions_per_s",
        "decisions/s",
        per_s(all.decisions, elapsed),
    );
    add_decided(
        &mut report,
        (all.decisions, all.eligible, all.bytes),
        server_cpu,
        client_cpu,
    );
    report.add_opt(
        "server_rss_before_mib",
        "server RSS before (MiB)",
        rss_before.map(mib),
    );
    report.add_opt(
        "server_rss_min_mib",
        "server RSS during, lowest (MiB)",
        rss_range.map(|(lo, _)| mib(lo)),
    );
    report.add_opt(
        "server_rss_max_mib",
        "server RSS during, highest (MiB)",
        rss_range.map(|(_, hi)| mib(hi)),
    );
    report.add_opt(
        "server_rss_after_mib",
        "server RSS after (MiB)",
        rss_after.map(mib),
    );
    report.add_opt(
        "serving_s",
        "server age when first SERVING (s)",
        serving.map(|d| format!("{:.2}", d.as_secs_f64())),
    );
    report.print(&args.output);
    server.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    population: Population,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// HTTP/2 connections the calls share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How long the measured part lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before the measured part.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Distinct requests (one id each) encoded before measuring, sent in turn.
    #[arg(long, default_value_t = 65_536)]
    pool: usize,
    #[command(flatten)]
    output: Output,
}

/// What the calls of a check run answered.
#[derive(Debug, Default)]
struct Checked {
    calls: u64,
    eligible: u64,
}

fn tally_check(
    acc: &mut Checked,
    answer: crate::wire::OneDecision,
    inside: bool,
) -> Result<(), String> {
    if inside {
        acc.calls += 1;
        acc.eligible += u64::from(answer.eligible);
    }
    Ok(())
}

pub(crate) async fn check(mut args: CheckArgs) -> Result<(), Error> {
    if args.in_flight == 0 || args.connections == 0 || args.pool == 0 {
        return Err("--in-flight, --connections and --pool must be at least 1".into());
    }
    let (server, profiles, serving) = prepare(&mut args.target, &args.population).await?;
    let mut draw = Draw::new(profiles, 0);
    let pool: Arc<Vec<Bytes>> = Arc::new(
        (0..args.pool)
            .map(|_| {
                Bytes::from(
                    pb::CheckEligibilityRequest {
                        tenant: args.population.tenant.clone(),
                        profile_id: draw.id(),
                        channel: pb::Channel::Email.into(),
                        service_id: String::new(),
                    }
                    .encode_to_vec(),
                )
            })
            .collect(),
    );
    let channels = channels(&server, args.connections).await?;
    let window = Window::after(args.warmup, args.duration);
    let tasks: Vec<_> = (0..args.in_flight)
        .map(|slot| {
            tokio::spawn(call_until(
                client(channels[slot % channels.len()].clone()),
                pool.clone(),
                CHECK_PATH,
                crate::wire::skim_check,
                slot,
                args.in_flight,
                window,
                Checked::default(),
                tally_check,
            ))
        })
        .collect();
    tokio::time::sleep_until(window.from.into()).await;
    let cpu = CpuMark::now(&server);
    tokio::time::sleep_until(window.end.into()).await;
    let (server_cpu, client_cpu) = cpu.since(&server);
    let rss = server.rss_kib();
    let mut latency = new_histogram()?;
    let mut all = Checked::default();
    for task in tasks {
        let (l, c) = task.await??;
        latency.add(l)?;
        all.calls += c.calls;
        all.eligible += c.eligible;
    }
    let elapsed = window.end - window.from;
    let mut report = Report::default();
    report.add("mode", "mode", "check");
    report.add("profiles", "profiles", profiles);
    report.add("in_flight", "calls in flight", args.in_flight);
    report.add("connections", "connections", args.connections);
    report.add(
        "duration_s",
        "measured (s)",
        format!("{:.1}", elapsed.as_secs_f64()),
    );
    report.add("calls", "calls", all.calls);
    report.add("calls_per_s", "calls/s", per_s(all.calls, elapsed));
    report.add_latency(&latency);
    report.add(
        "eligible_pct",
        "eligible (%)",
        format!(
            "{:.2}",
            100.0 * all.eligible as f64 / all.calls.max(1) as f64
        ),
    );
    report.add_opt(
        "server_cpu_us_per_call",
        "server CPU per call (µs)",
        cpu_us_per(server_cpu, all.calls),
    );
    report.add_opt(
        "client_cpu_us_per_call",
        "client CPU per call (µs)",
        cpu_us_per(client_cpu, all.calls),
    );
    report.add_opt(
        "server_rss_mib",
        "server RSS at the end (MiB)",
        rss.map(mib),
    );
    report.add_opt(
        "serving_s",
        "server age when first SERVING (s)",
        serving.map(|d| format!("{:.2}", d.as_secs_f64())),
    );
    report.print(&args.output);
    server.stop().await;
    Ok(())
}
