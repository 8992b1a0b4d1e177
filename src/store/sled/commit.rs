//! Group commit: one committer thread makes every pending write durable with
//! one `flush` + `fdatasync`, then answers all of them.
//!
//! Why both calls: sled's `flush` writes its log with `sync_file_range`,
//! which does not reach the disk's write cache, so an acknowledged write would
//! survive `kill -9` but not a power cut. `fdatasync` of the data file
//! (`File::sync_data`) does.
//!
//! Why a thread: the calls block for milliseconds; they must not run on the
//! async workers. Why a queue: N concurrent writers share one flush instead of
//! paying N.
//!
//! Why a short gather: each flush costs far more CPU than the writes it
//! covers (sled hands the sealed log buffer to its I/O thread pool, which
//! wakes every idle pool thread, and then the committer waits for it). When
//! the last group had several writers, the committer waits up to
//! [`GATHER_MAX`] for as many as the last group had before it flushes, so
//! that concurrent writers share fewer, larger flushes. A lone writer (last
//! group of one) is flushed at once and pays no wait.
//!
//! Before it flushes, the committer writes the watch log records of every
//! change pushed so far (`FeedQueue::take_records`, `watch.rs`): after the
//! changes' own records, and in the flush that acknowledges them.
//!
//! After a successful flush the committer hands the feed every change it
//! covers (`FeedQueue::deliver_through`), and only then answers the waiters:
//! so when a write is acknowledged, the decision index has it, and the index
//! never has a change that is not durable.
//!
//! A failed flush is fatal to writes: Linux reports a writeback error once,
//! so a later `fdatasync` may succeed although the writes of the failed one
//! never reached the disk. From the first failure on, every waiter is
//! answered with [`StoreError::Failed`] and no change is delivered.
//!
//! Invariant: a waiter is answered only by a flush that *started after* it was
//! queued, so every write applied before [`GroupCommit::wait`] was called is
//! covered by the flush that answers it.

use std::{
    fmt,
    fs::File,
    sync::{Arc, OnceLock, mpsc},
    thread,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use super::{
    super::{FlushObserver, StoreError, feed::FeedQueue},
    Current, ShadowSlot,
};

/// A failpoint for tests: called before each `fdatasync`; an error is taken
/// for a failed sync.
pub type SyncFault = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// Longest the committer waits for more writers before a flush, counted from
/// the first waiter of the group; only when the last group had more than one.
const GATHER_MAX: Duration = Duration::from_micros(500);

/// The outcome of one group flush, shared by its waiters.
type FlushResult = Result<(), StoreError>;

/// The observer, set at most once, shared with the committer thread.
#[derive(Default)]
pub(crate) struct ObserverSlot(OnceLock<FlushObserver>);

impl fmt::Debug for ObserverSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserverSlot")
            .field("set", &self.0.get().is_some())
            .finish()
    }
}

/// The handle writers use to wait for durability. Dropping it stops the
/// committer thread and waits for it, so that the database is closed when
/// the store is (a reopen in the same process then finds it free).
#[derive(Debug)]
pub(crate) struct GroupCommit {
    /// Queue of waiters for the committer thread; `None` once dropped.
    queue: Option<mpsc::Sender<oneshot::Sender<FlushResult>>>,
    /// The committer thread.
    thread: Option<thread::JoinHandle<()>>,
    /// Told about each flush, once set.
    observer: Arc<ObserverSlot>,
}

impl GroupCommit {
    /// Starts the committer thread for the database in use, `current`.
    pub(crate) fn start(
        current: Current,
        feed: Arc<FeedQueue>,
        shadow: ShadowSlot,
        failure: Arc<OnceLock<Arc<str>>>,
        fault: Option<SyncFault>,
    ) -> std::io::Result<Self> {
        let (queue, pending) = mpsc::channel::<oneshot::Sender<FlushResult>>();
        let observer = Arc::new(ObserverSlot::default());
        let slot = Arc::clone(&observer);
        let committer = Committer {
            current,
            feed,
            shadow,
            failure,
            fault,
        };
        let thread = thread::Builder::new()
            .name("consentd-commit".into())
            .spawn(move || committer.run(&pending, &slot))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
            observer,
        })
    }

    /// Sets the flush observer; false when one was already set.
    pub(crate) fn observe(&self, observer: FlushObserver) -> bool {
        self.observer.0.set(observer).is_ok()
    }

    /// Waits until every write applied before this call is on disk and on the feed.
    pub(crate) async fn wait(&self) -> FlushResult {
        let stopped = || StoreError::io(std::io::Error::other("the committer has stopped"));
        let (done, answer) = oneshot::channel();
        self.queue
            .as_ref()
            .ok_or_else(stopped)?
            .send(done)
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // Closing the queue ends the loop once every queued waiter is answered.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the committer thread panicked");
        }
    }
}

/// What the committer thread owns.
struct Committer {
    /// The database in use: read at each flush, as a compaction replaces it
    /// (while no write is applied or waiting).
    current: Current,
    feed: Arc<FeedQueue>,
    /// A compaction's copy, which gets the watch log records too.
    shadow: ShadowSlot,
    failure: Arc<OnceLock<Arc<str>>>,
    fault: Option<SyncFault>,
}

impl Committer {
    fn run(&self, pending: &mpsc::Receiver<oneshot::Sender<FlushResult>>, observer: &ObserverSlot) {
        // How many waiters the last flush answered: the concurrency to expect.
        let mut last_group = 1;
        // Ends when the `GroupCommit` is dropped.
        while let Ok(first) = pending.recv() {
            let mut waiters = vec![first];
            waiters.extend(pending.try_iter());
            if last_group > 1 {
                let deadline = Instant::now() + GATHER_MAX;
                while waiters.len() < last_group {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match pending.recv_timeout(left) {
                        Ok(waiter) => waiters.push(waiter),
                        // Time is up, or the queue closed: flush what is here.
                        Err(_) => break,
                    }
                }
            }
            last_group = waiters.len();
            let started = Instant::now();
            let result = self.flush();
            if let Some(observe) = observer.0.get() {
                observe(started.elapsed(), waiters.len());
            }
            tracing::trace!(
                writes = waiters.len(),
                elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                "group commit"
            );
            for waiter in waiters {
                // A waiter that went away (its request was cancelled) needs no answer.
                let _ = waiter.send(result.clone());
            }
        }
    }

    /// One group flush: refused after a failure; on success, the feed gets
    /// every change it covers before anyone is answered.
    fn flush(&self) -> FlushResult {
        if let Some(why) = self.failure.get() {
            return Err(StoreError::Failed(Arc::clone(why)));
        }
        // Every change pushed by now was applied before the flush starts.
        let covered = self.feed.last();
        // Every record up to `covered` (pushed with its position).
        let records = self.feed.take_records();
        let live = super::live(&self.current);
        let shadow = self
            .shadow
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let written = super::watch::write(&live.db, shadow.as_deref(), &records)
            .map_err(|e| std::io::Error::other(e.to_string()));
        match written.and_then(|()| flush_and_sync(&live.db, &live.data_file, self.fault.as_ref()))
        {
            Ok(()) => {
                self.feed.deliver_through(covered);
                Ok(())
            }
            Err(error) => {
                let why: Arc<str> = Arc::from(error.to_string());
                let why = Arc::clone(self.failure.get_or_init(|| why));
                tracing::error!(
                    %error,
                    "flush to disk failed: no write is acknowledged from now on; restart the server"
                );
                Err(StoreError::Failed(why))
            }
        }
    }
}

/// Makes everything written to `db` so far durable.
fn flush_and_sync(
    db: &sled::Db,
    data_file: &File,
    fault: Option<&SyncFault>,
) -> std::io::Result<()> {
    db.flush().map_err(std::io::Error::other)?;
    if let Some(fault) = fault {
        fault()?;
    }
    data_file.sync_data()
}
