//! What the preference page reads from a request: its path and query, the
//! form and one-click bodies, `Accept-Language`; and a link token or CSRF
//! token opened with a fixed key, and the link key file.
#![no_main]

use std::sync::OnceLock;

use consentd::{
    engine::Tenant,
    links::{LinkKeys, generate_link_key},
};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static LinkKeys {
    static KEYS: OnceLock<LinkKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let entry = generate_link_key("fuzz").expect("a key");
        LinkKeys::parse(&entry).expect("a valid key file")
    })
}

fuzz_target!(|data: &[u8]| {
    // Three parts, split at the first two NUL bytes.
    let mut parts = data.splitn(3, |b| *b == 0);
    let first = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let second = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let _ = consentd::web::fuzz_page_input(&first, &second, body);
    if let Ok(tenant) = Tenant::parse("acme") {
        let _ = keys().open(&tenant, &first, 0);
        let _ = keys().csrf_valid(&first, &second, 0);
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = LinkKeys::parse(text);
    }
});
