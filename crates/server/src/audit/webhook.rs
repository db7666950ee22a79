//! The audit webhook (`--audit-webhook URL`): the audit stream's JSON lines POSTed in batches
//! (`content-type: application/x-ndjson`, at most [`BATCH_BYTES`] of whole lines per POST), by one task,
//! one batch at a time, in `seq` order. A batch is retried until the receiver answers 2xx — a pause
//! that doubles from 100 ms to 5 s between tries — and only then is the next one sent, so a receiver
//! that restarts gets every record, in order; a batch whose answer was lost may arrive twice (the
//! receiver tells by `seq`). While it retries, records wait in the bounded queue.
//!
//! The client is hyper's HTTP/1 over tokio-rustls with the ring provider (as the JWKS fetch): https
//! trusts `--audit-webhook-ca-file` or the system roots; `http://` is accepted for a receiver on the
//! same host or a mesh sidecar. `--audit-webhook-token-file` adds `Authorization: Bearer <token>`.
//! Redirects are not followed; every POST has [`POST_TIMEOUT`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use rustls::pki_types::ServerName;

use super::{Auditor, Queues, SinkKind, SinkStatus};

/// The most bytes one POST carries (whole lines; a single larger record goes alone).
pub const BATCH_BYTES: usize = 1024 * 1024;
/// Connecting and one POST must each take at most this long.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown starts, undelivered records are retried for at most this long.
pub const DRAIN_AFTER_CLOSE: Duration = Duration::from_secs(5);

/// Where and how records are POSTed.
#[derive(Clone)]
pub struct WebhookSettings {
    pub url: http::Uri,
    /// For https.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `Authorization: Bearer` value.
    pub token: Option<String>,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &shown(&self.url))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl WebhookSettings {
    /// Checks the URL and reads the CA and token files.
    pub fn new(
        url: &str,
        ca_file: Option<&std::path::Path>,
        token_file: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let url: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        if url.host().is_none() {
            return Err("the URL names no host".to_owned());
        }
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(
                "the URL carries a user name or password; use --audit-webhook-token-file"
                    .to_owned(),
            );
        }
        let tls = match url.scheme_str() {
            Some("https") => {
                let ca = ca_file
                    .map(|path| {
                        std::fs::read_to_string(path)
                            .map_err(|e| format!("--audit-webhook-ca-file {}: {e}", path.display()))
                    })
                    .transpose()?;
                Some(
                    crate::service::auth::jwks::client_config(ca.as_deref())
                        .map_err(|e| format!("--audit-webhook-ca-file: {e}"))?,
                )
            }
            Some("http") => None,
            _ => return Err("not an http:// or https:// URL".to_owned()),
        };
        let token = token_file
            .map(|path| {
                std::fs::read_to_string(path)
                    .map(|t| t.trim().to_owned())
                    .map_err(|e| format!("--audit-webhook-token-file {}: {e}", path.display()))
            })
            .transpose()?;
        Ok(WebhookSettings { url, tls, token })
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>;

struct Client {
    settings: WebhookSettings,
    sender: Option<(Sender, tokio::task::JoinHandle<()>)>,
}

impl Client {
    async fn connect(&self) -> Result<(Sender, tokio::task::JoinHandle<()>), String> {
        let url = &self.settings.url;
        let host = url
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = self.settings.tls.clone();
        let port = url
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = match tls {
            Some(tls) => {
                let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
                Box::new(
                    tokio_rustls::TlsConnector::from(tls)
                        .connect(name, tcp)
                        .await
                        .map_err(|e| e.to_string())?,
                )
            }
            None => Box::new(tcp),
        };
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((sender, driver))
    }

    /// POSTs one batch: `Ok` on a 2xx.
    async fn post(&mut self, batch: Bytes) -> Result<(), String> {
        let attempt = async {
            if self.sender.as_ref().is_none_or(|(s, _)| s.is_closed()) {
                self.sender = Some(self.connect().await?);
            }
            let Some((sender, _)) = self.sender.as_mut() else {
                return Err("no connection".to_owned());
            };
            sender.ready().await.map_err(|e| e.to_string())?;
            let url = &self.settings.url;
            let mut request = http::Request::post(url.path_and_query().map_or("/", |p| p.as_str()))
                .header(
                    http::header::HOST,
                    url.authority().map_or("", |a| a.as_str()),
                )
                .header(http::header::CONTENT_TYPE, "application/x-ndjson")
                .header(http::header::USER_AGENT, "kubeconfigd");
            if let Some(token) = &self.settings.token {
                request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request
                .body(http_body_util::Full::new(batch))
                .map_err(|e| e.to_string())?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            // Read (a bounded part of) the answer so the connection can carry the next batch.
            let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        };
        let result = tokio::time::timeout(POST_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {POST_TIMEOUT:?}")));
        if result.is_err()
            && let Some((_, driver)) = self.sender.take()
        {
            driver.abort();
        }
        result
    }
}

/// Starts the task that delivers the queued records.
pub fn spawn(auditor: &Auditor, settings: WebhookSettings) -> Option<tokio::task::JoinHandle<()>> {
    let status = auditor.status(SinkKind::Webhook)?;
    let queues = auditor.queues();
    Some(tokio::spawn(run(
        queues,
        status,
        Client {
            settings,
            sender: None,
        },
    )))
}

/// Takes the next batch: whole lines from the front of the queue, with the `seq` of the first and
/// how many records; `None` when nothing waits. Also says whether the auditor is closing.
fn next_batch(queues: &Queues) -> (Option<(Bytes, u64, u64)>, bool) {
    let mut state = queues.state.lock().unwrap_or_else(|e| e.into_inner());
    let closing = state.closing;
    let Some(pending) = state.pending[SinkKind::Webhook as usize].as_mut() else {
        return (None, closing);
    };
    if pending.records == 0 {
        return (None, closing);
    }
    let cut = if pending.bytes.len() <= BATCH_BYTES {
        pending.bytes.len()
    } else {
        // The end of the last whole line within the limit, or of the first line if it is longer.
        let within = &pending.bytes[..BATCH_BYTES];
        match within.iter().rposition(|b| *b == b'\n') {
            Some(end) => end + 1,
            None => pending
                .bytes
                .iter()
                .position(|b| *b == b'\n')
                .map_or(pending.bytes.len(), |end| end + 1),
        }
    };
    let batch: Vec<u8> = if cut == pending.bytes.len() {
        std::mem::take(&mut pending.bytes)
    } else {
        pending.bytes.drain(..cut).collect()
    };
    let records = if cut == batch.len() && pending.bytes.is_empty() {
        pending.records
    } else {
        batch.iter().filter(|b| **b == b'\n').count() as u64
    };
    let first = pending.first_seq;
    pending.first_seq += records;
    pending.records -= records;
    (Some((Bytes::from(batch), first, records)), closing)
}

async fn run(queues: Arc<Queues>, status: Arc<SinkStatus>, mut client: Client) {
    let mut reported = (Instant::now(), 0_u64);
    let mut closed_at: Option<Instant> = None;
    loop {
        let (batch, closing) = next_batch(&queues);
        if closing && closed_at.is_none() {
            closed_at = Some(Instant::now());
        }
        let Some((batch, first, records)) = batch else {
            if closing {
                return;
            }
            super::file::report_dropped(&status, SinkKind::Webhook, &mut reported);
            // Woken by every record (a stored permit), or at the interval to report drops.
            let _ = tokio::time::timeout(
                super::DROPPED_REPORT_INTERVAL,
                queues.webhook_wake.notified(),
            )
            .await;
            continue;
        };
        let mut pause = Duration::from_millis(100);
        loop {
            match client.post(batch.clone()).await {
                Ok(()) => break,
                Err(error) => {
                    if !status.failing.swap(true, Ordering::Relaxed) {
                        tracing::error!(%error, url = %shown(&client.settings.url), "the audit webhook does not take records; retrying");
                    }
                    if closed_at.is_some_and(|at| at.elapsed() >= DRAIN_AFTER_CLOSE) {
                        tracing::error!(%error, records, "stopping: audit records were not delivered to the webhook");
                        return;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                    if queues.state.lock().is_ok_and(|s| s.closing) && closed_at.is_none() {
                        closed_at = Some(Instant::now());
                    }
                }
            }
        }
        if status.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(url = %shown(&client.settings.url), "the audit webhook takes records again");
        }
        status.acknowledge(first + records - 1, records);
    }
}

/// The URL as logged: without its query, which may carry a secret.
fn shown(url: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        url.scheme_str().unwrap_or_default(),
        url.authority().map_or("", |a| a.as_str()),
        url.path()
    )
}
