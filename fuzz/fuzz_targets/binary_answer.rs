//! The OIP binary data extension's reader on arbitrary answers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stagegate::fuzzing::binary_answer(data);
});
