//! The room → clients and user → clients indexes of one shard. No locks:
//! only the owning shard thread touches them.
//!
//! Rooms are interned: a client holds small `RoomId`s, the name lives once
//! per shard, and a room's members sit in an `IndexSet` so fan-out iterates
//! a dense vector while join and leave stay O(1).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use indexmap::IndexSet;
use slab::Slab;
use smallvec::SmallVec;

/// A connection's slot in the shard's slab.
pub type ConnKey = u32;
/// An interned room of this shard.
pub type RoomId = u32;

/// Hasher for keys that are already uniformly distributed (slab keys).
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        // Spread small integers over the table (Fibonacci hashing).
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// `BuildHasher` for [`IdentityHasher`].
pub type BuildIdentity = BuildHasherDefault<IdentityHasher>;

/// One room.
#[derive(Debug)]
pub struct Room {
    pub name: Box<str>,
    pub members: IndexSet<ConnKey, BuildIdentity>,
}

/// All rooms of the shard.
#[derive(Debug, Default)]
pub struct Rooms {
    by_name: HashMap<Box<str>, RoomId>,
    rooms: Slab<Room>,
}

impl Rooms {
    /// The room called `name`, if it has members here.
    pub fn get(&self, name: &str) -> Option<&Room> {
        self.by_name
            .get(name)
            .and_then(|id| self.rooms.get(*id as usize))
    }

    /// The id of `name`, if it has members here.
    pub fn id(&self, name: &str) -> Option<RoomId> {
        self.by_name.get(name).copied()
    }

    /// The room with id `id`.
    #[inline]
    pub fn by_id(&self, id: RoomId) -> Option<&Room> {
        self.rooms.get(id as usize)
    }

    /// Name of a room id.
    pub fn name(&self, id: RoomId) -> Option<&str> {
        self.rooms.get(id as usize).map(|r| &*r.name)
    }

    /// Add `key` to `name`; returns the id and whether it was new for `key`.
    pub fn join(&mut self, name: &str, key: ConnKey) -> (RoomId, bool) {
        let id = match self.by_name.get(name) {
            Some(id) => *id,
            None => {
                let id = self.rooms.insert(Room {
                    name: name.into(),
                    members: IndexSet::default(),
                }) as RoomId;
                self.by_name.insert(name.into(), id);
                id
            }
        };
        let new = self.rooms[id as usize].members.insert(key);
        (id, new)
    }

    /// Remove `key` from room `id`; the room disappears with its last
    /// member: then its name is returned.
    pub fn leave(&mut self, id: RoomId, key: ConnKey) -> Option<Box<str>> {
        let room = self.rooms.get_mut(id as usize)?;
        room.members.swap_remove(&key);
        if room.members.is_empty() {
            let room = self.rooms.remove(id as usize);
            self.by_name.remove(&room.name);
            return Some(room.name);
        }
        None
    }

    /// Number of rooms with members.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether there are no rooms.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }
}

/// user id → that user's connections on this shard.
#[derive(Debug, Default)]
pub struct Users {
    /// The key string is shared with the sessions' records (`Conn::user`).
    map: HashMap<Rc<str>, SmallVec<[ConnKey; 2]>>,
}

impl Users {
    /// Index `key` under `user`; returns the index's copy of the user id
    /// for the session's record to share.
    pub fn add(&mut self, user: &str, key: ConnKey) -> Rc<str> {
        if let Some((name, _)) = self.map.get_key_value(user) {
            let name = name.clone();
            if let Some(v) = self.map.get_mut(user)
                && !v.contains(&key)
            {
                v.push(key);
            }
            return name;
        }
        let name: Rc<str> = Rc::from(user);
        let mut v = SmallVec::new();
        v.push(key);
        self.map.insert(name.clone(), v);
        name
    }

    /// Remove `key` from `user`; the user disappears with its last
    /// session: then true.
    pub fn remove(&mut self, user: &str, key: ConnKey) -> bool {
        if let Some(v) = self.map.get_mut(user) {
            v.retain(|k| *k != key);
            if v.is_empty() {
                self.map.remove(user);
                return true;
            }
        }
        false
    }

    /// Sessions of `user`.
    pub fn get(&self, user: &str) -> &[ConnKey] {
        self.map.get(user).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// Distinct users.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no user is indexed.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_come_and_go_with_members() {
        let mut r = Rooms::default();
        let (a, new) = r.join("a", 1);
        assert!(new);
        assert!(!r.join("a", 1).1);
        r.join("a", 2);
        assert_eq!(r.get("a").unwrap().members.len(), 2);
        r.leave(a, 1);
        assert_eq!(r.len(), 1);
        r.leave(a, 2);
        assert!(r.get("a").is_none());
        assert!(r.is_empty());
    }

    #[test]
    fn users_multi_session() {
        let mut u = Users::default();
        u.add("u", 1);
        u.add("u", 2);
        u.add("u", 2);
        assert_eq!(u.get("u"), &[1, 2]);
        u.remove("u", 1);
        assert_eq!(u.get("u"), &[2]);
        u.remove("u", 2);
        assert!(u.is_empty());
    }
}
