//! A request target, and the same bytes as the org header. See `keygate::fuzzing::org_from_path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate::fuzzing::org_from_path(data));
