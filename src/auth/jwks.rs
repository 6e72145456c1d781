//! JWT key sets fetched from a URL (RFC 7517 JWKS, `--jwt-jwks-url`): the
//! fetch, the cache, the refresh rules and the JWK-to-key mapping. The
//! verification itself stays in [`super::jwt`].
//!
//! Decisions:
//! - One background thread (`ignis-jwks`, with its own small tokio runtime)
//!   does every fetch, so at most one request is ever in flight for the
//!   whole process (single-flight), whoever asked for it.
//! - The first fetch happens when the authenticator is built; start waits
//!   for it (at most the timeout). If it fails the server starts anyway:
//!   an ERROR is logged and tokens that need a JWKS key are refused until
//!   a set is fetched (the thread retries every `refresh_min` until one is). A JWKS
//!   server that is down for a moment must not keep the WebSocket server
//!   from starting (or restarting) — and refusing is the safe default.
//! - Verification with a cached key never waits. A token whose `kid` is
//!   not in the cached set triggers a refresh, at most once per
//!   [`JwksConfig::refresh_min`] since the previous fetch of any kind; within
//!   that window such a token is refused at once. Only that refresh makes
//!   an authentication wait (on the control thread, at most the timeout).
//! - Optional periodic refresh ([`JwksConfig::refresh`]); with it on, a
//!   failed fetch is retried after `refresh_min`.
//! - A failed fetch (transport error, timeout, non-200, body over
//!   [`MAX_JWKS_BYTES`], not a JWKS, no usable key) keeps the previous set.
//!   Redirects are not followed.
//! - Keys: `kty` RSA (RS256/384/512, or the PS/RS algorithm its `alg`
//!   names), EC (ES256 on P-256, ES384 on P-384), OKP Ed25519 (EdDSA). A
//!   key's `alg`, when present, is the only algorithm it verifies. Keys with
//!   `use` other than `sig`, of other types or curves, or that do not parse
//!   are skipped (logged), not fatal. Symmetric (`oct`) keys are skipped: a
//!   shared secret published at a URL can be read by whoever reaches it and
//!   then used to mint tokens, and HMAC keys next to public keys re-open
//!   the key-confusion door the rest of this module keeps shut. Use
//!   `--jwt-secret` for HS256.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

/// Largest JWKS response read: real sets are a few KiB.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Default periodic refresh (`--jwt-jwks-refresh-s`).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
/// Default shortest gap between fetches caused by unknown `kid`s
/// (`--jwt-jwks-refresh-min-s`).
pub const DEFAULT_REFRESH_MIN: Duration = Duration::from_secs(60);
/// Default timeout of one fetch (`--jwt-jwks-timeout-ms`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5_000);

/// Where and how often to fetch the key set.
#[derive(Clone, PartialEq, Eq)]
pub struct JwksConfig {
    /// `http://` or `https://` URL serving `{"keys": [...]}`.
    pub url: String,
    /// Periodic refresh; `None`: only on unknown `kid`s.
    pub refresh: Option<Duration>,
    /// Shortest gap between a fetch and the next one an unknown `kid`
    /// may trigger (also the retry interval after a failed fetch).
    pub refresh_min: Duration,
    /// Bound on one whole fetch (connect, request, body).
    pub timeout: Duration,
}

impl JwksConfig {
    /// `url` with the default refresh, refresh limit and timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            refresh: Some(DEFAULT_REFRESH),
            refresh_min: DEFAULT_REFRESH_MIN,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

// Manual so URL credentials never reach a log.
impl fmt::Debug for JwksConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksConfig")
            .field("url", &crate::secrets::redact_url(&self.url))
            .field("refresh", &self.refresh)
            .field("refresh_min", &self.refresh_min)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One verification key with the algorithms it may verify.
pub(crate) struct VerifyKey {
    /// `kid` of a JWKS key; static keys have none.
    pub kid: Option<String>,
    /// The only header `alg`s this key is tried for.
    pub algs: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// A fetched key set.
#[derive(Default)]
pub(crate) struct KeySet {
    pub keys: Vec<VerifyKey>,
    by_kid: HashMap<String, usize>,
}

// Manual: the key material stays out of logs.
impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.kid, &k.algs)))
            .finish()
    }
}

impl KeySet {
    fn new(keys: Vec<VerifyKey>) -> Self {
        let mut by_kid = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if let Some(kid) = &k.kid {
                // The first key with a given kid wins.
                by_kid.entry(kid.clone()).or_insert(i);
            }
        }
        Self { keys, by_kid }
    }

    /// The key with this `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&VerifyKey> {
        self.by_kid.get(kid).map(|&i| &self.keys[i])
    }
}

struct RefreshState {
    /// Start of the last fetch (any kind).
    last_attempt: Option<Instant>,
    in_flight: bool,
}

struct Shared {
    set: RwLock<Arc<KeySet>>,
    state: Mutex<RefreshState>,
    /// Asks the fetch thread for a fetch; dropping it stops the thread.
    requests: mpsc::Sender<()>,
    /// Bumped after every fetch attempt, successful or not.
    done: watch::Receiver<u64>,
    refresh_min: Duration,
    timeout: Duration,
    fetches: std::sync::atomic::AtomicU64,
}

/// The cached key set and its fetcher; cheap to clone.
#[derive(Clone)]
pub(crate) struct Jwks {
    shared: Arc<Shared>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwks")
            .field("keys", &self.current().keys.len())
            .finish_non_exhaustive()
    }
}

/// Why the JWKS fetcher could not be set up.
pub(crate) fn config_error(msg: impl Into<String>) -> super::JwtConfigError {
    super::JwtConfigError::Jwks(msg.into())
}

impl Jwks {
    /// Validates the config, starts the fetch thread and waits for the
    /// first fetch (at most the timeout); see the module docs.
    pub fn start(config: &JwksConfig) -> Result<Self, super::JwtConfigError> {
        let shown = crate::secrets::redact_url(&config.url);
        let url = Url::parse(&config.url)
            .map_err(|e| config_error(format!("invalid JWKS URL {shown:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(config_error(format!(
                "JWKS URL {shown:?} must be http:// or https:// with a host"
            )));
        }
        if config.timeout.is_zero() {
            return Err(config_error("the JWKS timeout must be > 0"));
        }
        if config.refresh_min.is_zero() {
            return Err(config_error(
                "the JWKS minimum refresh interval must be > 0",
            ));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .user_agent(concat!("ignis-ws/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| config_error(format!("could not build the JWKS HTTP client: {e}")))?;
        let (req_tx, req_rx) = mpsc::channel(1);
        let (done_tx, done_rx) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            set: RwLock::new(Arc::new(KeySet::default())),
            state: Mutex::new(RefreshState {
                last_attempt: Some(Instant::now()),
                in_flight: true,
            }),
            requests: req_tx,
            done: done_rx,
            refresh_min: config.refresh_min,
            timeout: config.timeout,
            fetches: std::sync::atomic::AtomicU64::new(0),
        });
        let fetcher = Fetcher {
            shared: Arc::downgrade(&shared),
            client,
            url,
            shown: shown.clone(),
            refresh: config.refresh.filter(|d| !d.is_zero()),
            refresh_min: config.refresh_min,
            timeout: config.timeout,
            done: done_tx,
        };
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ignis-jwks".into())
            .spawn(move || fetcher.run(req_rx, first_tx))
            .map_err(|e| config_error(format!("could not start the JWKS thread: {e}")))?;
        match first_rx.recv_timeout(config.timeout + Duration::from_secs(1)) {
            Ok(Ok(n)) => tracing::info!(url = %shown, keys = n, "JWKS fetched"),
            Ok(Err(e)) => tracing::error!(
                url = %shown,
                error = %e,
                "--jwt-jwks-url: the first JWKS fetch failed; starting anyway, tokens that need \
                 a JWKS key are refused until a set is fetched (retried every \
                 --jwt-jwks-refresh-min-s)"
            ),
            Err(_) => tracing::error!(
                url = %shown,
                "--jwt-jwks-url: the first JWKS fetch did not finish in time; starting anyway, \
                 tokens that need a JWKS key are refused until a set is fetched"
            ),
        }
        Ok(Self { shared })
    }

    /// The cached set (never waits for a fetch).
    pub fn current(&self) -> Arc<KeySet> {
        match self.shared.set.read() {
            Ok(set) => Arc::clone(&set),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Fetch attempts so far (for tests).
    pub fn fetches(&self) -> u64 {
        self.shared
            .fetches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// For a token whose `kid` is not cached: `None` if no fetch may start
    /// now (within `refresh_min` of the last one); otherwise a future that
    /// resolves when the fetch in flight (started here or joined) is over.
    pub fn refresh(&self) -> Option<RefreshWait> {
        let mut rx = self.shared.done.clone();
        let seen = *rx.borrow_and_update();
        let mut state = match self.shared.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !state.in_flight {
            if state
                .last_attempt
                .is_some_and(|t| t.elapsed() < self.shared.refresh_min)
            {
                return None;
            }
            // The channel holds one request; with `in_flight` guarding it,
            // it is never full, and closed only if the thread died.
            self.shared.requests.try_send(()).ok()?;
            state.in_flight = true;
            state.last_attempt = Some(Instant::now());
        }
        Some(RefreshWait {
            rx,
            seen,
            // The fetch is bounded by the timeout; the margin covers the
            // queueing between threads.
            limit: self.shared.timeout + Duration::from_secs(1),
        })
    }
}

/// Waits for the fetch in flight to finish; see [`Jwks::refresh`].
pub(crate) struct RefreshWait {
    rx: watch::Receiver<u64>,
    seen: u64,
    limit: Duration,
}

impl RefreshWait {
    /// `true` once the fetch is over (whatever its outcome); `false` if it
    /// could not be waited for.
    pub async fn wait(mut self) -> bool {
        if !OnTokio::default().await {
            return false;
        }
        let seen = self.seen;
        matches!(
            tokio::time::timeout(self.limit, self.rx.wait_for(|g| *g != seen)).await,
            Ok(Ok(_))
        )
    }
}

struct Fetcher {
    shared: Weak<Shared>,
    client: reqwest::Client,
    url: Url,
    shown: String,
    refresh: Option<Duration>,
    refresh_min: Duration,
    timeout: Duration,
    done: watch::Sender<u64>,
}

impl Fetcher {
    fn run(
        self,
        mut requests: mpsc::Receiver<()>,
        first: std::sync::mpsc::Sender<Result<usize, String>>,
    ) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = first.send(Err(format!("no runtime for the JWKS thread: {e}")));
                return;
            }
        };
        rt.block_on(async move {
            let result = self.fetch_and_install().await;
            let mut ok = result.is_ok();
            let _ = first.send(result);
            loop {
                // After a failure, retry after `refresh_min` while there is
                // no set at all, or when periodic refreshes are on (sooner
                // than the next one); otherwise the next unknown kid will.
                let next = if ok || !(self.refresh.is_some() || self.has_no_set()) {
                    self.refresh
                } else {
                    Some(self.refresh_min)
                };
                let timer = async {
                    match next {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = requests.recv() => if r.is_none() {
                        break; // the authenticator is gone
                    },
                    () = timer => {
                        let Some(shared) = self.shared.upgrade() else { break };
                        let mut state = match shared.state.lock() {
                            Ok(s) => s,
                            Err(p) => p.into_inner(),
                        };
                        if state.in_flight {
                            continue;
                        }
                        state.in_flight = true;
                        state.last_attempt = Some(Instant::now());
                    }
                }
                match self.fetch_and_install().await {
                    Ok(n) => {
                        tracing::debug!(url = %self.shown, keys = n, "JWKS refreshed");
                        ok = true;
                    }
                    Err(e) => {
                        tracing::warn!(
                            url = %self.shown,
                            error = %e,
                            "JWKS fetch failed; keeping the previous key set"
                        );
                        ok = false;
                    }
                }
            }
        });
    }

    fn has_no_set(&self) -> bool {
        self.shared
            .upgrade()
            .is_some_and(|shared| match shared.set.read() {
                Ok(set) => set.keys.is_empty(),
                Err(p) => p.into_inner().keys.is_empty(),
            })
    }

    /// One fetch; installs the set on success. Always clears `in_flight`
    /// and announces the end of the attempt.
    async fn fetch_and_install(&self) -> Result<usize, String> {
        let result = match tokio::time::timeout(self.timeout, self.fetch()).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        }
        .and_then(|body| parse_jwks(&body));
        if let Some(shared) = self.shared.upgrade() {
            shared
                .fetches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut state = match shared.state.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            let n = result.map(|set| {
                let n = set.keys.len();
                let mut slot = match shared.set.write() {
                    Ok(s) => s,
                    Err(p) => p.into_inner(),
                };
                *slot = Arc::new(set);
                n
            });
            state.in_flight = false;
            drop(state);
            self.done.send_modify(|g| *g = g.wrapping_add(1));
            n
        } else {
            result.map(|set| set.keys.len())
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| describe_reqwest(&e))?;
        if response.status() != StatusCode::OK {
            return Err(format!("unexpected status {}", response.status()));
        }
        let too_large = || format!("response larger than {MAX_JWKS_BYTES} bytes");
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe_reqwest(&e))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The error and its causes, without the URL (it may carry credentials).
fn describe_reqwest(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".to_owned();
    }
    let mut text = String::from("request failed");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Parses a JWKS body into the keys it holds that can verify signatures;
/// see the module docs for what is skipped. No usable key is an error (so
/// the previous set is kept).
pub(crate) fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("response is not JSON: {e}"))?;
    let Some(Value::Array(entries)) = value.get("keys") else {
        return Err("response is not a JWKS (no \"keys\" array)".to_owned());
    };
    let mut keys = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match key_from_jwk(entry) {
            Ok(k) => keys.push(k),
            Err(why) => {
                let kid = entry.get("kid").and_then(Value::as_str).unwrap_or("");
                tracing::warn!(index = i, kid, reason = why, "JWKS key skipped");
            }
        }
    }
    if keys.is_empty() {
        return Err("the JWKS holds no usable signature key".to_owned());
    }
    Ok(KeySet::new(keys))
}

fn key_from_jwk(entry: &Value) -> Result<VerifyKey, &'static str> {
    if entry.get("kty").and_then(Value::as_str) == Some("oct") {
        return Err("symmetric (oct) keys are not accepted from a URL");
    }
    let jwk: Jwk =
        serde_json::from_value(entry.clone()).map_err(|_| "not a JWK this server understands")?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("not a signature key (use)"),
    }
    let named = jwk.common.key_algorithm;
    let algs = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => match named {
            None => vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
            Some(KeyAlgorithm::RS256) => vec![Algorithm::RS256],
            Some(KeyAlgorithm::RS384) => vec![Algorithm::RS384],
            Some(KeyAlgorithm::RS512) => vec![Algorithm::RS512],
            Some(KeyAlgorithm::PS256) => vec![Algorithm::PS256],
            Some(KeyAlgorithm::PS384) => vec![Algorithm::PS384],
            Some(KeyAlgorithm::PS512) => vec![Algorithm::PS512],
            Some(_) => return Err("alg does not fit an RSA signature key"),
        },
        AlgorithmParameters::EllipticCurve(p) => {
            let alg = match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return Err("unsupported EC curve (P-256 and P-384 only)"),
            };
            match named {
                None => {}
                Some(KeyAlgorithm::ES256) if alg == Algorithm::ES256 => {}
                Some(KeyAlgorithm::ES384) if alg == Algorithm::ES384 => {}
                Some(_) => return Err("alg does not fit the EC key's curve"),
            }
            vec![alg]
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err("unsupported OKP curve (Ed25519 only)");
            }
            match named {
                None | Some(KeyAlgorithm::EdDSA) => {}
                Some(_) => return Err("alg does not fit an Ed25519 key"),
            }
            vec![Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are not accepted from a URL");
        }
        _ => return Err("unsupported key type"),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "malformed key material")?;
    Ok(VerifyKey {
        kid: jwk.common.key_id,
        algs,
        key,
    })
}

/// Resolves `true` once polled inside a tokio runtime. Polled outside one
/// it returns `Pending` once (the shard's cue to move the future to the
/// control thread), then `false` instead of panicking inside tokio.
#[derive(Default)]
struct OnTokio {
    polled_outside: bool,
}

impl Future for OnTokio {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Poll::Ready(true);
        }
        if self.polled_outside {
            return Poll::Ready(false);
        }
        self.polled_outside = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jwk_types_and_algorithms() {
        let rsa_n = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
        let set = parse_jwks(
            json!({"keys": [
                {"kty": "RSA", "kid": "r", "n": rsa_n, "e": "AQAB"},
                {"kty": "RSA", "kid": "p", "alg": "PS256", "use": "sig", "n": rsa_n, "e": "AQAB"},
                {"kty": "RSA", "kid": "enc", "use": "enc", "n": rsa_n, "e": "AQAB"},
                {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": rsa_n, "e": "AQAB"},
                {"kty": "oct", "kid": "h", "alg": "HS256", "k": "c2VjcmV0"},
                {"kty": "EC", "kid": "e", "crv": "P-256",
                 "x": "AdzIdNLzks6qDsi1HzWYp8ke__Wu6iH1vWxWvuziEC0",
                 "y": "C-qEB-d2J1hADxBwCz8_RoapeFizmtlHXT9NF8KKHdo"},
                {"kty": "EC", "kid": "bad-alg", "alg": "ES384", "crv": "P-256",
                 "x": "AdzIdNLzks6qDsi1HzWYp8ke__Wu6iH1vWxWvuziEC0",
                 "y": "C-qEB-d2J1hADxBwCz8_RoapeFizmtlHXT9NF8KKHdo"},
                {"kty": "OKP", "kid": "ed", "crv": "Ed25519",
                 "x": "7FVBdnz8ptuErtuzpN-giwD6bi42oeOIy8LpWhCQi-8"},
                {"kty": "XYZ", "kid": "weird"},
                "not even an object"
            ]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let algs = |kid: &str| set.by_kid(kid).map(|k| k.algs.clone());
        assert_eq!(
            algs("r"),
            Some(vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512])
        );
        assert_eq!(algs("p"), Some(vec![Algorithm::PS256]));
        assert_eq!(algs("e"), Some(vec![Algorithm::ES256]));
        assert_eq!(algs("ed"), Some(vec![Algorithm::EdDSA]));
        for skipped in ["enc", "oaep", "h", "bad-alg", "weird"] {
            assert!(set.by_kid(skipped).is_none(), "{skipped}");
        }
        assert_eq!(set.keys.len(), 4);
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert!(parse_jwks(b"not json").is_err());
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(br#"{"keys": {}}"#).is_err());
        assert!(parse_jwks(br#"{"keys": []}"#).is_err());
        let e = parse_jwks(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap_err();
        assert!(e.contains("no usable"), "{e}");
    }

    #[test]
    fn config_is_checked_and_debug_hides_credentials() {
        for url in ["ftp://x/jwks", "not a url", "http://"] {
            assert!(Jwks::start(&JwksConfig::new(url)).is_err(), "{url}");
        }
        let mut c = JwksConfig::new("http://127.0.0.1:9/jwks");
        c.timeout = Duration::ZERO;
        assert!(Jwks::start(&c).is_err());
        let shown = format!(
            "{:?}",
            JwksConfig::new("https://u:hunter2@idp.example/jwks")
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
