#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: bench setup
//! Codec micro-benchmarks: frame parsing, encoding and unmasking, ours
//! against tungstenite on the same bytes, plus the handshake parser.
//!
//! Throughput is in bytes of wire data (header included) per second.
//!
//! Parsing compares like with like: every variant copies the frame into its
//! read buffer once per iteration (ours from a slice, tungstenite from a
//! `Read` source that replays the frame), then parses it.
//! `tungstenite/frame_socket` does not unmask (tungstenite's `FrameSocket`
//! leaves that to `WebSocket`); `tungstenite/websocket` does, and is the
//! counterpart of `ours/message_decoder`.

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ignis_ws::proto::frame::{
    MessageDecoder, OpCode, Role, apply_mask, apply_mask_naive, decode_frame, encode_frame,
    server_frame, server_frame_with, server_frame_with_capacity,
};
use ignis_ws::proto::handshake::{HandshakeLimits, parse_request};

const SIZES: [usize; 5] = [16, 128, 1024, 16 * 1024, 128 * 1024];
const KEY: [u8; 4] = [0x6d, 0xb6, 0xb2, 0x80];

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A masked text frame of `len` bytes of mixed ASCII and multi-byte UTF-8.
fn masked_text_frame(len: usize) -> Vec<u8> {
    let mut text = "ascii and κόσμε € 😀 ".repeat(len / 16 + 1);
    while text.len() > len {
        text.pop();
    }
    let mut buf = BytesMut::new();
    encode_frame(&mut buf, true, OpCode::Text, text.as_bytes(), Some(KEY));
    buf.to_vec()
}

fn masked_frame(len: usize) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(&mut buf, true, OpCode::Binary, &payload(len), Some(KEY));
    buf.to_vec()
}

/// An endless stream of the same frame, for tungstenite's `Read`-driven
/// parsers; writes (pongs) are discarded.
struct Replay {
    frame: Vec<u8>,
    pos: usize,
}

impl Replay {
    fn new(frame: &[u8]) -> Replay {
        Replay {
            frame: frame.to_vec(),
            pos: 0,
        }
    }
}

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut written = 0;
        while written < buf.len() {
            let chunk = &self.frame[self.pos..];
            let n = chunk.len().min(buf.len() - written);
            buf[written..written + n].copy_from_slice(&chunk[..n]);
            written += n;
            self.pos = (self.pos + n) % self.frame.len();
        }
        Ok(written)
    }
}

impl Write for Replay {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A benchmark group warmed up for 1 s and measured for 2 s.
fn short_group<'a>(c: &'a mut Criterion, name: &str) -> Group<'a> {
    let mut group = c.benchmark_group(name);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));
    group
}

fn parse(c: &mut Criterion) {
    let mut group = short_group(c, "parse");
    for size in SIZES {
        let frame = masked_frame(size);
        group.throughput(Throughput::Bytes(frame.len() as u64));

        group.bench_with_input(
            BenchmarkId::new("ours/decode_frame", size),
            &frame,
            |b, frame| {
                let mut buf = BytesMut::with_capacity(frame.len());
                b.iter(|| {
                    buf.extend_from_slice(frame);
                    let decoded = decode_frame(&mut buf, Role::Server, usize::MAX)
                        .unwrap()
                        .unwrap();
                    black_box(decoded);
                });
            },
        );

        // Binary, and text (the UTF-8 check on top of unmasking), the frame
        // whole in the buffer (the common case) ...
        let text = masked_text_frame(size);
        for (name, input) in [
            ("ours/message_decoder", &frame),
            ("ours/message_decoder_text", &text),
        ] {
            group.bench_with_input(BenchmarkId::new(name, size), input, |b, frame| {
                let mut decoder = MessageDecoder::new(Role::Server, usize::MAX);
                let mut buf = BytesMut::with_capacity(frame.len());
                b.iter(|| {
                    buf.extend_from_slice(frame);
                    black_box(decoder.decode(&mut buf).unwrap().unwrap());
                });
            });
        }
        // ... and arriving in 1460-byte reads (one TCP segment each), so
        // the received prefix is unmasked and validated read by read.
        group.bench_with_input(
            BenchmarkId::new("ours/message_decoder_text_segments", size),
            &text,
            |b, frame| {
                let mut decoder = MessageDecoder::new(Role::Server, usize::MAX);
                let mut buf = BytesMut::with_capacity(frame.len());
                b.iter(|| {
                    let mut out = None;
                    for chunk in frame.chunks(1460) {
                        buf.extend_from_slice(chunk);
                        out = decoder.decode(&mut buf).unwrap();
                    }
                    black_box(out.unwrap());
                });
            },
        );

        group.bench_with_input(
            BenchmarkId::new("tungstenite/frame_socket", size),
            &frame,
            |b, frame| {
                let replay = Replay::new(frame);
                let mut socket = tungstenite::protocol::frame::FrameSocket::new(replay);
                b.iter(|| black_box(socket.read(None).unwrap().unwrap()));
            },
        );

        group.bench_with_input(
            BenchmarkId::new("tungstenite/websocket", size),
            &frame,
            |b, frame| {
                use tungstenite::protocol::{WebSocket, WebSocketConfig};
                let replay = Replay::new(frame);
                let config = WebSocketConfig::default()
                    .max_message_size(None)
                    .max_frame_size(None);
                let mut ws = WebSocket::from_raw_socket(
                    replay,
                    tungstenite::protocol::Role::Server,
                    Some(config),
                );
                b.iter(|| black_box(ws.read().unwrap()));
            },
        );
    }
    group.finish();
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// `ours/encode_frame` and `tungstenite/format` of the same payload
/// (`data`, `shared`); `_masked` with `mask`.
fn bench_encode_frame(
    group: &mut Group<'_>,
    size: usize,
    data: &[u8],
    shared: &Bytes,
    mask: Option<[u8; 4]>,
) {
    use tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode as TgOpCode},
    };
    let suffix = if mask.is_some() { "_masked" } else { "" };
    let id = BenchmarkId::new(format!("ours/encode_frame{suffix}"), size);
    group.bench_with_input(id, data, |b, data| {
        let mut out = BytesMut::with_capacity(size + 14);
        b.iter(|| {
            out.clear();
            encode_frame(&mut out, true, OpCode::Binary, data, mask);
            black_box(&out);
        });
    });
    let id = BenchmarkId::new(format!("tungstenite/format{suffix}"), size);
    group.bench_with_input(id, shared, |b, shared| {
        let mut out = Vec::with_capacity(size + 14);
        b.iter(|| {
            out.clear();
            let mut frame = Frame::message(shared.clone(), TgOpCode::Data(Data::Binary), true);
            frame.header_mut().mask = mask;
            frame.format(&mut out).unwrap();
            black_box(&out);
        });
    });
}

fn encode(c: &mut Criterion) {
    let mut group = short_group(c, "encode");
    for size in SIZES {
        let data = payload(size);
        let shared = Bytes::from(data.clone());
        let mut probe = BytesMut::new();
        encode_frame(&mut probe, true, OpCode::Binary, &data, None);
        group.throughput(Throughput::Bytes(probe.len() as u64));

        group.bench_with_input(
            BenchmarkId::new("ours/server_frame", size),
            &data,
            |b, data| {
                b.iter(|| black_box(server_frame(OpCode::Binary, data)));
            },
        );

        group.bench_with_input(
            BenchmarkId::new("ours/server_frame_with", size),
            &data,
            |b, data| {
                b.iter(|| {
                    black_box(server_frame_with(OpCode::Binary, |buf| {
                        buf.extend_from_slice(data);
                    }))
                });
            },
        );

        group.bench_with_input(
            BenchmarkId::new("ours/server_frame_with_capacity", size),
            &data,
            |b, data| {
                b.iter(|| {
                    black_box(server_frame_with_capacity(
                        OpCode::Binary,
                        data.len(),
                        |buf| {
                            buf.extend_from_slice(data);
                        },
                    ))
                });
            },
        );

        bench_encode_frame(&mut group, size, &data, &shared, None);

        bench_encode_frame(&mut group, size, &data, &shared, Some(KEY));
    }
    group.finish();
}

fn unmask(c: &mut Criterion) {
    let mut group = short_group(c, "unmask");
    for size in SIZES.into_iter().chain([1024 * 1024]) {
        group.throughput(Throughput::Bytes(size as u64));
        let mut data = payload(size);
        group.bench_function(BenchmarkId::new("fast", size), |b| {
            b.iter(|| apply_mask(black_box(&mut data), KEY));
        });
        group.bench_function(BenchmarkId::new("naive", size), |b| {
            b.iter(|| apply_mask_naive(black_box(&mut data), KEY));
        });
    }
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let mut group = short_group(c, "handshake");
    let head = b"GET /ws?token=abc HTTP/1.1\r\nHost: example.com:8080\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\n\
        Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n\
        Sec-WebSocket-Version: 13\r\nOrigin: https://example.com\r\n\
        Sec-WebSocket-Extensions: permessage-deflate\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: keep-alive, Upgrade\r\n\
        Pragma: no-cache\r\nCache-Control: no-cache\r\nUpgrade: websocket\r\n\r\n";
    group.throughput(Throughput::Bytes(head.len() as u64));
    let limits = HandshakeLimits::default();
    group.bench_function("parse_request/upgrade", |b| {
        b.iter(|| black_box(parse_request(black_box(head), &limits).unwrap().unwrap()));
    });
    group.finish();
}

criterion_group!(benches, parse, encode, unmask, handshake);
criterion_main!(benches);
