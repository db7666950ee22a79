//! Directories laid out the way Kubernetes mounts a Secret or ConfigMap volume: the files live in a
//! timestamped directory, `..data` links to it, and each visible name links through `..data`. Every
//! change is a new timestamped directory and one atomic rename of `..data` over the old link, as the
//! kubelet does it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// A Secret-style volume: visible names → `..data/<name>` → `..<generation>/<name>`.
pub struct Volume {
    root: PathBuf,
    generation: u64,
}

impl Volume {
    /// Creates the volume at `root` holding `files` (name, bytes).
    pub fn create(root: &Path, files: &[(String, Vec<u8>)]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)?;
        let mut volume = Volume {
            root: root.to_owned(),
            generation: 0,
        };
        let data = volume.next_directory()?;
        for (name, bytes) in files {
            std::fs::write(data.join(name), bytes)?;
        }
        volume.publish(&data)?;
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name))?;
        }
        Ok(volume)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The current bytes of `name`.
    pub fn read(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        std::fs::read(self.root.join("..data").join(name)).with_context(|| format!("read {name}"))
    }

    /// Replaces the bytes of some files in one swap; the others are carried over as hard links to
    /// the previous generation (same inode, same metadata: unchanged to anyone who looks).
    pub fn update(&mut self, changed: &[(&str, &[u8])]) -> anyhow::Result<()> {
        self.swap(changed, false)
    }

    /// Like [`Volume::update`], but every file is written afresh, as the kubelet writes a Secret
    /// whose contents changed: new inodes and times for unchanged files too.
    pub fn rewrite(&mut self, changed: &[(&str, &[u8])]) -> anyhow::Result<()> {
        self.swap(changed, true)
    }

    fn swap(&mut self, changed: &[(&str, &[u8])], copy_all: bool) -> anyhow::Result<()> {
        let old = std::fs::read_link(self.root.join("..data"))?;
        let old = self.root.join(old);
        let data = self.next_directory()?;
        for entry in std::fs::read_dir(&old)? {
            let entry = entry?;
            let name = entry.file_name();
            if changed.iter().any(|(n, _)| std::ffi::OsStr::new(n) == name) {
                continue;
            }
            if copy_all {
                std::fs::copy(entry.path(), data.join(&name))?;
            } else {
                std::fs::hard_link(entry.path(), data.join(&name))?;
            }
        }
        for (name, bytes) in changed {
            std::fs::write(data.join(name), bytes)?;
        }
        self.publish(&data)?;
        std::fs::remove_dir_all(&old)?;
        Ok(())
    }

    fn next_directory(&mut self) -> anyhow::Result<PathBuf> {
        self.generation += 1;
        let dir = self
            .root
            .join(format!("..2026_12_04_00_00_00.{:09}", self.generation));
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    /// Points `..data` at `data` in one rename.
    fn publish(&self, data: &Path) -> anyhow::Result<()> {
        let link = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&link);
        let target = data.file_name().context("no file name")?;
        std::os::unix::fs::symlink(target, &link)?;
        std::fs::rename(&link, self.root.join("..data"))?;
        Ok(())
    }
}
