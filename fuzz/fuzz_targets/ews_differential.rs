#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    trackgate::inspect::fuzzing::ews_differential(data);
});
