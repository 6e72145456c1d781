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

fn proactor(b: Backend) -> ProactorBuilder {
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
    // Room for many in-flight readiness polls per loop turn.
    p.capacity(4096);
    // Nothing here uses the blocking thread pool; keep it small.
    p.thread_pool_limit(1);
    p
}

/// Decide the back end once per process.
pub fn resolve(mode: IoMode) -> io::Result<Backend> {
    let probe = || -> io::Result<()> {
        let p = proactor(Backend::IoUring);
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

/// Build one shard's runtime, pinned to `core` when given.
pub fn build_runtime(b: Backend, core: Option<usize>) -> io::Result<Runtime> {
    let mut rb = RuntimeBuilder::new();
    rb.with_proactor(proactor(b));
    if let Some(c) = core {
        rb.thread_affinity(HashSet::from([c]));
    }
    rb.build()
}
