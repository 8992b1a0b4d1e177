//! The application: each operation a client can ask for, in domain terms.
//!
//! It joins the store and the rules, decides what runs off the async workers,
//! and waits for durability before any write is acknowledged. The gRPC layer
//! (`api`) only converts to and from these calls.

use std::{path::Path, sync::Arc, time::Duration};

use crate::{
    clock::Clock,
    engine::{
        Address, AddressEvent, AddressEventKind, AddressState, AddressStatus, ChangeContext,
        Channel, ConsentHistoryEntry, ConsentStatus, Decision, ErrorReason, EventId, FeedbackKind,
        Profile, ProfileAddresses, ProfileId, QuarantineRules, Scope, Summary, Tenant, UnixMillis,
        decide,
    },
    error::{Error, Result},
    store::{Snapshot, Store, StoreError, Written},
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

/// Everything the server can be configured with, once parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The quarantine rule parameters (server-wide for now).
    pub rules: QuarantineRules,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// How long in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rules: QuarantineRules::default(),
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
            max_concurrent_streams: CONCURRENT_STREAMS_MAX_DEFAULT,
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
        Self {
            store: Arc::new(store),
            clock,
            settings: Arc::new(settings),
        }
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
        Ok(self.store.sync().await?)
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

    // ---- profiles -------------------------------------------------------

    /// Creates a profile or replaces its addresses. Durable when it returns.
    pub async fn upsert_profile(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        addresses: ProfileAddresses,
    ) -> Result<Written<Profile>> {
        let written = self
            .store
            .upsert_profile(tenant, id, addresses, self.now())?;
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
        let written = self
            .store
            .set_consent(tenant, id, scope, status, context, self.now())?
            .ok_or_else(|| Error::ProfileNotFound(id.as_str().to_owned()))?;
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
        let rules = self.settings.rules;
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
        Ok(state.as_of(self.now(), &self.settings.rules))
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
        let (tenant, now, rules) = (tenant.clone(), self.now(), self.settings.rules);
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

    /// Decides for each profile, in order: one profile read and one address
    /// read per address on the channel. Runs off the async workers, split
    /// across the cores when the batch is large.
    pub async fn check(
        &self,
        tenant: &Tenant,
        mut ids: Vec<ProfileId>,
        channel: Channel,
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
                let tenant = tenant.clone();
                self.spawn_blocking(move |store| decide_all(store, &tenant, part, channel))
            })
            .collect();
        let mut decisions = Vec::new();
        let mut summary = Summary::default();
        for part in running {
            let (part_decisions, part_summary) = joined(part.await)?;
            decisions.extend(part_decisions);
            summary.merge(&part_summary);
        }
        Ok((decisions, summary))
    }

    /// Decides for one profile, on the calling task (a handful of point reads).
    pub fn check_one(&self, tenant: &Tenant, id: &ProfileId, channel: Channel) -> Result<Decision> {
        decide_one(&self.store, tenant, id, channel)
    }
}

/// The result of a blocking task; a task that panicked or was cancelled is unavailable.
fn joined<T>(result: Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    result.map_err(|join| Error::Unavailable(format!("worker failed: {join}")))?
}

fn decide_one(
    store: &Store,
    tenant: &Tenant,
    id: &ProfileId,
    channel: Channel,
) -> Result<Decision> {
    let profile = store.profile(tenant, id)?;
    let decision = decide(profile.as_ref(), channel, |address| {
        store.address_status(tenant, address)
    })?;
    Ok(decision)
}

fn decide_all(
    store: &Store,
    tenant: &Tenant,
    ids: Vec<ProfileId>,
    channel: Channel,
) -> Result<(Vec<(ProfileId, Decision)>, Summary)> {
    let mut summary = Summary::default();
    let mut decisions = Vec::with_capacity(ids.len());
    for id in ids {
        let decision = decide_one(store, tenant, &id, channel)?;
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
