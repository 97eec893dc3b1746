//! The request-path resolver on arbitrary paths and pin headers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stagegate::fuzzing::route(data);
});
