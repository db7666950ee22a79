//! Accepting and keeping connections on the gRPC and REST listeners, with limits against slow, idle and
//! numerous clients:
//!
//! - a cap on open connections shared by both listeners (`--max-connections`): a connection beyond it
//!   is closed at accept, and its slot is released when it closes;
//! - an idle timeout (`--idle-timeout`): a connection the peer sends nothing on for that long is closed
//!   (every byte read counts, HTTP/2 PING answers included, so a live peer of a long stream stays);
//! - TLS handshakes off the accept loop, each within `--tls-handshake-timeout`, at most
//!   `--max-tls-handshakes` at once (a connection beyond is closed at accept);
//! - for REST, which is served here with `hyper-util` (the gRPC listener's HTTP settings are tonic's):
//!   an HTTP/1 header-read timeout (`--header-read-timeout`, see [`HeaderTimer`]) and HTTP/2 keepalive
//!   pings with a timeout, and graceful draining.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};

/// How connections are accepted and kept.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_tls_handshakes: usize,
}

/// Connection slots shared by the listeners.
pub type Slots = Arc<Semaphore>;

/// An accepted connection: holds its slot until dropped, and fails reads once the peer has been silent
/// for the idle timeout or, on an HTTP/1 connection given a [`HeaderTimer`], once a request's headers
/// have taken longer than the header-read timeout.
pub struct Guarded<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    last_read: Instant,
    /// The one timer of the connection: armed at the earliest of the idle and header deadlines (or
    /// earlier: it is moved only when it fires, or when a header deadline comes before it).
    timer: Pin<Box<Sleep>>,
    headers: Option<Arc<HeaderDeadline>>,
}

impl<IO> std::fmt::Debug for Guarded<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl<IO> Guarded<IO> {
    fn new(io: IO, slot: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        Guarded {
            io,
            _slot: slot,
            idle_timeout,
            last_read: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            headers: None,
        }
    }

    /// The timer to give hyper's HTTP/1 side of this connection: through it, hyper says when it
    /// starts and stops reading a request's headers, and this connection enforces the deadline.
    pub fn header_timer(&mut self) -> HeaderTimer {
        let deadline = Arc::new(HeaderDeadline::new());
        self.headers = Some(Arc::clone(&deadline));
        HeaderTimer(deadline)
    }

    /// Why the connection must end now, if it must. Reads only record the time and hyper's header
    /// timer only publishes a deadline; the timer is moved when it fires early or when a header
    /// deadline comes before it — about once per header-read timeout on a busy connection, instead of
    /// a timer registered and cancelled for every request.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        let headers = self
            .headers
            .as_ref()
            .and_then(|h| h.get())
            .map(Instant::from_std);
        if let Some(deadline) = headers
            && deadline < self.timer.deadline()
        {
            self.timer.as_mut().reset(deadline);
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            if headers.is_some_and(|deadline| deadline <= now) {
                return Some("request headers not complete within --header-read-timeout");
            }
            let idle = self.last_read + self.idle_timeout;
            if idle <= now {
                return Some("connection idle for longer than --idle-timeout");
            }
            self.timer
                .as_mut()
                .reset(headers.map_or(idle, |deadline| deadline.min(idle)));
        }
    }
}

/// When the HTTP/1 request headers being read on one connection must be complete: set by hyper
/// through [`HeaderTimer`], read by [`Guarded`]. Nanoseconds after `since`, plus one; 0 while no
/// header is being read.
#[derive(Debug)]
struct HeaderDeadline {
    since: std::time::Instant,
    at: AtomicU64,
}

impl HeaderDeadline {
    fn new() -> Self {
        HeaderDeadline {
            since: std::time::Instant::now(),
            at: AtomicU64::new(0),
        }
    }

    fn encode(&self, deadline: std::time::Instant) -> u64 {
        let nanos = deadline.saturating_duration_since(self.since).as_nanos();
        u64::try_from(nanos)
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    // Relaxed: the deadline is written and read by the one task that serves the connection.
    fn set(&self, deadline: std::time::Instant) -> u64 {
        let at = self.encode(deadline);
        self.at.store(at, Ordering::Relaxed);
        at
    }

    fn clear(&self, at: u64) {
        let _ = self
            .at
            .compare_exchange(at, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn get(&self) -> Option<std::time::Instant> {
        match self.at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(self.since + Duration::from_nanos(at - 1)),
        }
    }
}

/// hyper's HTTP/1 timer for one connection, used for the header-read timeout only: hyper creates a
/// sleep when it starts reading a request's headers and drops it once they are parsed. Here that
/// sleep only publishes its deadline to the connection's [`Guarded`], which fails the read past it
/// (hyper then closes the connection, as with its own timeout). hyper's default timer registers a
/// tokio timer for every request and cancels it a few microseconds later — two trips through the
/// runtime's timer wheel on every keep-alive request, measurable at REST's request rate.
#[derive(Debug, Clone)]
pub struct HeaderTimer(Arc<HeaderDeadline>);

impl hyper::rt::Timer for HeaderTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(std::time::Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let at = self.0.set(deadline);
        Box::pin(HeaderSleep {
            deadline: Arc::clone(&self.0),
            at,
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeaderSleep>() {
            Some(mut header) => header.at = header.deadline.set(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// A header-read deadline while hyper holds it. Never completes by itself: [`Guarded`] ends the
/// connection past the deadline.
struct HeaderSleep {
    deadline: Arc<HeaderDeadline>,
    at: u64,
}

impl Future for HeaderSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

impl hyper::rt::Sleep for HeaderSleep {}

impl Drop for HeaderSleep {
    fn drop(&mut self) {
        self.deadline.clear(self.at);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last_read = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.expired(cx) {
                Some(why) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why))),
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// What turns an accepted TCP stream into the connection served (nothing, or a TLS handshake).
pub trait Handshake: Clone + Send + Sync + 'static {
    type Io: Send + 'static;
    /// Whether the handshake does real work (then it is bounded in time and in number).
    const BOUNDED: bool;
    fn handshake(&self, stream: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// Plain TCP.
#[derive(Debug, Clone, Copy)]
pub struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;
    const BOUNDED: bool = false;
    async fn handshake(&self, stream: TcpStream) -> io::Result<TcpStream> {
        Ok(stream)
    }
}

/// TLS (rustls).
#[derive(Clone)]
pub struct Tls(pub tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Handshake for Tls {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    const BOUNDED: bool = true;
    async fn handshake(&self, stream: TcpStream) -> io::Result<Self::Io> {
        self.0.accept(stream).await
    }
}

/// Accepts connections on `listener` within the limits and yields them once their handshake is done.
/// The loop ends when the receiver is dropped.
pub fn accept<H: Handshake>(
    listener: TcpListener,
    handshake: H,
    limits: &Limits,
    slots: Slots,
) -> mpsc::Receiver<(Guarded<H::Io>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(128);
    let handshakes = Arc::new(Semaphore::new(limits.max_tls_handshakes));
    let (idle_timeout, handshake_timeout) = (limits.idle_timeout, limits.tls_handshake_timeout);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::debug!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::debug!(%peer, "connection refused: --max-connections reached");
                continue;
            };
            let _ = stream.set_nodelay(true);
            if !H::BOUNDED {
                let Ok(io) = handshake.handshake(stream).await else {
                    continue;
                };
                if tx
                    .send((Guarded::new(io, slot, idle_timeout), peer))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            let Ok(in_progress) = Arc::clone(&handshakes).try_acquire_owned() else {
                tracing::debug!(%peer, "connection refused: --max-tls-handshakes in progress");
                continue;
            };
            let (handshake, tx) = (handshake.clone(), tx.clone());
            tokio::spawn(async move {
                let done =
                    tokio::time::timeout(handshake_timeout, handshake.handshake(stream)).await;
                drop(in_progress);
                match done {
                    Ok(Ok(io)) => {
                        let _ = tx.send((Guarded::new(io, slot, idle_timeout), peer)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The accepted connections as the stream tonic serves.
pub fn stream<IO: Send + 'static>(
    incoming: mpsc::Receiver<(Guarded<IO>, SocketAddr)>,
) -> impl tokio_stream::Stream<Item = io::Result<Guarded<IO>>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::ReceiverStream::new(incoming).map(|(connection, _)| Ok(connection))
}

/// Serves HTTP/1.1 and HTTP/2 (by ALPN or preface) with `router` on the connections from `incoming`
/// until `stop` completes, then lets the connections finish what they are doing.
pub async fn serve_http<IO>(
    mut incoming: mpsc::Receiver<(Guarded<IO>, SocketAddr)>,
    router: axum::Router,
    limits: &Limits,
    stop: impl Future<Output = ()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout)
        .max_pending_accept_reset_streams(Some(20));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (mut connection, _peer) = tokio::select! {
            next = incoming.recv() => match next {
                Some(next) => next,
                None => break,
            },
            () = &mut stop => break,
        };
        let service = TowerToHyperService::new(router.clone());
        // Each connection gets its own header timer (see [`HeaderTimer`]): a clone of the builder.
        let mut builder = builder.clone();
        builder.http1().timer(connection.header_timer());
        let served = builder
            .serve_connection(TokioIo::new(connection), service)
            .into_owned();
        let served = graceful.watch(served);
        tokio::spawn(async move {
            if let Err(error) = served.await {
                tracing::debug!(error = %error, "REST connection ended with an error");
            }
        });
    }
    drop(incoming);
    graceful.shutdown().await;
}
