//! Where the agent puts kubeconfigs: one file per cluster and asset in `--out-dir`, and/or one merged
//! kubeconfig. Every write is atomic (a temporary file in the same directory, fsync, rename, fsync of
//! the directory), so a reader sees the old file or the new one, never a part; a file whose bytes are
//! unchanged is never rewritten; files are created with mode 0600.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

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

/// The files held, by (cluster uid, asset).
pub type Files = BTreeMap<(String, Asset), Held>;

/// The name each held file has in the output directory.
pub type Names = BTreeMap<(String, Asset), String>;

/// Where files go.
#[derive(Debug, Clone)]
pub struct Output {
    pub out_dir: Option<PathBuf>,
    pub merged: Option<PathBuf>,
}

/// Writes `bytes` to `path` atomically with mode 0600, unless the file already holds exactly them.
/// Returns whether it wrote.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|current| current == bytes) {
        return Ok(false);
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.tmp-{}", std::process::id()));
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

/// The file name of each held file in the output directory: the server's name, or, when two
/// clusters share a name (in different projects), `<uid>.`-prefixed for all but the first by uid.
pub fn file_names(files: &Files) -> Names {
    let mut taken: HashSet<&str> = HashSet::new();
    files
        .iter()
        .map(|(key, held)| {
            let name = if taken.insert(&held.file_name) {
                held.file_name.clone()
            } else {
                format!("{}.{}", key.0, held.file_name)
            };
            (key.clone(), name)
        })
        .collect()
}

/// One kubeconfig holding every held file, a context per cluster and asset. Names come from the
/// files themselves; a name used by two clusters gets the cluster uid appended. The current context
/// is the first one (by cluster uid).
pub fn merged(files: &Files) -> Result<String, String> {
    let mut clusters = Vec::new();
    let mut users = Vec::new();
    let mut contexts = Vec::new();
    // Names are unique per kind (a user and a context may share a name, as rendered files do).
    let mut used: [BTreeSet<String>; 3] = Default::default();
    for ((uid, _), held) in files {
        let document: Value = serde_norway::from_str(&held.yaml)
            .map_err(|e| format!("{}: not YAML: {e}", held.file_name))?;
        let first = |key: &str| -> Result<Mapping, String> {
            document
                .get(key)
                .and_then(Value::as_sequence)
                .and_then(|s| s.first())
                .and_then(Value::as_mapping)
                .cloned()
                .ok_or_else(|| format!("{}: no {key} entry", held.file_name))
        };
        let (mut cluster, mut user, mut context) =
            (first("clusters")?, first("users")?, first("contexts")?);
        let name_of = |m: &Mapping| {
            m.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let unique = |name: String, used: &mut BTreeSet<String>| {
            if used.insert(name.clone()) {
                name
            } else {
                let renamed = format!("{name}-{uid}");
                used.insert(renamed.clone());
                renamed
            }
        };
        let cluster_name = unique(name_of(&cluster), &mut used[0]);
        let user_name = unique(name_of(&user), &mut used[1]);
        let context_name = unique(name_of(&context), &mut used[2]);
        cluster.insert("name".into(), cluster_name.clone().into());
        user.insert("name".into(), user_name.clone().into());
        context.insert("name".into(), context_name.into());
        if let Some(inner) = context.get_mut("context").and_then(Value::as_mapping_mut) {
            inner.insert("cluster".into(), cluster_name.into());
            inner.insert("user".into(), user_name.into());
        }
        clusters.push(Value::Mapping(cluster));
        users.push(Value::Mapping(user));
        contexts.push(Value::Mapping(context));
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
    serde_norway::to_string(&Value::Mapping(root)).map_err(|e| e.to_string())
}

/// What applying a state to disk did.
#[derive(Debug, Default)]
pub struct Applied {
    pub written: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.written.is_empty() && self.removed.is_empty()
    }
}

impl Output {
    /// Makes the files on disk match `files`, touching only what changed: writes the files of `dirty`
    /// keys and of keys whose name changed since `previous_names`, removes the per-cluster files no
    /// longer held, rewrites the merged file when it differs. Returns what it did and the names now.
    pub fn apply(
        &self,
        files: &Files,
        dirty: &BTreeSet<(String, Asset)>,
        previous_names: &Names,
    ) -> std::io::Result<(Applied, Names)> {
        let mut applied = Applied::default();
        let names = file_names(files);
        if let Some(dir) = &self.out_dir {
            let current: BTreeSet<&String> = names.values().collect();
            for name in previous_names.values() {
                if !current.contains(name) {
                    let path = dir.join(name);
                    match std::fs::remove_file(&path) {
                        Ok(()) => applied.removed.push(path),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            for (key, name) in &names {
                if !dirty.contains(key) && previous_names.get(key) == Some(name) {
                    continue;
                }
                let path = dir.join(name);
                if write_atomic(&path, files[key].yaml.as_bytes())? {
                    applied.written.push(path);
                }
            }
        }
        if let Some(path) = &self.merged {
            let text = merged(files).map_err(std::io::Error::other)?;
            if write_atomic(path, text.as_bytes())? {
                applied.written.push(path.clone());
            }
        }
        Ok((applied, names))
    }
}

#[cfg(test)]
mod tests {
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
    fn merged_names_every_context_uniquely() {
        let mut files = Files::new();
        files.insert(("u1".into(), Asset::Kubeconfig), held("east"));
        files.insert(("u2".into(), Asset::Kubeconfig), held("east"));
        files.insert(("u3".into(), Asset::Kubeconfig), held("west"));
        let text = merged(&files).expect("merged");
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
            ["east.kubeconfig", "u2.east.kubeconfig", "west.kubeconfig"]
        );
    }
}
