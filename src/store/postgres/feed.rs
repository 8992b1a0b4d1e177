//! The committed-change feed of the PostgreSQL store: how every replica's
//! decision index learns of every committed change, its own and the other
//! replicas'.
//!
//! Each transaction that changes what decisions read also inserts one row
//! into `consentd_changes`, in the same commit. A row's `xid` is its
//! transaction's id, taken at its first write, which comes after its
//! advisory locks: two changes of one key therefore have ids in commit order.
//! Rows are found by transaction-id snapshots, as SpiceDB's PostgreSQL Watch
//! does: each poll runs in a REPEATABLE READ transaction, takes its snapshot
//! (`pg_current_snapshot()`) and reads the rows visible in it but not in the
//! previous poll's snapshot. A transaction that commits after a row with a
//! higher id was read is still found (its id was in the previous snapshot's
//! in-progress list), which a poll by `id > last` would miss.
//!
//! `Store::sync` asks for a poll that starts after it was called and waits
//! for it: the poll's snapshot holds every change committed before the call,
//! the caller's own included, so after `sync` the index holds them.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use tokio::sync::{Notify, watch};

use super::{db_error, pool_error};
use crate::store::{Change, Committed, FeedSink, Position, Result, StoreError};

/// At most this many rows are read per query while catching up, so that a
/// replica that was away for a while does not read the whole backlog at once.
const FEED_PAGE_ROWS: i64 = 2_000;
/// Changes per delivered part of a rebuild.
const REBUILD_CHUNK: usize = 10_000;

/// The sink, shared so that a poll calls it without holding the lock.
type SharedSink = Arc<dyn Fn(&[Committed]) + Send + Sync>;

/// The feed's state in one process.
pub(super) struct Feed {
    /// The snapshot (`pg_snapshot` text) every delivered row is visible in.
    through: Mutex<String>,
    /// Where durable changes go.
    sink: Mutex<Option<SharedSink>>,
    /// The local position of the last delivered transaction.
    last: AtomicU64,
    /// Polls asked for (by `sync`), numbered.
    requested: AtomicU64,
    /// The number of the last request a finished poll answered.
    answered: watch::Sender<u64>,
    /// Wakes the poller.
    wake: Notify,
    /// Set when the store closes: the poller stops.
    closed: AtomicBool,
    /// When the last poll succeeded.
    last_ok: Mutex<Option<Instant>>,
    /// When the database server last started (`pg_postmaster_start_time()`),
    /// as first seen: a change means it restarted.
    started: Mutex<Option<String>>,
    /// Set while the index is rebuilt from the database: decisions wait.
    rebuilding: AtomicBool,
    /// How long the poller waits between polls when nothing asks.
    interval: Duration,
    /// How long one poll may take before it is given up and tried again.
    timeout: Duration,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("last", &self.last.load(Ordering::Relaxed))
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Feed {
    pub(super) fn new(interval: Duration, timeout: Duration) -> Self {
        Self {
            through: Mutex::new(String::new()),
            sink: Mutex::new(None),
            last: AtomicU64::new(0),
            requested: AtomicU64::new(0),
            answered: watch::Sender::new(0),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            last_ok: Mutex::new(None),
            started: Mutex::new(None),
            rebuilding: AtomicBool::new(false),
            interval,
            timeout,
        }
    }

    /// The local position of the last delivered transaction.
    pub(super) fn position(&self) -> Position {
        Position(self.last.load(Ordering::Acquire))
    }

    /// Sets the snapshot the feed starts after (the decision state's load).
    pub(super) fn start_after(&self, snapshot: String) {
        *self.through.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
    }

    /// Whether somebody follows the feed.
    fn followed(&self) -> bool {
        self.sink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Sets the sink and starts the poller.
    pub(super) fn follow(self: &Arc<Self>, pool: Pool, sink: FeedSink) -> Result<()> {
        {
            let mut slot = self.sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_some() {
                return Err(StoreError::Corrupt {
                    key: "feed".into(),
                    reason: "the feed is followed already".into(),
                });
            }
            *slot = Some(Arc::from(sink));
        }
        // Fresh as of now: the first poll follows at once.
        *self.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let feed = Arc::clone(self);
        tokio::spawn(async move { feed.run(pool).await });
        self.wake.notify_one();
        Ok(())
    }

    /// Asks the poller to look now (a change was committed here).
    pub(super) fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Stops the poller.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// How far behind the database the delivered state may be: the time
    /// since the last successful poll, or without bound while the index is
    /// rebuilt (`None`: nobody follows the feed yet).
    pub(super) fn staleness(&self) -> Option<Duration> {
        if self.rebuilding.load(Ordering::Acquire) {
            return Some(Duration::MAX);
        }
        self.since_last_poll()
    }

    /// How long ago the last poll succeeded (`None`: none has yet).
    pub(super) fn since_last_poll(&self) -> Option<Duration> {
        self.last_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|at| at.elapsed())
    }

    /// Waits until a poll that started after this call has delivered what it
    /// found; at most `timeout`.
    pub(super) async fn sync(&self, timeout: Duration) -> Result<()> {
        if !self.followed() {
            // Nobody follows (a data tool): a commit is durable when it returns.
            return Ok(());
        }
        let wanted = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.notify_one();
        let mut answered = self.answered.subscribe();
        match tokio::time::timeout(timeout, answered.wait_for(|n| *n >= wanted)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::io(std::io::Error::other("the store is closed"))),
            Err(_) => Err(StoreError::io(std::io::Error::other(format!(
                "the change feed did not catch up within {timeout:?}: the database may be \
                 unreachable (the write itself was committed)"
            )))),
        }
    }

    async fn run(self: Arc<Self>, pool: Pool) {
        let mut backoff = Duration::from_millis(50);
        while !self.closed.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(self.interval, self.wake.notified()).await;
            if self.closed.load(Ordering::Acquire) {
                break;
            }
            let asked = self.requested.load(Ordering::Acquire);
            let polled = match tokio::time::timeout(self.timeout, self.poll(&pool)).await {
                Ok(polled) => polled,
                Err(_) => Err(StoreError::io(std::io::Error::other(format!(
                    "a read of the change feed took longer than {:?}",
                    self.timeout
                )))),
            };
            match polled {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    *self.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    self.answered.send_if_modified(|n| {
                        let moved = asked > *n;
                        *n = (*n).max(asked);
                        moved
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the change feed failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// After the database restarted: a transaction id that a crash left
    /// without a trace on disk may be given again, so a change could carry
    /// an id that an earlier snapshot already counted as finished, and a
    /// poll would skip it. The index is rebuilt instead: a [`Change::Reset`]
    /// and the whole decision state, read in one snapshot that the feed then
    /// continues from. Decisions wait meanwhile (see [`Feed::staleness`]).
    async fn rebuild(&self, client: &mut deadpool_postgres::Object) -> Result<()> {
        tracing::warn!(
            "the database restarted: rebuilding the decision index from it (eligibility waits)"
        );
        self.rebuilding.store(true, Ordering::Release);
        let mut changes = vec![Change::Reset];
        let snapshot = super::dump::load_decision_state(client, &mut |item| {
            changes.push(Change::from(item));
        })
        .await;
        let snapshot = match snapshot {
            Ok(snapshot) => snapshot,
            Err(error) => {
                // Still rebuilding (decisions wait); the start time seen is
                // forgotten, so that the next poll rebuilds again.
                *self.started.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(String::from("(rebuild failed)"));
                return Err(error);
            }
        };
        let records = changes.len() - 1;
        let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut batch = Vec::new();
        for part in changes.chunks(REBUILD_CHUNK) {
            let position = Position(self.last.load(Ordering::Acquire) + 1 + batch.len() as u64);
            batch.push(Committed {
                position,
                changes: part.to_vec(),
            });
        }
        if let (Some(sink), Some(last)) = (sink, batch.last()) {
            sink(&batch);
            self.last.store(last.position.0, Ordering::Release);
        }
        *self.through.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
        *self.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.rebuilding.store(false, Ordering::Release);
        tracing::info!(records, "the decision index was rebuilt from the database");
        Ok(())
    }

    /// One poll: everything committed since the last one, delivered in
    /// transaction-id order.
    async fn poll(&self, pool: &Pool) -> Result<()> {
        let mut client = pool.get().await.map_err(pool_error)?;
        let tx = super::snapshot_transaction(&mut client).await?;
        let row = tx
            .query_one(
                "SELECT pg_current_snapshot()::text, pg_postmaster_start_time()::text",
                &[],
            )
            .await
            .map_err(db_error)?;
        let snapshot: String = row.get(0);
        let started: String = row.get(1);
        let restarted = {
            let mut seen = self.started.lock().unwrap_or_else(|p| p.into_inner());
            let restarted = seen.as_ref().is_some_and(|before| *before != started);
            *seen = Some(started);
            restarted
        };
        if restarted {
            drop(tx);
            return self.rebuild(&mut client).await;
        }
        let previous = self
            .through
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if previous.is_empty() {
            return Err(StoreError::Corrupt {
                key: "feed".into(),
                reason: "the feed was followed before the decision state was loaded".into(),
            });
        }
        let xmin = previous.split(':').next().unwrap_or("0").to_owned();
        let statement = tx
            .prepare_cached(
                "SELECT id, xid::text AS xid_text, payload FROM consentd_changes
                 WHERE xid >= $1::text::xid8
                   AND NOT pg_visible_in_snapshot(xid, $2::text::pg_snapshot)
                   AND (xid, id) > ($3::text::xid8, $4)
                 ORDER BY consentd_changes.xid, id
                 LIMIT $5",
            )
            .await
            .map_err(db_error)?;
        let mut after_xid = xmin.clone();
        let mut after_id = 0i64;
        loop {
            let rows = tx
                .query(
                    &statement,
                    &[&xmin, &previous, &after_xid, &after_id, &FEED_PAGE_ROWS],
                )
                .await
                .map_err(db_error)?;
            let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= FEED_PAGE_ROWS;
            let mut batch = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: i64 = row.get(0);
                let payload: Vec<u8> = row.get(2);
                let changes = super::row_changes(id, &payload)?;
                let position = Position(self.last.load(Ordering::Acquire) + 1 + batch.len() as u64);
                batch.push(Committed { position, changes });
                after_id = id;
            }
            if let Some(row) = rows.last() {
                after_xid = row.get(1);
            }
            if let Some(last) = batch.last() {
                let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(sink) = sink {
                    sink(&batch);
                }
                self.last.store(last.position.0, Ordering::Release);
            }
            if !full {
                break;
            }
        }
        tx.commit().await.map_err(db_error)?;
        *self.through.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
        Ok(())
    }
}
