//! The cost of access control per request:
//! - `authenticate_{1,100,1000}_keys`: SHA-256 of the presented key and the
//!   constant-time comparison with every entry of a key file of that size
//!   (1000 is `KEYS_MAX`);
//! - `check_method`: the role check, a lookup in the permission table.
//!
//! Run with `cargo bench --bench auth`.

use std::hint::black_box;

use consentd::auth::{Caller, KeySet, Role, TenantScope, sha256_hex};
use criterion::{Criterion, criterion_group, criterion_main};

fn key_file(keys: usize) -> String {
    (0..keys)
        .map(|i| {
            format!(
                "[[key]]\nname = \"k{i}\"\nsha256 = \"{}\"\nrole = \"delivery\"\ntenants = [\"acme\"]\n",
                sha256_hex(&format!("secret-{i}"))
            )
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    for keys in [1, 100, 1000] {
        let set = KeySet::parse(&key_file(keys)).expect("valid key file");
        // The last entry: a scan that stopped early would be slowest here.
        let presented = format!("secret-{}", keys - 1);
        c.bench_function(&format!("authenticate_{keys}_keys"), |b| {
            b.iter(|| black_box(set.authenticate(black_box(&presented))));
        });
    }
    let caller = Caller {
        name: Some("mta".to_owned()),
        role: Role::Delivery,
        tenants: TenantScope::parse(["acme"]).expect("valid scope"),
    };
    c.bench_function("check_method", |b| {
        b.iter(|| {
            black_box(caller.check_method(black_box(
                "/consent.v1.EligibilityService/StreamEligibility",
            )))
        });
    });
}

criterion_group!(auth, benches);
criterion_main!(auth);
