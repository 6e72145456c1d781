//! The control thread: one tokio current-thread runtime per process for
//! work that needs tokio or may wait (webhook calls, async authenticators,
//! room validators and hooks, the Redis bridge). Shards never block on it:
//! a shard's driver (`io::calls`) hands it the future of user code that
//! has to wait, and the result comes back on the shard's channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::task::Poll;
use std::thread::JoinHandle;

use crate::auth::BoxFuture;

/// Tasks the control thread runs at once when not configured
/// (`--control-max-tasks`).
pub const DEFAULT_MAX_TASKS: usize = 16_384;

/// The control thread's counters (exported by [`crate::metrics`]).
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Bounded tasks queued or running now (gauge).
    pub tasks: AtomicI64,
    /// Tasks refused because `max_tasks` were running.
    pub refused: AtomicU64,
}

/// Sends futures to the control thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ControlHandle {
    tx: tokio::sync::mpsc::UnboundedSender<BoxFuture<()>>,
    rt: tokio::runtime::Handle,
    stats: Arc<ControlStats>,
    max_tasks: usize,
}

/// Holds one of the `max_tasks` slots; frees it when the task ends (or is
/// dropped unrun at shutdown).
struct TaskSlot(Arc<ControlStats>);

impl Drop for TaskSlot {
    fn drop(&mut self) {
        self.0.tasks.fetch_sub(1, Relaxed);
    }
}

/// What became of a future polled inline.
#[derive(Debug)]
pub enum Inline<T> {
    /// It completed on its first poll.
    Ready(T),
    /// It had to wait: it now runs on the control thread.
    Offloaded,
    /// It panicked on its first poll (a bug in user code); the shard
    /// carries on.
    Panicked,
    /// It had to wait, but the control thread already runs `max_tasks`
    /// tasks: it was dropped (counted in [`ControlStats::refused`]).
    Refused,
}

impl ControlHandle {
    /// Run a long-lived service (the Redis bridge, the private metrics
    /// listener, the events-webhook dispatcher) on the control thread. Not
    /// counted against `max_tasks`: use [`ControlHandle::try_spawn`] for
    /// per-client work. Dropped if the thread has stopped (shutdown), which
    /// is what a caller wants then.
    pub fn spawn(&self, fut: BoxFuture<()>) {
        let _ = self.tx.send(fut);
    }

    /// Run per-client work on the control thread if fewer than `max_tasks`
    /// such tasks are queued or running; otherwise drop it, count it and
    /// return false. Bounds what clients can make the control thread hold.
    pub fn try_spawn(&self, fut: BoxFuture<()>) -> bool {
        let before = self.stats.tasks.fetch_add(1, Relaxed);
        if before >= self.max_tasks as i64 {
            self.stats.tasks.fetch_sub(1, Relaxed);
            self.stats.refused.fetch_add(1, Relaxed);
            return false;
        }
        let slot = TaskSlot(self.stats.clone());
        // If the thread has stopped, the future (and its slot) is dropped
        // right here.
        let _ = self.tx.send(Box::pin(async move {
            let _slot = slot;
            fut.await
        }));
        true
    }

    /// The control thread's counters.
    pub fn stats(&self) -> &Arc<ControlStats> {
        &self.stats
    }

    /// Poll `fut` once inline; if it is not ready, finish it on the control
    /// thread and pass the output to `done` there. The inline poll runs
    /// inside the control runtime's context, so tokio timers and I/O
    /// register there, and a panic is caught so a bug in an authenticator
    /// or hook cannot take a shard down.
    pub fn run_or_offload<T: Send + 'static>(
        &self,
        mut fut: BoxFuture<T>,
        done: impl FnOnce(T) + Send + 'static,
    ) -> Inline<T> {
        let polled = {
            let _enter = self.rt.enter();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::auth::poll_now(&mut fut)
            }))
        };
        match polled {
            Ok(Poll::Ready(v)) => Inline::Ready(v),
            Ok(Poll::Pending) => {
                if self.try_spawn(Box::pin(async move { done(fut.await) })) {
                    Inline::Offloaded
                } else {
                    Inline::Refused
                }
            }
            Err(_) => {
                tracing::error!("an authenticator, room validator or hook panicked");
                Inline::Panicked
            }
        }
    }
}

/// The running control thread.
#[derive(Debug)]
pub struct Control {
    handle: ControlHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Control {
    /// Start the thread with [`DEFAULT_MAX_TASKS`].
    pub fn start() -> std::io::Result<Control> {
        Self::start_with(DEFAULT_MAX_TASKS)
    }

    /// Start the thread; at most `max_tasks` per-client tasks at once
    /// (see [`ControlHandle::try_spawn`]).
    pub fn start_with(max_tasks: usize) -> std::io::Result<Control> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BoxFuture<()>>();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let rt_handle = rt.handle().clone();
        let thread = std::thread::Builder::new()
            .name("ignis-control".into())
            .spawn(move || {
                rt.block_on(async move {
                    loop {
                        tokio::select! {
                            fut = rx.recv() => match fut {
                                Some(fut) => { tokio::spawn(fut); }
                                None => break,
                            },
                            _ = &mut stop_rx => break,
                        }
                    }
                });
                // Outstanding tasks are dropped with the runtime.
            })?;
        Ok(Control {
            handle: ControlHandle {
                tx,
                rt: rt_handle,
                stats: Arc::default(),
                max_tasks: max_tasks.max(1),
            },
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// A handle for shards and library users.
    pub fn handle(&self) -> ControlHandle {
        self.handle.clone()
    }

    /// Stop the thread (pending work is dropped) and join it.
    pub fn join(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_past_the_cap_are_refused_and_slots_come_back() {
        let control = Control::start_with(2).unwrap();
        let h = control.handle();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (tx2, rx2) = tokio::sync::oneshot::channel::<()>();
        assert!(h.try_spawn(Box::pin(async move {
            let _ = rx.await;
        })));
        assert!(h.try_spawn(Box::pin(async move {
            let _ = rx2.await;
        })));
        assert!(!h.try_spawn(Box::pin(async {})));
        assert_eq!(h.stats().refused.load(Relaxed), 1);
        // A long-lived service is not counted.
        h.spawn(Box::pin(std::future::pending()));
        tx.send(()).unwrap();
        tx2.send(()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while h.stats().tasks.load(Relaxed) != 0 {
            assert!(std::time::Instant::now() < deadline, "slots not returned");
            std::thread::yield_now();
        }
        assert!(h.try_spawn(Box::pin(async {})));
        control.join();
    }
}
