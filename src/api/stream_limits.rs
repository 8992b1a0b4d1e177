//! The limits of a long-lived stream (StreamEligibility, Backup): how long
//! it waits for the client (its next message, or room for the next answer)
//! and how long it may last in all. tonic's `--request-timeout` ends when
//! the response headers are sent, so a stream needs its own.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::Status;

use crate::{app::Settings, error::Error};

/// The answers of a stream, as tonic sends them.
pub(crate) type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The sending end of a stream's answers: a bounded queue (back-pressure),
/// and the status that ends the stream, delivered after the answers already
/// queued, so that a stream ended by a limit never looks complete.
#[derive(Debug)]
pub(crate) struct Outbox<T> {
    answers: mpsc::Sender<Result<T, Status>>,
    last: Option<oneshot::Sender<Status>>,
    limits: StreamLimits,
}

/// Why an [`Outbox`] takes no more answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ended;

/// A stream's outbox, holding at most `buffered` answers, and the answers
/// tonic sends.
pub(crate) fn outbox<T: Send + 'static>(
    limits: StreamLimits,
    buffered: usize,
) -> (Outbox<T>, Answers<T>) {
    let (answers, queued) = mpsc::channel(buffered);
    let (last, ending) = oneshot::channel();
    // Without a status sent, `ending` fails when the outbox is dropped: the
    // stream then ends with OK after the queued answers.
    let stream = ReceiverStream::new(queued).chain(Ending(Some(ending), std::marker::PhantomData));
    (
        Outbox {
            answers,
            last: Some(last),
            limits,
        },
        Box::pin(stream),
    )
}

/// The status that ends a stream, if one was sent: one item, or none.
struct Ending<T>(
    Option<oneshot::Receiver<Status>>,
    std::marker::PhantomData<fn() -> T>,
);

impl<T> Stream for Ending<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(ending) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        let ended = std::task::ready!(Pin::new(ending).poll(cx));
        self.0 = None;
        Poll::Ready(ended.ok().map(Err))
    }
}

impl<T> Outbox<T> {
    /// Queues `answer`, waiting while the client has not taken the answers
    /// queued before, within the stream's limits. `Ended` when the client
    /// went away, or when a limit ended the stream (the client then gets
    /// DEADLINE_EXCEEDED after the answers queued).
    pub(crate) async fn send(&mut self, answer: T) -> Result<(), Ended> {
        let waited = self
            .limits
            .wait(
                "for the client to take an answer",
                self.answers.send(Ok(answer)),
            )
            .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ended),
            Err(cut) => {
                self.end(Status::from(cut));
                Err(Ended)
            }
        }
    }

    /// Waits for `step` (the client's next message), within the stream's
    /// limits; a limit ends the stream with DEADLINE_EXCEEDED.
    pub(crate) async fn receive<F: Future>(&mut self, step: F) -> Result<F::Output, Ended> {
        match self
            .limits
            .wait("for the client's next message", step)
            .await
        {
            Ok(output) => Ok(output),
            Err(cut) => {
                self.end(Status::from(cut));
                Err(Ended)
            }
        }
    }

    /// Ends the stream with `status`, after the answers queued.
    pub(crate) fn end(&mut self, status: Status) {
        if let Some(last) = self.last.take() {
            let _ = last.send(status);
        }
    }
}

/// The clock of one stream, started when it opens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    idle: Duration,
    max: Duration,
    /// When the stream ends; `None`: no maximum duration.
    ends: Option<Instant>,
}

impl StreamLimits {
    /// The limits of `settings`, from now.
    pub(crate) fn start(settings: &Settings) -> Self {
        Self {
            idle: settings.stream_idle_timeout,
            max: settings.stream_max_duration,
            ends: Some(Instant::now() + settings.stream_max_duration),
        }
    }

    /// The idle timeout of `settings` only: for a stream that may rightly
    /// last long as long as the client keeps up (a backup).
    pub(crate) fn idle_only(settings: &Settings) -> Self {
        Self {
            ends: None,
            ..Self::start(settings)
        }
    }

    /// Waits for `step` (a message from the client, or room for an answer),
    /// at most the idle timeout and never past the stream's end; `waiting`
    /// says what for in the error.
    pub(crate) async fn wait<T>(
        &self,
        waiting: &str,
        step: impl Future<Output = T>,
    ) -> Result<T, Error> {
        let idle = Instant::now() + self.idle;
        let deadline = self.ends.map_or(idle, |ends| idle.min(ends));
        tokio::time::timeout_at(deadline, step)
            .await
            .map_err(|_| self.cut(waiting))
    }

    /// Why the stream was ended while waiting for `waiting`.
    fn cut(&self, waiting: &str) -> Error {
        let message = if self.ends.is_some_and(|ends| Instant::now() >= ends) {
            format!(
                "the stream reached its maximum duration of {} (--stream-max-duration); \
                 what was answered stands: open a new stream for the rest",
                humantime::format_duration(self.max)
            )
        } else {
            format!(
                "the stream waited {} {waiting} (--stream-idle-timeout); \
                 what was answered stands: open a new stream for the rest",
                humantime::format_duration(self.idle)
            )
        };
        tracing::info!("stream ended: {message}");
        Error::StreamCut(message)
    }
}
