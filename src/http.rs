//! Plain HTTP beside the upgrade, on the same port: `GET /health` (JSON)
//! and `GET /metrics` (Prometheus text). A GET of the WebSocket path without
//! an upgrade gets 426; anything else 404.

use crate::metrics::Registry;
use crate::proto::handshake::http_response;

/// Answer one plain HTTP request.
pub fn respond(registry: &Registry, method: &str, path: &str, ws_path: &str) -> Vec<u8> {
    let path = path.split('?').next().unwrap_or(path);
    let get = method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD");
    match path {
        "/health" if get => http_response(
            200,
            "application/json",
            registry.health_json("ok").as_bytes(),
            &[("Cache-Control", "no-store")],
        ),
        "/metrics" if get => http_response(
            200,
            "text/plain; version=0.0.4",
            registry.prometheus().as_bytes(),
            &[("Cache-Control", "no-store")],
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
