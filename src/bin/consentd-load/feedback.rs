//! `feedback`: RecordDeliveryFeedback for one hot address, as a mail system
//! reports a busy recipient: `--events` events with unique ids, event times
//! 1 ms apart ending now, sent `--in-flight` at a time, so that they arrive
//! slightly out of order. With `--late`, every event happened 1 ms before
//! the one sent before it: each arrives late.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use consentd::pb;
use hdrhistogram::Histogram;
use http::uri::PathAndQuery;
use prost::{Message as _, bytes::Bytes};
use tonic::{Request, client::Grpc, transport::Channel};

use crate::{
    Error,
    report::{Output, Report, cpu_us_per, mib, micros, new_histogram, per_s},
    seed::TENANT_DEFAULT,
    server::{CpuMark, Server, Target, connect},
    wire::{Raw, Recorded, skim_feedback},
};

const FEEDBACK_PATH: &str = "/consent.v1.QuarantineService/RecordDeliveryFeedback";

#[derive(Debug, Args)]
pub(crate) struct FeedbackArgs {
    #[command(flatten)]
    target: Target,
    /// Events to send, each with its own event id.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Events in flight at once.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// HTTP/2 connections the calls share.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Every event happened before all those sent before it.
    #[arg(long)]
    late: bool,
    /// The hot address (default: `hot-<start time in ms>@example.com`, new
    /// for each run, so that runs do not add up on one address).
    #[arg(long)]
    address: Option<String>,
    /// The tenant.
    #[arg(long, default_value = TENANT_DEFAULT)]
    tenant: String,
    /// Stop sending after this long, and report what was done.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    time_limit: Duration,
    #[command(flatten)]
    output: Output,
}

/// The kinds sent in turn: mostly deliveries and soft bounces (a hard
/// bounce or a complaint would end the address's story at once).
const KINDS: [pb::FeedbackKind; 4] = [
    pb::FeedbackKind::SoftBounce,
    pb::FeedbackKind::Delivered,
    pb::FeedbackKind::Ignored,
    pb::FeedbackKind::Delivered,
];

/// What the sent events were answered.
#[derive(Debug, Default)]
struct Answered {
    sent: u64,
    recorded: u64,
    in_arrival_order: u64,
}

/// One in-flight slot: takes the next event to send until none is left or
/// the time limit passes.
async fn sender(
    mut grpc: Grpc<Channel>,
    requests: Arc<Vec<Bytes>>,
    next: Arc<AtomicUsize>,
    stop_at: Instant,
) -> Result<(Histogram<u64>, Answered), Error> {
    let mut latency = new_histogram()?;
    let mut answered = Answered::default();
    let codec = Raw::new(skim_feedback);
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(request) = requests.get(index) else {
            break;
        };
        let sent = Instant::now();
        if sent >= stop_at {
            break;
        }
        grpc.ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let answer: Recorded = grpc
            .unary(
                Request::new(request.clone()),
                PathAndQuery::from_static(FEEDBACK_PATH),
                codec,
            )
            .await?
            .into_inner();
        latency.record(micros(sent.elapsed()))?;
        answered.sent += 1;
        answered.recorded += u64::from(answer.recorded);
        answered.in_arrival_order += u64::from(answer.in_arrival_order);
    }
    Ok((latency, answered))
}

pub(crate) async fn feedback(args: FeedbackArgs) -> Result<(), Error> {
    if args.events == 0 || args.in_flight == 0 || args.connections == 0 {
        return Err("--events, --in-flight and --connections must be at least 1".into());
    }
    let server = Server::start(&args.target)?;
    let serving = server.wait_serving(args.target.serving_timeout).await?;
    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let address = args
        .address
        .clone()
        .unwrap_or_else(|| format!("hot-{now_ms}@example.com"));
    let events = i64::try_from(args.events)?;
    let requests: Arc<Vec<Bytes>> = Arc::new(
        (0..events)
            .map(|i| {
                // In order: 1 ms apart, the last one now. Late: each one
                // 1 ms before the one sent before it.
                let at_ms = if args.late {
                    now_ms - i
                } else {
                    now_ms - (events - 1 - i)
                };
                let kind = KINDS[usize::try_from(i).unwrap_or(0) % KINDS.len()];
                let error_reason = if kind == pb::FeedbackKind::SoftBounce {
                    pb::DeliveryErrorReason::Unreachable
                } else {
                    pb::DeliveryErrorReason::Unspecified
                };
                Bytes::from(
                    pb::RecordDeliveryFeedbackRequest {
                        tenant: args.tenant.clone(),
                        address: address.clone(),
                        address_type: pb::AddressType::Unspecified.into(),
                        kind: kind.into(),
                        error_reason: error_reason.into(),
                        event_id: format!("load-{now_ms}-{i}"),
                        occurred_at: Some(prost_types::Timestamp {
                            seconds: at_ms.div_euclid(1000),
                            nanos: i32::try_from(at_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
                        }),
                        context: Some(pb::ChangeContext {
                            source: pb::Source::DeliveryFeedback.into(),
                            actor: "consentd-load".to_owned(),
                            ..Default::default()
                        }),
                    }
                    .encode_to_vec(),
                )
            })
            .collect(),
    );
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        channels.push(connect(server.addr).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = CpuMark::now(&server);
    let start = Instant::now();
    let stop_at = start + args.time_limit;
    let tasks: Vec<_> = (0..args.in_flight)
        .map(|slot| {
            let grpc = Grpc::new(channels[slot % channels.len()].clone());
            tokio::spawn(sender(grpc, requests.clone(), next.clone(), stop_at))
        })
        .collect();
    let mut latency = new_histogram()?;
    let mut all = Answered::default();
    for task in tasks {
        let (l, a) = task.await??;
        latency.add(l)?;
        all.sent += a.sent;
        all.recorded += a.recorded;
        all.in_arrival_order += a.in_arrival_order;
    }
    let elapsed = start.elapsed();
    let (server_cpu, client_cpu) = cpu.since(&server);
    let rss = server.rss_kib();
    let mut report = Report::default();
    report.add("mode", "mode", "feedback");
    report.add(
        "order",
        "event times",
        if args.late { "late" } else { "in order" },
    );
    report.add("address", "address", &address);
    report.add("events", "events to send", args.events);
    report.add("in_flight", "events in flight", args.in_flight);
    report.add("sent", "events answered", all.sent);
    report.add(
        "complete",
        "all sent",
        u8::from(all.sent == args.events as u64),
    );
    report.add("recorded", "recorded", all.recorded);
    report.add(
        "in_arrival_order",
        "applied in arrival order",
        all.in_arrival_order,
    );
    report.add(
        "elapsed_s",
        "elapsed (s)",
        format!("{:.2}", elapsed.as_secs_f64()),
    );
    report.add("events_per_s", "events/s", per_s(all.sent, elapsed));
    report.add_latency(&latency);
    report.add_opt(
        "server_cpu_us_per_event",
        "server CPU per event (µs)",
        cpu_us_per(server_cpu, all.sent),
    );
    report.add_opt(
        "client_cpu_us_per_event",
        "client CPU per event (µs)",
        cpu_us_per(client_cpu, all.sent),
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
    if all.sent == args.events as u64 && all.recorded != all.sent {
        eprintln!(
            "note: {} of {} events were not recorded (event id seen before?)",
            all.sent - all.recorded,
            all.sent
        );
    }
    server.stop().await;
    Ok(())
}
