//! `--io auto|uring|epoll` → compio's fusion driver: probe io_uring once,
//! fall back to epoll (polling) with one log line saying why, and build each
//! shard's runtime with the chosen back end, pinned to its core.

use std::collections::HashSet;
use std::io;

use compio::driver::{DriverType, ProactorBuilder};
use compio::runtime::{Runtime, RuntimeBuilder};

use crate::config::IoMode;

/// The I/O back end the shards run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    IoUring,
    Epoll,
}

impl Backend {
    /// Name used in logs, `/health` and `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::IoUring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }

    fn driver_type(self) -> DriverType {
        match self {
            Backend::IoUring => DriverType::IoUring,
            Backend::Epoll => DriverType::Poll,
        }
    }
}

/// Size of each provided-buffer ring buffer (io_uring): client messages
/// are small; larger ones arrive in several completions.
const RING_BUFFER_LEN: usize = 2048;

fn proactor(b: Backend, ring_buffers: u16) -> ProactorBuilder {
    let mut p = ProactorBuilder::new();
    p.driver_type(b.driver_type());
    if b == Backend::IoUring {
        // One thread submits (the shard's), and completions' task work runs
        // only when the shard asks for events, not at the exit of every
        // syscall it makes (sendmsg, close): less lock contention with the
        // peers' softirq work, batched completion handling.
        p.single_issuer(true);
        p.defer_taskrun(true);
    }
    if b == Backend::IoUring
        && let Some(n) = std::num::NonZeroU16::new(ring_buffers)
    {
        // Receives take a buffer only when data arrives and give it back
        // once the shard consumed it.
        p.buffer_pool_size(n);
        p.buffer_pool_buffer_len(RING_BUFFER_LEN);
    }
    // Room for many in-flight readiness polls per loop turn.
    p.capacity(4096);
    // Nothing here uses the blocking thread pool; keep it small.
    p.thread_pool_limit(1);
    p
}

/// Decide the back end once per process.
pub fn resolve(mode: IoMode) -> io::Result<Backend> {
    let probe = || -> io::Result<()> {
        let p = proactor(Backend::IoUring, 1);
        p.build().map(drop)
    };
    match mode {
        IoMode::Epoll => Ok(Backend::Epoll),
        IoMode::Uring => match probe() {
            Ok(()) => Ok(Backend::IoUring),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("--io uring: io_uring is not available here: {e}"),
            )),
        },
        IoMode::Auto => match probe() {
            Ok(()) => Ok(Backend::IoUring),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring is not available; using epoll");
                Ok(Backend::Epoll)
            }
        },
    }
}

/// Build one shard's runtime, pinned to `core` when given, with a
/// provided-buffer ring of `ring_buffers` buffers on io_uring.
pub fn build_runtime(b: Backend, core: Option<usize>, ring_buffers: u16) -> io::Result<Runtime> {
    let mut rb = RuntimeBuilder::new();
    rb.with_proactor(proactor(b, ring_buffers));
    if let Some(c) = core {
        rb.thread_affinity(HashSet::from([c]));
    }
    rb.build()
}
