//! The tenant file: parsing and cross-reference checks must never panic, hang or blow up.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kubeconfig_policy::Tenant::from_yaml(text);
    }
});
