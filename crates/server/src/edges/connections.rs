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
//!   an HTTP/1 header-read timeout (`--header-read-timeout`, kept by [`Guarded`] from the connection's
//!   [`Activity`], not by hyper's timer) and HTTP/2 keepalive pings with a timeout, and graceful
//!   draining.
//!
//! A TLS connection's verified client certificate is read once, after its handshake, and rides with
//! the connection: to gRPC calls in tonic's connect info ([`ConnectionInfo::certificate`]), to REST
//! requests as a [`ClientCertificate`] extension.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};

use crate::service::auth::{ClientTrust, PeerCertificate, Rechecked};

/// How connections are accepted and kept.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    /// HTTP/2 streams open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// A connection with a request open (not a long-lived stream) on which no request has started or
    /// ended for this long is closed: its peer does not read its answers.
    pub stall_timeout: Duration,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_tls_handshakes: usize,
}

/// The largest HTTP/2 header list (decoded names and values plus 32 bytes per field) a request may
/// have, on every listener: bearer tokens are the largest headers we expect (a few KiB).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// How much request data one HTTP/2 stream, and one connection, may have in flight to us (the
/// flow-control windows we grant): requests are at most 16 KiB, so a peer cannot make us buffer more.
pub const STREAM_WINDOW_BYTES: u32 = 64 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 256 * 1024;

/// Connection slots shared by listeners, and the connections holding them: when every slot is
/// taken, a new connection evicts one instead of being refused — idle, not started, stalled or
/// holding only anonymous streams, in that order (see [`Activity::eviction_rank`]; a connection
/// holding a watch or a waiting long-poll is never evicted). Peers that
/// connect and send nothing, make one request and go quiet, or stop reading their answers therefore
/// cannot keep others out; each would otherwise hold its slot until its own deadline, again and again.
#[derive(Debug, Clone)]
pub struct Slots(Arc<SlotsInner>);

#[derive(Debug)]
struct SlotsInner {
    semaphore: Arc<Semaphore>,
    capacity: usize,
    /// How long a connection's requests must have made no progress before it may be evicted.
    stalled_after: Duration,
    /// Oldest first; entries whose connection ended are pruned lazily.
    connections: std::sync::Mutex<std::collections::VecDeque<std::sync::Weak<Activity>>>,
}

impl Slots {
    pub fn new(capacity: usize, stalled_after: Duration) -> Self {
        Slots(Arc::new(SlotsInner {
            semaphore: Arc::new(Semaphore::new(capacity)),
            capacity,
            stalled_after,
            connections: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }))
    }

    /// A free slot now, or one freed by evicting a connection (waiting a moment for it to close);
    /// `None` when every connection is serving long-lived streams or making progress.
    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = Arc::clone(&self.0.semaphore).try_acquire_owned() {
            return Some(slot);
        }
        if !self.evict_one() {
            closed(Closed::Refused);
            return None;
        }
        let slot = tokio::time::timeout(
            Duration::from_millis(250),
            Arc::clone(&self.0.semaphore).acquire_owned(),
        )
        .await
        .ok()
        .and_then(Result::ok);
        if slot.is_none() {
            closed(Closed::Refused);
        }
        slot
    }

    fn evict_one(&self) -> bool {
        let Ok(mut connections) = self.0.connections.lock() else {
            return false;
        };
        connections.retain(|entry| entry.strong_count() > 0);
        let now = std::time::Instant::now();
        let stalled_after = self.0.stalled_after;
        let victim = connections
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .filter_map(|activity| Some((activity.eviction_rank(now, stalled_after)?, activity)))
            .min_by_key(|(rank, _)| *rank);
        victim.is_some_and(|(_, activity)| activity.evict())
    }

    fn register(&self, activity: &Arc<Activity>) {
        let Ok(mut connections) = self.0.connections.lock() else {
            return;
        };
        if connections.len() >= 2 * self.0.capacity {
            connections.retain(|entry| entry.strong_count() > 0);
        }
        connections.push_back(Arc::downgrade(activity));
    }
}

/// An accepted connection: holds its slot until dropped, and fails reads (which ends it) once
///
/// - no request has started within the header-read timeout of the connection being ready (a peer
///   that connects and sends nothing, or only an HTTP/2 preface and PING answers);
/// - no request or stream has been open for the idle timeout, whatever else the peer sends (PING
///   answers keep a connection with a stream alive, never one without);
/// - on an HTTP/1 connection, the next request has not arrived within the header-read timeout of the
///   end of the last answer (hyper reads the next request's headers from then: a request that is
///   trickled in, or none at all, is cut). HTTP/1 does not read a request's headers while one is
///   open, nor while an answer cannot be written, so that time runs from when the last answer was
///   both done and written; an HTTP/1 connection whose answer cannot be written for the stall
///   timeout with no request open is closed as stalled (its peer does not read).
///
/// Which requests are open is told by the service layer through the connection's [`Activity`].
pub struct Guarded<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    first_request_timeout: Duration,
    stall_timeout: Duration,
    activity: Arc<Activity>,
    /// The one timer of the connection: armed at the earliest deadline that may apply (or earlier: it
    /// is moved only when it fires, or when a header deadline comes before it).
    timer: Pin<Box<Sleep>>,
    header_read_timeout: Duration,
    /// Since when the last write could not go on (the peer is not reading), if it still cannot.
    write_blocked_since: Option<Instant>,
    /// When a blocked write last went on again: an HTTP/1 answer is over only once it is written,
    /// and hyper reads the next request only then.
    write_resumed_at: Option<Instant>,
    /// The client certificate its TLS handshake verified.
    certificate: Option<Arc<PeerCertificate>>,
}

impl<IO> std::fmt::Debug for Guarded<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("idle_timeout", &self.idle_timeout)
            .field("activity", &self.activity)
            .finish_non_exhaustive()
    }
}

impl<IO> Guarded<IO> {
    fn new(io: IO, slot: OwnedSemaphorePermit, limits: &Limits, slots: &Slots) -> Self {
        let activity = Arc::new(Activity::new());
        slots.register(&activity);
        let first = limits.header_read_timeout.min(limits.idle_timeout);
        Guarded {
            io,
            _slot: slot,
            idle_timeout: limits.idle_timeout,
            first_request_timeout: first,
            stall_timeout: limits.stall_timeout,
            timer: Box::pin(tokio::time::sleep_until(
                Instant::from_std(activity.since) + first,
            )),
            activity,
            header_read_timeout: limits.header_read_timeout,
            write_blocked_since: None,
            write_resumed_at: None,
            certificate: None,
        }
    }

    /// The client certificate the connection's TLS handshake verified, if any.
    pub fn certificate(&self) -> Option<Arc<PeerCertificate>> {
        self.certificate.clone()
    }

    /// What the service layer uses to say when requests start and end on this connection.
    pub fn activity(&self) -> Arc<Activity> {
        Arc::clone(&self.activity)
    }

    /// Why the connection must end now, if it must. Reads record nothing and the service layer only
    /// publishes state; the timer is moved when it fires early or when a header deadline comes before
    /// it — about once per timeout on a busy connection, instead of a timer registered and cancelled
    /// for every request.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<Closed> {
        // While an HTTP/1 answer cannot be written, hyper does not read the next request: no header
        // deadline runs then (a peer that does not read is bounded as stalled, below), and once the
        // write goes on again the next request has the full timeout from then.
        let headers = match self.write_blocked_since {
            Some(_) => None,
            None => self
                .activity
                .next_headers_due(self.header_read_timeout)
                .map(|due| {
                    let due = Instant::from_std(due);
                    self.write_resumed_at
                        .map_or(due, |resumed| due.max(resumed + self.header_read_timeout))
                }),
        };
        let blocked = self
            .write_blocked_since
            .filter(|_| self.activity.is_http1() && !self.activity.serving_bounded())
            .map(|since| since + self.stall_timeout);
        if let Some(deadline) = headers
            && deadline < self.timer.deadline()
        {
            self.timer.as_mut().reset(deadline);
        }
        // Registered before the flag is read: an eviction after this read wakes this waker.
        self.activity.reader.register(cx.waker());
        if self.activity.evicted.load(Ordering::Acquire) {
            return Some(Closed::Evicted);
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            if headers.is_some_and(|deadline| deadline <= now) {
                return Some(Closed::HeaderTimeout);
            }
            let since = Instant::from_std(self.activity.since);
            let first = (!self.activity.started.load(Ordering::Relaxed))
                .then_some(since + self.first_request_timeout);
            if first.is_some_and(|deadline| deadline <= now) {
                return Some(Closed::NoRequest);
            }
            let idle = self
                .activity
                .quiet_since()
                .map(|quiet| Instant::from_std(quiet) + self.idle_timeout);
            if idle.is_some_and(|deadline| deadline <= now) {
                return Some(Closed::Idle);
            }
            let stalled = self
                .activity
                .serving_bounded()
                .then(|| Instant::from_std(self.activity.progress()) + self.stall_timeout);
            if stalled.is_some_and(|deadline| deadline <= now)
                || blocked.is_some_and(|deadline| deadline <= now)
            {
                return Some(Closed::Stalled);
            }
            // Look again an idle timeout from now at the latest: a request open now may have ended
            // by then (so an idle connection is closed between one and two idle timeouts after its
            // last request, without a wake-up for every request that ends).
            let next = [
                headers,
                first,
                idle,
                stalled,
                blocked,
                Some(now + self.idle_timeout),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + self.idle_timeout);
            self.timer.as_mut().reset(next);
        }
    }
}

/// Why a connection was closed by its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// An HTTP/1 request's headers took longer than `--header-read-timeout`.
    HeaderTimeout,
    /// No request started within `--header-read-timeout` of the connection being ready.
    NoRequest,
    /// No request or stream open for `--idle-timeout`.
    Idle,
    /// Every slot was taken and this connection made room for a new one.
    Evicted,
    /// A request open without progress (none started or ended) for the stall timeout: the peer does
    /// not read its answers.
    Stalled,
    /// Refused at accept: every slot taken and none could be freed.
    Refused,
    /// A TLS handshake that failed, timed out, or was evicted to make room for a new one.
    Handshake,
}

impl Closed {
    /// Every reason, in the order of [`closed_counts`].
    pub const ALL: [Closed; 7] = [
        Closed::HeaderTimeout,
        Closed::NoRequest,
        Closed::Idle,
        Closed::Evicted,
        Closed::Stalled,
        Closed::Refused,
        Closed::Handshake,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::NoRequest => "no_request",
            Closed::Idle => "idle",
            Closed::Evicted => "evicted",
            Closed::Stalled => "stalled",
            Closed::Refused => "refused",
            Closed::Handshake => "tls_handshake",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "request headers not complete within --header-read-timeout",
            Closed::NoRequest => "no request within --header-read-timeout of connecting",
            Closed::Idle => "no request open for longer than --idle-timeout",
            Closed::Evicted => {
                "every connection slot taken: this connection makes room for a new one"
            }
            Closed::Stalled => "a request open without progress for the stall timeout",
            Closed::Refused | Closed::Handshake => "closed by a connection limit",
        }
    }
}

/// Connections closed by their limits, by [`Closed`] reason, since the process started (process-wide,
/// like the log writer's drop counter: every listener counts here).
static CLOSED: [AtomicU64; Closed::ALL.len()] = [const { AtomicU64::new(0) }; Closed::ALL.len()];

fn closed(why: Closed) {
    CLOSED[why as usize].fetch_add(1, Ordering::Relaxed);
}

/// Connections closed by their limits so far, in the order of [`Closed::ALL`].
pub fn closed_counts() -> [u64; Closed::ALL.len()] {
    std::array::from_fn(|i| CLOSED[i].load(Ordering::Relaxed))
}

/// What is going on on one connection, as the service layer sees it: how many requests (HTTP/1) or
/// streams (HTTP/2) are open, whether one ever started, and since when none is open. Written by the
/// layer through [`Activity::open`], read by [`Guarded`] when its timer fires.
#[derive(Debug)]
pub struct Activity {
    since: std::time::Instant,
    started: AtomicBool,
    open: AtomicUsize,
    /// Nanoseconds after `since` at which the last open request ended (0: at `since`).
    quiet_from: AtomicU64,
    /// Open requests that are long-lived streams (watches, long-polls, health watches, reflection):
    /// they are not expected to progress, and a connection holding only these is never evicted.
    long_lived: AtomicUsize,
    /// Nanoseconds after `since` at which a request last started or ended.
    progress_at: AtomicU64,
    /// Long-lived streams of authenticated callers (watches, waiting long-polls): a connection with
    /// one is never evicted. The others (health watches, reflection) do not protect it.
    protected: AtomicUsize,
    /// Streams open that any peer may hold without credentials (health watches, reflection).
    anonymous_streams: AtomicUsize,
    /// gRPC calls on this connection waiting for their request message.
    pub waiting_calls: AtomicUsize,
    /// Whether requests arrive over HTTP/1, where the next request's headers are read only once no
    /// request is open (set by the service layer at the first request).
    http1: AtomicBool,
    /// Set when the connection is evicted to make room.
    evicted: AtomicBool,
    /// The connection's reader or writer, to wake on eviction.
    reader: futures_util::task::AtomicWaker,
}

impl Activity {
    fn new() -> Self {
        Activity {
            since: std::time::Instant::now(),
            started: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            quiet_from: AtomicU64::new(0),
            long_lived: AtomicUsize::new(0),
            protected: AtomicUsize::new(0),
            anonymous_streams: AtomicUsize::new(0),
            waiting_calls: AtomicUsize::new(0),
            http1: AtomicBool::new(false),
            progress_at: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            reader: futures_util::task::AtomicWaker::new(),
        }
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// When a request last started or ended.
    fn progress(&self) -> std::time::Instant {
        self.since + Duration::from_nanos(self.progress_at.load(Ordering::Relaxed))
    }

    /// Whether a request that should finish on its own (not a long-lived stream) is open.
    fn serving_bounded(&self) -> bool {
        self.open.load(Ordering::Relaxed) > self.long_lived.load(Ordering::Relaxed)
    }

    /// Where this connection stands among the victims when a slot is needed (the lowest is
    /// evicted), or `None` when it must not be evicted: first connections idle longest (no request
    /// open), then connections that have not started a request, oldest first, then connections whose
    /// requests have made no progress for `stalled_after` (their peer not reading), then connections
    /// holding only anonymous streams (health watches, reflection); never one holding a watch or a
    /// waiting long-poll, or whose requests progress.
    fn eviction_rank(
        &self,
        now: std::time::Instant,
        stalled_after: Duration,
    ) -> Option<(u8, std::cmp::Reverse<Duration>)> {
        if self.evicted.load(Ordering::Relaxed) || self.protected.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let unproductive =
            |since: std::time::Instant| std::cmp::Reverse(now.saturating_duration_since(since));
        if !self.started.load(Ordering::Relaxed) {
            return Some((1, unproductive(self.since)));
        }
        if let Some(quiet) = self.quiet_since() {
            return Some((0, unproductive(quiet)));
        }
        let progress = self.progress();
        if self.serving_bounded() {
            return (now.saturating_duration_since(progress) >= stalled_after)
                .then(|| (2, unproductive(progress)));
        }
        Some((3, unproductive(progress)))
    }

    /// Marks the connection evicted and wakes it.
    fn evict(&self) -> bool {
        if self.evicted.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.reader.wake();
        true
    }

    /// A request or stream starts; it ends when the returned guard is dropped.
    pub fn open(self: &Arc<Self>) -> OpenRequest {
        // Relaxed: the connection's reader only needs to see these eventually; a late view makes it
        // look again later, never close early (the count is raised before `started` is read).
        self.progress_at.fetch_max(self.nanos(), Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        self.started.store(true, Ordering::Relaxed);
        OpenRequest {
            activity: Arc::clone(self),
            long_lived: false,
            protected: false,
            anonymous: None,
        }
    }

    /// When the next request's headers must be complete: on an HTTP/1 connection with no request
    /// open, `timeout` after the last one ended; `None` otherwise (before the first request the
    /// first-request deadline applies; HTTP/2 reads headers while streams are open, and bounds them
    /// with its own header-list limits).
    fn next_headers_due(&self, timeout: Duration) -> Option<std::time::Instant> {
        if !self.is_http1() {
            return None;
        }
        self.quiet_since().map(|quiet| quiet + timeout)
    }

    fn is_http1(&self) -> bool {
        self.http1.load(Ordering::Relaxed)
    }

    /// Since when no request has been open, or `None` while one is.
    fn quiet_since(&self) -> Option<std::time::Instant> {
        (self.open.load(Ordering::Relaxed) == 0)
            .then(|| self.since + Duration::from_nanos(self.quiet_from.load(Ordering::Relaxed)))
    }
}

/// One open request or stream on a connection (see [`Activity::open`]).
#[derive(Debug)]
pub struct OpenRequest {
    activity: Arc<Activity>,
    long_lived: bool,
    protected: bool,
    /// The server-wide count this request is counted in, when it is an anonymous stream.
    anonymous: Option<Arc<AtomicUsize>>,
}

impl OpenRequest {
    /// Counts the request as a stream any peer may hold without credentials, if the connection has
    /// fewer than `per_connection` of them and the server fewer than `total_limit` (counted in
    /// `total`); `false` (and nothing counted) otherwise.
    pub fn anonymous_stream(
        &mut self,
        per_connection: usize,
        total: &Arc<AtomicUsize>,
        total_limit: usize,
    ) -> bool {
        let counter = &self.activity.anonymous_streams;
        if counter.fetch_add(1, Ordering::Relaxed) >= per_connection {
            counter.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        if total.fetch_add(1, Ordering::Relaxed) >= total_limit {
            total.fetch_sub(1, Ordering::Relaxed);
            counter.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.anonymous = Some(Arc::clone(total));
        true
    }

    /// Marks the request as a long-lived stream: it holds its connection without progress by design,
    /// so it neither stalls the connection nor makes it a victim for eviction.
    pub fn long_lived(&mut self) {
        if !self.long_lived {
            self.long_lived = true;
            self.activity.long_lived.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks the request as a long-lived stream of an authenticated caller (a watch): its connection
    /// is never evicted while it is open.
    pub fn protected(&mut self) {
        self.long_lived();
        if !self.protected {
            self.protected = true;
            self.activity.protected.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let activity = &self.activity;
        if self.long_lived {
            activity.long_lived.fetch_sub(1, Ordering::Relaxed);
        }
        if self.protected {
            activity.protected.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(total) = &self.anonymous {
            total.fetch_sub(1, Ordering::Relaxed);
            activity.anonymous_streams.fetch_sub(1, Ordering::Relaxed);
        }
        let nanos = activity.nanos();
        activity.progress_at.fetch_max(nanos, Ordering::Relaxed);
        // Stored before the count falls, so that a reader who sees no request open also sees when
        // the last one ended (or a later time, which only delays the idle close).
        activity.quiet_from.fetch_max(nanos, Ordering::Relaxed);
        activity.open.fetch_sub(1, Ordering::Release);
    }
}

/// A response body that keeps its request counted as open on the connection until the body has
/// been sent or dropped (a watch stream lives as long as its body).
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _open: Option<OpenRequest>,
}

impl<B> TrackedBody<B> {
    pub fn new(inner: B, open: Option<OpenRequest>) -> Self {
        TrackedBody { inner, _open: open }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A tower service counting its requests as open on one connection's [`Activity`] (the REST and
/// admin listeners build one per connection).
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    certificate: Option<Arc<PeerCertificate>>,
}

/// Given to a REST request that may be a long-poll: the handler holds it while the caller, once
/// authenticated and admitted, waits, so that the connection counts as serving a watch only then (a
/// request's headers alone prove nothing).
#[derive(Debug, Clone)]
pub struct LongPoll(Arc<Activity>);

impl LongPoll {
    /// While the returned guard lives, the request this long-poll belongs to counts as a watch: a
    /// long-lived stream of an authenticated caller, never stalled for want of progress, never
    /// evicted. It is the request itself that is marked, not a second one opened beside it: an
    /// ordinary request left open beside the wait would have counted as making no progress, and the
    /// connection was closed as stalled after `--request-timeout` + `--header-read-timeout` (20 s by
    /// default) of any longer wait. When the guard drops, the request is an ordinary one again,
    /// making progress from then (its download is still ahead of it).
    pub fn hold(&self) -> Waiting {
        self.0.long_lived.fetch_add(1, Ordering::Relaxed);
        self.0.protected.fetch_add(1, Ordering::Relaxed);
        Waiting(Arc::clone(&self.0))
    }
}

/// A long-poll's wait in progress (see [`LongPoll::hold`]).
#[derive(Debug)]
pub struct Waiting(Arc<Activity>);

impl Drop for Waiting {
    fn drop(&mut self) {
        let activity = &self.0;
        // The progress first, so that whoever sees the request bounded again also sees it fresh.
        activity
            .progress_at
            .fetch_max(activity.nanos(), Ordering::Relaxed);
        activity.protected.fetch_sub(1, Ordering::Relaxed);
        activity.long_lived.fetch_sub(1, Ordering::Release);
    }
}

/// Whether a REST request may be a long-poll (`If-None-Match` and `?wait=`).
fn is_long_poll<B>(request: &http::Request<B>) -> bool {
    // The query first: most requests have none, and looking the header up hashes its name.
    request
        .uri()
        .query()
        .is_some_and(|query| query.split('&').any(|pair| pair.starts_with("wait=")))
        && request.headers().contains_key(http::header::IF_NONE_MATCH)
}

impl<S, ReqBody, B> tower::Service<http::Request<ReqBody>> for Tracked<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let open = self.activity.open();
        // Noted once: hyper clones this service for every request, and a store on every request
        // would dirty the connection's shared state each time.
        if request.version() < http::Version::HTTP_2 && !self.activity.is_http1() {
            self.activity.http1.store(true, Ordering::Relaxed);
        }
        if let Some(certificate) = &self.certificate {
            request
                .extensions_mut()
                .insert(ClientCertificate(Arc::clone(certificate)));
        }
        if is_long_poll(&request) {
            request
                .extensions_mut()
                .insert(LongPoll(Arc::clone(&self.activity)));
        }
        TrackedFuture::new(self.inner.call(request), Some(open))
    }
}

pin_project_lite::pin_project! {
    /// A [`Tracked`] request's answer to come: its body takes over the request's [`OpenRequest`].
    /// A named future rather than a boxed one: one allocation less on every request.
    pub struct TrackedFuture<F> {
        #[pin]
        response: F,
        open: Option<OpenRequest>,
    }
}

impl<F> TrackedFuture<F> {
    pub fn new(response: F, open: Option<OpenRequest>) -> Self {
        TrackedFuture { response, open }
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.response.poll(cx))?;
        Poll::Ready(Ok(
            response.map(|body| TrackedBody::new(body, this.open.take()))
        ))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let done = Pin::new(&mut this.io).poll_read(cx, buf);
        this.check_pending(cx, done)
    }
}

impl<IO> Guarded<IO> {
    /// A read or write that cannot go on is where the connection's deadlines are checked (a write
    /// too: a peer that does not read can stop the connection from reading), ending it past one.
    fn check_pending<T>(
        &mut self,
        cx: &mut Context<'_>,
        done: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match done {
            Poll::Pending => match self.expired(cx) {
                Some(why) => {
                    closed(why);
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why.message())))
                }
                None => Poll::Pending,
            },
            other => other,
        }
    }

    /// [`Self::check_pending`] for a write or flush, noting when writes stop and go on again.
    fn check_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        done: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if done.is_pending() {
            if self.write_blocked_since.is_none() {
                self.write_blocked_since = Some(Instant::now());
            }
            return self.check_pending(cx, done);
        }
        if self.write_blocked_since.take().is_some() {
            self.write_resumed_at = Some(Instant::now());
        }
        done
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let done = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check_write(cx, done)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let done = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check_write(cx, done)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = Pin::new(&mut self.io).poll_flush(cx);
        self.check_write(cx, done)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What tonic puts in each request's extensions for a [`Guarded`] connection: the peer as tonic
/// describes it (address, TLS certificates), the connection's [`Activity`] and the identity its
/// verified client certificate names.
#[derive(Debug, Clone)]
pub struct ConnectionInfo<T> {
    pub peer: T,
    pub activity: Arc<Activity>,
    pub certificate: Option<Arc<PeerCertificate>>,
}

/// A gRPC request's metadata with the client certificate of its connection (only TLS connections
/// have one), and its message.
pub fn grpc_parts<T>(request: tonic::Request<T>) -> (GrpcMetadata, T) {
    let (metadata, extensions, message) = request.into_parts();
    let certificate = extensions
        .get::<ConnectionInfo<
            tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>,
        >>()
        .and_then(|info| info.certificate.clone());
    ((metadata, certificate), message)
}

/// What [`grpc_parts`] gives besides the message.
pub type GrpcMetadata = (tonic::metadata::MetadataMap, Option<Arc<PeerCertificate>>);

/// Put on each REST request of a connection whose TLS handshake verified a client certificate.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Arc<PeerCertificate>);

/// The client certificate of a REST request's connection.
pub fn rest_certificate<B>(request: &http::Request<B>) -> Option<Arc<PeerCertificate>> {
    request
        .extensions()
        .get::<ClientCertificate>()
        .map(|certificate| Arc::clone(&certificate.0))
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<IO> {
    type ConnectInfo = ConnectionInfo<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            peer: self.io.connect_info(),
            activity: Arc::clone(&self.activity),
            certificate: self.certificate.clone(),
        }
    }
}

/// What turns an accepted TCP stream into the connection served (nothing, or a TLS handshake).
pub trait Handshake: Clone + Send + Sync + 'static {
    type Io: Send + 'static;
    /// Whether the handshake does real work (then it is bounded in time and in number).
    const BOUNDED: bool;
    /// The handshake, with the client certificate it verified, read (once) into what it names.
    fn handshake(
        &self,
        stream: TcpStream,
    ) -> impl Future<Output = io::Result<(Self::Io, Option<Arc<PeerCertificate>>)>> + Send;
}

/// Plain TCP.
#[derive(Debug, Clone, Copy)]
pub struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;
    const BOUNDED: bool = false;
    async fn handshake(
        &self,
        stream: TcpStream,
    ) -> io::Result<(TcpStream, Option<Arc<PeerCertificate>>)> {
        Ok((stream, None))
    }
}

/// TLS (rustls), with the configuration in service when the handshake starts (see [`crate::edges::tls`]),
/// and the client-certificate trust a connection's certificate is checked against again after a
/// reload.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<arc_swap::ArcSwap<rustls::ServerConfig>>,
    pub trust: Option<Arc<ClientTrust>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Handshake for Tls {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    const BOUNDED: bool = true;
    async fn handshake(
        &self,
        stream: TcpStream,
    ) -> io::Result<(Self::Io, Option<Arc<PeerCertificate>>)> {
        // Read before the configuration is taken: the certificate is then verified by this
        // generation's verifier or a later one, and checked again at the first call after a reload.
        let generation = self.trust.as_ref().map(|trust| trust.generation());
        let io = tokio_rustls::TlsAcceptor::from(self.config.load_full())
            .accept(stream)
            .await?;
        let certificate = self.certificate(&io, generation);
        Ok((io, certificate))
    }
}

impl Tls {
    fn certificate(
        &self,
        io: &tokio_rustls::server::TlsStream<TcpStream>,
        generation: Option<u64>,
    ) -> Option<Arc<PeerCertificate>> {
        let chain = io.get_ref().1.peer_certificates()?;
        let leaf = chain.first()?;
        match PeerCertificate::from_der(leaf) {
            Ok((mut certificate, refusal)) => {
                if let (Some(trust), Some(generation)) = (&self.trust, generation) {
                    certificate.rechecked = Some(Rechecked::new(
                        Arc::clone(trust),
                        chain.iter().map(|c| c.clone().into_owned()).collect(),
                        generation,
                    ));
                }
                if let Some(refusal) = refusal {
                    tracing::info!(
                        serial = %certificate.serial,
                        issuer = %certificate.issuer,
                        %refusal,
                        "client certificate names no usable identity: the connection's calls are refused"
                    );
                }
                Some(Arc::new(certificate))
            }
            Err(error) => {
                // The handshake verified it, so it parses; were it not to, it must not count as
                // no certificate at all.
                tracing::warn!(%error, "client certificate unreadable: the connection's calls are refused");
                Some(Arc::new(PeerCertificate {
                    user: Arc::from(""),
                    groups: Arc::from([]),
                    serial: Arc::from(""),
                    issuer: Arc::from(""),
                    not_after: 0,
                    rechecked: None,
                }))
            }
        }
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
    let handshake_timeout = limits.tls_handshake_timeout;
    let max_handshakes = limits.max_tls_handshakes;
    let mut in_flight = std::collections::VecDeque::new();
    let limits = limits.clone();
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
            let Some(slot) = slots.acquire().await else {
                tracing::debug!(%peer, "connection refused: every connection slot is serving requests");
                continue;
            };
            let _ = stream.set_nodelay(true);
            if !H::BOUNDED {
                let Ok((io, _)) = handshake.handshake(stream).await else {
                    continue;
                };
                if tx
                    .send((Guarded::new(io, slot, &limits, &slots), peer))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            // Every handshake slot taken: the oldest handshake in progress makes room (a peer that
            // connects and sends nothing would otherwise hold its slot for the whole timeout).
            let in_progress = match Arc::clone(&handshakes).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    in_flight.retain(
                        |(_, task): &(std::time::Instant, tokio::task::AbortHandle)| {
                            !task.is_finished()
                        },
                    );
                    match in_flight.pop_front() {
                        Some((_, oldest)) => {
                            oldest.abort();
                            closed(Closed::Handshake);
                            tokio::time::timeout(
                                Duration::from_millis(100),
                                Arc::clone(&handshakes).acquire_owned(),
                            )
                            .await
                            .ok()
                            .and_then(Result::ok)
                        }
                        None => None,
                    }
                }
            };
            let Some(in_progress) = in_progress else {
                tracing::debug!(%peer, "connection refused: --max-tls-handshakes in progress");
                closed(Closed::Refused);
                continue;
            };
            let (handshake, tx, limits, slots) =
                (handshake.clone(), tx.clone(), limits.clone(), slots.clone());
            let task = tokio::spawn(async move {
                let done =
                    tokio::time::timeout(handshake_timeout, handshake.handshake(stream)).await;
                drop(in_progress);
                match done {
                    Ok(Ok((io, certificate))) => {
                        let mut connection = Guarded::new(io, slot, &limits, &slots);
                        connection.certificate = certificate;
                        let _ = tx.send((connection, peer)).await;
                    }
                    Ok(Err(error)) => {
                        closed(Closed::Handshake);
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                    }
                    Err(_) => {
                        closed(Closed::Handshake);
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                }
            });
            if in_flight.len() >= 2 * max_handshakes {
                in_flight.retain(|(_, task)| !task.is_finished());
            }
            in_flight.push_back((std::time::Instant::now(), task.abort_handle()));
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
        // Kept by `Guarded` instead (see there): hyper's own header-read timer made every keep-alive
        // request go round the connection's poll loop twice, to start the timer for the next one.
        .header_read_timeout(None)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
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
        let service = TowerToHyperService::new(Tracked {
            inner: router.clone(),
            activity: connection.activity(),
            certificate: connection.certificate(),
        });
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
