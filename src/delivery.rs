//! What travels from a sender to the shards, below both: the client id
//! (which names its shard), a delivery's target, the encoded frame shared by
//! every recipient, and why a send did not happen. The shard, the Redis
//! bridge and the [`crate::Handle`] all build on these; none of them is
//! needed here.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::proto::frame::{OpCode, server_frame_with};
use crate::proto::message::write_server_message;

/// A client id: a random (v4) UUID whose last byte is the index of the shard
/// that owns the client, so a client-targeted message goes to one shard
/// without any global map. Printed in the usual hyphenated lowercase form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientId(pub [u8; 16]);

impl ClientId {
    /// A fresh id owned by `shard`.
    pub fn new(shard: usize) -> ClientId {
        let mut b = *uuid::Uuid::new_v4().as_bytes();
        b[15] = shard as u8;
        ClientId(b)
    }

    /// A fresh id owned by `shard`, whose first 4 bytes (its first 8 hex
    /// digits) are the process's `tag`: the bridge then hears every client
    /// of the process through `ws:client:{tag}-*` and `ws:room:{tag}-*`.
    /// 82 random bits remain (the shard takes a byte).
    pub fn new_tagged(shard: usize, tag: u32) -> ClientId {
        let mut id = ClientId::new(shard);
        id.0[..4].copy_from_slice(&tag.to_be_bytes());
        id
    }

    /// The tag [`ClientId::new_tagged`] gave it.
    pub fn tag(&self) -> u32 {
        u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    /// Parse the hyphenated (or simple) form. Ids that are not UUIDs can't
    /// belong to an ignis-ws client.
    pub fn parse(s: &str) -> Option<ClientId> {
        uuid::Uuid::try_parse(s)
            .ok()
            .map(|u| ClientId(*u.as_bytes()))
    }

    /// Whether `s` is a client id written the way clients see theirs
    /// (hyphenated, lowercase): the only spelling whose room is the
    /// client's own. Other spellings of a UUID name no room at all.
    pub fn is_canonical(s: &str) -> bool {
        s.len() == 36 && !s.bytes().any(|b| b.is_ascii_uppercase())
    }

    /// The shard that owns a client with this id, if it is one of ours.
    pub fn shard(&self) -> usize {
        self.0[15] as usize
    }

    /// A 64-bit hash key: bytes 4..12 of the id, random (the first four
    /// may be the process's tag, the last one is the shard).
    pub fn hash_key(&self) -> u64 {
        let mut k = [0u8; 8];
        k.copy_from_slice(&self.0[4..12]);
        u64::from_ne_bytes(k)
    }
}

impl std::hash::Hash for ClientId {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        // Eight random bytes: enough for a hash table.
        h.write_u64(self.hash_key());
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_bytes(self.0).hyphenated(), f)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({self})")
    }
}

/// A change of what a shard needs to hear from the rest of a cluster
/// (issue 15): `on` when a room gets its first member on this shard, a
/// user its first session, a client connects; off with the last member,
/// the last session, the client's end. Per shard: the process needs a
/// channel while any of its shards does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Interest {
    pub topic: Topic,
    pub on: bool,
}

/// What an [`Interest`] is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Room(Box<str>),
    /// The user id string is the shard's own (its user index and its
    /// sessions' records hold the same one), so the subscriber's copy
    /// costs no second allocation.
    User(crate::user_id::UserId),
    Client(ClientId),
}

/// Whose sessions an operator action is about (`Handle::disconnect`,
/// `Handle::count`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Who {
    /// Every session of a user id.
    User(Box<str>),
    /// One client.
    Client(ClientId),
    /// The members of a room (counted; never disconnected as a whole).
    Room(Box<str>),
}

/// Who a delivery is for.
#[derive(Debug, Clone)]
pub enum Target {
    /// One client, in any state (the reference's `sendToClient`).
    Client(ClientId),
    /// Every session of a user.
    User(Arc<str>),
    /// Every member of a room. A client's own id is a room it is in from
    /// authentication until it leaves it.
    Room(Arc<str>),
    /// Every authenticated client.
    Broadcast,
}

/// One encoded message on its way to the shards.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub target: Target,
    /// The complete WebSocket frame, shared by every recipient.
    pub frame: Bytes,
    /// Clients that must not receive it (room and broadcast only).
    pub exclude: Option<Arc<[ClientId]>>,
}

/// Why a send did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// `data` could not be serialized to JSON.
    #[error("cannot encode message data as JSON: {0}")]
    Encode(#[from] serde_json::Error),
    /// The server has shut down.
    #[error("server is shut down")]
    Stopped,
    /// A shard's delivery queue holds `--shard-queue-limit` bytes: the
    /// message was not delivered anywhere (retry later).
    #[error("server overloaded: a shard's delivery queue is full")]
    Overloaded,
    /// The request names nothing that can be acted on (a disconnect of a
    /// room, a close code other than 1008 or 4000–4999).
    #[error("invalid request: disconnect a user or a client, with code 1008 or 4000-4999")]
    Invalid,
}

/// Bytes a queued delivery is charged beyond its frame: the command, the
/// channel slot and the target.
const DELIVERY_OVERHEAD: usize = 128;

impl Delivery {
    /// What this delivery counts against a shard's `--shard-queue-limit`
    /// while it waits in the shard's channel.
    pub fn queue_cost(&self) -> usize {
        self.frame.len() + DELIVERY_OVERHEAD
    }
}

/// Encode `{"event":E,"data":D}` as one unmasked text frame.
pub fn encode<D: Serialize + ?Sized>(event: &str, data: Option<&D>) -> Result<Bytes, SendError> {
    let mut err = None;
    let frame = server_frame_with(OpCode::Text, |buf| {
        if let Err(e) = write_server_message(buf, event, data) {
            err = Some(e);
        }
    });
    match err {
        Some(e) => Err(SendError::Encode(e)),
        None => Ok(frame),
    }
}

/// Encode `{"event":E,"data":D}` with `data` already JSON (`None`: no
/// `data` key), as one unmasked text frame.
pub fn encode_raw(event: &str, data_json: Option<&[u8]>) -> Bytes {
    use bytes::BufMut;
    server_frame_with(OpCode::Text, |buf| {
        buf.put_slice(b"{\"event\":");
        // A &str always serializes.
        let _ = serde_json::to_writer(buf.writer(), event);
        if let Some(d) = data_json {
            buf.put_slice(b",\"data\":");
            buf.put_slice(d);
        }
        buf.put_slice(b"}");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_round_trip_and_shard() {
        let id = ClientId::new(7);
        assert_eq!(id.shard(), 7);
        let s = id.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(ClientId::parse(&s), Some(id));
        assert_eq!(ClientId::parse("not-a-uuid"), None);
        let u = uuid::Uuid::parse_str(&s).unwrap();
        assert_eq!(u.get_version_num(), 4);
    }

    #[test]
    fn tagged_ids_start_with_the_tag_and_hash_on_random_bytes() {
        let tag = 0xdead_beef;
        let ids: Vec<ClientId> = (0..1000).map(|_| ClientId::new_tagged(3, tag)).collect();
        for id in &ids {
            assert_eq!(id.tag(), tag);
            assert_eq!(id.shard(), 3);
            let s = id.to_string();
            assert!(s.starts_with("deadbeef-"), "{s}");
            assert!(ClientId::is_canonical(&s));
            assert_eq!(ClientId::parse(&s), Some(*id));
            assert_eq!(uuid::Uuid::parse_str(&s).unwrap().get_version_num(), 4);
        }
        // The hash key skips the tag: its low 10 bits spread over a table
        // of 1024 (a constant tag there would put every id in one bucket).
        let buckets: std::collections::HashSet<u64> =
            ids.iter().map(|id| id.hash_key() & 1023).collect();
        assert!(buckets.len() > 500, "{}", buckets.len());
    }

    #[test]
    fn encode_is_one_frame() {
        let f = encode("e", Some(&serde_json::json!({"a":1}))).unwrap();
        // FIN + text, unmasked 7-bit length.
        assert_eq!(f[0], 0x81);
        assert_eq!(f[1] as usize, f.len() - 2);
        assert_eq!(&f[2..], br#"{"event":"e","data":{"a":1}}"#);
    }
}
