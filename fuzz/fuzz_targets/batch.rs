#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    trackgate::crm::multipart::fuzz(data);
});
