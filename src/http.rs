//! Plain HTTP beside the upgrade, on the same port: `GET /health` (JSON),
//! `GET /metrics` (Prometheus text) and `POST /api/publish` (for backends
//! without Redis access). A GET of the WebSocket path without an upgrade
//! gets 426; anything else 404.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::bridge::envelope::Kind;
use crate::handle::Handle;
use crate::metrics::Registry;
use crate::proto::handshake::http_response;

/// The publish endpoint's path.
pub const PUBLISH_PATH: &str = "/api/publish";

/// Answer one plain HTTP request.
pub fn respond(
    registry: &Registry,
    method: &str,
    path: &str,
    ws_path: &str,
    api_enabled: bool,
) -> Vec<u8> {
    let path = path.split('?').next().unwrap_or(path);
    let get = method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD");
    match path {
        "/health" if get => http_response(
            200,
            "application/json",
            registry.health_json().as_bytes(),
            &[("Cache-Control", "no-store")],
        ),
        "/metrics" if get => http_response(
            200,
            "text/plain; version=0.0.4",
            registry.prometheus().as_bytes(),
            &[("Cache-Control", "no-store")],
        ),
        PUBLISH_PATH if api_enabled => http_response(
            405,
            "text/plain",
            b"Method Not Allowed\n",
            &[("Allow", "POST")],
        ),
        "/health" | "/metrics" => http_response(
            405,
            "text/plain",
            b"Method Not Allowed\n",
            &[("Allow", "GET, HEAD")],
        ),
        p if p == ws_path => http_response(
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

/// Compare without an early exit, so the key cannot be guessed byte by
/// byte from response times.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Answer `POST /api/publish`: check the bearer key, validate the body,
/// deliver locally and through Redis like the reference's `send`.
pub fn publish(
    handle: &Handle,
    api_key: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let bearer = authorization
        .and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        })
        .map(str::trim);
    if !bearer.is_some_and(|k| same_key(k.as_bytes(), api_key.as_bytes())) {
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
        Err(e) => json_error(503, &e.to_string(), &[]),
    }
}
