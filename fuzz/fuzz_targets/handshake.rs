//! Fuzzes the HTTP request-head parser and the responses built from what it
//! returns: nothing may panic, and a parsed head lies within the input.
#![no_main]

use ignis_ws::proto::handshake::{
    HandshakeLimits, Request, accept_response, error_response, parse_request,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = HandshakeLimits::default();
    match parse_request(data, &limits) {
        Ok(Some(Request::Upgrade { key, head_len, .. })) => {
            assert!(head_len <= data.len() && head_len <= limits.max_head_bytes);
            let _ = accept_response(key);
        }
        Ok(Some(Request::Http { head_len, .. })) => {
            assert!(head_len <= data.len() && head_len <= limits.max_head_bytes);
        }
        Ok(None) => assert!(data.len() < limits.max_head_bytes),
        Err(e) => {
            let _ = error_response(&e);
        }
    }
});
