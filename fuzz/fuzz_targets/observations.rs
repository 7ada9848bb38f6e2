#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    trackgate::rules::fuzzing::observations(data);
});
