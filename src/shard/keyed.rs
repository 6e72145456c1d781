//! The client-id and user indexes of one shard: hash tables of slab keys
//! (4 bytes a slot) keyed by a field of the connection's own record.
//!
//! The key itself (the client id, the user-id string) lives once, in the
//! record (`Conn::id`, `Conn::user`); a lookup hashes what it is given
//! and compares it with the records its probe lands on, and growing the
//! table rehashes from the records. A user's sessions are a list linked
//! through their records (`Conn::next_of_user`) whose first session is
//! the one in the table (`Conn::prev_of_user` makes adding and removing
//! a session O(1)). An idle connection that is its own user costs
//! the two indexes about 10 bytes together, where two `HashMap`s of owned
//! keys cost about 150.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use slab::Slab;

use super::conn::Conn;
use super::index::ConnKey;
use crate::delivery::ClientId;

/// End of a user's session list.
pub const NO_SESSION: ConnKey = ConnKey::MAX;

/// The hash of a client id. Ids are made by the server (random but for the
/// process tag in the first four bytes and the shard in the last), so they
/// need no keyed hash; both halves are mixed so that neither the tag nor
/// the shard byte lands in the bits that pick a bucket.
fn id_hash(id: &ClientId) -> u64 {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&id.0[..8]);
    hi.copy_from_slice(&id.0[8..]);
    let h = (u64::from_le_bytes(lo) ^ u64::from_le_bytes(hi).rotate_left(29))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 29)
}

/// Client id → its connection on this shard. Grown as connections come
/// (unlike the slab of records): its entries land on random pages, so
/// room for `--max-connections` made up front would be resident as soon
/// as a fraction of them connected (16 bytes a connection at 10,000 of
/// 20,000 instead of 8).
#[derive(Debug, Default)]
pub struct ById {
    table: HashTable<ConnKey>,
}

impl ById {
    /// The connection whose id is `id`.
    pub fn get<S>(&self, conns: &Slab<Conn<S>>, id: &ClientId) -> Option<ConnKey> {
        self.table
            .find(id_hash(id), |&k| {
                conns.get(k as usize).is_some_and(|c| c.id == *id)
            })
            .copied()
    }

    /// Index `key` (already in `conns`) under its record's id, which no
    /// other connection of the shard has.
    pub fn insert<S>(&mut self, conns: &Slab<Conn<S>>, key: ConnKey) {
        let Some(c) = conns.get(key as usize) else {
            return;
        };
        self.table.insert_unique(id_hash(&c.id), key, |&k| {
            conns.get(k as usize).map_or(0, |c| id_hash(&c.id))
        });
    }

    /// Take `key`, whose id is `id`, out of the index (the record may be
    /// gone already).
    pub fn remove(&mut self, id: &ClientId, key: ConnKey) {
        if let Ok(e) = self.table.find_entry(id_hash(id), |&k| k == key) {
            e.remove();
        }
    }

    /// Connections indexed.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// User id → that user's sessions on this shard. User ids come from
/// tokens and authenticators, so the hash is keyed (SipHash with a random
/// key, as `HashMap`'s).
#[derive(Debug, Default)]
pub struct Users {
    /// The first session of each user.
    table: HashTable<ConnKey>,
    hasher: RandomState,
}

/// The sessions of one user, from [`Users::get`].
pub struct Sessions<'a, S> {
    conns: &'a Slab<Conn<S>>,
    next: ConnKey,
}

impl<S> Iterator for Sessions<'_, S> {
    type Item = ConnKey;
    fn next(&mut self) -> Option<ConnKey> {
        let k = self.next;
        let c = self.conns.get(k as usize)?;
        self.next = c.next_of_user;
        Some(k)
    }
}

fn user_of<S>(conns: &Slab<Conn<S>>, k: ConnKey) -> Option<&str> {
    conns.get(k as usize).and_then(|c| c.user.as_deref())
}

impl Users {
    fn hash(&self, user: &str) -> u64 {
        self.hasher.hash_one(user)
    }

    /// The first session of `user`.
    fn head<S>(&self, conns: &Slab<Conn<S>>, user: &str) -> Option<ConnKey> {
        self.table
            .find(self.hash(user), |&k| user_of(conns, k) == Some(user))
            .copied()
    }

    /// Index `key` under `user` and set its record's user id: the string
    /// of the user's other sessions when it has some (returns false),
    /// else a new one (returns true: the user is new on this shard). The
    /// session goes last, so a user's sessions stay in connect order. A
    /// connection already indexed (under any user) is left as it is.
    /// O(1): one user may hold thousands of sessions.
    pub fn add<S>(&mut self, conns: &mut Slab<Conn<S>>, user: &str, key: ConnKey) -> bool {
        if conns.get(key as usize).is_none_or(|c| c.user.is_some()) {
            return false;
        }
        if let Some(head) = self.head(conns, user) {
            let (name, tail) = {
                let h = &conns[head as usize];
                (h.user.clone(), h.prev_of_user)
            };
            if let Some(t) = conns.get_mut(tail as usize) {
                t.next_of_user = key;
            }
            conns[head as usize].prev_of_user = key;
            let c = &mut conns[key as usize];
            c.user = name;
            c.next_of_user = NO_SESSION;
            c.prev_of_user = tail;
            return false;
        }
        // Longer than 4 GiB: cannot come from a frame (`--max-payload`)
        // or an authenticator's bounded answer; not indexed.
        let Some(name) = crate::user_id::UserId::new(user) else {
            tracing::warn!(len = user.len(), "user id too long to index");
            return false;
        };
        let c = &mut conns[key as usize];
        c.user = Some(name);
        c.next_of_user = NO_SESSION;
        // The first session's `prev` is the last one: itself, for now.
        c.prev_of_user = key;
        let hasher = &self.hasher;
        let conns = &*conns;
        self.table.insert_unique(hasher.hash_one(user), key, |&k| {
            user_of(conns, k).map_or(0, |u| hasher.hash_one(u))
        });
        true
    }

    /// Take `key` (still in `conns`, indexed under its record's user id)
    /// out of its user's sessions; returns true when that was the user's
    /// last session on this shard. O(1).
    pub fn remove<S>(&mut self, conns: &mut Slab<Conn<S>>, key: ConnKey) -> bool {
        let Some(c) = conns.get(key as usize) else {
            return false;
        };
        let Some(user) = c.user.clone() else {
            return false;
        };
        let (next, prev) = (c.next_of_user, c.prev_of_user);
        let hash = self.hash(&user);
        let last = match self.table.find_entry(hash, |&k| k == key) {
            // The only session.
            Ok(e) if next == NO_SESSION => {
                e.remove();
                true
            }
            // The first of several: the next one is first now, and its
            // `prev` is the last one's.
            Ok(mut e) => {
                *e.get_mut() = next;
                if let Some(n) = conns.get_mut(next as usize) {
                    n.prev_of_user = prev;
                }
                false
            }
            // Later in the list: unlink it between its neighbours.
            Err(_) => {
                if let Some(p) = conns.get_mut(prev as usize) {
                    p.next_of_user = next;
                }
                if next == NO_SESSION {
                    // It was the last: the first session's `prev` moves.
                    if let Some(h) = self.head(conns, &user) {
                        conns[h as usize].prev_of_user = prev;
                    }
                } else if let Some(n) = conns.get_mut(next as usize) {
                    n.prev_of_user = prev;
                }
                false
            }
        };
        let c = &mut conns[key as usize];
        c.next_of_user = NO_SESSION;
        c.prev_of_user = NO_SESSION;
        last
    }

    /// Sessions of `user`, in connect order.
    pub fn get<'a, S>(&self, conns: &'a Slab<Conn<S>>, user: &str) -> Sessions<'a, S> {
        Sessions {
            conns,
            next: self.head(conns, user).unwrap_or(NO_SESSION),
        }
    }

    /// Distinct users.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no user is indexed.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids of one process and shard share their first four and last
    /// bytes; the bits that pick a bucket must still spread them.
    #[test]
    fn ids_of_one_tagged_shard_spread_over_the_buckets() {
        let mut used = std::collections::HashSet::new();
        for _ in 0..4096 {
            let id = ClientId::new_tagged(3, 0xdead_beef);
            used.insert(id_hash(&id) & 4095);
        }
        // 4096 random draws into 4096 buckets fill about 63% of them.
        assert!(used.len() > 2300, "{} buckets of 4096 used", used.len());
    }
}
