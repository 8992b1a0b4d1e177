//! Prometheus metrics: what is counted, the tower layer that counts requests,
//! and the HTTP endpoint (`GET /metrics`) that serves the text format.
//!
//! Every [`App`](crate::app::App) owns one [`Metrics`] with its own registry
//! (no global state), so that several servers in one process, as in the
//! tests, count separately. Collecting is always on and cheap; serving is
//! optional (`consentd serve --metrics-listen ADDR`).
//!
//! Who records what:
//! - [`MetricsLayer`] (wired in `server.rs`): every gRPC request, by method and
//!   status code, and its latency. It reads `grpc-status` from the response
//!   headers (a trailers-only response, which is how errors are sent) or from
//!   the trailers at the end of the body (successes and streams), so the
//!   latency of a stream is the time until its last message. A response
//!   dropped before its status was sent counts as `CANCELLED`. It works at
//!   any position in the layer stack: it only reads HTTP.
//! - `app.rs`: eligibility decisions, by channel and outcome, and the time a
//!   write waits for durability.
//! - `store/commit.rs`, through [`Store::observe_flushes`]: each group flush.
//! - The endpoint, at scrape time: the store's size on disk.
//!
//! The engine records nothing: it stays pure.
//!
//! [`Store::observe_flushes`]: crate::store::Store::observe_flushes

use std::{
    collections::HashSet,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::{Layer, Service};

use crate::engine::{Channel, Decision, ExclusionReason, Summary};

/// Latency buckets of requests, in seconds: from a point read to the timeout.
const REQUEST_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the durability wait and of one group flush, in seconds.
const FLUSH_SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Buckets of the number of writes one group flush made durable.
const FLUSH_WRITES_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// The methods served besides those of the descriptor sets in [`served_methods`]:
/// server reflection, both versions.
const REFLECTION_METHODS: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];
/// Concurrent connections to the metrics endpoint; more wait to be accepted.
pub const METRICS_CONNECTIONS_MAX: usize = 16;
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The `method` label of every path the server does not serve.
const OTHER_METHOD: &str = "other";
/// The Prometheus text exposition format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Reads the store's size on disk; `None` once the store is closed.
pub type StoreSizeProbe = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// The metrics of one server.
pub struct Metrics {
    /// Holds every metric below; what the endpoint encodes.
    registry: Registry,
    /// `consentd_grpc_requests_total{method, code}`.
    requests: IntCounterVec,
    /// `consentd_grpc_request_duration_seconds{method}`.
    request_seconds: HistogramVec,
    /// `consentd_decisions_total{channel, outcome}`.
    decisions: IntCounterVec,
    /// Its counters, looked up once each: by channel, then outcome
    /// (eligible, then each reason).
    decision_counters: [[OnceLock<IntCounter>; 1 + ExclusionReason::ALL.len()]; 5],
    /// `consentd_durable_write_wait_seconds`.
    durable_wait_seconds: Histogram,
    /// `consentd_group_commit_duration_seconds`.
    flush_seconds: Histogram,
    /// `consentd_group_commit_writes`.
    flush_writes: Histogram,
    /// `consentd_store_size_bytes`, refreshed at each scrape.
    store_size_bytes: IntGauge,
    /// `consentd_page_requests_total{outcome}` (the preference page).
    page_requests: IntCounterVec,
    /// The `method` label values: the methods served (fixed at start), so
    /// that made-up paths can neither grow the registry nor displace them.
    methods: HashSet<String>,
    /// Set by the application once its store is open.
    store_size: OnceLock<StoreSizeProbe>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all at zero.
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        // Names, labels and buckets are constants: a failure here is a bug
        // found by every test, never a runtime condition.
        Self::try_new().expect("metric definitions are valid")
    }

    fn try_new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "consentd_grpc_requests_total",
                "gRPC requests answered, by method and gRPC status code",
            ),
            &["method", "code"],
        )?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "consentd_grpc_request_duration_seconds",
                "Time from a gRPC request's arrival to its status (for a stream: its end), by method",
            )
            .buckets(REQUEST_SECONDS_BUCKETS.to_vec()),
            &["method"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "consentd_decisions_total",
                "Eligibility decisions, by channel and outcome: eligible, or the primary exclusion reason",
            ),
            &["channel", "outcome"],
        )?;
        let durable_wait_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "consentd_durable_write_wait_seconds",
                "Time a write waits, after it is applied, until it is on disk (group commit)",
            )
            .buckets(FLUSH_SECONDS_BUCKETS.to_vec()),
        )?;
        let flush_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "consentd_group_commit_duration_seconds",
                "Time of one group commit: sled flush plus fdatasync",
            )
            .buckets(FLUSH_SECONDS_BUCKETS.to_vec()),
        )?;
        let flush_writes = Histogram::with_opts(
            HistogramOpts::new(
                "consentd_group_commit_writes",
                "Writes made durable by one group commit",
            )
            .buckets(FLUSH_WRITES_BUCKETS.to_vec()),
        )?;
        let store_size_bytes = IntGauge::new(
            "consentd_store_size_bytes",
            "Bytes the store takes on disk, read at scrape time",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(durable_wait_seconds.clone()))?;
        registry.register(Box::new(flush_seconds.clone()))?;
        registry.register(Box::new(flush_writes.clone()))?;
        let page_requests = IntCounterVec::new(
            Opts::new(
                "consentd_page_requests_total",
                "Requests to the preference page, by outcome: shown, saved, saved_unchanged, one_click, one_click_repeat, invalid_link, csrf_refused, bad_one_click, rate_limited",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(store_size_bytes.clone()))?;
        registry.register(Box::new(page_requests.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_seconds,
            decisions,
            decision_counters: Default::default(),
            durable_wait_seconds,
            flush_seconds,
            flush_writes,
            store_size_bytes,
            page_requests,
            methods: served_methods(),
            store_size: OnceLock::new(),
        })
    }

    /// Counts one request and its latency.
    pub fn request(&self, method: &str, code: &str, elapsed: Duration) {
        self.requests.with_label_values(&[method, code]).inc();
        self.request_seconds
            .with_label_values(&[method])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts the decisions summed up in `summary`.
    pub fn decisions(&self, channel: Channel, summary: &Summary) {
        let channel = channel.short_name();
        if summary.eligible > 0 {
            self.decisions
                .with_label_values(&[channel, "eligible"])
                .inc_by(summary.eligible);
        }
        for (reason, count) in summary.by_reason() {
            self.decisions
                .with_label_values(&[channel, reason_label(reason)])
                .inc_by(count);
        }
    }

    /// Counts one decision.
    pub fn decision(&self, channel: Channel, decision: &Decision) {
        let primary = decision.primary();
        let outcome = primary.map_or(0, |reason| {
            1 + ExclusionReason::ALL
                .iter()
                .position(|r| *r == reason)
                .unwrap_or(0)
        });
        self.decision_counters[channel.index()][outcome]
            .get_or_init(|| {
                let label = primary.map_or("eligible", reason_label);
                self.decisions
                    .with_label_values(&[channel.short_name(), label])
            })
            .inc();
    }

    /// Counts one request to the preference page. `outcome` is one of a
    /// fixed set of constants (never client text): the label set stays small.
    pub fn page_request(&self, outcome: &'static str) {
        self.page_requests.with_label_values(&[outcome]).inc();
    }

    /// Records how long a write waited for durability.
    pub fn durable_write(&self, waited: Duration) {
        self.durable_wait_seconds.observe(waited.as_secs_f64());
    }

    /// Records one group flush.
    pub fn flush(&self, elapsed: Duration, writes: usize) {
        self.flush_seconds.observe(elapsed.as_secs_f64());
        #[allow(clippy::cast_precision_loss)] // a count of waiters, far below 2^52
        self.flush_writes.observe(writes as f64);
    }

    /// Sets how the store's size is read; once.
    pub fn set_store_size_probe(&self, probe: StoreSizeProbe) {
        let _ = self.store_size.set(probe);
    }

    /// Reads the store's size into its gauge (a directory walk: call it off
    /// the async workers).
    fn refresh_store_size(&self) {
        if let Some(size) = self.store_size.get().and_then(|probe| probe())
            && let Ok(size) = i64::try_from(size)
        {
            self.store_size_bytes.set(size);
        }
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut text) {
            tracing::error!(%error, "cannot encode the metrics");
        }
        String::from_utf8(text).unwrap_or_default()
    }

    /// The `method` label of a request path: the path without its leading
    /// `/` (`consent.v1.ProfileService/GetProfile`) when the server serves
    /// it, else `other`.
    fn method_label(&self, path: &str) -> String {
        let method = path.strip_prefix('/').unwrap_or(path);
        if self.methods.contains(method) {
            method.to_owned()
        } else {
            OTHER_METHOD.to_owned()
        }
    }
}

/// Every method the server serves, as `package.Service/Method`: those of the
/// consent.v1 and gRPC health descriptor sets, and server reflection.
fn served_methods() -> HashSet<String> {
    use prost::Message as _;
    let mut methods: HashSet<String> = REFLECTION_METHODS.map(str::to_owned).into();
    for encoded in [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        // Compiled in by build.rs and tonic-health: one that does not decode
        // is a bug every test finds; its methods would then count as `other`.
        let set = prost_types::FileDescriptorSet::decode(encoded).unwrap_or_default();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.insert(format!(
                        "{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    methods
}

fn reason_label(reason: ExclusionReason) -> &'static str {
    match reason {
        ExclusionReason::ProfileNotFound => "profile_not_found",
        ExclusionReason::OptedOutAllChannels => "opted_out_all_channels",
        ExclusionReason::OptedOutChannel => "opted_out_channel",
        ExclusionReason::NoOptIn => "no_opt_in",
        ExclusionReason::NotSubscribed => "not_subscribed",
        ExclusionReason::NoAddress => "no_address",
        ExclusionReason::AddressQuarantined => "address_quarantined",
        ExclusionReason::AddressDenylisted => "address_denylisted",
        ExclusionReason::AddressOptedOut => "address_opted_out",
    }
}

/// The gRPC status codes by number, as the `code` label spells them.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CODE_CANCELLED: &str = "CANCELLED";
const CODE_UNKNOWN: &str = "UNKNOWN";

/// The `code` label of the `grpc-status` in `headers`, if there is one.
fn grpc_code(headers: &HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?;
    let code = value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .and_then(|number| CODE_NAMES.get(number).copied())
        .unwrap_or(CODE_UNKNOWN);
    Some(code)
}

/// A request not yet counted. Counted once: with its status, or as
/// `CANCELLED` when dropped first (the client went away, or the server's
/// request timeout cut it off outside this layer).
#[derive(Debug)]
struct Pending(Option<PendingRequest>);

#[derive(Debug)]
struct PendingRequest {
    metrics: Arc<Metrics>,
    method: String,
    started: Instant,
}

impl Pending {
    fn finish(&mut self, code: &str) {
        if let Some(request) = self.0.take() {
            request
                .metrics
                .request(&request.method, code, request.started.elapsed());
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(CODE_CANCELLED);
    }
}

/// Counts every request of the service it wraps (see the module docs).
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    /// A layer that records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// The response future of [`RequestMetrics`].
pub type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<CountedBody<B>>, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let mut pending = Pending(Some(PendingRequest {
            method: self.metrics.method_label(request.uri().path()),
            metrics: Arc::clone(&self.metrics),
            started: Instant::now(),
        }));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(response) => response,
                Err(error) => {
                    // Not a gRPC answer: the transport turns it into one later.
                    pending.finish(CODE_UNKNOWN);
                    return Err(error);
                }
            };
            // A trailers-only response (every error) has its status in the headers.
            if let Some(code) = grpc_code(response.headers()) {
                pending.finish(code);
            }
            Ok(response.map(|inner| CountedBody { inner, pending }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its request when the trailers carrying
    /// the status go by.
    #[derive(Debug)]
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        pending: Pending,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.pending
                        .finish(grpc_code(trailers).unwrap_or(CODE_UNKNOWN));
                }
            }
            // The body failed, or ended without a status: not a proper gRPC answer.
            Poll::Ready(Some(Err(_)) | None) => this.pending.finish(CODE_UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `GET /metrics` over HTTP/1.1 on `listener`, forever (abort the
/// task, or drop the runtime, to stop it). Other paths are 404, other
/// methods 405.
pub async fn serve(metrics: Arc<Metrics>, listener: TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("metrics on http://{addr}/metrics");
    }
    let connections = Arc::new(Semaphore::new(METRICS_CONNECTIONS_MAX));
    loop {
        let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint: cannot accept a connection");
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(respond(metrics, &request).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics endpoint: connection failed");
            }
            drop(permit);
        });
    }
}

async fn respond<B>(metrics: Arc<Metrics>, request: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, text: String| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "not found; try /metrics\n".into());
    }
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        let mut response = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let text = tokio::task::spawn_blocking(move || {
        metrics.refresh_store_size();
        metrics.encode()
    })
    .await
    .unwrap_or_default();
    let mut response = reply(StatusCode::OK, text);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(TEXT_FORMAT),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_the_served_methods_and_other() {
        let metrics = Metrics::new();
        for served in [
            "consent.v1.ProfileService/GetProfile",
            "consent.v1.ProfileService/EraseProfile",
            "consent.v1.ProfileService/ExportProfileData",
            "consent.v1.EligibilityService/StreamEligibility",
            "consent.v1.AdminService/Backup",
            "grpc.health.v1.Health/Check",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(metrics.method_label(&format!("/{served}")), served);
        }
        for unknown in ["/a b", "/", "/s/m1", "/consent.v1.ProfileService/Nope"] {
            assert_eq!(metrics.method_label(unknown), OTHER_METHOD, "{unknown}");
        }
        // Made-up paths, however many, do not displace a served method.
        for i in 0..1000 {
            assert_eq!(metrics.method_label(&format!("/s/m{i}")), OTHER_METHOD);
        }
        assert_eq!(
            metrics.method_label("/consent.v1.ProfileService/UpsertProfile"),
            "consent.v1.ProfileService/UpsertProfile"
        );
    }

    #[test]
    fn grpc_status_numbers_become_names() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_code(&headers), None);
        for (number, name) in [
            ("0", "OK"),
            ("3", "INVALID_ARGUMENT"),
            ("16", "UNAUTHENTICATED"),
        ] {
            headers.insert("grpc-status", number.parse().expect("header value"));
            assert_eq!(grpc_code(&headers), Some(name));
        }
        for bad in ["17", "-1", "x"] {
            headers.insert("grpc-status", bad.parse().expect("header value"));
            assert_eq!(grpc_code(&headers), Some(CODE_UNKNOWN));
        }
    }

    #[test]
    fn a_request_dropped_before_its_status_counts_as_cancelled() {
        let metrics = Arc::new(Metrics::new());
        drop(Pending(Some(PendingRequest {
            metrics: Arc::clone(&metrics),
            method: "s/m".into(),
            started: Instant::now(),
        })));
        let mut counted = Pending(Some(PendingRequest {
            metrics: Arc::clone(&metrics),
            method: "s/m".into(),
            started: Instant::now(),
        }));
        counted.finish("OK");
        drop(counted);
        assert_eq!(
            metrics
                .requests
                .with_label_values(&["s/m", "CANCELLED"])
                .get(),
            1
        );
        assert_eq!(metrics.requests.with_label_values(&["s/m", "OK"]).get(), 1);
    }
}
