//! Client authentication and room authorization: the `Authenticator` and
//! `RoomValidator` contracts the shards call, helpers to build them from
//! closures, and the built-in implementations (JWT with static keys or a
//! JWKS, webhook, insecure, glob room allow-lists).
//!
//! Wire mapping (Ignis protocol): `Ok(Some(identity))` authenticates the client,
//! `Ok(None)` is sent as `Authentication failed` and `Err(_)` as
//! `Authentication error`; both of the latter close the socket with 4003.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

pub mod insecure;
pub mod jwks;
pub mod jwt;
pub mod rooms;
pub mod webhook;

pub use insecure::InsecureAuthenticator;
pub use jwks::JwksConfig;
pub use jwt::{JwtAuthenticator, JwtConfig, JwtConfigError, JwtKey};
pub use rooms::{GlobRoomValidator, RoomPattern, parse_patterns};
pub use webhook::{WebhookAuthenticator, WebhookConfigError};

/// The future type every auth hook returns. Boxed and `Send + 'static` because a
/// future that does not finish on its first poll is moved from the shard that
/// started it to the control thread.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Who a client is once authenticated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// Sent back in the `connected` payload; absent means an anonymous client
    /// (the payload then has no `userId` key).
    pub user_id: Option<String>,
    /// Opaque application data attached to the client.
    pub metadata: Option<serde_json::Value>,
    /// Room patterns this identity may join in addition to the server-wide ones
    /// (the JWT `rooms` claim, or the webhook's `rooms` field).
    pub room_patterns: Option<Vec<String>>,
}

/// An authenticator that could not reach a verdict. On the wire every variant is
/// `Authentication error`; the variants exist for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The auth webhook answered something other than accept/refuse, or could
    /// not be reached.
    #[error("auth webhook failed: {0}")]
    Webhook(String),
    /// The authenticator did not answer in time.
    #[error("authentication timed out")]
    Timeout,
    /// Anything else (misuse, a dropped task, a user hook's own failure).
    #[error("internal authentication error: {0}")]
    Internal(String),
    /// The authenticator had to wait, but the control thread was already
    /// running `--control-max-tasks` tasks (or the webhook's concurrency
    /// was exhausted for the whole timeout): the client may retry.
    #[error("server busy: authentication not attempted")]
    Overloaded,
}

/// `Ok(Some)` accepted, `Ok(None)` refused ("Authentication failed"),
/// `Err` = authenticator error ("Authentication error").
pub type AuthResult = Result<Option<Identity>, AuthError>;

/// One `authenticate` event.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    /// Server-assigned id of the connection.
    pub client_id: String,
    /// The `data` member of the `authenticate` event, untouched (usually
    /// `{type?, token, publicKey?}`).
    pub data: serde_json::Value,
}

/// Decides whether a client may connect.
pub trait Authenticator: Send + Sync + 'static {
    /// Called on a shard thread. A future that completes without awaiting (JWT,
    /// insecure) is polled to completion inline on the shard; one that returns
    /// `Pending` is moved to the control thread (a tokio current-thread runtime)
    /// and finished there, so it may use tokio I/O (reqwest). Hence
    /// `Send + 'static`.
    fn authenticate(&self, req: AuthRequest) -> BoxFuture<AuthResult>;
}

/// One join request, after authentication.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Server-assigned id of the connection.
    pub client_id: String,
    /// The authenticated user, if any.
    pub user_id: Option<String>,
    /// Rooms asked for, in request order.
    pub rooms: Vec<String>,
    /// Extra patterns from the client's [`Identity::room_patterns`].
    pub room_patterns: Option<Vec<String>>,
}

/// Decides which of the requested rooms a client may join. With no validator
/// configured the server refuses every join.
pub trait RoomValidator: Send + Sync + 'static {
    /// Returns the allowed subset of `req.rooms`. Same threading rules as
    /// [`Authenticator::authenticate`].
    fn allowed_rooms(&self, req: JoinRequest) -> BoxFuture<Vec<String>>;
}

/// For one hook trait (`$trait::$method`, taking `$req`, answering
/// `$out`): the impls for `Arc` and `Box` of it, and the closure adapter
/// `$adapter` with its constructor `$ctor` (documented by the given docs).
macro_rules! hook_impls {
    (
        $trait:ident :: $method:ident($req:ty) -> $out:ty;
        $(#[$adapter_doc:meta])* $adapter:ident;
        $(#[$ctor_doc:meta])* $ctor:ident;
    ) => {
        impl<T: $trait + ?Sized> $trait for Arc<T> {
            fn $method(&self, req: $req) -> BoxFuture<$out> {
                (**self).$method(req)
            }
        }

        impl<T: $trait + ?Sized> $trait for Box<T> {
            fn $method(&self, req: $req) -> BoxFuture<$out> {
                (**self).$method(req)
            }
        }

        $(#[$adapter_doc])*
        pub struct $adapter<F> {
            f: F,
        }

        impl<F> fmt::Debug for $adapter<F> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($adapter)).finish_non_exhaustive()
            }
        }

        impl<F, Fut> $trait for $adapter<F>
        where
            F: Fn($req) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = $out> + Send + 'static,
        {
            fn $method(&self, req: $req) -> BoxFuture<$out> {
                Box::pin((self.f)(req))
            }
        }

        $(#[$ctor_doc])*
        pub fn $ctor<F, Fut>(f: F) -> $adapter<F>
        where
            F: Fn($req) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = $out> + Send + 'static,
        {
            $adapter { f }
        }
    };
}

// Shared ownership is the common way to hand one authenticator to every shard,
// so smart pointers to an authenticator are authenticators themselves.
hook_impls! {
    Authenticator::authenticate(AuthRequest) -> AuthResult;
    /// An [`Authenticator`] made from a closure; see [`authenticator_fn`].
    FnAuthenticator;
    /// Wraps a closure returning a future as an [`Authenticator`]. Use
    /// `async move { ... }` (or `std::future::ready`) for the body; a body that never
    /// awaits runs inline on the shard.
    authenticator_fn;
}

hook_impls! {
    RoomValidator::allowed_rooms(JoinRequest) -> Vec<String>;
    /// A [`RoomValidator`] made from a closure; see [`room_validator_fn`].
    FnRoomValidator;
    /// Wraps a closure returning a future as a [`RoomValidator`].
    room_validator_fn;
}

/// A [`BoxFuture`] that is already complete; what synchronous hooks return so
/// the shard finishes them inline.
pub fn ready<T: Send + 'static>(value: T) -> BoxFuture<T> {
    Box::pin(std::future::ready(value))
}

/// Polls `fut` once with a no-op waker. The shard uses this for the inline fast
/// path: `Ready` means done without leaving the shard, `Pending` means hand the
/// future to the control thread (whose executor polls it again, so nothing is
/// lost by the no-op waker dropping this wake-up).
pub fn poll_now<T>(fut: &mut BoxFuture<T>) -> Poll<T> {
    let mut cx = Context::from_waker(Waker::noop());
    fut.as_mut().poll(&mut cx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(data: serde_json::Value) -> AuthRequest {
        AuthRequest {
            client_id: "c1".to_owned(),
            data,
        }
    }

    #[test]
    fn closure_authenticator_that_never_awaits_is_ready_on_first_poll() {
        let auth = authenticator_fn(|r: AuthRequest| {
            std::future::ready(Ok(Some(Identity {
                user_id: r.data["token"].as_str().map(str::to_owned),
                ..Identity::default()
            })))
        });
        let mut fut = auth.authenticate(req(json!({"token": "alice"})));
        match poll_now(&mut fut) {
            Poll::Ready(Ok(Some(id))) => assert_eq!(id.user_id.as_deref(), Some("alice")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn async_block_without_await_is_ready_on_first_poll() {
        let auth = authenticator_fn(|_r| async { Ok(None) });
        let mut fut = auth.authenticate(req(json!({})));
        assert!(matches!(poll_now(&mut fut), Poll::Ready(Ok(None))));
    }

    #[tokio::test]
    async fn awaiting_authenticator_is_pending_then_finishes_on_tokio() {
        let auth: Arc<dyn Authenticator> = Arc::new(authenticator_fn(|_r| async {
            tokio::task::yield_now().await;
            Err(AuthError::Internal("boom".to_owned()))
        }));
        let mut fut = auth.authenticate(req(json!({})));
        assert!(poll_now(&mut fut).is_pending());
        // What the control thread does with a pending future.
        let res = tokio::spawn(fut).await.unwrap();
        assert_eq!(res, Err(AuthError::Internal("boom".to_owned())));
    }

    #[tokio::test]
    async fn closure_room_validator_through_box() {
        let v: Box<dyn RoomValidator> = Box::new(room_validator_fn(|r: JoinRequest| async move {
            r.rooms
                .into_iter()
                .filter(|room| room.starts_with("ok"))
                .collect::<Vec<_>>()
        }));
        let rooms = v
            .allowed_rooms(JoinRequest {
                client_id: "c1".to_owned(),
                user_id: None,
                rooms: vec!["ok1".to_owned(), "no".to_owned(), "ok2".to_owned()],
                room_patterns: None,
            })
            .await;
        assert_eq!(rooms, vec!["ok1", "ok2"]);
    }

    #[test]
    fn ready_helper_and_error_display() {
        let mut fut = ready(7u8);
        assert_eq!(poll_now(&mut fut), Poll::Ready(7));
        assert_eq!(AuthError::Timeout.to_string(), "authentication timed out");
    }
}
