//! The accept-everyone authenticator, for development and benchmarks: it
//! trusts whatever identity the client claims. Never use it in production.

use serde_json::Value;

use super::{AuthRequest, AuthResult, Authenticator, BoxFuture, Identity, ready};

/// Accepts every client. `userId` is `data.userId` if it is a string, else
/// `data.token` if that is a string, else absent; `metadata` is `data.metadata`
/// when present and not null.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InsecureAuthenticator;

impl InsecureAuthenticator {
    /// The authenticator (it has no configuration).
    pub fn new() -> Self {
        Self
    }

    /// Synchronous core of [`Authenticator::authenticate`].
    pub fn identity(data: &Value) -> Identity {
        let string_at = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_owned);
        Identity {
            user_id: string_at("userId").or_else(|| string_at("token")),
            metadata: data.get("metadata").filter(|v| !v.is_null()).cloned(),
            room_patterns: None,
        }
    }
}

impl Authenticator for InsecureAuthenticator {
    fn authenticate(&self, req: AuthRequest) -> BoxFuture<AuthResult> {
        ready(Ok(Some(Self::identity(&req.data))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::poll_now;
    use serde_json::json;
    use std::task::Poll;

    fn run(data: Value) -> Identity {
        let mut fut = InsecureAuthenticator::new().authenticate(AuthRequest {
            client_id: "c".to_owned(),
            data,
        });
        match poll_now(&mut fut) {
            Poll::Ready(Ok(Some(id))) => id,
            other => panic!("insecure auth must accept synchronously, got {other:?}"),
        }
    }

    #[test]
    fn user_id_from_user_id_field_wins_over_token() {
        let id = run(json!({ "userId": "alice", "token": "tok", "metadata": { "a": 1 } }));
        assert_eq!(id.user_id.as_deref(), Some("alice"));
        assert_eq!(id.metadata, Some(json!({ "a": 1 })));
        assert_eq!(id.room_patterns, None);
    }

    #[test]
    fn user_id_falls_back_to_token() {
        let id = run(json!({ "type": "token", "token": "bob" }));
        assert_eq!(id.user_id.as_deref(), Some("bob"));
        assert_eq!(id.metadata, None);
        // A non-string userId does not shadow a string token.
        let id = run(json!({ "userId": 7, "token": "bob" }));
        assert_eq!(id.user_id.as_deref(), Some("bob"));
    }

    #[test]
    fn no_usable_fields_means_anonymous_but_accepted() {
        for data in [
            json!({}),
            json!({ "userId": 1, "token": false, "metadata": null }),
            json!("bare string"),
            Value::Null,
        ] {
            assert_eq!(run(data), Identity::default());
        }
    }
}
