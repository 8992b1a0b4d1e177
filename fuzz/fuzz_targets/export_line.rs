//! One line of an export (`consentd import`'s parser and validation).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    // Before the first input, untimed: the numbering plan's metadata (hundreds
    // of regexes, built at the first phone number parsed) takes seconds to load
    // with coverage instrumentation, longer than an input may take (-timeout).
    init: {
        let _ = consentd::engine::Address::phone("+33612345678");
    },
    |data: &[u8]| {
    let _ = consentd::data::import::fuzz_parse_line(data);
});
