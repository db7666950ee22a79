//! The rules of the run, checked from what it recorded, and the table it prints: per fault window the
//! calls, failures, refusals and latencies; then each rule with what was measured and whether it held.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeconfig_proto::kubeconfig::v1::{
    CheckKubeconfigRequest, CredentialStatus, GetKubeconfigRequest, check_kubeconfig_request,
};
use kubeconfigd_e2e::{Server, with_key};

use crate::clock::Clock;
use crate::faults::{Churn, Disk, Fault, Redis};
use crate::load::{Load, Op, Outcome, Records};
use crate::redis_watch::Stall;
use crate::watchers::{Seen, Watcher};
use crate::world::{self, Access, Who};
use crate::{Report, Settings, Topology};

/// How long a removed access may still be honoured.
const REVOCATION_BOUND: f64 = 2.0;

fn proc_count(pid: u32, dir: &str) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/{dir}"))
        .ok()
        .map(|d| d.count() as u64)
}

fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// File descriptors and threads of each replica, and clients of each live Redis node.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub fds: Vec<Option<u64>>,
    pub threads: Vec<Option<u64>>,
    pub redis_clients: u64,
    /// Per live node: `role:clients`.
    pub redis_nodes: Vec<String>,
}

impl Resources {
    pub async fn measure(replicas: &[Arc<tokio::sync::Mutex<Server>>], redis: &Redis) -> Self {
        let mut resources = Resources::default();
        for replica in replicas {
            let pid = replica.lock().await.pid();
            resources.fds.push(pid.and_then(|p| proc_count(p, "fd")));
            resources
                .threads
                .push(pid.and_then(|p| proc_count(p, "task")));
        }
        for node in redis.nodes() {
            if node.pid().is_none() {
                continue;
            }
            // Every client but the one asking and the stall watch's.
            let clients = node
                .cli(&["client", "list"])
                .map(|out| {
                    String::from_utf8_lossy(&out)
                        .lines()
                        .filter(|l| !l.contains(&format!("name={} ", crate::redis_watch::NAME)))
                        .count() as u64
                })
                .unwrap_or(0);
            resources.redis_clients += clients.saturating_sub(1);
            resources.redis_nodes.push(format!(
                "{}:{}",
                node.role().unwrap_or_default(),
                clients.saturating_sub(1)
            ));
        }
        resources
    }
}

/// RSS of each replica, once a second.
#[derive(Clone, Default)]
pub struct Samples(Arc<Mutex<Vec<Sample>>>);

/// (seconds, RSS of each replica).
type Sample = (f64, Vec<Option<u64>>);

impl Samples {
    /// The last sample taken at or before `at`.
    pub fn rss_at(&self, at: f64) -> Vec<Option<u64>> {
        let samples = self.0.lock().expect("samples");
        samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .or(samples.first())
            .map(|(_, rss)| rss.clone())
            .unwrap_or_default()
    }
}

pub fn sample(
    replicas: Vec<Arc<tokio::sync::Mutex<Server>>>,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> Samples {
    let samples = Samples::default();
    let shared = samples.clone();
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let mut row = Vec::new();
            for replica in &replicas {
                // A replica being restarted holds its lock: no sample from it this second.
                let pid = replica.try_lock().ok().and_then(|s| s.pid());
                row.push(pid.and_then(rss));
            }
            shared
                .0
                .lock()
                .expect("samples")
                .push((clock.seconds(), row));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    samples
}

/// Watchers whose files differ from what a download gives them now (the churn has settled).
#[derive(Debug, Default)]
pub struct Currency {
    pub checked: usize,
    pub stale: usize,
    pub examples: Vec<String>,
}

pub async fn currency(
    load: &Arc<Load>,
    watchers: &[Arc<Watcher>],
    timeline: &world::Timeline,
) -> Currency {
    let history = timeline.snapshot();
    let mut fresh: HashMap<(String, String), Option<String>> = HashMap::new();
    let mut rng = crate::retry::Rng::new(7);
    let mut result = Currency::default();
    for watcher in watchers {
        let granted = match watcher.who {
            Who::Churn(i) => history[i].last().is_none_or(|(_, a)| *a == Access::Granted),
            _ => true,
        };
        let held = watcher.held.lock().expect("held").clone();
        for uid in &watcher.clusters {
            let key = (watcher.who.api_key(), uid.clone());
            if !fresh.contains_key(&key) {
                let mut client = load.replicas.client(0, &mut rng);
                let answer = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.get_kubeconfig(with_key(
                        GetKubeconfigRequest {
                            uid: uid.clone(),
                            frp: None,
                        },
                        &key.0,
                    )),
                )
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in 10 s")));
                if answer.is_ok() {
                    load.answered(0, crate::load::grpc_request_id(&answer));
                }
                let etag = answer
                    .ok()
                    .and_then(|r| r.into_inner().kubeconfig.map(|k| k.etag));
                fresh.insert(key.clone(), etag);
            }
            let want = if granted { fresh[&key].clone() } else { None };
            result.checked += 1;
            if held.get(uid) != want.as_ref() {
                result.stale += 1;
                if result.examples.len() < 5 {
                    result.examples.push(format!(
                        "{:?} {uid}: holds {:?}, a download gives {:?}",
                        watcher.who,
                        held.get(uid),
                        want
                    ));
                }
            }
        }
    }
    result
}

/// Minted credentials the ledger does not know.
#[derive(Debug, Default)]
pub struct Ledger {
    pub checked: usize,
    pub unknown: Vec<String>,
    pub unanswered: usize,
}

pub async fn ledger(load: &Arc<Load>) -> Ledger {
    let fingerprints: HashSet<String> = load
        .records
        .lock()
        .expect("records")
        .minted
        .iter()
        .cloned()
        .collect();
    let mut result = Ledger::default();
    let mut rng = crate::retry::Rng::new(11);
    for fingerprint in fingerprints {
        result.checked += 1;
        let mut client = load.replicas.client(1, &mut rng);
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            client.check_kubeconfig(with_key(
                CheckKubeconfigRequest {
                    subject: Some(check_kubeconfig_request::Subject::Fingerprint(
                        fingerprint.clone(),
                    )),
                },
                &Who::Admin.api_key(),
            )),
        )
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in 10 s")));
        match answer {
            Ok(r) if r.get_ref().status() == CredentialStatus::Unknown => {
                result.unknown.push(fingerprint);
            }
            Ok(_) => {}
            Err(_) => result.unanswered += 1,
        }
    }
    result
}

/// Everything the run recorded.
pub struct Verdict<'a> {
    pub settings: &'a Settings,
    pub topology: Topology,
    pub rate_max: f64,
    pub rate: f64,
    /// The trials that chose `rate`: (rate, median answer ms).
    pub trials: &'a [(f64, f64)],
    pub start: f64,
    pub end: f64,
    pub fault_log: &'a [(f64, f64, Fault, Result<(), String>)],
    pub records: &'a Records,
    pub timeline: &'a [Vec<(f64, Access)>],
    pub watchers: &'a [Arc<Watcher>],
    pub disk: &'a Disk,
    pub churn: Churn,
    pub currency: Currency,
    pub ledger: Ledger,
    pub baseline: Resources,
    pub after: Resources,
    pub rss_warm: Vec<Option<u64>>,
    pub rss_end: Vec<Option<u64>>,
    pub logs: &'a [String],
    pub audits: &'a [String; 2],
    pub redis_stalls: &'a [Stall],
}

#[derive(Default)]
struct Window {
    calls: u64,
    failed: u64,
    ledger_down: u64,
    denied: u64,
    latencies: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Revocation intervals of a user: (revoked at, access restored at or the end).
fn revocations(history: &[(f64, Access)], end: f64) -> Vec<(f64, f64)> {
    let mut intervals = Vec::new();
    for (i, (at, access)) in history.iter().enumerate() {
        if *access != Access::Granted {
            let until = history.get(i + 1).map_or(end, |(t, _)| *t);
            intervals.push((*at, until));
        }
    }
    intervals
}

/// A replica's audit stream in order: its rotated files, oldest (highest number) first, then the
/// current one.
pub fn audit_text(work: &std::path::Path, name: &str) -> String {
    let current = work.join(format!("audit-{name}.log"));
    let mut rotated: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(work)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            let number = file
                .strip_prefix(&format!("audit-{name}.log."))?
                .parse()
                .ok()?;
            Some((number, entry.path()))
        })
        .collect();
    rotated.sort_by_key(|(number, _)| std::cmp::Reverse(*number));
    let mut text = String::new();
    for (_, path) in rotated.iter().chain(std::iter::once(&(0, current))) {
        text.push_str(&std::fs::read_to_string(path).unwrap_or_default());
    }
    text
}

/// The first three of `items`, for a rule's detail.
fn first_three(items: &[String]) -> String {
    items.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
}

fn uuid_text(id: u128) -> String {
    let hex = format!("{id:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Audit records of downloads served (not watch deliveries), by request id, and `seq` faults.
fn audit_ids(text: &str) -> (HashSet<u128>, u64, u64) {
    let mut ids = HashSet::new();
    let mut gaps = 0;
    let mut unreadable = 0;
    let mut last_seq = 0u64;
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            unreadable += 1;
            continue;
        };
        let seq = record["seq"].as_u64().unwrap_or(0);
        // A restarted process numbers from 1 again.
        if seq != 1 && seq != last_seq + 1 {
            gaps += 1;
        }
        last_seq = seq;
        let event = record["event"].as_str().unwrap_or("");
        if event == "asset served"
            && record.get("via").is_none()
            && let Some(id) = record["request_id"]
                .as_str()
                .and_then(|t| u128::from_str_radix(&t.replace('-', ""), 16).ok())
        {
            ids.insert(id);
        }
    }
    (ids, gaps, unreadable)
}

impl Verdict<'_> {
    /// A churn user's call that got the wrong answer, with when their access last changed.
    fn churn_example(&self, call: &crate::load::Call, what: &str) -> String {
        let user = call.churn.unwrap_or(0);
        let change = self.timeline[user]
            .iter()
            .rev()
            .find(|(t, _)| *t <= call.start)
            .map_or(0.0, |(t, _)| *t);
        let why = match &call.outcome {
            crate::load::Outcome::Denied(why) => format!(": {why}"),
            _ => String::new(),
        };
        format!(
            "churn-{user} {what} by {} at {:.2} s, {:.2} s after their access changed; answered in {:.2} s{why}",
            call.op.name(),
            call.start - self.start,
            call.start - change,
            call.seconds
        )
    }

    pub fn judge(self) -> Report {
        let mut text = String::new();
        let mut passed = true;
        let mut rule = |text: &mut String, ok: bool, name: &str, detail: String| {
            passed &= ok;
            let _ = writeln!(
                text,
                "| {} | {name} | {detail} |",
                if ok { "held" } else { "BROKEN" }
            );
        };
        let _ = writeln!(
            text,
            "\n## Soak: {} — {} s, {} clusters, {} watchers, {} agents, {:.0} edits/s, seed {}\n",
            self.topology.name(),
            self.settings.duration.as_secs(),
            self.settings.clusters,
            self.settings.watchers,
            self.settings.agents,
            self.settings.edits_per_second,
            self.settings.seed,
        );
        let _ = writeln!(
            text,
            "Load: {:.0} calls/s ({:.0} % of the {:.0} calls/s measured closed-loop at the start{}).\n",
            self.rate,
            self.rate / self.rate_max * 100.0,
            self.rate_max,
            if self.trials.len() > 1 {
                format!(
                    "; lowered from {:.0} % after 3-s trials answered in a median of {} ms",
                    self.settings.load_share * 100.0,
                    self.trials
                        .iter()
                        .map(|(_, ms)| format!("{ms:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            }
        );

        // Per-window table.
        // Each window runs from its fault's injection to the next one's (a fault's injection ends
        // once the service has recovered from it).
        let mut bounds = vec![(self.start, "warm-up".to_owned(), false)];
        for (at, _, fault, _) in self.fault_log {
            bounds.push((*at, fault.name(), fault.takes_redis()));
        }
        let window_of = |t: f64| bounds.iter().rposition(|(at, _, _)| *at <= t).unwrap_or(0);
        let mut windows: Vec<Window> = bounds.iter().map(|_| Window::default()).collect();
        // Each kind of failure: how many, and when the first began (seconds into the run).
        let mut failures: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        let fail = |failures: &mut BTreeMap<String, (u64, f64)>, key: String, at: f64| {
            failures.entry(key).or_insert((0, at - self.start)).0 += 1;
        };
        // Redis stalls an independent client saw outside the injected Redis faults.
        let planned_redis: Vec<(f64, f64)> = bounds
            .iter()
            .enumerate()
            .filter(|(_, (_, _, redis))| *redis)
            .map(|(i, (at, _, _))| (*at, bounds.get(i + 1).map_or(self.end, |b| b.0)))
            .collect();
        let overlaps = |a: (f64, f64), b: (f64, f64)| a.0 <= b.1 && b.0 <= a.1;
        let unplanned_stalls: Vec<&Stall> = self
            .redis_stalls
            .iter()
            .filter(|s| !planned_redis.iter().any(|p| overlaps((s.from, s.to), *p)))
            .collect();
        let mut refused_in_unplanned_stall = 0u64;
        let mut served_after_revocation = 0u64;
        let mut churn_examples: Vec<String> = Vec::new();
        let mut refused_while_granted = 0u64;
        for call in &self.records.calls {
            let w = window_of(call.start);
            let window = &mut windows[w];
            window.calls += 1;
            window.latencies.push(call.seconds * 1000.0);
            let expected = call.churn.map(|user| {
                world::expected(
                    &self.timeline[user],
                    call.start,
                    call.start + call.seconds,
                    REVOCATION_BOUND,
                )
            });
            // A Redis fault began before the call was answered.
            let redis_window = planned_redis
                .iter()
                .any(|p| overlaps(*p, (call.start, call.start + call.seconds)));
            match (&call.outcome, expected) {
                (Outcome::Served, Some(Some(false))) => {
                    served_after_revocation += 1;
                    window.failed += 1;
                    churn_examples.push(self.churn_example(call, "served"));
                }
                (Outcome::Served, _) => {}
                (Outcome::Denied(_), Some(Some(true))) => {
                    refused_while_granted += 1;
                    churn_examples.push(self.churn_example(call, "refused"));
                    window.failed += 1;
                    fail(
                        &mut failures,
                        format!(
                            "[{}] {}: refused while granted",
                            bounds[w].1,
                            call.op.name()
                        ),
                        call.start,
                    );
                }
                (Outcome::Denied(_), Some(_)) => window.denied += 1,
                (Outcome::Denied(why), None) => {
                    window.failed += 1;
                    fail(
                        &mut failures,
                        format!("[{}] {}: refused ({why})", bounds[w].1, call.op.name()),
                        call.start,
                    );
                }
                (Outcome::LedgerDown(_), _)
                    if redis_window && matches!(call.op, Op::Minted | Op::Check) =>
                {
                    window.ledger_down += 1;
                }
                // Redis did not answer an independent client either while this call was made.
                (Outcome::LedgerDown(_), _)
                    if matches!(call.op, Op::Minted | Op::Check)
                        && unplanned_stalls.iter().any(|s| {
                            overlaps((s.from, s.to), (call.start, call.start + call.seconds))
                        }) =>
                {
                    window.ledger_down += 1;
                    refused_in_unplanned_stall += 1;
                }
                (Outcome::LedgerDown(why), _) => {
                    window.failed += 1;
                    fail(
                        &mut failures,
                        format!(
                            "[{}] {}: UNAVAILABLE while Redis answered ({why})",
                            bounds[w].1,
                            call.op.name()
                        ),
                        call.start,
                    );
                }
                (Outcome::Failed(why), _) => {
                    window.failed += 1;
                    fail(
                        &mut failures,
                        format!("[{}] {}: {why}", bounds[w].1, call.op.name()),
                        call.start,
                    );
                }
            }
        }
        let _ = writeln!(
            text,
            "| window | from s | calls | failed | mint refused (ledger down) | denied (revoked) | p50 ms | p99 ms |"
        );
        let _ = writeln!(text, "|---|---|---|---|---|---|---|---|");
        for ((at, name, _), window) in bounds.iter().zip(&mut windows) {
            window.latencies.sort_by(f64::total_cmp);
            let _ = writeln!(
                text,
                "| {name} | {:.1} | {} | {} | {} | {} | {:.1} | {:.1} |",
                at - self.start,
                window.calls,
                window.failed,
                window.ledger_down,
                window.denied,
                percentile(&window.latencies, 0.5),
                percentile(&window.latencies, 0.99),
            );
        }
        let faults_failed: Vec<String> = self
            .fault_log
            .iter()
            .filter_map(|(at, done, fault, outcome)| {
                outcome.as_ref().err().map(|e| {
                    format!(
                        "{} at {:.1} s (took {:.1} s): {e}",
                        fault.name(),
                        at - self.start,
                        done - at
                    )
                })
            })
            .collect();

        let _ = writeln!(text, "\n| | rule | measured |\n|---|---|---|");
        let total_failed: u64 = windows.iter().map(|w| w.failed).sum();
        let total_calls: u64 = windows.iter().map(|w| w.calls).sum();
        rule(
            &mut text,
            total_failed == 0,
            "no failed call (retry policy of deploy/kubernetes/grpc-service-config.json; REST once on 503 or refused)",
            if failures.is_empty() {
                format!("{total_calls} calls, 0 failed")
            } else {
                format!(
                    "{total_failed} of {total_calls} failed: {}",
                    failures
                        .iter()
                        .take(6)
                        .map(|(k, (n, first))| format!("{n}× {k} (first at {first:.1} s)"))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            },
        );
        rule(
            &mut text,
            faults_failed.is_empty() && self.churn.errors.is_empty(),
            "every fault and edit was injected",
            if faults_failed.is_empty() && self.churn.errors.is_empty() {
                format!(
                    "{} faults; {} cluster edits, {} revocations, {} restorations, {} volume rewrites",
                    self.fault_log.len(),
                    self.churn.edits,
                    self.churn.revocations,
                    self.churn.restorations,
                    self.churn.swaps
                )
            } else {
                faults_failed
                    .iter()
                    .chain(self.churn.errors.iter().take(3))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        );

        // Revocations: downloads, watches, agents' files.
        let mut watch_late = Vec::new();
        let mut watch_max = 0.0f64;
        let mut agent_late = Vec::new();
        let mut agent_max = 0.0f64;
        let mut applied = 0;
        for (user, history) in self.timeline.iter().enumerate() {
            for (revoked, restored) in revocations(history, self.end) {
                if restored - revoked <= REVOCATION_BOUND {
                    continue;
                }
                applied += 1;
                let deadline = revoked + REVOCATION_BOUND;
                for watcher in self.watchers.iter().filter(|w| w.who == Who::Churn(user)) {
                    let log = watcher.log.lock().expect("log");
                    let mut held: HashSet<&str> = HashSet::new();
                    let mut emptied = if revoked > 0.0 { None } else { Some(0.0) };
                    for (t, seen) in log.iter() {
                        if *t >= restored {
                            break;
                        }
                        match seen {
                            Seen::Upsert(uid, _) => {
                                held.insert(uid);
                                if *t > deadline {
                                    watch_late.push(format!(
                                        "churn-{user}: a file at +{:.2} s after revocation",
                                        t - revoked
                                    ));
                                }
                            }
                            Seen::Dropped(uid) => {
                                held.remove(uid.as_str());
                            }
                            Seen::Ended(_) => {}
                        }
                        if *t >= revoked && held.is_empty() && emptied.is_none() {
                            emptied = Some(t - revoked);
                        }
                    }
                    let took = emptied.unwrap_or(if held.is_empty() { 0.0 } else { f64::INFINITY });
                    watch_max = watch_max.max(took);
                    if took > REVOCATION_BOUND {
                        watch_late.push(format!(
                            "churn-{user} (revoked at {:.1} s): still holds {} file(s) after {took:.2} s",
                            revoked - self.start,
                            held.len()
                        ));
                    }
                }
                if user < self.settings.agents {
                    let mut gone = None;
                    for (t, counts) in self.disk {
                        if *t < revoked || *t >= restored {
                            continue;
                        }
                        if counts[user] == 0 {
                            gone.get_or_insert(t - revoked);
                        } else if *t > deadline {
                            gone = None;
                            agent_late.push(format!(
                                "agent of churn-{user} (revoked at {:.1} s): {} file(s) on disk at +{:.2} s",
                                revoked - self.start,
                                counts[user],
                                t - revoked
                            ));
                            break;
                        }
                    }
                    agent_max = agent_max.max(gone.unwrap_or(f64::INFINITY));
                }
            }
        }
        rule(
            &mut text,
            served_after_revocation == 0 && refused_while_granted == 0,
            "no download served more than 2 s after the caller's access was removed",
            format!(
                "{applied} revocations; {served_after_revocation} served after the bound, {refused_while_granted} refused 2 s after access came back{}",
                if churn_examples.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", first_three(&churn_examples))
                }
            ),
        );
        rule(
            &mut text,
            watch_late.is_empty(),
            "every churn watcher dropped its files within 2 s of a revocation, and got none after",
            if watch_late.is_empty() {
                format!("slowest {watch_max:.2} s")
            } else {
                format!("{} late: {}", watch_late.len(), first_three(&watch_late))
            },
        );
        rule(
            &mut text,
            agent_late.is_empty() && agent_max <= REVOCATION_BOUND,
            "every agent's files left the disk within 2 s of a revocation",
            if agent_late.is_empty() {
                format!("slowest {agent_max:.2} s")
            } else {
                first_three(&agent_late)
            },
        );
        rule(
            &mut text,
            self.currency.stale == 0,
            "after the run every watcher holds what a download gives it",
            format!(
                "{} files checked, {} differ{}",
                self.currency.checked,
                self.currency.stale,
                if self.currency.examples.is_empty() {
                    String::new()
                } else {
                    format!(": {}", self.currency.examples.join("; "))
                }
            ),
        );
        rule(
            &mut text,
            self.ledger.unknown.is_empty() && self.ledger.unanswered == 0,
            "every minted credential handed out is in the ledger",
            format!(
                "{} minted, {} unknown to the ledger, {} checks unanswered",
                self.ledger.checked,
                self.ledger.unknown.len(),
                self.ledger.unanswered
            ),
        );

        // Resources.
        let mib =
            |b: Option<u64>| b.map_or("-".to_owned(), |b| format!("{:.1}", b as f64 / 1048576.0));
        // Watchers move to the other replica when theirs restarts, and stay: the rule is on the sum.
        let total = |v: &[Option<u64>]| v.iter().map(|x| x.unwrap_or(0)).sum::<u64>();
        let (warm, end) = (total(&self.rss_warm), total(&self.rss_end));
        let complete = self
            .rss_warm
            .iter()
            .chain(&self.rss_end)
            .all(Option::is_some);
        // 5 %; a run shorter than five minutes may also grow by 8 MiB: it measures "after warm-up"
        // 7 s in, before the allocator and the buffers have settled, and a one-minute run's sum
        // moved by 5 % with no leak (a leak of 30 bytes per call is 8 MiB in a minute, 80 in ten).
        let short = self.settings.duration < std::time::Duration::from_secs(300);
        let allowed = if short {
            (warm as f64 * 0.05).max(8.0 * 1048576.0)
        } else {
            warm as f64 * 0.05
        };
        rule(
            &mut text,
            complete && end as f64 <= warm as f64 + allowed,
            if short {
                "RSS of the replicas together at the end at most 5 % (at least 8 MiB: a short run) above its level after warm-up"
            } else {
                "RSS of the replicas together at the end at most 5 % above its level after warm-up"
            },
            format!(
                "{} → {} MiB ({:+.1} %; per replica {})",
                mib(Some(warm)),
                mib(Some(end)),
                (end as f64 / warm.max(1) as f64 - 1.0) * 100.0,
                self.rss_warm
                    .iter()
                    .zip(&self.rss_end)
                    .map(|(w, e)| format!("{} → {}", mib(*w), mib(*e)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let back = |base: &[Option<u64>], after: &[Option<u64>]| {
            base.iter()
                .zip(after)
                .all(|(b, a)| matches!((b, a), (Some(b), Some(a)) if a <= b))
        };
        let show = |v: &[Option<u64>]| {
            v.iter()
                .map(|x| x.map_or("-".to_owned(), |x| x.to_string()))
                .collect::<Vec<_>>()
                .join("/")
        };
        // A cluster client connects to every node it learns of (a failover makes replicas masters):
        // one more descriptor per node not connected at the start is its pool, not a leak.
        let learned = self.after.redis_nodes.len().saturating_sub(
            self.baseline
                .redis_nodes
                .iter()
                .filter(|n| !n.ends_with(":0"))
                .count(),
        ) as u64;
        let fds_back = self
            .baseline
            .fds
            .iter()
            .zip(&self.after.fds)
            .all(|(b, a)| matches!((b, a), (Some(b), Some(a)) if *a <= b + learned));
        rule(
            &mut text,
            fds_back && back(&self.baseline.threads, &self.after.threads),
            "open files and threads back to their idle baseline once the clients are gone",
            format!(
                "fds {} → {} (+{learned} allowed: Redis nodes connected since); threads {} → {}",
                show(&self.baseline.fds),
                show(&self.after.fds),
                show(&self.baseline.threads),
                show(&self.after.threads)
            ),
        );
        // Each replica holds at most one connection per Redis node and one for invalidations.
        let bound = 2 * self.baseline.fds.len() as u64 + 1;
        let per_node: Vec<u64> = self
            .after
            .redis_nodes
            .iter()
            .filter_map(|n| n.rsplit_once(':').and_then(|(_, c)| c.parse().ok()))
            .collect();
        rule(
            &mut text,
            per_node.iter().all(|c| *c <= bound),
            "Redis connections per node within the pool's bound (2 per replica + 1)",
            format!(
                "{} ({}) → {} ({})",
                self.baseline.redis_clients,
                self.baseline.redis_nodes.join(" "),
                self.after.redis_clients,
                self.after.redis_nodes.join(" ")
            ),
        );

        // Audit: every answered download has its record, and nothing else does.
        let mut missing = 0usize;
        let mut extra = 0usize;
        let mut gaps = 0u64;
        let mut unreadable = 0u64;
        let mut examples = Vec::new();
        for (replica, audit) in self.audits.iter().enumerate() {
            let (ids, g, u) = audit_ids(audit);
            gaps += g;
            unreadable += u;
            let answered: HashSet<u128> = self
                .records
                .answered
                .iter()
                .filter(|(r, _)| *r == replica)
                .map(|(_, id)| *id)
                .collect();
            missing += answered.difference(&ids).count();
            extra += ids.difference(&answered).count();
            for id in answered.difference(&ids).take(2) {
                examples.push(format!(
                    "replica {replica}: {} served, no record",
                    uuid_text(*id)
                ));
            }
            for id in ids.difference(&answered).take(2) {
                examples.push(format!(
                    "replica {replica}: {} recorded, not seen served",
                    uuid_text(*id)
                ));
            }
        }
        rule(
            &mut text,
            missing == 0 && extra == 0 && gaps == 0 && unreadable == 0,
            "one audit record per download served, none for a download not served; no seq gap",
            format!(
                "{} served; {missing} without a record, {extra} records of nothing served, {gaps} seq gaps, {unreadable} unreadable lines{}",
                self.records.answered.len(),
                if examples.is_empty() {
                    String::new()
                } else {
                    format!(" (e.g. {})", examples.join("; "))
                }
            ),
        );

        // Logs: no ERROR line but the injected Redis faults'.
        let errors: Vec<&str> = self
            .logs
            .iter()
            .flat_map(|log| log.lines())
            .filter(|l| l.contains(" ERROR ") || l.contains("\"level\":\"ERROR\""))
            .collect();
        let unexplained: Vec<&&str> = errors
            .iter()
            .filter(|l| !l.to_ascii_lowercase().contains("redis"))
            .collect();
        rule(
            &mut text,
            unexplained.is_empty(),
            "no ERROR log line but those of the injected Redis faults",
            format!(
                "{} ERROR lines, {} not about Redis{}",
                errors.len(),
                unexplained.len(),
                unexplained
                    .first()
                    .map(|l| format!(": {}", l.chars().take(200).collect::<String>()))
                    .unwrap_or_default()
            ),
        );
        let reconnects: u64 = self
            .watchers
            .iter()
            .map(|w| w.reconnects.load(Ordering::Relaxed))
            .sum();
        let events: u64 = self
            .watchers
            .iter()
            .map(|w| w.events.load(Ordering::Relaxed))
            .sum();
        let _ = writeln!(
            text,
            "\nWatch streams: {} watchers, {events} events, {reconnects} reconnects.",
            self.watchers.len()
        );
        let longest = unplanned_stalls
            .iter()
            .max_by(|a, b| (a.to - a.from).total_cmp(&(b.to - b.from)));
        let _ = writeln!(
            text,
            "Redis outside the injected faults (a PING every 100 ms per node): {} answer(s) missing or later than {} ms{}; \
             {refused_in_unplanned_stall} mint or check refusal(s) meanwhile, counted as ledger refusals.",
            unplanned_stalls.len(),
            crate::redis_watch::LATE.as_millis(),
            longest.map_or(String::new(), |s| format!(
                ", the longest {:.2} s (port {}, at {:.1} s)",
                s.to - s.from,
                s.port,
                s.from - self.start
            )),
        );
        Report { text, passed }
    }
}
