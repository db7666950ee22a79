//! The agent's own endpoint (`--health-addr`): `/healthz` (alive), `/readyz` (ready once the first full
//! sync is on disk; it stays ready while the server is away, since the files are still there) and
//! `/metrics` in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// What the agent counts.
#[derive(Debug, Default)]
pub struct Stats {
    pub synced: AtomicBool,
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub events: AtomicU64,
    pub files_written: AtomicU64,
    pub files_removed: AtomicU64,
    pub on_change_runs: AtomicU64,
    pub on_change_failures: AtomicU64,
    pub files_held: AtomicU64,
}

impl Stats {
    fn render(&self) -> String {
        let mut out = String::new();
        let flag = |b: &AtomicBool| u64::from(b.load(Ordering::Relaxed));
        let rows: [(&str, &str, &str, u64); 9] = [
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
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
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
                if stats.synced.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n")
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
