//! Rooms of one client: join (through the room validator the driver
//! calls), leave, the own-id room and the per-client room cap.

use super::{ConnKey, Event, Shard};
use crate::auth::JoinRequest;
use crate::delivery::ClientId;
use crate::metrics::ShardMetrics;

impl<S> Shard<S> {
    pub(super) fn update_index_gauges(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.ctx.metrics;
        m.rooms.store(self.rooms.len() as i64, Relaxed);
        m.users.store(self.users.len() as i64, Relaxed);
    }

    /// Join one room (the own-id room is a flag, not an index entry).
    pub(super) fn join_room(&mut self, key: ConnKey, name: &str) {
        let conn = &mut self.conns[key as usize];
        if ClientId::parse(name) == Some(conn.id) {
            conn.in_own_room = true;
            return;
        }
        let first = match self.rooms.id(name) {
            None => true,
            Some(rid) if conn.membership(rid).is_some() => return,
            Some(_) => false,
        };
        let m = self.rooms.join(name, key);
        self.conns[key as usize].rooms.push(m);
        if first {
            self.note_interest(true, || super::Topic::Room(name.into()));
        }
    }

    /// Joining `name` would not take one of the client's room slots: it is
    /// in it already, or it is the room named by its own id (a flag, not
    /// an index entry).
    fn takes_no_slot(&self, key: ConnKey, name: &str) -> bool {
        let conn = &self.conns[key as usize];
        if ClientId::parse(name) == Some(conn.id) {
            return true;
        }
        self.rooms
            .id(name)
            .is_some_and(|rid| conn.membership(rid).is_some())
    }

    /// `join` arrived: drop what can never be joined, then ask the driver
    /// to call the room validator.
    pub(super) fn start_join(&mut self, key: ConnKey, mut rooms: Vec<String>) {
        // A room named by a client id (any UUID form) other than the
        // client's own is never joinable, whatever the validator says: a
        // room message to a client id (cross-node `send`) must reach that
        // client only.
        let own = self.conns[key as usize].id;
        let before = rooms.len();
        rooms.retain(|r| ClientId::parse(r).is_none_or(|id| id == own));
        let foreign = (before - rooms.len()) as u64;
        if foreign > 0 {
            tracing::debug!(client = %own, foreign, "joins of other clients' id rooms refused");
            let m = &self.ctx.metrics;
            ShardMetrics::add(&m.rooms_refused, foreign);
            ShardMetrics::add(&m.rooms_client_id_refused, foreign);
        }
        let cap = self.ctx.config.max_rooms_per_client;
        if cap > 0 && rooms.len() > cap {
            // More than could ever be joined: the rest is refused unseen.
            let over = (rooms.len() - cap) as u64;
            rooms.truncate(cap);
            let m = &self.ctx.metrics;
            ShardMetrics::add(&m.rooms_refused, over);
            ShardMetrics::add(&m.rooms_over_limit, over);
        }
        if !self.ctx.has_room_validator {
            tracing::debug!("join refused: no room validator configured");
            ShardMetrics::add(&self.ctx.metrics.rooms_refused, rooms.len() as u64);
            return;
        }
        let conn = &mut self.conns[key as usize];
        conn.awaiting = true;
        let request = JoinRequest {
            client_id: conn.id.to_string(),
            user_id: conn.user.as_deref().map(str::to_owned),
            rooms,
            room_patterns: conn.extra.as_ref().and_then(|e| e.room_patterns.clone()),
        };
        let generation = conn.generation;
        self.events.push_back(Event::Validate {
            key,
            generation,
            request,
        });
    }

    pub(super) fn finish_join(
        &mut self,
        key: ConnKey,
        generation: u32,
        requested: &[String],
        allowed: Vec<String>,
    ) {
        let _span = self.conn_span(key).entered();
        if self.live(key, generation).is_none() {
            return;
        }
        // Only rooms that were asked for and passed the filter: a validator
        // cannot put a client into `ws:` rooms.
        let asked: std::collections::HashSet<&str> = requested.iter().map(String::as_str).collect();
        let cap = self.ctx.config.max_rooms_per_client;
        let mut joined = 0u64;
        let mut over = 0u64;
        for r in allowed.iter().filter(|r| asked.contains(r.as_str())) {
            if cap > 0 && self.conns[key as usize].rooms.len() >= cap && !self.takes_no_slot(key, r)
            {
                over += 1;
                continue;
            }
            self.join_room(key, r);
            joined += 1;
        }
        if over > 0 {
            tracing::debug!(client = %self.conns[key as usize].id, over, cap, "joins past --max-rooms-per-client refused");
        }
        let m = &self.ctx.metrics;
        ShardMetrics::add(&m.rooms_joined, joined);
        ShardMetrics::add(&m.rooms_over_limit, over);
        ShardMetrics::add(
            &m.rooms_refused,
            requested.len() as u64 - joined.min(requested.len() as u64),
        );
        self.update_index_gauges();
    }

    /// Take `key` out of the room index for membership `m` (the
    /// connection's record no longer lists it): the member moved into its
    /// slot learns its new place, and a room left empty is no longer
    /// wanted.
    pub(super) fn leave_index(&mut self, m: super::index::Membership, key: ConnKey) {
        let left = self.rooms.leave(m, key);
        if let Some((moved, slot)) = left.moved
            && let Some(c) = self.conns.get_mut(moved as usize)
            && let Some(i) = c.membership(m.room)
        {
            c.rooms[i].slot = slot;
        }
        if let Some(name) = left.emptied {
            self.note_interest(false, || super::Topic::Room(name));
        }
    }

    /// `leave`: only rooms the client is in.
    pub(super) fn leave(&mut self, key: ConnKey, names: &[String]) {
        for name in names {
            let conn = &mut self.conns[key as usize];
            if ClientId::parse(name) == Some(conn.id) {
                conn.in_own_room = false;
                continue;
            }
            let Some(rid) = self.rooms.id(name) else {
                continue;
            };
            let conn = &mut self.conns[key as usize];
            if let Some(pos) = conn.membership(rid) {
                let m = conn.rooms.swap_remove(pos);
                self.leave_index(m, key);
            }
        }
        self.update_index_gauges();
    }
}
