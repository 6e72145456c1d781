#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: bench setup
//! Is io_uring zero-copy send (SEND_ZC) worth it for large frames? The
//! same frames written over loopback TCP three ways, a reader thread
//! draining the other end: a plain `sendmsg` syscall (what ignis-ws does),
//! an io_uring SEND (the kernel copies), and an io_uring SEND_ZC (the kernel
//! pins the pages; the buffer is reusable only after a notification).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use compio::io::{AsyncWrite, AsyncWriteZerocopy};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [usize; 4] = [4 * 1024, 16 * 1024, 64 * 1024, 128 * 1024];

/// A connected pair: the server side as a compio stream, a thread that
/// reads and discards everything from the client side.
fn pair() -> (compio::net::TcpStream, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    let (server, _) = l.accept().unwrap();
    server.set_nodelay(true).unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = client.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    (compio::net::TcpStream::from_std(server).unwrap(), reader)
}

/// Write all of `f` to `s` with io_uring SEND, or SEND_ZC if `zero_copy`.
async fn write_all(s: &mut compio::net::TcpStream, f: &Bytes, zero_copy: bool) {
    let mut left = f.clone();
    while !left.is_empty() {
        let (n, buf) = if zero_copy {
            let compio::BufResult(r, ready) = s.write_zerocopy(left).await;
            // The buffer may be reused once the kernel says it is done
            // with it.
            (r.unwrap(), ready.await)
        } else {
            let compio::BufResult(r, buf) = s.write(left).await;
            (r.unwrap(), buf)
        };
        left = buf.slice(n..);
    }
}

fn send_zc(c: &mut Criterion) {
    let rt = compio::runtime::RuntimeBuilder::new()
        .with_proactor({
            let mut p = compio::driver::ProactorBuilder::new();
            p.driver_type(compio::driver::DriverType::IoUring);
            p
        })
        .build()
        .expect("io_uring runtime");
    let mut g = c.benchmark_group("large_frame_send");
    for size in SIZES {
        let frame = Bytes::from(vec![7u8; size]);
        g.throughput(Throughput::Bytes(size as u64));
        {
            let (mut s, _reader) = rt.enter(pair);
            g.bench_with_input(BenchmarkId::new("sendmsg_syscall", size), &frame, |b, f| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        let mut off = 0;
                        while off < f.len() {
                            use std::os::fd::AsFd;
                            match rustix::net::send(
                                s.as_fd(),
                                &f[off..],
                                rustix::net::SendFlags::NOSIGNAL,
                            ) {
                                Ok(n) => off += n,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                    t0.elapsed()
                })
            });
            for (name, zero_copy) in [("io_uring_send", false), ("io_uring_send_zc", true)] {
                g.bench_with_input(BenchmarkId::new(name, size), &frame, |b, f| {
                    b.iter_custom(|iters| {
                        rt.block_on(async {
                            let t0 = Instant::now();
                            for _ in 0..iters {
                                write_all(&mut s, f, zero_copy).await;
                            }
                            t0.elapsed()
                        })
                    })
                });
            }
        }
    }
    g.finish();
    let _ = Duration::ZERO;
}

criterion_group!(benches, send_zc);
criterion_main!(benches);
