//! Owns the HTTP/1.1 side of a connection, sans-io: parsing the request head
//! (an RFC 6455 §4.2.1 WebSocket upgrade or a plain HTTP request) and
//! rendering the few responses the server sends before or instead of
//! switching protocols.
//!
//! The parser borrows from the caller's read buffer and never consumes it:
//! the caller drops `head_len` bytes once it has acted on the request. What
//! to do with a plain HTTP request (health, metrics, 404, 426 on the
//! WebSocket path) is the caller's decision, not this module's.

use std::fmt::Write as _;

/// Bounds on the request head, checked before the head is complete so a
/// slow or hostile client cannot make us buffer without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Request line plus headers plus the blank line, in bytes.
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 8 * 1024,
            max_headers: 32,
        }
    }
}

/// A complete, valid request head. `head_len` is the number of bytes the head
/// occupies at the start of the buffer; anything after it is body or, for an
/// upgrade, early WebSocket frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    Upgrade {
        /// Request path without the query string.
        path: &'a str,
        /// `Sec-WebSocket-Key`, syntactically checked (24 base64 chars).
        key: &'a str,
        head_len: usize,
        /// `Origin` (at most one field; checked by [`OriginPolicy`]).
        origin: Option<&'a str>,
        /// The last `X-Forwarded-For` field (the nearest proxy's; see
        /// [`client_ip`]), when it is UTF-8.
        forwarded_for: Option<&'a str>,
    },
    Http {
        method: &'a str,
        /// Request path without the query string.
        path: &'a str,
        head_len: usize,
        authorization: Option<&'a str>,
        content_length: Option<usize>,
    },
}

impl<'a> Request<'a> {
    /// A [`Request::Http`] of these fields, in their order.
    pub const fn http(
        method: &'a str,
        path: &'a str,
        head_len: usize,
        authorization: Option<&'a str>,
        content_length: Option<usize>,
    ) -> Self {
        Self::Http {
            method,
            path,
            head_len,
            authorization,
            content_length,
        }
    }
}

/// Why a request head was refused; [`HandshakeError::status`] maps each to
/// the HTTP status to answer with ([`error_response`] renders it).
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("request head exceeds the size limit")]
    HeadTooLarge,
    #[error("request has too many header fields")]
    TooManyHeaders,
    #[error("malformed HTTP request")]
    Malformed,
    #[error("header field {0} must not appear more than once")]
    DuplicateHeader(&'static str),
    #[error("WebSocket upgrade without Sec-WebSocket-Key")]
    MissingKey,
    #[error("Sec-WebSocket-Key is not 16 base64-encoded bytes")]
    InvalidKey,
    #[error("unsupported WebSocket version, only 13 is supported")]
    BadVersion,
    #[error("WebSocket upgrade must use the GET method")]
    MethodNotGet,
    #[error("WebSocket upgrade requires HTTP/1.1")]
    UpgradeRequiresHttp11,
    #[error("Transfer-Encoding is not supported")]
    TransferEncodingUnsupported,
    #[error("HTTP/1.1 request without a Host header field")]
    MissingHost,
}

impl HandshakeError {
    pub const fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::Malformed
            | Self::DuplicateHeader(_)
            | Self::MissingKey
            | Self::InvalidKey
            | Self::UpgradeRequiresHttp11
            | Self::MissingHost => 400,
            // RFC 6455 §4.4: 426 plus the versions we do speak.
            Self::BadVersion => 426,
            Self::MethodNotGet => 405,
            // RFC 9112 §6.1: a transfer coding we do not implement.
            Self::TransferEncodingUnsupported => 501,
        }
    }
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)`: the head is incomplete, read more. Once `buf` reaches
/// `max_head_bytes` without a complete head the answer is
/// [`HandshakeError::HeadTooLarge`] (a head must fit within the limit).
///
/// A request is an upgrade when its `Upgrade` header lists the token
/// `websocket` and its `Connection` header lists `upgrade` (both
/// case-insensitive, comma-separated, possibly over several fields). An
/// upgrade must then be a GET over HTTP/1.1 with a well-formed
/// `Sec-WebSocket-Key` and `Sec-WebSocket-Version: 13`. Anything else is a
/// plain HTTP request.
pub fn parse_request<'a>(
    buf: &'a [u8],
    limits: &HandshakeLimits,
) -> Result<Option<Request<'a>>, HandshakeError> {
    const STACK_HEADERS: usize = 64;
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let mut on_stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut on_heap = Vec::new();
    let slots: &mut [httparse::Header<'a>] = if limits.max_headers <= STACK_HEADERS {
        &mut on_stack[..limits.max_headers]
    } else {
        on_heap.resize(limits.max_headers, httparse::EMPTY_HEADER);
        &mut on_heap
    };
    let mut req = httparse::Request::new(slots);
    let head_len = match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_bytes => {
            return Err(HandshakeError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HandshakeError::Malformed);
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let headers = Headers(req.headers);
    // RFC 9112 §3.2: an HTTP/1.1 request without Host, or any request
    // with two, gets 400 (a proxy in front may have read the other one).
    let host = headers.unique("host", "Host")?;
    if minor == 1 && host.is_none() {
        return Err(HandshakeError::MissingHost);
    }

    if headers.has_token("upgrade", "websocket") && headers.has_token("connection", "upgrade") {
        if method != "GET" {
            return Err(HandshakeError::MethodNotGet);
        }
        if minor != 1 {
            return Err(HandshakeError::UpgradeRequiresHttp11);
        }
        let key = headers
            .unique("sec-websocket-key", "Sec-WebSocket-Key")?
            .ok_or(HandshakeError::MissingKey)?;
        if !is_valid_key(key) {
            return Err(HandshakeError::InvalidKey);
        }
        let version = headers.unique("sec-websocket-version", "Sec-WebSocket-Version")?;
        if version != Some("13") {
            return Err(HandshakeError::BadVersion);
        }
        // RFC 6454 §7.3: at most one Origin; two are refused like two Hosts.
        let origin = headers.unique("origin", "Origin")?;
        let forwarded_for = headers
            .values("x-forwarded-for")
            .last()
            .and_then(|v| std::str::from_utf8(v).ok());
        return Ok(Some(Request::Upgrade {
            path,
            key,
            head_len,
            origin,
            forwarded_for,
        }));
    }

    // Without chunked decoding the body's end is unknowable; refusing is
    // safer than guessing where the next bytes belong.
    if headers.any("transfer-encoding") {
        return Err(HandshakeError::TransferEncodingUnsupported);
    }
    let content_length = headers
        .unique("content-length", "Content-Length")?
        .map(parse_content_length)
        .transpose()?;
    let authorization = headers.unique("authorization", "Authorization")?;
    Ok(Some(Request::http(
        method,
        path,
        head_len,
        authorization,
        content_length,
    )))
}

/// The parsed header fields, with the lookups the rules above need.
struct Headers<'h, 'a>(&'h [httparse::Header<'a>]);

impl<'a> Headers<'_, 'a> {
    fn values(&self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    fn any(&self, name: &'static str) -> bool {
        self.values(name).next().is_some()
    }

    /// The value of a field that may appear at most once, trimmed. Two
    /// copies are refused rather than picking one, since a proxy in front of
    /// us may have picked the other.
    fn unique(
        &self,
        name: &'static str,
        display: &'static str,
    ) -> Result<Option<&'a str>, HandshakeError> {
        let mut values = self.values(name);
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(HandshakeError::DuplicateHeader(display));
        }
        let value = std::str::from_utf8(value).map_err(|_| HandshakeError::Malformed)?;
        Ok(Some(value.trim_matches([' ', '\t'])))
    }

    /// Whether any field `name` lists `token` in its comma-separated value.
    fn has_token(&self, name: &'static str, token: &str) -> bool {
        self.values(name).any(|value| {
            value
                .split(|&b| b == b',')
                .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }
}

/// A nonce of 16 bytes in base64 is 22 alphabet characters and `==`
/// (RFC 6455 §4.1). The unused low bits of the last character are not
/// checked: clients never get them wrong and the key is only hashed.
fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 24
        && bytes[22..] == *b"=="
        && bytes[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn parse_content_length(value: &str) -> Result<usize, HandshakeError> {
    // usize::from_str would accept a leading '+', which RFC 9110 does not.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HandshakeError::Malformed);
    }
    value.parse().map_err(|_| HandshakeError::Malformed)
}

/// The 101 response accepting an upgrade whose `Sec-WebSocket-Key` is `key`.
pub fn accept_response(key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A complete HTTP/1.1 response with `Content-Length` and
/// `Connection: close` (the connection ends after it). An empty
/// `content_type` omits the header.
///
/// Values are written verbatim except that CR and LF are dropped, so a
/// header value can never split into a second header or end the head early.
pub fn http_response(
    status: u16,
    content_type: &str,
    body: &[u8],
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut head = String::with_capacity(128);
    // fmt::Write for String cannot fail.
    let _ = write!(head, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    if !content_type.is_empty() {
        push_header(&mut head, "Content-Type", content_type);
    }
    let _ = write!(head, "Content-Length: {}\r\n", body.len());
    head.push_str("Connection: close\r\n");
    for (name, value) in extra_headers {
        push_header(&mut head, name, value);
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn push_header(head: &mut String, name: &str, value: &str) {
    let clean = |s: &str| {
        s.chars()
            .filter(|c| !matches!(c, '\r' | '\n'))
            .collect::<String>()
    };
    let _ = write!(head, "{}: {}\r\n", clean(name), clean(value));
}

/// The response for a refused request head, with the headers its status
/// calls for: `Sec-WebSocket-Version` and `Upgrade` on 426 (RFC 6455 §4.4,
/// RFC 9110 §15.5.22), `Allow` on 405.
pub fn error_response(err: &HandshakeError) -> Vec<u8> {
    let body = format!("{err}\n");
    let extra: &[(&str, &str)] = match err {
        HandshakeError::BadVersion => &[("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")],
        HandshakeError::MethodNotGet => &[("Allow", "GET")],
        _ => &[],
    };
    http_response(
        err.status(),
        "text/plain; charset=utf-8",
        body.as_bytes(),
        extra,
    )
}

/// Reason phrases for the statuses this server sends; others get an empty
/// phrase, which HTTP/1.1 allows.
pub const fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Longest `Origin` value compared against `--allowed-origins`; a longer
/// one is refused whenever the origin is checked.
pub const MAX_ORIGIN_LEN: usize = 1024;

/// Which `Origin`s may open a WebSocket (`--allowed-origins`,
/// `--require-origin`). No patterns and not `require`: every request,
/// with or without `Origin` (the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    patterns: Vec<OriginPattern>,
    require: bool,
}

/// One entry of `--allowed-origins`: `scheme://host[:port]`, the host
/// possibly `*.` followed by a domain (`*` = one or more DNS labels).
/// Scheme and host are kept in lower case; a default port (80 for
/// `http`/`ws`, 443 for `https`/`wss`) is dropped, as RFC 6454
/// serializes origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    /// `*.host` (one or more labels, then `host`), else `host` exactly.
    wildcard: bool,
    host: String,
    port: Option<u16>,
}

/// A parsed origin (or pattern): scheme, host, explicit non-default port.
fn split_origin(s: &str, allow_wildcard: bool) -> Option<(String, bool, String, Option<u16>)> {
    let s = s.to_ascii_lowercase();
    let (scheme, rest) = s.split_once("://")?;
    let mut chars = scheme.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    // Host and optional port; an IPv6 literal is bracketed.
    let (host, port) = if rest.starts_with('[') {
        let end = rest.find(']')?;
        let (h, after) = rest.split_at(end + 1);
        let inner = &h[1..h.len() - 1];
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return None;
        }
        (h, after)
    } else {
        match rest.find(':') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        }
    };
    let port = match port {
        "" => None,
        p => {
            let digits = p.strip_prefix(':')?;
            if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            Some(digits.parse::<u16>().ok()?)
        }
    };
    let (wildcard, host) = match host.strip_prefix("*.") {
        Some(suffix) if allow_wildcard => (true, suffix),
        _ => (false, host),
    };
    let literal = host.starts_with('[');
    if (literal && wildcard) || (!literal && !is_dns_name(host)) {
        return None;
    }
    let default = match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    let port = port.filter(|p| Some(*p) != default);
    Some((scheme.to_owned(), wildcard, host.to_owned(), port))
}

/// Non-empty labels of letters, digits, `-` and `_`, separated by dots.
fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl OriginPattern {
    /// Parse one `--allowed-origins` entry; `None` when malformed.
    pub fn parse(s: &str) -> Option<OriginPattern> {
        let (scheme, wildcard, host, port) = split_origin(s.trim(), true)?;
        Some(OriginPattern {
            scheme,
            wildcard,
            host,
            port,
        })
    }

    fn matches(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        if self.scheme != scheme || self.port != port {
            return false;
        }
        if !self.wildcard {
            return self.host == host;
        }
        // `*` is one or more whole labels: a non-empty prefix ending in
        // `.` (the host's labels were checked when it was parsed).
        host.len() > self.host.len() + 1
            && host.ends_with(self.host.as_str())
            && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
    }
}

impl OriginPolicy {
    /// From `--allowed-origins` and `--require-origin`; `Err(entry)`
    /// names the first malformed pattern.
    pub fn new(patterns: &[String], require: bool) -> Result<OriginPolicy, String> {
        let patterns = patterns
            .iter()
            .map(|p| OriginPattern::parse(p).ok_or_else(|| p.clone()))
            .collect::<Result<_, _>>()?;
        Ok(OriginPolicy { patterns, require })
    }

    /// Whether a request with this `Origin` (none: `None`) may upgrade.
    /// `null` (an opaque origin) matches no pattern.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return !self.require;
        };
        if self.patterns.is_empty() && !self.require {
            return true;
        }
        if origin.len() > MAX_ORIGIN_LEN {
            return false;
        }
        if self.patterns.is_empty() {
            return true;
        }
        let Some((scheme, false, host, port)) = split_origin(origin, false) else {
            return false;
        };
        self.patterns
            .iter()
            .any(|p| p.matches(&scheme, &host, port))
    }
}

/// One `--trusted-proxies` entry: an address and a prefix length (a bare
/// address is the whole length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, `192.0.2.1`; `None` when malformed.
    pub fn parse(s: &str) -> Option<Cidr> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: std::net::IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 3 => {
                p.parse::<u8>().ok().filter(|p| *p <= max)?
            }
            Some(_) => return None,
        };
        Some(Cidr { net, prefix })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let mask = |bits: u32, width: u32| -> u128 {
            if bits == 0 {
                0
            } else {
                (!0u128 << (width - bits)) & (!0u128 >> (128 - width))
            }
        };
        match (self.net.to_canonical(), ip.to_canonical()) {
            (V4(n), V4(a)) => {
                let m = mask(u32::from(self.prefix), 32);
                (u128::from(u32::from(n)) & m) == (u128::from(u32::from(a)) & m)
            }
            (V6(n), V6(a)) => {
                let m = mask(u32::from(self.prefix), 128);
                (u128::from(n) & m) == (u128::from(a) & m)
            }
            _ => false,
        }
    }
}

/// The signature that starts a PROXY protocol v2 header.
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Largest PROXY v2 header taken (addresses and a few TLVs).
pub const MAX_PROXY_HEADER: usize = 16 + 512;

/// A PROXY protocol v2 header at the start of `buf` (`--proxy-protocol`):
/// `Ok(None)` while incomplete, then its length and the client's address
/// (`None` for `LOCAL`, e.g. a balancer's health check, and for address
/// families without one: the TCP peer stands). Anything else (v1 text, a
/// plain request, another version or command, a header over
/// [`MAX_PROXY_HEADER`]) is [`HandshakeError::Malformed`].
pub fn parse_proxy_v2(
    buf: &[u8],
) -> Result<Option<(usize, Option<std::net::IpAddr>)>, HandshakeError> {
    let n = buf.len().min(PROXY_V2_SIGNATURE.len());
    if buf[..n] != PROXY_V2_SIGNATURE[..n] {
        return Err(HandshakeError::Malformed);
    }
    let Some(&[ver_cmd, family, hi, lo]) = buf.get(12..16) else {
        return Ok(None);
    };
    let total = 16 + usize::from(u16::from_be_bytes([hi, lo]));
    if ver_cmd >> 4 != 2 || total > MAX_PROXY_HEADER {
        return Err(HandshakeError::Malformed);
    }
    let Some(body) = buf.get(16..total) else {
        return Ok(None);
    };
    let source = match (ver_cmd & 0x0f, family >> 4) {
        (0, _) => None,
        (1, 1) => {
            let a: [u8; 4] = body
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or(HandshakeError::Malformed)?;
            Some(std::net::IpAddr::from(a))
        }
        (1, 2) => {
            let a: [u8; 16] = body
                .get(..16)
                .and_then(|b| b.try_into().ok())
                .ok_or(HandshakeError::Malformed)?;
            Some(std::net::IpAddr::from(a))
        }
        (1, 0 | 3) => None,
        _ => return Err(HandshakeError::Malformed),
    };
    Ok(Some((total, source)))
}

/// Entries of `X-Forwarded-For` looked at, from the right.
const MAX_FORWARDED_HOPS: usize = 32;

/// The client's address: the TCP peer, unless the peer is one of
/// `trusted` (a proxy): then the rightmost `X-Forwarded-For` entry that
/// is not trusted (walking from the right past trusted ones). An entry
/// that is not an address stops the walk at the last trusted hop (which
/// cannot be spoofed); so does running out of entries. Without trusted
/// proxies `X-Forwarded-For` is ignored.
pub fn client_ip(
    peer: std::net::IpAddr,
    forwarded_for: Option<&str>,
    trusted: &[Cidr],
) -> std::net::IpAddr {
    let peer = peer.to_canonical();
    let trusted_ip = |ip: std::net::IpAddr| trusted.iter().any(|c| c.contains(ip));
    let (Some(xff), true) = (forwarded_for, trusted_ip(peer)) else {
        return peer;
    };
    let mut last = peer;
    for entry in xff.rsplit(',').take(MAX_FORWARDED_HOPS) {
        let entry = entry.trim_matches([' ', '\t']);
        let ip = entry
            .parse::<std::net::IpAddr>()
            .ok()
            .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()));
        let Some(ip) = ip.map(|ip| ip.to_canonical()) else {
            return last;
        };
        if !trusted_ip(ip) {
            return ip;
        }
        last = ip;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade_head(extra: &str) -> String {
        format!(
            "GET /ws?token=abc HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn parse(head: &str) -> Result<Option<Request<'_>>, HandshakeError> {
        parse_request(head.as_bytes(), &HandshakeLimits::default())
    }

    /// Each of `heads` is refused with `want`.
    fn refused(heads: impl IntoIterator<Item = impl AsRef<str>>, want: HandshakeError) {
        for head in heads {
            let head = head.as_ref();
            assert_eq!(parse(head), Err(want), "{head:?}");
        }
    }

    #[test]
    fn good_upgrade() {
        let head = upgrade_head("");
        assert_eq!(
            parse(&head),
            Ok(Some(Request::Upgrade {
                path: "/ws",
                key: KEY,
                head_len: head.len(),
                origin: None,
                forwarded_for: None,
            }))
        );
    }

    #[test]
    fn bytes_after_the_head_are_not_part_of_it() {
        let head = upgrade_head("");
        let mut buf = head.clone().into_bytes();
        buf.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let Ok(Some(Request::Upgrade { head_len, .. })) =
            parse_request(&buf, &HandshakeLimits::default())
        else {
            panic!()
        };
        assert_eq!(head_len, head.len());
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let head = format!(
            "GET /ws HTTP/1.1\r\nhost: x\r\nUPGRADE: WebSocket\r\nconnection: UPGRADE\r\n\
             sec-websocket-key: {KEY}\r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n"
        );
        assert!(matches!(
            parse(&head),
            Ok(Some(Request::Upgrade { key: KEY, .. }))
        ));
    }

    #[test]
    fn connection_token_lists() {
        for connection in [
            "keep-alive, Upgrade",
            "Upgrade,keep-alive",
            "keep-alive ,  upgrade  ",
        ] {
            let head = upgrade_head("")
                .replace("Connection: Upgrade", &format!("Connection: {connection}"));
            assert!(
                matches!(parse(&head), Ok(Some(Request::Upgrade { .. }))),
                "{connection}"
            );
        }
        // Tokens spread over two Connection fields.
        let head = upgrade_head("").replace(
            "Connection: Upgrade",
            "Connection: keep-alive\r\nConnection: upgrade",
        );
        assert!(matches!(parse(&head), Ok(Some(Request::Upgrade { .. }))));
        // A token containing "upgrade" is not the token.
        let head = upgrade_head("").replace("Connection: Upgrade", "Connection: upgraded");
        assert!(matches!(parse(&head), Ok(Some(Request::Http { .. }))));
    }

    #[test]
    fn missing_key() {
        let head = upgrade_head("").replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "");
        assert_eq!(parse(&head), Err(HandshakeError::MissingKey));
        assert_eq!(HandshakeError::MissingKey.status(), 400);
    }

    #[test]
    fn invalid_key() {
        let keys = [
            "short",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25jZQ!=",
            "dGhlIHNhbXBsZSBub25jZ===",
            "",
        ];
        refused(
            keys.map(|key| upgrade_head("").replace(KEY, key)),
            HandshakeError::InvalidKey,
        );
    }

    #[test]
    fn duplicate_key() {
        let head = upgrade_head(&format!("Sec-WebSocket-Key: {KEY}\r\n"));
        assert_eq!(
            parse(&head),
            Err(HandshakeError::DuplicateHeader("Sec-WebSocket-Key"))
        );
    }

    #[test]
    fn version_8_and_missing_version_are_refused_with_426() {
        let head = upgrade_head("").replace("Version: 13", "Version: 8");
        assert_eq!(parse(&head), Err(HandshakeError::BadVersion));
        let head = upgrade_head("").replace("Sec-WebSocket-Version: 13\r\n", "");
        assert_eq!(parse(&head), Err(HandshakeError::BadVersion));
        let head = upgrade_head("").replace("Version: 13", "Version: 13, 8");
        assert_eq!(parse(&head), Err(HandshakeError::BadVersion));
        let response = String::from_utf8(error_response(&HandshakeError::BadVersion)).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{response}"
        );
        assert!(
            response.contains("\r\nSec-WebSocket-Version: 13\r\n"),
            "{response}"
        );
    }

    #[test]
    fn post_upgrade_is_refused() {
        let head = upgrade_head("").replace("GET", "POST");
        assert_eq!(parse(&head), Err(HandshakeError::MethodNotGet));
        let response = String::from_utf8(error_response(&HandshakeError::MethodNotGet)).unwrap();
        assert!(response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(response.contains("\r\nAllow: GET\r\n"));
    }

    #[test]
    fn http10_upgrade_is_refused() {
        let head = upgrade_head("").replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(parse(&head), Err(HandshakeError::UpgradeRequiresHttp11));
    }

    #[test]
    fn incomplete_head_needs_more() {
        let head = upgrade_head("");
        for cut in 0..head.len() {
            assert_eq!(parse(&head[..cut]), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn oversized_head() {
        let limits = HandshakeLimits {
            max_head_bytes: 256,
            max_headers: 32,
        };
        let filler = format!("X-Filler: {}\r\n", "a".repeat(300));
        let head = upgrade_head(&filler);
        // Refused once the buffer reaches the limit, before the head ends.
        assert_eq!(parse_request(&head.as_bytes()[..255], &limits), Ok(None));
        assert_eq!(
            parse_request(&head.as_bytes()[..256], &limits),
            Err(HandshakeError::HeadTooLarge)
        );
        assert_eq!(
            parse_request(head.as_bytes(), &limits),
            Err(HandshakeError::HeadTooLarge)
        );
        // A head of exactly the limit is fine.
        let head = upgrade_head("");
        let exact = HandshakeLimits {
            max_head_bytes: head.len(),
            max_headers: 32,
        };
        assert!(matches!(
            parse_request(head.as_bytes(), &exact),
            Ok(Some(_))
        ));
        assert_eq!(HandshakeError::HeadTooLarge.status(), 431);
    }

    #[test]
    fn too_many_headers() {
        let limits = HandshakeLimits {
            max_head_bytes: 8192,
            max_headers: 5,
        };
        let head = upgrade_head("X-One: 1\r\n");
        assert_eq!(
            parse_request(head.as_bytes(), &limits),
            Err(HandshakeError::TooManyHeaders)
        );
        let limits = HandshakeLimits {
            max_head_bytes: 8192,
            max_headers: 100,
        };
        let many: String = (0..90).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(matches!(
            parse_request(upgrade_head(&many).as_bytes(), &limits),
            Ok(Some(_))
        ));
        let many: String = (0..96).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            parse_request(upgrade_head(&many).as_bytes(), &limits),
            Err(HandshakeError::TooManyHeaders)
        );
        assert_eq!(HandshakeError::TooManyHeaders.status(), 431);
    }

    #[test]
    fn malformed() {
        let lengths = ["abc", "-1", "+5", "1 2", "", "99999999999999999999999"];
        let head = |v| format!("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\n");
        refused(lengths.map(head), HandshakeError::Malformed);
        let heads = [
            "GET /\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            "\x00\x01\x02 / HTTP/1.1\r\n\r\n",
        ];
        refused(heads, HandshakeError::Malformed);
    }

    #[test]
    fn plain_http_requests() {
        let head = "GET /health?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        let want = Request::http("GET", "/health", head.len(), None, None);
        assert_eq!(parse(head), Ok(Some(want)));
        let head = "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k3n\r\nContent-Length: 12\r\n\r\n{\"a\":1}";
        let auth = Some("Bearer t0k3n");
        let want = Request::http("POST", "/publish", head.len() - 7, auth, Some(12));
        assert_eq!(parse(head), Ok(Some(want)));
        // A GET on the WebSocket path without the upgrade headers is plain
        // HTTP; answering 426 is the caller's call.
        let head = "GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: x\r\n\r\n";
        assert!(matches!(
            parse(head),
            Ok(Some(Request::Http { path: "/ws", .. }))
        ));
        // Upgrade to something else.
        let head = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n";
        assert!(matches!(parse(head), Ok(Some(Request::Http { .. }))));
        let head = "GET / HTTP/1.0\r\n\r\n";
        assert!(matches!(parse(head), Ok(Some(Request::Http { .. }))));
    }

    #[test]
    fn host_is_required_in_http11_and_unique() {
        let head = upgrade_head("").replace("Host: example.com\r\n", "");
        assert_eq!(parse(&head), Err(HandshakeError::MissingHost));
        assert_eq!(HandshakeError::MissingHost.status(), 400);
        assert_eq!(
            parse("GET /health HTTP/1.1\r\n\r\n"),
            Err(HandshakeError::MissingHost)
        );
        let head = upgrade_head("Host: other.example\r\n");
        assert_eq!(parse(&head), Err(HandshakeError::DuplicateHeader("Host")));
        // HTTP/1.0 has no Host requirement (plain requests only).
        assert!(matches!(
            parse("GET /health HTTP/1.0\r\n\r\n"),
            Ok(Some(Request::Http { .. }))
        ));
    }

    #[test]
    fn reason_phrases_of_the_statuses_sent() {
        for (status, phrase) in [
            (202, "Accepted"),
            (411, "Length Required"),
            (503, "Service Unavailable"),
        ] {
            assert_eq!(reason_phrase(status), phrase);
            let r = http_response(status, "", b"", &[]);
            assert!(r.starts_with(format!("HTTP/1.1 {status} {phrase}\r\n").as_bytes()));
        }
    }

    #[test]
    fn ambiguous_bodies_are_refused() {
        let head = "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse(head),
            Err(HandshakeError::TransferEncodingUnsupported)
        );
        assert_eq!(HandshakeError::TransferEncodingUnsupported.status(), 501);
        let head = "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            parse(head),
            Err(HandshakeError::DuplicateHeader("Content-Length"))
        );
    }

    #[test]
    fn query_string_is_stripped_from_the_path() {
        let head = upgrade_head("");
        assert!(matches!(
            parse(&head),
            Ok(Some(Request::Upgrade { path: "/ws", .. }))
        ));
        let head = "GET /metrics?x=1&y=2 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            parse(head),
            Ok(Some(Request::Http {
                path: "/metrics",
                ..
            }))
        ));
        let head = "GET /?only HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(
            parse(head),
            Ok(Some(Request::Http { path: "/", .. }))
        ));
    }

    #[test]
    fn accept_response_uses_the_rfc_example() {
        let response = String::from_utf8(accept_response(KEY)).unwrap();
        assert_eq!(
            response,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn http_response_layout() {
        let response = http_response(200, "text/plain", b"ok\n", &[("X-Shard", "3")]);
        assert_eq!(
            response,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
              Connection: close\r\nX-Shard: 3\r\n\r\nok\n"
        );
        let response = http_response(204, "", b"", &[("X-Evil", "a\r\nSet-Cookie: b")]);
        assert_eq!(
            response,
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\
              X-Evil: aSet-Cookie: b\r\n\r\n"
        );
    }

    #[test]
    fn error_responses_carry_their_status() {
        for err in [
            HandshakeError::HeadTooLarge,
            HandshakeError::TooManyHeaders,
            HandshakeError::Malformed,
            HandshakeError::DuplicateHeader("Authorization"),
            HandshakeError::MissingKey,
            HandshakeError::InvalidKey,
            HandshakeError::BadVersion,
            HandshakeError::MethodNotGet,
            HandshakeError::UpgradeRequiresHttp11,
            HandshakeError::TransferEncodingUnsupported,
            HandshakeError::MissingHost,
        ] {
            let response = String::from_utf8(error_response(&err)).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {} ", err.status())),
                "{head}"
            );
            assert!(head.contains(&format!("Content-Length: {}", body.len())));
            assert_eq!(body, format!("{err}\n"));
        }
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..600, headers in 0usize..80) {
            let limits = HandshakeLimits { max_head_bytes: max, max_headers: headers };
            let _ = parse_request(&bytes, &limits);
        }

        /// Feeding a valid head byte by byte never errors before it completes.
        #[test]
        fn prefixes_of_a_valid_head_need_more(extra in "[A-Za-z-]{1,10}: [ -~]{0,20}\r\n") {
            let head = upgrade_head(&extra);
            for cut in 0..head.len() {
                prop_assert_eq!(parse(&head[..cut]), Ok(None));
            }
            let parsed = parse(&head);
            prop_assert!(
                matches!(parsed, Ok(Some(_)) | Err(HandshakeError::DuplicateHeader(_) | HandshakeError::TransferEncodingUnsupported)),
                "{:?}", parsed
            );
        }
    }
}

#[cfg(test)]
mod admission_tests {
    use super::*;
    use std::net::IpAddr;

    fn policy(patterns: &[&str], require: bool) -> OriginPolicy {
        let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        OriginPolicy::new(&p, require).unwrap()
    }

    #[test]
    fn exact_origins_compare_scheme_and_host_case_insensitively() {
        let p = policy(&["https://App.Example.com"], false);
        assert!(p.allows(Some("https://app.example.com")));
        assert!(p.allows(Some("HTTPS://APP.EXAMPLE.COM")));
        assert!(!p.allows(Some("https://app.example.com.evil.net")));
        assert!(!p.allows(Some("https://evil.net")));
        assert!(!p.allows(Some("https://xapp.example.com")));
    }

    #[test]
    fn scheme_and_port_must_match() {
        let p = policy(&["https://app.example.com", "http://localhost:3000"], false);
        assert!(!p.allows(Some("http://app.example.com")));
        assert!(!p.allows(Some("https://app.example.com:8443")));
        // The default port is the same origin (RFC 6454 drops it).
        assert!(p.allows(Some("https://app.example.com:443")));
        assert!(p.allows(Some("http://localhost:3000")));
        assert!(!p.allows(Some("http://localhost:3001")));
        assert!(!p.allows(Some("http://localhost")));
        let p = policy(&["https://app.example.com:443"], false);
        assert!(p.allows(Some("https://app.example.com")));
    }

    #[test]
    fn a_wildcard_is_one_or_more_labels() {
        let p = policy(&["https://*.example.com"], false);
        assert!(p.allows(Some("https://a.example.com")));
        assert!(p.allows(Some("https://a.b.example.com")));
        assert!(p.allows(Some("https://A.Example.COM")));
        assert!(!p.allows(Some("https://example.com")));
        assert!(!p.allows(Some("https://.example.com")));
        assert!(!p.allows(Some("https://evilexample.com")));
        assert!(!p.allows(Some("https://a.example.com.evil.net")));
        assert!(!p.allows(Some("http://a.example.com")));
        assert!(!p.allows(Some("https://a.example.com:8443")));
        assert!(!p.allows(Some("https://*.example.com")));
    }

    #[test]
    fn null_absent_and_overlong_origins() {
        let p = policy(&["https://app.example.com"], false);
        assert!(!p.allows(Some("null")));
        assert!(!p.allows(Some("")));
        assert!(p.allows(None));
        let long = format!("https://{}.example.com", "a".repeat(MAX_ORIGIN_LEN));
        assert!(!policy(&["https://*.example.com"], false).allows(Some(&long)));
        let p = policy(&["https://app.example.com"], true);
        assert!(!p.allows(None));
        assert!(p.allows(Some("https://app.example.com")));
        // Only --require-origin: any origin of a sane length.
        let p = policy(&[], true);
        assert!(!p.allows(None));
        assert!(p.allows(Some("null")));
        assert!(!p.allows(Some(&long)));
        // Nothing set: everything, as before.
        let p = OriginPolicy::default();
        assert!(p.allows(None) && p.allows(Some("null")) && p.allows(Some(&long)));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "app.example.com",
            "https://",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://*example.com",
            "https://a.*.example.com",
            "https://*",
            "https://*.",
            "https://app..example.com",
            "https://app.example.com:",
            "https://app.example.com:99999",
            "https://user@app.example.com",
            "*://app.example.com",
            "https://*.[::1]",
            "null",
        ] {
            assert_eq!(
                OriginPolicy::new(&[bad.to_string()], false),
                Err(bad.to_string()),
                "{bad}"
            );
        }
        for good in ["https://[::1]:8443", "http://127.0.0.1:3000", "app+x://h"] {
            assert!(OriginPattern::parse(good).is_some(), "{good}");
        }
        assert!(policy(&["https://[::1]:8443"], false).allows(Some("https://[::1]:8443")));
    }

    #[test]
    fn upgrade_carries_origin_and_forwarded_for() {
        let head = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: https://a.example.com\r\nX-Forwarded-For: 1.1.1.1\r\n\
             X-Forwarded-For: 2.2.2.2, 3.3.3.3\r\n\r\n";
        let Ok(Some(Request::Upgrade {
            origin,
            forwarded_for,
            ..
        })) = parse_request(head.as_bytes(), &HandshakeLimits::default())
        else {
            panic!()
        };
        assert_eq!(origin, Some("https://a.example.com"));
        assert_eq!(forwarded_for, Some("2.2.2.2, 3.3.3.3"));
        let two = head.replace("X-Forwarded-For: 1.1.1.1", "Origin: https://b.example.com");
        assert_eq!(
            parse_request(two.as_bytes(), &HandshakeLimits::default()),
            Err(HandshakeError::DuplicateHeader("Origin"))
        );
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.9.9.9")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("192.0.2.1").unwrap().contains(ip("192.0.2.1")));
        assert!(!Cidr::parse("192.0.2.1").unwrap().contains(ip("192.0.2.2")));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0/8",
            "x",
            "1.2.3.4/+8",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn client_ip_walks_forwarded_for_from_the_right_past_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let proxy = ip("10.0.0.1");
        // Not from a trusted proxy: the header is ignored.
        assert_eq!(
            client_ip(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(client_ip(proxy, Some("1.2.3.4"), &[]), proxy);
        // From one: the last untrusted entry; a spoofed left part is not it.
        assert_eq!(
            client_ip(proxy, Some("6.6.6.6, 1.2.3.4"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(proxy, Some("6.6.6.6, 1.2.3.4, 10.0.0.7"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(proxy, Some("1.2.3.4:5678"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(proxy, Some("[2001:db8::1]:443"), &trusted),
            ip("2001:db8::1")
        );
        // Garbage stops at the last trusted hop; none at all: the proxy.
        assert_eq!(
            client_ip(proxy, Some("1.2.3.4, junk, 10.0.0.7"), &trusted),
            ip("10.0.0.7")
        );
        assert_eq!(client_ip(proxy, None, &trusted), proxy);
        assert_eq!(client_ip(proxy, Some("10.0.0.8"), &trusted), ip("10.0.0.8"));
    }
}

#[cfg(test)]
mod proxy_tests {
    use super::*;

    /// A PROXY v2 header: `cmd` 0 LOCAL / 1 PROXY, `family` 1 INET / 2
    /// INET6, then `addrs` (and nothing else).
    pub(crate) fn proxy_v2(cmd: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = PROXY_V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push((family << 4) | 1);
        h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    #[test]
    fn proxy_v2_headers() {
        let v4 = proxy_v2(1, 1, &[192, 0, 2, 7, 10, 0, 0, 1, 0x1f, 0x90, 0, 80]);
        let mut buf = v4.clone();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        for cut in 0..v4.len() {
            assert_eq!(parse_proxy_v2(&buf[..cut]), Ok(None), "{cut}");
        }
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(parse_proxy_v2(&buf), Ok(Some((28, Some(ip)))));
        let mut a6 = vec![0u8; 36];
        a6[..16].copy_from_slice(
            &"2001:db8::5"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        let ip6: std::net::IpAddr = "2001:db8::5".parse().unwrap();
        assert_eq!(
            parse_proxy_v2(&proxy_v2(1, 2, &a6)),
            Ok(Some((52, Some(ip6))))
        );
        assert_eq!(parse_proxy_v2(&proxy_v2(0, 0, &[])), Ok(Some((16, None))));
        for bad in [
            b"GET / HTTP/1.1\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            proxy_v2(2, 1, &[0; 12]),
            proxy_v2(1, 1, &[0; 3]),
            proxy_v2(1, 2, &[0; 12]),
            proxy_v2(1, 1, &[0; 600]),
        ] {
            assert_eq!(
                parse_proxy_v2(&bad),
                Err(HandshakeError::Malformed),
                "{bad:?}"
            );
        }
        let mut v1 = proxy_v2(1, 1, &[0; 12]);
        v1[12] = 0x11;
        assert_eq!(parse_proxy_v2(&v1), Err(HandshakeError::Malformed));
    }
}
