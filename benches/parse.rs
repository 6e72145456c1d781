#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: bench setup
//! JSON on the message paths: client messages (simd-json, what the shard
//! uses, against serde_json on the same text) and Redis envelopes (our
//! borrowed envelope parser, what the bridge uses, against simd-json and
//! serde_json building a value).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ignis_ws::bridge::envelope;
use ignis_ws::proto::message::{self, Buffers};

fn client_messages() -> Vec<(&'static str, String)> {
    vec![
        ("heartbeat", r#"{"event":"heartbeat"}"#.to_string()),
        (
            "join",
            r#"{"event":"join","data":{"rooms":["public:news","user:alice:inbox","team:red"]}}"#
                .to_string(),
        ),
        (
            "custom_1KiB",
            format!(
                r#"{{"event":"chat","data":{{"text":"{}","to":"room-1","n":[1,2,3]}},"id":"m-1"}}"#,
                "x".repeat(960)
            ),
        ),
    ]
}

fn client(c: &mut Criterion) {
    let mut g = c.benchmark_group("client_message");
    let mut buffers = Buffers::default();
    let mut scratch = Vec::new();
    for (name, text) in client_messages() {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("simd_json", name), &text, |b, t| {
            b.iter(|| {
                scratch.clear();
                scratch.extend_from_slice(t.as_bytes());
                let m = message::parse(&mut scratch, &mut buffers);
                black_box(matches!(m, message::ClientMessage::Invalid));
            })
        });
        g.bench_with_input(BenchmarkId::new("serde_json", name), &text, |b, t| {
            b.iter(|| {
                let v: serde_json::Value = serde_json::from_slice(t.as_bytes()).unwrap();
                black_box(v.get("event").and_then(|e| e.as_str()).is_some());
            })
        });
    }
    g.finish();
}

/// A `join`'s room list is filtered and deduplicated before the shard
/// applies `--max-rooms-per-client`: the cost must grow linearly with the
/// message (the largest join under 128 KiB lists 21,835 short names).
fn join_rooms(c: &mut Criterion) {
    let mut g = c.benchmark_group("join_rooms");
    let mut buffers = Buffers::default();
    let mut scratch = Vec::new();
    for n in [1_000usize, 21_835] {
        let names: Vec<String> = (0..n).map(|i| format!("{i:x}")).collect();
        let text = serde_json::json!({"event":"join","data":{"rooms":names}}).to_string();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, t| {
            b.iter(|| {
                scratch.clear();
                scratch.extend_from_slice(t.as_bytes());
                match message::parse(&mut scratch, &mut buffers) {
                    message::ClientMessage::Join(d) => {
                        black_box(message::join_rooms(d.as_ref()).len());
                    }
                    _ => unreachable!(),
                }
            })
        });
    }
    g.finish();
}

fn envelopes() -> Vec<(&'static str, String)> {
    vec![
        (
            "room_small",
            r#"{"serverId":"emitter","type":"room","target":"lobby","event":"update","data":{"status":"active"}}"#
                .to_string(),
        ),
        (
            "room_1KiB_exclude",
            format!(
                r#"{{"serverId":"1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b","type":"room","target":"lobby","event":"update","data":{{"text":"{}","n":[1,2,3],"ok":true}},"exclude":["c1","c2"]}}"#,
                "y".repeat(950)
            ),
        ),
    ]
}

fn envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    let mut scratch = Vec::new();
    let mut buffers = simd_json::Buffers::default();
    for (name, text) in envelopes() {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("ours_borrowed", name), &text, |b, t| {
            b.iter(|| {
                let e = envelope::parse(t.as_bytes(), 1 << 20).unwrap();
                black_box(e.data.map(|d| d.get().len()));
            })
        });
        g.bench_with_input(BenchmarkId::new("simd_json_value", name), &text, |b, t| {
            b.iter(|| {
                scratch.clear();
                scratch.extend_from_slice(t.as_bytes());
                let v =
                    simd_json::borrowed::to_value_with_buffers(&mut scratch, &mut buffers).unwrap();
                black_box(matches!(v, simd_json::BorrowedValue::Object(_)));
            })
        });
        g.bench_with_input(BenchmarkId::new("serde_json_value", name), &text, |b, t| {
            b.iter(|| {
                let v: serde_json::Value = serde_json::from_slice(t.as_bytes()).unwrap();
                black_box(v.get("data").is_some());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, client, join_rooms, envelope);
criterion_main!(benches);
