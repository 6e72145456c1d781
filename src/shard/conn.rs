//! One connection's record in its shard: protocol session, rooms, the
//! outbound queue and the close progress. Its fields are the shard's alone
//! (`pub(super)`); drivers read what they need through the getters and
//! keep their own per-connection state in `S`.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::RoomId;
use super::index::Membership;
use crate::delivery::ClientId;
use crate::proto::encryption::Cipher;
use crate::proto::frame::{MessageDecoder, Role};
use crate::proto::session::Session;
use crate::proto::stamp::Stamp;

/// What authentication left behind that is rarely needed: kept out of line
/// so an idle connection stays small.
#[derive(Debug, Default)]
pub struct ConnExtra {
    pub(super) metadata: Option<serde_json::Value>,
    pub(super) room_patterns: Option<Vec<String>>,
    /// `authenticate.data.publicKey`, kept until the authenticator answers.
    pub(super) public_key: PublicKey,
    /// The client's AES-256-GCM key once the encryption handshake
    /// succeeded (erased when the connection is dropped).
    pub(super) cipher: Option<Cipher>,
    /// Bytes of frames waiting in the shard's encryption queue for this
    /// client (they count against its outbound budget).
    pub(super) encrypt_pending: usize,
    /// Close progress, from the moment the close starts ([`Conn::closing`]):
    /// a connection closes once, so its record does not carry the 8 bytes.
    pub(super) closing: Option<Closing>,
}

/// What `authenticate` said about encryption (its `publicKey`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// No `publicKey` (or `null`).
    #[default]
    Absent,
    /// A `publicKey` string, not yet checked.
    Given(Box<str>),
    /// A `publicKey` that is not a string.
    Invalid,
}

/// Close progress of a connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Closing {
    /// After this the connection is dropped regardless.
    pub(super) deadline: Stamp,
    /// The client's close frame arrived.
    pub(super) received: bool,
    /// Input after a protocol error is no longer parsed.
    pub(super) discard_input: bool,
}

/// A connection's partial input (see [`Conn::read`]).
#[derive(Debug)]
pub(super) struct ReadState {
    pub(super) decoder: MessageDecoder,
    pub(super) rbuf: BytesMut,
}

impl ReadState {
    pub(super) fn new(max_message: usize) -> Self {
        ReadState {
            decoder: MessageDecoder::new(Role::Server, max_message),
            rbuf: BytesMut::new(),
        }
    }
}

/// One upgraded connection. `S` is the driver's per-connection state
/// (its socket); the shard only stores it.
#[derive(Debug)]
pub struct Conn<S> {
    pub(super) id: ClientId,
    pub(super) generation: u32,
    pub(super) session: Session,
    /// Shared with the user index.
    pub(super) user: Option<crate::user_id::UserId>,
    /// The user's next session on this shard ([`super::keyed::Users`]).
    pub(super) next_of_user: super::ConnKey,
    /// Its previous session; the first session's is the last one.
    pub(super) prev_of_user: super::ConnKey,
    pub(super) extra: Option<Box<ConnExtra>>,
    /// Rooms joined, with its place in each (the own-id room is the flag
    /// below).
    pub(super) rooms: SmallVec<[Membership; 3]>,
    /// In the room named by its own id (from the upgrade until it leaves
    /// it).
    pub(super) in_own_room: bool,
    /// Completed the encryption handshake: every message to it is
    /// encrypted for it alone (its cipher is in `extra`).
    pub(super) encrypted: bool,
    /// An authenticator or room validator call was handed to the driver
    /// and not answered yet: input stays undecoded until it is, so the
    /// messages after `authenticate` or `join` see its outcome when the
    /// answer is immediate.
    pub(super) awaiting: bool,
    /// Frames waiting to be written.
    pub(super) out: OutQueue,
    /// In the shard's dirty list.
    pub(super) dirty: bool,
    /// Our close frame has been fully written and the write side shut.
    pub(super) write_shut: bool,
    /// Finished: an [`super::Event::Closed`] was emitted; the driver drops
    /// the socket and calls [`super::Shard::remove`].
    pub(super) dead: bool,
    /// The client shut its sending side (FIN): no more reads; the queue is
    /// written out, then the connection is dropped.
    pub(super) peer_eof: bool,
    /// Last frame of any kind (for the idle ping/close).
    pub(super) last_rx: Stamp,
    /// `--client-max-msgs-per-sec`: the clock second being counted and the
    /// messages seen in it.
    pub(super) rate_window: u32,
    pub(super) rate_count: u32,
    pub(super) ping_sent: bool,
    /// Bytes of an incomplete frame or message, and the decoder's state;
    /// `None` (no allocation) whenever the connection is between messages.
    pub(super) read: Option<Box<ReadState>>,
    pub(super) sock: S,
}

impl<S> Conn<S> {
    /// Close progress once the close started (our close frame queued, or
    /// the client's received).
    #[inline]
    pub(super) fn closing(&self) -> Option<&Closing> {
        self.extra.as_deref().and_then(|e| e.closing.as_ref())
    }

    /// The close started.
    #[inline]
    pub(super) fn is_closing(&self) -> bool {
        self.closing().is_some()
    }

    /// Input after a protocol error or the client's close is no longer
    /// parsed.
    #[inline]
    pub(super) fn discards_input(&self) -> bool {
        self.closing().is_some_and(|c| c.discard_input)
    }

    #[inline]
    pub(super) fn closing_mut(&mut self) -> Option<&mut Closing> {
        self.extra.as_deref_mut().and_then(|e| e.closing.as_mut())
    }

    /// Start the close.
    pub(super) fn set_closing(&mut self, closing: Closing) {
        self.extra.get_or_insert_with(Default::default).closing = Some(closing);
    }

    /// The client's id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Tells this connection from an earlier one in the same slot.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The driver's state of this connection.
    pub fn sock(&self) -> &S {
        &self.sock
    }

    /// The driver's state of this connection, to change.
    pub fn sock_mut(&mut self) -> &mut S {
        &mut self.sock
    }

    /// Finished (see [`super::Event::Closed`]).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// The client sent FIN: nothing more is read from it.
    pub fn peer_eof(&self) -> bool {
        self.peer_eof
    }

    /// It completed the encryption handshake.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// Bytes queued for it and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.out.bytes()
    }

    /// Rooms it is in (by index id; the own-id room is not listed).
    pub fn rooms(&self) -> impl Iterator<Item = RoomId> + '_ {
        self.rooms.iter().map(|m| m.room)
    }

    /// Its memberships: each room it is in, and its place there.
    pub fn memberships(&self) -> &[Membership] {
        &self.rooms
    }

    /// Where in [`Conn::memberships`] its membership of room `rid` is, if
    /// it is in that room.
    pub(super) fn membership(&self, rid: RoomId) -> Option<usize> {
        self.rooms.iter().position(|m| m.room == rid)
    }
}

/// The frames waiting to be written to one connection, out of line: an
/// idle connection's record holds an empty pointer (8 bytes, where the
/// queue and its two counters took 48), and the queue exists from the
/// first frame queued until it is written out and released. The front
/// frame has its own slot, so a client that gets one message at a time
/// costs one allocation per message, as the inline queue did.
#[derive(Debug, Default)]
pub struct OutQueue(Option<Box<Queued>>);

#[derive(Debug, Default)]
struct Queued {
    /// The front frame, which may be partly written (`None`: nothing is
    /// queued, and `rest` is empty).
    front: Option<Bytes>,
    /// The frames after it.
    rest: VecDeque<Bytes>,
    /// Bytes queued and not yet written.
    bytes: usize,
    /// Bytes of the front frame already written.
    front_written: usize,
}

impl OutQueue {
    /// Nothing waits.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|q| q.front.is_none())
    }

    /// Bytes waiting (of the front frame, only its unwritten part).
    #[inline]
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.bytes)
    }

    /// Queue a frame.
    #[inline]
    pub fn push(&mut self, f: Bytes) {
        let q = self.0.get_or_insert_with(Box::default);
        q.bytes += f.len();
        if q.front.is_none() {
            q.front = Some(f);
        } else {
            q.rest.push_back(f);
        }
    }

    /// Lend at most `max` frames to a vectored write (the front one from
    /// where the last write stopped) by appending them to `iov`; returns
    /// their total length.
    #[inline]
    pub fn lend<'a>(
        &'a self,
        iov: &mut smallvec::SmallVec<[std::io::IoSlice<'a>; 64]>,
        max: usize,
    ) -> usize {
        let Some(q) = self.0.as_deref() else {
            return 0;
        };
        let Some(front) = &q.front else {
            return 0;
        };
        let first = &front[q.front_written..];
        let mut want = first.len();
        iov.push(std::io::IoSlice::new(first));
        let (a, b) = q.rest.as_slices();
        for f in a.iter().chain(b).take(max.saturating_sub(1)) {
            want += f.len();
            iov.push(std::io::IoSlice::new(f));
        }
        want
    }

    /// The socket took `n` bytes from the front.
    pub fn written(&mut self, mut n: usize) {
        let Some(q) = self.0.as_deref_mut() else {
            return;
        };
        q.bytes -= n.min(q.bytes);
        while n > 0 {
            let Some(front) = &q.front else { break };
            let left = front.len() - q.front_written;
            if n >= left {
                n -= left;
                q.front = q.rest.pop_front();
                q.front_written = 0;
            } else {
                q.front_written += n;
                n = 0;
            }
        }
    }

    /// Drop every frame but a partly written front one (the stream must
    /// stay well-framed for what follows to be readable).
    pub fn keep_partial_front(&mut self) {
        if let Some(q) = self.0.as_deref_mut() {
            q.rest.clear();
            if q.front_written == 0 {
                q.front = None;
            }
            q.bytes = q.front.as_ref().map_or(0, |f| f.len() - q.front_written);
        }
    }

    /// Drop everything, queue included.
    pub fn clear(&mut self) {
        self.0 = None;
    }

    /// Release an empty queue whose allocation holds at most `slots`
    /// frames after the front one (`usize::MAX`: any).
    pub fn release_if_empty(&mut self, slots: usize) {
        if self
            .0
            .as_ref()
            .is_some_and(|q| q.front.is_none() && q.rest.capacity() <= slots)
        {
            self.0 = None;
        }
    }
}

#[cfg(test)]
mod out_queue_tests {
    use super::OutQueue;
    use bytes::Bytes;

    /// What a vectored write of everything would send.
    fn joined(q: &OutQueue) -> Vec<u8> {
        let mut iov = smallvec::SmallVec::new();
        let want = q.lend(&mut iov, usize::MAX);
        let bytes: Vec<u8> = iov.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(bytes.len(), want);
        bytes
    }

    /// Frames go out in order across partial writes; the byte count
    /// follows; a slow-client close keeps only a partly written front
    /// frame; an emptied one-frame queue is released, a grown one only
    /// when any size is allowed.
    #[test]
    fn frames_survive_partial_writes_and_closes_in_order() {
        let mut q = OutQueue::default();
        assert!(q.is_empty() && q.bytes() == 0 && joined(&q).is_empty());
        for f in ["abc", "de", "fgh"] {
            q.push(Bytes::from_static(f.as_bytes()));
        }
        assert_eq!(joined(&q), b"abcdefgh");
        assert_eq!(q.bytes(), 8);
        {
            let mut iov = smallvec::SmallVec::new();
            assert_eq!(q.lend(&mut iov, 2), 5, "at most two frames lent");
            assert_eq!(iov.len(), 2);
        }
        q.written(4); // "abc" and "d"
        assert_eq!(joined(&q), b"efgh");
        assert_eq!(q.bytes(), 4);
        q.keep_partial_front();
        assert_eq!(joined(&q), b"e", "the partly written front frame stays");
        assert_eq!(q.bytes(), 1);
        q.written(1);
        assert!(q.is_empty() && q.bytes() == 0);
        q.release_if_empty(0);
        assert!(
            q.0.is_some(),
            "a queue that held several frames waits for the sweep"
        );
        q.release_if_empty(usize::MAX);
        assert!(q.0.is_none());
        q.push(Bytes::from_static(b"x"));
        q.keep_partial_front();
        assert!(q.is_empty(), "an unstarted front frame goes too");
        q.push(Bytes::from_static(b"y"));
        q.written(1);
        q.release_if_empty(0);
        assert!(q.0.is_none(), "a one-frame queue is released once written");
        q.written(5);
        assert!(q.is_empty());
    }
}
