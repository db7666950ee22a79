//! The change feed: every applied inventory change to a served cluster (added, changed with its new
//! revision, unavailable, removed) as a numbered event, in order, to any number of subscribers. Cache
//! invalidation consumes it; so can anything that streams changes to clients.
//!
//! It is a `tokio::sync::broadcast` channel: publishing never waits for subscribers, and a subscriber
//! that falls more than [`CAPACITY`] events behind is told so (`Lagged`) and must resynchronise from the
//! current snapshot, which is always at least as new as the events it missed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{broadcast, watch};

use crate::loading::inventory::ClusterChange;

/// Events a subscriber may fall behind before it lags.
pub const CAPACITY: usize = 4096;

/// One change, numbered from 1 in publication order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    pub seq: u64,
    pub change: ClusterChange,
}

/// The feed's sending side.
#[derive(Debug)]
pub struct Feed {
    tx: broadcast::Sender<Arc<ChangeEvent>>,
    seq: AtomicU64,
    /// Bumped after every snapshot put in service, with or without cluster changes (a tenant edit
    /// changes who may download what without changing any cluster).
    generation: watch::Sender<u64>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            tx: broadcast::channel(CAPACITY).0,
            seq: AtomicU64::new(0),
            generation: watch::channel(0).0,
        }
    }
}

impl Feed {
    /// Publishes changes in order, then a new generation (call after the snapshot holding them is in
    /// service, also when it holds no cluster change).
    pub fn publish(&self, changes: Vec<ClusterChange>) {
        for change in changes {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            // No subscriber is fine: nobody is waiting for changes.
            let _ = self.tx.send(Arc::new(ChangeEvent { seq, change }));
        }
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Tells when a new snapshot is in service (the value counts them).
    pub fn generations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChangeEvent>> {
        self.tx.subscribe()
    }

    /// The number of the last event published.
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }
}
