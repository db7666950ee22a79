//! The watch streams: each watcher holds `WatchKubeconfigs` open for a few clusters of its project,
//! keeps the etags it was sent, and reconnects with them to the next replica whenever its stream ends
//! (a replica restarting ends it with UNAVAILABLE). A churn user's watchers log every event, so that
//! the run can check that no file reached them after their access was removed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeconfig_proto::kubeconfig::v1::kubeconfig_service_client::KubeconfigServiceClient;
use kubeconfig_proto::kubeconfig::v1::watch_kubeconfigs_response::Type;
use kubeconfig_proto::kubeconfig::v1::{WatchKubeconfigsRequest, WatchedAsset};
use kubeconfigd_e2e::with_key;
use tonic::transport::Channel;

use crate::clock::Clock;
use crate::world::Who;

/// What a watcher saw, for the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A file (cluster uid, etag).
    Upsert(String, String),
    /// A file taken back (revoked or removed).
    Dropped(String),
    /// The stream ended or could not be opened, with this code.
    Ended(tonic::Code),
}

/// One watcher's state, shared with the checks.
#[derive(Debug)]
pub struct Watcher {
    pub who: Who,
    pub clusters: Vec<String>,
    /// Held files: uid → etag.
    pub held: Mutex<HashMap<String, String>>,
    /// (seconds, what) for churn users' watchers.
    pub log: Mutex<Vec<(f64, Seen)>>,
    pub reconnects: AtomicU64,
    pub events: AtomicU64,
}

/// Runs one watcher until `stop`.
pub async fn watch(
    watcher: Arc<Watcher>,
    channels: Vec<Channel>,
    home: usize,
    clock: Clock,
    stop: Arc<AtomicBool>,
) {
    let logs = matches!(watcher.who, Who::Churn(_));
    let note = |seen: Seen| {
        if logs {
            watcher
                .log
                .lock()
                .expect("log")
                .push((clock.seconds(), seen));
        }
    };
    let mut attempt = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let replica = (home + attempt) % channels.len();
        attempt += 1;
        let known_etags = watcher
            .held
            .lock()
            .expect("held")
            .iter()
            .map(|(uid, etag)| (format!("{uid}/kubeconfig"), etag.clone()))
            .collect();
        let request = with_key(
            WatchKubeconfigsRequest {
                cluster_uids: watcher.clusters.clone(),
                project_uid: String::new(),
                assets: vec![WatchedAsset::Kubeconfig as i32],
                frp: None,
                known_etags,
            },
            &watcher.who.api_key(),
        );
        let mut client = KubeconfigServiceClient::new(channels[replica].clone());
        let opened =
            tokio::time::timeout(Duration::from_secs(10), client.watch_kubeconfigs(request))
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded("not opened within 10 s"))
                });
        let mut stream = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => {
                note(Seen::Ended(status.code()));
                watcher.reconnects.fetch_add(1, Ordering::Relaxed);
                let pause = if status.code() == tonic::Code::Unauthenticated {
                    500
                } else {
                    50 + 50 * (attempt % 4) as u64
                };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                next = stream.message() => next,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::Relaxed) { return; }
                    continue;
                }
            };
            match next {
                Ok(Some(event)) => {
                    watcher.events.fetch_add(1, Ordering::Relaxed);
                    match event.r#type() {
                        Type::Upsert => {
                            let etag = event.kubeconfig.map(|k| k.etag).unwrap_or_default();
                            watcher
                                .held
                                .lock()
                                .expect("held")
                                .insert(event.cluster_uid.clone(), etag.clone());
                            note(Seen::Upsert(event.cluster_uid, etag));
                        }
                        Type::Revoked | Type::Removed => {
                            watcher
                                .held
                                .lock()
                                .expect("held")
                                .remove(&event.cluster_uid);
                            note(Seen::Dropped(event.cluster_uid));
                        }
                        _ => {}
                    }
                }
                Ok(None) => {
                    note(Seen::Ended(tonic::Code::Ok));
                    break;
                }
                Err(status) => {
                    note(Seen::Ended(status.code()));
                    break;
                }
            }
        }
        watcher.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}
