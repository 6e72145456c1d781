//! The control thread: one tokio current-thread runtime per process for
//! work that needs tokio or may wait (webhook calls, async authenticators,
//! room validators and hooks; next, the Redis bridge). Shards never block
//! on it: they hand it a future and get the result back on their channel.

use std::task::Poll;
use std::thread::JoinHandle;

use crate::auth::BoxFuture;

/// Sends futures to the control thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ControlHandle {
    tx: tokio::sync::mpsc::UnboundedSender<BoxFuture<()>>,
    rt: tokio::runtime::Handle,
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
}

impl ControlHandle {
    /// Run `fut` on the control thread. Dropped if the thread has stopped
    /// (shutdown), which is what a caller wants then.
    pub fn spawn(&self, fut: BoxFuture<()>) {
        let _ = self.tx.send(fut);
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
                self.spawn(Box::pin(async move { done(fut.await) }));
                Inline::Offloaded
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
    /// Start the thread.
    pub fn start() -> std::io::Result<Control> {
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
            handle: ControlHandle { tx, rt: rt_handle },
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
