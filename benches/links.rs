//! The cost of preference links, per message and per click:
//! - `seal_link`: one link sealed (what CreatePreferenceLink adds to its read
//!   of the profile): ChaCha20-Poly1305 with an HMAC-SHA256 nonce, base64;
//! - `open_link`: one link opened, as each page request and one-click does;
//! - `open_forged_link`: a forged link refused (the cost an attacker makes us pay);
//! - `csrf_check`: the form's CSRF token checked.
//!
//! Run with `cargo bench --bench links`.

use std::hint::black_box;

use consentd::{
    engine::{ProfileId, Tenant},
    links::{LinkClaims, LinkKeys, LinkScope, generate_link_key},
};
use criterion::{Criterion, criterion_group, criterion_main};

fn benches(c: &mut Criterion) {
    let file: String = ["2026-11", "2026-12"]
        .iter()
        .map(|id| generate_link_key(id).expect("a key"))
        .collect();
    let keys = LinkKeys::parse(&file).expect("a valid key file");
    let tenant = Tenant::parse("acme").expect("valid");
    let claims = LinkClaims {
        tenant: tenant.clone(),
        profile: ProfileId::parse("customer-000123456@example.com").expect("valid"),
        scope: LinkScope::AllChannels,
        expires_at: 1_800_000_000_000,
    };
    c.bench_function("seal_link", |b| {
        b.iter(|| black_box(keys.seal(black_box(&claims))));
    });
    let token = keys.seal(&claims);
    c.bench_function("open_link", |b| {
        b.iter(|| black_box(keys.open(&tenant, black_box(&token), 1_700_000_000_000)));
    });
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ASCII");
    c.bench_function("open_forged_link", |b| {
        b.iter(|| black_box(keys.open(&tenant, black_box(&forged), 1_700_000_000_000)));
    });
    let csrf = keys.csrf(&token, 1_700_000_000_000);
    c.bench_function("csrf_check", |b| {
        b.iter(|| black_box(keys.csrf_valid(&token, black_box(&csrf), 1_700_000_000_000)));
    });
}

criterion_group!(group, benches);
criterion_main!(group);
