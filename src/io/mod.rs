//! The socket side of a shard, on compio: one thin driver per way of
//! serving connections, and what they share.
//!
//! ## The contract
//! * Each shard thread runs one single-threaded compio runtime (io_uring or
//!   epoll, see [`backend`]). The shard ([`crate::shard`]) is a sans-io
//!   state machine; [`shard_io::ShardIo`] holds it in a `RefCell` with the
//!   driver's per-connection state ([`shard_io::ConnSock`]), and carries
//!   out its outputs after every input ([`shard_io::ShardIo::with`]). A
//!   borrow is never held across an `.await`.
//! * Every connection starts in [`accept`] and [`upgrade`] (the HTTP
//!   request, plain HTTP answers, the WebSocket upgrade). Then [`parked`]
//!   serves it, on both back ends: the socket is registered in a
//!   shard-owned epoll instance and the connection has no task; the
//!   poller `recv`s every ready connection into one shard-wide scratch
//!   buffer. An idle connection is an epoll entry and a slab record. (A
//!   task per connection with an io_uring multishot receive was measured
//!   and removed: the same CPU for three times the memory per idle
//!   connection, PERFORMANCE.md.)
//! * Writes ([`tasks::flush_one`]): the shard queues shared frames (`Bytes`)
//!   per connection and lists the connection as dirty; the flusher runs
//!   after the other ready tasks of the loop turn and writes each dirty
//!   connection's whole queue with one `sendmsg` (one syscall per client
//!   per turn, however many messages queued).
//! * TLS (`--tls-cert`, [`tls`]): the handshake runs before the upgrade,
//!   which then reads and writes through the record layer; afterwards the
//!   record layer sits between the shard's queue and the socket: the
//!   shared frames are sealed at flush, many per record, and bytes read
//!   are opened before the shard sees them.
//! * Ownership: the shard's record holds the socket. A finished connection
//!   ([`crate::shard::Event::Closed`]) is removed from the shard at once:
//!   it leaves the epoll and its socket closes.

pub mod accept;
pub mod backend;
pub mod calls;
pub mod parked;
pub mod shard_io;
pub mod tasks;
pub mod tls;
pub mod upgrade;

pub use backend::Backend;
