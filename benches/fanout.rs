#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: bench setup
//! In-process fan-out: one room message to 10,000 authenticated clients
//! spread over two shards, timed per recipient (the shard's work only:
//! refcount + queue push + dirty-list entry; the socket writes are measured
//! by `ignis-ws bench`). Between deliveries the queues are written out
//! through the shard's write protocol, as the server does, which releases
//! an emptied one-frame queue: a counting allocator shows the one
//! allocation per recipient that re-creating it costs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ignis_ws::Config;
use ignis_ws::auth::InsecureAuthenticator;
use ignis_ws::handle::{Delivery, Target, encode};
use ignis_ws::hooks::NoHooks;
use ignis_ws::proto::frame::{OpCode, encode_frame};
use ignis_ws::shard::ShardCtx;
use ignis_ws::shard::memory::MemoryDriver;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CLIENTS: usize = 10_000;
const SHARDS: usize = 2;

/// An empty in-memory shard: insecure authentication, a 64 MiB budget
/// per client; its clients' sockets take everything and keep nothing.
fn new_driver(index: usize, config: Config, max_conns: usize) -> MemoryDriver {
    let ctx = ShardCtx {
        index,
        config: Arc::new(Config {
            backpressure_limit: 64 * 1024 * 1024,
            ..config
        }),
        metrics: Arc::default(),
        max_conns,
        has_room_validator: false,
        wants_messages: false,
        wants_lifecycle: false,
        sessions: None,
        client_tag: None,
    };
    MemoryDriver::new(
        ctx,
        Arc::new(InsecureAuthenticator),
        None,
        Arc::new(NoHooks),
        Instant::now(),
    )
}

fn shard(index: usize) -> MemoryDriver {
    connected(index, CLIENTS / SHARDS, Config::default())
}

/// A shard with `n` authenticated clients in `ws-default`.
fn connected(index: usize, n: usize, config: Config) -> MemoryDriver {
    let mut d = new_driver(index, config, n);
    let mut auth = BytesMut::new();
    encode_frame(
        &mut auth,
        true,
        OpCode::Text,
        br#"{"event":"authenticate","data":{"userId":"u"}}"#,
        Some([1, 2, 3, 4]),
    );
    for _ in 0..n {
        // Authenticated through the real path: joins ws-default.
        d.connect_discarding(&auth);
    }
    d
}

/// Write out every queue (the sockets' job in the server), through the
/// shard's write protocol; the dirty list's capacity is reused.
fn reset(d: &mut MemoryDriver) {
    d.run();
}

/// The benchmark `fanout/{name}` of `elements` per round: `run` on
/// `state` (given the round's `now`), timed; `reset` after each round,
/// untimed.
fn bench_rounds<S>(
    c: &mut Criterion,
    name: String,
    elements: usize,
    state: &mut S,
    mut run: impl FnMut(&mut S, Instant),
    mut reset: impl FnMut(&mut S),
) {
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(elements as u64));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let now = Instant::now();
                let t0 = Instant::now();
                run(state, now);
                t += t0.elapsed();
                reset(state);
            }
            t
        })
    });
    g.finish();
}

/// A broadcast of about `size` bytes to the room `ws-default`.
fn room_delivery(size: usize) -> Delivery {
    let data = "x".repeat(size.saturating_sub(30));
    Delivery {
        target: Target::Room("ws-default".into()),
        frame: encode("b", Some(&data)).unwrap(),
        exclude: None,
    }
}

fn fanout(c: &mut Criterion) {
    let mut shards: Vec<MemoryDriver> = (0..SHARDS).map(shard).collect();
    for size in [100usize, 1024] {
        let d = room_delivery(size);
        // One delivery to warm the queues' capacity, then count.
        let now = Instant::now();
        for s in shards.iter_mut() {
            s.shard.deliver(&d, now);
            reset(s);
        }
        let before = ALLOCS.load(Relaxed);
        for s in shards.iter_mut() {
            s.shard.deliver(&d, now);
        }
        let allocs = ALLOCS.load(Relaxed) - before;
        println!("fanout/{size}B: {allocs} allocations for one delivery to {CLIENTS} clients");
        for s in shards.iter_mut() {
            reset(s);
        }
        bench_rounds(
            c,
            format!("room_10k_clients_2_shards/{size}B"),
            CLIENTS,
            &mut shards,
            |shards, now| {
                for s in shards.iter_mut() {
                    s.shard.deliver(black_box(&d), now);
                }
            },
            |shards| shards.iter_mut().for_each(reset),
        );
    }
    drop(shards);
}

/// One room message to 1,000 encrypted clients on one shard: the
/// delivery plus the encryption task's work (one AES-256-GCM, base64 and
/// frame per recipient), timed per recipient.
fn fanout_encrypted(c: &mut Criterion) {
    use base64::Engine as _;
    const ENC: usize = 1000;
    let config = Config {
        encryption: ignis_ws::config::EncryptionMode::Required,
        ..Config::default()
    };
    let mut s = new_driver(0, config, ENC);
    for _ in 0..ENC {
        let k =
            aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256).unwrap();
        let public = base64::engine::general_purpose::STANDARD
            .encode(k.compute_public_key().unwrap().as_ref());
        let mut auth = BytesMut::new();
        let msg =
            format!(r#"{{"event":"authenticate","data":{{"userId":"u","publicKey":"{public}"}}}}"#);
        encode_frame(
            &mut auth,
            true,
            OpCode::Text,
            msg.as_bytes(),
            Some([1, 2, 3, 4]),
        );
        s.connect_discarding(&auth);
    }
    assert!(s.shard.conns().all(|(_, c)| c.is_encrypted()));
    reset(&mut s);
    for size in [100usize, 1024] {
        let d = room_delivery(size);
        bench_rounds(
            c,
            format!("room_1k_encrypted_clients/{size}B"),
            ENC,
            &mut s,
            |s, now| {
                s.shard.deliver(black_box(&d), now);
                while s.shard.run_encryption(usize::MAX) {}
            },
            reset,
        );
    }
    drop(s);
}

/// A burst: 300 room messages of 1 KiB queued for each of 1,000 clients,
/// then written out as the flusher does (`io::tasks::flush_one`): every
/// client's whole queue lent as one iovec (`Shard::transmit`), copied into
/// fresh memory (a 256 MiB arena written in order) as the kernel copies it
/// into socket buffers. Timed per delivery, queueing included: the
/// user-space share of a burst beside the copy every server pays.
///
/// Between bursts the shard's sweep runs (virtual time, 2 s later), which
/// releases idle queues as the server does. `one_by_one`: each message
/// visits every member (as before issue 16); `as_a_run`: the command loop
/// now hands consecutive deliveries to the same room over as one run
/// (`Shard::deliver_run`), which visits each member once.
fn burst_writes(c: &mut Criterion) {
    const BURST_CLIENTS: usize = 1000;
    const FRAMES: usize = 300;
    const ARENA: usize = 256 << 20;
    struct State {
        d: MemoryDriver,
        frames: Vec<Delivery>,
        arena: Vec<u8>,
        at: usize,
        keys: Vec<u32>,
        clock: Instant,
    }
    let mut st = State {
        // Virtual time runs 2 s per round: no idle or heartbeat timeout
        // may close the silent clients.
        d: connected(
            0,
            BURST_CLIENTS,
            Config {
                idle_timeout: None,
                heartbeat_timeout: Duration::from_secs(1_000_000),
                ..Config::default()
            },
        ),
        frames: (0..FRAMES).map(|_| room_delivery(1024)).collect(),
        arena: vec![1u8; ARENA],
        at: 0,
        keys: Vec::new(),
        clock: Instant::now(),
    };
    reset(&mut st.d);
    for (label, as_run, copy) in [
        ("one_by_one", false, false),
        ("as_a_run", true, false),
        ("as_a_run_and_copy", true, true),
    ] {
        bench_rounds(
            c,
            format!("burst_300x1KiB_to_1k_clients/{label}"),
            BURST_CLIENTS * FRAMES,
            &mut st,
            |st, _| {
                let now = st.clock;
                if as_run {
                    st.d.shard.deliver_run(black_box(&st.frames), now);
                } else {
                    for f in &st.frames {
                        st.d.shard.deliver(black_box(f), now);
                    }
                }
                st.d.shard.poll_dirty(&mut st.keys);
                for &k in &st.keys {
                    let mut iov = ignis_ws::shard::IoVec::new();
                    let want = st.d.shard.transmit(k, &mut iov);
                    if copy {
                        for sl in &iov {
                            if st.at + sl.len() > ARENA {
                                st.at = 0;
                            }
                            st.arena[st.at..st.at + sl.len()].copy_from_slice(sl);
                            st.at += sl.len();
                        }
                    }
                    black_box(&iov);
                    drop(iov);
                    st.d.shard.handle_written(k, want);
                    st.d.shard.handle_flushed(k);
                }
                black_box(&st.arena);
            },
            |st| {
                // The sweep: idle queues are released.
                st.clock += Duration::from_secs(2);
                st.d.shard.handle_timeout(st.clock);
                reset(&mut st.d);
            },
        );
    }
}

criterion_group!(benches, fanout, fanout_encrypted, burst_writes);
criterion_main!(benches);
