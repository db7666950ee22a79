//! The soak-and-chaos run: two kubeconfigd replicas sharing Redis (standalone, or a Redis Cluster of
//! three masters and three replicas), under mixed load at half of what they sustain, with watch
//! streams, real `kubeconfig-agent` processes and inventory churn (edits and revocations), while
//! faults are injected at known times: Redis restarted, frozen and (in the cluster) a master killed
//! and brought back, each replica stopped with SIGTERM and started again, the inventory volume
//! rewritten. It prints a table per fault window and checks the rules of `docs/benchmarks.md`
//! ("The soak"); it exits non-zero when one breaks.
//!
//! `soak [--duration 10m] [--topology both|standalone|cluster] [--clusters N] [--watchers N]
//!       [--agents N] [--edits-per-second N] [--load-share 0.5] [--seed N] [--keep]`

mod balancer;
mod clock;
mod faults;
mod load;
mod redis_watch;
mod retry;
mod verdict;
mod volume;
mod watchers;
mod world;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use kubeconfigd_e2e::{RedisCluster, RedisServer, Server, agent_binary, workspace_root};

use crate::clock::Clock;
use crate::faults::{Fault, Redis};
use crate::load::{Load, Records, Replicas};
use crate::retry::{RetryPolicy, Rng};
use crate::watchers::Watcher;
use crate::world::{Fleet, PROJECTS, Timeline, Who};

/// The run's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub duration: Duration,
    pub topologies: Vec<Topology>,
    pub clusters: usize,
    pub watchers: usize,
    pub agents: usize,
    pub churn_users: usize,
    pub edits_per_second: f64,
    pub load_share: f64,
    pub seed: u64,
    pub keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Standalone,
    Cluster,
}

impl Topology {
    fn name(self) -> &'static str {
        match self {
            Topology::Standalone => "standalone Redis",
            Topology::Cluster => "Redis Cluster (3 masters + 3 replicas)",
        }
    }
}

fn duration(text: &str) -> anyhow::Result<Duration> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .with_context(|| format!("duration {text:?}"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        _ => anyhow::bail!("duration {text:?}: use e.g. 60s or 10m"),
    })
}

fn parse(args: &[String]) -> anyhow::Result<Settings> {
    let mut settings = Settings {
        duration: Duration::from_secs(600),
        topologies: vec![Topology::Standalone, Topology::Cluster],
        clusters: 600,
        watchers: 1000,
        agents: 4,
        churn_users: 8,
        edits_per_second: 10.0,
        load_share: 0.5,
        seed: 1,
        keep: false,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if flag == "--keep" {
            settings.keep = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--duration" => settings.duration = duration(value)?,
            "--topology" => {
                settings.topologies = match value.as_str() {
                    "both" => vec![Topology::Standalone, Topology::Cluster],
                    "standalone" => vec![Topology::Standalone],
                    "cluster" => vec![Topology::Cluster],
                    _ => anyhow::bail!("--topology: both, standalone or cluster"),
                }
            }
            "--clusters" => settings.clusters = value.parse()?,
            "--watchers" => settings.watchers = value.parse()?,
            "--agents" => settings.agents = value.parse()?,
            "--edits-per-second" => settings.edits_per_second = value.parse()?,
            "--load-share" => settings.load_share = value.parse()?,
            "--seed" => settings.seed = value.parse()?,
            _ => anyhow::bail!("unknown flag {flag}"),
        }
    }
    anyhow::ensure!(settings.clusters >= 30, "--clusters: at least 30");
    anyhow::ensure!(
        settings.agents <= settings.churn_users,
        "--agents: at most {}",
        settings.churn_users
    );
    anyhow::ensure!(
        settings.duration >= Duration::from_secs(30),
        "--duration: at least 30s"
    );
    Ok(settings)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = parse(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut failed = false;
    for topology in settings.topologies.clone() {
        let report = runtime.block_on(run(&settings, topology))?;
        println!("{}", report.text);
        failed |= !report.passed;
    }
    if failed {
        anyhow::bail!("a soak rule broke (see above)");
    }
    Ok(())
}

/// Live processes of one run.
#[derive(Debug)]
pub struct Cast {
    pub replicas: Vec<Arc<tokio::sync::Mutex<Server>>>,
    pub redis: Redis,
    pub agents: Vec<kubeconfigd_e2e::Agent>,
    pub agent_dirs: Vec<PathBuf>,
}

#[derive(Debug)]
pub struct Report {
    pub text: String,
    pub passed: bool,
}

async fn run(settings: &Settings, topology: Topology) -> anyhow::Result<Report> {
    let work = tempfile::Builder::new()
        .prefix("kubeconfigd-soak-")
        .tempdir()?;
    eprintln!(
        "soak ({}): {} clusters, Redis, two replicas",
        topology.name(),
        settings.clusters
    );
    let fleet = Fleet::new(settings.clusters);
    let (inventory, tenant) = world::create(work.path(), &fleet, settings.churn_users)?;
    let redis = match topology {
        Topology::Standalone => Redis::Standalone(RedisServer::start_persistent()?),
        Topology::Cluster => Redis::Cluster(RedisCluster::start_with(3, 1)?),
    };
    let key_file = work.path().join("cache.key");
    std::fs::write(&key_file, hex::encode(key_bytes()))?;
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let mut args: Vec<String> = [
            "--tenant",
            &tenant.root().join("tenant.yaml").display().to_string(),
            "--inventory",
            &inventory.root().display().to_string(),
            "--cache-key-file",
            &key_file.display().to_string(),
            "--cache-memory",
            "0",
            "--audit-log",
            &work
                .path()
                .join(format!("audit-{name}.log"))
                .display()
                .to_string(),
            // Rotated as in production, but every rotated file kept: the audit check reads them all.
            "--audit-log-max-size",
            "64MiB",
            "--audit-log-max-files",
            "10000",
            "--shutdown-delay",
            "1s",
            "--shutdown-grace",
            "5s",
            "--max-mints-per-minute",
            "1000000",
            "--max-watch-streams",
            "20000",
            "--max-watch-streams-per-caller",
            "20000",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(redis.flags());
        replicas.push(Arc::new(tokio::sync::Mutex::new(
            Server::start(&args)
                .await
                .with_context(|| format!("replica {name}"))?,
        )));
    }
    let mut grpc = Vec::new();
    let mut rest = Vec::new();
    let mut admin = Vec::new();
    for replica in &replicas {
        let server = replica.lock().await;
        grpc.push(server.grpc);
        rest.push(server.rest);
        admin.push(server.admin);
    }
    let policy = RetryPolicy::from_service_config(&std::fs::read_to_string(
        workspace_root().join("deploy/kubernetes/grpc-service-config.json"),
    )?)?;
    let clock = Clock::start();
    let redis_stop = Arc::new(AtomicBool::new(false));
    let redis_stalls = redis_watch::watch(
        redis.nodes().iter().map(|n| n.port).collect(),
        clock,
        Arc::clone(&redis_stop),
    );
    let load = Arc::new(Load {
        replicas: Replicas::new(&grpc, &rest)?,
        policy,
        fleet,
        churn_users: settings.churn_users,
        clock,
        records: std::sync::Mutex::new(Records::default()),
    });

    // Agents, through a Service-like address.
    let vip = balancer::start(
        &grpc
            .iter()
            .copied()
            .zip(admin.iter().copied())
            .collect::<Vec<_>>(),
    )
    .await?;
    // The idle baseline: the replicas with nothing connected but the balancer's readiness polls, once
    // each has served a download (what opens on first use, the audit file, is open then).
    let mut first = Rng::new(settings.seed);
    for replica in 0..grpc.len() {
        let answer = load
            .replicas
            .client(replica, &mut first)
            .get_kubeconfig(kubeconfigd_e2e::with_key(
                kubeconfig_proto::kubeconfig::v1::GetKubeconfigRequest {
                    uid: kubeconfigd_e2e::fleet::uid(load.fleet.viewable[0][0]),
                    frp: None,
                },
                &Who::Viewer(0).api_key(),
            ))
            .await;
        load.answered(replica, load::grpc_request_id(&answer));
        answer.context("a first download")?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = verdict::Resources::measure(&replicas, &redis).await;
    let mut agents = Vec::new();
    let mut agent_dirs = Vec::new();
    for i in 0..settings.agents {
        let dir = work.path().join(format!("agent-{i}"));
        std::fs::create_dir_all(&dir)?;
        let key = work.path().join(format!("agent-{i}.key"));
        std::fs::write(&key, Who::Churn(i).api_key())?;
        let args: Vec<String> = vec![
            "--server".into(),
            format!("http://{vip}"),
            "--api-key-file".into(),
            key.display().to_string(),
            "--all".into(),
            "--project".into(),
            format!("p{}", i % PROJECTS),
            "--out-dir".into(),
            dir.display().to_string(),
        ];
        agents.push(kubeconfigd_e2e::Agent::start(&args)?);
        agent_dirs.push(dir);
    }
    let _ = agent_binary()?;

    // Watchers, spread over both replicas; a fifth are churn users'.
    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = Rng::new(settings.seed);
    let mut all_watchers = Vec::new();
    let mut watcher_tasks = Vec::new();
    let mut watcher_channels = Vec::new();
    for w in 0..settings.watchers {
        let who = if w % 5 == 0 {
            Who::Churn(rng.below(settings.churn_users))
        } else {
            Who::Viewer(rng.below(PROJECTS))
        };
        let viewable = &load.fleet.viewable[who.project()];
        let clusters = (0..3)
            .map(|_| kubeconfigd_e2e::fleet::uid(viewable[rng.below(viewable.len())]))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let watcher = Arc::new(Watcher {
            who,
            clusters,
            held: Default::default(),
            log: Default::default(),
            reconnects: Default::default(),
            events: Default::default(),
        });
        all_watchers.push(Arc::clone(&watcher));
        // Twenty watchers share a connection to each replica, like the watchers of one pod.
        if w % 20 == 0 {
            watcher_channels = load
                .replicas
                .grpc_addresses
                .iter()
                .map(|&a| load::lazy_channel(a))
                .collect::<anyhow::Result<_>>()?;
        }
        watcher_tasks.push(tokio::spawn(watchers::watch(
            watcher,
            watcher_channels.clone(),
            w % 2,
            clock,
            Arc::clone(&stop),
        )));
    }
    // Let the watches sync before the load is measured.
    eprintln!(
        "soak: {} watchers and {} agents connecting",
        settings.watchers, settings.agents
    );
    kubeconfigd_e2e::eventually(Duration::from_secs(60), || async {
        all_watchers
            .iter()
            .all(|w| !w.held.lock().expect("held").is_empty())
    })
    .await;

    eprintln!("soak: measuring the sustained rate (3 s, closed loop)");
    let rate_max = load::calibrate(&load, 32, 3.0, settings.seed).await;
    // The calibration saturates the machine: its backlog (Redis's too) drains before the run starts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rate, trials) = load::settle(&load, rate_max * settings.load_share, settings.seed).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let total = settings.duration.as_secs_f64();
    let start = clock.seconds();
    let end = start + total;
    let settle = (total * 0.1).max(5.0);
    let timeline = Arc::new(Timeline::new(settings.churn_users));
    let plan = faults::plan(topology, start, total);

    let mut cast = Cast {
        replicas,
        redis,
        agents,
        agent_dirs,
    };
    let disk = faults::watch_disk(cast.agent_dirs.clone(), clock, Arc::clone(&stop));
    let samples = verdict::sample(cast.replicas.clone(), clock, Arc::clone(&stop));
    let churn = tokio::spawn(faults::churn(
        inventory,
        tenant,
        load.fleet.count,
        settings.edits_per_second,
        Arc::clone(&timeline),
        clock,
        end - settle,
        settings.seed,
        plan.iter()
            .find(|(_, f)| *f == Fault::VolumeSwap)
            .map(|(at, _)| *at),
    ));
    // The client is not to be the bottleneck: a call that finds 20,000 in flight is counted failed.
    let load_task = tokio::spawn(load::run(
        Arc::clone(&load),
        rate,
        end,
        20_000,
        settings.seed,
    ));
    eprintln!("soak: {rate:.0} calls/s for {total:.0} s");
    let mut fault_log = Vec::new();
    for (at, fault) in &plan {
        let wait = at - clock.seconds();
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
        let began = clock.seconds();
        eprintln!("soak: +{:.1} s {}", began - start, fault.name());
        let outcome = faults::inject(fault, &mut cast).await;
        fault_log.push((began, clock.seconds(), fault.clone(), outcome));
    }
    let warm_end = plan.first().map_or(start, |(at, _)| *at);
    let rss_warm = samples.rss_at(warm_end + 1.0);
    let churn_result = churn.await?;
    eprintln!("soak: churn done; waiting for the load to end");
    let _ = load_task.await;
    let rss_end = samples.rss_at(clock.seconds());
    // The end state, with the churn settled: every watcher holds what a download would give it.
    eprintln!("soak: checking what the watchers hold and the ledger");
    let currency = verdict::currency(&load, &all_watchers, &timeline).await;
    stop.store(true, Ordering::Relaxed);
    for task in watcher_tasks {
        let _ = task.await;
    }
    let ledger = verdict::ledger(&load).await;
    for agent in &mut cast.agents {
        agent.kill();
    }
    // The clients' connections go with the load.
    let records = std::mem::take(&mut *load.records.lock().expect("records"));
    drop(load);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = verdict::Resources::measure(&cast.replicas, &cast.redis).await;
    let disk = disk.await?;
    let mut logs = Vec::new();
    for replica in &cast.replicas {
        logs.push(replica.lock().await.log_text());
    }
    let audits = ["a", "b"].map(|name| verdict::audit_text(work.path(), name));
    redis_stop.store(true, Ordering::Relaxed);
    let redis_stalls = redis_stalls.snapshot();
    let report = verdict::Verdict {
        settings,
        topology,
        rate_max,
        rate,
        trials: &trials,
        start,
        end,
        fault_log: &fault_log,
        records: &records,
        timeline: &timeline.snapshot(),
        watchers: &all_watchers,
        disk: &disk,
        churn: churn_result,
        currency,
        ledger,
        baseline,
        after,
        rss_warm,
        rss_end,
        logs: &logs,
        redis_stalls: &redis_stalls,
        audits: &audits,
    }
    .judge();
    if settings.keep || !report.passed {
        let kept = work.keep();
        for (i, log) in logs.iter().enumerate() {
            let _ = std::fs::write(kept.join(format!("server-{i}.log")), log);
        }
        println!("work directory kept: {}", kept.display());
    }
    Ok(report)
}

fn key_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    let mut rng = Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64),
    );
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    bytes
}
