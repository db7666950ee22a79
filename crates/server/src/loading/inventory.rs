//! The inventory: the tenant file plus one cluster file per cluster, loaded into immutable
//! [`Snapshot`]s.
//!
//! Work is proportional to the change. The first load reads and prepares every file in parallel; after
//! that, [`Inventory::apply`] re-reads only the cluster files a change touches (an edited, added or
//! deleted cluster file, or every cluster file that refers to an edited certificate or key file), and
//! rebuilds only their entries of the served map, a persistent ordered map shared structurally with the
//! previous snapshot. A tenant edit re-prepares the clusters from the records already parsed. A rescan
//! (periodic, or after an event that cannot be traced to one file, such as a Kubernetes Secret volume
//! swapping its `..data` link) costs a `stat` per file and re-reads only files whose metadata changed.
//!
//! Reloading keeps the last good version of every file: a broken tenant file keeps the previous tenant
//! in service, a broken cluster file keeps the previous version of that cluster (and reports the error
//! on it), and a cluster that never loaded cleanly is not served. A deleted file removes its cluster.
//! Every applied change to a served cluster is returned as a [`ClusterChange`], in order.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kubeconfig_policy::Tenant;

use crate::service::auth::ApiKeys;
use sha2::{Digest, Sha256};
use smallvec::SmallVec;

use crate::loading::demo;
use crate::loading::record::{self, Availability, ClusterEntry, Problem, ProblemCode, Record};

/// Clusters by uid, shared structurally between snapshots.
pub type ClusterMap = imbl::OrdMap<Arc<str>, Arc<ClusterEntry>>;
/// Cluster uids by project, for listing a caller's clusters without scanning the fleet.
pub type ProjectIndex = imbl::OrdMap<Arc<str>, imbl::OrdSet<Arc<str>>>;

/// One consistent view of the tenant and the clusters, swapped atomically on reload.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub tenant: Arc<Tenant>,
    /// The clusters by uid.
    pub clusters: ClusterMap,
    /// The uids of each project's clusters.
    pub by_project: ProjectIndex,
    /// API key hashes and the user each belongs to.
    pub api_keys: Arc<ApiKeys>,
    /// A tenant file problem (the last good version is in service), reported with every cluster.
    pub tenant_problem: Option<String>,
    /// How many served clusters are unavailable.
    pub unavailable: usize,
    /// False only for the placeholder in service while the first load runs.
    pub loaded: bool,
}

impl Snapshot {
    /// What is in service before the first load completes: no tenant, no clusters, `loaded: false`;
    /// every call is refused as unavailable meanwhile.
    pub fn loading() -> Self {
        Snapshot {
            tenant: Arc::new(
                Tenant::from_yaml("tenant: loading\n").expect("the placeholder tenant is valid"),
            ),
            clusters: ClusterMap::new(),
            by_project: ProjectIndex::new(),
            api_keys: Arc::new(ApiKeys::default()),
            tenant_problem: None,
            unavailable: 0,
            loaded: false,
        }
    }

    /// Clusters that are loaded but cannot be served.
    pub fn unavailable_count(&self) -> usize {
        self.unavailable
    }
}

/// What happened to one cluster in an applied change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterChange {
    /// A cluster is served that was not before.
    Added { uid: String, revision: String },
    /// The served cluster's rendered output may differ (new revision), or its problems changed.
    Changed { uid: String, revision: String },
    /// The cluster became unavailable (its record is unusable); the reason is for admins and logs.
    Unavailable { uid: String, reason: String },
    /// The cluster is no longer served.
    Removed { uid: String },
}

impl ClusterChange {
    pub fn uid(&self) -> &str {
        match self {
            ClusterChange::Added { uid, .. }
            | ClusterChange::Changed { uid, .. }
            | ClusterChange::Unavailable { uid, .. }
            | ClusterChange::Removed { uid } => uid,
        }
    }
}

/// Where files are read from.
#[derive(Debug, Clone)]
pub enum Origin {
    Files { inventory: PathBuf, tenant: PathBuf },
    Demo,
}

/// File metadata that changes when a file's content may have (length, modification and change times,
/// inode), compared by rescans instead of reading: kept as a 64-bit hash of those, since it is only
/// ever compared for equality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp(std::num::NonZeroU64);

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::hash::{Hash as _, Hasher as _};
        use std::os::unix::fs::MetadataExt as _;
        let mut hasher = std::hash::DefaultHasher::new();
        (meta.len(), meta.modified().ok(), meta.ino(), meta.dev()).hash(&mut hasher);
        (meta.ctime(), meta.ctime_nsec()).hash(&mut hasher);
        Stamp(std::num::NonZeroU64::MIN.saturating_add(hasher.finish() >> 1))
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|meta| Stamp::of(&meta))
}

struct Slot {
    /// Digest of the file and every file it refers to, as last read (the first 128 bits of it).
    fingerprint: [u8; 16],
    /// Digest of the file's own text as last parsed ([`text_digest`]; 0 before): a file read again
    /// with the same text and unchanged references is not parsed again. A Secret or ConfigMap volume
    /// writes every file anew on each edit (new inodes), so this is what keeps the cost of an edit
    /// to the files whose text changed.
    text: u64,
    /// Metadata of the file, and of the files it refers to, as last read.
    stamps: Stamps,
    /// The entry prepared from the last good record (which it holds).
    good: Option<Arc<ClusterEntry>>,
    /// The latest problem with this file, if its latest version was not applied.
    problem: Option<Box<str>>,
}

/// The files whose good record claims a uid (sorted; almost always one, so held inline), and the one
/// it is served from: on a uid conflict that file keeps serving.
#[derive(Default)]
struct Claim {
    files: SmallVec<[Arc<Path>; 1]>,
    owner: Option<Arc<Path>>,
}

/// The outcome of one load or change, for logs, metrics and the change feed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Files (tenant or cluster) whose latest version could not be applied, with the reason.
    pub failures: Vec<String>,
    pub changed: bool,
    /// Cluster files read and parsed.
    pub parsed: u64,
    /// What changed for callers, per cluster, in order.
    pub changes: Vec<ClusterChange>,
}

/// What a batch of file events asks the inventory to look at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The tenant file may have changed.
    pub tenant: bool,
    /// Paths under the inventory directory that changed.
    pub paths: BTreeSet<PathBuf>,
    /// Compare every file's metadata (events were lost, or cannot be traced to files).
    pub rescan: bool,
}

/// Why the first load failed (the service cannot start without a tenant).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(String);

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// The first 64 bits of a text's SHA-256 (never 0, which stands for "not parsed yet").
fn short_digest(full: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&full[..8]);
    u64::from_le_bytes(first).max(1)
}

/// The order of cluster files: by the bytes of their paths, which all start with the inventory
/// directory, so by file name. (`Path`'s own order parses both paths into components on every
/// comparison: sorting 100,000 names that way took a third of a second.)
fn by_name(a: &Path, b: &Path) -> std::cmp::Ordering {
    use std::os::unix::ffi::OsStrExt as _;
    a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes())
}

fn located(path: &Path, line: Option<usize>, message: &str) -> String {
    match line {
        Some(line) => format!("{}: line {line}: {message}", path.display()),
        None => format!("{}: {message}", path.display()),
    }
}

/// The metadata of a cluster file and of the files it refers to (most refer to none: no allocation).
#[derive(Default)]
struct Stamps {
    own: Option<Stamp>,
    references: Box<[(Arc<Path>, Option<Stamp>)]>,
}

impl Stamps {
    fn unchanged(&self, path: &Path) -> bool {
        self.own == stamp(path)
            && self
                .references
                .iter()
                .all(|(file, old)| *old == stamp(file))
    }
}

/// A cluster file read and prepared, before it is applied.
struct Parsed {
    path: Arc<Path>,
    stamps: Stamps,
    /// [`text_digest`] of what was read (0 when nothing was).
    text: u64,
    references: Vec<Arc<Path>>,
    /// `None` when the file is gone.
    outcome: Option<Outcome>,
}

enum Outcome {
    /// Could not be read right now (e.g. mid-rename, or refused): keep what we had.
    Unreadable(String),
    /// Read again with the text it had when last parsed, and what it refers to unchanged: not parsed.
    Same,
    Broken {
        fingerprint: [u8; 32],
        line: Option<usize>,
        message: String,
    },
    Good {
        fingerprint: [u8; 32],
        /// Holds the record it was prepared from. Shared already: the parsed files of a load wait in
        /// one vector, where each takes the room of its largest kind.
        entry: Arc<ClusterEntry>,
    },
}

/// The loader: remembers the last good version of every file between changes.
pub struct Inventory {
    origin: Origin,
    tenant: Option<(Arc<Tenant>, [u8; 32])>,
    tenant_problem: Option<String>,
    api_keys: Arc<ApiKeys>,
    /// Every path and uid below is one shared allocation (`Arc`), not a copy per index.
    slots: HashMap<Arc<Path>, Slot>,
    /// Which cluster files refer to each referenced file (joined to the inventory directory).
    referrers: HashMap<Arc<Path>, BTreeSet<Arc<Path>>>,
    /// Who claims each uid, and which file serves it.
    claims: HashMap<Arc<str>, Claim>,
    /// The uid conflicts reported so far, by uid (each is reported once, when it appears).
    conflicts: HashMap<Arc<str>, Vec<String>>,
    clusters: ClusterMap,
    by_project: ProjectIndex,
    unavailable: usize,
    /// Whether applied changes are listed per cluster ([`ReloadReport::changes`]): not for the
    /// first load, which nobody can be watching yet (at 100,000 clusters the list was 15 MB).
    list_changes: bool,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("origin", &self.origin)
            .field("files", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// Runs `work` over `items` on every core, keeping the order.
fn parallel_map<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len().max(1));
    if threads <= 1 {
        return items.iter().map(work).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(work).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Blocking reads kept in flight at once while loading: a cold volume answers many queued reads much
/// faster than one or two at a time (on the 100,000-file fleet, `cat` one after another took 11.2 s,
/// 32 readers at once 4.1 s). Reads only wait; the cores parse.
pub const READERS: usize = 32;

/// Files a reader reads before handing them to a parser: one hand-over (a lock, often a wake-up)
/// per file cost more system time than the reads themselves when the files were in the page cache.
const READ_BATCH: usize = 16;

/// Runs `read` over `items` on up to `readers` threads and `parse` over what each read gave on one
/// thread per core, at the same time, and hands every result to `consume` on the calling thread,
/// in the order of `items`, as soon as it and those before it are parsed: a load is then bounded by
/// whichever of the disk and the cores is slower, not by their sum, and what is done with the
/// results overlaps the parsing instead of following it. Reads are handed over in batches of
/// [`READ_BATCH`], and at most one batch per reader waits for a parser, so what is read and not yet
/// parsed is bounded whatever the number of files; results parsed ahead of an earlier one wait for
/// it.
fn pipelined_for_each<T: Sync, A: Send, R: Send>(
    items: &[T],
    readers: usize,
    read: impl Fn(&T) -> A + Sync,
    parse: impl Fn(&T, A) -> R + Sync,
    mut consume: impl FnMut(R),
) {
    let readers = readers.min(items.len().div_ceil(READ_BATCH));
    if readers <= 1 {
        for item in items {
            consume(parse(item, read(item)));
        }
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parsers = cores.min(items.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (to_parse, reads) = std::sync::mpsc::sync_channel::<Vec<(usize, A)>>(readers);
    let reads = std::sync::Mutex::new(reads);
    // Unbounded: a parser never waits for the consumer, which has less to do per result.
    let (to_consume, parsed) = std::sync::mpsc::channel::<Vec<(usize, R)>>();
    std::thread::scope(|scope| {
        let (next, reads, read, parse) = (&next, &reads, &read, &parse);
        for _ in 0..readers {
            let to_parse = to_parse.clone();
            scope.spawn(move || {
                loop {
                    let first = next.fetch_add(READ_BATCH, std::sync::atomic::Ordering::Relaxed);
                    if first >= items.len() {
                        break;
                    }
                    let batch = &items[first..(first + READ_BATCH).min(items.len())];
                    let read: Vec<(usize, A)> = (first..)
                        .zip(batch)
                        .map(|(i, item)| (i, read(item)))
                        .collect();
                    if to_parse.send(read).is_err() {
                        break;
                    }
                }
            });
        }
        drop(to_parse);
        for _ in 0..parsers {
            let to_consume = to_consume.clone();
            scope.spawn(move || {
                loop {
                    let received = match reads.lock() {
                        Ok(reads) => reads.recv(),
                        Err(_) => break,
                    };
                    let Ok(batch) = received else { break };
                    let done = batch
                        .into_iter()
                        .map(|(i, input)| (i, parse(&items[i], input)))
                        .collect();
                    if to_consume.send(done).is_err() {
                        break;
                    }
                }
            });
        }
        drop(to_consume);
        // Ends once every parser is done (or gone: a panic is raised again when the scope ends).
        let mut ahead = std::collections::BTreeMap::new();
        let mut due = 0;
        for batch in parsed {
            for (i, result) in batch {
                if i != due {
                    ahead.insert(i, result);
                    continue;
                }
                consume(result);
                due += 1;
                while let Some(result) = ahead.remove(&due) {
                    consume(result);
                    due += 1;
                }
            }
        }
    });
}

impl Inventory {
    /// Loads everything for the first time. Fails only when the tenant file cannot be used.
    pub fn load(origin: Origin) -> Result<(Self, Snapshot, ReloadReport), LoadError> {
        let mut inventory = Inventory {
            origin,
            tenant: None,
            tenant_problem: None,
            api_keys: Arc::new(ApiKeys::default()),
            slots: HashMap::new(),
            referrers: HashMap::new(),
            claims: HashMap::new(),
            conflicts: HashMap::new(),
            clusters: ClusterMap::new(),
            by_project: ProjectIndex::new(),
            unavailable: 0,
            list_changes: false,
        };
        let (snapshot, report) = inventory.apply(&Changes {
            tenant: true,
            rescan: true,
            ..Changes::default()
        });
        inventory.list_changes = true;
        match snapshot {
            Some(snapshot) => Ok((inventory, snapshot, report)),
            None => Err(LoadError(inventory.tenant_problem.unwrap_or_else(|| {
                "the tenant file could not be loaded".to_owned()
            }))),
        }
    }

    /// Re-reads everything that may have changed (a rescan) and builds a new snapshot.
    pub fn reload(&mut self) -> (Option<Snapshot>, ReloadReport) {
        self.apply(&Changes {
            tenant: true,
            rescan: true,
            ..Changes::default()
        })
    }

    fn tenant_path(&self) -> PathBuf {
        match &self.origin {
            Origin::Files { tenant, .. } => tenant.clone(),
            // The built-in copies of these files are at these paths in a checkout.
            Origin::Demo => PathBuf::from("deploy/demo/tenant.yaml"),
        }
    }

    fn read_tenant(&self) -> std::io::Result<String> {
        match &self.origin {
            Origin::Files { tenant, .. } => read_limited(tenant),
            Origin::Demo => Ok(demo::TENANT.to_owned()),
        }
    }

    fn base_dir(&self) -> Option<PathBuf> {
        match &self.origin {
            Origin::Files { inventory, .. } => Some(inventory.clone()),
            Origin::Demo => None,
        }
    }

    /// Applies a batch of changes and returns the new snapshot (`None` only while no tenant was ever
    /// loaded).
    pub fn apply(&mut self, changes: &Changes) -> (Option<Snapshot>, ReloadReport) {
        let mut report = ReloadReport::default();
        let tenant_changed = changes.tenant && self.check_tenant(&mut report);
        let Some((tenant, _)) = self.tenant.clone() else {
            return (None, report);
        };
        report.changed |= tenant_changed;

        let started = std::time::Instant::now();
        let files = self.files_to_read(changes);
        let listed = started.elapsed();
        let base = self.base_dir();
        if self.slots.is_empty() {
            // The first load: the maps sized once rather than doubled (and copied) a dozen times.
            self.slots.reserve(files.len());
            self.claims.reserve(files.len());
        }
        // Every record of a project shares one copy of its uid.
        let projects: HashSet<Arc<str>> = tenant.project_uids().map(Arc::from).collect();
        let mut touched: BTreeSet<Arc<str>> = BTreeSet::new();
        {
            let origin = self.origin.clone();
            let read = |path: &Arc<Path>| read_cluster_text(&origin, path);
            let shared = record::SharedAnalyses::default();
            let parse_after = |previous| Parsing {
                base: base.as_deref(),
                tenant: &tenant,
                projects: &projects,
                shared: &shared,
                previous,
            };
            if tenant_changed {
                // Every file read is prepared afresh under the new tenant (all of them at the first
                // load), so none is compared with its slot: each is applied while the next are
                // parsed.
                let parsing = parse_after(None);
                pipelined_for_each(
                    &files,
                    READERS,
                    read,
                    |p, r| parsing.parse(p, r),
                    |parsed| {
                        self.apply_parsed(parsed, &mut report, &mut touched);
                    },
                );
            } else {
                let mut all = Vec::with_capacity(files.len());
                let parsing = parse_after(Some(&self.slots));
                pipelined_for_each(
                    &files,
                    READERS,
                    read,
                    |p, r| parsing.parse(p, r),
                    |parsed| {
                        all.push(parsed);
                    },
                );
                for parsed in all {
                    self.apply_parsed(parsed, &mut report, &mut touched);
                }
            }
        }
        let read_and_applied = started.elapsed();
        if tenant_changed {
            // Files read just now were prepared under the new tenant already (all of them at the
            // first load, which has nothing else to prepare).
            if files.len() < self.slots.len() {
                let fresh: HashSet<&Arc<Path>> = files.iter().collect();
                self.reprepare_all(&tenant, &fresh);
            }
            if !(self.clusters.is_empty() && files.len() == self.slots.len()) {
                // (At the first load every claim was touched as its file was applied.)
                touched.extend(self.claims.keys().cloned());
                touched.extend(self.clusters.keys().cloned());
            }
        }
        let applied = started.elapsed();
        self.assemble(&touched, &mut report);
        report.changed |= !report.changes.is_empty();
        tracing::debug!(
            files = files.len(),
            touched = touched.len(),
            listed = %humantime::format_duration(listed),
            read_and_applied = %humantime::format_duration(read_and_applied),
            reprepared = %humantime::format_duration(applied),
            total = %humantime::format_duration(started.elapsed()),
            "inventory change applied"
        );
        let snapshot = Snapshot {
            tenant,
            clusters: self.clusters.clone(),
            by_project: self.by_project.clone(),
            api_keys: Arc::clone(&self.api_keys),
            tenant_problem: self.tenant_problem.clone(),
            unavailable: self.unavailable,
            loaded: true,
        };
        (Some(snapshot), report)
    }

    /// Re-reads the tenant file; true when a new version was applied.
    fn check_tenant(&mut self, report: &mut ReloadReport) -> bool {
        let tenant_path = self.tenant_path();
        let problem = match self.read_tenant() {
            Ok(text) => {
                let text_digest = digest(&text);
                if self.tenant.as_ref().map(|(_, d)| *d) == Some(text_digest) {
                    return false;
                }
                match Tenant::from_yaml(&text) {
                    Ok(tenant) => {
                        self.api_keys = Arc::new(ApiKeys::new(
                            tenant
                                .users()
                                .flat_map(|u| u.api_keys.iter().map(|k| (*k, u.name.clone()))),
                        ));
                        self.tenant = Some((Arc::new(tenant), text_digest));
                        self.tenant_problem = None;
                        return true;
                    }
                    Err(e) => located(&tenant_path, e.line(), &e.to_string()),
                }
            }
            Err(e) => located(&tenant_path, None, &e.to_string()),
        };
        if self.tenant_problem.as_ref() != Some(&problem) {
            report.failures.push(problem.clone());
        }
        self.tenant_problem = Some(problem);
        false
    }

    /// The cluster files a batch of changes asks to read: traced through the reference index, or, for a
    /// rescan, those whose metadata changed, that are new, or that are gone. In name order, so that
    /// logs and first-load reports are stable.
    fn files_to_read(&self, changes: &Changes) -> Vec<Arc<Path>> {
        let mut files: Vec<Arc<Path>> = Vec::new();
        let mut rescan = changes.rescan;
        if let Origin::Files { inventory, .. } = &self.origin {
            for path in &changes.paths {
                let Ok(relative) = path.strip_prefix(inventory) else {
                    rescan = true;
                    continue;
                };
                let mut components = relative.components();
                let first = components.next();
                let hidden_link = relative.components().any(|c| {
                    c.as_os_str()
                        .to_str()
                        .is_some_and(|name| name.starts_with(".."))
                });
                if first.is_none() || hidden_link {
                    // The directory itself, or a Secret/ConfigMap volume swapping its `..data` link.
                    rescan = true;
                } else if components.next().is_none() && is_cluster_file_name(relative) {
                    files.push(Arc::from(path.as_path()));
                }
                if let Some(referrers) = self.referrers.get(path.as_path()) {
                    files.extend(referrers.iter().cloned());
                }
            }
        }
        if rescan {
            let listed = self.list_cluster_files();
            if self.slots.is_empty() && files.is_empty() {
                // The first load: every file listed, already in order.
                return listed;
            }
            for path in &listed {
                let unchanged = self
                    .slots
                    .get(path)
                    .is_some_and(|slot| slot.stamps.unchanged(path));
                if !unchanged {
                    files.push(Arc::clone(path));
                }
            }
            let gone = self
                .slots
                .keys()
                .filter(|p| listed.binary_search_by(|l| by_name(l, p)).is_err());
            files.extend(gone.cloned());
        }
        files.sort_unstable_by(|a, b| by_name(a, b));
        files.dedup();
        files
    }

    /// The cluster files present now, in name order ([`by_name`]).
    fn list_cluster_files(&self) -> Vec<Arc<Path>> {
        let mut files: Vec<Arc<Path>> = match &self.origin {
            Origin::Demo => demo::CLUSTERS
                .iter()
                .map(|(name, _)| Arc::from(Path::new(&format!("deploy/demo/inventory/{name}"))))
                .collect(),
            Origin::Files { inventory, .. } => match std::fs::read_dir(inventory) {
                Ok(entries) => entries
                    .filter_map(Result::ok)
                    // By name only: whether it is a regular file is decided (and a refusal
                    // reported) where every file is read, not skipped here in silence.
                    .filter(|e| is_cluster_file_name(Path::new(&e.file_name())))
                    .map(|e| Arc::from(e.path()))
                    .collect(),
                Err(e) => {
                    tracing::warn!(dir = %inventory.display(), error = %e, "cannot list the inventory directory; keeping what is loaded");
                    self.slots.keys().cloned().collect()
                }
            },
        };
        files.sort_unstable_by(|a, b| by_name(a, b));
        files
    }

    fn apply_parsed(
        &mut self,
        parsed: Parsed,
        report: &mut ReloadReport,
        touched: &mut BTreeSet<Arc<str>>,
    ) {
        if parsed
            .outcome
            .as_ref()
            .is_some_and(|o| !matches!(o, Outcome::Unreadable(_) | Outcome::Same))
        {
            report.parsed += 1;
        }
        let Parsed {
            path,
            stamps,
            text,
            references,
            outcome,
        } = parsed;
        let Some(outcome) = outcome else {
            // The file is gone: its cluster with it.
            if let Some(slot) = self.slots.remove(&path) {
                self.unindex(&path, &slot, touched);
                report.changed = true;
            }
            return;
        };
        if let Outcome::Same = outcome {
            // Only the file's own metadata moved (a volume writing it anew): nothing else to do.
            if let Some(slot) = self.slots.get_mut(&path) {
                slot.stamps.own = stamps.own;
            }
            return;
        }
        if let Outcome::Unreadable(message) = &outcome {
            let problem = located(&path, None, message);
            let slot = self.slots.entry(path.clone()).or_insert_with(|| Slot {
                fingerprint: [0; 16],
                text: 0,
                stamps: Stamps::default(),
                good: None,
                problem: None,
            });
            slot.stamps = stamps;
            // Whatever it holds when it can be read again is applied, its old text too (which
            // clears this problem).
            slot.fingerprint = [0; 16];
            slot.text = 0;
            if slot.problem.as_deref() != Some(problem.as_str()) {
                report.failures.push(problem.clone());
                slot.problem = Some(problem.into());
                if let Some(entry) = &slot.good {
                    touched.insert(entry.uid().clone());
                }
            }
            return;
        }
        if let Some(slot) = self.slots.get(&path) {
            for (reference, _) in &slot.stamps.references {
                if let Some(files) = self.referrers.get_mut(reference) {
                    files.remove(&path);
                    if files.is_empty() {
                        self.referrers.remove(reference);
                    }
                }
            }
        }
        for reference in &references {
            self.referrers
                .entry(reference.clone())
                .or_default()
                .insert(path.clone());
        }
        let slot = self.slots.entry(path.clone()).or_insert_with(|| Slot {
            fingerprint: [0; 16],
            text: 0,
            stamps: Stamps::default(),
            good: None,
            problem: None,
        });
        let old_uid = slot.good.as_ref().map(|e| e.uid().clone());
        slot.stamps = stamps;
        slot.text = text;
        let fingerprint = match &outcome {
            Outcome::Broken { fingerprint, .. } | Outcome::Good { fingerprint, .. } => {
                let mut short = [0; 16];
                short.copy_from_slice(&fingerprint[..16]);
                short
            }
            Outcome::Unreadable(_) | Outcome::Same => [0; 16],
        };
        if slot.fingerprint == fingerprint {
            return;
        }
        slot.fingerprint = fingerprint;
        report.changed = true;
        match outcome {
            Outcome::Unreadable(_) | Outcome::Same => {}
            Outcome::Broken { line, message, .. } => {
                let problem = located(&path, line, &message);
                report.failures.push(problem.clone());
                slot.problem = Some(problem.into());
            }
            Outcome::Good { entry, .. } => {
                let keep_previous = !entry.is_ready()
                    && slot
                        .good
                        .as_ref()
                        .is_some_and(|old| old.uid() == entry.uid() && old.is_ready());
                if let Availability::Unavailable(reason) = &entry.availability {
                    let problem = located(&path, None, reason);
                    report.failures.push(problem.clone());
                    if keep_previous {
                        slot.problem = Some(problem.into());
                    }
                }
                if !keep_previous {
                    touched.insert(entry.uid().clone());
                    slot.good = Some(entry);
                    slot.problem = None;
                }
            }
        }
        let new_uid = slot.good.as_ref().map(|e| e.uid().clone());
        touched.extend(old_uid.iter().cloned());
        touched.extend(new_uid.iter().cloned());
        if old_uid != new_uid {
            if let Some(old) = &old_uid
                && let Some(claim) = self.claims.get_mut(old)
            {
                claim.files.retain(|f| *f != path);
                if claim.files.is_empty() {
                    self.claims.remove(old);
                }
            }
            if let Some(new) = new_uid {
                let files = &mut self.claims.entry(new).or_default().files;
                if let Err(at) = files.binary_search(&path) {
                    files.insert(at, path);
                }
            }
        }
    }

    /// Forgets a removed cluster file.
    fn unindex(&mut self, path: &Path, slot: &Slot, touched: &mut BTreeSet<Arc<str>>) {
        for (reference, _) in &slot.stamps.references {
            if let Some(files) = self.referrers.get_mut(reference) {
                files.remove(path);
                if files.is_empty() {
                    self.referrers.remove(reference);
                }
            }
        }
        if let Some(entry) = &slot.good {
            touched.insert(entry.uid().clone());
            if let Some(claim) = self.claims.get_mut(entry.uid()) {
                claim.files.retain(|f| **f != *path);
                if claim.files.is_empty() {
                    self.claims.remove(entry.uid());
                }
            }
        }
    }

    /// After a tenant change: prepares every good record again under the new tenant (in parallel).
    fn reprepare_all(&mut self, tenant: &Arc<Tenant>, fresh: &HashSet<&Arc<Path>>) {
        let work: Vec<(Arc<Path>, Arc<Record>)> = self
            .slots
            .iter()
            .filter(|(path, _)| !fresh.contains(path))
            .filter_map(|(path, slot)| {
                slot.good
                    .as_ref()
                    .map(|entry| (path.clone(), Arc::clone(&entry.record)))
            })
            .collect();
        let prepared = parallel_map(&work, |(_, record)| record::prepare(record, tenant));
        for ((path, _), entry) in work.iter().zip(prepared) {
            if let Some(Slot {
                good: Some(old), ..
            }) = self.slots.get_mut(path)
            {
                *old = Arc::new(entry);
            }
        }
    }

    /// Rebuilds the served entries of `touched` uids. A uid claimed by more than one file is never taken
    /// over silently: the file that served it before keeps serving and the others are refused and
    /// reported; with no such file (at start, or both new) every claimant is refused and the cluster is
    /// unavailable with a reason naming the files.
    fn assemble(&mut self, touched: &BTreeSet<Arc<str>>, report: &mut ReloadReport) {
        for uid in touched {
            let files = self
                .claims
                .get(uid)
                .map(|claim| claim.files.clone())
                .unwrap_or_default();
            let (entry, conflicts) = self.served_entry(uid, &files);
            let reported = self.conflicts.remove(uid).unwrap_or_default();
            for conflict in &conflicts {
                if !reported.contains(conflict) {
                    report.failures.push(conflict.clone());
                }
            }
            if !conflicts.is_empty() {
                self.conflicts.insert(uid.clone(), conflicts);
            }
            match (&entry, files.as_slice()) {
                (Some(_), [only]) => {
                    if let Some(claim) = self.claims.get_mut(uid) {
                        claim.owner = Some(Arc::clone(only));
                    }
                }
                // Served from its owner (a ready entry with several claimants has one), which stays.
                (Some(entry), _) if entry.is_ready() => {}
                _ => {
                    if let Some(claim) = self.claims.get_mut(uid) {
                        claim.owner = None;
                    }
                }
            }
            let old = self.clusters.get(uid).cloned();
            if let Some(old) = &old {
                self.unavailable -= usize::from(!old.is_ready());
                if let Some(set) = self.by_project.get_mut(old.project()) {
                    set.remove(uid);
                    if set.is_empty() {
                        self.by_project.remove(old.project());
                    }
                }
            }
            let change = match (&old, &entry) {
                _ if !self.list_changes => None,
                (None, None) => None,
                (Some(_), None) => Some(ClusterChange::Removed {
                    uid: uid.to_string(),
                }),
                (old, Some(new)) => match &new.availability {
                    Availability::Unavailable(reason)
                        if old
                            .as_ref()
                            .is_none_or(|o| o.is_ready() || !same_entry(o, new)) =>
                    {
                        Some(ClusterChange::Unavailable {
                            uid: uid.to_string(),
                            reason: reason.clone(),
                        })
                    }
                    Availability::Unavailable(_) => None,
                    Availability::Ready(_) => match old {
                        None => Some(ClusterChange::Added {
                            uid: uid.to_string(),
                            revision: new.revision.to_string(),
                        }),
                        Some(old) if !same_entry(old, new) => Some(ClusterChange::Changed {
                            uid: uid.to_string(),
                            revision: new.revision.to_string(),
                        }),
                        Some(_) => None,
                    },
                },
            };
            match entry {
                Some(entry) => {
                    self.unavailable += usize::from(!entry.is_ready());
                    self.by_project
                        .entry(entry.project().clone())
                        .or_default()
                        .insert(uid.clone());
                    self.clusters.insert(uid.clone(), entry);
                }
                None => {
                    self.clusters.remove(uid);
                }
            }
            report.changes.extend(change);
        }
    }

    /// The entry to serve for `uid` given the files claiming it, and the conflicts to report.
    fn served_entry(
        &self,
        uid: &str,
        files: &[Arc<Path>],
    ) -> (Option<Arc<ClusterEntry>>, Vec<String>) {
        let served = |path: &Arc<Path>| {
            let slot = self.slots.get(path)?;
            let entry = slot.good.as_ref()?;
            if slot.problem.is_none() && entry.is_ready() {
                // Nothing to add: the served map shares the slot's entry.
                return Some(Arc::clone(entry));
            }
            let mut entry = (**entry).clone();
            if let Some(problem) = &slot.problem {
                entry.problems.push(Problem::new(
                    ProblemCode::EditNotApplied,
                    format!(
                        "the latest edit was not applied; the previous version is served: {problem}"
                    ),
                ));
            }
            if let Availability::Unavailable(reason) = &entry.availability {
                entry.problems.push(Problem::new(
                    ProblemCode::ClusterUnavailable,
                    reason.clone(),
                ));
            }
            Some(Arc::new(entry))
        };
        match files {
            [] => (None, Vec::new()),
            [path] => (served(path), Vec::new()),
            _ => match self
                .claims
                .get(uid)
                .and_then(|claim| claim.owner.as_ref())
                .filter(|o| files.contains(o))
            {
                Some(owner) => {
                    let mut entry = served(owner);
                    let mut conflicts = Vec::new();
                    for path in files.iter().filter(|p| *p != owner) {
                        let problem = format!(
                            "{}: uid {uid} is already served from {}; this file is refused until one of them changes its uid",
                            path.display(),
                            owner.display()
                        );
                        if let Some(entry) = entry.as_mut() {
                            Arc::make_mut(entry)
                                .problems
                                .push(Problem::new(ProblemCode::UidConflict, problem.clone()));
                        }
                        conflicts.push(problem);
                    }
                    (entry, conflicts)
                }
                None => {
                    let names: Vec<String> =
                        files.iter().map(|p| p.display().to_string()).collect();
                    let problem = format!(
                        "uid {uid} is claimed by more than one file ({}); none of them is served until the uid is unique",
                        names.join(", ")
                    );
                    let entry = served(&files[0]).map(|mut entry| {
                        let shown = Arc::make_mut(&mut entry);
                        shown.availability = Availability::Unavailable(problem.clone());
                        shown.problems =
                            vec![Problem::new(ProblemCode::UidConflict, problem.clone())];
                        entry
                    });
                    (entry, vec![problem])
                }
            },
        }
    }
}

/// Whether two entries serve the same thing to every caller. (Problems are not compared: a broken edit
/// that leaves the previous version in service changes nothing anyone downloads.)
fn same_entry(a: &ClusterEntry, b: &ClusterEntry) -> bool {
    a.revision == b.revision
        && a.project() == b.project()
        && a.name() == b.name()
        && a.is_ready() == b.is_ready()
        && a.proxy_enabled == b.proxy_enabled
}

/// `*.yaml` / `*.yml`, not hidden.
fn is_cluster_file_name(name: &Path) -> bool {
    let name = name.to_str().unwrap_or_default();
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Reads, parses and prepares one cluster file.
/// A cluster file's text and the stamp of the file as opened; `Err` with what to report instead
/// (nothing when the file is gone).
type ReadText = Result<(String, Option<Stamp>), Option<String>>;

/// Reads one cluster file (the I/O half of loading it).
fn read_cluster_text(origin: &Origin, path: &Arc<Path>) -> ReadText {
    match origin {
        Origin::Demo => {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            match demo::CLUSTERS.iter().find(|(n, _)| *n == name) {
                Some((_, text)) => Ok(((*text).to_owned(), None)),
                None => Err(None),
            }
        }
        Origin::Files { inventory, .. } => {
            // A cluster file may be a symlink (ConfigMap volumes), but not one that leads out of the
            // inventory directory. The metadata of the file as opened is its stamp (no second `stat`).
            let name = Path::new(path.file_name().unwrap_or_default());
            match crate::loading::files::resolving_again(inventory, name, |resolved, links| {
                crate::loading::files::read_opened(
                    resolved,
                    kubeconfig_policy::MAX_DOCUMENT_BYTES as u64,
                    links,
                )
            }) {
                Ok((text, meta)) => Ok((text, Some(Stamp::of(&meta)))),
                Err(crate::loading::files::FileError::Io(e))
                    if e.kind() == std::io::ErrorKind::NotFound =>
                {
                    Err(None)
                }
                Err(e) => Err(Some(e.to_string())),
            }
        }
    }
}

/// What parsing a cluster file needs besides the file.
struct Parsing<'a> {
    base: Option<&'a Path>,
    tenant: &'a Tenant,
    projects: &'a HashSet<Arc<str>>,
    shared: &'a record::SharedAnalyses,
    /// The slots of the files as last applied, to skip those whose text is the same (`None` when
    /// every file is to be prepared afresh).
    previous: Option<&'a HashMap<Arc<Path>, Slot>>,
}

impl Parsing<'_> {
    fn parse(&self, path: &Arc<Path>, read: ReadText) -> Parsed {
        let previous = self.previous.and_then(|slots| slots.get(path));
        parse_cluster_file(
            read,
            self.base,
            path,
            self.tenant,
            self.projects,
            self.shared,
            previous,
        )
    }
}

/// Parses what [`read_cluster_text`] read (the CPU half of loading a cluster file).
fn parse_cluster_file(
    read: ReadText,
    base: Option<&Path>,
    path: &Arc<Path>,
    tenant: &Tenant,
    projects: &HashSet<Arc<str>>,
    shared: &record::SharedAnalyses,
    previous: Option<&Slot>,
) -> Parsed {
    let (text, own) = match read {
        Ok(read) => read,
        Err(None) => {
            return Parsed {
                path: Arc::clone(path),
                stamps: Stamps::default(),
                text: 0,
                references: Vec::new(),
                outcome: None,
            };
        }
        Err(Some(message)) => {
            return Parsed {
                path: Arc::clone(path),
                stamps: Stamps {
                    own: stamp(path),
                    references: Box::default(),
                },
                text: 0,
                references: Vec::new(),
                outcome: Some(Outcome::Unreadable(message)),
            };
        }
    };
    let full_digest = digest(&text);
    let text_digest = short_digest(&full_digest);
    if let Some(slot) = previous
        && slot.text == text_digest
        && slot.problem.is_none()
        && slot
            .stamps
            .references
            .iter()
            .all(|(file, old)| *old == stamp(file))
    {
        return Parsed {
            path: Arc::clone(path),
            stamps: Stamps {
                own,
                references: Box::default(),
            },
            text: text_digest,
            references: Vec::new(),
            outcome: Some(Outcome::Same),
        };
    }
    let mut references = Vec::new();
    let parsed = Record::parse_with_references(&text, &full_digest, base, &mut references);
    let references: Vec<Arc<Path>> = references.into_iter().map(Arc::from).collect();
    let stamps = Stamps {
        own,
        references: references
            .iter()
            .map(|r| (Arc::clone(r), stamp(r)))
            .collect(),
    };
    let outcome = match parsed {
        Ok(mut record) => {
            if let Some(project) = projects.get(&*record.project) {
                record.project = Arc::clone(project);
            }
            let mut record = record.settle(tenant);
            record.share_analysis(shared);
            let record = Arc::new(record);
            Outcome::Good {
                fingerprint: *record.content_digest(),
                entry: Arc::new(record::prepare(&record, tenant)),
            }
        }
        Err(e) => Outcome::Broken {
            fingerprint: digest(&format!("{text}\0{}", e.message)),
            line: e.line,
            message: e.message,
        },
    };
    Parsed {
        path: Arc::clone(path),
        stamps,
        text: text_digest,
        references,
        outcome: Some(outcome),
    }
}

/// Reads a tenant or cluster file: a regular file of at most 1 MiB, never blocking on a special file.
fn read_limited(path: &Path) -> std::io::Result<String> {
    crate::loading::files::read_text(path, kubeconfig_policy::MAX_DOCUMENT_BYTES as u64).map_err(
        |e| match e {
            crate::loading::files::FileError::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads overlap: with a read that only waits (a slow disk), loading takes about
    /// files × delay ÷ readers, far below files × delay ÷ cores; the order is kept.
    #[test]
    fn a_slow_reader_is_overlapped_by_the_other_readers() {
        // Enough files that every reader gets batches of its own.
        let files = READERS * READ_BATCH * 2;
        let items: Vec<usize> = (0..files).collect();
        let delay = std::time::Duration::from_millis(5);
        let cores = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4);
        let started = std::time::Instant::now();
        let mut parsed: Vec<(usize, usize)> = Vec::new();
        pipelined_for_each(
            &items,
            READERS,
            |i| {
                std::thread::sleep(delay);
                *i
            },
            |i, read| (*i, read * 2),
            |result| parsed.push(result),
        );
        let elapsed = started.elapsed();
        assert_eq!(
            parsed,
            items.iter().map(|i| (*i, i * 2)).collect::<Vec<_>>()
        );
        let by_readers = delay * files as u32 / READERS as u32; // 160 ms
        let by_cores = delay * files as u32 / cores as u32; // 1.28 s on 4 cores, 2.56 s on 2
        assert!(
            elapsed < by_cores / 2,
            "{elapsed:?}: reads did not overlap (readers alone: {by_readers:?}, cores alone: {by_cores:?})"
        );
    }

    const UID: &str = "00000000000000000000aa04";
    const FILE: &str = "no-oidc-direct.yaml";

    /// A copy of the access-matrix fixture in a temporary directory.
    fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/matrix");
        let dir = tempfile::tempdir().expect("tempdir");
        let inventory = dir.path().join("inventory");
        std::fs::create_dir_all(inventory.join("pki")).expect("mkdir");
        for entry in std::fs::read_dir(source.join("inventory/pki")).expect("pki") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), inventory.join("pki").join(entry.file_name()))
                .expect("copy");
        }
        for entry in std::fs::read_dir(source.join("inventory")).expect("inventory") {
            let entry = entry.expect("entry");
            if entry.path().is_file() {
                std::fs::copy(entry.path(), inventory.join(entry.file_name())).expect("copy");
            }
        }
        let tenant = dir.path().join("tenant.yaml");
        std::fs::copy(source.join("tenant.yaml"), &tenant).expect("copy");
        (dir, inventory, tenant)
    }

    /// The first load of a fixture.
    fn load(inventory: &Path, tenant: &Path) -> (Inventory, Snapshot, ReloadReport) {
        Inventory::load(Origin::Files {
            inventory: inventory.to_owned(),
            tenant: tenant.to_owned(),
        })
        .expect("load")
    }

    fn rescan() -> Changes {
        Changes {
            rescan: true,
            ..Changes::default()
        }
    }

    fn changed(path: &Path) -> Changes {
        Changes {
            paths: BTreeSet::from([path.to_owned()]),
            ..Changes::default()
        }
    }

    fn kinds(report: &ReloadReport) -> Vec<String> {
        report
            .changes
            .iter()
            .map(|c| match c {
                ClusterChange::Added { uid, .. } => format!("added {uid}"),
                ClusterChange::Changed { uid, .. } => format!("changed {uid}"),
                ClusterChange::Unavailable { uid, .. } => format!("unavailable {uid}"),
                ClusterChange::Removed { uid } => format!("removed {uid}"),
            })
            .collect()
    }

    #[test]
    fn each_change_reads_only_what_it_touches_and_reports_in_order() {
        let (_dir, inventory, tenant) = fixture();
        let (mut loader, snapshot, report) = load(&inventory, &tenant);
        assert_eq!((report.parsed, snapshot.clusters.len()), (4, 4));
        // Nobody can be watching before the first load: it lists no changes (every later one does).
        assert!(report.changes.is_empty(), "{:?}", report.changes);

        // Add.
        let text = std::fs::read_to_string(inventory.join(FILE)).expect("read");
        let added = inventory.join("zz-new.yaml");
        std::fs::write(&added, text.replace(UID, "00000000000000000000bb01")).expect("write");
        let (_, report) = loader.apply(&changed(&added));
        assert_eq!(
            (report.parsed, kinds(&report)),
            (1, vec!["added 00000000000000000000bb01".to_owned()])
        );

        // Edit: exactly one file parsed, one change with a new revision.
        let file = inventory.join(FILE);
        std::fs::write(&file, text.replace("10.0.0.4", "10.0.0.44")).expect("write");
        let before = loader.clusters.get(UID).expect("served").revision;
        let (snapshot, report) = loader.apply(&changed(&file));
        assert_eq!(
            (report.parsed, kinds(&report)),
            (1, vec![format!("changed {UID}")])
        );
        let after = &snapshot.expect("snapshot").clusters[UID];
        assert_ne!(after.revision, before);

        // Break: the previous version stays; nothing anyone downloads changes, so no event.
        std::fs::write(&file, "uid: [unclosed").expect("write");
        let (snapshot, report) = loader.apply(&changed(&file));
        assert_eq!(report.parsed, 1);
        assert!(report.changes.is_empty(), "{:?}", report.changes);
        assert_eq!(report.failures.len(), 1);
        let served = &snapshot.expect("snapshot").clusters[UID];
        assert!(
            served.is_ready()
                && served
                    .problems
                    .iter()
                    .any(|p| p.code == ProblemCode::EditNotApplied)
        );

        // Fix with another edit.
        std::fs::write(&file, text.replace("10.0.0.4", "10.0.0.45")).expect("write");
        let (_, report) = loader.apply(&changed(&file));
        assert_eq!(kinds(&report), vec![format!("changed {UID}")]);

        // A new cluster whose record is unusable from the start.
        let unusable = inventory.join("zz-unusable.yaml");
        std::fs::write(
            &unusable,
            text.replace(UID, "00000000000000000000bb02")
                .replace("https://10.0.0.4", "http://10.0.0.4"),
        )
        .expect("write");
        let (_, report) = loader.apply(&changed(&unusable));
        assert_eq!(
            kinds(&report),
            vec!["unavailable 00000000000000000000bb02".to_owned()]
        );

        // A referenced file: only its referrers are read again (all four matrix files use pki/ca.crt,
        // the new ones too).
        let ca = inventory.join("pki/ca.crt");
        let pem = std::fs::read_to_string(&ca).expect("ca");
        std::fs::write(&ca, format!("{pem}\n")).expect("write");
        let (_, report) = loader.apply(&changed(&ca));
        assert_eq!(report.parsed, 6);
        let proxy_ca = inventory.join("pki/proxy-ca.crt");
        let (_, report) = loader.apply(&changed(&proxy_ca));
        assert_eq!(report.parsed, 0, "nothing refers to it");

        // Delete.
        std::fs::remove_file(&added).expect("remove");
        let (_, report) = loader.apply(&changed(&added));
        assert_eq!(
            kinds(&report),
            vec!["removed 00000000000000000000bb01".to_owned()]
        );

        // A rescan with nothing changed reads nothing.
        let (_, report) = loader.apply(&rescan());
        assert_eq!((report.parsed, report.changes.len()), (0, 0));

        // A tenant edit re-prepares without reading cluster files.
        let tenant_text = std::fs::read_to_string(&tenant).expect("tenant");
        std::fs::write(
            &tenant,
            tenant_text.replace("proxy.matrix.test", "proxy2.matrix.test"),
        )
        .expect("write");
        let (_, report) = loader.apply(&Changes {
            tenant: true,
            ..Changes::default()
        });
        assert_eq!(report.parsed, 0);
        assert!(
            report.changes.iter().any(|c| matches!(c, ClusterChange::Changed { uid, .. } if uid == "00000000000000000000aa01")),
            "the proxied cluster's output changed: {:?}",
            report.changes
        );
    }

    /// Records keep their pack values only when the analysis read the tenant's settings; a tenant
    /// edit then re-analyses those and reuses the kept outcome for the others, reading no file.
    #[test]
    fn a_tenant_edit_reanalyses_packs_that_read_the_tenant_settings() {
        let (_dir, inventory, tenant) = fixture();
        let text = std::fs::read_to_string(inventory.join("oidc-direct.yaml")).expect("read");
        std::fs::write(
            inventory.join("zz-via-proxy.yaml"),
            text.replace("00000000000000000000aa03", "00000000000000000000bb03")
                .replace(
                    "https://idp.matrix.test/realms/platform",
                    "https://{{ .spectro.system.reverseproxy.server }}/dex",
                ),
        )
        .expect("write");
        let (mut loader, snapshot, _) = load(&inventory, &tenant);
        let issuer = |snapshot: &Snapshot, uid: &str| match &snapshot.clusters[uid].availability {
            Availability::Ready(ready) => ready.oidc.login().map(|login| login.issuer_url.clone()),
            Availability::Unavailable(reason) => panic!("{reason}"),
        };
        assert_eq!(
            issuer(&snapshot, "00000000000000000000bb03").as_deref(),
            Some("https://proxy.matrix.test/dex")
        );
        let tenant_text = std::fs::read_to_string(&tenant).expect("tenant");
        std::fs::write(
            &tenant,
            tenant_text.replace("proxy.matrix.test", "proxy2.matrix.test"),
        )
        .expect("write");
        let (snapshot, report) = loader.apply(&Changes {
            tenant: true,
            ..Changes::default()
        });
        let snapshot = snapshot.expect("snapshot");
        assert_eq!(report.parsed, 0);
        assert_eq!(
            issuer(&snapshot, "00000000000000000000bb03").as_deref(),
            Some("https://proxy2.matrix.test/dex")
        );
        assert_eq!(
            issuer(&snapshot, "00000000000000000000aa03").as_deref(),
            Some("https://idp.matrix.test/realms/platform")
        );
    }

    #[test]
    fn listing_index_follows_projects() {
        let (_dir, inventory, tenant) = fixture();
        let (_, snapshot, _) = load(&inventory, &tenant);
        assert_eq!(snapshot.by_project["platform"].len(), 4);
    }

    #[test]
    fn files_written_anew_with_the_same_text_are_not_parsed_again() {
        let (_dir, inventory, tenant) = fixture();
        let (mut loader, _, report) = load(&inventory, &tenant);
        assert_eq!(report.parsed, 4);
        // What a Secret volume does on every edit: every file written anew (a new inode each), one
        // of them with new text.
        let rewrite = |edit: Option<&str>| {
            for entry in std::fs::read_dir(&inventory).expect("dir") {
                let path = entry.expect("entry").path();
                if !path.is_file() {
                    continue;
                }
                let mut text = std::fs::read_to_string(&path).expect("read");
                if edit.is_some_and(|name| path.ends_with(name)) {
                    text = text.replace("10.0.0.4:6443", "10.0.0.4:7443");
                }
                let fresh = path.with_extension("new");
                std::fs::write(&fresh, text).expect("write");
                std::fs::rename(&fresh, &path).expect("rename");
            }
        };
        rewrite(None);
        let (_, report) = loader.apply(&rescan());
        assert_eq!((report.parsed, report.changes.len()), (0, 0));
        rewrite(Some(FILE));
        let (_, report) = loader.apply(&rescan());
        assert_eq!(
            (report.parsed, kinds(&report)),
            (1, vec![format!("changed {UID}")])
        );
        // A referenced file written anew is read again by its referrers (parsed: their text is
        // the same, but what they refer to may not be).
        let pki = inventory.join("pki");
        let referenced = std::fs::read_dir(&pki)
            .expect("pki")
            .next()
            .expect("a file")
            .expect("entry")
            .path();
        let bytes = std::fs::read(&referenced).expect("read");
        std::fs::remove_file(&referenced).expect("remove");
        std::fs::write(&referenced, bytes).expect("write");
        let (_, report) = loader.apply(&rescan());
        assert!(report.parsed >= 1, "{report:?}");
        assert!(report.changes.is_empty(), "{report:?}");
    }

    #[test]
    fn a_file_readable_again_with_its_old_text_clears_its_problem() {
        let (_dir, inventory, tenant) = fixture();
        let (mut loader, _, _) = load(&inventory, &tenant);
        let file = inventory.join(FILE);
        let text = std::fs::read(&file).expect("read");
        // Unreadable for a moment (a FIFO in its place is refused, never opened for a blocking read).
        std::fs::remove_file(&file).expect("remove");
        let made = std::process::Command::new("mkfifo")
            .arg(&file)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let (snapshot, report) = loader.apply(&changed(&file));
        assert_eq!(report.failures.len(), 1, "{report:?}");
        let problems = |snapshot: &Option<Snapshot>| {
            snapshot.as_ref().expect("snapshot").clusters[&Arc::<str>::from(UID)]
                .problems
                .iter()
                .map(|p| p.detail.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(problems(&snapshot).len(), 1, "{:?}", problems(&snapshot));
        // Back, with the text it had: served as before, with no problem left.
        std::fs::remove_file(&file).expect("remove");
        std::fs::write(&file, text).expect("write");
        let (snapshot, report) = loader.apply(&changed(&file));
        assert!(report.failures.is_empty(), "{report:?}");
        assert!(problems(&snapshot).is_empty(), "{:?}", problems(&snapshot));
    }

    #[test]
    fn packs_not_configured_for_the_same_reasons_share_one_analysis() {
        let (_dir, inventory, tenant) = fixture();
        // A second cluster with the same pack (not configured: no clientConfig).
        let text = std::fs::read_to_string(inventory.join(FILE)).expect("read");
        let twin = "00000000000000000000bb02";
        std::fs::write(inventory.join("twin.yaml"), text.replace(UID, twin)).expect("write");
        let (_, snapshot, _) = load(&inventory, &tenant);
        let oidc = |uid: &str| match &snapshot.clusters[&Arc::<str>::from(uid)].availability {
            Availability::Ready(ready) => Arc::clone(&ready.oidc),
            Availability::Unavailable(reason) => panic!("{uid}: {reason}"),
        };
        assert!(!oidc(UID).is_configured());
        assert!(Arc::ptr_eq(&oidc(UID), &oidc(twin)), "one copy for both");
    }
}
