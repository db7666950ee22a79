//! The inventory: the tenant file plus one cluster file per cluster, loaded into immutable
//! [`Snapshot`]s.
//!
//! Reloading keeps the last good version of every file: a broken tenant file keeps the previous tenant
//! in service, a broken cluster file keeps the previous version of that cluster (and reports the error
//! on it), and a cluster that never loaded cleanly is served as unavailable with its reason. A deleted
//! file removes its cluster. A cluster whose file and referenced files are unchanged is not prepared
//! again (certificate checks are the expensive part) unless the tenant changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kubeconfig_policy::{ApiKeyHash, Tenant};
use sha2::{Digest, Sha256};

use crate::demo;
use crate::record::{self, ClusterEntry, Problem, ProblemCode, Record};

/// One consistent view of the tenant and the clusters, swapped atomically on reload.
#[derive(Debug)]
pub struct Snapshot {
    pub tenant: Arc<Tenant>,
    /// The clusters by uid.
    pub clusters: BTreeMap<String, Arc<ClusterEntry>>,
    /// API key hashes and the user each belongs to.
    pub api_keys: Vec<(ApiKeyHash, String)>,
    /// A tenant file problem (the last good version is in service), reported with every cluster.
    pub tenant_problem: Option<String>,
    /// Problems with files that yielded no cluster at all.
    pub file_problems: Vec<String>,
}

impl Snapshot {
    /// Clusters that are loaded but cannot be served.
    pub fn unavailable_count(&self) -> usize {
        self.clusters.values().filter(|c| !c.is_ready()).count()
    }
}

/// Where files are read from.
#[derive(Debug, Clone)]
pub enum Origin {
    Files { inventory: PathBuf, tenant: PathBuf },
    Demo,
}

struct Slot {
    /// Digest of the file and every file it refers to, as last read.
    fingerprint: [u8; 32],
    /// The last good record and the entry prepared from it.
    good: Option<(Arc<Record>, ClusterEntry)>,
    /// The latest problem with this file, if its latest version was not applied.
    problem: Option<String>,
}

/// The loader: remembers the last good version of every file between reloads.
pub struct Inventory {
    origin: Origin,
    tenant: Option<(Arc<Tenant>, [u8; 32])>,
    tenant_problem: Option<String>,
    slots: BTreeMap<PathBuf, Slot>,
    /// The file each uid was served from in the last snapshot: on a uid conflict it keeps serving.
    owners: BTreeMap<String, PathBuf>,
    /// The uid conflicts reported so far (each is reported once, when it appears).
    conflicts: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("origin", &self.origin)
            .field("files", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// The outcome of one reload, for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Files (tenant or cluster) whose latest version could not be applied, with the reason.
    pub failures: Vec<String>,
    pub changed: bool,
}

/// Why the first load failed (the service cannot start without a tenant).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(String);

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn located(path: &Path, line: Option<usize>, message: &str) -> String {
    match line {
        Some(line) => format!("{}: line {line}: {message}", path.display()),
        None => format!("{}: {message}", path.display()),
    }
}

impl Inventory {
    /// Loads everything for the first time. Fails only when the tenant file cannot be used.
    pub fn load(origin: Origin) -> Result<(Self, Snapshot, ReloadReport), LoadError> {
        let mut inventory = Inventory {
            origin,
            tenant: None,
            tenant_problem: None,
            slots: BTreeMap::new(),
            owners: BTreeMap::new(),
            conflicts: std::collections::BTreeSet::new(),
        };
        let (snapshot, report) = inventory.reload();
        match snapshot {
            Some(snapshot) => Ok((inventory, snapshot, report)),
            None => Err(LoadError(inventory.tenant_problem.unwrap_or_else(|| {
                "the tenant file could not be loaded".to_owned()
            }))),
        }
    }

    fn tenant_path(&self) -> PathBuf {
        match &self.origin {
            Origin::Files { tenant, .. } => tenant.clone(),
            Origin::Demo => PathBuf::from("demo/tenant.yaml"),
        }
    }

    fn read_tenant(&self) -> std::io::Result<String> {
        match &self.origin {
            Origin::Files { tenant, .. } => read_limited(tenant),
            Origin::Demo => Ok(demo::TENANT.to_owned()),
        }
    }

    /// The cluster files: (path, text or read error), sorted by path.
    fn read_clusters(&self) -> Vec<(PathBuf, std::io::Result<String>)> {
        match &self.origin {
            Origin::Demo => demo::CLUSTERS
                .iter()
                .map(|(name, text)| {
                    (
                        PathBuf::from(format!("demo/inventory/{name}")),
                        Ok((*text).to_owned()),
                    )
                })
                .collect(),
            Origin::Files { inventory, .. } => {
                let mut files: Vec<PathBuf> = match std::fs::read_dir(inventory) {
                    Ok(entries) => entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| {
                            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                            !name.starts_with('.')
                                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                                && p.is_file()
                        })
                        .collect(),
                    Err(e) => {
                        tracing::warn!(dir = %inventory.display(), error = %e, "cannot list the inventory directory; keeping what is loaded");
                        return self
                            .slots
                            .keys()
                            .map(|p| {
                                (
                                    p.clone(),
                                    Err(std::io::Error::other("inventory directory unreadable")),
                                )
                            })
                            .collect();
                    }
                };
                files.sort();
                files
                    .into_iter()
                    .map(|p| {
                        // A cluster file may be a symlink (ConfigMap volumes), but not one that leads
                        // out of the inventory directory.
                        let text = match p.file_name() {
                            Some(name) => crate::files::confine(inventory, Path::new(name))
                                .map_err(|e| std::io::Error::other(e.to_string()))
                                .and_then(|resolved| read_limited(&resolved)),
                            None => Err(std::io::Error::other("no file name")),
                        };
                        (p, text)
                    })
                    .collect()
            }
        }
    }

    fn base_dir(&self) -> Option<PathBuf> {
        match &self.origin {
            Origin::Files { inventory, .. } => Some(inventory.clone()),
            Origin::Demo => None,
        }
    }

    /// Re-reads everything and builds a new snapshot (`None` only while no tenant was ever loaded).
    pub fn reload(&mut self) -> (Option<Snapshot>, ReloadReport) {
        let mut report = ReloadReport::default();
        let tenant_path = self.tenant_path();
        let mut tenant_changed = false;
        match self.read_tenant() {
            Ok(text) => {
                let text_digest = digest(&text);
                if self.tenant.as_ref().map(|(_, d)| *d) != Some(text_digest) {
                    match Tenant::from_yaml(&text) {
                        Ok(tenant) => {
                            self.tenant = Some((Arc::new(tenant), text_digest));
                            self.tenant_problem = None;
                            tenant_changed = true;
                        }
                        Err(e) => {
                            let problem = located(&tenant_path, e.line(), &e.to_string());
                            if self.tenant_problem.as_ref() != Some(&problem) {
                                report.failures.push(problem.clone());
                            }
                            self.tenant_problem = Some(problem);
                        }
                    }
                }
            }
            Err(e) => {
                let problem = located(&tenant_path, None, &e.to_string());
                if self.tenant_problem.as_ref() != Some(&problem) {
                    report.failures.push(problem.clone());
                }
                self.tenant_problem = Some(problem);
            }
        }
        let Some((tenant, _)) = self.tenant.clone() else {
            return (None, report);
        };
        report.changed |= tenant_changed;

        let base = self.base_dir();
        let files = self.read_clusters();
        let present: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
        let before = self.slots.len();
        self.slots.retain(|path, _| present.contains(path));
        report.changed |= self.slots.len() != before;

        for (path, text) in files {
            let text = match text {
                Ok(text) => text,
                Err(e) => {
                    // Unreadable right now (e.g. mid-rename, or refused): keep what we had, and say so
                    // once.
                    let problem = located(&path, None, &e.to_string());
                    let slot = self.slots.entry(path.clone()).or_insert(Slot {
                        fingerprint: [0; 32],
                        good: None,
                        problem: None,
                    });
                    if slot.problem.as_ref() != Some(&problem) {
                        report.failures.push(problem.clone());
                        slot.problem = Some(problem);
                    }
                    continue;
                }
            };
            // Parsing reads every file the record refers to, so a changed key or certificate file
            // changes the fingerprint even when the cluster file itself did not change.
            let parsed = Record::parse(&text, base.as_deref());
            let fingerprint = match &parsed {
                Ok(record) => *record.content_digest(),
                Err(e) => digest(&format!("{text}\0{}", e.message)),
            };
            let slot = self.slots.entry(path.clone()).or_insert(Slot {
                fingerprint: [0; 32],
                good: None,
                problem: None,
            });
            if slot.fingerprint == fingerprint {
                if let (true, Some((record, entry))) = (tenant_changed, &mut slot.good) {
                    *entry = record::prepare(record, &path, &tenant);
                }
                continue;
            }
            slot.fingerprint = fingerprint;
            report.changed = true;
            match parsed {
                Err(e) => {
                    let problem = located(&path, e.line, &e.message);
                    report.failures.push(problem.clone());
                    slot.problem = Some(problem);
                    if let (true, Some((record, entry))) = (tenant_changed, &mut slot.good) {
                        *entry = record::prepare(record, &path, &tenant);
                    }
                }
                Ok(record) => {
                    let entry = record::prepare(&record, &path, &tenant);
                    let keep_previous = !entry.is_ready()
                        && slot.good.as_ref().is_some_and(|(old, old_entry)| {
                            old.uid == record.uid && old_entry.is_ready()
                        });
                    if keep_previous {
                        let reason = match &entry.availability {
                            record::Availability::Unavailable(reason) => reason.clone(),
                            record::Availability::Ready(_) => String::new(),
                        };
                        let problem = located(&path, None, &reason);
                        report.failures.push(problem.clone());
                        slot.problem = Some(problem);
                        if let (true, Some((old, old_entry))) = (tenant_changed, &mut slot.good) {
                            *old_entry = record::prepare(old, &path, &tenant);
                        }
                    } else {
                        if let record::Availability::Unavailable(reason) = &entry.availability {
                            report.failures.push(located(&path, None, reason));
                        }
                        slot.good = Some((Arc::new(record), entry));
                        slot.problem = None;
                    }
                }
            }
        }

        let (clusters, file_problems) = self.assemble(&mut report);
        let api_keys = tenant
            .users()
            .flat_map(|u| u.api_keys.iter().map(|k| (*k, u.email.clone())))
            .collect();
        let snapshot = Snapshot {
            tenant,
            clusters,
            api_keys,
            tenant_problem: self.tenant_problem.clone(),
            file_problems,
        };
        (Some(snapshot), report)
    }

    /// The served clusters from the slots. A uid claimed by more than one file is never taken over
    /// silently: the file that served it before keeps serving and the others are refused and reported;
    /// with no such file (at start, or both new) every claimant is refused and the cluster is
    /// unavailable with a reason naming the files.
    fn assemble(
        &mut self,
        report: &mut ReloadReport,
    ) -> (BTreeMap<String, Arc<ClusterEntry>>, Vec<String>) {
        let mut file_problems = Vec::new();
        let mut claimants: BTreeMap<&str, Vec<(&PathBuf, &Slot)>> = BTreeMap::new();
        for (path, slot) in &self.slots {
            match &slot.good {
                None => file_problems.extend(slot.problem.clone()),
                Some((record, _)) => claimants.entry(&record.uid).or_default().push((path, slot)),
            }
        }
        let mut clusters: BTreeMap<String, Arc<ClusterEntry>> = BTreeMap::new();
        let mut owners = BTreeMap::new();
        let mut conflicts = std::collections::BTreeSet::new();
        for (uid, files) in claimants {
            let served = |path: &PathBuf, slot: &Slot| {
                let (_, entry) = slot.good.as_ref()?;
                let mut entry = entry.clone();
                if let Some(problem) = &slot.problem {
                    entry.problems.push(Problem::new(
                        ProblemCode::EditNotApplied,
                        format!("the latest edit was not applied; the previous version is served: {problem}"),
                    ));
                }
                if let record::Availability::Unavailable(reason) = &entry.availability {
                    entry.problems.push(Problem::new(
                        ProblemCode::ClusterUnavailable,
                        reason.clone(),
                    ));
                }
                entry.file = path.clone();
                Some(entry)
            };
            let entry = if let [(path, slot)] = files.as_slice() {
                served(path, slot)
            } else {
                let names: Vec<String> =
                    files.iter().map(|(p, _)| p.display().to_string()).collect();
                let owner = self
                    .owners
                    .get(uid)
                    .and_then(|owner| files.iter().find(|(p, _)| *p == owner));
                match owner {
                    Some((owner_path, owner_slot)) => {
                        let mut entry = served(owner_path, owner_slot);
                        for (path, _) in files.iter().filter(|(p, _)| p != owner_path) {
                            let problem = format!(
                                "{}: uid {uid} is already served from {}; this file is refused until one of them changes its uid",
                                path.display(),
                                owner_path.display()
                            );
                            if let Some(entry) = entry.as_mut() {
                                entry
                                    .problems
                                    .push(Problem::new(ProblemCode::UidConflict, problem.clone()));
                            }
                            file_problems.push(problem.clone());
                            conflicts.insert(problem);
                        }
                        entry
                    }
                    None => {
                        let problem = format!(
                            "uid {uid} is claimed by more than one file ({}); none of them is served until the uid is unique",
                            names.join(", ")
                        );
                        file_problems.push(problem.clone());
                        conflicts.insert(problem.clone());
                        let (path, slot) = files[0];
                        served(path, slot).map(|mut entry| {
                            entry.availability = record::Availability::Unavailable(problem.clone());
                            entry.problems = vec![Problem::new(ProblemCode::UidConflict, problem)];
                            entry
                        })
                    }
                }
            };
            if let Some(entry) = entry {
                if entry.is_ready() || files.len() == 1 {
                    owners.insert(uid.to_owned(), entry.file.clone());
                }
                clusters.insert(uid.to_owned(), Arc::new(entry));
            }
        }
        for conflict in &conflicts {
            if !self.conflicts.contains(conflict) {
                report.failures.push(conflict.clone());
                report.changed = true;
            }
        }
        self.conflicts = conflicts;
        self.owners = owners;
        (clusters, file_problems)
    }
}

/// Reads a tenant or cluster file: a regular file of at most 1 MiB, never blocking on a special file.
fn read_limited(path: &Path) -> std::io::Result<String> {
    crate::files::read_text(path, kubeconfig_policy::MAX_DOCUMENT_BYTES as u64).map_err(|e| match e
    {
        crate::files::FileError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    })
}
