//! The PostgreSQL store: the same interface as the embedded sled store, for
//! N stateless replicas over one database.
//!
//! - Each [`Txn`] is one PostgreSQL transaction on a pooled connection. Its
//!   [`Lock`]s are taken twice: as stripes of this process's lock table
//!   (so that changes of one process queue here, without holding a
//!   connection), then as transaction-level advisory locks
//!   (`pg_advisory_xact_lock`, in key order), which serialise the replicas.
//!   Locks come before the first write, so two changes of one key get
//!   transaction ids in commit order (the feed relies on it).
//! - Staged writes are sent at commit, pipelined, with the change's feed row
//!   (`consentd_changes`), then `COMMIT`; every connection runs with
//!   `synchronous_commit = on`, so a commit that returned is on disk (and on
//!   the synchronous standbys, when there are any).
//! - The index learns of commits from the change feed (`feed.rs`), which
//!   every replica polls; [`Store::sync`] waits for a poll that started
//!   after it.
//! - Reads outside a change read committed state on any pooled connection;
//!   `load_decision_state`, dumps and snapshots read one REPEATABLE READ
//!   snapshot.
//!
//! The schema (`schema_v*.sql`) is applied at start-up (`schema.rs`).

mod dump;
mod feed;
mod schema;
mod sql;
#[cfg(test)]
pub(crate) mod tests;
mod watch;

use std::{
    collections::HashMap,
    fmt,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use sha2::{Digest, Sha256};

use self::{feed::Feed, sql::Op};
use super::{
    Change, ChangeRetention, CompactionPolicy, Cursor, Direction, DumpItem, Expired, FeedSink,
    FlushObserver, Loaded, Lock, Page, Position, Reclaimed, Result, Snapshot, Store, StoreError,
    Txn, WatchRead,
    codec::{self, CodecError},
    locks::{Held, LockTable},
};
use crate::engine::{
    Address, AddressConsent, AddressEvent, AddressHash, AddressState, AddressStatus,
    ConsentHistoryEntry, Erasure, ErasureKey, EventId, EventKey, Profile, ProfileId, Service,
    ServiceId, Subscription, SubscriptionStatus, Tenant, TenantSettings, TokenHash, TokenRecord,
    Tombstone, UnixMillis, UsageOptOut, UserId,
};

pub use schema::SCHEMA_VERSION;

/// How the PostgreSQL store connects and follows its feed.
#[derive(Clone)]
pub struct PgOptions {
    /// The connection URL (`postgres://user:password@host:port/database?sslmode=...`)
    /// or key-value string. Secret: never logged.
    pub url: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// A PEM file of the certificate authorities that sign the database's
    /// certificate, added to the system's roots (TLS is used when the URL's
    /// `sslmode` is `prefer`, the default, or `require`).
    pub ca_file: Option<PathBuf>,
    /// How often the change feed is read when nothing here asks for it:
    /// how long another replica's change takes, at most, to reach this one's
    /// index while the database is reachable.
    pub feed_interval: Duration,
    /// How long `sync` waits for the feed before it fails the write's answer.
    pub feed_timeout: Duration,
    /// The schema (`search_path`) to use; `None`: the database's default.
    pub schema: Option<String>,
}

impl PgOptions {
    /// Options with the defaults, for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 32,
            ca_file: None,
            feed_interval: Duration::from_millis(50),
            feed_timeout: Duration::from_secs(10),
            schema: None,
        }
    }
}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact(&self.url))
            .field("pool_size", &self.pool_size)
            .field("ca_file", &self.ca_file)
            .field("feed_interval", &self.feed_interval)
            .field("feed_timeout", &self.feed_timeout)
            .field("schema", &self.schema)
            .finish()
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) => {
            let hosts: Vec<String> = config
                .get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(name) => name.clone(),
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .collect();
            format!(
                "postgres://{}@{}/{}",
                config.get_user().unwrap_or(""),
                hosts.join(","),
                config.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "(an unreadable database URL)".into(),
    }
}

pub(super) fn db_error(error: tokio_postgres::Error) -> StoreError {
    // The message of a database error names its code and detail; keep both.
    let text = match error.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.message(), db.code().code(), error),
        None => error.to_string(),
    };
    StoreError::io(std::io::Error::other(format!("PostgreSQL: {text}")))
}

pub(super) fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    StoreError::io(std::io::Error::other(format!(
        "PostgreSQL connection pool: {error}"
    )))
}

pub(super) fn incompatible(reason: String) -> StoreError {
    StoreError::Corrupt {
        key: "consentd_schema".into(),
        reason,
    }
}

fn corrupt_value(what: &'static str) -> impl FnOnce(CodecError) -> StoreError {
    move |e| sql::corrupt(what, e)
}

/// The advisory lock key of a [`Lock`]: the first 8 bytes of a SHA-256 of
/// its parts, the same in every process and every build.
fn advisory_key(lock: &Lock) -> i64 {
    let mut hash = Sha256::new();
    let mut part = |tag: u8, parts: &[&str]| {
        hash.update([tag]);
        for p in parts {
            hash.update((p.len() as u64).to_be_bytes());
            hash.update(p.as_bytes());
        }
    };
    match lock {
        Lock::Profile(t, id) => part(1, &[t.as_str(), id.as_str()]),
        Lock::Address(t, a) => part(
            2,
            &[t.as_str(), &sql::kind(a.kind()).to_string(), a.as_str()],
        ),
        Lock::FeedbackEvent(t, id) => part(3, &[t.as_str(), id.as_str()]),
        Lock::Token(t, h) => {
            let hex: String = h.0.iter().map(|b| format!("{b:02x}")).collect();
            part(4, &[t.as_str(), &hex]);
        }
        Lock::Services(t) => part(5, &[t.as_str()]),
        Lock::TenantSettings(t) => part(6, &[t.as_str()]),
        Lock::UsageUser(t, id) => part(7, &[t.as_str(), id.as_str()]),
        Lock::ErasureKey(t) => part(8, &[t.as_str()]),
    }
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The rustls client configuration: the system's roots, and `ca_file`'s.
fn tls_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| StoreError::Open {
            path: path.clone(),
            source: Arc::new(std::io::Error::other(e.to_string())),
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| StoreError::Open {
                path: path.clone(),
                source: Arc::new(std::io::Error::other(e.to_string())),
            })?;
            roots.add(cert).map_err(|e| StoreError::Open {
                path: path.clone(),
                source: Arc::new(std::io::Error::other(e.to_string())),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::io(std::io::Error::other(e.to_string())))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// How to open a connection outside the pool (the dump readers' own).
#[derive(Clone)]
pub(super) struct Connector {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl Connector {
    /// A connection driven by the current runtime.
    pub(super) async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(db_error)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "a database connection ended");
            }
        });
        Ok(client)
    }
}

/// The PostgreSQL store. See the module documentation.
pub struct PgStore {
    pool: Pool,
    connector: Connector,
    locks: LockTable,
    feed: Arc<Feed>,
    options: PgOptions,
    observer: OnceLock<FlushObserver>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("options", &self.options)
            .field("feed", &self.feed)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.feed.close();
    }
}

impl PgStore {
    /// Connects, checks the server, and brings the schema up to date.
    pub async fn connect(options: PgOptions) -> Result<Self> {
        let mut config: tokio_postgres::Config = options.url.parse().map_err(|e| {
            StoreError::io(std::io::Error::other(format!(
                "the database URL cannot be read: {e}"
            )))
        })?;
        // Durable answers: every commit waits for its WAL flush (and for
        // the synchronous standbys), whatever the server's default.
        // (After the URL's own `options`, which are kept.)
        let mut settings = config.get_options().unwrap_or("").to_owned();
        settings.push_str(" -c synchronous_commit=on");
        if let Some(schema) = &options.schema {
            settings.push_str(&format!(" -c search_path={schema}"));
        }
        config.options(settings.trim());
        if config.get_application_name().is_none() {
            config.application_name("consentd");
        }
        config.connect_timeout(Duration::from_secs(10));
        let tls =
            tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(options.ca_file.as_ref())?);
        let connector = Connector {
            config: config.clone(),
            tls: tls.clone(),
        };
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::io(std::io::Error::other(e.to_string())))?;
        let feed = Arc::new(Feed::new(options.feed_interval, options.feed_timeout));
        {
            let mut client = pool.get().await.map_err(pool_error)?;
            schema::migrate(&mut client).await?;
            // The feed starts here, or after the decision state's load.
            let now: String = client
                .query_one("SELECT pg_current_snapshot()::text", &[])
                .await
                .map_err(db_error)?
                .get(0);
            feed.start_after(now);
        }
        Ok(Self {
            pool,
            connector,
            locks: LockTable::default(),
            feed,
            options,
            observer: OnceLock::new(),
        })
    }

    /// How long ago this process last read the change feed (`None`: not yet).
    pub fn feed_age(&self) -> Option<Duration> {
        self.feed.since_last_poll()
    }

    async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn query(
        &self,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let client = self.client().await?;
        let statement = client.prepare_cached(statement).await.map_err(db_error)?;
        client.query(&statement, params).await.map_err(db_error)
    }
}

/// One page from rows fetched with `LIMIT limit + 1`: the cursor is made
/// from the last row kept.
fn page_of<T>(
    rows: Vec<tokio_postgres::Row>,
    limit: usize,
    item: impl Fn(&tokio_postgres::Row) -> Result<T>,
    cursor: impl Fn(&tokio_postgres::Row) -> Result<Cursor>,
) -> Result<Page<T>> {
    let more = rows.len() > limit;
    let kept = &rows[..rows.len().min(limit)];
    let items = kept.iter().map(&item).collect::<Result<Vec<T>>>()?;
    let next = match (more, kept.last()) {
        (true, Some(last)) => Some(cursor(last)?),
        _ => None,
    };
    Ok(Page { items, next })
}

fn limit_plus_one(limit: usize) -> i64 {
    i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX)
}

/// The id bytes of a cursor (services, subscribers, usage opt-outs).
fn id_cursor(after: Option<&Cursor>) -> Vec<u8> {
    after.map(|c| c.0.clone()).unwrap_or_default()
}

fn id_bytes_cursor(row: &tokio_postgres::Row, i: usize) -> Result<Cursor> {
    Ok(Cursor(sql::bytes(row, i)?))
}

#[async_trait]
impl Store for PgStore {
    async fn tenant_settings(&self, tenant: &Tenant) -> Result<Option<TenantSettings>> {
        read::tenant_settings(&*self.client().await?, tenant).await
    }

    async fn service(&self, tenant: &Tenant, id: &ServiceId) -> Result<Option<Service>> {
        read::service(&*self.client().await?, tenant, id).await
    }

    async fn services(
        &self,
        tenant: &Tenant,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<Service>> {
        let rows = self
            .query(
                "SELECT service_id, value FROM consentd_services
                 WHERE tenant = $1 AND service_id > $2 ORDER BY service_id LIMIT $3",
                &[&tenant.as_str(), &id_cursor(after), &limit_plus_one(limit)],
            )
            .await?;
        page_of(
            rows,
            limit,
            |r| sql::service(r, 0),
            |r| id_bytes_cursor(r, 0),
        )
    }

    async fn profile(&self, tenant: &Tenant, id: &ProfileId) -> Result<Option<Profile>> {
        read::profile(&*self.client().await?, tenant, id).await
    }

    async fn consent_history(
        &self,
        tenant: &Tenant,
        id: &ProfileId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ConsentHistoryEntry>> {
        let Some(profile) = Store::profile(self, tenant, id).await? else {
            return Ok(Vec::new());
        };
        let below = profile
            .history_seq
            .saturating_add(1)
            .min(before.unwrap_or(u64::MAX));
        let rows = self
            .query(
                "SELECT value FROM consentd_history
                 WHERE tenant = $1 AND profile_id = $2 AND seq < $3
                 ORDER BY seq DESC LIMIT $4",
                &[
                    &tenant.as_str(),
                    &id.as_str().as_bytes(),
                    &sql::big(below),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        rows.iter()
            .map(|row| {
                codec::decode_consent_entry(&sql::bytes(row, 0)?).map_err(corrupt_value("history"))
            })
            .collect()
    }

    async fn subscriptions(&self, tenant: &Tenant, id: &ProfileId) -> Result<Vec<Subscription>> {
        let rows = self
            .query(
                "SELECT service_id, value FROM consentd_subscriptions
                 WHERE tenant = $1 AND profile_id = $2 ORDER BY service_id",
                &[&tenant.as_str(), &id.as_str().as_bytes()],
            )
            .await?;
        rows.iter().map(|r| sql::subscription(r, 0)).collect()
    }

    async fn subscribers(
        &self,
        tenant: &Tenant,
        service: &ServiceId,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<(ProfileId, SubscriptionStatus)>> {
        let rows = self
            .query(
                "SELECT profile_id, status FROM consentd_subscriptions
                 WHERE tenant = $1 AND service_id = $2 AND profile_id > $3
                 ORDER BY profile_id LIMIT $4",
                &[
                    &tenant.as_str(),
                    &service.as_str().as_bytes(),
                    &id_cursor(after),
                    &limit_plus_one(limit),
                ],
            )
            .await?;
        page_of(
            rows,
            limit,
            |r| {
                let status: i16 = r.try_get(1).map_err(|e| sql::corrupt("row", e))?;
                let status = u8::try_from(status).unwrap_or(0);
                Ok((
                    ProfileId::from_trusted(sql::text(r, 0)?),
                    codec::decode_subscription_status(&[status])
                        .map_err(corrupt_value("subscription"))?,
                ))
            },
            |r| id_bytes_cursor(r, 0),
        )
    }

    async fn address_state(
        &self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressState>> {
        read::address_state(&*self.client().await?, tenant, address).await
    }

    async fn address_consent(
        &self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressConsent>> {
        read::address_consent(&*self.client().await?, tenant, address).await
    }

    async fn address_users(
        &self,
        tenant: &Tenant,
        address: &Address,
        limit: usize,
    ) -> Result<(Vec<ProfileId>, bool)> {
        let rows = self
            .query(
                "SELECT profile_id FROM consentd_address_users
                 WHERE tenant = $1 AND kind = $2 AND address = $3
                 ORDER BY profile_id LIMIT $4",
                &[
                    &tenant.as_str(),
                    &sql::kind(address.kind()),
                    &address.as_str().as_bytes(),
                    &limit_plus_one(limit),
                ],
            )
            .await?;
        let more = rows.len() > limit;
        let ids = rows
            .iter()
            .take(limit)
            .map(|r| Ok(ProfileId::from_trusted(sql::text(r, 0)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok((ids, more))
    }

    async fn address_history(
        &self,
        tenant: &Tenant,
        address: &Address,
        before: Option<EventKey>,
        limit: usize,
    ) -> Result<Vec<AddressEvent>> {
        let client = self.client().await?;
        log_events(&client, tenant, address, before, Direction::Before, limit).await
    }

    async fn list_addresses(
        &self,
        tenant: &Tenant,
        status: Option<AddressStatus>,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<(Address, AddressState)>> {
        // The cursor: status, kind, then the address's bytes.
        let (after_status, after_kind, after_address) = match after.map(|c| c.0.as_slice()) {
            Some([s, k, rest @ ..]) => (i16::from(*s), i16::from(*k), rest.to_vec()),
            _ => (0, 0, Vec::new()),
        };
        let wanted = status.map_or(0, sql::status);
        let rows = self
            .query(
                "SELECT status, kind, address, value FROM consentd_addresses
                 WHERE tenant = $1 AND status <> 1 AND ($2::smallint = 0 OR status = $2::smallint)
                   AND (status, kind, address) > ($3, $4, $5)
                 ORDER BY status, kind, address LIMIT $6",
                &[
                    &tenant.as_str(),
                    &wanted,
                    &after_status,
                    &after_kind,
                    &after_address,
                    &limit_plus_one(limit),
                ],
            )
            .await?;
        page_of(
            rows,
            limit,
            |r| {
                let state = codec::decode_address_state(&sql::bytes(r, 3)?)
                    .map_err(corrupt_value("address"))?;
                Ok((sql::address(r, 1, 2)?, state))
            },
            |r| {
                let status: i16 = r.try_get(0).map_err(|e| sql::corrupt("row", e))?;
                let kind: i16 = r.try_get(1).map_err(|e| sql::corrupt("row", e))?;
                let mut bytes = vec![
                    u8::try_from(status).unwrap_or(0),
                    u8::try_from(kind).unwrap_or(0),
                ];
                bytes.extend(sql::bytes(r, 2)?);
                Ok(Cursor(bytes))
            },
        )
    }

    async fn usage_opt_out(&self, tenant: &Tenant, user: &UserId) -> Result<Option<UsageOptOut>> {
        read::usage_opt_out(&*self.client().await?, tenant, user).await
    }

    async fn usage_opt_outs(
        &self,
        tenant: &Tenant,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page<UsageOptOut>> {
        let rows = self
            .query(
                "SELECT user_id, value FROM consentd_usage_opt_outs
                 WHERE tenant = $1 AND user_id > $2 ORDER BY user_id LIMIT $3",
                &[&tenant.as_str(), &id_cursor(after), &limit_plus_one(limit)],
            )
            .await?;
        page_of(rows, limit, |r| sql::usage(r, 0), |r| id_bytes_cursor(r, 0))
    }

    async fn begin(&self, locks: Vec<Lock>) -> Result<Box<dyn Txn + '_>> {
        let held = self.locks.lock(&locks).await;
        let client = self.client().await?;
        let mut keys: Vec<i64> = locks.iter().map(advisory_key).collect();
        keys.sort_unstable();
        keys.dedup();
        // One round trip: the transaction and its locks, in key order.
        let mut begin = String::from("BEGIN");
        for key in &keys {
            begin.push_str(&format!("; SELECT pg_advisory_xact_lock({key})"));
        }
        client.batch_execute(&begin).await.map_err(db_error)?;
        Ok(Box::new(PgTxn {
            store: self,
            _held: held,
            client: Some(client),
            ops: Vec::new(),
            staged: HashMap::new(),
            read_statuses: HashMap::new(),
            changes: Vec::new(),
        }))
    }

    async fn sync(&self) -> Result<()> {
        self.feed.sync(self.options.feed_timeout).await
    }

    fn position(&self) -> Position {
        self.feed.position()
    }

    async fn load_decision_state(
        &self,
        visit: &mut (dyn FnMut(Loaded) + Send),
    ) -> Result<Position> {
        let client = self.client().await?;
        let snapshot = dump::load_decision_state(&client, visit).await?;
        self.feed.start_after(snapshot);
        Ok(self.feed.position())
    }

    fn follow(&self, _after: Position, sink: FeedSink) -> Result<()> {
        self.feed.follow(self.pool.clone(), sink)
    }

    fn failure(&self) -> Option<Arc<str>> {
        None
    }

    fn staleness(&self) -> Option<Duration> {
        self.feed.staleness()
    }

    async fn expire(
        &self,
        markers_before: UnixMillis,
        tokens_before: UnixMillis,
        changes: ChangeRetention,
        limit: usize,
    ) -> Result<Expired> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        let markers = client
            .execute(
                "DELETE FROM consentd_event_markers WHERE ctid IN (
                     SELECT ctid FROM consentd_event_markers WHERE recorded_at < $1 LIMIT $2)",
                &[&markers_before, &limit],
            )
            .await
            .map_err(db_error)?;
        let left = limit.saturating_sub(i64::try_from(markers).unwrap_or(i64::MAX));
        let tokens = client
            .execute(
                "DELETE FROM consentd_tokens WHERE ctid IN (
                     SELECT ctid FROM consentd_tokens WHERE expires_at < $1 LIMIT $2)",
                &[&tokens_before, &left],
            )
            .await
            .map_err(db_error)?;
        let left = left.saturating_sub(i64::try_from(tokens).unwrap_or(i64::MAX));
        let changes = watch::expire(&mut client, changes, left).await?;
        Ok(Expired {
            event_markers: markers,
            tokens,
            changes,
        })
    }

    async fn reclaim(&self, _policy: CompactionPolicy) -> Result<Option<Reclaimed>> {
        // PostgreSQL gives space back itself (autovacuum).
        Ok(None)
    }

    fn dump<'a>(
        &'a self,
        tenant: Option<&Tenant>,
    ) -> Box<dyn Iterator<Item = Result<DumpItem>> + Send + 'a> {
        dump::dump(self.connector.clone(), tenant.cloned())
    }

    async fn snapshot(&self, tenant: Option<&Tenant>) -> Result<Box<dyn Snapshot>> {
        dump::snapshot(self.connector.clone(), tenant.cloned()).await
    }

    async fn restore(&self, items: &[DumpItem]) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let mut ops: Vec<Op> = items.iter().map(sql::restore).collect();
        // The replicas' indexes and the watchers learn of it as of any change.
        let changes: Vec<Change> = items.iter().filter_map(DumpItem::change).collect();
        ops.extend(sql::put_changes(&changes));
        let mut statements = Vec::with_capacity(ops.len());
        for op in &ops {
            statements.push(tx.prepare_cached(op.sql).await.map_err(db_error)?);
        }
        let params: Vec<Vec<&(dyn tokio_postgres::types::ToSql + Sync)>> =
            ops.iter().map(Op::refs).collect();
        // Sent one after the other without waiting for each answer.
        futures_util::future::try_join_all(
            statements
                .iter()
                .zip(&params)
                .map(|(statement, params)| tx.execute(statement, params.as_slice())),
        )
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }

    async fn watch_head(&self) -> Result<String> {
        watch::head(&mut self.client().await?).await
    }

    async fn watch_read(&self, token: &str, tenant: &Tenant, limit: usize) -> Result<WatchRead> {
        watch::read(&mut self.client().await?, token, tenant, limit).await
    }

    fn size_on_disk(&self) -> Result<u64> {
        // The database's; its own tools say how much it takes.
        Ok(0)
    }

    fn observe_flushes(&self, observer: FlushObserver) -> bool {
        self.observer.set(observer).is_ok()
    }
}

/// A read-only `REPEATABLE READ` transaction: every read in it sees one
/// snapshot (the feed's polls and the watch's reads).
pub(super) async fn snapshot_transaction(
    client: &mut Object,
) -> Result<deadpool_postgres::Transaction<'_>> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db_error)
}

/// The changes of the `consentd_changes` row `id`.
pub(super) fn row_changes(id: i64, payload: &[u8]) -> Result<Vec<Change>> {
    codec::decode_changes(payload).map_err(|e| StoreError::Corrupt {
        key: format!("consentd_changes id {id}"),
        reason: e.to_string(),
    })
}

/// The point reads that a change and the store both make, on any connection.
mod read {
    use deadpool_postgres::ClientWrapper;
    use tokio_postgres::{Row, types::ToSql};

    use super::{corrupt_value, db_error, sql};
    use crate::engine::{
        Address, AddressConsent, AddressState, Profile, ProfileId, Service, ServiceId, Tenant,
        TenantSettings, UsageOptOut, UserId,
    };
    use crate::store::{Result, codec};

    async fn one(
        client: &ClientWrapper,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        let statement = client.prepare_cached(statement).await.map_err(db_error)?;
        client.query_opt(&statement, params).await.map_err(db_error)
    }

    pub(super) async fn tenant_settings(
        client: &ClientWrapper,
        tenant: &Tenant,
    ) -> Result<Option<TenantSettings>> {
        one(
            client,
            "SELECT value FROM consentd_tenant_settings WHERE tenant = $1",
            &[&tenant.as_str()],
        )
        .await?
        .map(|row| {
            codec::decode_tenant_settings(&sql::bytes(&row, 0)?)
                .map_err(corrupt_value("tenant settings"))
        })
        .transpose()
    }

    pub(super) async fn service(
        client: &ClientWrapper,
        tenant: &Tenant,
        id: &ServiceId,
    ) -> Result<Option<Service>> {
        one(
            client,
            "SELECT service_id, value FROM consentd_services WHERE tenant = $1 AND service_id = $2",
            &[&tenant.as_str(), &id.as_str().as_bytes()],
        )
        .await?
        .map(|row| sql::service(&row, 0))
        .transpose()
    }

    pub(super) async fn profile(
        client: &ClientWrapper,
        tenant: &Tenant,
        id: &ProfileId,
    ) -> Result<Option<Profile>> {
        one(
            client,
            "SELECT profile_id, value FROM consentd_profiles WHERE tenant = $1 AND profile_id = $2",
            &[&tenant.as_str(), &id.as_str().as_bytes()],
        )
        .await?
        .map(|row| sql::profile(&row, 0))
        .transpose()
    }

    pub(super) async fn address_state(
        client: &ClientWrapper,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressState>> {
        one(
            client,
            "SELECT value FROM consentd_addresses WHERE tenant = $1 AND kind = $2 AND address = $3",
            &[
                &tenant.as_str(),
                &sql::kind(address.kind()),
                &address.as_str().as_bytes(),
            ],
        )
        .await?
        .map(|row| {
            codec::decode_address_state(&sql::bytes(&row, 0)?).map_err(corrupt_value("address"))
        })
        .transpose()
    }

    pub(super) async fn address_consent(
        client: &ClientWrapper,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressConsent>> {
        one(
            client,
            "SELECT value FROM consentd_address_consent
             WHERE tenant = $1 AND kind = $2 AND address = $3",
            &[
                &tenant.as_str(),
                &sql::kind(address.kind()),
                &address.as_str().as_bytes(),
            ],
        )
        .await?
        .map(|row| {
            codec::decode_address_consent(&sql::bytes(&row, 0)?)
                .map_err(corrupt_value("address consent"))
        })
        .transpose()
    }

    pub(super) async fn usage_opt_out(
        client: &ClientWrapper,
        tenant: &Tenant,
        user: &UserId,
    ) -> Result<Option<UsageOptOut>> {
        one(
            client,
            "SELECT user_id, value FROM consentd_usage_opt_outs WHERE tenant = $1 AND user_id = $2",
            &[&tenant.as_str(), &user.as_str().as_bytes()],
        )
        .await?
        .map(|row| sql::usage(&row, 0))
        .transpose()
    }
}

/// An address's log entries from `from` in `direction`, at most `limit`.
async fn log_events(
    client: &Object,
    tenant: &Tenant,
    address: &Address,
    from: Option<EventKey>,
    direction: Direction,
    limit: usize,
) -> Result<Vec<AddressEvent>> {
    let (at, seq) = from.map_or((None, None), |k| (Some(k.at), Some(sql::big(k.sequence))));
    let statement = match direction {
        Direction::After => {
            "SELECT value FROM consentd_address_events
             WHERE tenant = $1 AND kind = $2 AND address = $3
               AND ($4::bigint IS NULL OR (event_time, seq) > ($4, $5))
             ORDER BY event_time, seq LIMIT $6"
        }
        Direction::Before => {
            "SELECT value FROM consentd_address_events
             WHERE tenant = $1 AND kind = $2 AND address = $3
               AND ($4::bigint IS NULL OR (event_time, seq) < ($4, $5))
             ORDER BY event_time DESC, seq DESC LIMIT $6"
        }
    };
    let statement = client.prepare_cached(statement).await.map_err(db_error)?;
    let rows = client
        .query(
            &statement,
            &[
                &tenant.as_str(),
                &sql::kind(address.kind()),
                &address.as_str().as_bytes(),
                &at,
                &seq,
                &i64::try_from(limit).unwrap_or(i64::MAX),
            ],
        )
        .await
        .map_err(db_error)?;
    rows.iter()
        .map(|row| {
            codec::decode_address_event(&sql::bytes(row, 0)?).map_err(corrupt_value("address log"))
        })
        .collect()
}

/// What a change staged under one record, for its own reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Staged {
    Profile(Tenant, ProfileId),
    Subscription(Tenant, ProfileId, ServiceId),
    AddressState(Tenant, Address),
    AddressConsent(Tenant, Address),
    Marker(Tenant, EventId),
    Token(Tenant, TokenHash),
    Settings(Tenant),
    Service(Tenant, ServiceId),
    Usage(Tenant, UserId),
    ErasureKey(Tenant),
    Tombstone(Tenant, AddressHash),
}

/// A staged value: the record as written (`None`: deleted).
#[derive(Debug, Clone)]
enum Value {
    Profile(Box<Profile>),
    Subscription(Subscription),
    AddressState(Box<AddressState>),
    AddressConsent(AddressConsent),
    Marker,
    Token(TokenRecord),
    Settings(TenantSettings),
    Service(Service),
    Usage(UsageOptOut),
    ErasureKey(ErasureKey),
    Tombstone(Tombstone),
}

/// A change to the PostgreSQL store: one transaction, its staged writes and
/// feed entries.
struct PgTxn<'a> {
    store: &'a PgStore,
    _held: Held<'a>,
    /// The connection, in its transaction; `None` once committed.
    client: Option<Object>,
    ops: Vec<Op>,
    staged: HashMap<Staged, Option<Value>>,
    /// Address statuses as this change read them: a write that keeps the
    /// status puts no status change on the feed.
    read_statuses: HashMap<(Tenant, Address), AddressStatus>,
    changes: Vec<Change>,
}

impl Drop for PgTxn<'_> {
    fn drop(&mut self) {
        // Uncommitted: roll back before the connection goes back to the pool.
        if let Some(client) = self.client.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        if client.batch_execute("ROLLBACK").await.is_err() {
                            drop(Object::take(client));
                        }
                    });
                }
                Err(_) => drop(Object::take(client)),
            }
        }
    }
}

impl PgTxn<'_> {
    fn client(&self) -> Result<&Object> {
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::io(std::io::Error::other("the change is over")))
    }

    async fn query_opt(
        &self,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>> {
        let client = self.client()?;
        let statement = client.prepare_cached(statement).await.map_err(db_error)?;
        client.query_opt(&statement, params).await.map_err(db_error)
    }

    fn stage(&mut self, key: Staged, value: Option<Value>, op: Op) {
        self.staged.insert(key, value);
        self.ops.push(op);
    }
}

#[async_trait]
impl Txn for PgTxn<'_> {
    async fn profile(&mut self, tenant: &Tenant, id: &ProfileId) -> Result<Option<Profile>> {
        if let Some(staged) = self
            .staged
            .get(&Staged::Profile(tenant.clone(), id.clone()))
        {
            return Ok(match staged {
                Some(Value::Profile(p)) => Some((**p).clone()),
                _ => None,
            });
        }
        read::profile(self.client()?, tenant, id).await
    }

    async fn subscription(
        &mut self,
        tenant: &Tenant,
        profile: &ProfileId,
        service: &ServiceId,
    ) -> Result<Option<Subscription>> {
        let key = Staged::Subscription(tenant.clone(), profile.clone(), service.clone());
        if let Some(staged) = self.staged.get(&key) {
            return Ok(match staged {
                Some(Value::Subscription(s)) => Some(s.clone()),
                _ => None,
            });
        }
        self.query_opt(
            "SELECT service_id, value FROM consentd_subscriptions
             WHERE tenant = $1 AND profile_id = $2 AND service_id = $3",
            &[
                &tenant.as_str(),
                &profile.as_str().as_bytes(),
                &service.as_str().as_bytes(),
            ],
        )
        .await?
        .map(|row| sql::subscription(&row, 0))
        .transpose()
    }

    async fn address_state(
        &mut self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressState>> {
        if let Some(staged) = self
            .staged
            .get(&Staged::AddressState(tenant.clone(), address.clone()))
        {
            return Ok(match staged {
                Some(Value::AddressState(s)) => Some((**s).clone()),
                _ => None,
            });
        }
        let state = read::address_state(self.client()?, tenant, address).await?;
        self.read_statuses.insert(
            (tenant.clone(), address.clone()),
            state.as_ref().map_or(AddressStatus::Valid, |s| s.status),
        );
        Ok(state)
    }

    async fn address_consent(
        &mut self,
        tenant: &Tenant,
        address: &Address,
    ) -> Result<Option<AddressConsent>> {
        if let Some(staged) = self
            .staged
            .get(&Staged::AddressConsent(tenant.clone(), address.clone()))
        {
            return Ok(match staged {
                Some(Value::AddressConsent(c)) => Some(c.clone()),
                _ => None,
            });
        }
        read::address_consent(self.client()?, tenant, address).await
    }

    async fn address_events(
        &mut self,
        tenant: &Tenant,
        address: &Address,
        from: Option<EventKey>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<AddressEvent>> {
        // Committed entries only (as the interface says): staged log
        // entries are not read back.
        log_events(self.client()?, tenant, address, from, direction, limit).await
    }

    async fn event_marker(&mut self, tenant: &Tenant, id: &EventId) -> Result<bool> {
        if let Some(staged) = self.staged.get(&Staged::Marker(tenant.clone(), id.clone())) {
            return Ok(staged.is_some());
        }
        Ok(self
            .query_opt(
                "SELECT 1 FROM consentd_event_markers WHERE tenant = $1 AND event_id = $2",
                &[&tenant.as_str(), &id.as_str().as_bytes()],
            )
            .await?
            .is_some())
    }

    async fn token(&mut self, tenant: &Tenant, hash: &TokenHash) -> Result<Option<TokenRecord>> {
        if let Some(staged) = self.staged.get(&Staged::Token(tenant.clone(), *hash)) {
            return Ok(match staged {
                Some(Value::Token(t)) => Some(t.clone()),
                _ => None,
            });
        }
        self.query_opt(
            "SELECT value FROM consentd_tokens WHERE tenant = $1 AND hash = $2",
            &[&tenant.as_str(), &hash.0.as_slice()],
        )
        .await?
        .map(|row| sql::token(&sql::bytes(&row, 0)?))
        .transpose()
    }

    async fn tenant_settings(&mut self, tenant: &Tenant) -> Result<Option<TenantSettings>> {
        if let Some(staged) = self.staged.get(&Staged::Settings(tenant.clone())) {
            return Ok(match staged {
                Some(Value::Settings(s)) => Some(s.clone()),
                _ => None,
            });
        }
        read::tenant_settings(self.client()?, tenant).await
    }

    async fn service(&mut self, tenant: &Tenant, id: &ServiceId) -> Result<Option<Service>> {
        if let Some(staged) = self
            .staged
            .get(&Staged::Service(tenant.clone(), id.clone()))
        {
            return Ok(match staged {
                Some(Value::Service(s)) => Some(s.clone()),
                _ => None,
            });
        }
        read::service(self.client()?, tenant, id).await
    }

    async fn service_count(&mut self, tenant: &Tenant) -> Result<usize> {
        let staged: Vec<Vec<u8>> = self
            .staged
            .iter()
            .filter_map(|(key, value)| match (key, value) {
                (Staged::Service(t, id), Some(_)) if t == tenant => {
                    Some(id.as_str().as_bytes().to_vec())
                }
                _ => None,
            })
            .collect();
        let row = self
            .query_opt(
                "SELECT (SELECT count(*) FROM consentd_services WHERE tenant = $1)
                      + (SELECT count(*) FROM unnest($2::bytea[]) AS s (id)
                         WHERE NOT EXISTS (SELECT 1 FROM consentd_services
                                           WHERE tenant = $1 AND service_id = s.id))",
                &[&tenant.as_str(), &staged],
            )
            .await?;
        let count: i64 = row
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(|e| sql::corrupt("row", e))?
            .unwrap_or(0);
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    async fn usage_opt_out(
        &mut self,
        tenant: &Tenant,
        user: &UserId,
    ) -> Result<Option<UsageOptOut>> {
        if let Some(staged) = self
            .staged
            .get(&Staged::Usage(tenant.clone(), user.clone()))
        {
            return Ok(match staged {
                Some(Value::Usage(u)) => Some(u.clone()),
                _ => None,
            });
        }
        read::usage_opt_out(self.client()?, tenant, user).await
    }

    async fn erasure_key(&mut self, tenant: &Tenant) -> Result<Option<ErasureKey>> {
        if let Some(staged) = self.staged.get(&Staged::ErasureKey(tenant.clone())) {
            return Ok(match staged {
                Some(Value::ErasureKey(k)) => Some(k.clone()),
                _ => None,
            });
        }
        self.query_opt(
            "SELECT value FROM consentd_erasure_keys WHERE tenant = $1",
            &[&tenant.as_str()],
        )
        .await?
        .map(|row| {
            sql::decode("erasure key", &sql::bytes(&row, 0)?, |v| {
                codec::decode_erasure_key(v)
            })
        })
        .transpose()
    }

    async fn tombstone(
        &mut self,
        tenant: &Tenant,
        hash: &AddressHash,
    ) -> Result<Option<Tombstone>> {
        if let Some(staged) = self.staged.get(&Staged::Tombstone(tenant.clone(), *hash)) {
            return Ok(match staged {
                Some(Value::Tombstone(t)) => Some(*t),
                _ => None,
            });
        }
        self.query_opt(
            "SELECT value FROM consentd_tombstones WHERE tenant = $1 AND hash = $2",
            &[&tenant.as_str(), &hash.0.as_slice()],
        )
        .await?
        .map(|row| sql::decode("tombstone", &sql::bytes(&row, 0)?, codec::decode_tombstone))
        .transpose()
    }

    fn put_erasure_key(&mut self, tenant: &Tenant, key: &ErasureKey) {
        self.stage(
            Staged::ErasureKey(tenant.clone()),
            Some(Value::ErasureKey(key.clone())),
            sql::put_erasure_key(tenant, key),
        );
    }

    fn put_tombstone(&mut self, tenant: &Tenant, hash: &AddressHash, tombstone: &Tombstone) {
        self.stage(
            Staged::Tombstone(tenant.clone(), *hash),
            Some(Value::Tombstone(*tombstone)),
            sql::put_tombstone(tenant, hash, tombstone),
        );
    }

    fn put_erasure(&mut self, tenant: &Tenant, erasure: &Erasure) {
        self.ops.push(sql::put_erasure(tenant, erasure));
    }

    async fn erase_profile(&mut self, tenant: &Tenant, profile: &Profile) -> Result<()> {
        // Tokens are found by their hash alone: the tenant's few live ones
        // are read (retention deletes them once expired).
        let client = self.client()?;
        let statement = client
            .prepare_cached("SELECT hash, value FROM consentd_tokens WHERE tenant = $1")
            .await
            .map_err(db_error)?;
        let rows = client
            .query(&statement, &[&tenant.as_str()])
            .await
            .map_err(db_error)?;
        let mut tokens = Vec::new();
        for row in &rows {
            if sql::token(&sql::bytes(row, 1)?)?.profile_id == profile.id {
                tokens.push(sql::bytes(row, 0)?);
            }
        }
        self.stage(
            Staged::Profile(tenant.clone(), profile.id.clone()),
            None,
            sql::erase_profile(tenant, &profile.id, tokens),
        );
        self.changes.push(Change::ProfileErased {
            tenant: tenant.clone(),
            profile_id: profile.id.clone(),
        });
        Ok(())
    }

    fn put_profile(&mut self, tenant: &Tenant, profile: &Profile) {
        self.stage(
            Staged::Profile(tenant.clone(), profile.id.clone()),
            Some(Value::Profile(Box::new(profile.clone()))),
            sql::put_profile(tenant, profile),
        );
        self.changes.push(Change::Profile {
            tenant: tenant.clone(),
            profile: Box::new(profile.clone()),
        });
    }

    fn append_history(&mut self, tenant: &Tenant, id: &ProfileId, entry: &ConsentHistoryEntry) {
        self.ops.push(sql::put_history(tenant, id, entry));
    }

    fn put_address_state(&mut self, tenant: &Tenant, address: &Address, state: &AddressState) {
        let key = (tenant.clone(), address.clone());
        let before = self.read_statuses.get(&key).copied();
        if before != Some(state.status) {
            self.changes.push(Change::Address {
                tenant: tenant.clone(),
                address: address.clone(),
                status: state.status,
            });
        }
        self.read_statuses.insert(key, state.status);
        self.stage(
            Staged::AddressState(tenant.clone(), address.clone()),
            Some(Value::AddressState(Box::new(state.clone()))),
            sql::put_address_state(tenant, address, state),
        );
    }

    fn put_address_event(&mut self, tenant: &Tenant, address: &Address, event: &AddressEvent) {
        self.ops
            .push(sql::put_address_event(tenant, address, event));
    }

    fn delete_address_events(&mut self, tenant: &Tenant, address: &Address, before: EventKey) {
        self.ops
            .push(sql::delete_address_events(tenant, address, before));
    }

    fn put_event_marker(
        &mut self,
        tenant: &Tenant,
        id: &EventId,
        address: &Address,
        recorded_at: UnixMillis,
    ) {
        self.stage(
            Staged::Marker(tenant.clone(), id.clone()),
            Some(Value::Marker),
            sql::put_marker(tenant, id, address, recorded_at),
        );
    }

    fn put_subscription(&mut self, tenant: &Tenant, profile: &ProfileId, sub: &Subscription) {
        self.stage(
            Staged::Subscription(tenant.clone(), profile.clone(), sub.service_id.clone()),
            Some(Value::Subscription(sub.clone())),
            sql::put_subscription(tenant, profile, sub),
        );
        self.changes.push(Change::Subscription {
            tenant: tenant.clone(),
            profile_id: profile.clone(),
            service_id: sub.service_id.clone(),
            status: sub.status,
        });
    }

    fn put_token(&mut self, tenant: &Tenant, hash: &TokenHash, record: &TokenRecord) {
        self.stage(
            Staged::Token(tenant.clone(), *hash),
            Some(Value::Token(record.clone())),
            sql::put_token(tenant, hash, record),
        );
    }

    fn delete_token(&mut self, tenant: &Tenant, hash: &TokenHash) {
        self.stage(
            Staged::Token(tenant.clone(), *hash),
            None,
            sql::delete_token(tenant, hash),
        );
    }

    fn put_tenant_settings(&mut self, tenant: &Tenant, settings: &TenantSettings) {
        self.stage(
            Staged::Settings(tenant.clone()),
            Some(Value::Settings(settings.clone())),
            sql::put_settings(tenant, settings),
        );
        self.changes.push(Change::TenantSettings {
            tenant: tenant.clone(),
            settings: settings.clone(),
        });
    }

    fn put_service(&mut self, tenant: &Tenant, service: &Service) {
        self.stage(
            Staged::Service(tenant.clone(), service.id.clone()),
            Some(Value::Service(service.clone())),
            sql::put_service(tenant, service),
        );
        self.changes.push(Change::Service {
            tenant: tenant.clone(),
            service: service.clone(),
        });
    }

    fn put_usage_opt_out(&mut self, tenant: &Tenant, opt_out: &UsageOptOut) {
        self.stage(
            Staged::Usage(tenant.clone(), opt_out.user_id.clone()),
            Some(Value::Usage(opt_out.clone())),
            sql::put_usage(tenant, opt_out),
        );
        self.changes.push(Change::UsageOptOut {
            tenant: tenant.clone(),
            user_id: opt_out.user_id.clone(),
            opted_out: true,
        });
    }

    fn delete_usage_opt_out(&mut self, tenant: &Tenant, user: &UserId) {
        self.stage(
            Staged::Usage(tenant.clone(), user.clone()),
            None,
            sql::delete_usage(tenant, user),
        );
        self.changes.push(Change::UsageOptOut {
            tenant: tenant.clone(),
            user_id: user.clone(),
            opted_out: false,
        });
    }

    fn put_address_consent(
        &mut self,
        tenant: &Tenant,
        address: &Address,
        consent: &AddressConsent,
    ) {
        self.stage(
            Staged::AddressConsent(tenant.clone(), address.clone()),
            Some(Value::AddressConsent(consent.clone())),
            sql::put_address_consent(tenant, address, consent),
        );
        self.changes.push(Change::AddressConsent {
            tenant: tenant.clone(),
            address: address.clone(),
            opted_out: consent.mask(),
        });
    }

    /// Sends the staged writes and the feed row, pipelined, then commits.
    async fn commit(mut self: Box<Self>) -> Result<Position> {
        let started = Instant::now();
        let store = self.store;
        let ops = std::mem::take(&mut self.ops);
        let changes = std::mem::take(&mut self.changes);
        if ops.is_empty() {
            return Ok(store.position());
        }
        let client = self.client()?;
        let mut ops = ops;
        ops.extend(sql::put_changes(&changes));
        let mut statements = Vec::with_capacity(ops.len());
        for op in &ops {
            statements.push(client.prepare_cached(op.sql).await.map_err(db_error)?);
        }
        let params: Vec<Vec<&(dyn tokio_postgres::types::ToSql + Sync)>> =
            ops.iter().map(Op::refs).collect();
        // Sent one after the other without waiting for each answer.
        let sent = statements
            .iter()
            .zip(&params)
            .map(|(statement, params)| client.execute(statement, params.as_slice()));
        futures_util::future::try_join_all(sent)
            .await
            .map_err(db_error)?;
        client.batch_execute("COMMIT").await.map_err(db_error)?;
        // Committed: the connection goes back to the pool as it is.
        self.client = None;
        if !changes.is_empty() {
            store.feed.nudge();
        }
        if let Some(observer) = store.observer.get() {
            observer(started.elapsed(), 1);
        }
        Ok(store.position())
    }
}
