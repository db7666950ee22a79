//! Admission of gRPC calls from their first frame. tonic reads a call's request message before our
//! pipeline sees the call, so without this layer a peer could open streams (a HEADERS frame each)
//! and never send their message, each stream held with its buffers for as long as the peer liked,
//! outside `--max-concurrent-requests` and `--request-timeout`. This layer, in front of every gRPC
//! service (health and reflection included):
//!
//! - counts the call as open on its connection (see [`connections::Activity`]), until its response
//!   body has been sent or dropped;
//! - takes one of the `--max-concurrent-requests` slots from its HEADERS until its request message is
//!   complete, refusing with RESOURCE_EXHAUSTED at once beyond (the pipeline then takes its own slot
//!   for the call itself);
//! - ends the call with DEADLINE_EXCEEDED when the request message is not complete within
//!   `--header-read-timeout` of its HEADERS (for unary and server-streaming methods: the end of the
//!   request stream; for the reflection service, whose requests are a stream: the first message);
//! - when no slot is free, ends the call that has waited longest for its message (RESOURCE_EXHAUSTED)
//!   to make room, so that bodiless streams cannot keep every slot for the whole deadline;
//! - marks the long-lived streams (watches, health watches, reflection) on the connection, and holds
//!   the streams any peer may open without credentials (health watches, reflection) to
//!   [`ANONYMOUS_STREAMS_PER_CONNECTION`] per connection and [`ANONYMOUS_STREAMS`] in all.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};

use futures_util::task::AtomicWaker;

use crate::edges::connections::{self, ConnectionInfo, OpenRequest, TrackedBody};

/// Health watches and reflection streams one connection may hold open at once (grpcurl uses one).
pub const ANONYMOUS_STREAMS_PER_CONNECTION: usize = 4;
/// Health watches the server holds open at once, and reflection streams (each kind its own budget,
/// so that one cannot keep the other from everyone).
pub const ANONYMOUS_STREAMS: usize = 256;

/// A call waiting for its request message, which may be ended to make room for another.
#[derive(Debug)]
struct Waiting {
    ended: AtomicBool,
    waker: AtomicWaker,
    /// The call's connection, whose count of waiting calls this one is in.
    connection: Option<Arc<connections::Activity>>,
}

impl Waiting {
    fn new(connection: Option<Arc<connections::Activity>>) -> Self {
        if let Some(connection) = &connection {
            connection.waiting_calls.fetch_add(1, Ordering::Relaxed);
        }
        Waiting {
            ended: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            connection,
        }
    }

    fn connection_waiting(&self) -> usize {
        self.connection
            .as_ref()
            .map_or(0, |c| c.waiting_calls.load(Ordering::Relaxed))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(connection) = &self.connection {
            connection.waiting_calls.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The calls waiting for their request message, oldest first (entries of calls no longer waiting
/// are dead and pruned lazily).
#[derive(Debug, Default)]
struct WaitingCalls(Mutex<VecDeque<Weak<Waiting>>>);

impl WaitingCalls {
    fn push(&self, waiting: &Arc<Waiting>, bound: usize) {
        if let Ok(mut calls) = self.0.lock() {
            if calls.len() >= bound {
                calls.retain(|entry| entry.strong_count() > 0);
            }
            calls.push_back(Arc::downgrade(waiting));
        }
    }

    /// Ends a waiting call: the oldest of the connection with the most calls waiting (so that a peer
    /// opening many bodiless calls ends its own, not another client's slow one); `false` if none
    /// waits.
    fn end_one(&self) -> bool {
        let Ok(mut calls) = self.0.lock() else {
            return false;
        };
        calls.retain(|entry| entry.strong_count() > 0);
        let victim = calls
            .iter()
            .enumerate()
            .filter_map(|(i, entry)| Some((i, entry.upgrade()?)))
            .filter(|(_, waiting)| !waiting.ended.load(Ordering::Relaxed))
            .max_by_key(|(i, waiting)| (waiting.connection_waiting(), std::cmp::Reverse(*i)));
        let Some((i, waiting)) = victim else {
            return false;
        };
        calls.remove(i);
        waiting.ended.store(true, Ordering::Release);
        waiting.waker.wake();
        true
    }
}
use crate::metrics::{Limit, Metrics};

/// The layer (see the module documentation). Its state is shared behind one `Arc`: tonic clones the
/// service for every call, and a clone is then one reference count, not one per field.
#[derive(Debug, Clone)]
pub struct AdmissionLayer(Arc<AdmissionState>);

#[derive(Debug)]
struct AdmissionState {
    permits: Arc<Semaphore>,
    /// How many `permits` there are (bounds the waiting list).
    capacity: usize,
    message_timeout: Duration,
    metrics: Arc<Metrics>,
    waiting: Arc<WaitingCalls>,
    /// Health watches and reflection streams open, each kind on its own.
    anonymous: [Arc<AtomicUsize>; 2],
}

impl AdmissionLayer {
    /// `permits`: the pipeline's concurrency limit; `message_timeout`: from HEADERS to a complete
    /// request message.
    pub fn new(permits: Arc<Semaphore>, message_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        AdmissionLayer(Arc::new(AdmissionState {
            capacity: permits.available_permits(),
            permits,
            message_timeout,
            metrics,
            waiting: Arc::default(),
            anonymous: [Arc::default(), Arc::default()],
        }))
    }

    /// The request with its body under the message deadline, holding `permit` until the message is
    /// complete.
    fn admit(
        &self,
        request: http::Request<Body>,
        permit: OwnedSemaphorePermit,
        (method, first_message_only): (&'static str, bool),
        connection: Option<Arc<connections::Activity>>,
    ) -> http::Request<Body> {
        let layer = &self.0;
        request.map(|body| {
            if http_body::Body::is_end_stream(&body) {
                // Nothing to wait for (the slot is given back with the body).
                return body;
            }
            Body::new(MessageDeadline {
                inner: body,
                method,
                deadline: Instant::now() + layer.message_timeout,
                timeout: layer.message_timeout,
                sleep: None,
                admitted: Some(permit),
                waiting: None,
                connection,
                calls: (Arc::clone(&layer.waiting), 2 * layer.capacity),
                first_message_only,
                prefix: Vec::new(),
                remaining: None,
                metrics: Arc::clone(&layer.metrics),
            })
        })
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`AdmissionLayer`].
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

/// The connection's activity, from the extension tonic inserts for our connections (plain or TLS).
fn activity_of(extensions: &http::Extensions) -> Option<&Arc<connections::Activity>> {
    extensions
        .get::<ConnectionInfo<TcpConnectInfo>>()
        .map(|info| &info.activity)
        .or_else(|| {
            extensions
                .get::<ConnectionInfo<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>>()
                .map(|info| &info.activity)
        })
}

/// Whether a method's requests are a stream (then only the first message is awaited under the
/// deadline). Only the reflection service has such methods here.
fn streams_requests(path: &str) -> bool {
    path.starts_with("/grpc.reflection.")
}

/// Whether a method answers with a stream that lasts (not expected to end on its own).
fn long_lived(path: &str) -> bool {
    path == "/kubeconfig.v1.KubeconfigService/WatchKubeconfigs" || anonymous_stream(path)
}

/// Whether a method is a long-lived stream any peer may open without credentials.
fn anonymous_stream(path: &str) -> bool {
    path == "/grpc.health.v1.Health/Watch" || streams_requests(path)
}

fn refused<B: Default>(
    open: Option<OpenRequest>,
    message: &'static str,
) -> http::Response<TrackedBody<B>> {
    tonic::Status::resource_exhausted(message)
        .into_http::<B>()
        .map(|body| TrackedBody::new(body, open))
}

type Responding<F> = Pin<Box<dyn Future<Output = F> + Send>>;

pin_project_lite::pin_project! {
    /// The answer of an [`Admission`] call. A call admitted at once (the usual case) is the inner
    /// service's future, polled in place; one that must wait for a slot, or is refused, is boxed.
    #[project = AnsweringProjection]
    pub enum Answering<F, R> {
        Admitted { #[pin] tracked: connections::TrackedFuture<F> },
        Other { future: Responding<R> },
    }
}

impl<F, E> Future for Answering<F, Result<http::Response<TrackedBody<Body>>, E>>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = Result<http::Response<TrackedBody<Body>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnsweringProjection::Admitted { tracked } => tracked.poll(cx),
            AnsweringProjection::Other { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S> tower::Service<http::Request<Body>> for Admission<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<TrackedBody<Body>>;
    type Error = S::Error;
    type Future = Answering<S::Future, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let method = crate::metrics::grpc_method(path);
        let (first_message_only, long_lived, anonymous) = (
            streams_requests(path),
            long_lived(path),
            anonymous_stream(path),
        );
        let connection = activity_of(request.extensions()).cloned();
        let mut open: Option<OpenRequest> = connection.as_ref().map(|a| a.open());
        let state = &self.layer.0;
        if let Some(open) = open.as_mut() {
            if anonymous {
                open.long_lived();
            } else if long_lived {
                open.protected();
            }
            if anonymous
                && !open.anonymous_stream(
                    ANONYMOUS_STREAMS_PER_CONNECTION,
                    &state.anonymous[usize::from(first_message_only)],
                    ANONYMOUS_STREAMS,
                )
            {
                state.metrics.limit(Limit::AnonymousStreams);
                return Answering::Other {
                    future: Box::pin(std::future::ready(Ok(refused(
                        None,
                        "too many health watches and reflection streams; close one first",
                    )))),
                };
            }
        }
        if let Ok(permit) = Arc::clone(&state.permits).try_acquire_owned() {
            let request =
                self.layer
                    .admit(request, permit, (method, first_message_only), connection);
            return Answering::Admitted {
                tracked: connections::TrackedFuture::new(self.inner.call(request), open),
            };
        }
        // No slot: end the call that has waited longest for its message, and take its slot.
        let mut inner = self.inner.clone();
        let layer = self.layer.clone();
        Answering::Other {
            future: Box::pin(async move {
                let state = &layer.0;
                let permit = if state.waiting.end_one() {
                    tokio::time::timeout(
                        Duration::from_millis(100),
                        Arc::clone(&state.permits).acquire_owned(),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                } else {
                    None
                };
                let Some(permit) = permit else {
                    state.metrics.limit(Limit::ConcurrentRequests);
                    state
                        .metrics
                        .call("grpc", method, "TooManyRequests", Duration::ZERO);
                    return Ok(refused(open, "too many requests in flight; retry shortly"));
                };
                let request =
                    layer.admit(request, permit, (method, first_message_only), connection);
                let response = inner.call(request).await?;
                Ok(response.map(|body| TrackedBody::new(body, open)))
            }),
        }
    }
}

/// A request body that holds its call's admission slot until the request message is complete, and
/// fails once that takes longer than the deadline.
struct MessageDeadline {
    inner: Body,
    /// What the call is counted under when it times out.
    method: &'static str,
    deadline: Instant,
    timeout: Duration,
    /// Created only when the body is not complete at once: most calls arrive in one packet.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The slot, `None` once the message is complete (or the body failed).
    admitted: Option<OwnedSemaphorePermit>,
    /// The entry in the list of calls waiting for their message: made only when the message is not
    /// there at the first poll (most calls arrive in one packet).
    waiting: Option<Arc<Waiting>>,
    /// The call's connection (moved into `waiting` when that is made).
    connection: Option<Arc<connections::Activity>>,
    /// That list, and how long it may grow before it is pruned.
    calls: (Arc<WaitingCalls>, usize),
    first_message_only: bool,
    /// The first message's 5-byte gRPC prefix, while incomplete.
    prefix: Vec<u8>,
    /// Bytes of the first message still to come, once its prefix is known.
    remaining: Option<u64>,
    metrics: Arc<Metrics>,
}

impl MessageDeadline {
    fn complete(&mut self) {
        self.admitted = None;
        self.waiting = None;
        self.sleep = None;
    }

    /// Counts a DATA frame towards the first message (for request streams).
    fn saw(&mut self, mut data: Bytes) {
        if self.remaining.is_none() {
            let take = (5 - self.prefix.len()).min(data.len());
            self.prefix.extend_from_slice(&data[..take]);
            data.advance(take);
            if self.prefix.len() == 5 {
                let length = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]);
                self.remaining = Some(u64::from(length));
            }
        }
        if let Some(remaining) = self.remaining.as_mut() {
            *remaining = remaining.saturating_sub(data.len() as u64);
            if *remaining == 0 {
                self.complete();
            }
        }
    }
}

impl http_body::Body for MessageDeadline {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if this.admitted.is_none() {
            return Pin::new(&mut this.inner).poll_frame(cx);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.first_message_only
                    && let Some(data) = frame.data_ref()
                {
                    this.saw(data.clone());
                } else if frame.is_trailers() {
                    this.complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.complete();
                Poll::Ready(other)
            }
            Poll::Pending => {
                let waiting = this.waiting.get_or_insert_with(|| {
                    let waiting = Arc::new(Waiting::new(this.connection.take()));
                    this.calls.0.push(&waiting, this.calls.1);
                    waiting
                });
                waiting.waker.register(cx.waker());
                if waiting.ended.load(Ordering::Acquire) {
                    this.complete();
                    this.metrics.limit(Limit::ConcurrentRequests);
                    return Poll::Ready(Some(Err(tonic::Status::resource_exhausted(
                        "ended to make room: request message not complete while every slot was taken",
                    ))));
                }
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        this.complete();
                        this.metrics.limit(Limit::RequestMessageTimeout);
                        this.metrics
                            .call("grpc", this.method, "RequestTimeout", this.timeout);
                        Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(
                            "request message not complete within --header-read-timeout of its headers",
                        ))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
