//! Authentication: the `authenticate` call handed to the driver, its
//! answer, and what an accepted client gets (indexes, default rooms, the
//! encryption handshake, `connected`).

use std::time::Instant;

use super::{ConnKey, Event, HookCall, PublicKey, Shard};
use crate::auth::{AuthError, AuthRequest, AuthResult, Identity};
use crate::config::EncryptionMode;
use crate::delivery::ClientId;
use crate::hooks;
use crate::metrics::ShardMetrics;
use crate::proto::close::CloseReason;
use crate::proto::encryption;
use crate::proto::message::{self, Connected};
use crate::proto::session::{AuthStep, State, Verdict};

impl<S> Shard<S> {
    pub(super) fn set_state_gauge(&self, from: State, to: State) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.ctx.metrics;
        let g = |s: State| match s {
            State::Unauthorized => &m.conns_unauthorized,
            State::Authenticating => &m.conns_authenticating,
            State::Authenticated => &m.conns_authenticated,
        };
        if from != to {
            g(from).fetch_sub(1, Relaxed);
            g(to).fetch_add(1, Relaxed);
        }
    }

    /// `authenticate` arrived: ask the driver to call the authenticator.
    pub(super) fn start_auth(&mut self, key: ConnKey, was: State, data: serde_json::Value) {
        let conn = &mut self.conns[key as usize];
        let generation = conn.generation;
        let public_key = match message::public_key(&data) {
            _ if self.ctx.config.encryption == EncryptionMode::Off => PublicKey::Absent,
            None => PublicKey::Absent,
            Some(Some(k)) => PublicKey::Given(k.into()),
            Some(None) => PublicKey::Invalid,
        };
        if public_key != PublicKey::Absent {
            conn.extra.get_or_insert_with(Default::default).public_key = public_key;
        }
        conn.awaiting = true;
        let request = AuthRequest {
            client_id: conn.id.to_string(),
            data,
        };
        self.set_state_gauge(was, State::Authenticating);
        self.events.push_back(Event::Authenticate {
            key,
            generation,
            request,
        });
    }

    pub(super) fn finish_auth(
        &mut self,
        key: ConnKey,
        generation: u32,
        result: AuthResult,
        now: Instant,
    ) {
        let _span = self.conn_span(key).entered();
        let m = self.ctx.metrics.clone();
        let Some(conn) = self.live(key, generation) else {
            tracing::debug!("client disconnected during authentication; result dropped");
            return;
        };
        if conn.is_closing() {
            return;
        }
        let (verdict, identity) = match result {
            Ok(Some(identity)) => (Verdict::Accepted, Some(identity)),
            Ok(None) => (Verdict::Refused, None),
            Err(e) => {
                log_auth_error(&conn.id, &e);
                (Verdict::Failed, None)
            }
        };
        match conn.session.handle_auth_result(verdict) {
            AuthStep::Stale => {}
            AuthStep::Reject(text) => {
                match verdict {
                    Verdict::Failed => ShardMetrics::add(&m.auth_errors, 1),
                    _ => ShardMetrics::add(&m.auth_refused, 1),
                }
                self.send_error(key, text, now);
                self.close(key, CloseReason::AuthFailed, now);
            }
            AuthStep::Accept => {
                ShardMetrics::add(&m.auth_accepted, 1);
                let identity = identity.unwrap_or_default();
                self.on_authenticated(key, identity, now);
            }
        }
    }

    /// Index the client, join its own and default rooms, send `connected`.
    fn on_authenticated(&mut self, key: ConnKey, identity: Identity, now: Instant) {
        self.set_state_gauge(State::Authenticating, State::Authenticated);
        // The encryption handshake comes before the client is indexed: a
        // client that fails it never receives anything but the error and
        // the close.
        let handshake = match self.encryption_handshake(key) {
            Ok(h) => h,
            Err(()) => {
                ShardMetrics::add(&self.ctx.metrics.encryption_handshakes_failed, 1);
                self.send_error(key, message::error_text::ENCRYPTION_HANDSHAKE_FAILED, now);
                self.close(key, CloseReason::EncryptionRequired, now);
                return;
            }
        };
        let Identity {
            user_id,
            metadata,
            room_patterns,
        } = identity;
        let user = user_id.as_deref().filter(|u| !u.is_empty());
        if let (Some(s), Some(u)) = (&self.ctx.sessions, user)
            && !s.try_add(u)
        {
            tracing::debug!(client = %self.conns[key as usize].id, "--max-sessions-per-user reached");
            ShardMetrics::add(&self.ctx.metrics.sessions_refused, 1);
            self.send_error(key, message::error_text::TOO_MANY_SESSIONS, now);
            self.close(key, CloseReason::TooManySessions, now);
            return;
        }
        let conn = &mut self.conns[key as usize];
        if metadata.is_some() || room_patterns.is_some() {
            let extra = conn.extra.get_or_insert_with(Default::default);
            extra.metadata = metadata.clone();
            extra.room_patterns = room_patterns;
        }
        conn.in_own_room = true;
        let id = conn.id;
        // An empty userId is falsy in the reference: not indexed.
        if let Some(u) = user {
            if self.users.add(&mut self.conns, u, key)
                && let Some(name) = self.conns[key as usize].user.clone()
            {
                self.note_interest(true, || super::Topic::User(name));
            }
        }
        let config = self.ctx.config.clone();
        for r in &config.default_rooms {
            self.join_room(key, r);
        }
        self.update_index_gauges();
        let id_s = id.to_string();
        let time = message::iso8601_millis(self.unix_ms(now));
        let payload = Connected {
            id: &id_s,
            user_id: user_id.as_deref(),
            time: &time,
            server_public_key: handshake.as_ref().map(|h| h.server_public_key.as_str()),
            salt: handshake.as_ref().map(|h| h.salt.as_str()),
        };
        if let Ok(f) = crate::delivery::encode(message::event::CONNECTED, Some(&payload)) {
            self.send_own(key, f, now);
        }
        // `connected` went out in clear (it carries the key material);
        // everything after it is encrypted.
        if let Some(h) = handshake {
            let conn = &mut self.conns[key as usize];
            conn.encrypted = true;
            conn.extra.get_or_insert_with(Default::default).cipher = Some(h.cipher);
            self.ctx
                .metrics
                .encrypted_clients
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::debug!(client = %id_s, user = ?user_id, "authenticated");
        if self.ctx.wants_lifecycle {
            self.events
                .push_back(Event::Hook(HookCall::Connect(hooks::Connected {
                    client_id: id_s,
                    user_id,
                    metadata,
                })));
        }
    }

    /// PROTOCOL.md §7 for an accepted client: `Ok(None)` for a plain
    /// client, `Ok(Some)` for a completed handshake, `Err` when encryption
    /// is required and missing, or was asked for with a bad key.
    fn encryption_handshake(&mut self, key: ConnKey) -> Result<Option<encryption::Handshake>, ()> {
        let mode = self.ctx.config.encryption;
        let conn = &mut self.conns[key as usize];
        let given = conn
            .extra
            .as_mut()
            .map(|e| std::mem::take(&mut e.public_key))
            .unwrap_or_default();
        match (mode, given) {
            (EncryptionMode::Off, _) | (EncryptionMode::Optional, PublicKey::Absent) => Ok(None),
            (_, PublicKey::Given(k)) => match encryption::handshake(&k) {
                Ok(h) => Ok(Some(h)),
                Err(e) => {
                    tracing::debug!(client = %conn.id, error = %e, "encryption handshake refused");
                    Err(())
                }
            },
            (_, PublicKey::Invalid) | (EncryptionMode::Required, PublicKey::Absent) => {
                tracing::debug!(client = %conn.id, "encryption required: no valid publicKey");
                Err(())
            }
        }
    }
}

fn log_auth_error(id: &ClientId, e: &AuthError) {
    match e {
        // Counted (`ignis_ws_control_tasks_refused_total`); a WARN per client
        // would flood the log exactly when the server is overloaded.
        AuthError::Overloaded => tracing::debug!(client = %id, error = %e, "authenticator error"),
        _ => tracing::warn!(client = %id, error = %e, "authenticator error"),
    }
}
