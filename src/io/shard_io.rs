//! What a shard's tasks share: the shard itself, the driver's
//! per-connection state ([`ConnSock`]), the wakers of the shard's tasks,
//! and the handling of the shard's events after every input
//! ([`ShardIo::with`]): dropping finished connections, calling user code
//! ([`calls`](super::calls)), waking the flusher and the encryptor.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use compio::runtime::fd::PollFd;
use rustix::event::epoll;
use socket2::Socket;

use super::calls::Calls;
use crate::metrics::{Registry, ShardMetrics};
use crate::proto::handshake::HandshakeLimits;
use crate::shard::{ConnKey, Shard};

/// The driver's state of one upgraded connection, kept in its shard
/// record: the socket (watched by the shard's epoll, see
/// [`super::parked`]; the record alone owns it).
///
/// `sock` must stay the socket's only descriptor (never duplicated):
/// dropping the record closes it, and that close is what takes it out of
/// the shard's epoll ([`ShardIo`]'s `drop_conn` makes no `EPOLL_CTL_DEL`).
/// A second descriptor would leave a level-triggered entry behind that
/// nothing removes.
#[derive(Debug)]
pub struct ConnSock {
    pub sock: Socket,
    /// The socket did not take everything: waiting for writability.
    pub write_blocked: bool,
    /// What only some connections have, out of line: a plain connection
    /// without `--max-conns-per-ip` holds 8 bytes here, not 16.
    pub(super) extra: Option<Box<SockExtra>>,
}

/// The parts of [`ConnSock`] that only some connections have.
#[derive(Debug, Default)]
pub(super) struct SockExtra {
    /// Its place under `--max-conns-per-ip`, given back when the record
    /// (and so this) is dropped.
    /// Boxed on its own (32 bytes), so that a TLS connection without the
    /// limit holds a 16-byte `SockExtra`.
    #[expect(dead_code, reason = "held for its Drop")]
    ip_slot: Option<Box<super::accept::IpSlot>>,
    /// The TLS record layer (`--tls-cert`), between the shard and the
    /// socket (boxed on its own: it is taken out for each read and flush).
    tls: Option<Box<crate::tls::Session>>,
}

impl ConnSock {
    /// A freshly upgraded connection's socket state.
    pub(super) fn new(
        sock: Socket,
        ip_slot: Option<super::accept::IpSlot>,
        tls: Option<Box<crate::tls::Session>>,
    ) -> ConnSock {
        let extra = (ip_slot.is_some() || tls.is_some()).then(|| {
            Box::new(SockExtra {
                ip_slot: ip_slot.map(Box::new),
                tls,
            })
        });
        ConnSock {
            sock,
            write_blocked: false,
            extra,
        }
    }

    /// Whether the connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.tls.is_some())
    }

    /// Take its TLS session out (to use it beside the shard); give it
    /// back with [`ConnSock::put_tls`].
    pub(super) fn take_tls(&mut self) -> Option<Box<crate::tls::Session>> {
        self.extra.as_mut().and_then(|e| e.tls.take())
    }

    /// Give back the TLS session taken by [`ConnSock::take_tls`].
    pub(super) fn put_tls(&mut self, session: Box<crate::tls::Session>) {
        let extra = self.extra.get_or_insert_with(Default::default);
        debug_assert!(extra.tls.is_none(), "a second TLS session put back");
        extra.tls = Some(session);
    }

    /// Its TLS session, if it has one.
    pub(super) fn tls_mut(&mut self) -> Option<&mut crate::tls::Session> {
        self.extra.as_mut().and_then(|e| e.tls.as_deref_mut())
    }
}

impl AsFd for ConnSock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Everything a shard's tasks share.
pub struct ShardIo {
    pub shard: RefCell<Shard<ConnSock>>,
    /// User code the shard's events ask for.
    pub(super) calls: Calls,
    /// For `POST /api/publish`.
    pub(super) handle: crate::handle::Handle,
    pub(super) api_key: Option<String>,
    pub(super) max_body: usize,
    /// `POST /api/publish` bodies being read now, and how many may be
    /// (this shard's share of `--api-max-pending-bodies`).
    pub(super) bodies: Cell<usize>,
    pub(super) max_bodies: usize,
    /// `/metrics` is served on this port (not moved by `--metrics-listen`).
    pub(super) metrics_public: bool,
    /// The shard-wide read buffer.
    pub(super) scratch: RefCell<Vec<u8>>,
    /// Connections accepted but not yet upgraded (they count against
    /// `max_connections` too).
    pub(super) handshaking: Cell<usize>,
    /// `--max-upgrades-in-flight` (0: no limit), and the accept loop
    /// waiting for an upgrade to end.
    pub(super) max_upgrades: usize,
    pub(super) upgrade_ended: Cell<Option<Waker>>,
    pub(super) registry: Arc<Registry>,
    pub(super) limits: HandshakeLimits,
    pub(super) path: String,
    pub(super) handshake_timeout: Duration,
    /// Origin policy and the per-process upgrade limits, shared by the
    /// server's shards.
    pub(super) admission: Arc<super::accept::Admission>,
    /// TLS handshakes in progress on this shard, and how many may be
    /// (its share of `--tls-max-handshakes`).
    pub(super) tls_handshaking: Cell<usize>,
    pub(super) tls_max_handshakes: usize,
    /// Records sealed at flush, before the `send` (shard-wide).
    pub(super) tls_out: RefCell<Vec<u8>>,
    /// Plaintext opened from what a TLS connection sent (shard-wide).
    pub(super) tls_plain: RefCell<Vec<u8>>,
    /// Where this shard reports what it needs to hear from Redis
    /// (`--redis-subscribe interest`).
    interest: Option<flume::Sender<crate::bridge::interest::BridgeInput>>,
    /// The shard's own epoll instance for parked connections (see
    /// [`super::parked`]).
    pub(super) ep: PollFd<OwnedFd>,
    flush_waker: Cell<Option<Waker>>,
    interest_waker: Cell<Option<Waker>>,
    encrypt_waker: Cell<Option<Waker>>,
    shutdown_waker: Cell<Option<Waker>>,
}

/// Size of the shard-wide read buffer.
const SCRATCH: usize = 64 * 1024;

impl ShardIo {
    /// Wrap a shard. Fails if the shard's epoll instance cannot be
    /// created.
    pub fn new(
        shard: Shard<ConnSock>,
        calls: Calls,
        admission: Arc<super::accept::Admission>,
        registry: Arc<Registry>,
        handle: crate::handle::Handle,
        interest: Option<flume::Sender<crate::bridge::interest::BridgeInput>>,
    ) -> io::Result<Rc<ShardIo>> {
        let c = shard.ctx.config.clone();
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(io::Error::from)
            .and_then(PollFd::new)?;
        Ok(Rc::new(ShardIo {
            calls,
            handle,
            api_key: c.api_key.clone(),
            max_body: c.redis_max_message,
            bodies: Cell::new(0),
            max_bodies: c.api_max_pending_bodies.div_ceil(c.shards.max(1)).max(1),
            metrics_public: c.metrics_listen.is_none(),
            limits: HandshakeLimits {
                max_head_bytes: c.max_handshake_bytes,
                max_headers: 64,
            },
            path: c.path.clone(),
            handshake_timeout: c.handshake_timeout,
            admission,
            shard: RefCell::new(shard),
            scratch: RefCell::new(vec![0; SCRATCH]),
            handshaking: Cell::new(0),
            max_upgrades: c.max_upgrades_in_flight as usize,
            upgrade_ended: Cell::new(None),
            tls_handshaking: Cell::new(0),
            tls_max_handshakes: (c.tls_max_handshakes as usize)
                .div_ceil(c.shards.max(1))
                .max(1),
            tls_out: RefCell::new(Vec::new()),
            tls_plain: RefCell::new(Vec::new()),
            registry,
            interest,
            ep,
            flush_waker: Cell::new(None),
            interest_waker: Cell::new(None),
            encrypt_waker: Cell::new(None),
            shutdown_waker: Cell::new(None),
        }))
    }

    pub(super) fn metrics(&self) -> Arc<ShardMetrics> {
        self.shard.borrow().ctx.metrics.clone()
    }

    /// Give the shard an input, then carry out what it asks for.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&mut Shard<ConnSock>) -> R) -> R {
        let r = f(&mut self.shard.borrow_mut());
        self.after();
        r
    }

    /// Carry out the shard's outputs: its events, then wake the tasks
    /// that have work (flusher, encryptor, shutdown).
    pub fn after(&self) {
        loop {
            let closed = {
                let mut sh = self.shard.borrow_mut();
                let Some(ev) = sh.poll_event() else { break };
                // User code runs inline here; it cannot reach the shard.
                sh.answer(ev, &mut &self.calls, Instant::now())
            };
            if let Some(key) = closed {
                self.drop_conn(key);
            }
        }
        let sh = self.shard.borrow();
        if sh.has_interest()
            && let Some(w) = self.interest_waker.take()
        {
            w.wake();
        }
        if sh.has_dirty()
            && let Some(w) = self.flush_waker.take()
        {
            w.wake();
        }
        if sh.has_encryption_work()
            && let Some(w) = self.encrypt_waker.take()
        {
            w.wake();
        }
        if sh.is_shutting_down()
            && let Some(w) = self.shutdown_waker.take()
        {
            w.wake();
        }
    }

    /// Send what the shard started or stopped needing to hear to the
    /// Redis subscriber, in one message (none when nothing changed).
    /// [`super::tasks::reporter`] calls it at most once per
    /// [`super::tasks::INTEREST_COALESCE`]; a barrier calls it directly.
    pub(super) fn report_interest(&self, sh: &mut Shard<ConnSock>) {
        if let Some(tx) = &self.interest {
            let mut changes = Vec::new();
            sh.poll_interest(&mut changes);
            if !changes.is_empty() {
                let _ = tx.send(crate::bridge::interest::BridgeInput::Interest { changes });
            }
        }
    }

    /// A finished connection: out of the shard and the epoll, its socket
    /// closed.
    fn drop_conn(&self, key: ConnKey) {
        let mut sh = self.shard.borrow_mut();
        // Only the finished connection the event named (events are handled
        // in the turn they are made, so its slot cannot have been reused).
        if !sh.conn(key).is_some_and(|c| c.is_dead()) {
            return;
        }
        // Dropping the socket closes it, and closing the one descriptor of
        // a socket takes it out of the shard's epoll: the record holds the
        // only one (the upgrade's shared handle was unwrapped when it was
        // parked, which also means no operation on it was pending), so no
        // `EPOLL_CTL_DEL` is needed (a system call per disconnect).
        drop(sh.remove(key));
    }

    /// Wait until `ready` says there is work; `slot` keeps the waker.
    pub(super) async fn wait(
        &self,
        slot: &Cell<Option<Waker>>,
        ready: impl Fn(&Shard<ConnSock>) -> bool,
    ) {
        std::future::poll_fn(|cx| {
            if ready(&self.shard.borrow()) {
                std::task::Poll::Ready(())
            } else {
                slot.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Until some connection has queued output.
    pub(super) async fn dirty(&self) {
        self.wait(&self.flush_waker, |sh| sh.has_dirty()).await
    }

    /// Whether this shard reports its interest to a Redis subscriber.
    pub fn reports_interest(&self) -> bool {
        self.interest.is_some()
    }

    /// Until the shard has changes of interest to report.
    pub(super) async fn interest_changed(&self) {
        self.wait(&self.interest_waker, |sh| sh.has_interest())
            .await
    }

    /// Until frames wait to be encrypted.
    pub(super) async fn encryption_work(&self) {
        self.wait(&self.encrypt_waker, |sh| sh.has_encryption_work())
            .await
    }

    /// Until `Shutdown` arrived.
    pub async fn shutting_down(&self) {
        self.wait(&self.shutdown_waker, |sh| sh.is_shutting_down())
            .await
    }
}

#[cfg(test)]
mod record_size {
    /// An idle connection's record (the shard's state of it and the
    /// driver's) in the shard's slab: 224 bytes before issue 16's third
    /// session, 168 after it, 152 since the fourth (a thin user id, the
    /// socket's rare parts in one box; PERFORMANCE.md, "Idle memory and
    /// connect, fourth session"), 144 since the sixth (the close state in
    /// the rare-parts box). Growing it costs every idle connection; this
    /// says so.
    #[test]
    fn an_idle_connection_record_stays_at_144_bytes() {
        let size = std::mem::size_of::<crate::shard::conn::Conn<super::ConnSock>>();
        assert!(size <= 144, "Conn<ConnSock> is {size} bytes");
        assert!(std::mem::size_of::<super::ConnSock>() <= 16);
    }
}
