//! Kubernetes pack values (with macros) from an untrusted cluster file, under each distribution's pack
//! name: the OIDC analysis must never panic, hang or expand without bound.
#![no_main]

use kubeconfig_policy::{PackInput, analyze};

const PACKS: [&str; 6] = [
    "kubernetes",
    "edge-k8s",
    "edge-k3s",
    "kubernetes-eks",
    "kubernetes-aks",
    "kubernetes-gke",
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(values) = std::str::from_utf8(rest) else {
        return;
    };
    let _ = analyze(&PackInput {
        name: PACKS[usize::from(selector) % PACKS.len()],
        values,
        cluster_uid: "6470a2b1c5e6f1a2b3c4d5e1",
        cluster_name: "fuzz",
        reverse_proxy_server: (selector & 0x80 != 0).then_some("proxy.fuzz.test"),
        tenant_oidc: None,
    });
});
