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
//!   an HTTP/1 header-read timeout and HTTP/2 keepalive pings with a timeout, and graceful draining.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
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
/// for the idle timeout.
pub struct Guarded<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    last_read: Instant,
    idle: Pin<Box<Sleep>>,
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
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        }
    }

    /// Whether the peer has been silent too long. Reads only record the time; the timer is moved when it
    /// fires early, so a busy connection costs no timer updates.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.idle.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last_read + self.idle_timeout;
            if deadline <= Instant::now() {
                return true;
            }
            self.idle.as_mut().reset(deadline);
        }
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
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for longer than --idle-timeout",
            ))),
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
        .timer(TokioTimer::new())
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
        let (connection, _peer) = tokio::select! {
            next = incoming.recv() => match next {
                Some(next) => next,
                None => break,
            },
            () = &mut stop => break,
        };
        let service = TowerToHyperService::new(router.clone());
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
