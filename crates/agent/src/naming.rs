//! The names of the agent's files in `--out-dir`. The server suggests a file name for each file, but
//! the server is not trusted with paths: a name is used only when it is one safe path component in
//! the server's own charset (`[A-Za-z0-9._-]`, not starting with `.` or `-`), so it can neither leave
//! the directory nor name the directory itself or one of the agent's temporary files. Every name on
//! disk, temporary affix included, fits the 255-byte file-name limit: a longer one is shortened to a
//! prefix plus a hash of the full name. Names the agent makes (shortened ones, and `<uid>~<name>` when
//! two files would share a name) carry a `~`, which the server's charset lacks, so a cluster can never
//! be named like another cluster's file.

use std::collections::{BTreeMap, HashSet};

use sha2::{Digest as _, Sha256};

/// The longest file name Linux file systems accept, in bytes.
pub const FILE_NAME_LIMIT: usize = 255;
/// What a temporary file adds to a name: `.` before it and `.tmp-<pid>` after (a pid has at most
/// seven digits: the kernel's `pid_max` is at most 2^22).
pub const TEMPORARY_AFFIX: usize = 1 + ".tmp-".len() + 7;
/// The longest name the agent gives a file, so that its temporary file fits too.
pub const MAX_NAME: usize = FILE_NAME_LIMIT - TEMPORARY_AFFIX;
/// The longest file name accepted from the server (its names are at most `admin.` + 253 +
/// `.kubeconfig`); longer ones are refused rather than shortened.
pub const MAX_SERVER_NAME: usize = 512;
/// The mark of a name the agent made; not in the server's charset.
const MARK: char = '~';
const SUFFIX: &str = ".kubeconfig";
/// Hex digits of the hash that keeps a shortened name unique.
const HASH_DIGITS: usize = 16;

/// Whether the server's `file_name` may be used in `--out-dir`: one path component of
/// `[A-Za-z0-9._-]`, not starting with `.` or `-` (so never `.`, `..`, empty, hidden or an option),
/// at most [`MAX_SERVER_NAME`] bytes.
pub fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVER_NAME
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `uid` is a cluster uid as the server makes them: `[a-z0-9-]{1,64}`.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// `name` itself when it fits [`MAX_NAME`]; otherwise its first bytes, `~`, a hash of the whole name
/// and `.kubeconfig`.
pub fn fitted(name: &str) -> String {
    if name.len() <= MAX_NAME {
        return name.to_owned();
    }
    let stem = name.strip_suffix(SUFFIX).unwrap_or(name);
    let room = MAX_NAME - 1 - HASH_DIGITS - SUFFIX.len();
    // Every character the agent accepts or adds is ASCII, but cut on a boundary all the same.
    let mut cut = room.min(stem.len());
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}{MARK}{}{SUFFIX}",
        &stem[..cut],
        &digest(name)[..HASH_DIGITS]
    )
}

/// The name of each file: the server's (fitted), else `<uid>~<server's name>` (fitted) when an
/// earlier file (by uid) took it, else `~<hash of uid, asset and name>.kubeconfig`, which no other
/// rule makes. Names are unique and within [`MAX_NAME`] bytes.
pub fn assign<'a, K: Ord + Clone + 'a>(
    files: impl IntoIterator<Item = (&'a K, &'a str, &'a str, &'a str)>,
) -> BTreeMap<K, String> {
    let mut taken: HashSet<String> = HashSet::new();
    let mut names = BTreeMap::new();
    for (key, uid, asset, file_name) in files {
        let plain = fitted(file_name);
        let name = if taken.contains(&plain) {
            let prefixed = fitted(&format!("{uid}{MARK}{file_name}"));
            if taken.contains(&prefixed) {
                format!(
                    "{MARK}{}{SUFFIX}",
                    digest(&format!("{uid}\n{asset}\n{file_name}"))
                )
            } else {
                prefixed
            }
        } else {
            plain
        };
        taken.insert(name.clone());
        names.insert(key.clone(), name);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_safe_component_is_a_file_name() {
        for bad in [
            "",
            ".",
            "..",
            "../x.kubeconfig",
            "/etc/x.kubeconfig",
            "sub/x.kubeconfig",
            ".hidden.kubeconfig",
            "-rf.kubeconfig",
            "a\0b",
            "a~b.kubeconfig",
            "é.kubeconfig",
            &"a".repeat(MAX_SERVER_NAME + 1),
        ] {
            assert!(!is_safe_file_name(bad), "{bad:?}");
        }
        for good in ["prod-east.kubeconfig", "admin.a_b.kubeconfig", "x"] {
            assert!(is_safe_file_name(good), "{good:?}");
        }
    }

    #[test]
    fn every_name_fits_with_its_temporary_affix_and_long_names_stay_distinct() {
        let long = |c: &str| format!("admin.{}.kubeconfig", c.repeat(253));
        let (a, b) = (long("a"), format!("admin.{}b.kubeconfig", "a".repeat(252)));
        assert_ne!(fitted(&a), fitted(&b));
        for name in [&a, &b] {
            let fitted = fitted(name);
            assert!(fitted.len() <= MAX_NAME, "{}", fitted.len());
            assert!(fitted.ends_with(".kubeconfig") && fitted.contains('~'));
            assert!(format!(".{fitted}.tmp-4194304").len() <= FILE_NAME_LIMIT);
        }
        assert_eq!(fitted("east.kubeconfig"), "east.kubeconfig");
    }

    #[test]
    fn a_cluster_named_like_a_disambiguated_name_keeps_its_own_file() {
        let files = [
            ("u1", "east.kubeconfig"),
            ("u2", "east.kubeconfig"),
            ("u3", "u2.east.kubeconfig"),
            ("u4", "u2~east.kubeconfig"),
        ];
        let keyed: Vec<(String, &str, &str, &str)> = files
            .iter()
            .map(|(uid, name)| ((*uid).to_owned(), *uid, "kubeconfig", *name))
            .collect();
        let names = assign(keyed.iter().map(|(k, u, a, n)| (k, *u, *a, *n)));
        let distinct: HashSet<&String> = names.values().collect();
        assert_eq!(distinct.len(), files.len(), "{names:?}");
        assert_eq!(names["u1"], "east.kubeconfig");
        assert_eq!(names["u2"], "u2~east.kubeconfig");
        assert_eq!(names["u3"], "u2.east.kubeconfig");
    }
}
