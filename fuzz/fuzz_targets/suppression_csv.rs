//! A suppression list (`consentd import-suppressions`), imported whole into
//! an in-memory store.
#![no_main]

use std::sync::OnceLock;

use consentd::{
    data::suppressions::{SuppressionImport, import_csv},
    engine::{LogLimits, QuarantineRules, Tenant},
    store::memory::MemoryStore,
};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(
    // Before the first input, untimed: the numbering plan's metadata (hundreds
    // of regexes, built at the first phone number parsed) takes seconds to load
    // with coverage instrumentation, longer than an input may take (-timeout).
    init: {
        let _ = consentd::engine::Address::phone("+33612345678");
    },
    |data: &[u8]| {
    let store = MemoryStore::new();
    let options = SuppressionImport {
        tenant: Tenant::parse("acme").expect("a tenant"),
        actor: "fuzz".to_owned(),
        // Half the inputs with a default reason, so that files without a
        // reason column get past the header.
        default_reason: data
            .first()
            .filter(|b| *b & 1 == 1)
            .map(|_| "bounce".to_owned()),
        now: 1_767_225_600_000,
        rules: QuarantineRules::default(),
        limits: LogLimits::default(),
    };
    let _ = import_csv(
        &store,
        runtime().handle(),
        data,
        &options,
        |_, _| {},
        |_| {},
    );
});
