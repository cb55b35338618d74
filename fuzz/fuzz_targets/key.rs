//! An API key header value (and the same bytes as a JSON string). See `keygate::fuzzing::key`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::key(data));
