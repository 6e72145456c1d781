//! See `ignis_ws::fuzzing::tls_records` for what this target checks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ignis_ws::fuzzing::tls_records(data));
