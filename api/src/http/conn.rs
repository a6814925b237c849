//! Serving connections: HTTP/1.1 over hyper, with the hygiene a public
//! listener needs.
//!
//! **Guarantees**
//! - At most `MAX_CONNECTIONS` connections are open; one more is accepted
//!   and closed at once (counted in `ledger_http_connections_refused`), so
//!   the listen backlog never fills with clients waiting for nothing.
//! - A connection must deliver a request's complete headers within
//!   `HEADER_READ_TIMEOUT` of opening, or of its first byte after an idle
//!   spell; otherwise it is closed (slow-loris).
//! - A connection with no request in flight and no byte moving for
//!   `HTTP_IDLE_TIMEOUT` is closed.
//! - A request's body and handling are bounded by
//!   [`super::REQUEST_TIMEOUT`] (the request context), not here.
//! - On shutdown the listener closes at once, idle connections close, and
//!   in-flight requests get `SHUTDOWN_GRACE` to finish; connections still
//!   open then are closed, and [`serve`] returns.
//! - The peer address reaches handlers as `ConnectInfo<SocketAddr>`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::metrics::Metrics;
use crate::config::LimitsConfig;

/// After an `accept` error (typically out of file descriptors) the loop
/// waits this long instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What [`serve`] enforces; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl From<&LimitsConfig> for ConnLimits {
    fn from(c: &LimitsConfig) -> Self {
        ConnLimits {
            max_connections: c.max_connections as usize,
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.idle_timeout,
            shutdown_grace: c.shutdown_grace,
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then drains for at most
/// `limits.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    metrics.connection_refused();
                    tracing::debug!(%peer, "MAX_CONNECTIONS reached; closing a new connection");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                connections.spawn(connection(
                    stream,
                    peer,
                    router.clone(),
                    limits,
                    metrics.clone(),
                    shutdown.clone(),
                    slot,
                ));
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            grace = ?limits.shutdown_grace,
            "SHUTDOWN_GRACE over: closing the connections still open"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    Ok(())
}

/// One connection, until it ends, times out, or is drained.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    metrics.connections_open(1);
    let _open = scopeguard(move || metrics.connections_open(-1));
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let requests = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let in_flight = requests.request_started();
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await;
            drop(in_flight);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The header clock is ours (see `Activity`); hyper's would also start
    // on every idle keep-alive connection, making it the idle timeout too.
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let watchdog = activity.watchdog(limits.header_read_timeout, limits.idle_timeout);
    tokio::pin!(watchdog);
    let mut draining = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            reason = &mut watchdog => {
                tracing::debug!(%peer, reason, "closing connection");
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Runs `f` when dropped (also when the task is aborted).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// What a connection is doing, as the I/O and the service see it. Times
/// are milliseconds since the connection opened, plus one (0 = never).
#[derive(Debug)]
struct Activity {
    opened: Instant,
    in_flight: AtomicU32,
    /// Last byte read or written, or last response handed back.
    last_active: AtomicU64,
    /// When the headers now being read started; 0 when none are.
    head_started: AtomicU64,
    /// Wakes the watchdog when a deadline may have moved.
    changed: tokio::sync::Notify,
}

/// Marks a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_active.store(self.0.now(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            last_active: AtomicU64::new(1),
            // A new connection owes its first request's headers at once.
            head_started: AtomicU64::new(1),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn at(&self, stamp: u64) -> Instant {
        self.opened + Duration::from_millis(stamp.saturating_sub(1))
    }

    fn bytes_read(&self) {
        let now = self.now();
        self.last_active.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let started =
                self.head_started
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
            if started.is_ok() {
                self.changed.notify_one();
            }
        }
    }

    fn bytes_written(&self) {
        self.last_active.store(self.now(), Ordering::Relaxed);
    }

    /// hyper calls the service once a request's headers are complete.
    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    /// Completes when the connection must close, with the reason.
    async fn watchdog(&self, header_read: Duration, idle: Duration) -> &'static str {
        loop {
            let now = Instant::now();
            let head_started = self.head_started.load(Ordering::Acquire);
            let wake = if head_started != 0 {
                let deadline = self.at(head_started) + header_read;
                if now >= deadline {
                    return "HEADER_READ_TIMEOUT";
                }
                deadline
            } else if self.in_flight.load(Ordering::Acquire) > 0 {
                // The request context bounds the request; its end wakes us.
                now + idle
            } else {
                let deadline = self.at(self.last_active.load(Ordering::Relaxed)) + idle;
                if now >= deadline {
                    return "HTTP_IDLE_TIMEOUT";
                }
                deadline
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

/// A socket that reports its reads and writes to [`Activity`].
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.bytes_written();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.bytes_written();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
