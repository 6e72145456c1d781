//! Accepting TCP connections on a shard's own `SO_REUSEPORT` listener:
//! readiness + `accept4`, a task per connection for its upgrade. Past the
//! shard's connection limit a new
//! connection gets `503` and is closed; accept errors back off and are
//! logged at most once per second.
//!
//! Also what the shards of one server share to admit WebSocket upgrades
//! (`Admission`): the `Origin` policy, the connections per client
//! address (`--max-conns-per-ip`) and the upgrade rate
//! (`--connect-rate-limit`). Both limits are checked when the upgrade is
//! about to be answered (after the head: `X-Forwarded-For` names the
//! client behind a trusted proxy), on the accept path, never on delivery.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use compio::runtime::fd::PollFd;
use rustix::net::SendFlags;
use socket2::Socket;

use super::shard_io::ShardIo;
use crate::metrics::ShardMetrics;

/// Retry pause after a failed accept (the cause, e.g. no free fd, rarely
/// clears faster).
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// Accept failures (EMFILE, ENFILE, ENOBUFS, …) recur on every retry
/// while their cause lasts: each is counted, and logged at most once per
/// second per shard with how many failed since the last line.
struct AcceptErrors(crate::throttle::Throttle);

impl Default for AcceptErrors {
    fn default() -> Self {
        AcceptErrors(crate::throttle::Throttle::new(Duration::from_secs(1)))
    }
}

impl AcceptErrors {
    async fn failed(&mut self, e: &io::Error, m: &ShardMetrics) {
        ShardMetrics::add(&m.accept_errors, 1);
        if let Some(failures) = self.0.hit(Instant::now()) {
            tracing::warn!(
                error = %e,
                failures,
                "accept failed; retrying (logged at most once per second)"
            );
        }
        // EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
        compio::time::sleep(ACCEPT_RETRY).await;
    }
}

/// How long the accept loop waits for an upgrade to end when
/// `--max-upgrades-in-flight` are under way.
const UPGRADE_SLOT_WAIT: Duration = Duration::from_millis(1);

/// Wait until fewer than `--max-upgrades-in-flight` upgrades are under
/// way, at most [`UPGRADE_SLOT_WAIT`]; false when the wait timed out.
async fn wait_for_upgrade_slot(io: &ShardIo) -> bool {
    let freed = io.wait(&io.upgrade_ended, |_| {
        io.handshaking.get() < io.max_upgrades
    });
    compio::time::timeout(UPGRADE_SLOT_WAIT, freed)
        .await
        .is_ok()
}

/// Count an accepted connection; false (and a `503` sent, the socket to be
/// dropped) when the shard is full or shutting down.
fn admit(io: &ShardIo, m: &ShardMetrics, fd: impl AsFd) -> bool {
    ShardMetrics::add(&m.accepted_total, 1);
    if io
        .shard
        .borrow()
        .has_room_for_connection(io.handshaking.get())
    {
        // Counted from now (the upgrade task has not run yet): the next
        // accept of this burst sees it.
        super::upgrade::handshaking(io, 1);
        return true;
    }
    ShardMetrics::add(&m.refused_total, 1);
    let _ = rustix::net::send(
        &fd,
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    );
    // Read what the client sent (with `--defer-accept` its request is
    // always there already): closing a socket with unread data sends a
    // reset, which may make the client drop the 503 unread.
    let _ = rustix::net::recv(
        &fd,
        &mut io.scratch.borrow_mut()[..],
        rustix::net::RecvFlags::DONTWAIT,
    );
    let _ = rustix::net::shutdown(&fd, rustix::net::Shutdown::Write);
    false
}

/// Connections accepted in a row before the accept loop lets the shard's
/// other tasks run.
const ACCEPT_BATCH: usize = 64;

/// Accept connections until the task is cancelled; each is upgraded at
/// once when its request is there, or gets a task for its upgrade, then
/// is parked.
pub async fn accept_loop(io: Rc<ShardIo>, listener: PollFd<Socket>) {
    let m = io.metrics();
    let mut errors = AcceptErrors::default();
    // Accepts allowed past `--max-upgrades-in-flight` after a wait for a
    // slot timed out.
    let mut past_cap = 0usize;
    // Plain connections without a PROXY header can be upgraded right here
    // when their request came with them ([`super::upgrade::upgrade_now`]).
    let immediate = io.admission.tls.is_none() && !io.admission.proxy_protocol;
    loop {
        if let Err(e) = listener.accept_ready().await {
            errors.failed(&e, &m).await;
            continue;
        }
        let mut burst = 0usize;
        loop {
            if io.max_upgrades > 0 && io.handshaking.get() >= io.max_upgrades {
                if past_cap == 0 {
                    ShardMetrics::add(&m.accept_pauses_total, 1);
                    if !wait_for_upgrade_slot(&io).await {
                        // Slots held by slow or silent clients: accept as
                        // many again rather than let them stall accepts.
                        past_cap = io.max_upgrades;
                    }
                    continue;
                }
                past_cap -= 1;
            } else {
                // Below the cap again: a timed-out wait's allowance ends.
                past_cap = 0;
            }
            // Non-blocking from the start (no fcntl); TCP_NODELAY comes
            // from the listener (Linux copies it to accepted sockets).
            let accepted = rustix::net::accept_with(
                listener.as_fd(),
                rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
            )
            .map(Socket::from)
            .map_err(io::Error::from);
            match accepted {
                Ok(s) => {
                    if admit(&io, &m, &s) {
                        let later = if immediate {
                            match super::upgrade::upgrade_now(&io, s) {
                                super::upgrade::Now::Done => None,
                                super::upgrade::Now::Later(s, head) => Some((s, head)),
                            }
                        } else {
                            Some((s, Vec::new()))
                        };
                        if let Some((s, head)) = later {
                            compio::runtime::spawn(super::parked::conn_task(io.clone(), s, head))
                                .detach();
                        }
                    }
                    // Upgrades done here are work: let reads, flushes and
                    // deliveries have their turn between batches.
                    burst += 1;
                    if burst >= ACCEPT_BATCH {
                        burst = 0;
                        super::tasks::yield_now().await;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    errors.failed(&e, &m).await;
                    break;
                }
            }
        }
    }
}

/// What the shards of one server share to admit an upgrade (built once
/// by the runtime).
#[derive(Debug)]
pub struct Admission {
    pub(super) origins: crate::proto::handshake::OriginPolicy,
    pub(super) trusted_proxies: Vec<crate::proto::handshake::Cidr>,
    pub(super) per_ip: Option<Arc<ConnsPerIp>>,
    pub(super) rate: Option<ConnectRate>,
    /// `--proxy-protocol`: a PROXY v2 header before every request.
    pub(super) proxy_protocol: bool,
    /// `--tls-cert`: every connection starts with a TLS handshake (loaded
    /// and set by the runtime).
    pub tls: Option<Arc<crate::tls::Tls>>,
}

impl Admission {
    /// From the settings (validated at start: a pattern or CIDR that does
    /// not parse here is skipped).
    pub fn new(c: &crate::config::Config) -> Admission {
        use crate::proto::handshake::{Cidr, OriginPattern, OriginPolicy};
        let origins: Vec<String> = c
            .allowed_origins
            .iter()
            .filter(|p| OriginPattern::parse(p).is_some())
            .cloned()
            .collect();
        Admission {
            origins: OriginPolicy::new(&origins, c.require_origin).unwrap_or_default(),
            trusted_proxies: c
                .trusted_proxies
                .iter()
                .filter_map(|s| Cidr::parse(s))
                .collect(),
            per_ip: (c.max_conns_per_ip > 0).then(|| Arc::new(ConnsPerIp::new(c.max_conns_per_ip))),
            proxy_protocol: c.proxy_protocol,
            rate: (c.connect_rate_limit > 0)
                .then(|| ConnectRate::new(c.connect_rate_limit, Instant::now())),
            tls: None,
        }
    }
}

/// Tables of [`ConnsPerIp`]: addresses spread over this many locks.
const IP_TABLES: usize = 16;

/// Open connections per client address (`--max-conns-per-ip`), per
/// process: a lock per sixteenth of the addresses, taken once when a
/// connection is admitted and once when it ends.
#[derive(Debug)]
pub(crate) struct ConnsPerIp {
    max: u32,
    hasher: std::collections::hash_map::RandomState,
    tables: [Mutex<HashMap<IpAddr, u32>>; IP_TABLES],
}

/// The key an address is counted under: an IPv4 address itself, an IPv6
/// address its /64 (one host usually has a whole /64 to pick from).
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !0u128 << 64).into()),
        v4 => v4,
    }
}

/// One connection counted against its address; dropping it (whichever
/// way the connection ends) gives the place back.
#[derive(Debug)]
pub(crate) struct IpSlot {
    table: Arc<ConnsPerIp>,
    ip: IpAddr,
}

impl ConnsPerIp {
    pub(crate) fn new(max: u32) -> ConnsPerIp {
        ConnsPerIp {
            max,
            hasher: Default::default(),
            tables: Default::default(),
        }
    }

    fn table(&self, ip: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        let i = (self.hasher.hash_one(ip) as usize) % IP_TABLES;
        self.tables[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Count one more connection of `ip`; `None` when it has `max`.
    pub(crate) fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let ip = counted_as(ip);
        let mut t = self.table(&ip);
        let n = t.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }

    /// Connections of `ip` now.
    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> u32 {
        let ip = counted_as(ip);
        self.table(&ip).get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut t = self.table.table(&self.ip);
        if let Some(n) = t.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// `--connect-rate-limit`: a token bucket of `n` tokens refilled at `n`
/// per second, kept as one atomic (GCRA: the time at which the bucket
/// will be full again), shared by the shards without a lock. The time is
/// passed in, so tests run it in virtual time.
#[derive(Debug)]
pub(crate) struct ConnectRate {
    epoch: Instant,
    /// Nanoseconds one token takes to come back.
    interval: u64,
    /// Nanoseconds of a full bucket (`n` tokens).
    burst: u64,
    /// Theoretical arrival time, nanoseconds since `epoch`.
    tat: AtomicU64,
}

impl ConnectRate {
    pub(crate) fn new(per_sec: u32, epoch: Instant) -> ConnectRate {
        let per_sec = u64::from(per_sec.max(1));
        let interval = (1_000_000_000 / per_sec).max(1);
        ConnectRate {
            epoch,
            interval,
            burst: interval * per_sec,
            tat: AtomicU64::new(0),
        }
    }

    /// Take a token at `now`; false when the bucket is empty.
    pub(crate) fn try_take(&self, now: Instant) -> bool {
        let ns = now.saturating_duration_since(self.epoch).as_nanos();
        self.try_take_at(u64::try_from(ns).unwrap_or(u64::MAX / 2))
    }

    /// Take a token at `now` nanoseconds after the epoch.
    pub(crate) fn try_take_at(&self, now: u64) -> bool {
        let mut tat = self.tat.load(Relaxed);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            if next > now.saturating_add(self.burst) {
                return false;
            }
            match self.tat.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(t) => tat = t,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let r = ConnectRate::new(5, Instant::now());
        assert_eq!((0..20).filter(|_| r.try_take_at(0)).count(), 5);
        // A token every 200 ms.
        assert!(!r.try_take_at(SEC / 5 - 1));
        assert!(r.try_take_at(SEC / 5));
        assert!(!r.try_take_at(SEC / 5));
        // Idle for long: a full bucket again, not more.
        assert_eq!((0..20).filter(|_| r.try_take_at(100 * SEC)).count(), 5);
        // Steady 10/s against 5/s: half get through.
        let got = (0..100)
            .filter(|i| r.try_take_at(200 * SEC + i * SEC / 10))
            .count();
        assert!((50..=56).contains(&got), "{got}");
    }

    #[test]
    fn the_bucket_is_shared_across_threads() {
        let r = Arc::new(ConnectRate::new(1000, Instant::now()));
        let got: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let r = r.clone();
                    s.spawn(move || (0..1000).filter(|_| r.try_take_at(SEC)).count())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(got, 1000);
    }

    #[test]
    fn per_ip_slots_are_given_back_on_drop() {
        let t = Arc::new(ConnsPerIp::new(2));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let s1 = t.try_take(a).unwrap();
        let s2 = t.try_take(a).unwrap();
        assert!(t.try_take(a).is_none());
        let s3 = t.try_take(b).unwrap();
        assert_eq!((t.count(a), t.count(b)), (2, 1));
        drop(s1);
        let s4 = t.try_take(a).unwrap();
        drop((s2, s3, s4));
        assert_eq!((t.count(a), t.count(b)), (0, 0));
        // IPv6: one /64 is one client.
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        let x = t.try_take(v6("2001:db8:0:1::1")).unwrap();
        let y = t.try_take(v6("2001:db8:0:1:ffff::2")).unwrap();
        assert!(t.try_take(v6("2001:db8:0:1::3")).is_none());
        let z = t.try_take(v6("2001:db8:0:2::1")).unwrap();
        assert_eq!(t.count(v6("2001:db8:0:1::9")), 2);
        drop((x, y, z));
        assert!(t.tables.iter().all(|m| m.lock().unwrap().is_empty()));
    }

    #[test]
    fn admission_follows_the_settings() {
        let a = Admission::new(&crate::config::Config {
            max_conns_per_ip: 3,
            ..Default::default()
        });
        assert!(a.per_ip.is_some());
        let b = Admission::new(&crate::config::Config::default());
        assert!(b.per_ip.is_none() && b.rate.is_none());
    }
}
