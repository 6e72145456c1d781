//! See `ignis_ws::fuzzing::redis_replies` for what this target checks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ignis_ws::fuzzing::redis_replies(data));
