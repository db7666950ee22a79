//! `kubeconfig-agent` as a library: everything the binary does except parsing its command line, so
//! that the fuzz target drives the same handling of server messages. It must not depend on the
//! server's crates: it speaks to kubeconfigd only through the generated API (`kubeconfig-proto`).
//!
//! - [`session`]: the watch connection, batches, retries and `--once`.
//! - [`credentials`]: reading the credential files, and when to present a renewed one.
//! - [`holdings`]: what the agent holds and how each server message changes it, within its limits.
//! - [`naming`]: safe, bounded, unique file names in `--out-dir`.
//! - [`output`]: atomic writes, the merged kubeconfig, removal.
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`.

pub mod credentials;
pub mod health;
pub mod holdings;
pub mod naming;
pub mod output;
pub mod session;
