//! Plain HTTP beside the upgrade, on the same port: `GET /health` (JSON),
//! `GET /metrics` (Prometheus text, unless `--metrics-listen` moves it to a
//! private address), `POST /api/publish` (for backends without Redis
//! access), and the cluster-wide `POST /api/disconnect` and
//! `POST /api/count`. A GET of the WebSocket path without an upgrade gets 426;
//! anything else 404. `HEAD` gets the `GET` head without its body.
//!
//! The publish endpoint decides from the request head alone whether a body
//! is read at all ([`publish_head`]): a missing or wrong key is answered
//! before a byte of the body is waited for.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::bridge::envelope::Kind;
use crate::handle::Handle;
use crate::metrics::Registry;
use crate::proto::handshake::http_response;

/// The publish endpoint's path.
pub const PUBLISH_PATH: &str = "/api/publish";
/// Disconnect a user's sessions or a client, cluster-wide.
pub const DISCONNECT_PATH: &str = "/api/disconnect";
/// Count a room's members, a user's sessions or a client, cluster-wide.
pub const COUNT_PATH: &str = "/api/count";

/// Whether `path` is one of the `POST` API endpoints (behind `--api-key`).
pub fn is_api_path(path: &str) -> bool {
    matches!(path, PUBLISH_PATH | DISCONNECT_PATH | COUNT_PATH)
}

/// Which plain HTTP endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints<'a> {
    /// The WebSocket path (426 for a plain GET of it); `None` on the
    /// private metrics listener.
    pub ws_path: Option<&'a str>,
    /// `POST /api/publish` is enabled (an API key is set).
    pub api_enabled: bool,
    /// `/metrics` is served here.
    pub metrics: bool,
}

/// Answer one plain HTTP request (`HEAD`: the same head, no body).
pub fn respond(registry: &Registry, method: &str, path: &str, at: Endpoints<'_>) -> Vec<u8> {
    let mut r = respond_get(registry, method, path, at);
    if method.eq_ignore_ascii_case("HEAD")
        && let Some(end) = r.windows(4).position(|w| w == b"\r\n\r\n")
    {
        // RFC 9110 §9.3.2: the Content-Length of the GET, no content.
        r.truncate(end + 4);
    }
    r
}

fn respond_get(registry: &Registry, method: &str, path: &str, at: Endpoints<'_>) -> Vec<u8> {
    let path = path.split('?').next().unwrap_or(path);
    let get = method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD");
    let api_enabled = at.api_enabled;
    match path {
        "/health" if get => http_response(
            200,
            "application/json",
            registry.health_json().as_bytes(),
            &[("Cache-Control", "no-store")],
        ),
        "/ready" if get => {
            if registry.draining.load(std::sync::atomic::Ordering::Relaxed) {
                http_response(
                    503,
                    "text/plain",
                    b"draining\n",
                    &[("Cache-Control", "no-store"), ("Retry-After", "5")],
                )
            } else {
                http_response(
                    200,
                    "text/plain",
                    b"ready\n",
                    &[("Cache-Control", "no-store")],
                )
            }
        }
        "/metrics" if get && at.metrics => http_response(
            200,
            "text/plain; version=0.0.4",
            registry.prometheus().as_bytes(),
            &[("Cache-Control", "no-store")],
        ),
        p if api_enabled && is_api_path(p) => http_response(
            405,
            "text/plain",
            b"Method Not Allowed\n",
            &[("Allow", "POST")],
        ),
        "/health" | "/ready" => http_response(
            405,
            "text/plain",
            b"Method Not Allowed\n",
            &[("Allow", "GET, HEAD")],
        ),
        "/metrics" if at.metrics => http_response(
            405,
            "text/plain",
            b"Method Not Allowed\n",
            &[("Allow", "GET, HEAD")],
        ),
        p if Some(p) == at.ws_path => http_response(
            426,
            "text/plain",
            b"Upgrade Required: this path only speaks WebSocket\n",
            &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
        ),
        _ => http_response(404, "text/plain", b"Not Found\n", &[]),
    }
}

/// `POST /api/publish` body: `{type, target?, event, data?, exclude?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    target: Option<String>,
    event: String,
    /// `null` is data (`"data":null`); only an absent key is `None`.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    exclude: Option<Vec<String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn json_error(status: u16, message: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let body = serde_json::json!({ "error": message }).to_string();
    http_response(status, "application/json", body.as_bytes(), extra)
}

/// `POST /api/disconnect` and `POST /api/count` bodies: exactly one of
/// `userId`, `clientId` (and, to count, `room`); `code` to disconnect.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AdminBody {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    code: Option<u16>,
}

impl AdminBody {
    fn who(&self) -> Result<crate::delivery::Who, &'static str> {
        use crate::delivery::{ClientId, Who};
        // Longer names would be dropped by the other nodes.
        let max = crate::bridge::admin::MAX_NAME;
        if [&self.user_id, &self.room]
            .iter()
            .any(|s| s.as_ref().is_some_and(|s| s.len() > max))
        {
            return Err("`userId` and `room` are at most 512 bytes");
        }
        match (&self.user_id, &self.client_id, &self.room) {
            (Some(u), None, None) if !u.is_empty() => Ok(Who::User(u.as_str().into())),
            (None, Some(c), None) => ClientId::parse(c)
                .map(Who::Client)
                .ok_or("`clientId` must be a client id"),
            (None, None, Some(r)) if !r.is_empty() => Ok(Who::Room(r.as_str().into())),
            _ => Err("give exactly one non-empty `userId`, `clientId` or `room`"),
        }
    }
}

/// The key checked (401), the body parsed and naming exactly one target
/// (400): what both admin endpoints start with.
fn admin_request(
    api_key: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Result<(AdminBody, crate::delivery::Who), Vec<u8>> {
    if !key_matches(api_key, authorization) {
        return Err(json_error(
            401,
            "missing or wrong API key",
            &[("WWW-Authenticate", "Bearer")],
        ));
    }
    let req: AdminBody = serde_json::from_slice(body)
        .map_err(|e| json_error(400, &format!("invalid body: {e}"), &[]))?;
    let who = req.who().map_err(|e| json_error(400, e, &[]))?;
    Ok((req, who))
}

/// Answer `POST /api/disconnect` (`{"userId"|"clientId", "code"?}`): close
/// those sessions here and on every other node; `202 {"ok":true,"local":N}`.
pub async fn disconnect(
    handle: &Handle,
    api_key: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let (req, who) = match admin_request(api_key, authorization, body) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let who = match who {
        crate::delivery::Who::Room(_) => {
            return json_error(
                400,
                "give `userId` or `clientId` (a room is not disconnected)",
                &[],
            );
        }
        w => w,
    };
    let code = req.code.unwrap_or(crate::proto::close::POLICY_VIOLATION);
    if !crate::proto::close::is_disconnect_code(code) {
        return json_error(400, "`code` must be 1008 or 4000-4999", &[]);
    }
    match handle.disconnect(who, code).await {
        Ok(n) => http_response(
            202,
            "application/json",
            format!(r#"{{"ok":true,"local":{n}}}"#).as_bytes(),
            &[],
        ),
        Err(e) => json_error(400, &e.to_string(), &[]),
    }
}

/// Answer `POST /api/count` (`{"room"|"userId"|"clientId"}`):
/// `200 {"count","local","nodes","expectedNodes","complete"}`.
pub async fn count(
    handle: &Handle,
    api_key: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let (req, who) = match admin_request(api_key, authorization, body) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    if req.code.is_some() {
        return json_error(400, "`code` is for /api/disconnect", &[]);
    }
    let c = handle.count(who).await;
    let body = serde_json::to_vec(&c).unwrap_or_default();
    http_response(
        200,
        "application/json",
        &body,
        &[("Cache-Control", "no-store")],
    )
}

/// Compare without an early exit, so the key cannot be guessed byte by
/// byte from response times.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What to do with a `POST /api/publish` once its head is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishHead {
    /// Answer this and close; no body byte is read.
    Reply(Vec<u8>),
    /// The key is right and the length acceptable: read exactly `len`
    /// body bytes, then call [`publish`].
    ReadBody {
        /// The body's length (`Content-Length`).
        len: usize,
    },
}

/// Whether `authorization` carries `api_key` as its bearer token.
pub fn key_matches(api_key: &str, authorization: Option<&str>) -> bool {
    let bearer = authorization
        .and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        })
        .map(str::trim);
    bearer.is_some_and(|k| same_key(k.as_bytes(), api_key.as_bytes()))
}

/// Decide `POST /api/publish` from its head: the key first (401 before any
/// body byte is waited for), then the length (411 without one, 413 over
/// `max_body`), then room for one more body read (`bodies_full`: 503 with
/// `Retry-After`, so bodies held in memory stay bounded).
pub fn publish_head(
    api_key: &str,
    authorization: Option<&str>,
    content_length: Option<usize>,
    max_body: usize,
    bodies_full: bool,
) -> PublishHead {
    if !key_matches(api_key, authorization) {
        return PublishHead::Reply(json_error(
            401,
            "missing or wrong API key",
            &[("WWW-Authenticate", "Bearer")],
        ));
    }
    match content_length {
        None => PublishHead::Reply(json_error(411, "Content-Length required", &[])),
        Some(n) if n > max_body => PublishHead::Reply(json_error(
            413,
            &format!("body larger than {max_body} bytes"),
            &[],
        )),
        Some(_) if bodies_full => PublishHead::Reply(json_error(
            503,
            "too many publish bodies in flight; retry",
            &[("Retry-After", "1")],
        )),
        Some(len) => PublishHead::ReadBody { len },
    }
}

/// Answer `POST /api/publish` with its body: check the bearer key (again:
/// callers may skip [`publish_head`]), validate the body, deliver locally
/// and through Redis like the reference's `send`.
pub fn publish(
    handle: &Handle,
    api_key: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    if !key_matches(api_key, authorization) {
        return json_error(
            401,
            "missing or wrong API key",
            &[("WWW-Authenticate", "Bearer")],
        );
    }
    let req: PublishRequest<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return json_error(400, &format!("invalid body: {e}"), &[]),
    };
    let Some(kind) = Kind::parse(req.kind) else {
        return json_error(
            400,
            "`type` must be one of client, user, room, broadcast",
            &[],
        );
    };
    if req.event.is_empty() {
        return json_error(400, "`event` must be a non-empty string", &[]);
    }
    let target = match (kind, req.target.as_deref()) {
        (Kind::Broadcast, Some(_)) => {
            return json_error(400, "`target` is not used with type broadcast", &[]);
        }
        (Kind::Broadcast, None) => None,
        (_, Some(t)) if !t.is_empty() => Some(t),
        _ => {
            return json_error(
                400,
                "`target` is required for types client, user and room",
                &[],
            );
        }
    };
    let exclude: Vec<&str> = req.exclude.iter().flatten().map(String::as_str).collect();
    if !exclude.is_empty() && matches!(kind, Kind::Client | Kind::User) {
        return json_error(
            400,
            "`exclude` applies to types room and broadcast only",
            &[],
        );
    }
    let data = req.data.map(|d| d.get().as_bytes());
    match handle.publish_raw(kind, target, &req.event, data, &exclude) {
        Ok(()) => http_response(202, "application/json", b"{\"ok\":true}", &[]),
        Err(e @ crate::handle::SendError::Overloaded) => {
            json_error(503, &e.to_string(), &[("Retry-After", "1")])
        }
        Err(e) => json_error(503, &e.to_string(), &[]),
    }
}

/// Connections the private metrics listener serves at once; more wait in
/// the kernel's backlog.
const PRIVATE_MAX_CONNS: usize = 64;

/// Serve `/metrics` and `/health` on the private `--metrics-listen`
/// address, on the control thread: one request per connection, each
/// bounded in size (`max_head`) and time (`timeout`), at most
/// `PRIVATE_MAX_CONNS` (64) at once. Runs until the control thread stops.
pub async fn serve_private(
    listener: std::net::TcpListener,
    registry: std::sync::Arc<Registry>,
    max_head: usize,
    timeout: std::time::Duration,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "--metrics-listen: cannot serve");
            return;
        }
    };
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(PRIVATE_MAX_CONNS));
    let mut errors = crate::throttle::Throttle::new(std::time::Duration::from_secs(1));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                if let Some(failures) = errors.hit(std::time::Instant::now()) {
                    tracing::warn!(error = %e, failures, "--metrics-listen: accept failed");
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ =
                tokio::time::timeout(timeout, private_request(stream, &registry, max_head)).await;
        });
    }
}

async fn private_request(
    mut stream: tokio::net::TcpStream,
    registry: &Registry,
    max_head: usize,
) -> std::io::Result<()> {
    use crate::proto::handshake::{HandshakeLimits, Request, error_response, parse_request};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = HandshakeLimits {
        max_head_bytes: max_head,
        max_headers: 64,
    };
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let reply = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request(&buf, &limits) {
            Ok(None) => continue,
            Ok(Some(Request::Http { method, path, .. })) => {
                break respond(
                    registry,
                    method,
                    path,
                    Endpoints {
                        ws_path: None,
                        api_enabled: false,
                        metrics: true,
                    },
                );
            }
            Ok(Some(Request::Upgrade { .. })) => {
                break http_response(404, "text/plain", b"Not Found\n", &[]);
            }
            Err(e) => break error_response(&e),
        }
    };
    stream.write_all(&reply).await?;
    stream.shutdown().await
}
