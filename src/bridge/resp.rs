//! The subscriber's own Redis connection: RESP2 in subscribed mode,
//! written and read here rather than through the `redis` crate's
//! `PubSub`. That one keeps a copy of every subscribed channel's name
//! (its subscription tracker) and builds a value tree for every reply; with
//! `--redis-subscribe interest` a node subscribes a channel per user, so
//! both cost per connection (PERFORMANCE.md, "Idle memory"). Here the
//! wanted set lives once, in [`super::interest::Subscriptions`], and a
//! message's payload is a slice of the read buffer.
//!
//! Sans-io parser ([`Reader::parse`]) plus a thin connection
//! ([`connect`]): the URL is read by the `redis` crate (so every form the
//! publisher accepts is accepted here: `redis://`, `rediss://`,
//! `redis+unix://`, user and password; `#insecure` is refused by both),
//! then TCP, TLS (rustls; the `--redis-tls-ca` CA or the system's roots)
//! or a Unix socket, `AUTH` when a password is given, and nothing else.
//!
//! Everything Redis sends is bounded: a reply line is at most
//! [`MAX_LINE`] bytes, a channel name at most [`MAX_CHANNEL`], an array at
//! most four elements (subscribed mode sends nothing larger), and a
//! message's payload past the limit is skipped as it streams in and
//! reported as [`Reply::Oversized`], so one huge PUBLISH neither grows the
//! buffer nor costs the connection.

use std::io;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest reply line (`*4`, `$123456789`, `:12`, `+OK`, an error text).
pub const MAX_LINE: usize = 4096;
/// Longest channel name accepted in a reply (Ignis channel names are
/// `ws:room:` plus a room name; rooms are far shorter).
pub const MAX_CHANNEL: usize = 64 * 1024;
/// Read at least this much at a time.
const READ_CHUNK: usize = 16 * 1024;

/// What Redis said, as the subscriber needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A message on a channel (`message`) or a pattern (`pmessage`).
    Message { channel: Bytes, payload: Bytes },
    /// A message whose payload is past the limit: skipped unread.
    Oversized { channel: Bytes, len: usize },
    /// One channel's or pattern's `subscribe`, `psubscribe`, `unsubscribe`
    /// or `punsubscribe` confirmation.
    Confirmed,
    /// The answer to `PING` in subscribed mode.
    Pong,
    /// `+OK` (or another status), the answer to `AUTH`.
    Status(Bytes),
    /// `-ERR ...`: Redis refused a command.
    Error(String),
}

/// Redis sent something this connection never asks for, or past a bound:
/// the connection is dropped and made again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("redis reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("malformed redis reply: {0}")]
    Malformed(&'static str),
    #[error("redis channel name longer than {MAX_CHANNEL} bytes")]
    ChannelTooLong,
    #[error("unexpected redis reply in subscribed mode")]
    Unexpected,
}

/// One element of a reply array, as a span of the buffer.
#[derive(Debug, Clone, Copy)]
enum Elem {
    Bulk { start: usize, len: usize },
    Null,
    Int,
}

/// The reply parser: bytes in ([`Reader::buffer`]), replies out.
#[derive(Debug)]
pub struct Reader {
    buf: BytesMut,
    /// Bytes of a skipped payload (and its CRLF) still to be thrown away.
    discard: usize,
    max_payload: usize,
}

/// Find the CRLF-terminated line starting at `at`: its end (the index of
/// `\r`), or `None` when incomplete.
fn line(buf: &[u8], at: usize) -> Result<Option<usize>, RespError> {
    let window = &buf[at..buf.len().min(at + MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(at + i)),
        None if window.len() >= MAX_LINE + 2 => Err(RespError::LineTooLong),
        None => Ok(None),
    }
}

/// A decimal integer of a reply header.
fn int(digits: &[u8]) -> Result<i64, RespError> {
    let s = std::str::from_utf8(digits).map_err(|_| RespError::Malformed("length"))?;
    s.parse().map_err(|_| RespError::Malformed("length"))
}

impl Reader {
    /// A parser that skips message payloads longer than `max_payload`.
    pub fn new(max_payload: usize) -> Reader {
        Reader {
            buf: BytesMut::new(),
            discard: 0,
            max_payload,
        }
    }

    /// Append what arrived.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into (for a driver reading in place).
    pub fn buffer(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CHUNK);
        }
        &mut self.buf
    }

    /// The next complete reply, `None` until more bytes arrive.
    pub fn parse(&mut self) -> Result<Option<Reply>, RespError> {
        if self.discard > 0 {
            let n = self.discard.min(self.buf.len());
            self.buf.advance(n);
            self.discard -= n;
            if self.discard > 0 {
                return Ok(None);
            }
        }
        let buf = &self.buf[..];
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        let Some(end) = line(buf, 1)? else {
            return Ok(None);
        };
        let head = &buf[1..end];
        match kind {
            b'+' => {
                let status = Bytes::copy_from_slice(head);
                self.buf.advance(end + 2);
                Ok(Some(Reply::Status(status)))
            }
            b'-' => {
                let text = String::from_utf8_lossy(head).into_owned();
                self.buf.advance(end + 2);
                Ok(Some(Reply::Error(text)))
            }
            b'*' => self.array(int(head)?, end + 2),
            _ => Err(RespError::Unexpected),
        }
    }

    /// An array of `n` elements whose first starts at `at`.
    fn array(&mut self, n: i64, mut at: usize) -> Result<Option<Reply>, RespError> {
        if !(2..=4).contains(&n) {
            return Err(RespError::Unexpected);
        }
        let n = n as usize;
        let mut elems = [Elem::Null; 4];
        for (i, slot) in elems.iter_mut().enumerate().take(n) {
            let buf = &self.buf[..];
            let Some(&kind) = buf.get(at) else {
                return Ok(None);
            };
            let Some(end) = line(buf, at + 1)? else {
                return Ok(None);
            };
            let v = int(&buf[at + 1..end])?;
            let body = end + 2;
            match kind {
                b':' => {
                    *slot = Elem::Int;
                    at = body;
                }
                b'$' if v < 0 => {
                    *slot = Elem::Null;
                    at = body;
                }
                b'$' => {
                    let len = v as usize;
                    let last = i + 1 == n;
                    // Only a message's last element is a payload.
                    let payload = last && n >= 3;
                    let limit = if payload {
                        self.max_payload
                    } else {
                        MAX_CHANNEL
                    };
                    if len > limit && !payload {
                        return Err(RespError::ChannelTooLong);
                    }
                    if len > limit {
                        let is_message = matches!(elems[0], Elem::Bulk { start, len }
                            if matches!(&buf[start..start + len], b"message" | b"pmessage"));
                        if !is_message {
                            return Err(RespError::Unexpected);
                        }
                        // A payload past the limit: skip it as it streams in.
                        let channel = match elems[n - 2] {
                            Elem::Bulk { start, len } => {
                                Bytes::copy_from_slice(&buf[start..start + len])
                            }
                            _ => Bytes::new(),
                        };
                        self.buf.advance(body);
                        self.discard = len + 2;
                        // What is here already goes now.
                        let n = self.discard.min(self.buf.len());
                        self.buf.advance(n);
                        self.discard -= n;
                        return Ok(Some(Reply::Oversized { channel, len }));
                    }
                    if buf.len() < body + len + 2 {
                        // Room for the rest, read in one go.
                        let want = body + len + 2 - buf.len();
                        self.buf.reserve(want);
                        return Ok(None);
                    }
                    if &buf[body + len..body + len + 2] != b"\r\n" {
                        return Err(RespError::Malformed("bulk string end"));
                    }
                    *slot = Elem::Bulk { start: body, len };
                    at = body + len + 2;
                }
                _ => return Err(RespError::Unexpected),
            }
        }
        let whole = self.buf.split_to(at).freeze();
        let bulk = |e: Elem| match e {
            Elem::Bulk { start, len } => Some(whole.slice(start..start + len)),
            _ => None,
        };
        let Some(kind) = bulk(elems[0]) else {
            return Err(RespError::Unexpected);
        };
        let reply = match (&kind[..], n) {
            (b"message", 3) => Reply::Message {
                channel: bulk(elems[1]).unwrap_or_default(),
                payload: bulk(elems[2]).unwrap_or_default(),
            },
            (b"pmessage", 4) => Reply::Message {
                channel: bulk(elems[2]).unwrap_or_default(),
                payload: bulk(elems[3]).unwrap_or_default(),
            },
            (b"subscribe" | b"unsubscribe" | b"psubscribe" | b"punsubscribe", 3) => {
                Reply::Confirmed
            }
            (b"pong", 2) => Reply::Pong,
            _ => return Err(RespError::Unexpected),
        };
        Ok(Some(reply))
    }
}

/// `PING`, which subscribed mode answers with `pong`.
pub const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// A command: `*n`, then each argument as a bulk string (binary-safe: a
/// room name with CR, LF or `$` in it is sent as it is).
pub fn command<'a>(out: &mut Vec<u8>, name: &str, args: impl ExactSizeIterator<Item = &'a [u8]>) {
    use std::io::Write;
    let _ = write!(out, "*{}\r\n${}\r\n{name}\r\n", args.len() + 1, name.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A byte stream to Redis.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// An open connection: the stream and the reply parser.
pub struct Conn {
    stream: Box<dyn Stream>,
    reader: Reader,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("resp::Conn").finish_non_exhaustive()
    }
}

impl Conn {
    /// Write a whole command.
    pub async fn send(&mut self, cmd: &[u8]) -> io::Result<()> {
        self.stream.write_all(cmd).await?;
        self.stream.flush().await
    }

    /// The next reply. Cancel-safe: a reply is taken from the buffer only
    /// when it is returned.
    pub async fn next(&mut self) -> io::Result<Reply> {
        loop {
            if let Some(r) = self.reader.parse().map_err(io::Error::other)? {
                return Ok(r);
            }
            let n = self.stream.read_buf(self.reader.buffer()).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "redis closed the connection",
                ));
            }
        }
    }
}

/// Open a connection to `url` (TCP, TLS or a Unix socket) and
/// authenticate. `tls_ca`: PEM CA for `rediss://` (else the system's
/// roots). Errors never carry the password.
pub async fn connect(url: &str, tls_ca: Option<&[u8]>, max_payload: usize) -> io::Result<Conn> {
    use redis::ConnectionAddr;
    let client = super::conn::client(url, None).map_err(|e| io::Error::other(e.to_string()))?;
    let info = client.get_connection_info();
    let stream: Box<dyn Stream> = match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
        addr if crate::config::redis_tls_unchecked(addr) => {
            return Err(io::Error::other(
                "`#insecure` (TLS without a certificate check) is not supported; give the server's CA with --redis-tls-ca",
            ));
        }
        ConnectionAddr::TcpTls { host, port, .. } => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            let config = tls_config(tls_ca)?;
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|_| io::Error::other(format!("{host:?} is not a TLS server name")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, s)
                .await?;
            Box::new(tls)
        }
        ConnectionAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        other => {
            return Err(io::Error::other(format!(
                "unsupported redis address {other}"
            )));
        }
    };
    let mut conn = Conn {
        stream,
        reader: Reader::new(max_payload),
    };
    let settings = info.redis_settings();
    if let Some(password) = settings.password() {
        let mut cmd = Vec::new();
        let args: Vec<&[u8]> = settings
            .username()
            .map(str::as_bytes)
            .into_iter()
            .chain([password.as_bytes()])
            .collect();
        command(&mut cmd, "AUTH", args.into_iter());
        conn.send(&cmd).await?;
        match conn.next().await? {
            Reply::Status(_) => {}
            // Redis's own text ("WRONGPASS invalid username-password
            // pair"), never the password.
            Reply::Error(e) => return Err(io::Error::other(format!("redis AUTH refused: {e}"))),
            _ => return Err(io::Error::other("unexpected answer to AUTH")),
        }
    }
    Ok(conn)
}

/// The TLS client configuration: the given CA, or the system's roots.
fn tls_config(ca: Option<&[u8]>) -> io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(pem) => {
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| io::Error::other(format!("redis TLS CA: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| io::Error::other(format!("redis TLS CA: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
        }
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(r: &mut Reader) -> Vec<Reply> {
        let mut v = Vec::new();
        while let Some(x) = r.parse().unwrap() {
            v.push(x);
        }
        v
    }

    const STREAM: &[u8] = b"+OK\r\n*3\r\n$9\r\nsubscribe\r\n$12\r\nws:broadcast\r\n:1\r\n\
*3\r\n$7\r\nmessage\r\n$12\r\nws:broadcast\r\n$5\r\nhello\r\n\
*4\r\n$8\r\npmessage\r\n$9\r\nws:room:*\r\n$9\r\nws:room:a\r\n$0\r\n\r\n\
*2\r\n$4\r\npong\r\n$0\r\n\r\n*3\r\n$11\r\nunsubscribe\r\n$4\r\na\r\nb\r\n:0\r\n-ERR no\r\n";

    fn expected() -> Vec<Reply> {
        vec![
            Reply::Status(Bytes::from_static(b"OK")),
            Reply::Confirmed,
            Reply::Message {
                channel: Bytes::from_static(b"ws:broadcast"),
                payload: Bytes::from_static(b"hello"),
            },
            Reply::Message {
                channel: Bytes::from_static(b"ws:room:a"),
                payload: Bytes::new(),
            },
            Reply::Pong,
            Reply::Confirmed,
            Reply::Error("ERR no".into()),
        ]
    }

    #[test]
    fn replies_of_subscribed_mode() {
        let mut r = Reader::new(1024);
        r.feed(STREAM);
        assert_eq!(all(&mut r), expected());
        assert!(r.buf.is_empty());
    }

    /// Any split of the stream into reads gives the same replies.
    #[test]
    fn byte_by_byte_is_the_same() {
        for step in [1, 2, 3, 7, 13] {
            let mut r = Reader::new(1024);
            let mut got = Vec::new();
            for chunk in STREAM.chunks(step) {
                r.feed(chunk);
                got.extend(all(&mut r));
            }
            assert_eq!(got, expected(), "step {step}");
        }
    }

    /// A payload past the limit is skipped as it arrives (the buffer never
    /// holds it), reported once, and the next message is intact.
    #[test]
    fn an_oversized_payload_is_skipped_without_buffering_it() {
        let mut r = Reader::new(10);
        let big = vec![b'x'; 100_000];
        let mut wire = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$100000\r\n".to_vec();
        wire.extend_from_slice(&big);
        wire.extend_from_slice(b"\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nok\r\n");
        let mut got = Vec::new();
        for chunk in wire.chunks(4096) {
            r.feed(chunk);
            got.extend(all(&mut r));
            assert!(r.buf.len() <= 4096 + 64, "{} buffered", r.buf.len());
        }
        assert_eq!(
            got,
            vec![
                Reply::Oversized {
                    channel: Bytes::from_static(b"ch"),
                    len: 100_000
                },
                Reply::Message {
                    channel: Bytes::from_static(b"ch"),
                    payload: Bytes::from_static(b"ok")
                }
            ]
        );
    }

    #[test]
    fn bounds_and_garbage_are_errors() {
        let cases: &[(&[u8], RespError)] = &[
            (b"*9\r\n", RespError::Unexpected),
            (b"*-1\r\n", RespError::Unexpected),
            (b":1\r\n", RespError::Unexpected),
            (b"$3\r\nabc\r\n", RespError::Unexpected),
            (b"*2\r\n*1\r\n", RespError::Unexpected),
            (b"*2\r\n$x\r\n", RespError::Malformed("length")),
            (
                b"*2\r\n$4\r\npongXX",
                RespError::Malformed("bulk string end"),
            ),
            (b"*2\r\n$4\r\nping\r\n$0\r\n\r\n", RespError::Unexpected),
            (
                b"*3\r\n$7\r\nmessage\r\n$99999999\r\n",
                RespError::ChannelTooLong,
            ),
        ];
        for (wire, want) in cases {
            let mut r = Reader::new(1024);
            r.feed(wire);
            assert_eq!(
                r.parse(),
                Err(want.clone()),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let mut r = Reader::new(1024);
        r.feed(b"+");
        r.feed(&vec![b'a'; MAX_LINE + 10]);
        assert_eq!(r.parse(), Err(RespError::LineTooLong));
    }

    #[test]
    fn commands_are_binary_safe() {
        let mut out = Vec::new();
        command(
            &mut out,
            "SUBSCRIBE",
            [&b"ws:room:a\r\nb"[..], b"$"].into_iter(),
        );
        assert_eq!(
            out,
            b"*3\r\n$9\r\nSUBSCRIBE\r\n$12\r\nws:room:a\r\nb\r\n$1\r\n$\r\n"
        );
    }
}
