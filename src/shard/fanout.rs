//! Fan-out: one encoded frame, many recipients. Per recipient the work is
//! a refcount increment of the shared `Bytes` and a queue push; the frame
//! is never copied and never re-encoded.

use std::time::Instant;

use super::{ConnKey, Shard, ShardMetrics};
use crate::delivery::{ClientId, Delivery, Target};
use crate::proto::session::State;

/// Excluded ids: a short list is scanned, a long one hashed.
enum Exclude<'a> {
    None,
    Few(&'a [ClientId]),
    Many(std::collections::HashSet<ClientId>),
}

impl<'a> Exclude<'a> {
    fn new(ids: Option<&'a [ClientId]>) -> Self {
        match ids {
            None => Exclude::None,
            Some([]) => Exclude::None,
            Some(ids) if ids.len() <= 8 => Exclude::Few(ids),
            Some(ids) => Exclude::Many(ids.iter().copied().collect()),
        }
    }

    #[inline]
    fn contains(&self, id: &ClientId) -> bool {
        match self {
            Exclude::None => false,
            Exclude::Few(ids) => ids.contains(id),
            Exclude::Many(set) => set.contains(id),
        }
    }
}

impl<S> Shard<S> {
    /// Deliver `d` to its local recipients.
    pub fn deliver(&mut self, d: &Delivery, now: Instant) {
        let exclude = Exclude::new(d.exclude.as_deref());
        let mut sent = 0u64;
        match &d.target {
            Target::Client(id) => {
                if let Some(k) = self.key_of(id) {
                    sent += u64::from(self.push(k, &d.frame, now));
                }
            }
            Target::User(user) => {
                let keys: smallvec::SmallVec<[ConnKey; 4]> =
                    self.users.get(user).iter().copied().collect();
                for k in keys {
                    sent += u64::from(self.push(k, &d.frame, now));
                }
            }
            Target::Room(room) => {
                // A room named by a client id is that client's own room
                // (in the spelling clients see) and nobody else's: joins of
                // such rooms are refused.
                if let Some(id) = ClientId::parse(room) {
                    if ClientId::is_canonical(room)
                        && id.shard() == self.ctx.index
                        && !exclude.contains(&id)
                        && let Some(k) = self.key_of(&id)
                        && self.conns[k as usize].in_own_room
                    {
                        sent += u64::from(self.push(k, &d.frame, now));
                    }
                } else if let Some(rid) = self.rooms.id(room) {
                    let mut i = 0;
                    // Index loop: `push` may close a slow client, which never
                    // removes it from the room before its task ends.
                    while let Some(room) = self.rooms_get(rid) {
                        let Some(&k) = room.members.get_index(i) else {
                            break;
                        };
                        i += 1;
                        if !matches!(exclude, Exclude::None)
                            && exclude.contains(&self.conns[k as usize].id)
                        {
                            continue;
                        }
                        sent += u64::from(self.push(k, &d.frame, now));
                    }
                }
            }
            Target::Broadcast => {
                let mut i = 0;
                let cap = self.conns.capacity();
                while i < cap {
                    let k = i;
                    i += 1;
                    let Some(conn) = self.conns.get(k) else {
                        continue;
                    };
                    if conn.session.state() != State::Authenticated || exclude.contains(&conn.id) {
                        continue;
                    }
                    sent += u64::from(self.push(k as ConnKey, &d.frame, now));
                }
            }
        }
        let m = &self.ctx.metrics;
        ShardMetrics::add(&m.messages_out, sent);
        ShardMetrics::add(&m.bytes_out, sent * d.frame.len() as u64);
    }

    fn rooms_get(&self, rid: super::RoomId) -> Option<&super::index::Room> {
        self.rooms.by_id(rid)
    }
}
