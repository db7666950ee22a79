//! What a server sends the agent: a sequence of length-delimited `WatchKubeconfigsResponse` messages
//! (any names, uids, assets, sizes and order), applied as the agent applies them. Nothing may panic,
//! what is held must stay within the limits and what was asked for, and every file name the agent
//! would use must be one safe, unique component that fits beside its temporary file.
#![no_main]

use kubeconfig_agent::health::Stats;
use kubeconfig_agent::holdings::{Holdings, Limits};
use kubeconfig_agent::naming;
use kubeconfig_agent::output::{Asset, file_names, merged};
use kubeconfig_proto::kubeconfig::v1 as pb;
use prost::Message as _;

const LIMITS: Limits = Limits {
    max_file_size: 4096,
    max_files: 16,
    max_total_size: 16 << 10,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    // The first byte picks what the agent asked for: named clusters or all, and which asset.
    let wanted: Vec<String> = if mode & 1 == 0 {
        Vec::new()
    } else {
        vec!["aa01".to_owned(), "aa02".to_owned()]
    };
    let assets = if mode & 2 == 0 {
        vec![Asset::Kubeconfig]
    } else {
        vec![Asset::AdminKubeconfig]
    };
    let stats = Stats::default();
    let mut holdings = Holdings::new(&wanted, &assets, LIMITS, mode & 4 != 0);
    while !rest.is_empty() {
        let Ok(event) = pb::WatchKubeconfigsResponse::decode_length_delimited(&mut rest) else {
            break;
        };
        holdings.apply(event, &stats);
        assert!(holdings.files.len() <= LIMITS.max_files);
        assert!(holdings.held_bytes() <= LIMITS.max_total_size);
        let total: usize = holdings.files.values().map(|h| h.yaml.len()).sum();
        assert_eq!(total, holdings.held_bytes());
        for ((uid, asset), held) in &holdings.files {
            assert!(held.yaml.len() <= LIMITS.max_file_size);
            assert!(naming::is_valid_uid(uid));
            assert!(naming::is_safe_file_name(&held.file_name));
            assert!(assets.contains(asset));
            assert!(wanted.is_empty() || wanted.contains(uid));
        }
        assert!(holdings.dirty.iter().all(|k| holdings.files.contains_key(k)));
    }
    let names = file_names(&holdings.files);
    let mut seen = std::collections::HashSet::new();
    for name in names.values() {
        assert!(seen.insert(name.as_str()), "two files named {name:?}");
        assert!(!name.is_empty() && name.len() <= naming::MAX_NAME, "{name:?}");
        assert!(!name.starts_with('.') && !name.contains('/') && !name.contains('\0'));
    }
    let _ = merged(&holdings.files);
});
