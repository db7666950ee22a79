//! The agent's own endpoint (`--health-addr`): `/healthz` (alive), `/readyz` (ready once the first full
//! sync is on disk and every file the agent wants is written; it stays ready while the server is
//! away, since the files are still there, and answers 503 naming each file that could not be written
//! or was refused) and `/metrics` in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::holdings::Refusal;

/// What the agent counts.
#[derive(Debug, Default)]
pub struct Stats {
    pub synced: AtomicBool,
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    /// Reconnections made to present a renewed credential.
    pub renewals: AtomicU64,
    pub events: AtomicU64,
    pub files_written: AtomicU64,
    pub files_removed: AtomicU64,
    pub on_change_runs: AtomicU64,
    pub on_change_failures: AtomicU64,
    pub files_held: AtomicU64,
    /// Events refused, by [`Refusal::index`].
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Attempts to write or remove a file that failed.
    pub write_failures: AtomicU64,
    /// Batches applied before the stream paused, because they reached the batch limit.
    pub batches_cut: AtomicU64,
    /// 1 when the credential travels in plaintext to a non-loopback server (`--allow-insecure`).
    pub plaintext_credential: AtomicBool,
    /// Each file the agent wants but does not have on disk as it should, and why (`/readyz`).
    pub failing: Mutex<Vec<String>>,
}

impl Stats {
    /// Replaces the list of failing files.
    pub fn set_failing(&self, failing: Vec<String>) {
        if let Ok(mut current) = self.failing.lock() {
            *current = failing;
        }
    }

    fn failing(&self) -> Vec<String> {
        self.failing.lock().map(|f| f.clone()).unwrap_or_default()
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let flag = |b: &AtomicBool| u64::from(b.load(Ordering::Relaxed));
        let rows: [(&str, &str, &str, u64); 13] = [
            (
                "kubeconfig_agent_synced",
                "gauge",
                "1 once the first full sync is on disk",
                flag(&self.synced),
            ),
            (
                "kubeconfig_agent_connected",
                "gauge",
                "1 while a watch stream is open",
                flag(&self.connected),
            ),
            (
                "kubeconfig_agent_connects_total",
                "counter",
                "Watch streams opened",
                self.connects.load(Ordering::Relaxed),
            ),
            (
                "kubeconfig_agent_credential_renewals_total",
                "counter",
                "Reconnections made to present a renewed credential (a changed file, or a token about to expire)",
                self.renewals.load(Ordering::Relaxed),
            ),
            (
                "kubeconfig_agent_events_total",
                "counter",
                "Watch events received",
                self.events.load(Ordering::Relaxed),
            ),
            (
                "kubeconfig_agent_files_written_total",
                "counter",
                "Files written (changed bytes only)",
                self.files_written.load(Ordering::Relaxed),
            ),
            (
                "kubeconfig_agent_files_removed_total",
                "counter",
                "Files removed after revocation or removal",
                self.files_removed.load(Ordering::Relaxed),
            ),
            (
                "kubeconfig_agent_on_change_runs_total",
                "counter",
                "--on-change command runs",
                self.on_change_runs.load(Ordering::Relaxed),
            ),
            (
                "kubeconfig_agent_on_change_failures_total",
                "counter",
                "--on-change runs that failed",
                self.on_change_failures.load(Ordering::Relaxed),
            ),
            (
                "kubeconfig_agent_files",
                "gauge",
                "Files held now",
                self.files_held.load(Ordering::Relaxed),
            ),
            (
                "kubeconfig_agent_files_failing",
                "gauge",
                "Files wanted but not on disk as they should be (refused, or the write failed)",
                self.failing().len() as u64,
            ),
            (
                "kubeconfig_agent_write_failures_total",
                "counter",
                "Writes or removals of a file that failed (retried)",
                self.write_failures.load(Ordering::Relaxed),
            ),
            (
                "kubeconfig_agent_batches_cut_total",
                "counter",
                "Batches written before the stream paused, at the batch limit",
                self.batches_cut.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let name = "kubeconfig_agent_events_refused_total";
        let _ = writeln!(
            out,
            "# HELP {name} Events from the server refused, by reason\n# TYPE {name} counter"
        );
        for why in Refusal::ALL {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{}\"}} {}",
                why.as_str(),
                self.refused[why.index()].load(Ordering::Relaxed)
            );
        }
        let name = "kubeconfig_agent_plaintext_credential";
        let _ = writeln!(
            out,
            "# HELP {name} 1 when the credential is sent in plaintext to a non-loopback server (--allow-insecure)\n# TYPE {name} gauge\n{name} {}",
            flag(&self.plaintext_credential)
        );
        out
    }
}

/// The endpoint's router.
pub fn router(stats: Arc<Stats>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(stats): State<Arc<Stats>>| async move {
                if !stats.synced.load(Ordering::Relaxed) {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not synced yet\n".to_owned(),
                    );
                }
                let failing = stats.failing();
                if failing.is_empty() {
                    (StatusCode::OK, "ready\n".to_owned())
                } else {
                    let mut body = format!("{} files not written:\n", failing.len());
                    for line in failing {
                        body.push_str(&line);
                        body.push('\n');
                    }
                    (StatusCode::SERVICE_UNAVAILABLE, body)
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(stats): State<Arc<Stats>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    stats.render(),
                )
                    .into_response()
            }),
        )
        .with_state(stats)
}
