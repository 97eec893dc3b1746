//! The HTTP/1 framing scanner on arbitrary byte streams, whole and in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stagegate::fuzzing::framing(data);
});
