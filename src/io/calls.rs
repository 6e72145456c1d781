//! Calls of user code the shard asks for (authenticator, room validator,
//! hooks): each is polled once inline on the shard, and finished on the
//! control thread if it has to wait, its result coming back on the
//! shard's channel. A panic in user code is logged and treated as a
//! failure; it never unwinds through the shard.

use std::sync::Arc;

use crate::auth::{AuthError, AuthRequest, AuthResult, Authenticator, JoinRequest, RoomValidator};
use crate::control::{ControlHandle, Inline};
use crate::hooks::Hooks;
use crate::shard::{Answer, ConnKey, HookCall, ShardCommand, UserCode};

/// The user code of one shard, and where waiting calls go.
pub struct Calls {
    pub authenticator: Arc<dyn Authenticator>,
    pub room_validator: Option<Arc<dyn RoomValidator>>,
    pub hooks: Arc<dyn Hooks>,
    pub control: ControlHandle,
    /// The shard's own channel, for results coming back from the control
    /// thread.
    pub self_tx: flume::Sender<ShardCommand>,
}

impl Calls {
    /// Poll `fut` once inline; if it has to wait, finish it on the control
    /// thread and send `command(result)` to the shard. A panic, or a
    /// control thread already at `--control-max-tasks`, is `failed`.
    fn run<T: Send + 'static>(
        &self,
        fut: Option<crate::auth::BoxFuture<T>>,
        failed: impl FnOnce(Inline<T>) -> T,
        command: impl FnOnce(T) -> ShardCommand + Send + 'static,
    ) -> Answer<T> {
        let Some(fut) = fut else {
            return Answer::Ready(failed(Inline::Panicked));
        };
        let tx = self.self_tx.clone();
        match self.control.run_or_offload(fut, move |v| {
            let _ = tx.send(command(v));
        }) {
            Inline::Ready(v) => Answer::Ready(v),
            Inline::Offloaded => Answer::Pending,
            other => Answer::Ready(failed(other)),
        }
    }
}

impl UserCode for &Calls {
    /// Run the authenticator for a client.
    fn authenticate(
        &mut self,
        key: ConnKey,
        generation: u32,
        request: AuthRequest,
    ) -> Answer<AuthResult> {
        let fut = guarded(|| Some(self.authenticator.authenticate(request)));
        self.run(
            fut,
            |why| match why {
                Inline::Refused => Err(AuthError::Overloaded),
                _ => Err(AuthError::Internal("authenticator panicked".into())),
            },
            move |result| ShardCommand::AuthDone {
                key,
                generation,
                result,
            },
        )
    }

    /// Run the room validator for a `join` (none configured: nothing is
    /// allowed; a failure or refusal allows nothing either).
    fn validate(
        &mut self,
        key: ConnKey,
        generation: u32,
        request: JoinRequest,
    ) -> Answer<Vec<String>> {
        let Some(validator) = &self.room_validator else {
            return Answer::Ready(Vec::new());
        };
        let requested = request.rooms.clone();
        let fut = guarded(|| Some(validator.allowed_rooms(request)));
        self.run(
            fut,
            |_| Vec::new(),
            move |allowed| ShardCommand::JoinDone {
                key,
                generation,
                requested,
                allowed,
            },
        )
    }

    /// Run a lifecycle hook.
    fn hook(&mut self, call: HookCall) {
        let h = &self.hooks;
        let fut = guarded(|| match call {
            HookCall::Open(o) => h.on_open(o),
            HookCall::Connect(c) => h.on_connect(c),
            HookCall::Disconnect(d) => h.on_disconnect(d),
            HookCall::Message(m) => h.on_message(m),
        });
        if let Some(fut) = fut {
            self.control.run_or_offload(fut, |()| {});
        }
    }
}

/// Call user code so that a panic in it is logged and treated as
/// "nothing", never unwinding through the shard.
fn guarded<T>(f: impl FnOnce() -> Option<T>) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            tracing::error!("an authenticator, room validator or hook panicked");
            None
        }
    }
}
