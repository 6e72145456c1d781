//! The room → clients and user → clients indexes of one shard. No locks:
//! only the owning shard thread touches them.
//!
//! Rooms are interned: a client holds small `RoomId`s, the name lives once
//! per shard, and a room's members sit in a plain vector (4 bytes each), so
//! fan-out iterates dense memory. Join and leave stay O(1): each member's
//! [`Membership`] in its record says where in that vector it is, and a
//! leave moves the last member into the hole ([`Rooms::leave`] says who
//! moved, for the shard to update that member's record).

use std::collections::HashMap;

use slab::Slab;

/// A connection's slot in the shard's slab.
pub type ConnKey = u32;
/// An interned room of this shard.
pub type RoomId = u32;

/// One room.
#[derive(Debug)]
pub struct Room {
    pub name: Box<str>,
    /// In no particular order; a member's place is in its
    /// [`Membership::slot`].
    members: Vec<ConnKey>,
}

impl Room {
    /// Its members on this shard.
    #[inline]
    pub fn members(&self) -> &[ConnKey] {
        &self.members
    }
}

/// A connection's place in one room: the room, and where in the room's
/// member list the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub room: RoomId,
    pub slot: u32,
}

/// What [`Rooms::leave`] changed besides removing the member.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Left {
    /// This member now sits in the leaver's old slot: its
    /// [`Membership::slot`] for the room must become that slot.
    pub moved: Option<(ConnKey, u32)>,
    /// The room is gone with its last member: its name.
    pub emptied: Option<Box<str>>,
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

    /// Add `key`, not yet a member, to `name` (created if it has no
    /// members here); returns its membership.
    pub fn join(&mut self, name: &str, key: ConnKey) -> Membership {
        let id = match self.by_name.get(name) {
            Some(id) => *id,
            None => {
                let id = self.rooms.insert(Room {
                    name: name.into(),
                    members: Vec::new(),
                }) as RoomId;
                self.by_name.insert(name.into(), id);
                id
            }
        };
        let members = &mut self.rooms[id as usize].members;
        let slot = members.len() as u32;
        members.push(key);
        Membership { room: id, slot }
    }

    /// Remove `key` from the room of `m` (its membership there).
    pub fn leave(&mut self, m: Membership, key: ConnKey) -> Left {
        let mut left = Left::default();
        let Some(room) = self.rooms.get_mut(m.room as usize) else {
            return left;
        };
        let slot = m.slot as usize;
        if room.members.get(slot) != Some(&key) {
            // A membership that does not match would be the shard's bug:
            // remove nothing rather than someone else (the fuzz target
            // `client_message` checks every membership).
            return left;
        }
        room.members.swap_remove(slot);
        if let Some(&k) = room.members.get(slot) {
            left.moved = Some((k, m.slot));
        }
        if room.members.is_empty() {
            let room = self.rooms.remove(m.room as usize);
            self.by_name.remove(&room.name);
            left.emptied = Some(room.name);
        } else if room.members.capacity() > 64 && room.members.len() < room.members.capacity() / 4 {
            // A room that emptied out gives its memory back.
            let len = room.members.len();
            room.members.shrink_to(len * 2);
        }
        left
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_come_and_go_with_members() {
        let mut r = Rooms::default();
        let a1 = r.join("a", 1);
        let a2 = r.join("a", 2);
        assert_eq!(a1.room, a2.room);
        assert_eq!(r.get("a").unwrap().members(), &[1, 2]);
        assert_eq!(
            r.leave(a1, 1),
            Left {
                moved: Some((2, 0)),
                emptied: None
            }
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r.get("a").unwrap().members(), &[2]);
        let a2 = Membership {
            room: a2.room,
            slot: 0,
        };
        assert_eq!(r.leave(a2, 2).emptied.as_deref(), Some("a"));
        assert!(r.get("a").is_none());
        assert!(r.is_empty());
    }

    #[test]
    fn leaving_from_the_end_moves_nobody() {
        let mut r = Rooms::default();
        let m: Vec<Membership> = (0..3).map(|k| r.join("a", k)).collect();
        assert_eq!(r.leave(m[2], 2), Left::default());
        assert_eq!(r.get("a").unwrap().members(), &[0, 1]);
    }

    /// Many members leaving in an arbitrary order, the moved ones'
    /// memberships updated as the shard does: every member stays where
    /// its membership says, and nobody else is removed.
    #[test]
    fn memberships_follow_their_members_through_leaves() {
        let mut r = Rooms::default();
        let mut m: HashMap<ConnKey, Membership> = (0..200).map(|k| (k, r.join("a", k))).collect();
        let mut order: Vec<ConnKey> = (0..200).collect();
        // A fixed shuffle.
        for i in 0..order.len() {
            let j = (i * 7919 + 13) % order.len();
            order.swap(i, j);
        }
        for (n, k) in order.iter().enumerate() {
            let left = r.leave(m.remove(k).unwrap(), *k);
            if let Some((moved, slot)) = left.moved {
                m.get_mut(&moved).unwrap().slot = slot;
            }
            if let Some(room) = r.get("a") {
                assert_eq!(room.members().len(), 200 - n - 1);
                for (k, mm) in &m {
                    assert_eq!(room.members()[mm.slot as usize], *k);
                }
            }
        }
        assert!(r.is_empty());
    }

    /// A membership that does not match (the shard's bug) removes nobody.
    #[test]
    fn a_stale_membership_removes_nobody() {
        let mut r = Rooms::default();
        let a = r.join("a", 1);
        r.join("a", 2);
        assert_eq!(r.leave(a, 2), Left::default());
        assert_eq!(r.get("a").unwrap().members(), &[1, 2]);
    }
}
