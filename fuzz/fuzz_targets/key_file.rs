//! The API-key file (`--auth-keys`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = consentd::auth::KeySet::parse(text);
    }
});
