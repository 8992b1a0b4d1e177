//! The application: each operation a client can ask for, in domain terms.
//!
//! It runs the rules (`engine`) over the store's interface (`store::Store`),
//! once for every store, and owns what each operation guarantees:
//! - **durability**: a write returns only once its change is durable
//!   ([`App::sync`]) and in the decision index ([`crate::index::Index::wait_for`]);
//!   also a write that changed nothing, since the state it reports may have
//!   been written by a request not yet acknowledged;
//! - **decisions** read only the index, which holds only durable state;
//! - **time** comes from the injected [`Clock`], once per operation.
//!
//! One file per slice, as in `api`: profiles, consent, quarantine,
//! eligibility, subscriptions, tenants, usage.

mod consent;
mod eligibility;
mod erasure;
mod preferences;
mod profiles;
mod quarantine;
mod subscriptions;
mod tenants;
mod usage;
mod watch;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

pub use eligibility::{BATCH_PART_MIN, Decided, DecisionSink, Ids};
pub use erasure::{EXPORT_HISTORY_ENTRIES_MAX, SubjectData, TOMBSTONE_ACTOR};
pub use preferences::{
    LINK_TTL_DEFAULT, LinkSettings, PAGE_LANGUAGES, PreferenceLink, Preferences, one_click_path,
    page_path,
};
pub(crate) use quarantine::record_manual;
pub use quarantine::{ManualEvent, Recorded, Recording};
pub use subscriptions::{Confirmed, SERVICES_PER_TENANT_MAX};

pub use crate::index::Delivery;
use crate::{
    clock::Clock,
    connection::ConnectionLimits,
    engine::{LogLimits, Profile, ProfileId, QuarantineRules, Tenant, UnixMillis},
    error::{Error, Result},
    index::{Index, Readiness},
    metrics::Metrics,
    store::{
        CompactionPolicy, Lock, Position, Snapshot, Store, StoreError, Txn,
        sled::{SledOptions, SledStore},
    },
};

/// How far in the future a feedback event's `occurred_at` may lie (clock skew).
pub const FEEDBACK_FUTURE_SKEW_MAX: Duration = Duration::from_secs(5 * 60);
/// How often `App::close` looks whether the last request let go of the store.
const STORE_CLOSE_POLL: Duration = Duration::from_millis(2);
/// Most profiles listed by `GetAddressStatus`.
pub const ADDRESS_USERS_MAX: usize = 1000;
/// Default [`CompactionPolicy::ratio`]: a store is copied once it takes
/// three times what a fresh copy of its records would.
pub const COMPACTION_RATIO_DEFAULT: u32 = 3;
/// Default [`CompactionPolicy::min_bytes`]: smaller stores are left as they are.
pub const COMPACTION_MIN_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Default time between two retention sweeps (markers and tokens past their time).
pub const RETENTION_SWEEP_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// Most records one sweep deletes in one commit; a sweep repeats until done.
const RETENTION_SWEEP_BATCH: usize = 10_000;
/// How many loaded records between two progress reports at start-up.
const LOAD_PROGRESS_EVERY: u64 = 250_000;

/// Default time a request may take before tonic cuts it off (`CANCELLED`).
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default time in-flight requests get to finish at shutdown.
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(10);
/// Default limit of concurrent HTTP/2 streams (requests) per connection.
pub const CONCURRENT_STREAMS_MAX_DEFAULT: u32 = 256;
/// Default limit of client connections open at once.
pub const CONNECTIONS_MAX_DEFAULT: usize = 512;
/// Default time from a connection's accept to its first request.
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default time a connection stays open with no request in flight.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// Default time between two HTTP/2 keep-alive pings on a quiet connection.
pub const KEEPALIVE_INTERVAL_DEFAULT: Duration = Duration::from_secs(30);
/// Default time a keep-alive ping waits for its answer before the connection is closed.
pub const KEEPALIVE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default time a stream waits for the client's next message, or for the
/// client to take the next answer, before it is ended.
pub const STREAM_IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default longest a stream may last.
pub const STREAM_MAX_DURATION_DEFAULT: Duration = Duration::from_secs(10 * 60);
/// How far behind the database's committed changes a replica's decisions may
/// be before it refuses to decide (`--max-staleness`; the PostgreSQL store).
pub const MAX_STALENESS_DEFAULT: Duration = Duration::from_secs(2);
/// Default lifetime of a double opt-in confirmation token.
pub use watch::{
    WATCH_CHECKPOINT_INTERVAL_DEFAULT, WATCH_MAX_STREAMS_DEFAULT, WATCH_RETENTION_CHANGES_DEFAULT,
    WATCH_RETENTION_DEFAULT, WatchSettings,
};

pub const CONFIRMATION_TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Everything the server can be configured with, once parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The quarantine rule parameters of tenants that set none of their own.
    pub rules: QuarantineRules,
    /// How long and how many events an address's log keeps.
    pub log_limits: LogLimits,
    /// How long a double opt-in confirmation token works.
    pub confirmation_token_ttl: Duration,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// How long in-flight requests get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Client connections open at once, and how long one may take to send
    /// its first request or stay idle (see `connection`).
    pub connections: ConnectionLimits,
    /// Time between two HTTP/2 keep-alive pings on a quiet connection.
    pub keepalive_interval: Duration,
    /// How long a keep-alive ping waits for its answer; then the connection is closed.
    pub keepalive_timeout: Duration,
    /// How long a stream (StreamEligibility, Backup) waits for the client's
    /// next message, or for the client to take the next answer.
    pub stream_idle_timeout: Duration,
    /// The longest a stream may last.
    pub stream_max_duration: Duration,
    /// sled's page cache, in bytes (`None`: the store's default).
    pub cache_bytes: Option<u64>,
    /// Time between two retention sweeps.
    pub retention_sweep_interval: Duration,
    /// When the store is compacted to give disk space back (see `Store::reclaim`).
    pub compaction: CompactionPolicy,
    /// API keys and TLS; the default is neither (loopback only, see `main`).
    pub security: crate::auth::Security,
    /// A replica whose store has not read its change feed for longer than
    /// this refuses eligibility decisions (UNAVAILABLE, health NOT_SERVING)
    /// rather than decide on consent that may have changed.
    pub max_staleness: Duration,
    /// The change feed for clients (`WatchService`).
    pub watch: WatchSettings,
    /// Preference links (`PreferenceService`); `None`: not configured.
    pub links: Option<LinkSettings>,
    /// The preference page's HTTP server (`--http-listen`).
    pub page: crate::web::PageSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rules: QuarantineRules::default(),
            log_limits: LogLimits::default(),
            confirmation_token_ttl: CONFIRMATION_TOKEN_TTL_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
            max_concurrent_streams: CONCURRENT_STREAMS_MAX_DEFAULT,
            connections: ConnectionLimits {
                max_connections: CONNECTIONS_MAX_DEFAULT,
                handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
                idle_timeout: IDLE_TIMEOUT_DEFAULT,
            },
            keepalive_interval: KEEPALIVE_INTERVAL_DEFAULT,
            keepalive_timeout: KEEPALIVE_TIMEOUT_DEFAULT,
            stream_idle_timeout: STREAM_IDLE_TIMEOUT_DEFAULT,
            stream_max_duration: STREAM_MAX_DURATION_DEFAULT,
            cache_bytes: None,
            retention_sweep_interval: RETENTION_SWEEP_INTERVAL_DEFAULT,
            compaction: CompactionPolicy {
                ratio: COMPACTION_RATIO_DEFAULT,
                min_bytes: COMPACTION_MIN_BYTES_DEFAULT,
            },
            security: crate::auth::Security::default(),
            max_staleness: MAX_STALENESS_DEFAULT,
            watch: WatchSettings::default(),
            links: None,
            page: crate::web::PageSettings::default(),
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

/// The outcome of a write that may be an idempotent repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<T> {
    /// The state after the request.
    pub value: T,
    /// False when the request changed nothing.
    pub changed: bool,
}

/// The application state shared by every request.
#[derive(Debug, Clone)]
pub struct App {
    /// The store.
    store: Arc<dyn Store>,
    /// What decisions read.
    index: Arc<Index>,
    /// The time source of every rule.
    clock: Arc<dyn Clock>,
    /// The settings.
    settings: Arc<Settings>,
    /// What the server counts (served by `metrics::serve` when asked).
    metrics: Arc<Metrics>,
    /// Watchers: woken when the feed delivers, and their number bounded.
    watchers: Arc<watch::Watchers>,
}

impl App {
    /// Opens the sled store in `data_dir`. The decision index is built by
    /// [`App::start`].
    pub fn open(
        data_dir: &Path,
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        Self::open_with(data_dir, settings, clock, SledOptions::default())
    }

    /// [`App::open`] with store options (a sync failpoint, in tests).
    pub fn open_with(
        data_dir: &Path,
        settings: Settings,
        clock: Arc<dyn Clock>,
        mut options: SledOptions,
    ) -> Result<Self, StoreError> {
        options.cache_bytes = options.cache_bytes.or(settings.cache_bytes);
        let store = SledStore::open_with(data_dir, options)?;
        Ok(Self::with_store(Arc::new(store), settings, clock))
    }

    /// Wraps a store that is already open (the in-memory one in tests).
    pub fn with_store(store: Arc<dyn Store>, settings: Settings, clock: Arc<dyn Clock>) -> Self {
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
        let watchers = Arc::new(watch::Watchers::new(settings.watch.max_streams));
        Self {
            store,
            index: Arc::new(Index::new()),
            clock,
            settings: Arc::new(settings),
            metrics,
            watchers,
        }
    }

    /// Builds the decision index from the store and then follows the feed
    /// of committed changes. Writes and decisions wait until it is done.
    /// Runs off the async workers; logs its progress.
    pub async fn start(&self) -> Result<()> {
        let (store, index) = (Arc::clone(&self.store), Arc::clone(&self.index));
        let watchers = Arc::clone(&self.watchers);
        let started = Instant::now();
        let handle = tokio::runtime::Handle::current();
        let loaded = tokio::task::spawn_blocking(move || {
            let mut records = 0u64;
            let mut visit = |item| {
                index.load(item);
                records += 1;
                if records.is_multiple_of(LOAD_PROGRESS_EVERY) {
                    index.loading(records);
                    tracing::info!(records, "loading the decision index");
                }
            };
            let position = handle.block_on(store.load_decision_state(&mut visit))?;
            let sink_index = Arc::clone(&index);
            let watchers = Arc::clone(&watchers);
            store.follow(
                position,
                Box::new(move |committed| {
                    sink_index.apply(committed);
                    watchers.wake();
                }),
            )?;
            index.loaded(position);
            Ok::<_, StoreError>(records)
        })
        .await;
        match loaded {
            Ok(Ok(records)) => {
                let (profiles, addresses) = self.index.counts();
                tracing::info!(
                    records,
                    profiles,
                    addresses,
                    index_mib = self.index.memory_bytes() / (1 << 20),
                    elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "decision index ready"
                );
                Ok(())
            }
            Ok(Err(error)) => {
                self.index.failed(&error.to_string());
                Err(error.into())
            }
            Err(join) => {
                self.index.failed(&join.to_string());
                Err(Error::Unavailable(format!("index load failed: {join}")))
            }
        }
    }

    /// Whether the index is ready, loading, or failed.
    pub fn readiness(&self) -> Readiness {
        self.index.readiness()
    }

    /// A receiver that sees the index's readiness change.
    pub fn watch_readiness(&self) -> tokio::sync::watch::Receiver<Readiness> {
        self.index.watch_readiness()
    }

    /// Why writes are refused, once the store failed to flush.
    pub fn store_failure(&self) -> Option<Arc<str>> {
        self.store.failure()
    }

    /// Waits until the index is ready; an error when it failed.
    async fn ready(&self) -> Result<()> {
        if self.index.is_ready() {
            return Ok(());
        }
        let mut readiness = self.index.watch_readiness();
        loop {
            match &*readiness.borrow_and_update() {
                Readiness::Ready => return Ok(()),
                Readiness::Failed(why) => {
                    return Err(Error::Unavailable(format!(
                        "the decision index could not be built ({why}); see the server log"
                    )));
                }
                Readiness::Loading(_) => {}
            }
            if readiness.changed().await.is_err() {
                return Err(Error::Unavailable("the server is stopping".into()));
            }
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

    /// How long this replica's decisions have been cut off from the
    /// database's change feed, when that is longer than
    /// [`Settings::max_staleness`]; `None` while they are fresh (always, for
    /// a store whose changes all pass through this process).
    pub fn stale(&self) -> Option<Duration> {
        self.store
            .staleness()
            .filter(|age| *age > self.settings.max_staleness)
    }

    /// Waits until the index is ready, then refuses when it may be stale
    /// (see [`App::stale`]): what every decision asks first.
    async fn ready_to_decide(&self) -> Result<()> {
        self.ready().await?;
        match self.stale() {
            None => Ok(()),
            Some(age) => Err(Error::Unavailable(format!(
                "this replica has not read the database's change feed for {:.1} s (more than \
                 --max-staleness {:.1} s), so its decisions could miss a recent opt-out: it \
                 decides nothing until it catches up; ask another replica",
                age.as_secs_f64(),
                self.settings.max_staleness.as_secs_f64()
            ))),
        }
    }

    /// Starts a change once the index is ready (so that no change is made
    /// before the index follows the feed).
    async fn begin(&self, locks: Vec<Lock>) -> Result<Box<dyn Txn + '_>> {
        self.ready().await?;
        Ok(self.store.begin(locks).await?)
    }

    /// Begins a change that locks one profile, and reads the profile:
    /// `ProfileNotFound` when it does not exist.
    async fn begin_on_profile(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
    ) -> Result<(Box<dyn Txn + '_>, Profile)> {
        let mut tx = self
            .begin(vec![Lock::Profile(tenant.clone(), id.clone())])
            .await?;
        let profile = tx
            .profile(tenant, id)
            .await?
            .ok_or_else(|| Error::ProfileNotFound(id.as_str().to_owned()))?;
        Ok((tx, profile))
    }

    /// Waits until every write so far is durable and in the decision index.
    pub async fn sync(&self) -> Result<()> {
        let started = Instant::now();
        let position = self.store.position();
        let synced = self.store.sync().await;
        self.metrics.durable_write(started.elapsed());
        synced?;
        self.index.wait_for(position).await;
        Ok(())
    }

    /// What a write does after its commit: wait until it (and everything
    /// before it) is durable and in the index.
    async fn settle(&self, position: Position) -> Result<()> {
        self.sync().await?;
        self.index.wait_for(position).await;
        Ok(())
    }

    /// The records of `tenant` (every tenant when `None`) as of one moment,
    /// for an online backup: writes wait only while the moment is taken (on
    /// the sled store), reads and writes go on while it is read.
    pub async fn snapshot(&self, tenant: Option<Tenant>) -> Result<Box<dyn Snapshot>> {
        let store = Arc::clone(&self.store);
        self.off_workers(move || async move { Ok(store.snapshot(tenant.as_ref()).await?) })
            .await
    }

    /// Runs store work that may take long (scans, bulk copies) on the
    /// blocking pool, inside the caller's tracing span.
    async fn off_workers<T, F, Fut>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let span = tracing::Span::current();
        let handle = tokio::runtime::Handle::current();
        joined(tokio::task::spawn_blocking(move || span.in_scope(|| handle.block_on(work()))).await)
    }

    /// Deletes what retention lets go of: feedback event-id markers older
    /// than the late-event horizon, confirmation tokens past their expiry.
    /// Returns how many records went.
    pub async fn sweep(&self) -> Result<u64> {
        self.ready().await?;
        let now = self.now();
        let markers_before = self.settings.log_limits.cutoff(now);
        let changes = self.settings.watch.retention();
        let mut removed = 0;
        loop {
            let store = Arc::clone(&self.store);
            let expired = self
                .off_workers(move || async move {
                    Ok(store
                        .expire(markers_before, now, changes, RETENTION_SWEEP_BATCH)
                        .await?)
                })
                .await?;
            let n = expired.event_markers + expired.tokens + expired.changes;
            removed += n;
            if n < u64::try_from(RETENTION_SWEEP_BATCH).unwrap_or(u64::MAX) {
                break;
            }
        }
        if removed > 0 {
            self.sync().await?;
            tracing::debug!(removed, "retention sweep");
        }
        Ok(removed)
    }

    /// Compacts the store if it takes too much disk (see
    /// [`Settings::compaction`]); writes go on meanwhile. Runs beside the
    /// retention sweep, not in it: a compaction copies every record, which
    /// may take a while, and sweeps must keep their pace.
    pub async fn compact(&self) -> Result<Option<crate::store::Reclaimed>> {
        self.ready().await?;
        let store = Arc::clone(&self.store);
        let policy = self.settings.compaction;
        self.off_workers(move || async move { Ok(store.reclaim(policy).await?) })
            .await
    }

    /// Makes every write durable, then closes the store once no request holds
    /// it any more (waiting at most `within`), so that the data directory is
    /// free when this returns: a new `App` can open it in the same process.
    pub async fn close(self, within: Duration) -> Result<()> {
        if self.store.failure().is_none() {
            self.store.sync().await?;
        }
        let deadline = tokio::time::Instant::now() + within;
        let store = self.store;
        loop {
            // Only this handle left: nobody can clone it any more.
            if Arc::strong_count(&store) == 1 {
                // Dropping the store joins its committer thread: not on an async worker.
                return joined(
                    tokio::task::spawn_blocking(move || {
                        drop(store);
                        Ok(())
                    })
                    .await,
                );
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    holders = Arc::strong_count(&store) - 1,
                    "requests still hold the store; it closes when they end"
                );
                return Ok(());
            }
            // Tasks of finished connections are being dropped; look again shortly.
            tokio::time::sleep(STORE_CLOSE_POLL).await;
        }
    }
}

/// The result of a blocking task; a task that panicked or was cancelled is unavailable.
fn joined<T>(result: Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    result.map_err(|join| Error::Unavailable(format!("worker failed: {join}")))?
}

/// Cuts a newest-first list fetched with one extra item into a page: the
/// cursor is the key of the last item kept when the extra one exists.
fn page_by_key<T, K>(mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> K) -> Page<T, K> {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(&key) } else { None };
    Page { items, next }
}

#[cfg(test)]
mod tests;
