//! # ignis-ws
//!
//! A thread-per-core WebSocket fan-out server that speaks the wire protocol of
//! the WebSocket component of the TypeScript framework Ignis
//! (`WebSocketServerHelper` / `WebSocketEmitter`), so Ignis clients, Ignis
//! servers on Bun and Ignis emitters work with it unchanged.
//!
//! ## The architecture in one screen
//!
//! Data flows one way: bytes from a socket → frames → client messages →
//! shard actions → encoded frames → sockets.
//!
//! ```text
//!            ┌──────────── control thread (tokio) ─────────────┐
//!            │ authenticators/validators/hooks that await,      │
//!            │ the Redis bridge (one per process)               │
//!            └──────▲──────────────────────────────┬───────────┘
//!                   │ boxed futures                │ ShardCommand (flume)
//!   shard 0 ────────┴───┐   shard 1 ...            ▼
//!   compio runtime (io_uring or epoll), pinned to core 0,
//!   own SO_REUSEPORT listener, own clients / users / rooms.
//!   Handle::to_room(..) encodes the frame ONCE into a `Bytes` and sends
//!   the same buffer to every shard; each shard pushes a refcount of it
//!   onto each recipient's queue and writes every queue with one writev.
//! ```
//!
//! * [`proto`] — sans-io: the RFC 6455 codec, the HTTP upgrade, the Ignis
//!   message envelope and the per-client state machine. No sockets, no clock.
//! * [`shard`] — one core's world: sessions, the room and user indexes,
//!   fan-out. Still no syscalls of its own.
//! * [`io`] — the socket side of a shard, on compio.
//! * [`delivery`] — what travels to the shards: [`ClientId`], the target,
//!   the shared frame, [`delivery::SendError`]; below the shard, the bridge
//!   and the handle.
//! * [`handle`] — the delivery API ([`Handle`]), cheap to clone, usable from
//!   any thread.
//! * [`runtime`] — start-up: shards, pinning, channels, the control thread.
//! * [`bridge`] — the Redis bridge (subscriber, outbox publisher), the
//!   envelope codec and the [`bridge::emitter::Emitter`].
//! * [`auth`] — [`auth::Authenticator`] and [`auth::RoomValidator`] traits;
//!   JWT, webhook and insecure authenticators; glob room validator.
//! * [`config`] — every setting, its default and where the default comes from.
//! * [`http`] — `/health` and `/metrics`.
//! * [`secrets`] — redacting URLs with credentials for logs and errors.
//!
//! Layers, each importing only those below it (no import circle between
//! top-level modules; `../shared/tools/modcycles.py src` checks):
//! `proto`, `secrets` → `auth` → `control` → `metrics`, `config`, `error`,
//! `delivery` → `bridge` (Redis; reaches the shards through the
//! [`bridge::LocalDelivery`] trait) → `hooks` → `shard` → `handle` → `http`
//! → `io` → `runtime`; `bench` and `fuzzing` on top.
//! * `bench` — the load generator (feature `bench`, on by default; with
//!   `default-features = false` none of it, nor its dependencies, is built).

pub mod auth;
#[cfg(feature = "bench")]
pub mod bench;
pub mod bridge;
pub mod config;
pub mod control;
pub mod delivery;
pub mod error;
pub mod handle;
pub mod hooks;
pub mod http;
pub mod io;
pub mod metrics;
pub mod proto;
pub mod runtime;
pub mod secrets;
pub mod shard;

pub use config::Config;
pub use error::Error;
pub use handle::{ClientId, Handle};
pub use hooks::Hooks;
pub use runtime::{Server, ServerBuilder};

/// The fuzz targets' checks, reachable by `fuzz/` and `tests/` (feature
/// `fuzzing`). Not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

/// The README, whose Rust examples (the library and the emitter) compile as
/// doctests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
