//! The on-disk record codec: every decoder, on any bytes; a value that
//! decodes must survive an encode and decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = consentd::store::sled::fuzz_decode_record(data);
});
