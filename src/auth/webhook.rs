//! Webhook authentication: POSTs the `authenticate` event's `data` to an
//! operator-run HTTP endpoint and maps its answer to a verdict. Owns the HTTP
//! client, the request shape, the status/body contract and the timeout.
//!
//! Contract: the request body is `data` as JSON (`Content-Type:
//! application/json`) with header `X-Ignis-Client-Id`. `200` with a JSON object
//! `{userId?: string, metadata?: any, rooms?: [string]}` accepts (`null` counts
//! as absent); `401`/`403` refuse; anything else (other statuses including
//! other 2xx and redirects, which are not followed; a body that is not such an
//! object; a body over [`MAX_RESPONSE_BYTES`]; a timeout; a transport failure)
//! is an authenticator error.
//!
//! Threading: the returned future never touches tokio or reqwest on a poll made
//! outside a tokio runtime. Its first such poll returns `Pending`, so the shard
//! (which is not a tokio thread) hands it to the control thread, where it runs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

use super::{AuthError, AuthRequest, AuthResult, Authenticator, BoxFuture, Identity};

/// Header carrying the server-assigned connection id.
pub const CLIENT_ID_HEADER: &str = "X-Ignis-Client-Id";

/// Largest webhook response body read; a verdict is a few hundred bytes, so a
/// larger one is a misbehaving endpoint, not something to buffer.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why a [`WebhookAuthenticator`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WebhookConfigError {
    /// The URL does not parse.
    #[error("invalid auth webhook URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given, credentials redacted
        /// ([`crate::secrets::redact_url`]).
        url: String,
        /// The parser's complaint.
        reason: String,
    },
    /// Only `http` and `https` are supported.
    #[error("auth webhook URL must use http or https, not {0:?}")]
    UnsupportedScheme(String),
    /// A zero timeout would fail every request.
    #[error("auth webhook timeout must be greater than zero")]
    ZeroTimeout,
    /// Zero calls in flight would fail every request.
    #[error("auth webhook concurrency must be greater than zero")]
    ZeroConcurrency,
    /// reqwest could not set up its client (TLS backend, ...).
    #[error("could not build the auth webhook HTTP client: {0}")]
    Client(String),
}

/// Delegates authentication to an HTTP endpoint; see the module docs.
/// Cloning is cheap and clones share the connection pool.
#[derive(Clone)]
pub struct WebhookAuthenticator {
    inner: Arc<Inner>,
}

struct Inner {
    url: Url,
    timeout: Duration,
    client: reqwest::Client,
    /// One permit per call in flight (`--auth-webhook-concurrency`).
    permits: tokio::sync::Semaphore,
    concurrency: usize,
}

/// Webhook calls in flight at once unless configured
/// (`--auth-webhook-concurrency`).
pub const DEFAULT_CONCURRENCY: usize = 64;

impl fmt::Debug for WebhookAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookAuthenticator")
            .field("url", &crate::secrets::redact_url(self.inner.url.as_str()))
            .field("timeout", &self.inner.timeout)
            .field("concurrency", &self.inner.concurrency)
            .finish_non_exhaustive()
    }
}

impl WebhookAuthenticator {
    /// Validates `url` (http or https) and builds the HTTP client. `timeout`
    /// bounds each whole exchange: connect, request and reading the body.
    pub fn new(url: String, timeout: Duration) -> Result<Self, WebhookConfigError> {
        Self::with_concurrency(url, timeout, DEFAULT_CONCURRENCY)
    }

    /// [`WebhookAuthenticator::new`] with at most `concurrency` calls in
    /// flight (and so connections to the endpoint); further logins wait
    /// for a free call within their `timeout`, then fail with
    /// [`AuthError::Timeout`]. A slow endpoint thus costs a bounded number
    /// of sockets however many clients log in.
    pub fn with_concurrency(
        url: String,
        timeout: Duration,
        concurrency: usize,
    ) -> Result<Self, WebhookConfigError> {
        if concurrency == 0 {
            return Err(WebhookConfigError::ZeroConcurrency);
        }
        let parsed = Url::parse(&url).map_err(|e| WebhookConfigError::InvalidUrl {
            url: crate::secrets::redact_url(&url),
            reason: e.to_string(),
        })?;
        match parsed.scheme() {
            "http" | "https" => {}
            other => return Err(WebhookConfigError::UnsupportedScheme(other.to_owned())),
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(WebhookConfigError::InvalidUrl {
                url: crate::secrets::redact_url(&url),
                reason: "no host".to_owned(),
            });
        }
        if timeout.is_zero() {
            return Err(WebhookConfigError::ZeroTimeout);
        }
        // Built here, outside any runtime (reqwest allows that), so a broken
        // TLS setup shows at startup rather than on the first login.
        let client = reqwest::Client::builder()
            // A redirected POST silently becomes a GET; treat 3xx as an error.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .pool_max_idle_per_host(concurrency)
            .user_agent(concat!("ignis-ws/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookConfigError::Client(error_chain(&e)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                url: parsed,
                timeout,
                client,
                permits: tokio::sync::Semaphore::new(concurrency),
                concurrency,
            }),
        })
    }

    /// The endpoint.
    pub fn url(&self) -> &str {
        self.inner.url.as_str()
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }
}

impl Authenticator for WebhookAuthenticator {
    fn authenticate(&self, req: AuthRequest) -> BoxFuture<AuthResult> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            OnTokio::default().await?;
            let client_id = req.client_id.clone();
            let call = async {
                // The semaphore is never closed; a closed one would mean no call.
                let Ok(_permit) = inner.permits.acquire().await else {
                    return Err(AuthError::Overloaded);
                };
                inner.call(req).await
            };
            let result = match tokio::time::timeout(inner.timeout, call).await {
                Ok(result) => result,
                Err(_elapsed) => Err(AuthError::Timeout),
            };
            match &result {
                Ok(Some(_)) => {}
                Ok(None) => tracing::debug!(client_id, "auth webhook refused the client"),
                // The server logs the error itself; this adds the client id
                // next to the webhook detail for debugging.
                Err(err) => tracing::debug!(client_id, %err, "auth webhook failed"),
            }
            result
        })
    }
}

impl Inner {
    async fn call(&self, req: AuthRequest) -> AuthResult {
        let response = self
            .client
            .post(self.url.clone())
            // `.json` sets `Content-Type: application/json`.
            .json(&req.data)
            .header(CLIENT_ID_HEADER, req.client_id)
            .send()
            .await
            .map_err(transport_error)?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Ok(None),
            other => return Err(AuthError::Webhook(format!("unexpected status {other}"))),
        }
        let body = read_capped(response).await?;
        parse_verdict(&body).map(Some)
    }
}

/// The 200 body.
#[derive(Deserialize)]
struct Verdict {
    #[serde(rename = "userId", default)]
    user_id: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

fn parse_verdict(body: &[u8]) -> Result<Identity, AuthError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| AuthError::Webhook(format!("response body is not JSON: {e}")))?;
    // serde would happily read a struct from a JSON array; insist on an object.
    if !value.is_object() {
        return Err(AuthError::Webhook(
            "response body is not a JSON object".to_owned(),
        ));
    }
    let verdict: Verdict = serde_json::from_value(value)
        .map_err(|e| AuthError::Webhook(format!("bad response body: {e}")))?;
    Ok(Identity {
        user_id: verdict.user_id,
        metadata: verdict.metadata,
        room_patterns: verdict.rooms,
    })
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, AuthError> {
    let too_large = || {
        AuthError::Webhook(format!(
            "response body larger than {MAX_RESPONSE_BYTES} bytes"
        ))
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn transport_error(err: reqwest::Error) -> AuthError {
    if err.is_timeout() {
        AuthError::Timeout
    } else {
        // Drop the URL: it may carry credentials in its query string.
        AuthError::Webhook(format!(
            "request failed: {}",
            error_chain(&err.without_url())
        ))
    }
}

/// `err: source: source ...`, since reqwest's top-level message alone ("error
/// sending request") does not say what went wrong.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Resolves once polled inside a tokio runtime. Polled outside one it returns
/// `Pending` once (the shard's cue to move the future to the control thread)
/// and then fails instead of panicking inside tokio or reqwest.
#[derive(Default)]
struct OnTokio {
    polled_outside: bool,
}

impl Future for OnTokio {
    type Output = Result<(), AuthError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Poll::Ready(Ok(()));
        }
        if self.polled_outside {
            return Poll::Ready(Err(AuthError::Internal(
                "webhook authenticator polled outside a tokio runtime".to_owned(),
            )));
        }
        self.polled_outside = true;
        // A real executor should come back; the shard's no-op waker ignores it.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::poll_now;
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use serde_json::json;
    use std::time::Instant;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// What the test server saw.
    #[derive(Debug)]
    struct Seen {
        method: String,
        path: String,
        content_type: Option<String>,
        client_id: Option<String>,
        body: Vec<u8>,
    }

    /// A real HTTP/1 server on 127.0.0.1 answering every request with
    /// `status` and `body`.
    async fn serve(status: u16, body: &'static str) -> (String, mpsc::UnboundedReceiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let (parts, req_body) = req.into_parts();
                            let header = |name: &str| {
                                parts
                                    .headers
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            let seen = Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                content_type: header("content-type"),
                                client_id: header("x-ignis-client-id"),
                                body: match req_body.collect().await {
                                    Ok(collected) => collected.to_bytes().to_vec(),
                                    Err(e) => return Err(e),
                                },
                            };
                            let _ = tx.send(seen);
                            let response = Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .header("location", "http://127.0.0.1:1/elsewhere")
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .unwrap();
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}/ignis/auth"), rx)
    }

    fn webhook(url: String) -> WebhookAuthenticator {
        WebhookAuthenticator::new(url, Duration::from_secs(5)).unwrap()
    }

    fn request(data: Value) -> AuthRequest {
        AuthRequest {
            client_id: "client-42".to_owned(),
            data,
        }
    }

    async fn auth_once(status: u16, body: &'static str) -> AuthResult {
        let (url, _rx) = serve(status, body).await;
        webhook(url)
            .authenticate(request(json!({ "token": "t" })))
            .await
    }

    #[tokio::test]
    async fn ok_with_user_id_and_metadata_is_accepted_and_request_is_well_formed() {
        let (url, mut rx) = serve(
            200,
            r#"{"userId":"alice","metadata":{"plan":"pro"},"rooms":["team:*"],"extra":1}"#,
        )
        .await;
        let data = json!({ "type": "custom", "token": "secret-token", "publicKey": "pk", "n": [1, 2.5, null] });
        let result = webhook(url).authenticate(request(data.clone())).await;
        assert_eq!(
            result,
            Ok(Some(Identity {
                user_id: Some("alice".to_owned()),
                metadata: Some(json!({ "plan": "pro" })),
                room_patterns: Some(vec!["team:*".to_owned()]),
            }))
        );
        let seen = rx.recv().await.unwrap();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.path, "/ignis/auth");
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        assert_eq!(seen.client_id.as_deref(), Some("client-42"));
        let received: Value = serde_json::from_slice(&seen.body).unwrap();
        assert_eq!(received, data);
    }

    #[tokio::test]
    async fn ok_without_user_id_is_accepted_anonymously() {
        assert_eq!(auth_once(200, "{}").await, Ok(Some(Identity::default())));
        assert_eq!(
            auth_once(200, r#"{"userId":null,"metadata":null}"#).await,
            Ok(Some(Identity::default()))
        );
        assert_eq!(
            auth_once(200, r#"{"metadata":[1]}"#).await,
            Ok(Some(Identity {
                metadata: Some(json!([1])),
                ..Identity::default()
            }))
        );
    }

    #[tokio::test]
    async fn unauthorized_and_forbidden_are_refusals() {
        assert_eq!(auth_once(401, r#"{"error":"nope"}"#).await, Ok(None));
        assert_eq!(auth_once(403, "").await, Ok(None));
    }

    #[tokio::test]
    async fn other_statuses_are_errors() {
        for status in [500, 404, 204, 201, 302, 400] {
            let result = auth_once(status, r#"{"userId":"alice"}"#).await;
            assert!(
                matches!(&result, Err(AuthError::Webhook(msg)) if msg.contains(&status.to_string())),
                "{status}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn malformed_bodies_are_errors() {
        for body in [
            "not json",
            "",
            r#"{"userId":"a""#,
            "[]",
            "null",
            r#""alice""#,
            r#"{"userId":42}"#,
            r#"{"userId":["a"]}"#,
            r#"{"userId":"a","rooms":"x"}"#,
            r#"{"userId":"a","rooms":[1]}"#,
        ] {
            let result = auth_once(200, body).await;
            assert!(
                matches!(result, Err(AuthError::Webhook(_))),
                "{body:?}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn oversized_body_is_an_error() {
        let huge: &'static str = format!(
            r#"{{"userId":"a","metadata":"{}"}}"#,
            "x".repeat(MAX_RESPONSE_BYTES)
        )
        .leak();
        let result = auth_once(200, huge).await;
        assert!(
            matches!(&result, Err(AuthError::Webhook(msg)) if msg.contains("larger")),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        // Accepts connections and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let auth = WebhookAuthenticator::new(format!("http://{addr}/"), Duration::from_millis(300))
            .unwrap();
        let started = Instant::now();
        let result = auth.authenticate(request(json!({ "token": "t" }))).await;
        let elapsed = started.elapsed();
        assert_eq!(result, Err(AuthError::Timeout));
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    #[tokio::test]
    async fn connection_refused_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let result = webhook(format!("http://{addr}/auth"))
            .authenticate(request(json!({ "token": "t" })))
            .await;
        assert!(
            matches!(&result, Err(AuthError::Webhook(msg)) if msg.contains("request failed")),
            "{result:?}"
        );
    }

    #[test]
    fn first_poll_off_runtime_is_pending_then_completes_on_the_control_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (url, _rx) = rt.block_on(serve(200, r#"{"userId":"zed"}"#));
        let auth = webhook(url);

        // What a shard does: one inline poll, off any tokio runtime.
        let mut fut = auth.authenticate(request(json!({ "token": "t" })));
        assert!(poll_now(&mut fut).is_pending());
        // What the control thread does with it.
        let result = rt.block_on(fut);
        assert_eq!(
            result.unwrap().and_then(|id| id.user_id).as_deref(),
            Some("zed")
        );

        // Polled off-runtime twice: an error, not a panic inside tokio.
        let mut fut = auth.authenticate(request(json!({})));
        assert!(poll_now(&mut fut).is_pending());
        assert!(matches!(
            poll_now(&mut fut),
            Poll::Ready(Err(AuthError::Internal(_)))
        ));
    }

    #[test]
    fn config_validation() {
        let t = Duration::from_secs(1);
        assert!(matches!(
            WebhookAuthenticator::new("not a url".to_owned(), t),
            Err(WebhookConfigError::InvalidUrl { .. })
        ));
        assert!(matches!(
            WebhookAuthenticator::new("ftp://example.com/x".to_owned(), t),
            Err(WebhookConfigError::UnsupportedScheme(s)) if s == "ftp"
        ));
        assert!(matches!(
            WebhookAuthenticator::new("http://127.0.0.1/".to_owned(), Duration::ZERO),
            Err(WebhookConfigError::ZeroTimeout)
        ));
        // Built outside any runtime, https included.
        let ok =
            WebhookAuthenticator::new("https://auth.example.com/check?x=1".to_owned(), t).unwrap();
        assert_eq!(ok.url(), "https://auth.example.com/check?x=1");
        assert_eq!(ok.timeout(), t);
        assert!(WebhookAuthenticator::new("http://localhost:8080".to_owned(), t).is_ok());
    }
}
