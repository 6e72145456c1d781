//! Redis Cluster sharded pub/sub (`--redis-sharded`, with
//! `--redis-cluster`): `ws:room:*`, `ws:user:*` and `ws:client:*` go
//! through SPUBLISH / SSUBSCRIBE on the master that owns the channel's
//! slot, so each message crosses one shard of the cluster instead of
//! every node's cluster bus. `ws:broadcast` and the control channels stay
//! classic (they are for everyone).
//!
//! The slot map comes from `CLUSTER SLOTS` on any reachable node; the slot
//! of a channel is CRC16 (XMODEM) of its name, or of the part between the
//! first `{` and the next `}` when that part is not empty (the Redis
//! Cluster key rule: room names are the user's and may contain braces).
//! Anything that says the map is stale (MOVED, a lost connection, a
//! `sunsubscribe` Redis sends on its own when a slot moves) makes the
//! caller fetch it again and start over.
//!
//! Not interoperable with Ignis on Bun or its `WebSocketEmitter`: they
//! PUBLISH, and a classic PUBLISH never reaches an SSUBSCRIBEr. Use it when
//! every publisher is ignis-ws or its emitter (`ignis-ws emit --sharded`).

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::conn::{CONNECT_TIMEOUT, client, multiplexed, redact};
use super::sentinel::with_host;

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// CRC16/XMODEM, as Redis Cluster uses for key slots.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The cluster slot of a key or shard channel.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

/// Which master serves which slots, as URLs built from the seed URL (its
/// scheme, credentials and database) with each master's address.
#[derive(Debug, Clone, Default)]
pub struct SlotMap {
    ranges: Vec<(u16, u16, String)>,
}

impl SlotMap {
    /// `CLUSTER SLOTS` from the first of `seeds` that answers.
    pub async fn fetch(seeds: &[String], ca: Option<&[u8]>) -> Result<SlotMap, String> {
        let mut errors = Vec::new();
        for seed in seeds {
            let got = async {
                let c = client(seed, ca).map_err(|e| e.to_string())?;
                let mut conn = multiplexed(&c, CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                let v: redis::Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                Self::parse(seed, &v)
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, got).await {
                Ok(Ok(m)) => return Ok(m),
                Ok(Err(e)) => errors.push(format!(
                    "{}: {}",
                    redact(seed),
                    crate::secrets::scrub(&e, seed)
                )),
                Err(_) => errors.push(format!("{}: timed out", redact(seed))),
            }
        }
        Err(errors.join("; "))
    }

    fn parse(seed: &str, v: &redis::Value) -> Result<SlotMap, String> {
        use redis::Value;
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        let int = |v: &Value| match v {
            Value::Int(i) => u16::try_from(*i).ok(),
            _ => None,
        };
        let Value::Array(entries) = v else {
            return Err("CLUSTER SLOTS: not an array".into());
        };
        let mut ranges = Vec::new();
        for e in entries {
            let Value::Array(e) = e else { continue };
            let (Some(start), Some(end), Some(Value::Array(master))) =
                (e.first().and_then(int), e.get(1).and_then(int), e.get(2))
            else {
                continue;
            };
            let (Some(host), Some(port)) =
                (master.first().and_then(text), master.get(1).and_then(int))
            else {
                continue;
            };
            // "?": an endpoint Redis does not know; nothing to connect to.
            if host == "?" {
                continue;
            }
            // An empty host means "the node you asked".
            let host = if host.is_empty() {
                seed_host(seed)
            } else {
                host
            };
            ranges.push((start, end, with_host(seed, &host, port)));
        }
        if ranges.is_empty() {
            return Err("CLUSTER SLOTS: no slot is served".into());
        }
        Ok(SlotMap { ranges })
    }

    /// The URL of the master serving `slot`.
    pub fn owner(&self, slot: u16) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(s, e, _)| (*s..=*e).contains(&slot))
            .map(|(_, _, u)| u.as_str())
    }

    /// The master of `channel`'s slot.
    pub fn owner_of(&self, channel: &str) -> Option<&str> {
        self.owner(slot(channel.as_bytes()))
    }
}

fn seed_host(seed: &str) -> String {
    let rest = seed.split_once("://").map_or(seed, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match hostport.rsplit_once(':') {
        Some((h, _)) => h.trim_matches(['[', ']']).to_owned(),
        None => hostport.to_owned(),
    }
}

/// SPUBLISH to the owner of each channel's slot, one connection per
/// master, refreshing the map when it proves stale.
#[derive(Default)]
pub struct Router {
    seeds: Vec<String>,
    ca: Option<Vec<u8>>,
    map: Option<SlotMap>,
    conns: HashMap<String, MultiplexedConnection>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("masters", &self.conns.len())
            .finish()
    }
}

/// Longest wait for one SPUBLISH reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Router {
    /// Route through the cluster whose nodes include `seeds`.
    pub fn new(seeds: Vec<String>, ca: Option<Vec<u8>>) -> Router {
        Router {
            seeds,
            ca,
            map: None,
            conns: HashMap::new(),
        }
    }

    /// SPUBLISH `payload` on `channel`; on MOVED, a lost connection or an
    /// unknown slot, fetch the map again and retry once.
    pub async fn spublish(&mut self, channel: &str, payload: &[u8]) -> redis::RedisResult<i64> {
        let mut last = None;
        for _ in 0..2 {
            match self.try_spublish(channel, payload).await {
                Ok(n) => return Ok(n),
                Err(e) => {
                    self.map = None;
                    self.conns.clear();
                    last = Some(e);
                }
            }
        }
        Err(last
            .unwrap_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "spublish failed"))))
    }

    async fn try_spublish(&mut self, channel: &str, payload: &[u8]) -> redis::RedisResult<i64> {
        let io_err = |m: String| redis::RedisError::from((redis::ErrorKind::Io, "cluster", m));
        if self.map.is_none() {
            // Start at the next seed each time: an unreachable first seed
            // must not use up every attempt.
            if !self.seeds.is_empty() {
                self.seeds.rotate_left(1);
            }
            self.map = Some(
                SlotMap::fetch(&self.seeds, self.ca.as_deref())
                    .await
                    .map_err(io_err)?,
            );
        }
        let owner = self
            .map
            .as_ref()
            .and_then(|m| m.owner_of(channel))
            .map(str::to_owned)
            .ok_or_else(|| io_err(format!("no master serves the slot of {channel}")))?;
        if !self.conns.contains_key(&owner) {
            let c = client(&owner, self.ca.as_deref())?;
            let conn = multiplexed(&c, RESPONSE_TIMEOUT).await?;
            self.conns.insert(owner.clone(), conn);
        }
        let Some(conn) = self.conns.get_mut(&owner) else {
            return Err(io_err("connection vanished".into()));
        };
        redis::cmd("SPUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(conn)
            .await
    }
}

/// The subscriber's sharded connections: one RESP3 connection per master
/// that owns a wanted channel, each sending its pushes (`smessage`,
/// `sunsubscribe`, disconnection) to one channel. Lives as long as the
/// subscriber's classic connection; any trouble ends both.
pub struct ShardedSubs {
    map: SlotMap,
    ca: Option<Vec<u8>>,
    conns: HashMap<String, MultiplexedConnection>,
    push: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    /// SUNSUBSCRIBEs sent, per channel, whose confirmation push has not
    /// been seen yet (shared with the subscriber's push handling).
    own: Option<std::sync::Arc<std::sync::Mutex<HashMap<String, u32>>>>,
}

impl ShardedSubs {
    /// With the current slot map; pushes go to `push`.
    pub fn new(
        map: SlotMap,
        ca: Option<Vec<u8>>,
        push: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> ShardedSubs {
        ShardedSubs {
            map,
            ca,
            conns: HashMap::new(),
            push,
            own: None,
        }
    }

    /// Count each SUNSUBSCRIBE sent in `own` before it goes out.
    pub fn track_unsubscribes(
        &mut self,
        own: std::sync::Arc<std::sync::Mutex<HashMap<String, u32>>>,
    ) {
        self.own = Some(own);
    }

    /// PING every master connection.
    pub async fn ping(&mut self) -> redis::RedisResult<()> {
        for conn in self.conns.values_mut() {
            redis::cmd("PING").query_async::<redis::Value>(conn).await?;
        }
        Ok(())
    }

    /// SSUBSCRIBE `subscribe`, then SUNSUBSCRIBE `unsubscribe`, each
    /// channel on the master owning its slot: one command per channel
    /// (a command naming channels of two slots fails with CROSSSLOT),
    /// pipelined per master.
    pub async fn apply(
        &mut self,
        subscribe: &[String],
        unsubscribe: &[String],
    ) -> redis::RedisResult<()> {
        for (cmd, list) in [("SSUBSCRIBE", subscribe), ("SUNSUBSCRIBE", unsubscribe)] {
            let mut by_owner: HashMap<String, Vec<&String>> = HashMap::new();
            for ch in list {
                let owner = self.map.owner_of(ch).ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "cluster",
                        format!("no master serves the slot of {ch}"),
                    ))
                })?;
                by_owner.entry(owner.to_owned()).or_default().push(ch);
            }
            if cmd == "SUNSUBSCRIBE"
                && let Some(own) = &self.own
                && let Ok(mut own) = own.lock()
            {
                for ch in list {
                    *own.entry(ch.clone()).or_insert(0) += 1;
                }
            }
            for (owner, chans) in by_owner {
                let conn = self.conn(&owner).await?;
                let mut p = redis::pipe();
                for ch in chans {
                    p.cmd(cmd).arg(ch.as_str()).ignore();
                }
                p.query_async::<()>(conn).await?;
            }
        }
        Ok(())
    }

    async fn conn(&mut self, owner: &str) -> redis::RedisResult<&mut MultiplexedConnection> {
        if !self.conns.contains_key(owner) {
            let url = if owner.contains('?') {
                format!("{owner}&protocol=resp3")
            } else {
                format!("{owner}?protocol=resp3")
            };
            let c = client(&url, self.ca.as_deref())?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_push_sender(self.push.clone());
            let conn = c
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            self.conns.insert(owner.to_owned(), conn);
        }
        self.conns
            .get_mut(owner)
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "connection vanished")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_redis_rule() {
        // Values from `CLUSTER KEYSLOT` on redis-server 7.0.
        assert_eq!(slot(b"ws:room:lobby"), 15097);
        assert_eq!(slot(b"ws:room:a"), 14572);
        assert_eq!(slot(b"123456789"), 12739);
        // Hash tags: the part in the first {...}, if not empty.
        assert_eq!(slot(b"ws:room:{user1000}.a"), slot(b"user1000"));
        assert_eq!(slot(b"ws:room:{}x"), crc16(b"ws:room:{}x") % SLOTS);
        assert_eq!(slot(b"ws:room:{a}{b}"), slot(b"a"));
        assert_eq!(
            slot(b"ws:room:{unclosed"),
            crc16(b"ws:room:{unclosed") % SLOTS
        );
    }

    #[test]
    fn slot_map_from_cluster_slots() {
        use redis::Value;
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("", 7001)]),
        ]);
        let m = SlotMap::parse("redis://:pw@seed.host:7005/0", &v).unwrap();
        assert_eq!(m.owner(0), Some("redis://:pw@10.0.0.1:7000/0"));
        assert_eq!(m.owner(16383), Some("redis://:pw@seed.host:7001/0"));
        assert!(SlotMap::parse("redis://s:1", &Value::Array(vec![])).is_err());
        assert!(SlotMap::parse("redis://s:1", &Value::Int(3)).is_err());
    }
}
