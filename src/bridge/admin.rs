//! Cluster-wide operator actions over Redis: disconnect a user's sessions
//! or one client on whichever node holds them, and count a room's members
//! or a user's sessions across the cluster.
//!
//! Every ignis-ws node SUBSCRIBEs [`CONTROL`] and its own
//! `ignis-ws:node:{serverId}` ([`node_channel`]); Ignis on Bun subscribes
//! only `ws:broadcast` and the `ws:*` patterns, so it never sees them.
//! Messages are small JSON objects, `{"v":1,"op":…,"from":serverId,…}`:
//!
//! * `hello` on [`CONTROL`] every [`HELLO_EVERY`]: the nodes alive (seen
//!   within 3 hellos) are the ones a count waits for;
//! * `disconnect` on [`CONTROL`] (`user` or `client`, `code`): each node
//!   closes its share; at most once, like every pub/sub message;
//! * `count` on [`CONTROL`] (`id`, `room`/`user`/`client`), answered with
//!   `count-reply` (`id`, `count`) on the asker's node channel. The asker
//!   adds its own share and returns when every node alive has answered or
//!   after [`COUNT_TIMEOUT`], saying how many answered out of how many.
//!
//! Each node answers for what it holds when the request reaches it, so a
//! total is as old as the slowest answer (at most [`COUNT_TIMEOUT`]) and
//! counts only ignis-ws nodes. Anyone who can PUBLISH to this Redis can
//! send these, as they can send envelopes: the Redis ACL is the boundary.
//! What comes from Redis is bounded: [`MAX_CONTROL`] bytes, ids of at most
//! [`MAX_NAME`] bytes, codes 1008 or 4000–4999, at most [`MAX_NODES`]
//! nodes remembered and [`MAX_PENDING`] counts waiting; anything else is
//! dropped and counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::publisher::{Outgoing, Publisher};
use crate::delivery::{ClientId, Who};
use crate::metrics::BridgeMetrics;

/// The channel every ignis-ws node listens to for operator actions.
pub const CONTROL: &str = "ignis-ws:control";
/// Prefix of a node's own channel (answers to its requests).
pub const NODE_PREFIX: &str = "ignis-ws:node:";
/// How often a node says it is alive.
pub const HELLO_EVERY: Duration = Duration::from_secs(5);
/// How long a count waits for the other nodes.
pub const COUNT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest control message taken from Redis.
pub const MAX_CONTROL: usize = 4096;
/// Largest user id, room or server id in a control message.
pub const MAX_NAME: usize = 512;
/// Nodes remembered at once.
pub const MAX_NODES: usize = 10_000;
/// Counts waiting for answers at once (more get an error at once).
pub const MAX_PENDING: usize = 256;
/// Inputs (control messages from Redis, requests from this process)
/// waiting for the admin task; past it they are dropped and counted.
pub const ADMIN_QUEUE: usize = 1024;

/// `ignis-ws:node:{serverId}`.
pub fn node_channel(server_id: &str) -> String {
    format!("{NODE_PREFIX}{server_id}")
}

/// A cluster-wide count: this node's share plus the others' answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCount {
    /// The total of every answer.
    pub count: u64,
    /// This node's share.
    pub local: u64,
    /// Nodes whose answer is in `count`, this one included.
    pub nodes: u32,
    /// Nodes known to be alive (by their hellos), this one included.
    pub expected_nodes: u32,
    /// Every node alive answered in time.
    pub complete: bool,
}

/// A request from this process (`Handle`) to the admin task.
#[derive(Debug)]
pub enum AdminRequest {
    /// Tell the other nodes to disconnect.
    Disconnect { who: Who, code: u16 },
    /// Ask the other nodes to count; `local` is this node's share.
    Count {
        who: Who,
        local: u64,
        reply: flume::Sender<ClusterCount>,
    },
}

/// What reaches the admin task.
#[derive(Debug)]
pub enum AdminInput {
    /// A message on [`CONTROL`] or this node's channel.
    FromRedis(Vec<u8>),
    Request(AdminRequest),
    /// The subscriber is (again) subscribed: say hello now, so the other
    /// nodes know this one without waiting for the next round.
    Subscribed,
}

/// What the admin task needs from this process: its shards.
pub trait LocalAdmin: Send + Sync + 'static {
    /// Close this process's share of `who`; how many were closed.
    fn disconnect_local(
        &self,
        who: Who,
        code: u16,
    ) -> std::pin::Pin<Box<dyn Future<Output = usize> + Send + '_>>;
    /// Count this process's share of `who`.
    fn count_local(&self, who: Who) -> std::pin::Pin<Box<dyn Future<Output = usize> + Send + '_>>;
}

/// One control message, as sent and as parsed (unknown fields ignored,
/// unknown ops dropped).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Message {
    v: u32,
    op: String,
    from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

impl Message {
    fn new(op: &str, from: &str) -> Message {
        Message {
            v: 1,
            op: op.into(),
            from: from.into(),
            id: None,
            user: None,
            room: None,
            client: None,
            code: None,
            count: None,
        }
    }

    fn with_who(mut self, who: &Who) -> Message {
        match who {
            Who::User(u) => self.user = Some(u.to_string()),
            Who::Room(r) => self.room = Some(r.to_string()),
            Who::Client(c) => self.client = Some(c.to_string()),
        }
        self
    }

    /// The one target it names, if it names exactly one.
    fn who(&self) -> Option<Who> {
        match (&self.user, &self.room, &self.client) {
            (Some(u), None, None) if !u.is_empty() => Some(Who::User(u.as_str().into())),
            (None, Some(r), None) if !r.is_empty() => Some(Who::Room(r.as_str().into())),
            (None, None, Some(c)) => ClientId::parse(c).map(Who::Client),
            _ => None,
        }
    }

    fn within_bounds(&self) -> bool {
        [&self.user, &self.room, &self.client]
            .iter()
            .all(|s| s.as_ref().is_none_or(|s| s.len() <= MAX_NAME))
            && !self.from.is_empty()
            && self.from.len() <= MAX_NAME
    }
}

/// Parse a control message from Redis; `None` (and counted by the
/// caller) when it is not one we act on.
fn parse(payload: &[u8]) -> Option<Message> {
    if payload.len() > MAX_CONTROL {
        return None;
    }
    let m: Message = serde_json::from_slice(payload).ok()?;
    (m.v == 1 && m.within_bounds()).then_some(m)
}

struct Pending {
    sum: u64,
    local: u64,
    answered: Vec<String>,
    /// The nodes alive when it was asked: only their answers count.
    expected: Vec<String>,
    deadline: Instant,
    reply: flume::Sender<ClusterCount>,
}

impl Pending {
    fn finish(self, complete: bool) {
        let _ = self.reply.send(ClusterCount {
            count: self.sum,
            local: self.local,
            nodes: self.answered.len() as u32 + 1,
            expected_nodes: self.expected.len() as u32 + 1,
            complete,
        });
    }
}

/// The admin task's state.
struct Admin {
    server_id: Arc<str>,
    publisher: Publisher,
    local: Arc<dyn LocalAdmin>,
    metrics: Arc<BridgeMetrics>,
    /// Other nodes, by when they were last heard.
    nodes: HashMap<String, Instant>,
    pending: HashMap<u64, Pending>,
}

impl Admin {
    fn send(&self, channel: String, m: &Message) {
        if let Ok(payload) = serde_json::to_vec(m) {
            self.publisher.publish_control(Outgoing {
                channel,
                payload: payload.into(),
                kind: None,
            });
        }
    }

    /// Say this node is alive, unless the publisher is down: a hello
    /// held in the outbox through an outage would be stale and take the
    /// place of a message.
    fn hello(&self) {
        if self.publisher.link.borrow().publisher {
            let m = Message::new("hello", &self.server_id);
            self.send(CONTROL.into(), &m);
        }
    }

    fn alive(&mut self, now: Instant) -> u32 {
        let horizon = HELLO_EVERY * 3;
        self.nodes
            .retain(|_, seen| now.duration_since(*seen) < horizon);
        self.metrics
            .cluster_nodes
            .store(self.nodes.len() as i64 + 1, Relaxed);
        self.nodes.len() as u32
    }

    fn heard(&mut self, from: &str, now: Instant) {
        if let Some(seen) = self.nodes.get_mut(from) {
            *seen = now;
        } else if self.nodes.len() < MAX_NODES {
            self.nodes.insert(from.to_owned(), now);
            self.alive(now);
        }
    }

    async fn on_control(&mut self, payload: &[u8]) {
        let now = Instant::now();
        let Some(m) = parse(payload) else {
            self.metrics.control_dropped.fetch_add(1, Relaxed);
            tracing::debug!("control message dropped");
            return;
        };
        if *m.from == *self.server_id {
            return;
        }
        self.metrics.control_in.fetch_add(1, Relaxed);
        match m.op.as_str() {
            "hello" => {
                // Only a hello makes a node count as alive (any other
                // message could name any `from`).
                let known = self.nodes.contains_key(&m.from);
                self.heard(&m.from, now);
                // A node we did not know: answer on its own channel, so it
                // knows us at once too.
                if !known {
                    let hello = Message::new("hello", &self.server_id);
                    self.send(node_channel(&m.from), &hello);
                }
            }
            "disconnect" => match (m.who(), m.code) {
                (Some(who @ (Who::User(_) | Who::Client(_))), Some(code))
                    if crate::proto::close::is_disconnect_code(code) =>
                {
                    let n = self.local.disconnect_local(who, code).await;
                    tracing::info!(from = ?m.from, closed = n, code, "disconnect from another node");
                }
                _ => {
                    self.metrics.control_dropped.fetch_add(1, Relaxed);
                }
            },
            "count" => match (m.who(), m.id) {
                (Some(who), Some(id)) => {
                    let n = self.local.count_local(who).await as u64;
                    let mut r = Message::new("count-reply", &self.server_id);
                    r.id = Some(id);
                    r.count = Some(n);
                    self.send(node_channel(&m.from), &r);
                }
                _ => {
                    self.metrics.control_dropped.fetch_add(1, Relaxed);
                }
            },
            "count-reply" => {
                let (Some(id), Some(n)) = (m.id, m.count) else {
                    self.metrics.control_dropped.fetch_add(1, Relaxed);
                    return;
                };
                let Some(p) = self.pending.get_mut(&id) else {
                    // Late (after its timeout) or never asked.
                    return;
                };
                if p.answered.contains(&m.from) || !p.expected.contains(&m.from) {
                    return;
                }
                // A node can hold at most a few million sessions: an
                // absurd answer must not wrap the total.
                p.sum = p.sum.saturating_add(n.min(u64::from(u32::MAX)));
                p.answered.push(m.from);
                if p.answered.len() >= p.expected.len()
                    && let Some(p) = self.pending.remove(&id)
                {
                    p.finish(true);
                }
            }
            _ => {
                self.metrics.control_dropped.fetch_add(1, Relaxed);
            }
        }
    }

    fn request(&mut self, r: AdminRequest) {
        match r {
            AdminRequest::Disconnect { who, code } => {
                let mut m = Message::new("disconnect", &self.server_id).with_who(&who);
                m.code = Some(code);
                self.send(CONTROL.into(), &m);
            }
            AdminRequest::Count { who, local, reply } => {
                let now = Instant::now();
                self.alive(now);
                let expected: Vec<String> = self.nodes.keys().cloned().collect();
                let p = Pending {
                    sum: local,
                    local,
                    answered: Vec::new(),
                    expected,
                    deadline: now + COUNT_TIMEOUT,
                    reply,
                };
                if p.expected.is_empty() {
                    return p.finish(true);
                }
                if self.pending.len() >= MAX_PENDING {
                    return p.finish(false);
                }
                // Random, so that a request id cannot be guessed and
                // answered falsely.
                let id = uuid::Uuid::new_v4().as_u64_pair().0;
                let mut m = Message::new("count", &self.server_id).with_who(&who);
                m.id = Some(id);
                self.send(CONTROL.into(), &m);
                self.pending.insert(id, p);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        let done: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(p) = self.pending.remove(&id) {
                p.finish(false);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }
}

/// The admin task: on the control thread, beside the subscriber.
pub async fn run(
    server_id: Arc<str>,
    publisher: Publisher,
    local: Arc<dyn LocalAdmin>,
    rx: flume::Receiver<AdminInput>,
) {
    let metrics = publisher.metrics().clone();
    let mut a = Admin {
        server_id,
        publisher,
        local,
        metrics,
        nodes: HashMap::new(),
        pending: HashMap::new(),
    };
    let mut hello = tokio::time::interval(HELLO_EVERY);
    loop {
        let deadline = a.next_deadline();
        tokio::select! {
            m = rx.recv_async() => match m {
                Ok(AdminInput::FromRedis(p)) => a.on_control(&p).await,
                Ok(AdminInput::Request(r)) => a.request(r),
                Ok(AdminInput::Subscribed) => a.hello(),
                Err(_) => return,
            },
            _ = hello.tick() => {
                a.hello();
                a.alive(Instant::now());
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => a.expire(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_hostile_ones_are_refused() {
        let m = Message::new("count", "n1").with_who(&Who::Room("lobby".into()));
        let text = serde_json::to_vec(&m).unwrap();
        assert_eq!(
            std::str::from_utf8(&text).unwrap(),
            r#"{"v":1,"op":"count","from":"n1","room":"lobby"}"#
        );
        assert_eq!(parse(&text), Some(m));
        for bad in [
            &b"not json"[..],
            br#"{"v":2,"op":"hello","from":"n"}"#,
            br#"{"v":1,"op":"hello","from":""}"#,
            br#"{"v":1,"op":"hello"}"#,
            br#"[1,2]"#,
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let long = format!(
            r#"{{"v":1,"op":"count","from":"n","user":"{}"}}"#,
            "u".repeat(MAX_NAME + 1)
        );
        assert_eq!(parse(long.as_bytes()), None);
        let huge = vec![b' '; MAX_CONTROL + 1];
        assert_eq!(parse(&huge), None);
        // One target, and a client must be a client id.
        let two = parse(br#"{"v":1,"op":"count","from":"n","user":"u","room":"r"}"#).unwrap();
        assert_eq!(two.who(), None);
        let client = parse(br#"{"v":1,"op":"count","from":"n","client":"nope"}"#).unwrap();
        assert_eq!(client.who(), None);
        // Unknown fields are ignored (a newer node may add some).
        assert!(parse(br#"{"v":1,"op":"hello","from":"n","extra":true}"#).is_some());
    }
}
