//! The socket side of a shard, on compio.
//!
//! ## The contract
//! * Each shard thread runs one single-threaded compio runtime (io_uring or
//!   epoll, see [`driver`]). Its tasks: the accept loop, one task per
//!   connection while it upgrades, the poller and the reaper, the flusher,
//!   the ticker, the command loop (and the encryptor with encryption on).
//!   They share the shard through an `Rc<RefCell<Shard>>`; a borrow is
//!   never held across an `.await`.
//! * After the upgrade a connection is *parked*: its socket is registered
//!   in a shard-owned epoll instance and its task ends. The poller waits
//!   for that epoll fd through compio, then `recv`s every ready connection
//!   into one shard-wide scratch buffer. An idle connection holds no task,
//!   no future, no pending operation and no read buffer; only the bytes of
//!   an incomplete frame are kept per connection. (With `--io-uring-recv
//!   multishot` each connection keeps its task and a multishot receive
//!   into the provided-buffer ring instead.)
//! * Writes: the shard queues shared frames (`Bytes`) per connection and
//!   lists the connection as dirty; the flusher runs after the other ready
//!   tasks of the loop turn and writes each dirty connection's whole queue
//!   with one `sendmsg` (one syscall per client per turn, however many
//!   messages queued). A socket that does not take everything is marked
//!   write-blocked: a parked connection adds write interest to its epoll
//!   entry, a connection with a task waits for writability in it.
//! * Ownership: the shard's `Conn` holds the connection's `SharedFd`. A
//!   dead parked connection is queued for the reaper, which deregisters it
//!   from the epoll and removes it (closing the fd); a connection with a
//!   task is removed when its task ends.

pub mod conn;
pub mod driver;
pub mod mem;

pub use driver::Backend;
