//! Reading the files the service is told about, safely against a hostile inventory: regular files only
//! (a FIFO, a device or a directory is refused without blocking), read with a hard size limit that does
//! not trust the file's reported length, and — for the files a cluster file refers to — confined to the
//! inventory directory after every symlink is resolved.
//!
//! Confinement follows symlinks that stay inside the directory, which is what a Kubernetes Secret or
//! ConfigMap volume consists of (`ca.crt -> ..data/ca.crt`, `..data -> ..2024_01_01_00_00_00.123`).

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Component, Path, PathBuf};

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file")]
    NotRegular,
    #[error("larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("not UTF-8 text")]
    NotText,
    #[error("an absolute path; references are relative to the inventory directory")]
    Absolute,
    #[error("resolves to {0}, outside the inventory directory")]
    Outside(PathBuf),
}

/// Reads a regular file of at most `limit` bytes as text. Opening never blocks (a FIFO is refused once
/// opened, before any read), and at most `limit + 1` bytes are read whatever the file claims.
pub fn read_text(path: &Path, limit: u64) -> Result<String, FileError> {
    read_opened(path, limit, Links::Follow).map(|(text, _)| text)
}

/// How opening a path treats symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links<'a> {
    Follow,
    /// A symlink in the last component is refused with `ELOOP` (`O_NOFOLLOW`).
    Refuse,
    /// Followed, and the file opened must lie inside this canonical directory. This is checked on the
    /// open file (the path the kernel gives for its descriptor), not on the path before opening: a
    /// directory on the way that is swapped for a symlink between the check and the `open` is caught.
    Within(&'a Path),
}

/// [`read_text`], opening with `links`, and also returning the metadata of the file as opened (what
/// a later `stat` compares against). The reported length only sizes the buffer, so a typical file
/// takes one read plus the read that sees its end.
pub fn read_opened(
    path: &Path,
    limit: u64,
    links: Links<'_>,
) -> Result<(String, std::fs::Metadata), FileError> {
    let nofollow = if links == Links::Refuse {
        libc::O_NOFOLLOW
    } else {
        0
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY | nofollow)
        .open(path)?;
    if let Links::Within(base) = links {
        use std::os::fd::AsRawFd as _;
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        if !opened.starts_with(base) || opened == base {
            return Err(FileError::Outside(opened));
        }
    }
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len().min(limit) + 1).unwrap_or(0));
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { limit });
    }
    let text = String::from_utf8(bytes).map_err(|_| FileError::NotText)?;
    Ok((text, meta))
}

/// Resolves `reference` (relative, from a cluster file) against the inventory directory `base`, following
/// symlinks, and refuses anything that ends up outside `base`.
pub fn confine(base: &Path, reference: &Path) -> Result<PathBuf, FileError> {
    if reference.is_absolute()
        || reference
            .components()
            .any(|c| matches!(c, Component::Prefix(_)))
    {
        return Err(FileError::Absolute);
    }
    // A plain name that is not a symlink is an entry of `base` itself: no need to resolve anything
    // (this is every cluster file, read on each load).
    let mut components = reference.components();
    if let (Some(Component::Normal(_)), None) = (components.next(), components.next()) {
        let direct = base.join(reference);
        if std::fs::symlink_metadata(&direct).is_ok_and(|m| !m.file_type().is_symlink()) {
            return Ok(direct);
        }
    }
    let base = base.canonicalize()?;
    let resolved = base.join(reference).canonicalize()?;
    if resolved.starts_with(&base) && resolved != base {
        Ok(resolved)
    } else {
        Err(FileError::Outside(resolved))
    }
}

/// Reads a file a cluster file refers to: confined to `base`, regular, at most `limit` bytes.
pub fn read_confined(base: &Path, reference: &Path, limit: u64) -> Result<String, FileError> {
    resolving_again(base, reference, |resolved, links| {
        read_opened(resolved, limit, links).map(|(text, _)| text)
    })
}

/// Resolves `reference` under `base` ([`confine`]) and reads it with `read`, resolving again when the
/// file vanished in between while its name is still there. A Secret or ConfigMap volume swaps its
/// `..data` link and then removes the previous data directory: a reader that resolved the link just
/// before the swap finds its file gone, though the file (its new version) is there. Without the
/// second look such a file was taken for deleted, and its cluster dropped until the next change.
///
/// A plain name (every cluster file) is first opened as it is, refusing a symlink: a regular file
/// there is what confinement would have allowed, with no `lstat` before the `open`; a symlink (a
/// volume's) is then resolved and confined.
///
/// What is read through a resolved path is checked again once open ([`Links::Within`]): whoever
/// writes the inventory could otherwise swap a directory on the confined path for a symlink leading
/// out of it between the check and the `open` (a race found by an attack on the loader, won within
/// seconds with `renameat2(RENAME_EXCHANGE)`).
pub fn resolving_again<T>(
    base: &Path,
    reference: &Path,
    read: impl Fn(&Path, Links<'_>) -> Result<T, FileError>,
) -> Result<T, FileError> {
    const ATTEMPTS: usize = 3;
    let mut components = reference.components();
    if let (Some(Component::Normal(_)), None) = (components.next(), components.next()) {
        match read(&base.join(reference), Links::Refuse) {
            Err(FileError::Io(error))
                if error.raw_os_error() == Some(libc::ELOOP)
                    || error.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
    }
    let canonical_base = base.canonicalize()?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = confine(base, reference)
            .and_then(|resolved| read(&resolved, Links::Within(&canonical_base)));
        match &result {
            Err(FileError::Io(error))
                if error.kind() == std::io::ErrorKind::NotFound
                    && attempt < ATTEMPTS
                    && std::fs::symlink_metadata(base.join(reference)).is_ok() => {}
            _ => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the soak (bench/soak.sh): a cluster file read while its Secret volume swapped
    /// `..data` was taken for deleted, and its cluster answered "not found" until the next change.
    #[test]
    fn a_volume_swap_between_resolving_and_reading_is_read_again() {
        let outer = tempfile::tempdir().unwrap();
        let base = outer.path().join("inventory");
        std::fs::create_dir_all(base.join("..old")).unwrap();
        std::fs::write(base.join("..old/c.yaml"), "old").unwrap();
        std::os::unix::fs::symlink("..old", base.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/c.yaml", base.join("c.yaml")).unwrap();
        let swapped = std::cell::Cell::new(false);
        let read = |resolved: &Path, links: Links<'_>| {
            if !swapped.replace(true) {
                // The kubelet's swap lands between the resolution and the read.
                std::fs::create_dir(base.join("..new")).unwrap();
                std::fs::write(base.join("..new/c.yaml"), "new").unwrap();
                std::os::unix::fs::symlink("..new", base.join("..data_tmp")).unwrap();
                std::fs::rename(base.join("..data_tmp"), base.join("..data")).unwrap();
                std::fs::remove_dir_all(base.join("..old")).unwrap();
            }
            read_opened(resolved, 100, links).map(|(text, _)| text)
        };
        let text = resolving_again(&base, Path::new("c.yaml"), read).unwrap();
        assert_eq!(text, "new");
        // A name that is really gone is not looked for again.
        std::fs::remove_file(base.join("c.yaml")).unwrap();
        assert!(matches!(
            resolving_again(&base, Path::new("c.yaml"), |p, links| read_opened(p, 100, links)),
            Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound
        ));
    }

    /// Found by an attack on the loader: a directory on a confined path swapped for a symlink out of
    /// the inventory between the confinement check and the `open` got an outside file served.
    #[test]
    fn a_directory_swapped_for_an_outside_link_after_the_check_is_refused() {
        let outer = tempfile::tempdir().unwrap();
        let base = outer.path().join("inventory");
        std::fs::create_dir_all(base.join("pki")).unwrap();
        std::fs::write(base.join("pki/ca.crt"), "inside").unwrap();
        std::fs::create_dir_all(outer.path().join("outside")).unwrap();
        std::fs::write(outer.path().join("outside/ca.crt"), "outside secret").unwrap();
        let swapped = std::cell::Cell::new(false);
        let read = |resolved: &Path, links: Links<'_>| {
            if !swapped.replace(true) {
                // The swap lands between the confinement check and the open.
                std::fs::rename(base.join("pki"), base.join("pki.old")).unwrap();
                std::os::unix::fs::symlink(outer.path().join("outside"), base.join("pki")).unwrap();
            }
            read_opened(resolved, 100, links).map(|(text, _)| text)
        };
        let result = resolving_again(&base, Path::new("pki/ca.crt"), read);
        assert!(
            matches!(&result, Err(FileError::Outside(path)) if path.ends_with("outside/ca.crt")),
            "{result:?}"
        );
        // Without the swap, the same file is read.
        std::fs::remove_file(base.join("pki")).unwrap();
        std::fs::rename(base.join("pki.old"), base.join("pki")).unwrap();
        assert_eq!(
            read_confined(&base, Path::new("pki/ca.crt"), 100).unwrap(),
            "inside"
        );
    }

    #[test]
    fn confinement_allows_volume_symlinks_and_refuses_escapes() {
        let outer = tempfile::tempdir().unwrap();
        let base = outer.path().join("inventory");
        std::fs::create_dir_all(base.join("..2024_01_01")).unwrap();
        std::fs::write(base.join("..2024_01_01/ca.crt"), "ca").unwrap();
        std::os::unix::fs::symlink("..2024_01_01", base.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/ca.crt", base.join("ca.crt")).unwrap();
        std::fs::write(outer.path().join("secret"), "jwt secret").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret"), base.join("escape")).unwrap();

        assert_eq!(
            read_confined(&base, Path::new("ca.crt"), 100).unwrap(),
            "ca"
        );
        assert!(matches!(
            read_confined(&base, Path::new("../secret"), 100),
            Err(FileError::Outside(_))
        ));
        assert!(matches!(
            read_confined(&base, Path::new("escape"), 100),
            Err(FileError::Outside(_))
        ));
        assert!(matches!(
            read_confined(&base, &outer.path().join("secret"), 100),
            Err(FileError::Absolute)
        ));
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(matches!(read_text(&fifo, 100), Err(FileError::NotRegular)));
        assert!(matches!(
            read_text(Path::new("/dev/zero"), 100),
            Err(FileError::NotRegular)
        ));
        assert!(matches!(
            read_text(dir.path(), 100),
            Err(FileError::NotRegular)
        ));
        std::fs::write(dir.path().join("big"), vec![b'a'; 101]).unwrap();
        assert!(matches!(
            read_text(&dir.path().join("big"), 100),
            Err(FileError::TooLarge { limit: 100 })
        ));
    }
}
