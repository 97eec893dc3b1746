//! Every comparator on arbitrary pairs of answers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stagegate::fuzzing::compare(data);
});
