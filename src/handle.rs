//! The delivery API. A [`Handle`] is cheap to clone and usable from any
//! thread: it encodes a message once into a ready-to-write frame (`Bytes`)
//! and puts that same buffer on the channel of every shard that may hold a
//! recipient. Library users, `/api/publish` and the Redis bridge all deliver
//! through it; none of them touches a shard directly.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::bridge::Publisher;
use crate::bridge::envelope::{self, Kind};
use crate::control::ControlHandle;
pub use crate::delivery::Who;
use crate::metrics::Registry;
use crate::shard::ShardCommand;

pub use crate::delivery::{ClientId, Delivery, SendError, Target, encode, encode_raw};

/// Take `cost` bytes of shard `m`'s queue budget, or count a refusal.
fn reserve(m: &crate::metrics::ShardMetrics, cost: usize, limit: usize) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let cost = cost as i64;
    let before = m.queued_bytes.fetch_add(cost, Relaxed);
    if before + cost > limit as i64 {
        m.queued_bytes.fetch_sub(cost, Relaxed);
        m.deliveries_dropped_queue_full.fetch_add(1, Relaxed);
        return false;
    }
    true
}

fn release(m: &crate::metrics::ShardMetrics, cost: usize) {
    m.queued_bytes
        .fetch_sub(cost as i64, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) struct Inner {
    pub(crate) shards: Vec<flume::Sender<ShardCommand>>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) control: ControlHandle,
    pub(crate) bridge: Option<Publisher>,
    /// The Redis bridge's admin task (cluster-wide disconnects and
    /// counts).
    pub(crate) admin: Option<flume::Sender<crate::bridge::admin::AdminInput>>,
    /// The Redis subscriber's input under `--redis-subscribe interest`.
    pub(crate) interest: Option<flume::Sender<crate::bridge::interest::BridgeInput>>,
    /// `--shard-queue-limit`: bytes of deliveries one shard's channel may
    /// hold.
    pub(crate) queue_limit: usize,
}

/// The delivery API of a running server.
#[derive(Clone)]
pub struct Handle {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

fn exclude_ids(exclude: &[&str]) -> Option<Arc<[ClientId]>> {
    let ids: Vec<ClientId> = exclude.iter().filter_map(|s| ClientId::parse(s)).collect();
    if ids.is_empty() {
        None
    } else {
        Some(ids.into())
    }
}

impl Handle {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inner.shards.len()
    }

    /// The metrics of every shard.
    pub fn metrics(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// Open connections.
    pub fn connections(&self) -> i64 {
        self.inner.registry.connections()
    }

    /// The control thread (to run futures that need tokio).
    pub fn control(&self) -> &ControlHandle {
        &self.inner.control
    }

    /// Send `event`/`data` to one client (any state; nothing happens if no
    /// such client is connected here).
    pub fn to_client<D: Serialize + ?Sized>(
        &self,
        client_id: &str,
        event: &str,
        data: &D,
    ) -> Result<(), SendError> {
        let Some(id) = ClientId::parse(client_id) else {
            return Ok(());
        };
        self.deliver(Delivery {
            target: Target::Client(id),
            frame: encode(event, Some(data))?,
            exclude: None,
        })
    }

    /// Send to every session of a user.
    pub fn to_user<D: Serialize + ?Sized>(
        &self,
        user_id: &str,
        event: &str,
        data: &D,
    ) -> Result<(), SendError> {
        self.deliver(Delivery {
            target: Target::User(user_id.into()),
            frame: encode(event, Some(data))?,
            exclude: None,
        })
    }

    /// Send to every member of a room except `exclude`.
    pub fn to_room<D: Serialize + ?Sized>(
        &self,
        room: &str,
        event: &str,
        data: &D,
        exclude: &[&str],
    ) -> Result<(), SendError> {
        self.deliver(Delivery {
            target: Target::Room(room.into()),
            frame: encode(event, Some(data))?,
            exclude: exclude_ids(exclude),
        })
    }

    /// Send to every authenticated client except `exclude`.
    pub fn broadcast<D: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &D,
        exclude: &[&str],
    ) -> Result<(), SendError> {
        self.deliver(Delivery {
            target: Target::Broadcast,
            frame: encode(event, Some(data))?,
            exclude: exclude_ids(exclude),
        })
    }

    /// The Redis bridge's publisher, when Redis is configured.
    pub fn bridge(&self) -> Option<&Publisher> {
        self.inner.bridge.as_ref()
    }

    /// Deliver to local recipients, then publish to Redis (with this
    /// process's `serverId`, so other instances deliver it and this one
    /// ignores the echo). `target` is the client id, user id or room; none
    /// for a broadcast. `exclude` applies to rooms and broadcasts.
    pub fn publish<D: Serialize + ?Sized>(
        &self,
        kind: Kind,
        target: Option<&str>,
        event: &str,
        data: &D,
        exclude: &[&str],
    ) -> Result<(), SendError> {
        let data_json = serde_json::to_vec(data)?;
        self.publish_raw(kind, target, event, Some(&data_json), exclude)
    }

    /// [`Handle::publish`] with `data` already serialized (`None`: no
    /// `data` key).
    pub fn publish_raw(
        &self,
        kind: Kind,
        target: Option<&str>,
        event: &str,
        data_json: Option<&[u8]>,
        exclude: &[&str],
    ) -> Result<(), SendError> {
        let frame = encode_raw(event, data_json);
        let local = match (kind, target) {
            (Kind::Broadcast, _) => Some(Target::Broadcast),
            (Kind::Room, Some(t)) => Some(Target::Room(t.into())),
            (Kind::User, Some(t)) => Some(Target::User(t.into())),
            (Kind::Client, Some(t)) => ClientId::parse(t).map(Target::Client),
            (_, None) => None,
        };
        let excl = match kind {
            Kind::Room | Kind::Broadcast => exclude,
            _ => &[],
        };
        if let Some(target) = local {
            let r = self.deliver(Delivery {
                target,
                frame,
                exclude: exclude_ids(excl),
            });
            // Overloaded: delivered nowhere, so not published either; the
            // caller sees the refusal and may retry.
            if self.inner.bridge.is_none() || matches!(r, Err(SendError::Overloaded)) {
                return r;
            }
        }
        if let Some(p) = &self.inner.bridge {
            let payload = envelope::encode(
                p.server_id(),
                kind,
                if kind == Kind::Broadcast {
                    None
                } else {
                    target
                },
                event,
                data_json,
                if excl.is_empty() { None } else { Some(excl) },
            );
            p.publish(crate::bridge::Outgoing {
                channel: envelope::channel(kind, target),
                payload: payload.into(),
                kind: Some(kind),
            });
        }
        Ok(())
    }

    /// The reference's `send({destination, payload: {topic, data}})`: no
    /// destination → broadcast; a client id of this process → that client;
    /// anything else → that room (locally, if it has members here). Local
    /// delivery first, then the same routing is published to Redis (a
    /// non-local destination goes out as a room message, as in Ignis).
    pub fn send<D: Serialize + ?Sized>(
        &self,
        destination: Option<&str>,
        event: &str,
        data: &D,
    ) -> Result<(), SendError> {
        match destination {
            None => self.publish(Kind::Broadcast, None, event, data, &[]),
            Some(d) => {
                let ours = ClientId::parse(d).is_some_and(|id| id.shard() < self.shards());
                let kind = if ours { Kind::Client } else { Kind::Room };
                self.publish(kind, Some(d), event, data, &[])
            }
        }
    }

    /// Wait until every shard has handled everything sent before this call
    /// (deliveries are then in the recipients' queues).
    pub async fn settle(&self) {
        let (tx, rx) = flume::bounded(self.inner.shards.len());
        let mut n = 0;
        for s in &self.inner.shards {
            if s.send(ShardCommand::Barrier(tx.clone())).is_ok() {
                n += 1;
            }
        }
        drop(tx);
        for _ in 0..n {
            if rx.recv_async().await.is_err() {
                break;
            }
        }
    }

    /// Wait until this process's Redis subscriptions cover what its
    /// clients needed when this was called (`--redis-subscribe interest`):
    /// every room joined, user authenticated and client connected before
    /// it has its channel confirmed by Redis, so a message published to
    /// them from any node now reaches them. Pending while Redis is
    /// unreachable (wrap it in a timeout); at once without Redis or with
    /// `--redis-subscribe pattern` (the patterns cover everything once
    /// subscribed).
    ///
    /// Until then a message published elsewhere to a room a local client
    /// just joined can be missed: Redis delivers only to subscribers, and
    /// the subscription follows the join by a round trip to Redis.
    pub async fn settle_subscriptions(&self) {
        let Some(tx) = &self.inner.interest else {
            return;
        };
        // Every shard has handled what came before, and has reported it.
        self.settle().await;
        let (done, rx) = flume::bounded(1);
        if tx
            .send(crate::bridge::interest::BridgeInput::Settle(done))
            .is_ok()
        {
            let _ = rx.recv_async().await;
        }
    }

    /// Ask the shards that may hold `who` (the owner only, for a client
    /// id of this process) and sum their answers.
    async fn ask_shards(
        &self,
        who: &Who,
        cmd: impl Fn(flume::Sender<usize>) -> ShardCommand,
    ) -> usize {
        let shards: Vec<&flume::Sender<ShardCommand>> = match who {
            Who::Client(id) => self.inner.shards.get(id.shard()).into_iter().collect(),
            _ => self.inner.shards.iter().collect(),
        };
        let (tx, rx) = flume::bounded(shards.len().max(1));
        let mut asked = 0;
        for s in shards {
            if s.send(cmd(tx.clone())).is_ok() {
                asked += 1;
            }
        }
        drop(tx);
        let mut sum = 0;
        for _ in 0..asked {
            match rx.recv_async().await {
                Ok(n) => sum += n,
                Err(_) => break,
            }
        }
        sum
    }

    /// Close this process's sessions of a user, or one client, with
    /// `code` (see [`Handle::disconnect`]); how many were closed.
    pub async fn disconnect_local(&self, who: Who, code: u16) -> usize {
        let w = who.clone();
        self.ask_shards(&who, move |reply| ShardCommand::Disconnect {
            who: w.clone(),
            code,
            reply,
        })
        .await
    }

    /// How many of this process's sessions `who` names: a user's
    /// authenticated sessions, a room's members, a client (0 or 1).
    pub async fn count_local(&self, who: Who) -> usize {
        let w = who.clone();
        self.ask_shards(&who, move |reply| ShardCommand::Count {
            who: w.clone(),
            reply,
        })
        .await
    }

    /// Disconnect a user's sessions (or one client) on every node of the
    /// cluster: here at once, elsewhere through `ignis-ws:control` on Redis
    /// (each node closes its share when the message reaches it; at most
    /// once, like any pub/sub message). `code` is 1008 or 4000–4999, with
    /// the reason `Disconnected by the server`. Returns how many sessions
    /// were closed on this node. A [`Who::Room`] is refused.
    pub async fn disconnect(&self, who: Who, code: u16) -> Result<usize, SendError> {
        if matches!(who, Who::Room(_)) || !crate::proto::close::is_disconnect_code(code) {
            return Err(SendError::Invalid);
        }
        let n = self.disconnect_local(who.clone(), code).await;
        if let Some(admin) = &self.inner.admin {
            let _ = admin.try_send(crate::bridge::admin::AdminInput::Request(
                crate::bridge::admin::AdminRequest::Disconnect { who, code },
            ));
        }
        Ok(n)
    }

    /// Count a room's members, a user's sessions or a client across the
    /// cluster: this node's share, plus the answers of every ignis-ws node
    /// known to be alive that arrive within a second (see
    /// [`crate::bridge::admin`]; Ignis on Bun nodes are not counted).
    /// Without Redis, this node's share alone.
    pub async fn count(&self, who: Who) -> crate::bridge::admin::ClusterCount {
        let local = self.count_local(who.clone()).await as u64;
        let alone = crate::bridge::admin::ClusterCount {
            count: local,
            local,
            nodes: 1,
            expected_nodes: 1,
            complete: true,
        };
        let Some(admin) = &self.inner.admin else {
            return alone;
        };
        let (reply, rx) = flume::bounded(1);
        let req = crate::bridge::admin::AdminRequest::Count { who, local, reply };
        let incomplete = crate::bridge::admin::ClusterCount {
            complete: false,
            ..alone
        };
        if admin
            .try_send(crate::bridge::admin::AdminInput::Request(req))
            .is_err()
        {
            // The admin task is behind: this node's share, marked partial.
            return incomplete;
        }
        // The admin task answers every count within its timeout (it may
        // run on a shard thread: no tokio timer here).
        rx.recv_async().await.unwrap_or(incomplete)
    }

    /// Deliver a pre-encoded frame: to the owning shard for a client, to
    /// every shard otherwise. The frame is shared, never copied.
    ///
    /// All or nothing: if a target shard's channel already holds
    /// `--shard-queue-limit` bytes (a stalled shard, a flood), the delivery
    /// goes to no shard, is counted
    /// (`ignis_ws_deliveries_dropped_total{reason="shard_queue_full"}`)
    /// and [`SendError::Overloaded`] is returned.
    pub fn deliver(&self, d: Delivery) -> Result<(), SendError> {
        let inner = &*self.inner;
        let shards = &inner.shards;
        let metrics = &inner.registry.shards;
        let cost = d.queue_cost();
        let limit = inner.queue_limit;
        if let Target::Client(id) = &d.target {
            let (Some(tx), Some(m)) = (shards.get(id.shard()), metrics.get(id.shard())) else {
                return Ok(());
            };
            if !reserve(m, cost, limit) {
                return Err(SendError::Overloaded);
            }
            return tx.send(ShardCommand::Deliver(d)).map_err(|_| {
                release(m, cost);
                SendError::Stopped
            });
        }
        for (i, m) in metrics.iter().enumerate() {
            if !reserve(m, cost, limit) {
                for m in &metrics[..i] {
                    release(m, cost);
                }
                return Err(SendError::Overloaded);
            }
        }
        let mut ok = false;
        for (tx, m) in shards.iter().zip(metrics) {
            if tx.send(ShardCommand::Deliver(d.clone())).is_ok() {
                ok = true;
            } else {
                release(m, cost);
            }
        }
        if ok { Ok(()) } else { Err(SendError::Stopped) }
    }
}

impl crate::bridge::LocalDelivery for Handle {
    fn shards(&self) -> usize {
        Handle::shards(self)
    }
    fn deliver(&self, d: Delivery) -> Result<(), SendError> {
        Handle::deliver(self, d)
    }
}

impl crate::bridge::admin::LocalAdmin for Handle {
    fn disconnect_local(
        &self,
        who: Who,
        code: u16,
    ) -> std::pin::Pin<Box<dyn Future<Output = usize> + Send + '_>> {
        Box::pin(Handle::disconnect_local(self, who, code))
    }
    fn count_local(&self, who: Who) -> std::pin::Pin<Box<dyn Future<Output = usize> + Send + '_>> {
        Box::pin(Handle::count_local(self, who))
    }
}
