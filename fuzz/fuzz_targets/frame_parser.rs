//! Fuzzes the frame decoder: arbitrary bytes must never panic, and the
//! messages decoded must not depend on how the bytes were split into reads.
//!
//! Input layout: the first byte seeds the split points (and picks the role
//! and size limit); the rest is the byte stream.
#![no_main]

use bytes::BytesMut;
use ignis_ws::proto::frame::{FrameError, Message, MessageDecoder, Role, decode_frame};
use libfuzzer_sys::fuzz_target;

type Outcome = (Vec<Message>, Option<FrameError>);

fn run<'a>(role: Role, max: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut decoder = MessageDecoder::new(role, max);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(e) => return (messages, Some(e)),
            }
        }
    }
    (messages, None)
}

/// Chunk lengths from a tiny xorshift seeded by the first input byte, so the
/// fuzzer can steer the split points and minimize them.
fn chunks(input: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed).wrapping_mul(0x9E37_79B9) | 1;
    let max_chunk = usize::from(seed % 32) + 1;
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state as usize % max_chunk + 1).min(rest.len());
        let (head, tail) = rest.split_at(len);
        out.push(head);
        rest = tail;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let role = if seed & 0x80 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let max = if seed & 0x40 == 0 { 1 << 20 } else { 64 };

    let whole = run(role, max, [input]);
    let split = run(role, max, chunks(input, seed));
    assert_eq!(whole, split, "decoding depends on read boundaries");

    // The frame layer alone must not panic either.
    let mut buf = BytesMut::from(input);
    while let Ok(Some(_)) = decode_frame(&mut buf, role, max) {}
});
