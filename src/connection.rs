//! Limits on client connections: how many are open at once, how long one may
//! take to send its first request (TCP, TLS and the HTTP/2 preface), and how
//! long one may stay open with no request in flight.
//!
//! hyper and tonic have none of these three (tonic's `timeout` starts with a
//! request, and its keep-alive pings only find dead peers), so they are kept
//! here, around the accepted sockets:
//!
//! - [`limit`] wraps the listener's stream of accepted sockets: a socket
//!   accepted while [`ConnectionLimits::max_connections`] are open is closed
//!   at once; every other one becomes a [`Conn`], which holds a semaphore
//!   permit until it is dropped (closed).
//! - A [`Conn`] has a deadline while no request is in flight on it: the
//!   handshake timeout from its accept until its first request, then the idle
//!   timeout from the end of its last request. Once the deadline passes while
//!   there is nothing to read, its next read fails, and hyper closes it.
//! - [`ActivityLayer`] tells the connection when a request starts and when
//!   its response body is done (or dropped): it finds the connection through
//!   the connect info tonic puts on every request.

use std::{
    fmt,
    future::Future as _,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower::{Layer, Service};

/// The limits [`limit`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Client connections open at once; one more is closed when accepted.
    pub max_connections: usize,
    /// From a connection's accept to its first request (TCP, TLS handshake,
    /// HTTP/2 preface and settings, request headers).
    pub handshake_timeout: Duration,
    /// How long a connection stays open with no request in flight.
    pub idle_timeout: Duration,
}

/// Applies `limits` to the sockets `accepted` yields (see the module docs).
pub fn limit<S>(accepted: S, limits: ConnectionLimits) -> impl Stream<Item = io::Result<Conn>>
where
    S: Stream<Item = io::Result<TcpStream>>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Whether the last refusal was logged at warn level: once per episode of
    // being full, not once per refused socket.
    let full = AtomicBool::new(false);
    accepted.filter_map(move |accepted| {
        let io = match accepted {
            Ok(io) => io,
            Err(error) => return Some(Err(error)),
        };
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                full.store(false, Ordering::Relaxed);
                Some(Ok(Conn::new(io, permit, limits)))
            }
            Err(_) => {
                let peer = io.peer_addr().ok();
                if !full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        ?peer,
                        "connection limit reached (--max-connections): new connections are closed at once"
                    );
                } else {
                    tracing::debug!(?peer, "connection limit reached: connection closed");
                }
                None
            }
        }
    })
}

/// What a connection is doing, shared by the connection and its requests.
#[derive(Default)]
struct Activity {
    state: Mutex<ActivityState>,
}

#[derive(Default)]
struct ActivityState {
    /// Requests in flight.
    in_flight: usize,
    /// Whether a request has arrived.
    started: bool,
    /// When the connection is closed if still without a request in flight.
    deadline: Option<Instant>,
    /// The idle timeout.
    idle_timeout: Duration,
    /// The connection's reader, woken when its deadline changes.
    waker: Option<Waker>,
}

impl Activity {
    fn state(&self) -> MutexGuard<'_, ActivityState> {
        // The state stays consistent even if a holder panicked.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request starts: no deadline while it is in flight.
    fn begin(self: &Arc<Self>) -> InFlight {
        let mut state = self.state();
        state.in_flight += 1;
        state.started = true;
        state.deadline = None;
        InFlight(Arc::clone(self))
    }
}

impl fmt::Debug for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Activity")
            .field("in_flight", &state.in_flight)
            .field("started", &state.started)
            .field("deadline", &state.deadline)
            .finish_non_exhaustive()
    }
}

/// A request in flight on a connection; the connection's idle timeout
/// starts again when the last one is dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.deadline = Some(Instant::now() + state.idle_timeout);
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }
}

/// An accepted client connection within the limits: it holds its place
/// among [`ConnectionLimits::max_connections`] until it is dropped, and
/// fails its next read once its deadline has passed (see the module docs).
pub struct Conn {
    io: TcpStream,
    activity: Arc<Activity>,
    /// Sleeps until `armed`.
    timer: Pin<Box<Sleep>>,
    /// The deadline `timer` is set to.
    armed: Option<Instant>,
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.io.peer_addr().ok())
            .field("activity", &self.activity)
            .finish_non_exhaustive()
    }
}

impl Conn {
    fn new(io: TcpStream, permit: OwnedSemaphorePermit, limits: ConnectionLimits) -> Self {
        let deadline = Instant::now() + limits.handshake_timeout;
        let activity = Activity {
            state: Mutex::new(ActivityState {
                deadline: Some(deadline),
                idle_timeout: limits.idle_timeout,
                ..ActivityState::default()
            }),
        };
        Self {
            io,
            activity: Arc::new(activity),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            armed: Some(deadline),
            _permit: permit,
        }
    }

    /// With nothing to read: an error once the deadline has passed, else
    /// pending, woken at the deadline or when it changes.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let (deadline, started) = {
            let mut state = self.activity.state();
            state.waker = Some(cx.waker().clone());
            (state.deadline, state.started)
        };
        let Some(deadline) = deadline else {
            return Poll::Pending;
        };
        if self.armed != Some(deadline) {
            self.timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                let peer = self.io.peer_addr().ok();
                let why = if started {
                    "no request in flight for the idle timeout (--idle-timeout)"
                } else {
                    "no request within the handshake timeout (--handshake-timeout)"
                };
                tracing::debug!(?peer, "closing a client connection: {why}");
                Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why))
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => this.poll_deadline(cx).map(Err),
            ready => ready,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What tonic puts on each request of a [`Conn`] (the TCP addresses, and
/// the connection's activity for [`ActivityLayer`]).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP addresses.
    pub tcp: TcpConnectInfo,
    activity: Arc<Activity>,
}

impl ConnInfo {
    /// The client's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.tcp.remote_addr()
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.io.connect_info(),
            activity: Arc::clone(&self.activity),
        }
    }
}

/// Tells each request's connection when the request starts and ends (see
/// the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> Layer<S> for ActivityLayer {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Tracked { inner }
    }
}

/// The service made by [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
}

/// The response future of [`Tracked`].
pub type TrackedFuture<B, E> =
    Pin<Box<dyn std::future::Future<Output = Result<Response<TrackedBody<B>>, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Tracked<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = TrackedFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // tonic puts the connect info of a TLS connection's socket there too.
        let activity = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| &info.activity);
        let in_flight = activity.map(Activity::begin);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it is dropped.
    #[derive(Debug)]
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
