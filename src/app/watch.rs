//! Watching the committed-change feed (`consent.v1.WatchService`): a
//! client follows one tenant's durable changes from a token, from the same
//! log that keeps the decision index fresh (see `store/watch.rs`).
//!
//! A watcher reads the store's log after its token, hands out what it
//! found, and then waits until the feed delivers something new (any
//! tenant's: it reads again and finds out) or its checkpoint interval
//! passes (it then hands out a checkpoint: the token moved, nothing of its
//! tenant changed). Watches are bounded in number (`--watch-max-streams`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::App;
use crate::{
    clock::{Clock, SystemClock},
    engine::Tenant,
    error::{Error, Result},
    store::{ChangeRetention, WatchEntry, WatchRead, watch::TOKEN_LEN_MAX},
};

/// Default [`WatchSettings::retention`].
pub const WATCH_RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);
/// Default [`WatchSettings::retention_changes`].
pub const WATCH_RETENTION_CHANGES_DEFAULT: u64 = 10_000_000;
/// Default [`WatchSettings::checkpoint_interval`].
pub const WATCH_CHECKPOINT_INTERVAL_DEFAULT: Duration = Duration::from_secs(2);
/// Default [`WatchSettings::max_streams`].
pub const WATCH_MAX_STREAMS_DEFAULT: usize = 256;
/// Transactions read from the store at once.
const READ_TRANSACTIONS: usize = 256;

/// How long changes are kept for watchers, how watchers are paced, and how
/// many there may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSettings {
    /// Transactions older than this leave the log; a token from before them
    /// has expired.
    pub retention: Duration,
    /// At most this many of the newest transactions are kept.
    pub retention_changes: u64,
    /// A watch with nothing to hand out sends a checkpoint this often.
    pub checkpoint_interval: Duration,
    /// Watches open at once, over all clients.
    pub max_streams: usize,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            retention: WATCH_RETENTION_DEFAULT,
            retention_changes: WATCH_RETENTION_CHANGES_DEFAULT,
            checkpoint_interval: WATCH_CHECKPOINT_INTERVAL_DEFAULT,
            max_streams: WATCH_MAX_STREAMS_DEFAULT,
        }
    }
}

impl WatchSettings {
    /// What the log keeps, as of now. By the wall clock: stores record
    /// their transactions by it.
    pub fn retention(&self) -> ChangeRetention {
        let age = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        ChangeRetention {
            before: SystemClock.now_ms().saturating_sub(age),
            keep_max: self.retention_changes,
        }
    }
}

/// What every watch of one server shares.
#[derive(Debug)]
pub(crate) struct Watchers {
    /// Moved on every delivery of the feed.
    delivered: watch::Sender<u64>,
    /// One permit per watch that may open.
    permits: Arc<Semaphore>,
    max: usize,
}

impl Watchers {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            delivered: watch::Sender::new(0),
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The feed delivered: every waiting watch reads again.
    pub(crate) fn wake(&self) {
        self.delivered.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// What one step of a watch hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchStep {
    /// Transactions of the tenant, in commit order; none in a checkpoint.
    pub entries: Vec<WatchEntry>,
    /// The token after everything handed out (and everything read).
    pub through: String,
}

/// One client's watch of one tenant.
#[derive(Debug)]
pub struct Watch {
    app: App,
    tenant: Tenant,
    /// The token after everything handed out.
    token: String,
    /// When the last step was handed out.
    last_step: Instant,
    delivered: watch::Receiver<u64>,
    _permit: OwnedSemaphorePermit,
}

impl App {
    /// Opens a watch of `tenant` after `start_token` (after everything
    /// durable now when `None`). Refuses a token that is malformed (naming
    /// `start_token`), expired or of another store, and a watch beyond
    /// `--watch-max-streams`.
    pub async fn watch(&self, tenant: Tenant, start_token: Option<String>) -> Result<Watch> {
        self.ready().await?;
        let permit = Arc::clone(&self.watchers.permits)
            .try_acquire_owned()
            .map_err(|_| Error::TooManyWatches(self.watchers.max))?;
        let delivered = self.watchers.delivered.subscribe();
        let token = match start_token {
            Some(token) => {
                if token.len() > TOKEN_LEN_MAX {
                    return Err(Error::invalid(
                        "start_token",
                        format!("is longer than {TOKEN_LEN_MAX} bytes: not a watch token"),
                    ));
                }
                // A read of nothing: the token is checked before the stream starts.
                outcome(self.store.watch_read(&token, &tenant, 0).await?)?;
                token
            }
            None => self.store.watch_head().await?,
        };
        Ok(Watch {
            app: self.clone(),
            tenant,
            token,
            last_step: Instant::now(),
            delivered,
            _permit: permit,
        })
    }
}

/// The entries of a read, or the error it amounts to.
fn outcome(read: WatchRead) -> Result<(Vec<WatchEntry>, String, bool)> {
    match read {
        WatchRead::Changes {
            entries,
            through,
            more,
        } => Ok((entries, through, more)),
        WatchRead::Expired => Err(Error::WatchExpired),
        WatchRead::Resync(why) => Err(Error::WatchResync(why)),
        WatchRead::Malformed(why) => Err(Error::invalid("start_token", why)),
    }
}

impl Watch {
    /// The token after everything handed out so far.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The next transactions of the tenant, waiting for them; or, when none
    /// came for the checkpoint interval, a checkpoint (no entries).
    pub async fn next(&mut self) -> Result<WatchStep> {
        let interval = self.app.settings.watch.checkpoint_interval;
        loop {
            // Seen before the read: a delivery during the read wakes the wait below.
            self.delivered.borrow_and_update();
            let read = self
                .app
                .store
                .watch_read(&self.token, &self.tenant, READ_TRANSACTIONS)
                .await?;
            let (entries, through, more) = outcome(read)?;
            self.token.clone_from(&through);
            if !entries.is_empty() || self.last_step.elapsed() >= interval {
                self.last_step = Instant::now();
                return Ok(WatchStep { entries, through });
            }
            if more {
                // Other tenants' transactions only: read on.
                continue;
            }
            let checkpoint = tokio::time::Instant::from_std(self.last_step + interval);
            tokio::select! {
                changed = self.delivered.changed() => {
                    if changed.is_err() {
                        return Err(Error::Unavailable("the server is shutting down".into()));
                    }
                }
                () = tokio::time::sleep_until(checkpoint) => {}
            }
        }
    }
}
