//! Where the agent puts kubeconfigs: one file per cluster and asset in `--out-dir`, and/or one merged
//! kubeconfig. Every write is atomic (a temporary file in the same directory, fsync, rename, fsync of
//! the directory), so a reader sees the old file or the new one, never a part; a file whose bytes are
//! unchanged is never rewritten; files are created with mode 0600. What is already on disk is not
//! trusted either: the old file is compared only when it is a regular file of the new file's size,
//! opened without following a symlink and without blocking, so a FIFO, a device or a link planted in
//! its place is simply replaced. One file that cannot be written fails alone.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use crate::naming;

/// Which file of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Asset {
    Kubeconfig,
    AdminKubeconfig,
}

impl Asset {
    /// The name the server uses in `known_etags` keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Asset::Kubeconfig => "kubeconfig",
            Asset::AdminKubeconfig => "admin-kubeconfig",
        }
    }
}

/// A file the agent holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub cluster_name: String,
    /// The server's file name (`<name>.kubeconfig`, `admin.<name>.kubeconfig`).
    pub file_name: String,
    pub etag: String,
    pub yaml: String,
}

/// A held file: (cluster uid, asset).
pub type Key = (String, Asset);

/// The files held, by key.
pub type Files = BTreeMap<Key, Held>;

/// The name each held file has in the output directory.
pub type Names = BTreeMap<Key, String>;

/// Where files go.
#[derive(Debug, Clone)]
pub struct Output {
    pub out_dir: Option<PathBuf>,
    pub merged: Option<PathBuf>,
}

/// Whether `path` is a regular file holding exactly `bytes`. Opened without following a symlink and
/// without blocking (a FIFO or device is not a match, and is never read); read only when its size,
/// taken from the open file, is that of `bytes`, so at most that much is read.
fn holds_exactly(path: &Path, bytes: &[u8]) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if !meta.is_file() || meta.len() != bytes.len() as u64 {
        return false;
    }
    let mut current = Vec::with_capacity(bytes.len());
    file.take(bytes.len() as u64 + 1)
        .read_to_end(&mut current)
        .is_ok_and(|_| current == bytes)
}

/// Writes `bytes` to `path` atomically with mode 0600, unless the file already holds exactly them.
/// Returns whether it wrote. Whatever was at `path` (a link included) is replaced, never followed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    if holds_exactly(path, bytes) {
        return Ok(false);
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        return Err(std::io::Error::other(format!(
            "{} names no file",
            path.display()
        )));
    };
    let temporary = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&temporary);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.map(|()| true)
}

/// Removes temporary files a killed agent may have left in `dir`.
pub fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The file name of each held file in the output directory ([`naming::assign`]): the server's name
/// when it is free and fits, else one the agent makes; always one safe, unique component.
pub fn file_names(files: &Files) -> Names {
    naming::assign(
        files
            .iter()
            .map(|(key, held)| (key, key.0.as_str(), key.1.as_str(), held.file_name.as_str())),
    )
}

/// `name`, or when another entry of its kind took it, `name-<uid>` (then `-2`, `-3`, … until free):
/// a cluster named like another's renamed entry keeps an entry of its own.
fn unique(name: String, uid: &str, used: &mut BTreeSet<String>) -> String {
    if used.insert(name.clone()) {
        return name;
    }
    let renamed = format!("{name}-{uid}");
    let mut candidate = renamed.clone();
    let mut n = 2u64;
    while !used.insert(candidate.clone()) {
        candidate = format!("{renamed}-{n}");
        n += 1;
    }
    candidate
}

/// The first entry of each kind in one file, renamed to be unique in the merged file.
fn merged_entries(
    uid: &str,
    held: &Held,
    used: &mut [BTreeSet<String>; 3],
) -> Result<[Value; 3], String> {
    let document: Value =
        serde_norway::from_str(&held.yaml).map_err(|e| format!("not YAML: {e}"))?;
    let first = |key: &str| -> Result<Mapping, String> {
        document
            .get(key)
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
            .and_then(Value::as_mapping)
            .cloned()
            .ok_or_else(|| format!("no {key} entry"))
    };
    let (mut cluster, mut user, mut context) =
        (first("clusters")?, first("users")?, first("contexts")?);
    let name_of = |m: &Mapping| {
        m.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let cluster_name = unique(name_of(&cluster), uid, &mut used[0]);
    let user_name = unique(name_of(&user), uid, &mut used[1]);
    let context_name = unique(name_of(&context), uid, &mut used[2]);
    cluster.insert("name".into(), cluster_name.clone().into());
    user.insert("name".into(), user_name.clone().into());
    context.insert("name".into(), context_name.into());
    if let Some(inner) = context.get_mut("context").and_then(Value::as_mapping_mut) {
        inner.insert("cluster".into(), cluster_name.into());
        inner.insert("user".into(), user_name.into());
    }
    Ok([
        Value::Mapping(cluster),
        Value::Mapping(user),
        Value::Mapping(context),
    ])
}

/// One kubeconfig holding every held file, a context per cluster and asset, and the files left out
/// (not a kubeconfig) with the reason. Names come from the files themselves; a name used by two
/// clusters gets the cluster uid appended. The current context is the first one (by cluster uid).
pub fn merged(files: &Files) -> (String, Vec<(Key, String)>) {
    let mut clusters = Vec::new();
    let mut users = Vec::new();
    let mut contexts = Vec::new();
    let mut skipped = Vec::new();
    // Names are unique per kind (a user and a context may share a name, as rendered files do).
    let mut used: [BTreeSet<String>; 3] = Default::default();
    for (key, held) in files {
        // Entries are taken only once the whole file is usable, so that a bad file reserves no name.
        let mut trial = used.clone();
        match merged_entries(&key.0, held, &mut trial) {
            Ok([cluster, user, context]) => {
                used = trial;
                clusters.push(cluster);
                users.push(user);
                contexts.push(context);
            }
            Err(why) => skipped.push((key.clone(), why)),
        }
    }
    let current = contexts
        .first()
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut root = Mapping::new();
    root.insert("apiVersion".into(), "v1".into());
    root.insert("kind".into(), "Config".into());
    root.insert("clusters".into(), Value::Sequence(clusters));
    root.insert("contexts".into(), Value::Sequence(contexts));
    root.insert("users".into(), Value::Sequence(users));
    root.insert("current-context".into(), current.into());
    root.insert("preferences".into(), Value::Mapping(Mapping::new()));
    // A mapping of strings and sequences always serializes; an empty text would be a failure below.
    let text = serde_norway::to_string(&Value::Mapping(root)).unwrap_or_default();
    (text, skipped)
}

/// A file that could not be put on disk.
#[derive(Debug)]
pub struct Failure {
    /// The held file it was for (none for the merged file as a whole, or a removal).
    pub key: Option<Key>,
    pub path: PathBuf,
    pub error: String,
}

/// What applying a state to disk did.
#[derive(Debug, Default)]
pub struct Applied {
    pub written: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub failed: Vec<Failure>,
}

impl Applied {
    /// Whether nothing on disk changed.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty() && self.removed.is_empty()
    }
}

impl Output {
    /// Makes the files on disk match `files`, touching only what changed: writes the files of `dirty`
    /// keys and of keys whose name changed since `previous_names`, removes the per-cluster files no
    /// longer held, rewrites the merged file when it differs. A file that fails is reported in
    /// [`Applied::failed`] and the others are still written. Returns what it did and the names now.
    pub fn apply(
        &self,
        files: &Files,
        dirty: &BTreeSet<Key>,
        previous_names: &Names,
    ) -> (Applied, Names) {
        let mut applied = Applied::default();
        let names = file_names(files);
        // A file that could not be removed stays in the names returned, so the next apply tries again.
        let mut kept = Names::new();
        if let Some(dir) = &self.out_dir {
            let current: BTreeSet<&String> = names.values().collect();
            for (key, name) in previous_names {
                if !current.contains(name) {
                    let path = dir.join(name);
                    match std::fs::remove_file(&path) {
                        Ok(()) => applied.removed.push(path),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            if !names.contains_key(key) {
                                kept.insert(key.clone(), name.clone());
                            }
                            applied.failed.push(Failure {
                                key: None,
                                path,
                                error: format!("cannot remove: {e}"),
                            });
                        }
                    }
                }
            }
            for (key, name) in &names {
                if !dirty.contains(key) && previous_names.get(key) == Some(name) {
                    continue;
                }
                let path = dir.join(name);
                match write_atomic(&path, files[key].yaml.as_bytes()) {
                    Ok(true) => applied.written.push(path),
                    Ok(false) => {}
                    Err(e) => applied.failed.push(Failure {
                        key: Some(key.clone()),
                        path,
                        error: e.to_string(),
                    }),
                }
            }
        }
        if let Some(path) = &self.merged {
            let (text, skipped) = merged(files);
            for (key, why) in skipped {
                applied.failed.push(Failure {
                    path: path.clone(),
                    error: format!("cluster {} ({}) left out: {why}", key.0, key.1.as_str()),
                    key: None,
                });
            }
            match write_atomic(path, text.as_bytes()) {
                Ok(true) => applied.written.push(path.clone()),
                Ok(false) => {}
                Err(e) => applied.failed.push(Failure {
                    key: None,
                    path: path.clone(),
                    error: e.to_string(),
                }),
            }
        }
        let mut names = names;
        names.extend(kept);
        (applied, names)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn kubeconfig(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: https://{name}.test:6443\ncontexts:\n- name: {name}-admin\n  context:\n    cluster: {name}\n    user: {name}-admin\ncurrent-context: {name}-admin\nusers:\n- name: {name}-admin\n  user:\n    token: t\n"
        )
    }

    fn held(name: &str) -> Held {
        Held {
            cluster_name: name.to_owned(),
            file_name: format!("{name}.kubeconfig"),
            etag: String::new(),
            yaml: kubeconfig(name),
        }
    }

    #[test]
    fn unchanged_bytes_are_not_rewritten_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.kubeconfig");
        assert!(write_atomic(&path, b"one").expect("write"));
        assert!(!write_atomic(&path, b"one").expect("write"));
        assert!(write_atomic(&path, b"two").expect("write"));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }

    #[test]
    fn a_cluster_named_like_a_disambiguated_file_keeps_its_own_file() {
        let mut files = Files::new();
        files.insert(("u1".into(), Asset::Kubeconfig), held("east"));
        files.insert(("u2".into(), Asset::Kubeconfig), held("east"));
        files.insert(("u3".into(), Asset::Kubeconfig), held("u2.east"));
        let names = file_names(&files);
        let distinct: HashSet<&String> = names.values().collect();
        assert_eq!(distinct.len(), 3, "{names:?}");
        let dir = tempfile::tempdir().expect("tempdir");
        let output = Output {
            out_dir: Some(dir.path().to_owned()),
            merged: None,
        };
        let dirty = files.keys().cloned().collect();
        let (applied, _) = output.apply(&files, &dirty, &Names::new());
        assert!(applied.failed.is_empty(), "{applied:?}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 3);
    }

    #[test]
    fn a_fifo_or_device_in_place_of_a_file_is_replaced_without_reading_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("a.kubeconfig");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .expect("mkfifo")
                .success()
        );
        let path = fifo.clone();
        let (done, finished) = std::sync::mpsc::channel();
        // A thread: on a FIFO, a blocking open would never return.
        std::thread::spawn(move || {
            let _ = done.send(write_atomic(&path, b"one").map_err(|e| e.to_string()));
        });
        let result = finished
            .recv_timeout(std::time::Duration::from_secs(3))
            .expect("write_atomic returned within 3 s");
        assert_eq!(result, Ok(true));
        assert!(std::fs::symlink_metadata(&fifo).expect("meta").is_file());
        assert_eq!(std::fs::read(&fifo).expect("read"), b"one");
    }

    #[test]
    fn a_link_in_place_of_a_file_is_replaced_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"theirs").expect("target");
        // Neither a link to a file (never written through) nor one to an endless device (never read).
        for (name, to) in [
            ("a.kubeconfig", target.as_path()),
            ("b.kubeconfig", Path::new("/dev/zero")),
        ] {
            let path = dir.path().join(name);
            std::os::unix::fs::symlink(to, &path).expect("symlink");
            assert!(write_atomic(&path, b"ours").expect("write"));
            assert!(std::fs::symlink_metadata(&path).expect("meta").is_file());
            assert_eq!(std::fs::read(&path).expect("read"), b"ours");
        }
        assert_eq!(std::fs::read(&target).expect("target"), b"theirs");
    }

    #[test]
    fn a_long_cluster_name_is_written_and_blocks_no_other_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = Output {
            out_dir: Some(dir.path().to_owned()),
            merged: None,
        };
        let mut files = Files::new();
        files.insert(("u1".into(), Asset::Kubeconfig), held(&"l".repeat(253)));
        files.insert(("u2".into(), Asset::Kubeconfig), held("east"));
        let dirty = files.keys().cloned().collect();
        let _ = output.apply(&files, &dirty, &Names::new());
        let mut on_disk: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        assert_eq!(on_disk.len(), 2, "{on_disk:?}");
        assert!(on_disk.iter().all(|n| n.len() <= 255));
    }

    #[test]
    fn a_file_that_cannot_be_removed_is_removed_at_the_next_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = Output {
            out_dir: Some(dir.path().to_owned()),
            merged: None,
        };
        let mut files = Files::new();
        files.insert(("u1".into(), Asset::Kubeconfig), held("east"));
        let dirty = files.keys().cloned().collect();
        let (_, names) = output.apply(&files, &dirty, &Names::new());
        // The file is replaced by something unlink cannot remove, then access ends.
        let path = dir.path().join("east.kubeconfig");
        std::fs::remove_file(&path).expect("rm");
        std::fs::create_dir(&path).expect("dir");
        let (applied, names) = output.apply(&Files::new(), &BTreeSet::new(), &names);
        assert_eq!(applied.failed.len(), 1, "{applied:?}");
        std::fs::remove_dir(&path).expect("rmdir");
        std::fs::write(&path, "stale").expect("stale");
        let (applied, names) = output.apply(&Files::new(), &BTreeSet::new(), &names);
        assert!(applied.failed.is_empty(), "{applied:?}");
        assert_eq!(applied.removed.as_slice(), std::slice::from_ref(&path));
        assert!(names.is_empty() && !path.exists());
    }

    #[test]
    fn merged_names_every_context_uniquely() {
        let mut files = Files::new();
        files.insert(("u1".into(), Asset::Kubeconfig), held("east"));
        files.insert(("u2".into(), Asset::Kubeconfig), held("east"));
        files.insert(("u3".into(), Asset::Kubeconfig), held("west"));
        let (text, skipped) = merged(&files);
        assert!(skipped.is_empty());
        let doc: Value = serde_norway::from_str(&text).expect("yaml");
        let names: Vec<&str> = doc["contexts"]
            .as_sequence()
            .expect("contexts")
            .iter()
            .map(|c| c["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["east-admin", "east-admin-u2", "west-admin"]);
        assert_eq!(
            doc["contexts"][1]["context"]["cluster"].as_str(),
            Some("east-u2")
        );
        assert_eq!(doc["current-context"].as_str(), Some("east-admin"));
        let file_names: Vec<String> = file_names(&files).into_values().collect();
        assert_eq!(
            file_names,
            ["east.kubeconfig", "u2~east.kubeconfig", "west.kubeconfig"]
        );
    }
}
