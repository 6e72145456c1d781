//! Fan-out: one encoded frame, many recipients. Per recipient the work is
//! a refcount increment of the shared `Bytes` and a queue push; the frame
//! is never copied and never re-encoded. A run of frames to the same
//! recipients (a burst to a room) visits each recipient once
//! ([`Shard::deliver_run`]).

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
        self.deliver_run(std::slice::from_ref(d), now);
    }

    /// Deliver a run of deliveries that reach the same recipients (each
    /// [`groups_with`] the first, or a run of one), in order: every
    /// recipient is visited once and gets all of them. What each client
    /// ends up with is the same as delivering them one by one (nothing else
    /// runs in between, and a client is never removed from a room or the
    /// shard while its task runs); a burst touches each client's state and
    /// queue once instead of N times (issue 16).
    pub fn deliver_run(&mut self, run: &[Delivery], now: Instant) {
        let Some(first) = run.first() else {
            return;
        };
        let exclude = Exclude::new(first.exclude.as_deref());
        let (mut frames, mut bytes) = (0u64, 0u64);
        let mut push_all = |sh: &mut Self, k: ConnKey| {
            for d in run {
                if sh.push(k, &d.frame, now) {
                    frames += 1;
                    bytes += d.frame.len() as u64;
                }
            }
        };
        match &first.target {
            Target::Client(id) => {
                if let Some(k) = self.key_of(id) {
                    push_all(self, k);
                }
            }
            Target::User(user) => {
                let keys: smallvec::SmallVec<[ConnKey; 4]> =
                    self.users.get(&self.conns, user).collect();
                for k in keys {
                    push_all(self, k);
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
                        push_all(self, k);
                    }
                } else if let Some(rid) = self.rooms.id(room) {
                    let mut i = 0;
                    // Index loop: `push` may close a slow client, which never
                    // removes it from the room before its task ends.
                    while let Some(room) = self.rooms_get(rid) {
                        let Some(&k) = room.members().get(i) else {
                            break;
                        };
                        i += 1;
                        if !matches!(exclude, Exclude::None)
                            && exclude.contains(&self.conns[k as usize].id)
                        {
                            continue;
                        }
                        push_all(self, k);
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
                    push_all(self, k as ConnKey);
                }
            }
        }
        let m = &self.ctx.metrics;
        ShardMetrics::add(&m.messages_out, frames);
        ShardMetrics::add(&m.bytes_out, bytes);
    }

    fn rooms_get(&self, rid: super::RoomId) -> Option<&super::index::Room> {
        self.rooms.by_id(rid)
    }
}

/// Whether `b` can join a run of deliveries started by `a`
/// ([`Shard::deliver_run`]): both to the same room (not a client's own
/// room) or both broadcasts, neither with exclusions.
pub fn groups_with(a: &Delivery, b: &Delivery) -> bool {
    a.exclude.is_none()
        && b.exclude.is_none()
        && match (&a.target, &b.target) {
            (Target::Room(x), Target::Room(y)) => x == y && ClientId::parse(x).is_none(),
            (Target::Broadcast, Target::Broadcast) => true,
            _ => false,
        }
}
