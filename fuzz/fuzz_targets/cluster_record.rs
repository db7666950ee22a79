//! A cluster file from an untrusted inventory writer: parsing must never panic, hang or blow up.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kubeconfigd::loading::record::Record::parse(text, None);
    }
});
