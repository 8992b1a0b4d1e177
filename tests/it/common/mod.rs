//! The integration-test harness: a real consentd server on an ephemeral port,
//! a temporary data directory, an injected [`ManualClock`], and typed clients.
//!
//! Every module of the test binary uses a subset of these helpers.
pub(crate) mod markdown;
pub(crate) mod pg;
pub(crate) mod process;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use consentd::{
    auth::Security,
    clock::{Clock, ManualClock},
    pb::{
        AddressHistoryEntry, AddressState, AddressStatus, AddressType,
        BatchCheckEligibilityRequest, BatchCheckEligibilityResponse, ChangeContext, Channel,
        ChannelConsent, CheckEligibilityRequest, ConsentState, Decision, DeliveryErrorReason,
        EligibilitySummary, ExclusionReason, FeedbackKind, GetAddressStatusRequest,
        GetAddressStatusResponse, GetConsentRequest, GetProfileRequest, ListAddressHistoryRequest,
        ListConsentHistoryRequest, ListConsentHistoryResponse, OptInRequest, OptInResponse,
        OptOutRequest, OptOutResponse, Profile, ReasonCount, RecordDeliveryFeedbackRequest,
        RecordDeliveryFeedbackResponse, Source, UpsertProfileRequest,
        consent_service_client::ConsentServiceClient,
        eligibility_service_client::EligibilityServiceClient,
        profile_service_client::ProfileServiceClient,
        quarantine_service_client::QuarantineServiceClient,
    },
    server::{App, ServeError, Settings, run_with_page},
    store::sled::SledOptions,
};
use prost_types::Timestamp;
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::Interceptor,
    transport::{Channel as GrpcChannel, ClientTlsConfig, Endpoint},
};
use tonic_types::{ErrorInfo, StatusExt};

/// 2026-01-01T00:00:00Z, the manual clock's starting time, in ms since the Unix epoch.
pub(crate) const START_MS: i64 = 1_767_225_600_000;
/// The tenant most tests use.
pub(crate) const TENANT: &str = "acme";
pub(crate) const SECOND_MS: i64 = 1_000;
pub(crate) const MINUTE_MS: i64 = 60 * SECOND_MS;
pub(crate) const HOUR_MS: i64 = 60 * MINUTE_MS;
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;
/// Large batches and stream chunks exceed tonic's default 4 MiB decode limit.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How long a graceful shutdown may take before a test fails.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// A running in-process server and typed clients connected to it.
///
/// Dropping it drops the shutdown sender, which also stops the server.
pub(crate) struct TestApp {
    /// The address the server listens on (`127.0.0.1:<ephemeral port>`).
    pub(crate) addr: SocketAddr,
    /// The address of its preference page (`--http-listen`), on another port.
    pub(crate) page_addr: SocketAddr,
    /// The server's clock; tests move it instead of sleeping.
    pub(crate) clock: ManualClock,
    /// The raw channel, for clients the harness does not wrap (health, reflection).
    pub(crate) channel: GrpcChannel,
    pub(crate) profiles: ProfileServiceClient<GrpcChannel>,
    pub(crate) consent: ConsentServiceClient<GrpcChannel>,
    pub(crate) quarantine: QuarantineServiceClient<GrpcChannel>,
    /// Accepts and sends messages up to [`MAX_MESSAGE_BYTES`].
    pub(crate) eligibility: EligibilityServiceClient<GrpcChannel>,
    /// The data directory; deleted when the TestApp is dropped.
    pub(crate) data_dir: TempDir,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<Result<(), ServeError>>,
}

/// Starts a server with default settings on a fresh data directory, its clock at [`START_MS`].
pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(Settings::default()).await
}

/// Starts a server with the given settings on a fresh data directory.
pub(crate) async fn spawn_app_with(settings: Settings) -> TestApp {
    let data_dir = tempfile::tempdir().expect("create a temporary data directory");
    start(
        data_dir,
        ManualClock::new(START_MS),
        settings,
        None,
        SledOptions::default(),
    )
    .await
}

/// Starts a server with API keys and/or TLS (`security`) and default settings
/// otherwise. `client_tls` is how the harness's clients connect: `None` for
/// plaintext, else over `https://127.0.0.1:<port>` with that configuration.
/// With keys, the harness's clients send no key; wrap `channel` with [`Bearer`].
pub(crate) async fn spawn_app_secured(
    security: Security,
    client_tls: Option<ClientTlsConfig>,
) -> TestApp {
    spawn_app_secured_with(
        Settings {
            security,
            ..Settings::default()
        },
        client_tls,
    )
    .await
}

/// [`spawn_app_secured`] with other settings too (`settings.security` is the security).
pub(crate) async fn spawn_app_secured_with(
    settings: Settings,
    client_tls: Option<ClientTlsConfig>,
) -> TestApp {
    let data_dir = tempfile::tempdir().expect("create a temporary data directory");
    start(
        data_dir,
        ManualClock::new(START_MS),
        settings,
        client_tls,
        SledOptions::default(),
    )
    .await
}

/// An interceptor that sends `authorization: Bearer <key>` with every request.
#[derive(Clone)]
pub(crate) struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    /// Sends `key`.
    pub(crate) fn new(key: &str) -> Self {
        Self::header(&format!("Bearer {key}"))
    }

    /// Sends this exact `authorization` value (for malformed headers).
    pub(crate) fn header(value: &str) -> Self {
        Self(value.parse().expect("an ASCII header value"))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// Starts a server whose store is opened with `options` (a sync failpoint).
pub(crate) async fn spawn_app_with_store_options(options: SledOptions) -> TestApp {
    let data_dir = tempfile::tempdir().expect("create a temporary data directory");
    start(
        data_dir,
        ManualClock::new(START_MS),
        Settings::default(),
        None,
        options,
    )
    .await
}

async fn start(
    data_dir: TempDir,
    clock: ManualClock,
    settings: Settings,
    client_tls: Option<ClientTlsConfig>,
    options: SledOptions,
) -> TestApp {
    let shared_clock: Arc<dyn Clock> = Arc::new(clock.clone());
    let app = match pg::harness_on_postgres().then(pg::database_url).flatten() {
        // The same schema for every start on this data directory.
        Some(url) => {
            let store = pg::store(&url, &pg::schema_for(data_dir.path())).await;
            App::with_store(Arc::new(store), settings, shared_clock)
        }
        None => match App::open_with(data_dir.path(), settings, shared_clock, options) {
            Ok(app) => app,
            Err(e) => panic!("App::open({}) failed: {e}", data_dir.path().display()),
        },
    };
    serve_app(app, data_dir, clock, client_tls).await
}

/// Starts a server on a store that is already open (a replica on
/// PostgreSQL, say), its clock at [`START_MS`].
pub(crate) async fn spawn_app_on_store(
    store: Arc<dyn consentd::store::Store>,
    settings: Settings,
) -> TestApp {
    let clock = ManualClock::new(START_MS);
    let app = App::with_store(store, settings, Arc::new(clock.clone()));
    let data_dir = tempfile::tempdir().expect("create a temporary data directory");
    serve_app(app, data_dir, clock, None).await
}

async fn serve_app(
    app: App,
    data_dir: TempDir,
    clock: ManualClock,
    client_tls: Option<ClientTlsConfig>,
) -> TestApp {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("listener address");
    let page_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral port");
    let page_addr = page_listener.local_addr().expect("listener address");
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(run_with_page(
        app,
        listener,
        Some(page_listener),
        async move {
            // Resolves on send and when the sender is dropped.
            let _ = shutdown_rx.await;
        },
    ));
    let channel = match client_tls {
        None => Endpoint::from_shared(format!("http://{addr}")).expect("endpoint URI"),
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
            .expect("endpoint URI")
            .tls_config(tls)
            .expect("client TLS configuration"),
    }
    .connect()
    .await
    .expect("connect to the test server");
    wait_until_serving(&channel).await;
    TestApp {
        addr,
        page_addr,
        clock,
        profiles: ProfileServiceClient::new(channel.clone()),
        consent: ConsentServiceClient::new(channel.clone()),
        quarantine: QuarantineServiceClient::new(channel.clone()),
        eligibility: EligibilityServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        channel,
        data_dir,
        shutdown,
        server,
    }
}

/// Waits until the server's health says SERVING (its decision index is
/// built), as a client that waits for readiness does.
async fn wait_until_serving(channel: &GrpcChannel) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut health = HealthClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = health
            .check(HealthCheckRequest::default())
            .await
            .map(|r| r.into_inner().status());
        if matches!(status, Ok(ServingStatus::Serving)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server did not become ready: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

impl TestApp {
    /// The server clock's time, in ms since the Unix epoch.
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Moves the server clock forward.
    pub(crate) fn advance_ms(&self, ms: i64) {
        let ms = u64::try_from(ms).expect("advance by a non-negative duration");
        self.clock.advance(Duration::from_millis(ms));
    }

    /// Stops the server gracefully and asserts that `run` returned `Ok`.
    /// Returns the data directory and the clock so that a new server can reuse them.
    pub(crate) async fn stop(self) -> (TempDir, ManualClock) {
        let TestApp {
            addr: _,
            page_addr: _,
            clock,
            channel,
            profiles,
            consent,
            quarantine,
            eligibility,
            data_dir,
            shutdown,
            server,
        } = self;
        // Close our connections so that draining does not wait for them.
        drop((channel, profiles, consent, quarantine, eligibility));
        shutdown
            .send(())
            .expect("the server is still waiting for shutdown");
        let result = tokio::time::timeout(SHUTDOWN_TIMEOUT, server)
            .await
            .expect("the server stopped within the shutdown timeout")
            .expect("the server task did not panic");
        if let Err(e) = result {
            panic!("run returned an error on graceful shutdown: {e}");
        }
        (data_dir, clock)
    }

    /// Starts a server with default settings on an existing data directory and clock.
    pub(crate) async fn start_on(data_dir: TempDir, clock: ManualClock) -> TestApp {
        start(
            data_dir,
            clock,
            Settings::default(),
            None,
            SledOptions::default(),
        )
        .await
    }

    /// Stops the server gracefully and starts a new one on the same data directory and clock.
    pub(crate) async fn restart(self) -> TestApp {
        let (data_dir, clock) = self.stop().await;
        start(
            data_dir,
            clock,
            Settings::default(),
            None,
            SledOptions::default(),
        )
        .await
    }
}

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

/// A change context with the given source.
pub(crate) fn ctx(source: Source) -> Option<ChangeContext> {
    Some(ChangeContext {
        source: source as i32,
        actor: "integration-test".to_owned(),
        reason: String::new(),
        ..Default::default()
    })
}

/// An operator's change context.
pub(crate) fn operator(actor: &str, reason: &str) -> Option<ChangeContext> {
    Some(ChangeContext {
        source: Source::Operator as i32,
        actor: actor.to_owned(),
        reason: reason.to_owned(),
        ..Default::default()
    })
}

/// A protobuf timestamp for ms since the Unix epoch.
pub(crate) fn ts(ms: i64) -> Timestamp {
    let nanos = i32::try_from(ms.rem_euclid(1_000) * 1_000_000).expect("nanos fit in i32");
    Timestamp {
        seconds: ms.div_euclid(1_000),
        nanos,
    }
}

/// Ms since the Unix epoch of an optional timestamp.
pub(crate) fn ms_of(ts: Option<&Timestamp>) -> Option<i64> {
    ts.map(|t| t.seconds * 1_000 + i64::from(t.nanos) / 1_000_000)
}

/// The entry of one channel in a consent state.
pub(crate) fn channel_consent(state: &ConsentState, channel: Channel) -> &ChannelConsent {
    state
        .channels
        .iter()
        .find(|c| c.channel == channel as i32)
        .unwrap_or_else(|| panic!("no {channel:?} entry in {state:?}"))
}

/// The `(reason, count)` pairs of a summary's `excluded_by_reason`.
pub(crate) fn by_reason(summary: &EligibilitySummary) -> Vec<(ExclusionReason, u64)> {
    summary
        .excluded_by_reason
        .iter()
        .map(|rc: &ReasonCount| (rc.reason(), rc.count))
        .collect()
}

/// The primary-first reasons of a decision.
pub(crate) fn reasons(decision: &Decision) -> Vec<ExclusionReason> {
    decision.reasons().collect()
}

// ---------------------------------------------------------------------------
// Calls that must succeed
// ---------------------------------------------------------------------------

/// Creates or replaces a profile's addresses.
pub(crate) async fn upsert(app: &TestApp, id: &str, emails: &[&str], phones: &[&str]) -> Profile {
    app.profiles
        .clone()
        .upsert_profile(UpsertProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            emails: emails.iter().map(|s| (*s).to_owned()).collect(),
            phones: phones.iter().map(|s| (*s).to_owned()).collect(),
            context: ctx(Source::Api),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("UpsertProfile {id}: {s:?}"))
        .into_inner()
        .profile
        .expect("UpsertProfileResponse.profile is set")
}

/// Creates e-mail service `service` named `name` (with double opt-in or
/// not) and subscribes profile `profile` to it: active, or pending with a
/// confirmation token under double opt-in.
pub(crate) async fn subscribed_to_new_service(
    app: &TestApp,
    profile: &str,
    service: &str,
    name: &str,
    double_opt_in: bool,
) {
    let mut subs = consentd::pb::subscription_service_client::SubscriptionServiceClient::new(
        app.channel.clone(),
    );
    subs.create_service(consentd::pb::CreateServiceRequest {
        tenant: TENANT.to_owned(),
        service_id: service.to_owned(),
        name: name.to_owned(),
        channel: Channel::Email as i32,
        double_opt_in,
        context: operator("ops", "setup"),
    })
    .await
    .expect("CreateService");
    subs.subscribe(consentd::pb::SubscribeRequest {
        tenant: TENANT.to_owned(),
        profile_id: profile.to_owned(),
        service_id: service.to_owned(),
        context: operator("ops", "signed up"),
    })
    .await
    .expect("Subscribe");
}

/// Creates or replaces profile `id` of `tenant` with one e-mail address.
pub(crate) async fn upsert_in(app: &TestApp, tenant: &str, id: &str, email: &str) {
    app.profiles
        .clone()
        .upsert_profile(UpsertProfileRequest {
            tenant: tenant.to_owned(),
            profile_id: id.to_owned(),
            emails: vec![email.to_owned()],
            context: ctx(Source::Api),
            ..Default::default()
        })
        .await
        .expect("UpsertProfile");
}

pub(crate) async fn get_profile(app: &TestApp, id: &str) -> Result<Profile, Status> {
    app.profiles
        .clone()
        .get_profile(GetProfileRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
        })
        .await
        .map(|r| {
            r.into_inner()
                .profile
                .expect("GetProfileResponse.profile is set")
        })
}

/// Opts a profile out of one channel (source API).
pub(crate) async fn opt_out(app: &TestApp, id: &str, channel: Channel) -> OptOutResponse {
    opt_out_with(app, id, Some(channel), ctx(Source::Api)).await
}

/// Opts a profile out of every channel (source API).
pub(crate) async fn opt_out_all(app: &TestApp, id: &str) -> OptOutResponse {
    opt_out_with(app, id, None, ctx(Source::Api)).await
}

/// Opts a profile out of `channel`, or of all channels when it is `None`.
pub(crate) async fn opt_out_with(
    app: &TestApp,
    id: &str,
    channel: Option<Channel>,
    context: Option<ChangeContext>,
) -> OptOutResponse {
    app.consent
        .clone()
        .opt_out(OptOutRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            channel: channel.map_or(Channel::Unspecified as i32, |c| c as i32),
            all_channels: channel.is_none(),
            context,
        })
        .await
        .unwrap_or_else(|s| panic!("OptOut {id} {channel:?}: {s:?}"))
        .into_inner()
}

/// Opts a profile in to `channel`, or lifts the all-channels opt-out when it is `None`.
pub(crate) async fn opt_in(app: &TestApp, id: &str, channel: Option<Channel>) -> OptInResponse {
    app.consent
        .clone()
        .opt_in(OptInRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            channel: channel.map_or(Channel::Unspecified as i32, |c| c as i32),
            all_channels: channel.is_none(),
            context: ctx(Source::Api),
        })
        .await
        .unwrap_or_else(|s| panic!("OptIn {id} {channel:?}: {s:?}"))
        .into_inner()
}

pub(crate) async fn get_consent(app: &TestApp, id: &str) -> ConsentState {
    app.consent
        .clone()
        .get_consent(GetConsentRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
        })
        .await
        .unwrap_or_else(|s| panic!("GetConsent {id}: {s:?}"))
        .into_inner()
        .consent
        .expect("GetConsentResponse.consent is set")
}

pub(crate) async fn consent_history(
    app: &TestApp,
    id: &str,
    page_size: i32,
    page_token: &str,
) -> ListConsentHistoryResponse {
    app.consent
        .clone()
        .list_consent_history(ListConsentHistoryRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            page_size,
            page_token: page_token.to_owned(),
        })
        .await
        .unwrap_or_else(|s| panic!("ListConsentHistory {id}: {s:?}"))
        .into_inner()
}

pub(crate) async fn check(app: &TestApp, id: &str, channel: Channel) -> Decision {
    app.eligibility
        .clone()
        .check_eligibility(CheckEligibilityRequest {
            tenant: TENANT.to_owned(),
            profile_id: id.to_owned(),
            channel: channel as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("CheckEligibility {id} {channel:?}: {s:?}"))
        .into_inner()
        .decision
        .expect("CheckEligibilityResponse.decision is set")
}

pub(crate) async fn try_batch(
    app: &TestApp,
    channel: Channel,
    ids: Vec<String>,
) -> Result<BatchCheckEligibilityResponse, Status> {
    app.eligibility
        .clone()
        .batch_check_eligibility(BatchCheckEligibilityRequest {
            tenant: TENANT.to_owned(),
            channel: channel as i32,
            profile_ids: ids,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

pub(crate) async fn batch(
    app: &TestApp,
    channel: Channel,
    ids: &[&str],
) -> BatchCheckEligibilityResponse {
    try_batch(app, channel, ids.iter().map(|s| (*s).to_owned()).collect())
        .await
        .unwrap_or_else(|s| panic!("BatchCheckEligibility {ids:?}: {s:?}"))
}

/// Records delivery feedback for an e-mail address or phone number (type inferred).
/// `occurred_at_ms` of `None` leaves `occurred_at` unset (time of receipt).
pub(crate) async fn feedback(
    app: &TestApp,
    address: &str,
    kind: FeedbackKind,
    error_reason: DeliveryErrorReason,
    event_id: &str,
    occurred_at_ms: Option<i64>,
) -> RecordDeliveryFeedbackResponse {
    app.quarantine
        .clone()
        .record_delivery_feedback(RecordDeliveryFeedbackRequest {
            tenant: TENANT.to_owned(),
            address: address.to_owned(),
            address_type: AddressType::Unspecified as i32,
            kind: kind as i32,
            error_reason: error_reason as i32,
            event_id: event_id.to_owned(),
            occurred_at: occurred_at_ms.map(ts),
            context: ctx(Source::DeliveryFeedback),
        })
        .await
        .unwrap_or_else(|s| panic!("RecordDeliveryFeedback {address} {kind:?} {event_id}: {s:?}"))
        .into_inner()
}

/// A soft bounce (UNREACHABLE) at the given event time; returns the state after it.
pub(crate) async fn soft_bounce(
    app: &TestApp,
    address: &str,
    event_id: &str,
    occurred_at_ms: i64,
) -> AddressState {
    let response = feedback(
        app,
        address,
        FeedbackKind::SoftBounce,
        DeliveryErrorReason::Unreachable,
        event_id,
        Some(occurred_at_ms),
    )
    .await;
    assert!(response.recorded, "{event_id} is a new event: {response:?}");
    response
        .state
        .expect("RecordDeliveryFeedbackResponse.state is set")
}

pub(crate) async fn address_status(app: &TestApp, address: &str) -> GetAddressStatusResponse {
    app.quarantine
        .clone()
        .get_address_status(GetAddressStatusRequest {
            tenant: TENANT.to_owned(),
            address: address.to_owned(),
            address_type: AddressType::Unspecified as i32,
        })
        .await
        .unwrap_or_else(|s| panic!("GetAddressStatus {address}: {s:?}"))
        .into_inner()
}

/// The state part of [`address_status`].
pub(crate) async fn address_state(app: &TestApp, address: &str) -> AddressState {
    address_status(app, address)
        .await
        .state
        .expect("GetAddressStatusResponse.state is set")
}

/// The first page (up to 1000 entries) of an address's history, newest first.
pub(crate) async fn address_history(app: &TestApp, address: &str) -> Vec<AddressHistoryEntry> {
    app.quarantine
        .clone()
        .list_address_history(ListAddressHistoryRequest {
            tenant: TENANT.to_owned(),
            address: address.to_owned(),
            address_type: AddressType::Unspecified as i32,
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .unwrap_or_else(|s| panic!("ListAddressHistory {address}: {s:?}"))
        .into_inner()
        .entries
}

/// The parts of an address state that the quarantine rules decide (not the
/// address itself, nor bookkeeping times and texts).
pub(crate) fn counting_view(
    state: &AddressState,
) -> (
    AddressStatus,
    u32,
    Option<i64>,
    Option<i64>,
    DeliveryErrorReason,
) {
    (
        state.status(),
        state.error_count,
        ms_of(state.first_error_at.as_ref()),
        ms_of(state.last_error_at.as_ref()),
        state.last_error_reason(),
    )
}

// ---------------------------------------------------------------------------
// Error assertions
// ---------------------------------------------------------------------------

/// The ErrorInfo details of a status; panics when there are none.
pub(crate) fn error_info(status: &Status) -> ErrorInfo {
    status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no google.rpc.ErrorInfo in {status:?}"))
}

/// The fields named by a status's BadRequest details.
pub(crate) fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no google.rpc.BadRequest in {status:?}"))
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// Checks INVALID_ARGUMENT with reason VALIDATION_FAILED (domain `consentd`)
/// and a field violation for one of `fields` (alternatives where the contract
/// leaves the exact path open). Returns what is wrong, if anything.
pub(crate) fn check_validation_failed(
    case: &str,
    status: &Status,
    fields: &[&str],
) -> Result<(), String> {
    if status.code() != Code::InvalidArgument {
        return Err(format!("{case}: expected INVALID_ARGUMENT, got {status:?}"));
    }
    let Some(info) = status.get_details_error_info() else {
        return Err(format!("{case}: no google.rpc.ErrorInfo in {status:?}"));
    };
    if info.domain != "consentd" || info.reason != "VALIDATION_FAILED" {
        return Err(format!(
            "{case}: expected ErrorInfo consentd/VALIDATION_FAILED, got {}/{} ({status:?})",
            info.domain, info.reason
        ));
    }
    let Some(bad_request) = status.get_details_bad_request() else {
        return Err(format!("{case}: no google.rpc.BadRequest in {status:?}"));
    };
    let violated: Vec<&str> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    if !violated.iter().any(|f| fields.contains(f)) {
        return Err(format!(
            "{case}: expected a field violation for one of {fields:?}, got {violated:?} ({status:?})"
        ));
    }
    Ok(())
}

/// Asserts what [`check_validation_failed`] checks.
pub(crate) fn assert_validation_failed(case: &str, status: &Status, fields: &[&str]) {
    if let Err(problem) = check_validation_failed(case, status, fields) {
        panic!("{problem}");
    }
}

/// Asserts NOT_FOUND with ErrorInfo reason PROFILE_NOT_FOUND (domain `consentd`).
pub(crate) fn assert_profile_not_found(case: &str, status: &Status) {
    assert_eq!(
        status.code(),
        Code::NotFound,
        "{case}: expected NOT_FOUND, got {status:?}"
    );
    let info = error_info(status);
    assert_eq!(
        info.domain, "consentd",
        "{case}: ErrorInfo domain in {status:?}"
    );
    assert_eq!(
        info.reason, "PROFILE_NOT_FOUND",
        "{case}: ErrorInfo reason in {status:?}"
    );
}
