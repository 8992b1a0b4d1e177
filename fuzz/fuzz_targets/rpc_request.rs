//! Request decoding and validation of every consent.v1 RPC, through the
//! server's own services, codec and access layer (off), over an in-memory
//! store. The first byte picks the method; the rest is the request message.
//! A panic, a hang or an allocation over the limit is a finding; any status
//! code is an answer.
#![no_main]

use std::cell::RefCell;

use consentd::api::fuzz::RpcHarness;
use libfuzzer_sys::fuzz_target;

/// Calls before the harness (and its store) starts afresh, so that what valid
/// requests write does not grow without bound over a long run.
const CALLS_PER_HARNESS: u32 = 10_000;

thread_local! {
    static HARNESS: RefCell<Option<(RpcHarness, u32)>> = const { RefCell::new(None) };
}

fuzz_target!(
    // Before the first input, untimed: the numbering plan's metadata (hundreds
    // of regexes, built at the first phone number parsed) takes seconds to load
    // with coverage instrumentation, longer than an input may take (-timeout).
    init: {
        let _ = consentd::engine::Address::phone("+33612345678");
    },
    |data: &[u8]| {
    let Some((&selector, message)) = data.split_first() else {
        return;
    };
    HARNESS.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot
            .as_ref()
            .is_none_or(|(_, calls)| *calls >= CALLS_PER_HARNESS)
        {
            *slot = Some((RpcHarness::new().expect("the harness starts"), 0));
        }
        let Some((harness, calls)) = slot.as_mut() else {
            return;
        };
        *calls += 1;
        let methods = harness.methods();
        let path = methods[usize::from(selector) % methods.len()].clone();
        let _ = harness.call(&path, message);
    });
});
