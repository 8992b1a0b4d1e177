//! The server: wires the gRPC services, health and reflection onto a listener,
//! and shuts down in order: health NOT_SERVING, drain in-flight requests
//! within the grace period, make the store durable and close it (the data
//! directory is free when [`run`] returns).
//!
//! [`run`] is what `main` and the integration tests both call.

use std::future::Future;

use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};

use crate::{
    api::{Services, auth_layer::AuthLayer},
    auth::{Security, TlsPem},
    connection::{self, ActivityLayer},
    error::Error,
    metrics::MetricsLayer,
    pb,
    request_id::RequestIdLayer,
};

pub use crate::app::{App, Settings};
use crate::index::Readiness;
pub use crate::store::StoreError as StartupError;

/// The target of each request's `rpc` span (method, tenant, request id).
pub const RPC_SPAN_TARGET: &str = "consentd::rpc";
/// HTTP/2 flow-control window per stream: a 10,000-decision batch answer
/// (about 0.5 MB) then needs no window-update round trips.
const HTTP2_STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// HTTP/2 flow-control window per connection (shared by its streams).
const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The TLS certificate, key or client CA was refused.
    #[error("TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    /// The final flush failed.
    #[error("final flush: {0}")]
    Flush(#[from] Error),
}

/// Checks that rustls accepts the TLS files (a key that does not match its
/// certificate, say), so that `main` can refuse them before anything starts.
pub fn check_tls(tls: &TlsPem) -> Result<(), String> {
    Server::builder()
        .tls_config(tls_config(tls))
        .map(|_| ())
        .map_err(|e| {
            // tonic's error says only "transport error"; the cause is rustls's.
            let cause =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
            format!("the TLS certificate, key or client CA was refused: {cause}")
        })
}

fn tls_config(tls: &TlsPem) -> ServerTlsConfig {
    let config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_chain, &tls.key));
    match &tls.client_ca {
        // Client certificates are then required (tonic's default).
        Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
        None => config,
    }
}

fn log_security(security: &Security) {
    match &security.keys {
        Some(keys) => tracing::info!(keys = keys.len(), "access control on: API keys required"),
        None => tracing::warn!(
            "access control is off (no --auth-keys): any client can call every RPC for every tenant"
        ),
    }
    match &security.tls {
        Some(tls) if tls.client_ca.is_some() => {
            tracing::info!("TLS on, client certificates required (mutual TLS)");
        }
        Some(_) => tracing::info!("TLS on"),
        None => tracing::info!("TLS off: plaintext HTTP/2"),
    }
}

/// The consent.v1 services, by their health-check names.
const SERVICE_NAMES: [&str; 10] = [
    "consent.v1.ProfileService",
    "consent.v1.ConsentService",
    "consent.v1.QuarantineService",
    "consent.v1.EligibilityService",
    "consent.v1.AdminService",
    "consent.v1.TenantService",
    "consent.v1.SubscriptionService",
    "consent.v1.ProductUsageService",
    "consent.v1.WatchService",
    "consent.v1.PreferenceService",
];
/// The services that still answer once the store refuses writes: decisions
/// (from the index) and reads.
const READ_SERVICES: [&str; 1] = ["consent.v1.EligibilityService"];
/// How often health looks whether the store has failed.
const HEALTH_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Builds the decision index (the server answers health meanwhile).
async fn start(app: App) {
    if let Err(error) = app.start().await {
        tracing::error!(%error, "the decision index could not be built; decisions and writes are refused");
    }
}

/// Keeps health in step with the server: NOT_SERVING while the decision
/// index is built or if it failed; once the store refuses writes (a failed
/// flush), NOT_SERVING overall and for every service that writes, while
/// eligibility, which reads the index, stays SERVING; while a replica's
/// index may be stale (see `App::stale`), NOT_SERVING overall and for
/// eligibility.
async fn follow_health(app: App, health: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus::{NotServing, Serving};
    let mut readiness = app.watch_readiness();
    let mut shown = None;
    loop {
        let ready = *readiness.borrow_and_update() == Readiness::Ready;
        let failed = app.store_failure().is_some();
        let stale = app.stale().is_some();
        let state = (ready, failed, stale);
        if shown != Some(state) {
            let overall = if ready && !failed && !stale {
                Serving
            } else {
                NotServing
            };
            health.set_service_status("", overall).await;
            for name in SERVICE_NAMES {
                let serving = ready
                    && (!failed || READ_SERVICES.contains(&name))
                    && !(stale && READ_SERVICES.contains(&name));
                let status = if serving { Serving } else { NotServing };
                health.set_service_status(name, status).await;
            }
            if failed {
                tracing::error!(
                    "the store refuses writes after a failed flush: health NOT_SERVING; restart the server"
                );
            }
            if stale {
                tracing::error!(
                    "the database's change feed has not been read for longer than --max-staleness: \
                     eligibility is refused (health NOT_SERVING) until it is"
                );
            } else if shown.is_some_and(|(_, _, was_stale)| was_stale) {
                tracing::info!("the change feed is read again: eligibility answers again");
            }
            shown = Some(state);
        }
        tokio::select! {
            changed = readiness.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(HEALTH_POLL) => {}
        }
    }
}

/// Runs the retention sweep every `Settings::retention_sweep_interval`.
async fn sweep(app: App) {
    let mut every = tokio::time::interval(app.settings().retention_sweep_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(error) = app.sweep().await {
            tracing::warn!(%error, "retention sweep failed; it runs again later");
        }
    }
}

/// Looks at the store's size every `Settings::retention_sweep_interval`,
/// and compacts it when it takes too much disk. The first look comes one
/// interval after the start, not at it: it may read every record once.
async fn compact(app: App) {
    let period = app.settings().retention_sweep_interval;
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(error) = app.compact().await {
            tracing::warn!(%error, "store compaction failed; it is tried again later");
        }
    }
}

/// Serves every service on `listener` until `shutdown` resolves, then drains
/// and makes the store durable.
pub async fn run(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    run_with_page(app, listener, None, shutdown).await
}

/// [`run`], and the preference page on `page_listener` (`--http-listen`)
/// when given: it stops accepting at the same signal, and its connections
/// finish (within the grace period) before the store is closed.
pub async fn run_with_page(
    app: App,
    listener: TcpListener,
    page_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let settings = app.settings().clone();
    let (stop_page, page_stopped) = tokio::sync::watch::channel(false);
    let page = page_listener
        .map(|listener| tokio::spawn(crate::web::serve(app.clone(), listener, page_stopped)));
    let services = Services::new(&app);

    let (health, health_service) = tonic_health::server::health_reporter();
    // NOT_SERVING until the decision index is built (see `follow_health`).
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    for name in SERVICE_NAMES {
        health
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    // Each holds the application: stopped at shutdown, and awaited before the
    // store is closed, so that nothing holds it any more.
    let background = [
        tokio::spawn(start(app.clone())),
        tokio::spawn(follow_health(app.clone(), health.clone())),
        tokio::spawn(sweep(app.clone())),
        tokio::spawn(compact(app.clone())),
    ];
    let stop_background: Vec<_> = background.iter().map(|t| t.abort_handle()).collect();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.ErrorInfo and BadRequest, so that grpcurl can print error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let (signalled, on_signal) = oneshot::channel::<()>();
    let drain = async move {
        shutdown.await;
        tracing::info!("shutting down: health NOT_SERVING, draining in-flight requests");
        for task in stop_background {
            task.abort();
        }
        let _ = stop_page.send(true);
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        for name in SERVICE_NAMES {
            health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        let _ = signalled.send(());
    };

    log_security(&settings.security);
    let mut builder = Server::builder();
    if let Some(tls) = &settings.security.tls {
        builder = builder
            .tls_config(tls_config(tls))
            .map_err(ServeError::Tls)?;
    }

    let local = listener.local_addr().ok();
    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add tens of
    // milliseconds to every response that spans several segments.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // At most so many connections, each closed when it sends no request in
    // time or stays idle (hyper and tonic have neither limit).
    let incoming = connection::limit(incoming, settings.connections);
    let server = builder
        .timeout(settings.request_timeout)
        .max_concurrent_streams(settings.max_concurrent_streams)
        // A peer that no longer answers pings is closed, in-flight requests
        // and all (its streams would otherwise wait for it forever).
        .http2_keepalive_interval(Some(settings.keepalive_interval))
        .http2_keepalive_timeout(Some(settings.keepalive_timeout))
        .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW_BYTES))
        // Outermost: a connection's idle time starts when its last response is done.
        .layer(ActivityLayer)
        // These read only HTTP, so they work at any position; added first they
        // are outermost, so they also count and tag what later layers refuse.
        .layer(RequestIdLayer)
        .layer(MetricsLayer::new(app.metrics()))
        // Its own target, so that `RUST_LOG=info,consentd::rpc=off` can turn
        // it off: it costs about 1.7 µs of CPU per request (docs/operations.md).
        .trace_fn(|request| {
            tracing::info_span!(
                target: RPC_SPAN_TARGET,
                "rpc",
                method = %request.uri().path(),
                tenant = tracing::field::Empty,
                request_id = tracing::field::Empty,
            )
        })
        // Every request passes access control; health and reflection are let through.
        .layer(AuthLayer::new(settings.security.keys.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(services.profile)
        .add_service(services.consent)
        .add_service(services.quarantine)
        .add_service(services.eligibility)
        .add_service(services.admin)
        .add_service(services.tenant)
        .add_service(services.subscription)
        .add_service(services.usage)
        .add_service(services.watch)
        .add_service(services.preference)
        .serve_with_incoming_shutdown(incoming, drain);
    if let Some(addr) = local {
        tracing::info!("listening on {addr}");
    }

    let grace = settings.shutdown_grace;
    tokio::select! {
        served = server => served?,
        () = async {
            let _ = on_signal.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_s = grace.as_secs(), "grace period over; closing the remaining connections");
        }
    }
    if let Some(page) = page {
        // Stopped at the drain (or when the server ended, which drops the
        // sender); returns once its connections are done or the grace
        // period is over.
        let _ = page.await;
    }
    for task in background {
        // Stopped at the drain: each ends at once (cancelled), dropping its hold.
        task.abort();
        let _ = task.await;
    }
    app.close(grace).await?;
    tracing::info!("store flushed; stopped");
    Ok(())
}
