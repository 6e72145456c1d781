//! Owns one worker: up to 19,000 client connections on one thread, their
//! setup, the receive hot path, and every per-delivery figure (counts,
//! latency histogram, delivery timeline; the order checks and the flood
//! frontier through [`super::order`]).
//!
//! ## Why tokio (current_thread + LocalSet), not a hand-rolled epoll loop
//!
//! - Setup is sequential per connection (bind, connect with timeout,
//!   upgrade, authenticate, join) with 512 of them in flight: as async code
//!   it is a straight function ([`super::conn::open`]); as an epoll state
//!   machine it would be five states and a timer wheel of our own.
//! - The hot path costs the same syscalls as an epoll loop would: tokio's
//!   driver is one edge-triggered epoll, and each wakeup does exactly one
//!   `recv`. The usual second `recv` that only returns EAGAIN to clear the
//!   readiness is avoided: a short read means the socket is drained, so the
//!   read runs inside `TcpStream::try_io` and reports WouldBlock itself,
//!   which clears readiness (tokio's readiness ticks make this race-free: data
//!   arriving after the read raises a new edge and a new tick).
//! - What tokio adds per wakeup (waking and polling one task) is small next
//!   to the `recv` copy, and a single thread means no atomics contended and
//!   no locks: the shared state is an `Rc<RefCell<_>>`, borrowed only between
//!   awaits.
//!
//! ## Memory
//!
//! One 64 KiB read buffer per worker (not per connection): a readable
//! connection's bytes are read into it, complete frames are decoded in place
//! with ignis-ws's codec (`decode_frame`, client role) and handled at once,
//! and only the tail of an incomplete frame is copied into that connection's
//! own `partial` vector (empty, and unallocated, for almost every
//! connection). A connection costs its task (a few hundred bytes), its
//! `TcpStream` and its kernel socket; a wss:// one also its rustls session
//! (buffers and keys, [`super::tls`]), whose one `recv` of ciphertext goes
//! into a second worker-wide 64 KiB buffer.
//!
//! ## Per delivery
//!
//! Frame header parse, prefix compare, two 20-digit parses (sequence, send
//! time), a sequence check against the connection's last number and a
//! 64-entry bitmap (duplicates vs late arrivals), one histogram record, a
//! timeline counter. The clock is read once per `recv`, not per frame.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::MissedTickBehavior;

use crate::proto::frame::{Frame, OpCode, Role, decode_frame, parse_close};

use super::conn::{self, ConnectError, Setup};
use super::order::{Arrival, Frontier, Order};
use super::payload::{self, Delivery, Phase};
use super::tls::{ReadOutcome, Stream};
use super::wire::{Command, Event, Progress, Ready, WireError, WorkerReport, histogram_to_hex};

/// The shared read buffer's size: one `recv` takes at most this much.
const READ_BUF: usize = 64 * 1024;
/// Largest server frame accepted while running.
const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Timeline resolution.
pub const TIMELINE_BUCKET_NS: u64 = 10_000_000;
/// Longest timeline kept (~11.6 h at 10 ms); later deliveries land in the
/// last bucket.
const MAX_TIMELINE: usize = 1 << 22;
/// Progress events at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Each connection sends `heartbeat` every HEARTBEAT_SLOTS ticks of
/// HEARTBEAT_TICK (30 s, the protocol's interval), spread over the ticks so
/// 19,000 heartbeats never leave at once.
const HEARTBEAT_TICK: Duration = Duration::from_secs(1);
const HEARTBEAT_SLOTS: usize = 30;
const HEARTBEAT: &[u8] = br#"{"event":"heartbeat"}"#;
/// Latency range: 1 ns to one hour, 3 significant digits.
pub const LATENCY_MAX_NS: u64 = 3_600_000_000_000;
/// Samples of unexpected messages kept for the report.
const MAX_SAMPLES: usize = 5;
const SAMPLE_LEN: usize = 160;

/// What one worker does.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: u64,
    pub setup: Setup,
    pub connections: u64,
    /// Global index of the first connection (source address, user id).
    pub first_index: u64,
    pub source_ips: Vec<IpAddr>,
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
    pub users: u64,
    /// Send [`Event::Frontier`] on every advance.
    pub flood: bool,
}

/// Why a worker could not run at all (a single connection's failure is a
/// counted figure, not an error).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start the worker runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot create the latency histogram: {0}")]
    Histogram(String),
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Runs a worker on the calling thread until [`Command::Finish`] (or the
/// command channel closes), sending events as it goes and its report last.
pub fn run_blocking(
    cfg: WorkerConfig,
    cmds: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
) -> Result<(), WorkerError> {
    let fatal = events.clone();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WorkerError::Runtime)
        .and_then(|rt| {
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, worker_main(cfg, cmds, events))
        });
    if let Err(e) = &result {
        let _ = fatal.send(Event::Fatal {
            error: e.to_string(),
        });
    }
    result
}

async fn worker_main(
    cfg: WorkerConfig,
    mut cmds: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
) -> Result<(), WorkerError> {
    let hist = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_NS, 3)
        .map_err(|e| WorkerError::Histogram(e.to_string()))?;
    let n = usize::try_from(cfg.connections).unwrap_or(usize::MAX);
    let state = Rc::new(RefCell::new(State::new(
        cfg.id,
        n,
        hist,
        events.clone(),
        cfg.flood,
    )));
    let setup = Rc::new(cfg.setup.clone());
    let sem = Rc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    for slot in 0..n {
        let g = cfg.first_index + slot as u64;
        let source = (!cfg.source_ips.is_empty())
            .then(|| cfg.source_ips[(g % cfg.source_ips.len() as u64) as usize]);
        let user = format!("bench-{}", g % cfg.users.max(1));
        tokio::task::spawn_local(connection(
            slot,
            g,
            source,
            user,
            Rc::clone(&state),
            Rc::clone(&setup),
            Rc::clone(&sem),
            cfg.connect_timeout,
        ));
    }
    tokio::task::spawn_local(heartbeats(Rc::clone(&state)));

    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ready_sent = false;
    loop {
        tokio::select! {
            _ = tick.tick() => state.borrow_mut().progress(&mut ready_sent, cfg.connections),
            cmd = cmds.recv() => match cmd {
                Some(Command::Start { t0_ns }) => state.borrow_mut().t0_ns = t0_ns,
                Some(Command::Finish) | None => break,
            },
        }
    }
    let report = state.borrow().report(cfg.connections)?;
    let _ = events.send(Event::Final(Box::new(report)));
    Ok(())
}

/// One connection, from setup to its end (or the worker's).
#[allow(clippy::too_many_arguments)] // reason: a task's captured inputs, spelled out
async fn connection(
    slot: usize,
    global: u64,
    source: Option<IpAddr>,
    user: String,
    state: Rc<RefCell<State>>,
    setup: Rc<Setup>,
    sem: Rc<Semaphore>,
    timeout: Duration,
) {
    let Ok(permit) = sem.acquire().await else {
        return;
    };
    state.borrow_mut().connect_started(payload::now_ns());
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ global.wrapping_mul(0xA24B_AED4_963E_E407) | 1;
    // Boxed so the setup future's size does not stay in this long-lived one.
    let opened = tokio::time::timeout(
        timeout,
        Box::pin(conn::open(&setup, source, &user, &mut rng)),
    )
    .await;
    drop(permit);
    drop(user);
    let (stream, leftover) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return state.borrow_mut().connect_failed(&e),
        Err(_) => return state.borrow_mut().connect_failed(&ConnectError::Timeout),
    };
    let stream = Rc::new(stream);
    state
        .borrow_mut()
        .connected(slot, Rc::clone(&stream), payload::now_ns());
    let mut c = Conn {
        slot,
        order: Order::default(),
        probed: false,
        partial: leftover.to_vec(),
    };
    let end = loop {
        if let Err(e) = stream.readable().await {
            break End::Error(e.to_string());
        }
        if let Step::End(end) = state.borrow_mut().on_readable(&stream, &mut c) {
            break end;
        }
    };
    state.borrow_mut().conn_ended(&c, end);
}

/// Sends each connection a `heartbeat` every 30 s, a thirtieth of them per
/// second.
async fn heartbeats(state: Rc<RefCell<State>>) {
    let mut tick = tokio::time::interval(HEARTBEAT_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    let mut k = 0usize;
    loop {
        tick.tick().await;
        state.borrow_mut().heartbeat_slot(k % HEARTBEAT_SLOTS);
        k = k.wrapping_add(1);
    }
}

/// Per-connection receive state (lives in the connection's task).
#[derive(Debug)]
struct Conn {
    slot: usize,
    order: Order,
    probed: bool,
    /// Bytes of an incomplete frame carried to the next read.
    partial: Vec<u8>,
}

enum Step {
    Continue,
    End(End),
}

/// How a connection ended.
enum End {
    Closed(u16),
    Eof,
    Error(String),
    Protocol(String),
}

#[derive(Debug, Default)]
struct Counters {
    received: u64,
    duplicates: u64,
    reordered: u64,
    gaps: u64,
    warmup_received: u64,
    probes_received: u64,
    other_messages: u64,
    disconnected: u64,
    heartbeats_sent: u64,
    pongs_sent: u64,
}

/// Everything the worker's connections share. Borrowed only between awaits.
struct State {
    id: u64,
    events: mpsc::UnboundedSender<Event>,
    flood: bool,
    rbuf: BytesMut,
    /// Ciphertext of one `recv` on a wss:// connection (unallocated for ws://).
    cbuf: BytesMut,
    wbuf: BytesMut,
    rng: u64,
    hist: Histogram<u64>,
    /// For heartbeats: each open connection's stream, by slot.
    streams: Vec<Option<Rc<Stream>>>,
    connected: u64,
    failed: u64,
    first_connect_ns: u64,
    last_connected_ns: u64,
    failures: BTreeMap<String, u64>,
    live: u64,
    probed: u64,
    frontier: Frontier,
    c: Counters,
    other_samples: Vec<String>,
    close_codes: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    first_recv_ns: u64,
    last_recv_ns: u64,
    /// Origin of the timeline; 0 until publishing starts.
    t0_ns: u64,
    timeline: Vec<u64>,
    warmup_timeline: Vec<u64>,
    last_progress: Progress,
}

/// Counts one delivery at `now` in its timeline bucket (nothing before
/// publishing started, when `t0_ns` is 0).
fn bump(timeline: &mut Vec<u64>, t0_ns: u64, now: u64) {
    if t0_ns == 0 {
        return;
    }
    let i = usize::try_from(now.saturating_sub(t0_ns) / TIMELINE_BUCKET_NS)
        .unwrap_or(usize::MAX)
        .min(MAX_TIMELINE - 1);
    if i >= timeline.len() {
        timeline.resize(i + 1, 0);
    }
    timeline[i] += 1;
}

impl State {
    fn new(
        id: u64,
        n: usize,
        hist: Histogram<u64>,
        events: mpsc::UnboundedSender<Event>,
        flood: bool,
    ) -> State {
        State {
            id,
            events,
            flood,
            rbuf: BytesMut::with_capacity(READ_BUF),
            cbuf: BytesMut::new(),
            wbuf: BytesMut::with_capacity(256),
            rng: 0x2545_F491_4F6C_DD1D ^ id.wrapping_add(1),
            hist,
            streams: vec![None; n],
            connected: 0,
            failed: 0,
            first_connect_ns: 0,
            last_connected_ns: 0,
            failures: BTreeMap::new(),
            live: 0,
            probed: 0,
            frontier: Frontier::default(),
            c: Counters::default(),
            other_samples: Vec::new(),
            close_codes: BTreeMap::new(),
            errors: BTreeMap::new(),
            first_recv_ns: 0,
            last_recv_ns: 0,
            t0_ns: 0,
            timeline: Vec::new(),
            warmup_timeline: Vec::new(),
            last_progress: Progress::default(),
        }
    }

    fn connect_started(&mut self, now: u64) {
        if self.first_connect_ns == 0 {
            self.first_connect_ns = now;
        }
    }

    fn connect_failed(&mut self, e: &ConnectError) {
        self.failed += 1;
        *self.failures.entry(e.class()).or_default() += 1;
    }

    fn connected(&mut self, slot: usize, stream: Rc<Stream>, now: u64) {
        self.connected += 1;
        self.live += 1;
        self.last_connected_ns = self.last_connected_ns.max(now);
        if let Some(s) = self.streams.get_mut(slot) {
            *s = Some(stream);
        }
    }

    /// Reads what one connection has and handles every complete frame.
    fn on_readable(&mut self, stream: &Stream, conn: &mut Conn) -> Step {
        self.rbuf.clear();
        // Reclaims the whole buffer: the frames split off it last time are
        // already dropped, so this never allocates in the steady state.
        self.rbuf.reserve(READ_BUF + conn.partial.len());
        self.rbuf.extend_from_slice(&conn.partial);
        conn.partial.clear();
        // One recv (a short one clears the readiness: no second recv that
        // only says EAGAIN); for wss:// decrypted into rbuf.
        match stream.read_available(&mut self.rbuf, &mut self.cbuf) {
            Ok(ReadOutcome::Eof) => return Step::End(End::Eof),
            Ok(ReadOutcome::Data(_)) => {}
            Ok(ReadOutcome::Nothing) => {
                // Spurious wakeup (or a TLS record with no data): keep the
                // carried bytes.
                conn.partial.extend_from_slice(&self.rbuf);
                return Step::Continue;
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Step::End(End::Protocol(e.to_string()));
            }
            Err(e) => return Step::End(End::Error(e.kind().to_string())),
        }
        let now = payload::now_ns();
        loop {
            match decode_frame(&mut self.rbuf, Role::Client, MAX_FRAME) {
                Ok(Some(frame)) => {
                    if let Some(end) = self.on_frame(stream, conn, frame, now) {
                        return Step::End(end);
                    }
                }
                Ok(None) => break,
                Err(e) => return Step::End(End::Protocol(e.to_string())),
            }
        }
        if !self.rbuf.is_empty() {
            conn.partial.extend_from_slice(&self.rbuf);
        } else if conn.partial.capacity() > 4096 {
            // A big frame passed; give its buffer back.
            conn.partial = Vec::new();
        }
        self.advance_frontier();
        Step::Continue
    }

    fn on_frame(
        &mut self,
        stream: &Stream,
        conn: &mut Conn,
        frame: Frame,
        now: u64,
    ) -> Option<End> {
        match frame.opcode {
            OpCode::Text | OpCode::Binary if frame.fin => match payload::parse(&frame.payload) {
                Some(d) => self.on_delivery(conn, &frame.payload, d, now),
                None => self.on_other(&frame.payload),
            },
            OpCode::Ping => return self.send_control(stream, OpCode::Pong, &frame.payload),
            OpCode::Close => {
                let code = match parse_close(frame.payload) {
                    Ok(Some(c)) => c.code,
                    Ok(None) => 1005,
                    Err(e) => return Some(End::Protocol(e.to_string())),
                };
                // Answer the close (best effort) before dropping the socket.
                let _ = self.send_control(stream, OpCode::Close, &code.to_be_bytes());
                return Some(End::Closed(code));
            }
            OpCode::Pong => {}
            // The servers never fragment; a fragment is counted, not reassembled.
            OpCode::Text | OpCode::Binary | OpCode::Continuation => self.on_other(&frame.payload),
        }
        None
    }

    fn on_other(&mut self, payload: &[u8]) {
        self.c.other_messages += 1;
        if self.other_samples.len() < MAX_SAMPLES {
            let cut = &payload[..payload.len().min(SAMPLE_LEN)];
            self.other_samples
                .push(String::from_utf8_lossy(cut).into_owned());
        }
    }

    #[inline]
    fn on_delivery(&mut self, conn: &mut Conn, bytes: &[u8], d: Delivery, now: u64) {
        let measured = match d.phase {
            Phase::Probe => {
                self.c.probes_received += 1;
                if !conn.probed {
                    conn.probed = true;
                    self.probed += 1;
                }
                return;
            }
            Phase::Warmup => false,
            Phase::Measured => true,
        };
        let seq = d.seq;
        let (fresh, late) = match conn.order.see(seq) {
            Arrival::Ahead { from } => {
                if seq - from > 1 && measured {
                    // Count only the measured numbers among those skipped.
                    let first = payload::first_measured(bytes).unwrap_or(0);
                    let lo = (from + 1).max(first);
                    self.c.gaps += seq.saturating_sub(lo);
                }
                self.frontier.pass(from, seq);
                (true, false)
            }
            Arrival::Late => (true, true),
            Arrival::Duplicate => (false, false),
        };
        if !measured {
            if fresh {
                self.c.warmup_received += 1;
                bump(&mut self.warmup_timeline, self.t0_ns, now);
            }
            return;
        }
        if !fresh {
            self.c.duplicates += 1;
            return;
        }
        self.c.received += 1;
        self.c.reordered += u64::from(late);
        self.hist.saturating_record(now.saturating_sub(d.sent_ns));
        if self.first_recv_ns == 0 {
            self.first_recv_ns = now;
        }
        self.last_recv_ns = now;
        bump(&mut self.timeline, self.t0_ns, now);
    }

    fn advance_frontier(&mut self) {
        if self.frontier.advance(self.live) && self.flood {
            let _ = self.events.send(Event::Frontier {
                seq: self.frontier.seq(),
                live: self.live,
            });
        }
    }

    /// Writes one small control frame. Client→server traffic is a few bytes
    /// a second, so the socket buffer always has room; a short write would
    /// corrupt the stream, so it ends the connection.
    fn send_control(&mut self, stream: &Stream, op: OpCode, payload: &[u8]) -> Option<End> {
        self.wbuf.clear();
        conn::client_frame(&mut self.wbuf, op, payload, &mut self.rng);
        match stream.try_write(&self.wbuf) {
            Ok(n) if n == self.wbuf.len() => {
                if op == OpCode::Pong {
                    self.c.pongs_sent += 1;
                }
                None
            }
            Ok(_) => Some(End::Error("short write of a control frame".into())),
            Err(e) => Some(End::Error(format!("write: {}", e.kind()))),
        }
    }

    fn heartbeat_slot(&mut self, slot: usize) {
        let mut i = slot;
        while i < self.streams.len() {
            if let Some(s) = self.streams[i].clone() {
                self.wbuf.clear();
                conn::client_frame(&mut self.wbuf, OpCode::Text, HEARTBEAT, &mut self.rng);
                match s.try_write(&self.wbuf) {
                    Ok(n) if n == self.wbuf.len() => self.c.heartbeats_sent += 1,
                    // The connection's own task sees the failure on its next
                    // read; count it here.
                    _ => {
                        *self
                            .errors
                            .entry("heartbeat not written".into())
                            .or_default() += 1
                    }
                }
            }
            i += HEARTBEAT_SLOTS;
        }
    }

    fn conn_ended(&mut self, conn: &Conn, end: End) {
        if let Some(s) = self.streams.get_mut(conn.slot) {
            *s = None;
        }
        self.frontier.unpass(conn.order.last);
        self.live = self.live.saturating_sub(1);
        self.c.disconnected += 1;
        if conn.probed {
            self.probed = self.probed.saturating_sub(1);
        }
        match end {
            End::Closed(code) => *self.close_codes.entry(code).or_default() += 1,
            End::Eof => {
                *self
                    .errors
                    .entry("closed without a close frame".into())
                    .or_default() += 1
            }
            End::Error(e) => *self.errors.entry(format!("read: {e}")).or_default() += 1,
            End::Protocol(e) => *self.errors.entry(format!("protocol: {e}")).or_default() += 1,
        }
        self.advance_frontier();
    }

    fn progress(&mut self, ready_sent: &mut bool, total: u64) {
        let p = Progress {
            connected: self.connected,
            failed: self.failed,
            live: self.live,
            probed: self.probed,
            received: self.c.received,
            warmup_received: self.c.warmup_received,
            frontier: self.frontier.seq(),
        };
        if p != self.last_progress {
            let _ = self.events.send(Event::Progress(p.clone()));
            self.last_progress = p;
        }
        if !*ready_sent && self.connected + self.failed >= total {
            *ready_sent = true;
            let _ = self.events.send(Event::Ready(Ready {
                connected: self.connected,
                failed: self.failed,
                first_connect_ns: self.first_connect_ns,
                last_connected_ns: self.last_connected_ns,
                failures: self.failures.clone(),
            }));
        }
    }

    fn report(&self, connections: u64) -> Result<WorkerReport, WireError> {
        Ok(WorkerReport {
            id: self.id,
            pid: std::process::id(),
            connections,
            live: self.live,
            received: self.c.received,
            duplicates: self.c.duplicates,
            reordered: self.c.reordered,
            gaps: self.c.gaps,
            warmup_received: self.c.warmup_received,
            probes_received: self.c.probes_received,
            other_messages: self.c.other_messages,
            other_samples: self.other_samples.clone(),
            disconnected: self.c.disconnected,
            close_codes: self.close_codes.clone(),
            errors: self.errors.clone(),
            heartbeats_sent: self.c.heartbeats_sent,
            pongs_sent: self.c.pongs_sent,
            first_recv_ns: self.first_recv_ns,
            last_recv_ns: self.last_recv_ns,
            timeline_t0_ns: self.t0_ns,
            timeline_bucket_ns: TIMELINE_BUCKET_NS,
            timeline: self.timeline.clone(),
            warmup_timeline: self.warmup_timeline.clone(),
            latency_hist_hex: histogram_to_hex(&self.hist)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (State, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let hist = Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).unwrap();
        (State::new(0, 4, hist, tx, true), rx)
    }

    fn conn() -> Conn {
        Conn {
            slot: 0,
            order: Order::default(),
            probed: false,
            partial: Vec::new(),
        }
    }

    /// A worker with one live connection.
    fn one_live() -> (State, mpsc::UnboundedReceiver<Event>, Conn) {
        let (mut s, rx) = state();
        s.live = 1;
        (s, rx, conn())
    }

    fn deliver(s: &mut State, c: &mut Conn, seq: u64, phase: Phase, first: u64) {
        let data = payload::data_json(100, seq, 1, phase, first);
        let mut p = br#"{"event":"b","data":"#.to_vec();
        p.extend_from_slice(&data);
        p.push(b'}');
        let d = payload::parse(&p).unwrap();
        s.on_delivery(c, &p, d, 1_000);
    }

    #[test]
    fn order_checks() {
        let (mut s, _rx, mut c) = one_live();
        deliver(&mut s, &mut c, 1, Phase::Warmup, 0);
        deliver(&mut s, &mut c, 2, Phase::Warmup, 0);
        // Warmup 3 lost, measured from 4; 4 lost too → one measured gap.
        deliver(&mut s, &mut c, 5, Phase::Measured, 4);
        assert_eq!(s.c.gaps, 1);
        assert_eq!(s.c.received, 1);
        assert_eq!(s.c.warmup_received, 2);
        deliver(&mut s, &mut c, 5, Phase::Measured, 4);
        assert_eq!(s.c.duplicates, 1);
        deliver(&mut s, &mut c, 4, Phase::Measured, 4);
        assert_eq!((s.c.reordered, s.c.received), (1, 2));
        deliver(&mut s, &mut c, 4, Phase::Measured, 4);
        assert_eq!(s.c.duplicates, 2);
        deliver(&mut s, &mut c, 200, Phase::Measured, 4);
        assert_eq!(s.c.gaps, 1 + 194);
        // Older than the bitmap: late, not a duplicate.
        deliver(&mut s, &mut c, 6, Phase::Measured, 4);
        assert_eq!((s.c.reordered, s.c.duplicates, s.c.received), (2, 2, 4));
        // Probes never touch the sequence.
        deliver(&mut s, &mut c, 0, Phase::Probe, 0);
        assert_eq!((s.probed, c.order.last), (1, 200));
        assert_eq!(s.hist.len(), 4);
    }

    /// Warmup deliveries get their own timeline on the measured one's
    /// clock (the coordinator counts the late ones into the server's
    /// throughput and CPU per delivery); duplicates and deliveries before
    /// publishing started count in neither.
    #[test]
    fn warmup_deliveries_have_a_timeline() {
        let (mut s, _rx, mut c) = one_live();
        deliver(&mut s, &mut c, 1, Phase::Warmup, 0);
        assert!(s.warmup_timeline.is_empty(), "no clock before Start");
        s.t0_ns = 500;
        deliver(&mut s, &mut c, 2, Phase::Warmup, 0);
        deliver(&mut s, &mut c, 2, Phase::Warmup, 0);
        deliver(&mut s, &mut c, 3, Phase::Warmup, 0);
        deliver(&mut s, &mut c, 4, Phase::Measured, 4);
        assert_eq!(s.warmup_timeline, vec![2]);
        assert_eq!(s.timeline, vec![1]);
        assert_eq!(s.c.warmup_received, 3);
        let r = s.report(1).unwrap();
        assert_eq!((r.warmup_timeline, r.timeline), (vec![2], vec![1]));
    }

    #[test]
    fn frontier_follows_the_slowest_live_connection() {
        let (mut s, mut rx) = state();
        s.live = 2;
        let (mut a, mut b) = (conn(), conn());
        for seq in 1..=3 {
            deliver(&mut s, &mut a, seq, Phase::Measured, 1);
        }
        s.advance_frontier();
        assert_eq!(s.frontier.seq(), 0);
        deliver(&mut s, &mut b, 2, Phase::Measured, 1); // 1 lost for b: passed
        s.advance_frontier();
        assert_eq!(s.frontier.seq(), 2);
        assert!(matches!(
            rx.try_recv(),
            Ok(Event::Frontier { seq: 2, live: 2 })
        ));
        // b dies: only a counts, which passed 3.
        s.conn_ended(&b, End::Eof);
        assert_eq!(s.frontier.seq(), 3);
        assert_eq!(s.c.disconnected, 1);
    }
}
