//! Owns publishing benchmark messages, and the counts of what was
//! published: through Redis as an Ignis emitter (`PUBLISH ws:room:ROOM` or
//! `ws:broadcast` with `serverId: "emitter"`), or through ignis-ws's
//! `POST /api/publish`.
//!
//! Publishing never blocks the coordinator's pacing loop: each batch is a
//! spawned task. Redis batches go out as one pipeline on one multiplexed
//! connection (one round trip per batch, however many messages), in order.
//! HTTP sends one request per message on its own connection (ignis-ws
//! answers with `Connection: close`), one after the other from a single
//! sender task: concurrent requests would reach the server in any order and
//! show up as reorders that the server did not make. Sequential requests on
//! loopback reach a few thousand publishes per second, plenty when each fans
//! out to N clients; if the rate asked is higher, the achieved publish rate
//! in the report says so.
//!
//! A message's send time is stamped into it as it is built, right before it
//! is handed to Redis or written to the HTTP connection, so latency is the
//! delivery path's: publisher → Redis or HTTP → server → client, without
//! time spent queued inside the generator.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::bridge::{
    self,
    envelope::{self, EMITTER_SERVER_ID, Kind},
};

use super::args::{HttpTarget, Plan, PublishPlan};
use super::payload::{self, Phase};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the publisher could not start.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot connect to Redis: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("HTTP publish endpoint {addr}: {why}")]
    Http { addr: String, why: String },
}

/// Counts by phase (probe, warmup, measured).
#[derive(Debug, Default)]
pub struct PublishStats {
    ok: [AtomicU64; 3],
    failed: [AtomicU64; 3],
    in_flight: AtomicU64,
    /// Redis only: fewest/most subscribers a PUBLISH reached.
    min_receivers: AtomicU64,
    max_receivers: AtomicU64,
    first_error: Mutex<Option<String>>,
}

fn phase_index(p: Phase) -> usize {
    match p {
        Phase::Probe => 0,
        Phase::Warmup => 1,
        Phase::Measured => 2,
    }
}

impl PublishStats {
    fn new() -> PublishStats {
        PublishStats {
            min_receivers: AtomicU64::new(u64::MAX),
            ..PublishStats::default()
        }
    }

    pub fn ok(&self, p: Phase) -> u64 {
        self.ok[phase_index(p)].load(Ordering::Relaxed)
    }

    pub fn failed(&self, p: Phase) -> u64 {
        self.failed[phase_index(p)].load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// (fewest, most) servers a Redis PUBLISH reached; None for HTTP or
    /// before any reply.
    pub fn receivers(&self) -> Option<(u64, u64)> {
        let min = self.min_receivers.load(Ordering::Relaxed);
        (min != u64::MAX).then(|| (min, self.max_receivers.load(Ordering::Relaxed)))
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|g| g.clone())
    }

    fn done(&self, phase: Phase, ok: u64, failed: u64, error: Option<String>) {
        let i = phase_index(phase);
        self.ok[i].fetch_add(ok, Ordering::Relaxed);
        self.failed[i].fetch_add(failed, Ordering::Relaxed);
        self.in_flight.fetch_sub(ok + failed, Ordering::Relaxed);
        if let Some(e) = error
            && let Ok(mut g) = self.first_error.lock()
            && g.is_none()
        {
            *g = Some(e);
        }
    }
}

/// Publishes messages of one run.
pub struct PublishLoad {
    how: How,
    payload_size: usize,
    stats: Arc<PublishStats>,
}

enum How {
    Redis {
        conn: MultiplexedConnection,
        channel: String,
        kind: Kind,
        target: Option<String>,
    },
    Http {
        /// To the sender task, which publishes in order.
        queue: mpsc::UnboundedSender<(Phase, std::ops::Range<u64>, u64)>,
    },
}

impl std::fmt::Debug for PublishLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.how {
            How::Redis { .. } => "redis",
            How::Http { .. } => "http",
        };
        f.debug_struct("PublishLoad").field("how", &how).finish()
    }
}

impl PublishLoad {
    /// Connects (Redis) or checks the endpoint is reachable (HTTP). Must run
    /// inside a tokio runtime.
    pub async fn connect(plan: &Plan) -> Result<PublishLoad, PublishError> {
        let (kind, target) = if plan.broadcast {
            (Kind::Broadcast, None)
        } else {
            (Kind::Room, Some(plan.room.clone()))
        };
        let how = match &plan.publish {
            PublishPlan::Redis { url } => {
                let client = bridge::client(url, None).map_err(PublishError::Redis)?;
                let conn = bridge::conn::multiplexed(&client, RESPONSE_TIMEOUT)
                    .await
                    .map_err(PublishError::Redis)?;
                How::Redis {
                    conn,
                    channel: envelope::channel(kind, target.as_deref()),
                    kind,
                    target,
                }
            }
            PublishPlan::Http { target: t, key } => {
                let probe = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(t.addr)).await;
                match probe {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        return Err(PublishError::Http {
                            addr: t.addr.to_string(),
                            why: e.to_string(),
                        });
                    }
                    Err(_) => {
                        return Err(PublishError::Http {
                            addr: t.addr.to_string(),
                            why: "connect timed out".into(),
                        });
                    }
                }
                let head = match &target {
                    Some(room) => format!(
                        r#""type":"{}","target":{},"event":"{}""#,
                        kind.as_str(),
                        serde_json::Value::String(room.clone()),
                        payload::EVENT
                    ),
                    None => format!(r#""type":"{}","event":"{}""#, kind.as_str(), payload::EVENT),
                };
                let (queue, rx) = mpsc::unbounded_channel();
                let stats = Arc::new(PublishStats::new());
                tokio::spawn(http_sender(
                    rx,
                    t.clone(),
                    key.clone(),
                    head,
                    plan.payload_size,
                    Arc::clone(&stats),
                ));
                return Ok(PublishLoad {
                    how: How::Http { queue },
                    payload_size: plan.payload_size,
                    stats,
                });
            }
        };
        Ok(PublishLoad {
            how,
            payload_size: plan.payload_size,
            stats: Arc::new(PublishStats::new()),
        })
    }

    pub fn stats(&self) -> &Arc<PublishStats> {
        &self.stats
    }

    /// Publishes the messages `seqs` of `phase`, stamping each with the
    /// current time; returns at once (the sending is a spawned task).
    pub fn publish(&self, phase: Phase, seqs: std::ops::Range<u64>, first_measured: u64) {
        let count = seqs.end.saturating_sub(seqs.start);
        if count == 0 {
            return;
        }
        self.stats.in_flight.fetch_add(count, Ordering::Relaxed);
        let size = self.payload_size;
        match &self.how {
            How::Redis {
                conn,
                channel,
                kind,
                target,
            } => {
                let mut pipe = redis::pipe();
                for seq in seqs {
                    let data =
                        payload::data_json(size, seq, payload::now_ns(), phase, first_measured);
                    let env = envelope::encode(
                        EMITTER_SERVER_ID,
                        *kind,
                        target.as_deref(),
                        payload::EVENT,
                        Some(&data),
                        None,
                    );
                    pipe.cmd("PUBLISH").arg(channel.as_str()).arg(env);
                }
                let mut conn = conn.clone();
                let stats = Arc::clone(&self.stats);
                tokio::spawn(async move {
                    match pipe.query_async::<Vec<u64>>(&mut conn).await {
                        Ok(reached) => {
                            for r in &reached {
                                stats.min_receivers.fetch_min(*r, Ordering::Relaxed);
                                stats.max_receivers.fetch_max(*r, Ordering::Relaxed);
                            }
                            stats.done(phase, count, 0, None);
                        }
                        Err(e) => stats.done(phase, 0, count, Some(format!("redis: {e}"))),
                    }
                });
            }
            How::Http { queue } => {
                if queue.send((phase, seqs, first_measured)).is_err() {
                    self.stats
                        .done(phase, 0, count, Some("http sender stopped".into()));
                }
            }
        }
    }

    /// Waits until every publish has been answered, at most `limit`; true if
    /// none is left.
    pub async fn settle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.stats.in_flight() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }
}

/// Publishes what the queue hands it, one request at a time, in order.
async fn http_sender(
    mut rx: mpsc::UnboundedReceiver<(Phase, std::ops::Range<u64>, u64)>,
    target: HttpTarget,
    key: String,
    head: String,
    size: usize,
    stats: Arc<PublishStats>,
) {
    while let Some((phase, seqs, first_measured)) = rx.recv().await {
        for seq in seqs {
            let data = payload::data_json(size, seq, payload::now_ns(), phase, first_measured);
            let r =
                tokio::time::timeout(RESPONSE_TIMEOUT, http_publish(&target, &key, &head, &data))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
            match r {
                Ok(()) => stats.done(phase, 1, 0, None),
                Err(e) => stats.done(phase, 0, 1, Some(format!("http: {e}"))),
            }
        }
    }
}

/// One `POST /api/publish`; Ok on 202.
async fn http_publish(t: &HttpTarget, key: &str, head: &str, data: &[u8]) -> Result<(), String> {
    let mut body = Vec::with_capacity(head.len() + data.len() + 10);
    body.push(b'{');
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(br#","data":"#);
    body.extend_from_slice(data);
    body.push(b'}');
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        t.path,
        t.host,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let mut s = TcpStream::connect(t.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.write_all(&req).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(512);
    loop {
        if s.read_buf(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?
            == 0
        {
            return Err("closed before a response".into());
        }
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return match resp.code {
                    Some(202) => Ok(()),
                    Some(c) => Err(format!("HTTP {c}")),
                    None => Err("no status".into()),
                };
            }
            Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => {}
            _ => return Err("bad HTTP response".into()),
        }
    }
}
