//! The application: each operation a client can ask for, in domain terms.
//!
//! It joins the store and the rules, decides what runs off the async workers,
//! and waits for durability before any write is acknowledged. The gRPC layer
//! (`api`) only converts to and from these calls.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    clock::Clock,
    engine::{
        Address, AddressEvent, AddressEventKind, AddressState, AddressStatus, ChangeContext,
        Channel, ConsentHistoryEntry, ConsentStatus, Decision, ErrorReason, EventId, FeedbackKind,
        Policy, Profile, ProfileAddresses, ProfileId, QuarantineRules, Regime, Scope, Service,
        ServiceId, SettingsUpdate, Subscribed, Subscription, SubscriptionStatus, Summary, Tenant,
        TenantSettings, Token, TokenHash, TokenRefusal, UnixMillis, UsageOptOut, UserId, decide,
    },
    error::{Error, Result, TokenProblem},
    metrics::Metrics,
    store::{
        ConfirmRefusal, Confirmed, Created, SERVICES_PER_TENANT_MAX, Snapshot, Store, StoreError,
        Written,
    },
};

/// How far in the future a feedback event's `occurred_at` may lie (clock skew).
pub const FEEDBACK_FUTURE_SKEW_MAX: Duration = Duration::from_secs(5 * 60);
/// How often `App::close` looks whether the last request let go of the store.
const STORE_CLOSE_POLL: Duration = Duration::from_millis(2);
/// Smallest part of a batch worth its own blocking task.
const PARALLEL_CHECK_PART_MIN: usize = 1000;
/// Most profiles listed by `GetAddressStatus`.
pub const ADDRESS_USERS_MAX: usize = 1000;

/// Default time a request may take before tonic cuts it off (`CANCELLED`).
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default time in-flight requests get to finish at shutdown.
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(10);
/// Default limit of concurrent HTTP/2 streams (requests) per connection.
pub const CONCURRENT_STREAMS_MAX_DEFAULT: u32 = 256;
/// Default lifetime of a double opt-in confirmation token.
pub const CONFIRMATION_TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Everything the server can be configured with, once parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The quarantine rule parameters of tenants that set none of their own.
    pub rules: QuarantineRules,
    /// How long a double opt-in confirmation token works.
    pub confirmation_token_ttl: Duration,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// How long in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// API keys and TLS; the default is neither (loopback only, see `main`).
    pub security: crate::auth::Security,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rules: QuarantineRules::default(),
            confirmation_token_ttl: CONFIRMATION_TOKEN_TTL_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
            max_concurrent_streams: CONCURRENT_STREAMS_MAX_DEFAULT,
            security: crate::auth::Security::default(),
        }
    }
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, C> {
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<C>,
}

/// The application state shared by every request.
#[derive(Debug, Clone)]
pub struct App {
    /// The store.
    store: Arc<Store>,
    /// The time source of every rule.
    clock: Arc<dyn Clock>,
    /// The settings.
    settings: Arc<Settings>,
    /// What the server counts (served by `metrics::serve` when asked).
    metrics: Arc<Metrics>,
}

impl App {
    /// Opens the store in `data_dir`.
    pub fn open(
        data_dir: &Path,
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        Ok(Self::with_store(Store::open(data_dir)?, settings, clock))
    }

    /// Wraps a store that is already open (benchmarks fill one directly).
    pub fn with_store(store: Store, settings: Settings, clock: Arc<dyn Clock>) -> Self {
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::new());
        let flushes = Arc::clone(&metrics);
        store.observe_flushes(Box::new(move |elapsed, writes| {
            flushes.flush(elapsed, writes);
        }));
        // Weak: the metrics endpoint must not keep the store open after `close`.
        let sized = Arc::downgrade(&store);
        metrics.set_store_size_probe(Box::new(move || {
            sized.upgrade().and_then(|store| store.size_on_disk().ok())
        }));
        Self {
            store,
            clock,
            settings: Arc::new(settings),
            metrics,
        }
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The settings the application was opened with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The current time.
    pub fn now(&self) -> UnixMillis {
        self.clock.now_ms()
    }

    /// Waits until every write so far is durable.
    pub async fn sync(&self) -> Result<()> {
        let started = Instant::now();
        let synced = self.store.sync().await;
        self.metrics.durable_write(started.elapsed());
        Ok(synced?)
    }

    /// Copies the records of `tenant` (every tenant when `None`) as of one
    /// moment, for an online backup: writes wait while the records are copied
    /// into memory, reads go on (see `store::dump`).
    pub async fn snapshot(&self, tenant: Option<Tenant>) -> Result<Snapshot> {
        self.blocking(move |store| Ok(store.snapshot(tenant.as_ref())?))
            .await
    }

    /// Starts blocking store work (scans, batches) off the async workers,
    /// inside the caller's tracing span.
    fn spawn_blocking<T, F>(&self, work: F) -> tokio::task::JoinHandle<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| work(&store)))
    }

    /// Makes every write durable, then closes the store once no request holds
    /// it any more (waiting at most `within`), so that the data directory is
    /// free when this returns: a new `App` can open it in the same process.
    pub async fn close(self, within: Duration) -> Result<()> {
        self.sync().await?;
        let deadline = tokio::time::Instant::now() + within;
        let mut store = self.store;
        loop {
            match Arc::try_unwrap(store) {
                Ok(store) => {
                    // Dropping the store joins its committer thread: not on an async worker.
                    return joined(
                        tokio::task::spawn_blocking(move || {
                            drop(store);
                            Ok(())
                        })
                        .await,
                    );
                }
                Err(shared) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(
                        holders = Arc::strong_count(&shared) - 1,
                        "requests still hold the store; it closes when they end"
                    );
                    return Ok(());
                }
                Err(shared) => {
                    store = shared;
                    // Tasks of finished connections are being dropped; look again shortly.
                    tokio::time::sleep(STORE_CLOSE_POLL).await;
                }
            }
        }
    }

    /// Runs blocking store work off the async workers and waits for it.
    async fn blocking<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        joined(self.spawn_blocking(work).await)
    }

    /// Runs a short write (a few point reads and inserts, bounded in size)
    /// here on the async worker, and off the workers only when it would have
    /// to wait for a lock that another write holds.
    ///
    /// Why inline: handing each write to the blocking pool costs two thread
    /// wake-ups and context switches, more CPU than the write itself; at
    /// 64 concurrent writers it was a third of the server's CPU. Why the
    /// fallback: a lock stripe can be held long (a backup holds them all),
    /// and an async worker must not wait for it. A refused attempt changed
    /// nothing (see [`Store::without_waiting`]), so `work` runs again.
    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Store) -> Result<T> + Send + 'static,
    {
        match self.store.without_waiting(&work) {
            Err(Error::Storage(StoreError::WouldWait)) => self.blocking(work).await,
            done => done,
        }
    }

    // ---- profiles -------------------------------------------------------

    /// Creates a profile or replaces its addresses. Durable when it returns.
    pub async fn upsert_profile(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        addresses: ProfileAddresses,
    ) -> Result<Written<Profile>> {
        let (tenant, id, now) = (tenant.clone(), id.clone(), self.now());
        let written = self
            .write(move |store| Ok(store.upsert_profile(&tenant, &id, addresses.clone(), now)?))
            .await?;
        self.sync().await?;
        Ok(written)
    }

    /// A profile, or `ProfileNotFound`.
    pub fn profile(&self, tenant: &Tenant, id: &ProfileId) -> Result<Profile> {
        self.store
            .profile(tenant, id)?
            .ok_or_else(|| Error::ProfileNotFound(id.as_str().to_owned()))
    }

    // ---- consent --------------------------------------------------------

    /// Opts a profile in or out of a scope. Durable when it returns, also
    /// when it changed nothing (the state it reports may have been written by
    /// a request not yet acknowledged).
    pub async fn set_consent(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        scope: Scope,
        status: ConsentStatus,
        context: &ChangeContext,
    ) -> Result<Written<Profile>> {
        let (tenant, id, context, now) = (tenant.clone(), id.clone(), context.clone(), self.now());
        let written = self
            .write(move |store| {
                store
                    .set_consent(&tenant, &id, scope, status, &context, now)?
                    .ok_or_else(|| Error::ProfileNotFound(id.as_str().to_owned()))
            })
            .await?;
        self.sync().await?;
        Ok(written)
    }

    /// A page of a profile's consent history, newest first; the cursor is the
    /// sequence number to continue below.
    pub async fn consent_history(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<ConsentHistoryEntry, u64>> {
        self.profile(tenant, id)?;
        let (tenant, id) = (tenant.clone(), id.clone());
        self.blocking(move |store| {
            let mut items = store.consent_history(&tenant, &id, before, limit + 1)?;
            Ok(page_by_sequence(&mut items, limit, |e| e.sequence))
        })
        .await
    }

    // ---- quarantine -----------------------------------------------------

    /// Records delivery feedback. `occurred_at` defaults to now; more than
    /// [`FEEDBACK_FUTURE_SKEW_MAX`] ahead of now is invalid.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_feedback(
        &self,
        tenant: &Tenant,
        address: &Address,
        kind: FeedbackKind,
        reason: ErrorReason,
        event_id: EventId,
        occurred_at: Option<UnixMillis>,
        context: &ChangeContext,
    ) -> Result<Written<AddressState>> {
        let now = self.now();
        let occurred_at = occurred_at.unwrap_or(now);
        let skew_ms = i64::try_from(FEEDBACK_FUTURE_SKEW_MAX.as_millis()).unwrap_or(i64::MAX);
        if occurred_at > now.saturating_add(skew_ms) {
            return Err(Error::invalid(
                "occurred_at",
                format!(
                    "is {} s in the future; at most {} s of clock skew is accepted",
                    (occurred_at - now) / 1000,
                    FEEDBACK_FUTURE_SKEW_MAX.as_secs()
                ),
            ));
        }
        let event = AddressEventKind::Feedback {
            kind,
            reason,
            event_id,
        };
        self.record(tenant, address, event, occurred_at, context, now)
            .await
    }

    /// Quarantines or denylists an address by hand; idempotent.
    pub async fn quarantine_address(
        &self,
        tenant: &Tenant,
        address: &Address,
        status: AddressStatus,
        context: &ChangeContext,
    ) -> Result<Written<AddressState>> {
        let now = self.now();
        let event = AddressEventKind::Manual(status);
        self.record(tenant, address, event, now, context, now).await
    }

    /// Releases an address to VALID; releasing a VALID address changes nothing.
    pub async fn release_address(
        &self,
        tenant: &Tenant,
        address: &Address,
        context: &ChangeContext,
    ) -> Result<Written<AddressState>> {
        let now = self.now();
        self.record(
            tenant,
            address,
            AddressEventKind::Release,
            now,
            context,
            now,
        )
        .await
    }

    /// Records an address event off the async workers: a late event replays
    /// the address's whole log, whose length has no fixed bound.
    async fn record(
        &self,
        tenant: &Tenant,
        address: &Address,
        event: AddressEventKind,
        occurred_at: UnixMillis,
        context: &ChangeContext,
        now: UnixMillis,
    ) -> Result<Written<AddressState>> {
        let rules = self.rules(tenant)?;
        let (tenant, address, context) = (tenant.clone(), address.clone(), context.clone());
        let mut written = self
            .blocking(move |store| {
                Ok(store.record_address_event(
                    &tenant,
                    &address,
                    event,
                    occurred_at,
                    &context,
                    now,
                    &rules,
                )?)
            })
            .await?;
        self.sync().await?;
        written.value = written.value.as_of(now, &rules);
        Ok(written)
    }

    /// An address's state as of now (VALID when never seen).
    pub fn address_state(&self, tenant: &Tenant, address: &Address) -> Result<AddressState> {
        let state = self.store.address_state(tenant, address)?;
        Ok(state.as_of(self.now(), &self.rules(tenant)?))
    }

    /// The profiles that use an address (at most [`ADDRESS_USERS_MAX`]) and
    /// whether there were more.
    pub async fn address_users(
        &self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<(Vec<ProfileId>, bool)> {
        let (tenant, address) = (tenant.clone(), address.clone());
        self.blocking(move |store| Ok(store.address_users(&tenant, &address, ADDRESS_USERS_MAX)?))
            .await
    }

    /// A page of the addresses that are not VALID now (or have `status`).
    pub async fn list_addresses(
        &self,
        tenant: &Tenant,
        status: Option<AddressStatus>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Page<(Address, AddressState), Vec<u8>>> {
        let (tenant, now, rules) = (tenant.clone(), self.now(), self.rules(tenant)?);
        self.blocking(move |store| {
            let (found, next) = store.list_addresses(&tenant, status, after.as_deref(), limit)?;
            // The index holds stored statuses; an address whose errors expired reads VALID now.
            let items = found
                .into_iter()
                .map(|(address, state)| (address, state.as_of(now, &rules)))
                .filter(|(_, state)| {
                    state.status != AddressStatus::Valid && status.is_none_or(|s| s == state.status)
                })
                .collect();
            Ok(Page { items, next })
        })
        .await
    }

    /// A page of an address's history, newest recorded first.
    pub async fn address_history(
        &self,
        tenant: &Tenant,
        address: &Address,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page<AddressEvent, u64>> {
        let (tenant, address) = (tenant.clone(), address.clone());
        self.blocking(move |store| {
            let mut items = store.address_history(&tenant, &address, before, limit + 1)?;
            Ok(page_by_sequence(&mut items, limit, |e| e.sequence))
        })
        .await
    }

    // ---- eligibility ----------------------------------------------------

    /// What a delivery on `channel`, or of `service`, checks: the channel
    /// (the service's when one is given), the tenant's regime for it, and the
    /// service. A channel that differs from the service's is invalid.
    pub fn delivery(
        &self,
        tenant: &Tenant,
        channel: Option<Channel>,
        service: Option<&ServiceId>,
    ) -> Result<Delivery> {
        let service = service.map(|id| self.service(tenant, id)).transpose()?;
        let channel = match (channel, &service) {
            (Some(channel), Some(service)) if channel != service.channel => {
                return Err(Error::invalid(
                    "channel",
                    format!(
                        "service '{}' is delivered on {:?}; leave channel unspecified or give that one",
                        service.id.as_str(),
                        service.channel
                    ),
                ));
            }
            (_, Some(service)) => service.channel,
            (Some(channel), None) => channel,
            (None, None) => {
                return Err(Error::invalid(
                    "channel",
                    "is required unless service_id is given: one of EMAIL, SMS, PUSH, VOICE, DIRECT_MAIL",
                ));
            }
        };
        let regime = self.store.tenant_settings(tenant)?.regime(channel);
        Ok(Delivery {
            channel,
            regime,
            service: service.map(|s| s.id),
        })
    }

    /// Decides for each profile, in order: one profile read, one address
    /// read per address on the channel, and one subscription read for a
    /// service. Runs off the async workers, split across the cores when the
    /// batch is large.
    pub async fn check(
        &self,
        tenant: &Tenant,
        mut ids: Vec<ProfileId>,
        delivery: &Delivery,
    ) -> Result<(Vec<(ProfileId, Decision)>, Summary)> {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        let part_len = ids.len().div_ceil(workers).max(PARALLEL_CHECK_PART_MIN);
        let mut parts = Vec::new();
        while ids.len() > part_len {
            let rest = ids.split_off(part_len);
            parts.push(std::mem::replace(&mut ids, rest));
        }
        parts.push(ids);
        // Every part starts now; they are collected in order.
        let running: Vec<_> = parts
            .into_iter()
            .map(|part| {
                let (tenant, delivery) = (tenant.clone(), delivery.clone());
                self.spawn_blocking(move |store| decide_all(store, &tenant, part, &delivery))
            })
            .collect();
        let mut decisions = Vec::new();
        let mut summary = Summary::default();
        for part in running {
            let (part_decisions, part_summary) = joined(part.await)?;
            decisions.extend(part_decisions);
            summary.merge(&part_summary);
        }
        self.metrics.decisions(delivery.channel, &summary);
        Ok((decisions, summary))
    }

    /// Decides for one profile, on the calling task (a handful of point reads).
    pub fn check_one(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        delivery: &Delivery,
    ) -> Result<Decision> {
        let decision = decide_one(&self.store, tenant, id, delivery)?;
        self.metrics.decision(delivery.channel, &decision);
        Ok(decision)
    }

    // ---- tenant settings ------------------------------------------------

    /// A tenant's settings (the defaults when it set none).
    pub fn tenant_settings(&self, tenant: &Tenant) -> Result<TenantSettings> {
        Ok(self.store.tenant_settings(tenant)?)
    }

    /// Changes a tenant's settings. Durable when it returns.
    pub async fn update_tenant_settings(
        &self,
        tenant: &Tenant,
        update: &SettingsUpdate,
        context: &ChangeContext,
    ) -> Result<Written<TenantSettings>> {
        let (owned_tenant, owned_update, now) = (tenant.clone(), update.clone(), self.now());
        let written = self
            .write(move |store| {
                Ok(store.update_tenant_settings(&owned_tenant, &owned_update, now)?)
            })
            .await?;
        if written.changed {
            tracing::info!(
                source = ?context.source,
                principal = %context.principal,
                actor = %context.actor,
                reason = %context.reason,
                settings = ?written.value,
                "tenant settings changed"
            );
        }
        self.sync().await?;
        Ok(written)
    }

    /// The quarantine rules in force for a tenant.
    fn rules(&self, tenant: &Tenant) -> Result<QuarantineRules> {
        Ok(self
            .store
            .tenant_settings(tenant)?
            .rules(&self.settings.rules))
    }

    // ---- services and subscriptions -------------------------------------

    /// Creates a service. Durable when it returns.
    pub async fn create_service(
        &self,
        tenant: &Tenant,
        id: ServiceId,
        name: String,
        channel: Channel,
        double_opt_in: bool,
        context: &ChangeContext,
    ) -> Result<Service> {
        let service = Service {
            id,
            name,
            channel,
            double_opt_in,
            created_at: self.now(),
        };
        let owned_tenant = tenant.clone();
        let created = self
            .blocking(move |store| Ok(store.create_service(&owned_tenant, service)?))
            .await?;
        match created {
            Created::Created(service) => {
                tracing::info!(
                    service_id = service.id.as_str(),
                    principal = %context.principal,
                    actor = %context.actor,
                    "service created"
                );
                self.sync().await?;
                Ok(service)
            }
            Created::Exists(existing) => Err(Error::ServiceExists(existing.id.as_str().to_owned())),
            Created::TooMany => Err(Error::TooManyServices(SERVICES_PER_TENANT_MAX)),
        }
    }

    /// A service, or `ServiceNotFound`.
    pub fn service(&self, tenant: &Tenant, id: &ServiceId) -> Result<Service> {
        self.store
            .service(tenant, id)?
            .ok_or_else(|| Error::ServiceNotFound(id.as_str().to_owned()))
    }

    /// A page of a tenant's services.
    pub async fn services(
        &self,
        tenant: &Tenant,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Page<Service, Vec<u8>>> {
        let tenant = tenant.clone();
        self.blocking(move |store| {
            let (items, next) = store.services(&tenant, after.as_deref(), limit)?;
            Ok(Page { items, next })
        })
        .await
    }

    /// Subscribes a profile to a service; with double opt-in the result
    /// carries the token to send. Durable when it returns.
    pub async fn subscribe(
        &self,
        tenant: &Tenant,
        profile: &ProfileId,
        service: &ServiceId,
        context: &ChangeContext,
    ) -> Result<Written<Subscribed>> {
        let service = self.service(tenant, service)?;
        let ttl_ms =
            i64::try_from(self.settings.confirmation_token_ttl.as_millis()).unwrap_or(i64::MAX);
        let mut random = [0u8; crate::engine::TOKEN_BYTES];
        getrandom::fill(&mut random)
            .map_err(|e| Error::Unavailable(format!("no randomness for a token: {e}")))?;
        let (tenant, profile, context, now) =
            (tenant.clone(), profile.clone(), context.clone(), self.now());
        let written = self
            .write(move |store| {
                store
                    .subscribe(&tenant, &profile, &service, &context, now, ttl_ms, || {
                        Token::from_random(random)
                    })?
                    .ok_or_else(|| Error::ProfileNotFound(profile.as_str().to_owned()))
            })
            .await?;
        self.sync().await?;
        Ok(written)
    }

    /// Confirms a pending subscription by its token. Durable when it returns;
    /// a refused token changes nothing.
    pub async fn confirm_subscription(
        &self,
        tenant: &Tenant,
        token: &TokenHash,
        context: &ChangeContext,
    ) -> Result<Confirmed> {
        let (tenant, token, context, now) = (tenant.clone(), *token, context.clone(), self.now());
        let confirmed = self
            .write(move |store| Ok(store.confirm_subscription(&tenant, &token, &context, now)?))
            .await?;
        match confirmed {
            Ok(written) => {
                self.sync().await?;
                Ok(written.value)
            }
            Err(ConfirmRefusal::Unknown) => Err(Error::TokenNotFound),
            Err(ConfirmRefusal::Refused(refusal)) => Err(Error::TokenRefused(match refusal {
                TokenRefusal::Used => TokenProblem::Used,
                TokenRefusal::Expired(at) => TokenProblem::Expired(at),
                TokenRefusal::Superseded => TokenProblem::Superseded,
            })),
        }
    }

    /// Unsubscribes a profile from a service. Durable when it returns.
    pub async fn unsubscribe(
        &self,
        tenant: &Tenant,
        profile: &ProfileId,
        service: &ServiceId,
        context: &ChangeContext,
    ) -> Result<Written<Option<Subscription>>> {
        let service = self.service(tenant, service)?;
        let (tenant, profile, context, now) =
            (tenant.clone(), profile.clone(), context.clone(), self.now());
        let written = self
            .write(move |store| {
                store
                    .unsubscribe(&tenant, &profile, &service, &context, now)?
                    .ok_or_else(|| Error::ProfileNotFound(profile.as_str().to_owned()))
            })
            .await?;
        self.sync().await?;
        Ok(written)
    }

    /// A profile's subscriptions.
    pub async fn subscriptions(
        &self,
        tenant: &Tenant,
        profile: &ProfileId,
    ) -> Result<Vec<Subscription>> {
        self.profile(tenant, profile)?;
        let (tenant, profile) = (tenant.clone(), profile.clone());
        self.blocking(move |store| Ok(store.subscriptions(&tenant, &profile)?))
            .await
    }

    /// A page of a service's subscribers, optionally only those with `status`.
    pub async fn subscribers(
        &self,
        tenant: &Tenant,
        service: &ServiceId,
        status: Option<SubscriptionStatus>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Page<(ProfileId, SubscriptionStatus), Vec<u8>>> {
        self.service(tenant, service)?;
        let (tenant, service) = (tenant.clone(), service.clone());
        self.blocking(move |store| {
            let (found, next) = store.subscribers(&tenant, &service, after.as_deref(), limit)?;
            let items = found
                .into_iter()
                .filter(|(_, s)| status.is_none_or(|wanted| wanted == *s))
                .collect();
            Ok(Page { items, next })
        })
        .await
    }

    // ---- product usage --------------------------------------------------

    /// Opts a user out of usage tracking. Durable when it returns.
    pub async fn opt_out_usage(
        &self,
        tenant: &Tenant,
        user: &UserId,
        context: &ChangeContext,
    ) -> Result<Written<UsageOptOut>> {
        let (tenant, user, context, now) =
            (tenant.clone(), user.clone(), context.clone(), self.now());
        let written = self
            .write(move |store| Ok(store.opt_out_usage(&tenant, &user, &context, now)?))
            .await?;
        self.sync().await?;
        Ok(written)
    }

    /// Opts a user back in to usage tracking. Durable when it returns.
    pub async fn opt_in_usage(
        &self,
        tenant: &Tenant,
        user: &UserId,
        context: &ChangeContext,
    ) -> Result<Written<()>> {
        let (owned_tenant, owned_user) = (tenant.clone(), user.clone());
        let written = self
            .write(move |store| Ok(store.opt_in_usage(&owned_tenant, &owned_user)?))
            .await?;
        if written.changed {
            tracing::info!(
                user_id = user.as_str(),
                principal = %context.principal,
                actor = %context.actor,
                reason = %context.reason,
                "user opted back in to usage tracking"
            );
        }
        self.sync().await?;
        Ok(written)
    }

    /// A page of the users opted out of usage tracking.
    pub async fn usage_opt_outs(
        &self,
        tenant: &Tenant,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Page<UsageOptOut, Vec<u8>>> {
        let tenant = tenant.clone();
        self.blocking(move |store| {
            let (items, next) = store.usage_opt_outs(&tenant, after.as_deref(), limit)?;
            Ok(Page { items, next })
        })
        .await
    }

    /// Whether a user's usage may be tracked.
    pub fn tracking_allowed(&self, tenant: &Tenant, user: &UserId) -> Result<bool> {
        Ok(!self.store.is_usage_opted_out(tenant, user)?)
    }

    /// For each user (in order), whether their usage may be tracked: one
    /// point read per distinct user, off the async workers.
    pub async fn filter_tracking(&self, tenant: &Tenant, users: Vec<UserId>) -> Result<Vec<bool>> {
        let tenant = tenant.clone();
        self.blocking(move |store| {
            let mut seen: std::collections::HashMap<UserId, bool> =
                std::collections::HashMap::new();
            users
                .into_iter()
                .map(|user| match seen.get(&user) {
                    Some(allowed) => Ok(*allowed),
                    None => {
                        let allowed = !store.is_usage_opted_out(&tenant, &user)?;
                        seen.insert(user, allowed);
                        Ok(allowed)
                    }
                })
                .collect()
        })
        .await
    }
}

/// What an eligibility check is for: resolved once per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The channel.
    pub channel: Channel,
    /// The tenant's regime for the channel.
    pub regime: Regime,
    /// The service, when the delivery is for one.
    pub service: Option<ServiceId>,
}

/// The result of a blocking task; a task that panicked or was cancelled is unavailable.
fn joined<T>(result: Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    result.map_err(|join| Error::Unavailable(format!("worker failed: {join}")))?
}

fn decide_one(
    store: &Store,
    tenant: &Tenant,
    id: &ProfileId,
    delivery: &Delivery,
) -> Result<Decision> {
    let profile = store.profile(tenant, id)?;
    let subscribed = match (&delivery.service, &profile) {
        (Some(service), Some(_)) => Some(
            store
                .subscription(tenant, id, service)?
                .is_some_and(|s| s.status == SubscriptionStatus::Active),
        ),
        _ => None,
    };
    let policy = Policy {
        regime: delivery.regime,
        subscribed,
    };
    let decision = decide(profile.as_ref(), delivery.channel, policy, |address| {
        store.address_status(tenant, address)
    })?;
    Ok(decision)
}

fn decide_all(
    store: &Store,
    tenant: &Tenant,
    ids: Vec<ProfileId>,
    delivery: &Delivery,
) -> Result<(Vec<(ProfileId, Decision)>, Summary)> {
    let mut summary = Summary::default();
    let mut decisions = Vec::with_capacity(ids.len());
    for id in ids {
        let decision = decide_one(store, tenant, &id, delivery)?;
        summary.add(&decision);
        decisions.push((id, decision));
    }
    Ok((decisions, summary))
}

/// Cuts a newest-first list fetched with one extra item into a page: the
/// cursor is the sequence of the last item kept when the extra one exists.
fn page_by_sequence<T: Clone>(
    items: &mut Vec<T>,
    limit: usize,
    sequence: impl Fn(&T) -> u64,
) -> Page<T, u64> {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more {
        items.last().map(&sequence)
    } else {
        None
    };
    Page {
        items: std::mem::take(items),
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::SystemClock,
        engine::{Channel, Source},
    };

    /// A write whose lock is held (here by a paused backup) must wait off the
    /// async workers: with a single worker, a read still gets served while
    /// the write waits, and the write goes through once the lock is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_write_held_up_by_a_lock_waits_off_the_async_workers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = App::open(dir.path(), Settings::default(), Arc::new(SystemClock)).expect("open");
        let tenant = Tenant::parse("acme").expect("valid");
        let id = ProfileId::parse("p1").expect("valid");
        let context = ChangeContext::new(Source::Api, "test", "").expect("valid");
        app.upsert_profile(&tenant, &id, ProfileAddresses::default())
            .await
            .expect("upsert");

        // Every lock stripe held by another thread, as during a backup, until
        // the reader below releases them or a watchdog gives up on it.
        let (paused_tx, paused_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let store = Arc::clone(&app.store);
        let pauser = std::thread::spawn(move || {
            let _paused = store.pause_writes();
            paused_tx.send(()).expect("test alive");
            // True when the reader released the stripes, false on the watchdog.
            release_rx.recv_timeout(Duration::from_secs(30)).is_ok()
        });
        paused_rx.recv().expect("paused");

        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let writer = tokio::spawn({
            let (app, tenant, id, context) =
                (app.clone(), tenant.clone(), id.clone(), context.clone());
            async move {
                started_tx.send(()).expect("test alive");
                app.set_consent(
                    &tenant,
                    &id,
                    Scope::Channel(Channel::Email),
                    ConsentStatus::OptedOut,
                    &context,
                )
                .await
            }
        });
        started_rx.await.expect("writer started");
        // The one worker runs this read only once the writer has yielded:
        // had the write waited for its lock on the worker, it would run only
        // after the watchdog freed the stripes.
        let reader = tokio::spawn({
            let (app, tenant, id) = (app.clone(), tenant.clone(), id.clone());
            async move {
                let read = app.profile(&tenant, &id);
                let _ = release_tx.send(());
                read
            }
        });
        let profile = reader.await.expect("no panic").expect("profile");
        assert!(
            pauser.join().expect("pauser"),
            "the read was not served while the write waited for its lock"
        );
        assert_eq!(profile.history_seq, 0, "the write waited for its lock");

        let written = writer.await.expect("no panic").expect("written");
        assert!(written.changed);
        assert_eq!(written.value.history_seq, 1);
    }
}
