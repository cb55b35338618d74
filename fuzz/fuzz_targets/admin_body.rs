//! The JSON body of every admin endpoint that takes one. See `keygate::fuzzing::admin_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::admin_body(data));
