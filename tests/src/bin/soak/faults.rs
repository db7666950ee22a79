//! What happens to the replicas during the run: the fault plan and its injection, the inventory churn
//! (edits and revocations), and the watch over the agents' files.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kubeconfigd_e2e::{RedisCluster, RedisServer};

use crate::clock::Clock;
use crate::retry::Rng;
use crate::volume::Volume;
use crate::world::{self, Access, Fleet, Timeline};
use crate::{Cast, Topology};

/// The Redis of a run.
#[derive(Debug)]
pub enum Redis {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    pub fn flags(&self) -> Vec<String> {
        match self {
            Redis::Standalone(server) => vec!["--redis-url".into(), server.url()],
            Redis::Cluster(cluster) => vec!["--redis-cluster".into(), cluster.urls()],
        }
    }

    pub fn nodes(&self) -> Vec<&RedisServer> {
        match self {
            Redis::Standalone(server) => vec![server],
            Redis::Cluster(cluster) => cluster.nodes.iter().collect(),
        }
    }

    /// A node that is a master now (the cluster's first, or the standalone server).
    fn master(&mut self) -> Option<&mut RedisServer> {
        match self {
            Redis::Standalone(server) => Some(server),
            Redis::Cluster(cluster) => cluster
                .nodes
                .iter_mut()
                .find(|n| n.pid().is_some() && n.role().as_deref() == Some("master")),
        }
    }
}

/// A fault, injected at a known time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The standalone Redis killed (SIGKILL) and started again on its data.
    RedisRestart,
    /// A Redis master (or the standalone server) frozen with SIGSTOP for 5 s.
    RedisFreeze,
    /// A Redis Cluster master killed; its replica takes over.
    MasterKill,
    /// The killed master started again (it rejoins as a replica).
    MasterBack,
    /// Replica `n` stopped with SIGTERM and started again.
    RollingRestart(usize),
    /// The inventory volume rewritten in one `..data` swap, every file a new inode.
    VolumeSwap,
    /// Nothing: the recovery window.
    Quiet,
}

impl Fault {
    pub fn name(&self) -> String {
        match self {
            Fault::RedisRestart => "Redis restarted (SIGKILL, start)".into(),
            Fault::RedisFreeze => "Redis master frozen 5 s (SIGSTOP)".into(),
            Fault::MasterKill => "Redis master killed (failover)".into(),
            Fault::MasterBack => "killed master back (as replica)".into(),
            Fault::RollingRestart(n) => {
                format!("replica {} SIGTERM + start", ["a", "b"][*n % 2])
            }
            Fault::VolumeSwap => "inventory ..data swap (all new)".into(),
            Fault::Quiet => "quiet (recovery)".into(),
        }
    }

    /// Whether calls that need Redis (a mint's ledger record) may be refused in this window.
    pub fn takes_redis(&self) -> bool {
        matches!(
            self,
            Fault::RedisRestart | Fault::RedisFreeze | Fault::MasterKill
        )
    }
}

/// The faults of a run of `total` seconds from `start`, at fixed shares of it.
pub fn plan(topology: Topology, start: f64, total: f64) -> Vec<(f64, Fault)> {
    let faults = match topology {
        Topology::Standalone => vec![
            (0.10, Fault::RedisRestart),
            (0.22, Fault::RedisFreeze),
            (0.36, Fault::RollingRestart(0)),
            (0.50, Fault::RollingRestart(1)),
            (0.64, Fault::VolumeSwap),
            (0.76, Fault::Quiet),
        ],
        Topology::Cluster => vec![
            (0.10, Fault::MasterKill),
            (0.22, Fault::MasterBack),
            (0.32, Fault::RedisFreeze),
            (0.44, Fault::RollingRestart(0)),
            (0.56, Fault::RollingRestart(1)),
            (0.68, Fault::VolumeSwap),
            (0.80, Fault::Quiet),
        ],
    };
    faults
        .into_iter()
        .map(|(share, fault)| (start + share * total, fault))
        .collect()
}

/// Injects `fault` and waits for the service to recover from it (Redis faults: until every replica
/// reports Redis up again, at most 30 s); returns what went wrong (nothing, normally).
pub async fn inject(fault: &Fault, cast: &mut Cast) -> Result<(), String> {
    inject_only(fault, cast).await?;
    if fault.takes_redis() || *fault == Fault::MasterBack {
        let mut admins = Vec::new();
        for replica in &cast.replicas {
            admins.push(replica.lock().await.admin_url());
        }
        let recovered = kubeconfigd_e2e::eventually(Duration::from_secs(30), || async {
            for admin in &admins {
                let up = reqwest::get(format!("{admin}/metrics"))
                    .await
                    .ok()
                    .map(|r| r.text());
                let text = match up {
                    Some(text) => text.await.unwrap_or_default(),
                    None => return false,
                };
                if !text
                    .lines()
                    .any(|l| l.starts_with("kubeconfigd_cache_redis_up") && l.ends_with(" 1"))
                {
                    return false;
                }
            }
            true
        })
        .await;
        if !recovered {
            return Err("the replicas did not report Redis up within 30 s".into());
        }
    }
    Ok(())
}

async fn inject_only(fault: &Fault, cast: &mut Cast) -> Result<(), String> {
    match fault {
        Fault::RedisRestart => {
            let Redis::Standalone(server) = &mut cast.redis else {
                return Err("no standalone Redis".into());
            };
            server.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            server.restart().map_err(|e| format!("{e:#}"))
        }
        Fault::RedisFreeze => {
            let Some(node) = cast.redis.master() else {
                return Err("no master to freeze".into());
            };
            node.freeze().map_err(|e| format!("{e:#}"))?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            node.thaw().map_err(|e| format!("{e:#}"))
        }
        Fault::MasterKill => {
            let Some(node) = cast.redis.master() else {
                return Err("no master to kill".into());
            };
            node.kill();
            Ok(())
        }
        Fault::MasterBack => {
            let Redis::Cluster(cluster) = &mut cast.redis else {
                return Err("no cluster".into());
            };
            let Some(node) = cluster.nodes.iter_mut().find(|n| n.pid().is_none()) else {
                return Err("no killed node".into());
            };
            node.restart().map_err(|e| format!("{e:#}"))
        }
        Fault::RollingRestart(n) => {
            let replica = Arc::clone(&cast.replicas[*n % cast.replicas.len()]);
            let stopped = {
                let replica = Arc::clone(&replica);
                tokio::task::spawn_blocking(move || {
                    replica
                        .blocking_lock()
                        .terminate(Duration::from_secs(30))
                        .map_err(|e| format!("{e:#}"))
                })
                .await
                .map_err(|e| e.to_string())?
            };
            let status = stopped?;
            if !status.success() {
                return Err(format!("exited with {status} after SIGTERM"));
            }
            replica
                .lock()
                .await
                .start_again()
                .await
                .map_err(|e| format!("{e:#}"))
        }
        // The churn task rewrites the volume at this fault's time (one writer of the volume).
        Fault::VolumeSwap | Fault::Quiet => Ok(()),
    }
}

/// What the churn did.
#[derive(Debug, Default)]
pub struct Churn {
    pub edits: u64,
    pub revocations: u64,
    pub restorations: u64,
    pub swaps: u64,
    pub errors: Vec<String>,
}

/// Edits the inventory at `per_second` edits a second until `until`: one in ten is a tenant edit
/// that removes a churn user's binding or key, or restores it; the rest change a cluster's API
/// server port. At `swap_at` (if any) the whole volume is rewritten once.
#[allow(clippy::too_many_arguments)]
pub async fn churn(
    mut inventory: Volume,
    mut tenant: Volume,
    clusters: usize,
    per_second: f64,
    timeline: Arc<Timeline>,
    clock: Clock,
    until: f64,
    seed: u64,
    swap_at: Option<f64>,
) -> Churn {
    let mut rng = Rng::new(seed ^ 0xc4u64);
    let mut done = Churn::default();
    let users = timeline.snapshot().len();
    let mut access = vec![Access::Granted; users];
    let mut next_user = 0;
    let mut swapped = false;
    let period = Duration::from_secs_f64(1.0 / per_second.max(0.1));
    let mut ticker = tokio::time::interval(period);
    let mut tick = 0u64;
    while clock.seconds() < until {
        ticker.tick().await;
        tick += 1;
        let result: anyhow::Result<()> = (|| {
            if let Some(at) = swap_at
                && !swapped
                && clock.seconds() >= at
            {
                swapped = true;
                done.swaps += 1;
                return inventory.rewrite(&[]);
            }
            if tick.is_multiple_of(10) && users > 0 {
                let user = next_user % users;
                next_user += 1;
                access[user] = match access[user] {
                    Access::Granted if user.is_multiple_of(2) => Access::BindingRemoved,
                    Access::Granted => Access::KeyRemoved,
                    _ => Access::Granted,
                };
                tenant.update(&[("tenant.yaml", world::tenant_text(&access).as_bytes())])?;
                timeline.record(user, clock.seconds(), access[user]);
                if access[user] == Access::Granted {
                    done.restorations += 1;
                } else {
                    done.revocations += 1;
                }
                return Ok(());
            }
            let index = rng.below(clusters);
            let name = Fleet::file_name(index);
            let text = String::from_utf8(inventory.read(&name)?)?;
            let edited = world::edited_cluster(&text, tick);
            inventory.update(&[(&name, edited.as_bytes())])?;
            done.edits += 1;
            Ok(())
        })();
        if let Err(error) = result {
            done.errors.push(format!("{error:#}"));
        }
    }
    done
}

/// The agents' files over time: (seconds, files per agent directory), sampled every 50 ms.
pub type Disk = Vec<(f64, Vec<usize>)>;

pub fn watch_disk(
    dirs: Vec<PathBuf>,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Disk> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let counts = dirs
                .iter()
                .map(|dir| {
                    std::fs::read_dir(dir).map_or(0, |entries| {
                        entries
                            .filter_map(Result::ok)
                            .filter(|e| e.file_name().to_string_lossy().ends_with(".kubeconfig"))
                            .count()
                    })
                })
                .collect();
            samples.push((clock.seconds(), counts));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        samples
    })
}
