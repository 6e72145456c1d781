//! Interest-based subscriptions (`--redis-subscribe interest`, the
//! default): which Redis channels this process needs, kept from what its
//! shards report, and the SUBSCRIBE / UNSUBSCRIBE commands that bring the
//! subscriber connection there. Sans-io: the subscriber feeds it shard
//! reports and asks it for the next batch; nothing here touches a socket.
//!
//! * A shard reports only transitions ([`crate::delivery::Interest`]): a
//!   room's first and last member on that shard, a user's first and last
//!   session, a client's start and end. The process needs a channel while
//!   any of its shards does, so each entry counts the shards that want it.
//! * Channels: `ws:room:{room}` per room, `ws:user:{userId}` per user, and
//!   per client both `ws:client:{id}` (emitters' `toClient`) and
//!   `ws:room:{id}` (Ignis's `send()` to a client of another node travels
//!   as a room message named by the id). A room may carry a client's id as
//!   its name: the channel `ws:room:{id}` is then subscribed once and kept
//!   until neither needs it.
//! * Desired state, not a log of commands: a batch is built from the
//!   current counts, so a join-leave-join between two batches costs nothing
//!   and can never end unsubscribed. Commands go out one batch at a time
//!   on one connection, so Redis applies them in order.
//! * After a reconnect every wanted channel is subscribed again
//!   ([`Subscriptions::reset`]); the memory used is bounded by the number
//!   of wanted channels, however long Redis is away and however much churn
//!   happens meanwhile.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

use hashbrown::{HashTable, hash_table};

use crate::delivery::{ClientId, Interest, Topic};
use crate::user_id::UserId;

/// Channels per SUBSCRIBE or UNSUBSCRIBE command (Centrifugo uses 512).
pub const BATCH: usize = 512;

/// What reaches the subscriber from the rest of the process.
#[derive(Debug)]
pub enum BridgeInput {
    /// Changes of what one shard needs, in the order they happened.
    Interest { changes: Vec<Interest> },
    /// Answer once every change received before this one is confirmed by
    /// Redis ([`crate::Handle::settle_subscriptions`]).
    Settle(flume::Sender<()>),
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    /// Shards that want it.
    shards: u32,
    /// Its channels are subscribed on the current connection (or the
    /// command doing it is on its way).
    applied: bool,
    /// In [`Subscriptions::queue`].
    queued: bool,
}

const APPLIED: u32 = 1 << 31;
const QUEUED: u32 = 1 << 30;
/// Shard counts beyond this saturate (a count is at most the number of
/// shards).
const MAX_SHARDS: u32 = QUEUED - 1;

impl Entry {
    /// Count one shard more (`on`) or one less; whether the key must be
    /// queued (its wanted state flipped and it is not queued yet).
    fn count(&mut self, on: bool) -> bool {
        let was = self.shards > 0;
        self.shards = if on {
            self.shards.saturating_add(1).min(MAX_SHARDS)
        } else {
            self.shards.saturating_sub(1)
        };
        let requeue = was != (self.shards > 0) && !self.queued;
        self.queued |= requeue;
        requeue
    }

    /// The entry in one word (for [`UserSet`]).
    fn pack(self) -> u32 {
        self.shards.min(MAX_SHARDS)
            | if self.applied { APPLIED } else { 0 }
            | if self.queued { QUEUED } else { 0 }
    }

    fn unpack(w: u32) -> Entry {
        Entry {
            shards: w & MAX_SHARDS,
            applied: w & APPLIED != 0,
            queued: w & QUEUED != 0,
        }
    }
}

/// The wanted users: a table of the user ids themselves, each entry kept in
/// its key's [`UserId::aux`] word. 8 bytes a slot where a `HashMap<UserId,
/// Entry>` takes 16 (a user's entry is about 14 bytes instead of 28 at
/// 10,000 users): with a distinct user per connection it is a cost of
/// every idle connection.
#[derive(Default)]
struct UserSet {
    table: HashTable<UserId>,
    /// User ids come from tokens: keyed hashing.
    hasher: RandomState,
}

impl std::fmt::Debug for UserSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSet")
            .field("len", &self.table.len())
            .finish()
    }
}

impl UserSet {
    fn hash(&self, name: &str) -> u64 {
        self.hasher.hash_one(name)
    }

    /// The key of `name`, if wanted or still settling.
    fn get(&self, name: &str) -> Option<&UserId> {
        self.table.find(self.hash(name), |k| k.as_str() == name)
    }

    fn entry(&self, name: &str) -> Option<Entry> {
        self.get(name).map(|k| Entry::unpack(k.aux()))
    }

    /// [`Entry::count`] on the entry kept in `key`'s word.
    fn count(key: &UserId, on: bool) -> bool {
        let mut e = Entry::unpack(key.aux());
        let requeue = e.count(on);
        key.set_aux(e.pack());
        requeue
    }

    /// The key of `u`'s id, added (with an empty entry) if missing.
    fn get_or_insert(&mut self, u: &UserId) -> &UserId {
        let hasher = &self.hasher;
        let h = hasher.hash_one(u.as_str());
        match self.table.entry(
            h,
            |k| k.as_str() == u.as_str(),
            |k| hasher.hash_one(k.as_str()),
        ) {
            hash_table::Entry::Occupied(o) => o.into_mut(),
            hash_table::Entry::Vacant(v) => {
                // `u`'s allocation is no key here (its id is not), so no
                // entry lives in its word yet.
                u.set_aux(0);
                v.insert(u.clone()).into_mut()
            }
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(e) = self
            .table
            .find_entry(self.hash(name), |k| k.as_str() == name)
        {
            e.remove();
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&UserId, Entry)> {
        self.table.iter().map(|k| (k, Entry::unpack(k.aux())))
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Room(Box<str>),
    User(UserId),
    Client(ClientId),
    /// A settle request ([`Subscriptions::mark`]): everything queued
    /// before it is in its batch or an earlier one.
    Mark(u64),
}

/// One step towards the wanted set: channels to SUBSCRIBE, then channels
/// to UNSUBSCRIBE (a channel is in at most one of them).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub subscribe: Vec<String>,
    pub unsubscribe: Vec<String>,
    /// Settle requests answered once this batch is confirmed.
    pub marks: Vec<u64>,
}

impl Batch {
    /// Add a channel; one both subscribed and unsubscribed in the same
    /// batch cancels out (only `ws:room:{id}`, shared by a client and a
    /// room of that name, can be).
    fn push(&mut self, subscribe: bool, channel: String, shared_name: bool) {
        let (to, other) = if subscribe {
            (&mut self.subscribe, &mut self.unsubscribe)
        } else {
            (&mut self.unsubscribe, &mut self.subscribe)
        };
        if shared_name && let Some(i) = other.iter().position(|c| *c == channel) {
            other.swap_remove(i);
            return;
        }
        to.push(channel);
    }

    /// Channels in the batch.
    pub fn len(&self) -> usize {
        self.subscribe.len() + self.unsubscribe.len()
    }

    /// Nothing to send and nothing to answer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.marks.is_empty()
    }
}

/// The channels this process wants, and how far the connection is from
/// them.
#[derive(Debug, Default)]
pub struct Subscriptions {
    rooms: HashMap<Box<str>, Entry>,
    /// Keyed by the shards' own user id strings (see [`Topic::User`]).
    users: UserSet,
    clients: HashMap<ClientId, Entry>,
    /// Entries whose wanted state may differ from what is applied.
    queue: VecDeque<Key>,
    /// Channels subscribed (or being subscribed) on the connection.
    channels: usize,
    /// [`Key::Mark`]s in the queue.
    marks: usize,
    /// `ws:room:{tag}-`: rooms whose channel the client-id pattern
    /// `ws:room:{tag}-*` already hears (subscribing them too would
    /// deliver their messages twice).
    covered: Option<String>,
}

/// The client whose own room `name` is, if it is a client id as clients
/// see theirs (other spellings name another channel).
fn client_named(name: &str) -> Option<ClientId> {
    if ClientId::is_canonical(name) {
        ClientId::parse(name)
    } else {
        None
    }
}

impl Subscriptions {
    /// An empty set for a process whose client ids carry `tag` (heard
    /// through patterns), if any.
    pub fn new(tag: Option<u32>) -> Subscriptions {
        Subscriptions {
            covered: tag.map(|t| format!("{t:08x}-")),
            ..Subscriptions::default()
        }
    }

    /// Give back the capacity a storm of changes left in the queue (a
    /// connect storm queues an entry per new user), once it is worked off.
    pub fn shrink(&mut self) {
        crate::mem::shrink_queue(&mut self.queue);
    }

    /// A settle request: once every change received before it is
    /// confirmed, a batch carries `id` in [`Batch::marks`]. After a
    /// [`Subscriptions::reset`] it waits for the whole set again.
    pub fn mark(&mut self, id: u64) {
        self.marks += 1;
        self.queue.push_back(Key::Mark(id));
    }

    fn covered(&self, room: &str) -> bool {
        self.covered.as_deref().is_some_and(|p| room.starts_with(p))
    }

    /// Take one shard's report.
    pub fn apply(&mut self, changes: Vec<Interest>) {
        for Interest { topic, on } in changes {
            let key = match topic {
                Topic::Room(r) => Key::Room(r),
                Topic::User(u) => Key::User(u),
                Topic::Client(c) => Key::Client(c),
            };
            self.change(key, on);
        }
    }

    fn change(&mut self, key: Key, on: bool) {
        let requeue = match (&key, on) {
            (Key::User(u), true) => UserSet::count(self.users.get_or_insert(u), on),
            // An end without a start would be a shard's bug: ignore it
            // rather than keep an entry nothing will remove.
            (Key::User(u), false) => match self.users.get(u) {
                Some(k) => UserSet::count(k, on),
                None => return,
            },
            (Key::Room(r), true) => self.rooms.entry(r.clone()).or_default().count(on),
            (Key::Client(c), true) => self.clients.entry(*c).or_default().count(on),
            (Key::Room(r), false) => match self.rooms.get_mut(r) {
                Some(e) => e.count(on),
                None => return,
            },
            (Key::Client(c), false) => match self.clients.get_mut(c) {
                Some(e) => e.count(on),
                None => return,
            },
            (Key::Mark(_), _) => return,
        };
        if requeue {
            self.queue.push_back(key);
        }
    }

    /// The connection was replaced: nothing is subscribed on the new one.
    /// Every wanted channel is queued again.
    pub fn reset(&mut self) {
        self.channels = 0;
        // Settle requests wait for the whole set: behind it.
        let marks: Vec<Key> = self
            .queue
            .iter()
            .filter(|k| matches!(k, Key::Mark(_)))
            .cloned()
            .collect();
        self.queue.retain(|k| !matches!(k, Key::Mark(_)));
        let queue = &mut self.queue;
        for (r, e) in &mut self.rooms {
            e.applied = false;
            if !e.queued {
                e.queued = true;
                queue.push_back(Key::Room(r.clone()));
            }
        }
        for (u, mut e) in self.users.iter() {
            e.applied = false;
            if !e.queued {
                e.queued = true;
                queue.push_back(Key::User(u.clone()));
            }
            u.set_aux(e.pack());
        }
        for (c, e) in &mut self.clients {
            e.applied = false;
            if !e.queued {
                e.queued = true;
                queue.push_back(Key::Client(*c));
            }
        }
        queue.extend(marks);
    }

    /// The next commands to send, up to about `max` channels; `None` when
    /// the connection has everything wanted and nothing more.
    pub fn next_batch(&mut self, max: usize) -> Option<Batch> {
        let mut b = Batch::default();
        while b.len() < max {
            let Some(key) = self.queue.pop_front() else {
                break;
            };
            if let Key::Mark(id) = key {
                self.marks -= 1;
                b.marks.push(id);
                continue;
            }
            self.settle_key(key, &mut b);
        }
        (!b.is_empty()).then_some(b)
    }

    fn room_applied(&self, name: &str) -> bool {
        self.rooms.get(name).is_some_and(|e| e.applied)
    }

    fn client_applied(&self, name: &str) -> bool {
        client_named(name)
            .and_then(|c| self.clients.get(&c))
            .is_some_and(|e| e.applied)
    }

    fn settle_key(&mut self, key: Key, b: &mut Batch) {
        match key {
            Key::Mark(_) => {}
            Key::Room(name) => {
                let shared = self.client_applied(&name) || self.covered(&name);
                let Some(e) = self.rooms.get_mut(&name) else {
                    return;
                };
                e.queued = false;
                let id_like = client_named(&name).is_some();
                if e.shards > 0 {
                    if !e.applied {
                        e.applied = true;
                        if !shared {
                            b.push(true, format!("ws:room:{name}"), id_like);
                            self.channels += 1;
                        }
                    }
                } else {
                    if e.applied && !shared {
                        b.push(false, format!("ws:room:{name}"), id_like);
                        self.channels -= 1;
                    }
                    self.rooms.remove(&name);
                }
            }
            Key::User(name) => {
                let Some(k) = self.users.get(&name) else {
                    return;
                };
                let mut e = Entry::unpack(k.aux());
                e.queued = false;
                if e.shards > 0 {
                    if !e.applied {
                        e.applied = true;
                        b.subscribe.push(format!("ws:user:{name}"));
                        self.channels += 1;
                    }
                    k.set_aux(e.pack());
                } else {
                    if e.applied {
                        b.unsubscribe.push(format!("ws:user:{name}"));
                        self.channels -= 1;
                    }
                    self.users.remove(&name);
                }
            }
            Key::Client(id) => {
                let name = id.to_string();
                let shared = self.room_applied(&name);
                let Some(e) = self.clients.get_mut(&id) else {
                    return;
                };
                e.queued = false;
                let mut out = |subscribe: bool| {
                    b.push(subscribe, format!("ws:client:{name}"), false);
                    if !shared {
                        b.push(subscribe, format!("ws:room:{name}"), true);
                    }
                };
                if e.shards > 0 {
                    if !e.applied {
                        e.applied = true;
                        out(true);
                        self.channels += if shared { 1 } else { 2 };
                    }
                } else {
                    if e.applied {
                        out(false);
                        self.channels -= if shared { 1 } else { 2 };
                    }
                    self.clients.remove(&id);
                }
            }
        }
    }

    /// Whether the connection has (or is being sent) exactly the wanted
    /// channels.
    pub fn is_synced(&self) -> bool {
        self.queue.is_empty()
    }

    /// Entries waiting for a command.
    pub fn backlog(&self) -> usize {
        self.queue.len() - self.marks
    }

    /// Channels subscribed on the connection by this set (not counting
    /// the fixed ones such as `ws:broadcast`).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Whether `channel` is wanted now.
    pub fn wants(&self, channel: &str) -> bool {
        let client = |id: &str| {
            client_named(id)
                .and_then(|c| self.clients.get(&c))
                .is_some_and(|e| e.shards > 0)
        };
        if let Some(r) = channel.strip_prefix("ws:room:") {
            self.rooms.get(r).is_some_and(|e| e.shards > 0) || client(r)
        } else if let Some(u) = channel.strip_prefix("ws:user:") {
            self.users.entry(u).is_some_and(|e| e.shards > 0)
        } else if let Some(c) = channel.strip_prefix("ws:client:") {
            client(c)
        } else {
            false
        }
    }

    /// Every channel wanted now, for tests and checks.
    pub fn wanted(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        out.extend(
            self.rooms
                .iter()
                .filter(|(_, e)| e.shards > 0)
                .map(|(r, _)| format!("ws:room:{r}")),
        );
        out.extend(
            self.users
                .iter()
                .filter(|(_, e)| e.shards > 0)
                .map(|(u, _)| format!("ws:user:{u}")),
        );
        for (c, e) in &self.clients {
            if e.shards > 0 {
                out.push(format!("ws:client:{c}"));
                out.push(format!("ws:room:{c}"));
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn room(r: &str, on: bool) -> Interest {
        Interest {
            topic: Topic::Room(r.into()),
            on,
        }
    }
    fn user(u: &str, on: bool) -> Interest {
        Interest {
            topic: Topic::User(crate::user_id::UserId::new(u).unwrap()),
            on,
        }
    }
    fn client(c: ClientId, on: bool) -> Interest {
        Interest {
            topic: Topic::Client(c),
            on,
        }
    }

    /// A Redis connection's subscriptions, driven by the batches.
    #[derive(Default)]
    struct Conn(BTreeSet<String>);
    impl Conn {
        fn run(&mut self, s: &mut Subscriptions, max: usize) -> usize {
            let mut n = 0;
            while let Some(b) = s.next_batch(max) {
                assert!(b.len() <= max + 1, "{b:?}");
                for c in b.subscribe {
                    assert!(self.0.insert(c.clone()), "subscribed twice: {c}");
                }
                for c in b.unsubscribe {
                    assert!(self.0.remove(&c), "unsubscribed but not subscribed: {c}");
                }
                n += 1;
            }
            assert!(s.is_synced());
            n
        }
        fn list(&self) -> Vec<String> {
            self.0.iter().cloned().collect()
        }
    }

    #[test]
    fn first_and_last_across_shards() {
        let mut s = Subscriptions::default();
        let mut c = Conn::default();
        s.apply(vec![room("a", true), user("u", true)]); // shard 0
        s.apply(vec![room("a", true)]); // shard 1
        c.run(&mut s, BATCH);
        assert_eq!(c.list(), ["ws:room:a", "ws:user:u"]);
        assert_eq!(s.channels(), 2);
        s.apply(vec![room("a", false)]); // shard 0 leaves; shard 1 still in
        assert!(s.next_batch(BATCH).is_none(), "still wanted: no command");
        s.apply(vec![room("a", false), user("u", false)]);
        c.run(&mut s, BATCH);
        assert!(c.list().is_empty());
        assert_eq!(s.channels(), 0);
        assert!(s.rooms.is_empty() && s.users.is_empty());
    }

    #[test]
    fn a_storm_of_users_leaves_no_queue_capacity_once_applied() {
        let mut s = Subscriptions::default();
        let mut c = Conn::default();
        s.apply((0..5000).map(|i| user(&format!("u{i}"), true)).collect());
        c.run(&mut s, BATCH);
        assert_eq!(s.channels(), 5000);
        assert!(s.queue.capacity() >= 5000);
        s.shrink();
        assert!(s.queue.capacity() <= 64, "{} kept", s.queue.capacity());
        // Still in sync and working.
        s.apply(vec![user("u1", false)]);
        c.run(&mut s, BATCH);
        assert_eq!(s.channels(), 4999);
    }

    #[test]
    fn join_leave_join_between_batches_ends_subscribed() {
        let mut s = Subscriptions::default();
        let mut c = Conn::default();
        s.apply(vec![room("a", true), room("a", false), room("a", true)]);
        c.run(&mut s, BATCH);
        assert_eq!(c.list(), ["ws:room:a"]);
        // Leave-join while subscribed: no command at all.
        s.apply(vec![room("a", false), room("a", true)]);
        assert_eq!(s.next_batch(BATCH), None);
        // Leave-join-leave: one UNSUBSCRIBE.
        s.apply(vec![room("a", false), room("a", true), room("a", false)]);
        let b = s.next_batch(BATCH).unwrap();
        assert_eq!(b.unsubscribe, ["ws:room:a"]);
        assert!(b.subscribe.is_empty());
    }

    #[test]
    fn a_client_has_two_channels() {
        let mut s = Subscriptions::default();
        let mut c = Conn::default();
        let id = ClientId::new(0);
        s.apply(vec![client(id, true)]);
        c.run(&mut s, BATCH);
        assert_eq!(
            c.list(),
            [format!("ws:client:{id}"), format!("ws:room:{id}")]
        );
        assert_eq!(s.wanted(), c.list());
        s.apply(vec![client(id, false)]);
        c.run(&mut s, BATCH);
        assert!(c.list().is_empty());
        assert!(s.clients.is_empty());
    }

    /// A room named by a client's id shares `ws:room:{id}` with the client:
    /// subscribed once, kept until neither needs it, whichever goes first.
    #[test]
    fn a_room_named_by_a_client_id_shares_its_channel() {
        for room_first in [true, false] {
            for room_leaves_first in [true, false] {
                let mut s = Subscriptions::default();
                let mut c = Conn::default();
                let id = ClientId::new(1);
                let name = id.to_string();
                let (a, b) = (room(&name, true), client(id, true));
                s.apply(if room_first {
                    vec![a.clone()]
                } else {
                    vec![b.clone()]
                });
                c.run(&mut s, BATCH);
                s.apply(if room_first { vec![b] } else { vec![a] });
                c.run(&mut s, BATCH);
                assert_eq!(c.list(), s.wanted());
                assert_eq!(s.channels(), 2);
                let (a, b) = (room(&name, false), client(id, false));
                s.apply(if room_leaves_first {
                    vec![a.clone()]
                } else {
                    vec![b.clone()]
                });
                c.run(&mut s, BATCH);
                assert_eq!(c.list(), s.wanted(), "{room_first} {room_leaves_first}");
                s.apply(if room_leaves_first { vec![b] } else { vec![a] });
                c.run(&mut s, BATCH);
                assert!(c.list().is_empty());
                assert_eq!(s.channels(), 0);
            }
        }
        // Another spelling of the id is another channel.
        let mut s = Subscriptions::default();
        let mut c = Conn::default();
        let id = ClientId::new(0);
        s.apply(vec![
            client(id, true),
            room(&id.to_string().to_uppercase(), true),
        ]);
        c.run(&mut s, BATCH);
        assert_eq!(c.list().len(), 3);
    }

    /// The room named by an id empties and the client arrives before the
    /// next batch: UNSUBSCRIBE and SUBSCRIBE of `ws:room:{id}` cancel out
    /// (sent in one batch they would end unsubscribed).
    #[test]
    fn a_shared_channel_handed_over_within_one_batch() {
        let mut s = Subscriptions::default();
        let mut c = Conn::default();
        let id = ClientId::new(0);
        let name = id.to_string();
        s.apply(vec![room(&name, true)]);
        c.run(&mut s, BATCH);
        s.apply(vec![room(&name, false), client(id, true)]);
        let b = s.next_batch(BATCH).unwrap();
        assert_eq!(b.subscribe, [format!("ws:client:{id}")]);
        assert!(b.unsubscribe.is_empty(), "{b:?}");
        // And back: the client leaves, a room of its name is joined.
        s.apply(vec![client(id, false), room(&name, true)]);
        let b = s.next_batch(BATCH).unwrap();
        assert_eq!(b.unsubscribe, [format!("ws:client:{id}")]);
        assert!(b.subscribe.is_empty(), "{b:?}");
        assert_eq!(s.channels(), 1);
    }

    #[test]
    fn batches_are_bounded_and_reset_resubscribes_everything() {
        let mut s = Subscriptions::default();
        let mut c = Conn::default();
        s.apply((0..2000).map(|i| room(&format!("r{i}"), true)).collect());
        s.apply((0..300).map(|_| client(ClientId::new(0), true)).collect());
        assert_eq!(c.run(&mut s, BATCH), 2600_usize.div_ceil(BATCH));
        assert_eq!(c.0.len(), 2600);
        assert_eq!(s.channels(), 2600);
        // A new connection: everything again, in batches.
        let mut fresh = Conn::default();
        s.reset();
        assert_eq!(s.channels(), 0);
        fresh.run(&mut s, BATCH);
        assert_eq!(fresh.list(), c.list());
        assert_eq!(s.channels(), 2600);
    }

    /// A reset in the middle of churn: the new connection ends with
    /// exactly what is wanted, never with a stale channel.
    #[test]
    fn reset_during_churn() {
        let mut s = Subscriptions::default();
        let mut c = Conn::default();
        s.apply(vec![room("a", true), room("b", true)]);
        c.run(&mut s, BATCH);
        s.apply(vec![room("a", false), room("c", true)]);
        // Lost connection before the batch went out.
        s.reset();
        let mut fresh = Conn::default();
        fresh.run(&mut s, BATCH);
        assert_eq!(fresh.list(), ["ws:room:b", "ws:room:c"]);
        assert_eq!(s.channels(), 2);
    }

    /// A settle mark comes out with the batch that holds everything
    /// queued before it; after a reset, only once the whole set is sent
    /// again.
    #[test]
    fn marks_follow_what_was_queued_before_them() {
        let mut s = Subscriptions::default();
        s.apply(vec![room("a", true)]);
        s.mark(1);
        s.apply(vec![room("b", true)]);
        let b = s.next_batch(1).unwrap();
        assert_eq!(
            (b.subscribe.as_slice(), b.marks.as_slice()),
            (&["ws:room:a".to_string()][..], &[][..])
        );
        let b = s.next_batch(1).unwrap();
        assert_eq!(b.marks, [1], "{b:?}");
        // Nothing to send: a batch of marks alone.
        let _ = s.next_batch(BATCH);
        s.mark(2);
        assert_eq!(s.backlog(), 0);
        let b = s.next_batch(BATCH).unwrap();
        assert!(b.subscribe.is_empty() && b.unsubscribe.is_empty() && b.marks == [2]);
        // A reset puts marks behind the whole set.
        s.mark(3);
        s.reset();
        let b = s.next_batch(1).unwrap();
        assert!(b.marks.is_empty() && b.len() == 1);
        let b = s.next_batch(BATCH).unwrap();
        assert_eq!((b.len(), b.marks.as_slice()), (1, &[3][..]));
    }

    /// Rooms that the client-id pattern `ws:room:{tag}-*` hears are not
    /// subscribed too (their messages would arrive twice).
    #[test]
    fn rooms_under_the_tag_pattern_are_not_subscribed() {
        let mut s = Subscriptions::new(Some(0xdead_beef));
        let mut c = Conn::default();
        s.apply(vec![room("deadbeef-x", true), room("lobby", true)]);
        c.run(&mut s, BATCH);
        assert_eq!(c.list(), ["ws:room:lobby"]);
        assert!(s.wants("ws:room:deadbeef-x"));
        s.apply(vec![room("deadbeef-x", false)]);
        c.run(&mut s, BATCH);
        assert_eq!(c.list(), ["ws:room:lobby"]);
        assert_eq!(s.channels(), 1);
    }

    #[test]
    fn an_end_without_a_start_is_ignored() {
        let mut s = Subscriptions::default();
        s.apply(vec![room("a", false), user("u", false)]);
        s.apply(vec![client(ClientId::new(0), false)]);
        assert!(s.next_batch(BATCH).is_none());
        assert!(s.rooms.is_empty() && s.users.is_empty() && s.clients.is_empty());
    }

    /// A random storm over 4 shards against a model of each shard's
    /// members; batches applied at random moments, with resets.
    #[test]
    fn storm_matches_the_model() {
        let mut s = Subscriptions::default();
        let mut c = Conn::default();
        let ids: Vec<ClientId> = (0..8).map(|i| ClientId::new(i % 4)).collect();
        // model[shard][topic] = members on that shard
        let mut model: Vec<HashMap<String, u32>> = vec![HashMap::new(); 4];
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for step in 0..20_000 {
            let shard = rnd(4) as usize;
            let which = rnd(3);
            let (topic, key) = match which {
                0 => {
                    let r = format!("r{}", rnd(5));
                    (Topic::Room(r.clone().into()), format!("ws:room:{r}"))
                }
                1 => {
                    let u = format!("u{}", rnd(5));
                    (
                        Topic::User(crate::user_id::UserId::new(&u).unwrap()),
                        format!("ws:user:{u}"),
                    )
                }
                _ => {
                    // Rooms named by ids too.
                    let id = ids[rnd(8) as usize];
                    if rnd(2) == 0 {
                        (Topic::Room(id.to_string().into()), format!("room-id:{id}"))
                    } else {
                        (Topic::Client(id), format!("client:{id}"))
                    }
                }
            };
            let n = model[shard].entry(key).or_insert(0);
            let join = rnd(2) == 0;
            // Shards report only their own 0↔1 transitions.
            if join {
                *n += 1;
                if *n == 1 {
                    s.apply(vec![Interest { topic, on: true }]);
                }
            } else if *n > 0 {
                *n -= 1;
                if *n == 0 {
                    s.apply(vec![Interest { topic, on: false }]);
                }
            }
            match rnd(10) {
                0 => {
                    c.run(&mut s, 3);
                }
                1 if step % 7 == 0 => {
                    s.reset();
                    c = Conn::default();
                }
                _ => {}
            }
        }
        c.run(&mut s, BATCH);
        let mut want = BTreeSet::new();
        for m in &model {
            for (k, n) in m {
                if *n == 0 {
                    continue;
                }
                if let Some(id) = k.strip_prefix("room-id:") {
                    want.insert(format!("ws:room:{id}"));
                } else if let Some(id) = k.strip_prefix("client:") {
                    want.insert(format!("ws:room:{id}"));
                    want.insert(format!("ws:client:{id}"));
                } else {
                    want.insert(k.clone());
                }
            }
        }
        assert_eq!(c.0, want);
        assert_eq!(s.wanted(), c.list());
        for ch in &want {
            assert!(s.wants(ch), "{ch}");
        }
        assert!(!s.wants("ws:room:nobody") && !s.wants("ws:broadcast"));
        assert_eq!(s.channels(), want.len());
    }
}
