//! The config loader on arbitrary text: it must refuse or accept, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stagegate::fuzzing::config(data);
});
