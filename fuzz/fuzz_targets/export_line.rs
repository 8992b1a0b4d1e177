//! One line of an export (`consentd import`'s parser and validation).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = consentd::data::import::fuzz_parse_line(data);
});
