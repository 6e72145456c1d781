//! The socket side of a shard, on compio.
//!
//! ## The contract
//! * Each shard thread runs one single-threaded compio runtime (io_uring or
//!   epoll, see [`driver`]). Its tasks: the accept loop, one task per
//!   connection, the flusher, the ticker and the command loop. They share
//!   the shard through an `Rc<RefCell<Shard>>`; a borrow is never held
//!   across an `.await`.
//! * Reads wait for readiness and then `recv` into one shard-wide scratch
//!   buffer: an idle connection holds no read buffer at all. Only the bytes
//!   of an incomplete frame are kept per connection.
//! * Writes: the shard queues shared frames (`Bytes`) per connection and
//!   lists the connection as dirty; the flusher runs after the other ready
//!   tasks of the loop turn and writes each dirty connection's whole queue
//!   with one `sendmsg` (one syscall per client per turn, however many
//!   messages queued). A socket that does not take everything is marked
//!   write-blocked and its task waits for writability.
//! * Ownership: the connection task owns the `PollFd`; the shard's `Conn`
//!   holds a clone of its `SharedFd` for the writes. The fd closes when the
//!   task has ended and the shard removed the connection.

pub mod conn;
pub mod driver;

pub use driver::Backend;
