//! JWT authentication: verifies the `token` of an `authenticate` event
//! against the configured keys — an HMAC secret (HS256), one or more static
//! public keys (RS256 or ES256, for rotation), and/or a JWKS fetched from a
//! URL ([`super::jwks`]) — and turns its claims into an [`Identity`]. Owns
//! key loading (including telling RSA from EC P-256 public keys apart in
//! PEM files), key selection and the claim-to-identity mapping.
//!
//! Decisions:
//! - Every key fixes the algorithms it verifies (a static key exactly one,
//!   the one implied by the key; a JWKS key the one its `alg` names or its
//!   type and curve imply). A token is only tried against keys that accept
//!   its header's `alg`; a token whose `alg` no key accepts (another HMAC
//!   size, RS256 against an HMAC secret, `none`) is refused. This closes the
//!   classic key-confusion attack.
//! - Key selection: a token whose `kid` names a JWKS key is verified with
//!   that key only. Otherwise the static keys (which have no `kid`) of its
//!   `alg` are tried in order, then — for a token without `kid` — the JWKS
//!   keys of its `alg`. A `kid` that is in neither may trigger a JWKS
//!   refresh (rate-limited, see [`super::jwks`]); that is the only case
//!   where verification waits.
//! - `exp` is required unless [`JwtConfig::require_exp`] is off (a token
//!   without one would be valid forever); `exp` and `nbf` are checked when
//!   present, with [`DEFAULT_LEEWAY_S`] (0) seconds of leeway unless
//!   configured.
//! - `aud` (RFC 7519 §4.1.3): with no audience configured, a token that
//!   carries one is refused (it was issued for some other service); with
//!   audiences configured, `aud` (a string or an array of strings) must name
//!   one of them, and a token without `aud` is refused.
//! - `iss`: with issuers configured it must be a string equal to one of them
//!   (missing: refused); without, it is not looked at.
//! - With [`JwtConfig::max_age_s`], `iat` is required and a token issued
//!   more than that long ago (or in the future), give or take the leeway, is
//!   refused.
//! - HMAC secrets shorter than [`MIN_HS256_SECRET_LEN`] bytes are refused at
//!   start (RFC 7518 §3.2: the key must be at least as long as the hash).
//! - Claims are only looked at after the signature verified.
//! - Every verification failure is a refusal (`Ok(None)`), never an error: the
//!   token came from the client, so a bad one is the client's fault.
//! - Verification is pure CPU work, so the returned future is ready and runs
//!   inline on the shard — except for the unknown-`kid` JWKS refresh, which
//!   finishes on the control thread.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks::{Jwks, JwksConfig, VerifyKey};
use super::{AuthRequest, AuthResult, Authenticator, BoxFuture, Identity, ready};

/// Default clock-skew allowance for `exp` / `nbf`. Zero: a token is valid
/// exactly within its stated window; deployments whose issuers' clocks drift
/// should raise [`JwtConfig::leeway_s`].
pub const DEFAULT_LEEWAY_S: u64 = 0;

/// Shortest accepted HS256 secret, in bytes (RFC 7518 §3.2: a key of the
/// same size as the hash output, 256 bits).
pub const MIN_HS256_SECRET_LEN: usize = 32;

/// Largest accepted leeway (one day). Anything bigger defeats `exp` and would
/// overflow the timestamp arithmetic inside the verifier.
pub const MAX_LEEWAY_S: u64 = 86_400;

/// The verification key; it also fixes the only accepted algorithm.
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// Shared HMAC secret (raw bytes, not base64).
    Hs256(Vec<u8>),
    /// RSA public key, PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`).
    Rs256Pem(Vec<u8>),
    /// EC P-256 public key, PEM (`PUBLIC KEY`).
    Es256Pem(Vec<u8>),
}

// Manual so that a logged config never shows the HMAC secret.
impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hs256(s) => write!(f, "Hs256(<{} secret bytes>)", s.len()),
            Self::Rs256Pem(p) => write!(f, "Rs256Pem(<{} PEM bytes>)", p.len()),
            Self::Es256Pem(p) => write!(f, "Es256Pem(<{} PEM bytes>)", p.len()),
        }
    }
}

impl JwtKey {
    /// Builds an RS256 or ES256 key from a public-key PEM, detecting which from
    /// the key itself. Fails on private keys, certificates, EC curves other than
    /// P-256, and other key types (Ed25519, DSA, ...).
    pub fn from_public_key_pem(pem: impl Into<Vec<u8>>) -> Result<Self, JwtConfigError> {
        let pem = pem.into();
        match classify_public_pem(&pem)? {
            PemKeyKind::Rsa => Ok(Self::Rs256Pem(pem)),
            PemKeyKind::EcP256 => Ok(Self::Es256Pem(pem)),
        }
    }

    /// The single algorithm tokens must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Hs256(_) => Algorithm::HS256,
            Self::Rs256Pem(_) => Algorithm::RS256,
            Self::Es256Pem(_) => Algorithm::ES256,
        }
    }
}

/// Configuration of a [`JwtAuthenticator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// Static verification keys, each fixing its algorithm; several for
    /// rotation (a token verifies if any key of its `alg` verifies it).
    pub keys: Vec<JwtKey>,
    /// A key set fetched from a URL, besides or instead of `keys`.
    pub jwks: Option<JwksConfig>,
    /// Clock-skew allowance in seconds applied to both `exp` and `nbf`; at most
    /// [`MAX_LEEWAY_S`].
    pub leeway_s: u64,
    /// Accepted audiences: a token's `aud` must name one of them. Empty: a
    /// token carrying any `aud` is refused.
    pub audience: Vec<String>,
    /// Accepted issuers: a token's `iss` must be one of them. Empty: `iss` is
    /// not checked.
    pub issuer: Vec<String>,
    /// Refuse tokens without `exp` (default true).
    pub require_exp: bool,
    /// When set, refuse tokens without `iat` or issued more than this many
    /// seconds ago.
    pub max_age_s: Option<u64>,
}

impl JwtConfig {
    /// A config with [`DEFAULT_LEEWAY_S`], `exp` required, no accepted
    /// audience (tokens with `aud` are refused), no issuer check, no max age.
    pub fn new(key: JwtKey) -> Self {
        Self::with_keys(vec![key])
    }

    /// [`JwtConfig::new`] with several static keys (rotation).
    pub fn with_keys(keys: Vec<JwtKey>) -> Self {
        Self {
            keys,
            jwks: None,
            leeway_s: DEFAULT_LEEWAY_S,
            audience: Vec::new(),
            issuer: Vec::new(),
            require_exp: true,
            max_age_s: None,
        }
    }
}

/// Why a [`JwtConfig`] could not be turned into a verifier.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    /// An empty HMAC secret would let anyone forge tokens.
    #[error("the HS256 secret is empty")]
    EmptySecret,
    /// An HMAC secret short enough to brute-force offline from one token.
    #[error(
        "the HS256 secret is {0} bytes; at least {MIN_HS256_SECRET_LEN} are required (RFC 7518 §3.2)"
    )]
    ShortSecret(usize),
    /// A zero `max_age_s` would refuse every token.
    #[error("the JWT max age must be > 0 seconds")]
    ZeroMaxAge,
    /// The key bytes are not a PEM document.
    #[error("not a PEM document: {0}")]
    NotPem(&'static str),
    /// A private key was given where the public key belongs.
    #[error(
        "the PEM holds a private key ({0}); configure the public key instead (openssl pkey -pubout)"
    )]
    PrivateKey(String),
    /// A PEM of some other kind (certificate, parameters, ...).
    #[error("unsupported PEM label {0:?}: expected PUBLIC KEY or RSA PUBLIC KEY")]
    UnsupportedPemLabel(String),
    /// The PEM body is not a well-formed public key.
    #[error("malformed public key: {0}")]
    MalformedKey(&'static str),
    /// A public key of a type other than RSA or EC.
    #[error("unsupported public key type: only RSA (RS256) and EC P-256 (ES256) are supported")]
    UnsupportedKeyType,
    /// An EC key on a curve other than P-256.
    #[error("unsupported EC curve: ES256 needs a P-256 (prime256v1) key")]
    UnsupportedCurve,
    /// `Rs256Pem` holding an EC key or the reverse.
    #[error("key type mismatch: configured {expected} but the PEM holds an {found} key")]
    KeyTypeMismatch {
        /// What the config asked for.
        expected: &'static str,
        /// What the PEM holds.
        found: &'static str,
    },
    /// See [`MAX_LEEWAY_S`].
    #[error("JWT leeway of {0}s exceeds the maximum of {MAX_LEEWAY_S}s")]
    LeewayTooLarge(u64),
    /// The JWT library rejected the key.
    #[error("invalid JWT key: {0}")]
    Key(#[source] jsonwebtoken::errors::Error),
    /// Neither a key nor a JWKS URL.
    #[error("no JWT key: configure a secret, a public key or a JWKS URL")]
    NoKey,
    /// The JWKS URL or its settings are unusable.
    #[error("{0}")]
    Jwks(String),
}

/// Verifies `data.token` as a JWT; see the module docs for the rules.
/// Cloning is cheap (clones share keys and the JWKS cache).
#[derive(Clone)]
pub struct JwtAuthenticator {
    inner: Arc<Verifier>,
}

struct Verifier {
    /// Static keys, in configuration order.
    keys: Vec<VerifyKey>,
    jwks: Option<Jwks>,
    /// One validation per supported algorithm (`algorithms` pinned to it).
    validations: Vec<(Algorithm, Validation)>,
    audience: Vec<String>,
    issuer: Vec<String>,
    max_age_s: Option<u64>,
    leeway_s: u64,
    require_exp: bool,
}

/// Every algorithm a key may verify.
const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

// Manual so the key material never reaches a log.
impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.inner;
        f.debug_struct("JwtAuthenticator")
            .field("algorithms", &self.algorithms())
            .field("jwks", &v.jwks)
            .field("leeway_s", &v.leeway_s)
            .field("audience", &v.audience)
            .field("issuer", &v.issuer)
            .field("require_exp", &v.require_exp)
            .field("max_age_s", &v.max_age_s)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused; only static text, so the token never reaches logs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    MissingToken,
    TokenNotString,
    SubNotString,
    Invalid(Cow<'static, str>),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingToken => f.write_str("no token in authenticate data"),
            Self::TokenNotString => f.write_str("token is not a string"),
            Self::SubNotString => f.write_str("sub claim is not a string"),
            Self::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl JwtAuthenticator {
    /// Loads the keys, fixes the validation rules and, with a JWKS URL,
    /// starts its fetcher and waits for the first fetch (see
    /// [`super::jwks`]).
    pub fn new(config: JwtConfig) -> Result<Self, JwtConfigError> {
        if config.leeway_s > MAX_LEEWAY_S {
            return Err(JwtConfigError::LeewayTooLarge(config.leeway_s));
        }
        if config.max_age_s == Some(0) {
            return Err(JwtConfigError::ZeroMaxAge);
        }
        if config.keys.is_empty() && config.jwks.is_none() {
            return Err(JwtConfigError::NoKey);
        }
        let mut keys = Vec::with_capacity(config.keys.len());
        for key in &config.keys {
            let decoding = match key {
                JwtKey::Hs256(secret) => {
                    if secret.is_empty() {
                        return Err(JwtConfigError::EmptySecret);
                    }
                    if secret.len() < MIN_HS256_SECRET_LEN {
                        return Err(JwtConfigError::ShortSecret(secret.len()));
                    }
                    DecodingKey::from_secret(secret)
                }
                JwtKey::Rs256Pem(pem) => {
                    expect_kind(pem, PemKeyKind::Rsa)?;
                    DecodingKey::from_rsa_pem(pem).map_err(JwtConfigError::Key)?
                }
                JwtKey::Es256Pem(pem) => {
                    expect_kind(pem, PemKeyKind::EcP256)?;
                    DecodingKey::from_ec_pem(pem).map_err(JwtConfigError::Key)?
                }
            };
            keys.push(VerifyKey {
                kid: None,
                algs: vec![key.algorithm()],
                key: decoding,
            });
        }

        let validations = ALGORITHMS
            .iter()
            .map(|&alg| {
                // `Validation::new` pins `algorithms` to exactly this one.
                let mut validation = Validation::new(alg);
                validation.leeway = config.leeway_s;
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.required_spec_claims.clear();
                if config.require_exp {
                    validation.required_spec_claims.insert("exp".to_owned());
                }
                // `aud` and `iss` are checked by `check_claims`, which also
                // refuses malformed values the library would skip.
                validation.validate_aud = false;
                (alg, validation)
            })
            .collect();
        // Last: it may wait for the first fetch.
        let jwks = config.jwks.as_ref().map(Jwks::start).transpose()?;

        Ok(Self {
            inner: Arc::new(Verifier {
                keys,
                jwks,
                validations,
                audience: config.audience,
                issuer: config.issuer,
                max_age_s: config.max_age_s,
                leeway_s: config.leeway_s,
                require_exp: config.require_exp,
            }),
        })
    }

    /// The algorithms the static keys accept, in key order without repeats
    /// (JWKS keys come and go).
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut out = Vec::new();
        for k in &self.inner.keys {
            for a in &k.algs {
                if !out.contains(a) {
                    out.push(*a);
                }
            }
        }
        out
    }

    /// JWKS fetch attempts so far (0 without a JWKS URL).
    pub fn jwks_fetches(&self) -> u64 {
        self.inner.jwks.as_ref().map_or(0, Jwks::fetches)
    }

    /// Synchronous core of [`Authenticator::authenticate`]: `Some` for a valid
    /// token, `None` (logged at debug with the reason) otherwise. A token
    /// whose `kid` would need a JWKS refresh is refused here.
    pub fn verify(&self, client_id: &str, data: &Value) -> Option<Identity> {
        log_verdict(client_id, self.check(data))
    }

    fn check(&self, data: &Value) -> Result<Identity, Refusal> {
        match self.inner.check_inline(token_of(data)?) {
            Step::Done(result) => result,
            Step::Refresh => Err(Refusal::Invalid(Cow::Borrowed(
                "unknown kid (not in the cached JWKS)",
            ))),
        }
    }
}

fn token_of(data: &Value) -> Result<&str, Refusal> {
    match data.get("token") {
        None | Some(Value::Null) => Err(Refusal::MissingToken),
        Some(Value::String(t)) => Ok(t),
        Some(_) => Err(Refusal::TokenNotString),
    }
}

fn log_verdict(client_id: &str, result: Result<Identity, Refusal>) -> Option<Identity> {
    match result {
        Ok(identity) => Some(identity),
        Err(reason) => {
            tracing::debug!(client_id, %reason, "JWT authentication refused");
            None
        }
    }
}

/// What inline verification came to.
enum Step {
    Done(Result<Identity, Refusal>),
    /// The token's `kid` is in no cached key: a JWKS refresh may help.
    Refresh,
}

/// What trying a list of keys came to.
enum Tried {
    /// No key accepts the token's `alg`.
    NoKey,
    /// Some did, none verified the signature.
    BadSignature,
    Done(Result<Identity, Refusal>),
}

impl Verifier {
    fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }

    fn check_inline(&self, token: &str) -> Step {
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            // Also `alg: none` and algorithms the library does not know.
            Err(e) => return Step::Done(Err(Refusal::Invalid(describe(e.kind())))),
        };
        let alg = header.alg;
        let set = self.jwks.as_ref().map(Jwks::current);
        if let (Some(set), Some(kid)) = (&set, &header.kid)
            && let Some(key) = set.by_kid(kid)
        {
            return Step::Done(self.finish(self.try_keys(token, alg, std::iter::once(key))));
        }
        let mut tried = self.try_keys(token, alg, self.keys.iter());
        if matches!(tried, Tried::Done(_)) {
            return Step::Done(self.finish(tried));
        }
        if let Some(set) = &set {
            if header.kid.is_some() {
                return Step::Refresh;
            }
            let from_set = self.try_keys(token, alg, set.keys.iter());
            if !matches!(from_set, Tried::NoKey) {
                tried = from_set;
            }
        }
        Step::Done(self.finish(tried))
    }

    /// After a JWKS refresh: the key named by `kid`, if the set now has it.
    fn check_after_refresh(&self, token: &str) -> Result<Identity, Refusal> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| Refusal::Invalid(describe(e.kind())))?;
        let set = self.jwks.as_ref().map(Jwks::current);
        match (&set, &header.kid) {
            (Some(set), Some(kid)) => match set.by_kid(kid) {
                Some(key) => self.finish(self.try_keys(token, header.alg, std::iter::once(key))),
                None => Err(Refusal::Invalid(Cow::Borrowed(
                    "unknown kid (not in the JWKS after a refresh)",
                ))),
            },
            _ => Err(Refusal::Invalid(Cow::Borrowed("unknown kid"))),
        }
    }

    fn finish(&self, tried: Tried) -> Result<Identity, Refusal> {
        match tried {
            Tried::NoKey => Err(Refusal::Invalid(Cow::Borrowed("algorithm not accepted"))),
            Tried::BadSignature => Err(Refusal::Invalid(Cow::Borrowed("bad signature"))),
            Tried::Done(result) => result,
        }
    }

    /// Tries every key of `keys` that accepts `alg`, in order, until one
    /// verifies the signature; the claims are then checked with that key's
    /// verdict.
    fn try_keys<'a>(
        &self,
        token: &str,
        alg: Algorithm,
        keys: impl Iterator<Item = &'a VerifyKey>,
    ) -> Tried {
        let Some(validation) = self.validation(alg) else {
            return Tried::NoKey;
        };
        let mut tried = Tried::NoKey;
        for key in keys.filter(|k| k.algs.contains(&alg)) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return Tried::Done(self.accept(data.claims)),
                // This key did not sign it (or cannot verify it): next one.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::InvalidSignature
                            | ErrorKind::InvalidAlgorithm
                            | ErrorKind::InvalidKeyFormat
                            | ErrorKind::InvalidRsaKey(_)
                            | ErrorKind::InvalidEcdsaKey
                    ) =>
                {
                    tried = Tried::BadSignature;
                }
                // Malformed, or signed by this key but expired, not yet
                // valid, ...: the same for every key.
                Err(e) => return Tried::Done(Err(Refusal::Invalid(describe(e.kind())))),
            }
        }
        tried
    }

    fn accept(&self, claims: Map<String, Value>) -> Result<Identity, Refusal> {
        self.check_claims(&claims, jsonwebtoken::get_current_timestamp())
            .map_err(|r| Refusal::Invalid(Cow::Borrowed(r)))?;
        identity_from_claims(claims)
    }

    /// The `aud`, `iss` and `iat` rules (module docs), on claims whose
    /// signature has been verified. `now` is Unix seconds.
    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<(), &'static str> {
        match claims.get("aud").filter(|v| !v.is_null()) {
            None if self.audience.is_empty() => {}
            None => return Err("missing required claim aud (--jwt-audience is set)"),
            Some(_) if self.audience.is_empty() => {
                return Err("token has an aud claim but no --jwt-audience is configured");
            }
            Some(Value::String(aud)) => {
                if !self.audience.contains(aud) {
                    return Err("audience mismatch (aud)");
                }
            }
            Some(Value::Array(items)) => {
                if !items.iter().all(Value::is_string) {
                    return Err("malformed claim aud");
                }
                if !items
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.audience.iter().any(|ok| ok == a))
                {
                    return Err("audience mismatch (aud)");
                }
            }
            Some(_) => return Err("malformed claim aud"),
        }
        if !self.issuer.is_empty() {
            match claims.get("iss") {
                None | Some(Value::Null) => {
                    return Err("missing required claim iss (--jwt-issuer is set)");
                }
                Some(Value::String(iss)) => {
                    if !self.issuer.contains(iss) {
                        return Err("issuer mismatch (iss)");
                    }
                }
                Some(_) => return Err("malformed claim iss"),
            }
        }
        if let Some(max_age) = self.max_age_s {
            let leeway = self.leeway_s;
            let iat = match claims.get("iat") {
                None | Some(Value::Null) => {
                    return Err("missing required claim iat (--jwt-max-age-s is set)");
                }
                Some(v) => match v.as_u64().or_else(|| {
                    // A fractional NumericDate counts from its whole second.
                    v.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e19)
                        .map(|f| f as u64)
                }) {
                    Some(iat) => iat,
                    None => return Err("malformed claim iat"),
                },
            };
            if iat > now.saturating_add(leeway) {
                return Err("token issued in the future (iat)");
            }
            if now > iat.saturating_add(max_age).saturating_add(leeway) {
                return Err("token too old (iat + --jwt-max-age-s)");
            }
        }
        Ok(())
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, req: AuthRequest) -> BoxFuture<AuthResult> {
        let token = match token_of(&req.data) {
            Ok(t) => t,
            Err(r) => return ready(Ok(log_verdict(&req.client_id, Err(r)))),
        };
        let refresh = match self.inner.check_inline(token) {
            Step::Done(result) => return ready(Ok(log_verdict(&req.client_id, result))),
            Step::Refresh => self.inner.jwks.as_ref().and_then(Jwks::refresh),
        };
        let Some(wait) = refresh else {
            return ready(Ok(log_verdict(
                &req.client_id,
                Err(Refusal::Invalid(Cow::Borrowed(
                    "unknown kid; the JWKS was fetched less than --jwt-jwks-refresh-min-s ago",
                ))),
            )));
        };
        let token = token.to_owned();
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let result = if wait.wait().await {
                inner.check_after_refresh(&token)
            } else {
                Err(Refusal::Invalid(Cow::Borrowed(
                    "unknown kid; the JWKS refresh did not finish in time",
                )))
            };
            Ok(log_verdict(&req.client_id, result))
        })
    }
}

fn identity_from_claims(mut claims: Map<String, Value>) -> Result<Identity, Refusal> {
    let user_id = match claims.remove("sub") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        // RFC 7519 makes `sub` a string; silently treating a numeric one as
        // "anonymous" would hand a real user an identity-less session.
        Some(_) => return Err(Refusal::SubNotString),
    };
    let metadata = claims.remove("meta").filter(|v| !v.is_null());
    let room_patterns = match claims.remove("rooms") {
        Some(Value::Array(items)) => Some(
            items
                .into_iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
        ),
        // Anything else grants nothing extra; not worth refusing the login.
        _ => None,
    };
    Ok(Identity {
        user_id,
        metadata,
        room_patterns,
    })
}

/// A log-safe reason for a verification failure (never echoes claim text).
fn describe(kind: &ErrorKind) -> Cow<'static, str> {
    Cow::Borrowed(match kind {
        ErrorKind::InvalidToken => "malformed token",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::ExpiredSignature => "token expired (exp)",
        ErrorKind::ImmatureSignature => "token not yet valid (nbf)",
        ErrorKind::InvalidAlgorithm => "algorithm not accepted",
        ErrorKind::InvalidIssuer => "issuer mismatch",
        ErrorKind::InvalidAudience => "audience mismatch",
        ErrorKind::InvalidSubject => "subject mismatch",
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => {
            "missing required claim exp (--jwt-require-exp is on)"
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            return Cow::Owned(format!("missing required claim {claim}"));
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            return Cow::Owned(format!("malformed claim {claim}"));
        }
        ErrorKind::Base64(_) => "malformed token (base64)",
        ErrorKind::Json(_) => "malformed token (JSON)",
        ErrorKind::Utf8(_) => "malformed token (UTF-8)",
        _ => "invalid token",
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PemKeyKind {
    Rsa,
    EcP256,
}

impl PemKeyKind {
    fn name(self) -> &'static str {
        match self {
            Self::Rsa => "RSA (RS256)",
            Self::EcP256 => "EC P-256 (ES256)",
        }
    }
}

fn expect_kind(pem: &[u8], expected: PemKeyKind) -> Result<(), JwtConfigError> {
    let found = classify_public_pem(pem)?;
    if found == expected {
        Ok(())
    } else {
        Err(JwtConfigError::KeyTypeMismatch {
            expected: expected.name(),
            found: found.name(),
        })
    }
}

// DER encodings (contents only) of the object identifiers we recognise.
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const DER_SEQUENCE: u8 = 0x30;
const DER_OID: u8 = 0x06;

/// Tells what a public-key PEM holds. jsonwebtoken classifies PEMs internally
/// but does not expose it, and it accepts EC keys on any curve (which would
/// then fail every ES256 verification at runtime), so we read the
/// SubjectPublicKeyInfo header ourselves.
fn classify_public_pem(pem: &[u8]) -> Result<PemKeyKind, JwtConfigError> {
    const BEGIN: &str = "-----BEGIN ";
    const DASHES: &str = "-----";
    let text = std::str::from_utf8(pem).map_err(|_| JwtConfigError::NotPem("not UTF-8 text"))?;
    let begin = text
        .find(BEGIN)
        .ok_or(JwtConfigError::NotPem("no -----BEGIN line"))?;
    let after_begin = &text[begin + BEGIN.len()..];
    let label_len = after_begin
        .find(DASHES)
        .ok_or(JwtConfigError::NotPem("unterminated -----BEGIN line"))?;
    let label = &after_begin[..label_len];
    let rest = &after_begin[label_len + DASHES.len()..];
    let end_line = format!("-----END {label}-----");
    let body_len = rest
        .find(&end_line)
        .ok_or(JwtConfigError::NotPem("no matching -----END line"))?;
    let body = &rest[..body_len];

    match label {
        // PKCS#1 RSAPublicKey: the label alone says RSA; jsonwebtoken checks
        // the body when it loads the key.
        "RSA PUBLIC KEY" => Ok(PemKeyKind::Rsa),
        "PUBLIC KEY" => {
            let der = base64_decode(body).ok_or(JwtConfigError::MalformedKey("bad base64"))?;
            classify_spki(&der)
        }
        l if l.contains("PRIVATE KEY") => Err(JwtConfigError::PrivateKey(l.to_owned())),
        l => Err(JwtConfigError::UnsupportedPemLabel(l.to_owned())),
    }
}

/// SubjectPublicKeyInfo ::= SEQUENCE { SEQUENCE { algorithm OID, params ANY }, BIT STRING }
fn classify_spki(der: &[u8]) -> Result<PemKeyKind, JwtConfigError> {
    let malformed = JwtConfigError::MalformedKey("not a SubjectPublicKeyInfo");
    let (tag, spki, _) = der_next(der).ok_or(JwtConfigError::MalformedKey("truncated DER"))?;
    if tag != DER_SEQUENCE {
        return Err(malformed);
    }
    let (tag, alg_id, _) = der_next(spki).ok_or(JwtConfigError::MalformedKey("truncated DER"))?;
    if tag != DER_SEQUENCE {
        return Err(malformed);
    }
    let (tag, oid, params) =
        der_next(alg_id).ok_or(JwtConfigError::MalformedKey("truncated DER"))?;
    if tag != DER_OID {
        return Err(malformed);
    }
    if oid == OID_RSA_ENCRYPTION {
        Ok(PemKeyKind::Rsa)
    } else if oid == OID_EC_PUBLIC_KEY {
        match der_next(params) {
            Some((DER_OID, curve, _)) if curve == OID_PRIME256V1 => Ok(PemKeyKind::EcP256),
            _ => Err(JwtConfigError::UnsupportedCurve),
        }
    } else {
        Err(JwtConfigError::UnsupportedKeyType)
    }
}

/// Splits one DER TLV off `input`: (tag, contents, remainder).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first_len, mut rest) = rest.split_first()?;
    let len = if first_len < 0x80 {
        usize::from(first_len)
    } else {
        // Long form; public keys never need more than 4 length bytes.
        let n = usize::from(first_len & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len_bytes, after) = rest.split_at(n);
        rest = after;
        len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

/// Standard-alphabet base64 as found in PEM bodies (whitespace ignored).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    let mut seen_padding = false;
    for b in text.bytes() {
        let value = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                seen_padding = true;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        if seen_padding {
            return None;
        }
        // Only the low 14 bits are ever live (< 8 pending + 6 new).
        acc = ((acc << 6) | u32::from(value)) & 0x3fff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::poll_now;
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::json;
    use std::task::Poll;

    const SECRET: &[u8] = b"correct horse battery staple, 32+ bytes";

    fn now() -> i64 {
        i64::try_from(get_current_timestamp()).unwrap()
    }

    fn sign(alg: Algorithm, claims: &Value, key: &EncodingKey) -> String {
        encode(&Header::new(alg), claims, key).unwrap()
    }

    /// The claims with an `exp` ten minutes ahead unless they state one
    /// (`"exp": null` to leave it out).
    fn with_exp(claims: &Value) -> Value {
        let mut c = claims.clone();
        if let Some(map) = c.as_object_mut() {
            match map.get("exp") {
                None => {
                    map.insert("exp".to_owned(), json!(now() + 600));
                }
                Some(Value::Null) => {
                    map.remove("exp");
                }
                Some(_) => {}
            }
        }
        c
    }

    fn hs(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            &with_exp(claims),
            &EncodingKey::from_secret(SECRET),
        )
    }

    fn rs(claims: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(keys::RSA_PRIVATE.as_bytes()).unwrap();
        sign(Algorithm::RS256, &with_exp(claims), &key)
    }

    fn es(claims: &Value) -> String {
        let key = EncodingKey::from_ec_pem(keys::EC_PRIVATE.as_bytes()).unwrap();
        sign(Algorithm::ES256, &with_exp(claims), &key)
    }

    fn auth_with(f: impl FnOnce(&mut JwtConfig)) -> JwtAuthenticator {
        let mut cfg = JwtConfig::new(JwtKey::Hs256(SECRET.to_vec()));
        f(&mut cfg);
        JwtAuthenticator::new(cfg).unwrap()
    }

    /// The refusal reason `check` gives, as logged.
    fn reason(auth: &JwtAuthenticator, token: String) -> String {
        match auth.check(&json!({ "token": token })) {
            Ok(id) => panic!("accepted: {id:?}"),
            Err(r) => r.to_string(),
        }
    }

    fn hs_auth() -> JwtAuthenticator {
        JwtAuthenticator::new(JwtConfig::new(JwtKey::Hs256(SECRET.to_vec()))).unwrap()
    }

    fn rs_auth() -> JwtAuthenticator {
        let key = JwtKey::from_public_key_pem(keys::RSA_PUBLIC).unwrap();
        JwtAuthenticator::new(JwtConfig::new(key)).unwrap()
    }

    fn es_auth() -> JwtAuthenticator {
        let key = JwtKey::from_public_key_pem(keys::EC_PUBLIC).unwrap();
        JwtAuthenticator::new(JwtConfig::new(key)).unwrap()
    }

    /// Runs the authenticator the way a shard does and insists it never pends.
    fn run(auth: &JwtAuthenticator, data: Value) -> Option<Identity> {
        let mut fut = auth.authenticate(AuthRequest {
            client_id: "client-1".to_owned(),
            data,
        });
        match poll_now(&mut fut) {
            Poll::Ready(res) => res.unwrap(),
            Poll::Pending => panic!("JWT verification must complete synchronously"),
        }
    }

    fn token(auth: &JwtAuthenticator, token: String) -> Option<Identity> {
        run(auth, json!({ "type": "jwt", "token": token }))
    }

    fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }

    #[test]
    fn hs256_good_token_maps_sub_meta_and_rooms() {
        let t = hs(&json!({
            "sub": "alice",
            "exp": now() + 600,
            "meta": { "plan": "pro", "n": [1, 2] },
            "rooms": ["team:42:*", 7, null, "user:{userId}:inbox"],
        }));
        let id = token(&hs_auth(), t).unwrap();
        assert_eq!(
            id,
            Identity {
                user_id: Some("alice".to_owned()),
                metadata: Some(json!({ "plan": "pro", "n": [1, 2] })),
                room_patterns: Some(vec![
                    "team:42:*".to_owned(),
                    "user:{userId}:inbox".to_owned()
                ]),
            }
        );
    }

    #[test]
    fn no_sub_means_no_user_id() {
        let id = token(&hs_auth(), hs(&json!({ "meta": 1 }))).unwrap();
        assert_eq!(id.user_id, None);
        assert_eq!(id.metadata, Some(json!(1)));
        assert_eq!(id.room_patterns, None);
    }

    #[test]
    fn exp_is_required_by_default() {
        // Issue 12: no exp and an iat from 2001 used to be accepted.
        let forever = hs(&json!({ "sub": "a", "exp": null, "iat": 1_000_000_000 }));
        assert_eq!(token(&hs_auth(), forever.clone()), None);
        assert!(
            reason(&hs_auth(), forever.clone()).contains("exp"),
            "{}",
            reason(&hs_auth(), forever.clone())
        );
        assert_eq!(
            token(&rs_auth(), rs(&json!({ "sub": "a", "exp": null }))),
            None
        );
        assert_eq!(
            token(&es_auth(), es(&json!({ "sub": "a", "exp": null }))),
            None
        );
        // Opting out accepts it, and still checks an exp that is present.
        let lax = auth_with(|c| c.require_exp = false);
        assert!(token(&lax, forever).is_some());
        assert_eq!(
            token(&lax, hs(&json!({ "sub": "a", "exp": now() - 60 }))),
            None
        );
        // A malformed exp is refused either way.
        assert_eq!(token(&lax, hs(&json!({ "sub": "a", "exp": "soon" }))), None);
    }

    #[test]
    fn aud_without_a_configured_audience_is_refused() {
        // RFC 7519 §4.1.3: the token was meant for some other service.
        for aud in [
            json!("billing-api"),
            json!(["billing-api"]),
            json!([]),
            json!(7),
        ] {
            let t = hs(&json!({ "sub": "a", "aud": aud }));
            assert_eq!(token(&hs_auth(), t.clone()), None, "{aud}");
            if aud.is_string() {
                assert!(reason(&hs_auth(), t).contains("--jwt-audience"));
            }
        }
        // `"aud": null` is no aud.
        assert!(token(&hs_auth(), hs(&json!({ "sub": "a", "aud": null }))).is_some());
    }

    #[test]
    fn audience_rules_when_configured() {
        let auth = auth_with(|c| c.audience = vec!["ignis".to_owned(), "ws".to_owned()]);
        assert!(token(&auth, hs(&json!({ "sub": "a", "aud": "ignis" }))).is_some());
        assert!(token(&auth, hs(&json!({ "sub": "a", "aud": "ws" }))).is_some());
        assert!(token(&auth, hs(&json!({ "sub": "a", "aud": ["x", "ws"] }))).is_some());
        let mismatch = hs(&json!({ "sub": "a", "aud": "billing-api" }));
        assert_eq!(token(&auth, mismatch.clone()), None);
        assert!(reason(&auth, mismatch).contains("audience mismatch"));
        assert_eq!(
            token(&auth, hs(&json!({ "sub": "a", "aud": ["x", "y"] }))),
            None
        );
        assert_eq!(token(&auth, hs(&json!({ "sub": "a", "aud": [] }))), None);
        assert_eq!(
            token(&auth, hs(&json!({ "sub": "a", "aud": ["ws", 1] }))),
            None
        );
        assert_eq!(token(&auth, hs(&json!({ "sub": "a", "aud": 1 }))), None);
        let missing = hs(&json!({ "sub": "a" }));
        assert_eq!(token(&auth, missing.clone()), None);
        assert!(reason(&auth, missing).contains("missing required claim aud"));
        // Not a prefix or case-insensitive match.
        assert_eq!(
            token(&auth, hs(&json!({ "sub": "a", "aud": "IGNIS" }))),
            None
        );
        assert_eq!(
            token(&auth, hs(&json!({ "sub": "a", "aud": "ignis2" }))),
            None
        );
    }

    #[test]
    fn issuer_rules_when_configured() {
        let auth = auth_with(|c| {
            c.issuer = vec![
                "https://a.example".to_owned(),
                "https://b.example".to_owned(),
            ];
        });
        assert!(
            token(
                &auth,
                hs(&json!({ "sub": "a", "iss": "https://b.example" }))
            )
            .is_some()
        );
        let foreign = hs(&json!({ "sub": "a", "iss": "https://evil.example" }));
        assert_eq!(token(&auth, foreign.clone()), None);
        assert!(reason(&auth, foreign).contains("issuer mismatch"));
        assert_eq!(token(&auth, hs(&json!({ "sub": "a" }))), None);
        assert_eq!(
            token(
                &auth,
                hs(&json!({ "sub": "a", "iss": ["https://a.example"] }))
            ),
            None
        );
        // Unconfigured: iss is not looked at.
        assert!(token(&hs_auth(), hs(&json!({ "sub": "a", "iss": "anyone" }))).is_some());
    }

    #[test]
    fn max_age_checks_iat() {
        let auth = auth_with(|c| c.max_age_s = Some(300));
        assert!(token(&auth, hs(&json!({ "sub": "a", "iat": now() - 10 }))).is_some());
        assert!(token(&auth, hs(&json!({ "sub": "a", "iat": now() - 290 }))).is_some());
        let old = hs(&json!({ "sub": "a", "iat": now() - 400 }));
        assert_eq!(token(&auth, old.clone()), None);
        assert!(reason(&auth, old).contains("too old"));
        let no_iat = hs(&json!({ "sub": "a" }));
        assert_eq!(token(&auth, no_iat.clone()), None);
        assert!(reason(&auth, no_iat.clone()).contains("iat"));
        assert_eq!(
            token(&auth, hs(&json!({ "sub": "a", "iat": now() + 120 }))),
            None
        );
        assert_eq!(
            token(&auth, hs(&json!({ "sub": "a", "iat": "yesterday" }))),
            None
        );
        assert_eq!(token(&auth, hs(&json!({ "sub": "a", "iat": -5 }))), None);
        // Without a max age, iat does not matter.
        assert!(token(&hs_auth(), no_iat).is_some());
        assert!(token(&hs_auth(), hs(&json!({ "sub": "a", "iat": 1_000_000_000 }))).is_some());
        // The leeway widens both ends.
        let lenient = auth_with(|c| {
            c.max_age_s = Some(300);
            c.leeway_s = 60;
        });
        assert!(token(&lenient, hs(&json!({ "sub": "a", "iat": now() - 340 }))).is_some());
        assert!(token(&lenient, hs(&json!({ "sub": "a", "iat": now() + 30 }))).is_some());
    }

    #[test]
    fn refusal_reasons_never_echo_claims() {
        let auth = auth_with(|c| c.audience = vec!["ignis".to_owned()]);
        for t in [
            hs(&json!({ "sub": "a", "aud": "secret-aud-value" })),
            hs(&json!({ "sub": "a", "aud": "ignis", "exp": now() - 9 })),
        ] {
            let r = reason(&auth, t.clone());
            assert!(!r.contains("secret-aud-value") && !r.contains(&t), "{r}");
        }
    }

    #[test]
    fn non_string_sub_is_refused_and_non_array_rooms_ignored() {
        assert_eq!(token(&hs_auth(), hs(&json!({ "sub": 42 }))), None);
        let id = token(&hs_auth(), hs(&json!({ "sub": "a", "rooms": "x:*" }))).unwrap();
        assert_eq!(id.room_patterns, None);
    }

    #[test]
    fn expired_token_is_refused() {
        let t = hs(&json!({ "sub": "alice", "exp": now() - 120 }));
        assert_eq!(token(&hs_auth(), t), None);
    }

    #[test]
    fn leeway_applies_to_exp_and_nbf() {
        let mut cfg = JwtConfig::new(JwtKey::Hs256(SECRET.to_vec()));
        cfg.leeway_s = 60;
        let lenient = JwtAuthenticator::new(cfg).unwrap();
        let just_expired = hs(&json!({ "sub": "a", "exp": now() - 10 }));
        let almost_valid = hs(&json!({ "sub": "a", "nbf": now() + 10 }));
        assert!(token(&lenient, just_expired.clone()).is_some());
        assert!(token(&lenient, almost_valid.clone()).is_some());
        assert_eq!(token(&hs_auth(), just_expired), None);
        assert_eq!(token(&hs_auth(), almost_valid), None);
    }

    #[test]
    fn nbf_in_the_future_is_refused_and_in_the_past_accepted() {
        let future = hs(&json!({ "sub": "a", "nbf": now() + 120, "exp": now() + 600 }));
        assert_eq!(token(&hs_auth(), future), None);
        let past = hs(&json!({ "sub": "a", "nbf": now() - 120, "exp": now() + 600 }));
        assert!(token(&hs_auth(), past).is_some());
    }

    #[test]
    fn bad_signature_is_refused() {
        let forged = sign(
            Algorithm::HS256,
            &json!({ "sub": "alice" }),
            &EncodingKey::from_secret(b"some other secret"),
        );
        assert_eq!(token(&hs_auth(), forged), None);

        // Swap the payload of a genuine RS256 token for another user's.
        let genuine = rs(&json!({ "sub": "alice" }));
        let parts: Vec<&str> = genuine.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64url(format!(r#"{{"sub":"mallory","exp":{}}}"#, now() + 600).as_bytes()),
            parts[2]
        );
        assert!(token(&rs_auth(), genuine).is_some());
        assert_eq!(token(&rs_auth(), tampered), None);
    }

    #[test]
    fn hs256_token_signed_with_the_public_key_is_refused_by_rs256_verifier() {
        // Key-confusion attack: HMAC keyed with the (public) RSA PEM.
        let t = sign(
            Algorithm::HS256,
            &json!({ "sub": "mallory" }),
            &EncodingKey::from_secret(keys::RSA_PUBLIC.as_bytes()),
        );
        assert_eq!(token(&rs_auth(), t), None);
    }

    #[test]
    fn rs256_token_is_refused_by_hs256_verifier() {
        assert_eq!(token(&hs_auth(), rs(&json!({ "sub": "alice" }))), None);
    }

    #[test]
    fn other_algorithms_of_the_same_family_are_refused() {
        let hs384 = sign(
            Algorithm::HS384,
            &json!({ "sub": "alice" }),
            &EncodingKey::from_secret(SECRET),
        );
        assert_eq!(token(&hs_auth(), hs384), None);
        assert_eq!(token(&rs_auth(), es(&json!({ "sub": "alice" }))), None);
        assert_eq!(token(&es_auth(), rs(&json!({ "sub": "alice" }))), None);
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64url(format!(r#"{{"sub":"mallory","exp":{}}}"#, now() + 600).as_bytes());
        for t in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert_eq!(token(&hs_auth(), t.clone()), None);
            assert_eq!(token(&rs_auth(), t), None);
        }
    }

    #[test]
    fn missing_or_non_string_token_is_refused() {
        let auth = hs_auth();
        assert_eq!(run(&auth, json!({})), None);
        assert_eq!(run(&auth, json!({ "token": null })), None);
        assert_eq!(run(&auth, json!({ "token": 12345 })), None);
        assert_eq!(run(&auth, json!({ "token": { "sub": "a" } })), None);
        assert_eq!(run(&auth, json!("just a string")), None);
        assert_eq!(run(&auth, Value::Null), None);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let auth = hs_auth();
        for t in [
            "",
            "abc",
            "a.b.c",
            "a.b",
            "....",
            "eyJhbGciOiJIUzI1NiJ9.e30.%%%",
        ] {
            assert_eq!(token(&auth, t.to_owned()), None, "{t:?}");
        }
    }

    #[test]
    fn rs256_good_token_with_spki_and_pkcs1_keys() {
        let t = rs(&json!({ "sub": "bob", "exp": now() + 60, "meta": "m" }));
        let id = token(&rs_auth(), t.clone()).unwrap();
        assert_eq!(id.user_id.as_deref(), Some("bob"));
        assert_eq!(id.metadata, Some(json!("m")));

        let pkcs1 = JwtKey::from_public_key_pem(keys::RSA_PUBLIC_PKCS1).unwrap();
        assert!(matches!(pkcs1, JwtKey::Rs256Pem(_)));
        let auth = JwtAuthenticator::new(JwtConfig::new(pkcs1)).unwrap();
        assert_eq!(auth.algorithms(), vec![Algorithm::RS256]);
        assert!(token(&auth, t).is_some());
    }

    #[test]
    fn es256_good_token() {
        let auth = es_auth();
        assert_eq!(auth.algorithms(), vec![Algorithm::ES256]);
        let t = es(&json!({ "sub": "carol", "exp": now() + 60, "rooms": ["x"] }));
        let id = token(&auth, t).unwrap();
        assert_eq!(id.user_id.as_deref(), Some("carol"));
        assert_eq!(id.room_patterns, Some(vec!["x".to_owned()]));
    }

    #[test]
    fn public_key_pem_detection() {
        assert!(matches!(
            JwtKey::from_public_key_pem(keys::RSA_PUBLIC),
            Ok(JwtKey::Rs256Pem(_))
        ));
        assert!(matches!(
            JwtKey::from_public_key_pem(keys::EC_PUBLIC),
            Ok(JwtKey::Es256Pem(_))
        ));
        assert!(matches!(
            JwtKey::from_public_key_pem(keys::EC_P384_PUBLIC),
            Err(JwtConfigError::UnsupportedCurve)
        ));
        assert!(matches!(
            JwtKey::from_public_key_pem(keys::ED25519_PUBLIC),
            Err(JwtConfigError::UnsupportedKeyType)
        ));
        assert!(matches!(
            JwtKey::from_public_key_pem(keys::RSA_PRIVATE),
            Err(JwtConfigError::PrivateKey(label)) if label == "PRIVATE KEY"
        ));
        assert!(matches!(
            JwtKey::from_public_key_pem("not a pem"),
            Err(JwtConfigError::NotPem(_))
        ));
        assert!(matches!(
            JwtKey::from_public_key_pem(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            ),
            Err(JwtConfigError::UnsupportedPemLabel(_))
        ));
        assert!(matches!(
            JwtKey::from_public_key_pem(
                "-----BEGIN PUBLIC KEY-----\nMFkw!!\n-----END PUBLIC KEY-----\n"
            ),
            Err(JwtConfigError::MalformedKey(_))
        ));
        assert!(matches!(
            JwtKey::from_public_key_pem(
                "-----BEGIN PUBLIC KEY-----\nMFkwEwYH\n-----END PUBLIC KEY-----\n"
            ),
            Err(JwtConfigError::MalformedKey(_))
        ));
        // The error text is meant for operators.
        let msg = JwtKey::from_public_key_pem(keys::EC_P384_PUBLIC)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("P-256"), "{msg}");
    }

    #[test]
    fn config_errors() {
        assert!(matches!(
            JwtAuthenticator::new(JwtConfig::new(JwtKey::Hs256(Vec::new()))),
            Err(JwtConfigError::EmptySecret)
        ));
        assert!(matches!(
            JwtAuthenticator::new(JwtConfig::new(JwtKey::Hs256(b"x".to_vec()))),
            Err(JwtConfigError::ShortSecret(1))
        ));
        assert!(matches!(
            JwtAuthenticator::new(JwtConfig::new(JwtKey::Hs256(vec![7; 31]))),
            Err(JwtConfigError::ShortSecret(31))
        ));
        assert!(JwtAuthenticator::new(JwtConfig::new(JwtKey::Hs256(vec![7; 32]))).is_ok());
        let mut cfg = JwtConfig::new(JwtKey::Hs256(SECRET.to_vec()));
        cfg.max_age_s = Some(0);
        assert!(matches!(
            JwtAuthenticator::new(cfg),
            Err(JwtConfigError::ZeroMaxAge)
        ));
        let mut cfg = JwtConfig::new(JwtKey::Hs256(SECRET.to_vec()));
        cfg.leeway_s = MAX_LEEWAY_S + 1;
        assert!(matches!(
            JwtAuthenticator::new(cfg),
            Err(JwtConfigError::LeewayTooLarge(_))
        ));
        assert!(matches!(
            JwtAuthenticator::new(JwtConfig::new(JwtKey::Rs256Pem(keys::EC_PUBLIC.into()))),
            Err(JwtConfigError::KeyTypeMismatch { .. })
        ));
        assert!(matches!(
            JwtAuthenticator::new(JwtConfig::new(JwtKey::Es256Pem(keys::RSA_PUBLIC.into()))),
            Err(JwtConfigError::KeyTypeMismatch { .. })
        ));
        assert!(matches!(
            JwtAuthenticator::new(JwtConfig::new(JwtKey::Es256Pem(keys::EC_PRIVATE.into()))),
            Err(JwtConfigError::PrivateKey(_))
        ));
    }

    #[test]
    fn several_static_keys_each_verify_their_own_tokens() {
        let rsa_a = JwtKey::from_public_key_pem(keys::RSA_PUBLIC).unwrap();
        let ec = JwtKey::from_public_key_pem(keys::EC_PUBLIC).unwrap();
        // A second RSA key: the PKCS#1 form of the same key would verify the
        // same tokens, so use a second EC-signed and an RSA-signed token
        // against [RSA, EC] and check order does not matter.
        for keys in [vec![rsa_a.clone(), ec.clone()], vec![ec.clone(), rsa_a]] {
            let auth = JwtAuthenticator::new(JwtConfig::with_keys(keys)).unwrap();
            assert_eq!(auth.algorithms().len(), 2);
            assert!(token(&auth, rs(&json!({ "sub": "r" }))).is_some());
            assert!(token(&auth, es(&json!({ "sub": "e" }))).is_some());
            // Still no HS256 (key confusion with either public key) or none.
            let forged = sign(
                Algorithm::HS256,
                &with_exp(&json!({ "sub": "mallory" })),
                &EncodingKey::from_secret(keys::RSA_PUBLIC.as_bytes()),
            );
            assert_eq!(token(&auth, forged.clone()), None);
            assert!(reason(&auth, forged).contains("algorithm not accepted"));
            // A token of a known alg signed by another key: bad signature.
            let other = sign(
                Algorithm::ES256,
                &with_exp(&json!({ "sub": "x" })),
                &EncodingKey::from_ec_pem(OTHER_EC_PRIVATE.as_bytes()).unwrap(),
            );
            assert_eq!(reason(&auth, other), "bad signature");
        }
        // Two keys of one algorithm (rotation): tokens of both verify; an
        // expired token of the second key is refused as expired, not as a
        // bad signature.
        let two_ec = JwtAuthenticator::new(JwtConfig::with_keys(vec![
            JwtKey::from_public_key_pem(OTHER_EC_PUBLIC).unwrap(),
            ec,
        ]))
        .unwrap();
        assert_eq!(two_ec.algorithms(), vec![Algorithm::ES256]);
        assert!(token(&two_ec, es(&json!({ "sub": "new" }))).is_some());
        let old_key = EncodingKey::from_ec_pem(OTHER_EC_PRIVATE.as_bytes()).unwrap();
        let old = sign(
            Algorithm::ES256,
            &with_exp(&json!({ "sub": "old" })),
            &old_key,
        );
        assert!(token(&two_ec, old).is_some());
        let expired = es(&json!({ "sub": "new", "exp": now() - 60 }));
        assert!(reason(&two_ec, expired).contains("expired"));
        // A kid in the header is ignored by static keys.
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("whatever".into());
        let with_kid = encode(&h, &with_exp(&json!({ "sub": "k" })), &old_key).unwrap();
        assert!(token(&two_ec, with_kid).is_some());
        assert!(matches!(
            JwtAuthenticator::new(JwtConfig::with_keys(Vec::new())),
            Err(JwtConfigError::NoKey)
        ));
    }

    // A second P-256 pair (`openssl ecparam -name prime256v1 -genkey`).
    const OTHER_EC_PRIVATE: &str = "\
        -----BEGIN PRIVATE KEY-----\n\
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQghv7i+kyWeldX08f1\n\
        vGSEPJ5CtjIaCu2Lg/ugiYq2d/6hRANCAAROXNco/XxWgEpQKTD/zkyghAB3U8ZD\n\
        kM85jHtKkLNIhCyNr7of1vqw1Bt3B4U5rJmFzdOv8l//utuNXAra7qSh\n\
        -----END PRIVATE KEY-----\n\
        ";
    const OTHER_EC_PUBLIC: &str = "\
        -----BEGIN PUBLIC KEY-----\n\
        MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAETlzXKP18VoBKUCkw/85MoIQAd1PG\n\
        Q5DPOYx7SpCzSIQsja+6H9b6sNQbdweFOayZhc3Tr/Jf/7rbjVwK2u6koQ==\n\
        -----END PUBLIC KEY-----\n\
        ";

    #[test]
    fn debug_output_never_shows_the_secret() {
        let cfg = JwtConfig::new(JwtKey::Hs256(SECRET.to_vec()));
        let shown = format!("{cfg:?} {:?}", JwtAuthenticator::new(cfg.clone()).unwrap());
        assert!(!shown.contains("horse"), "{shown}");
        assert!(!shown.contains("99, 111"), "{shown}"); // b"co" as a byte list
    }

    #[test]
    fn base64_decoder_matches_known_vectors() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9v\nYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("Zg==Zg"), None);
        assert_eq!(base64_decode("Z*"), None);
    }

    /// Test-only keys, generated once with `openssl genpkey` (RSA 2048),
    /// `openssl ecparam -name prime256v1|secp384r1 -genkey`, `openssl genpkey
    /// -algorithm ed25519` and `openssl pkey -pubout`; used nowhere else.
    mod keys {
        pub const RSA_PRIVATE: &str = "\
            -----BEGIN PRIVATE KEY-----\n\
            MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDByeFSGUZrOji0\n\
            12UZQ0nUcIA70lTPcTJz3n1s8/ExK5aE487TpuhOVpN0F+pV5QIT5MjVPsSSs821\n\
            jrJhOl9rkl+AU+J5+jazcX+LoCTGzclcZPNOyRjq5XujotoG6DWv8t4kSHy/CEe3\n\
            Dqnc6i7rSVB+aIOhGAlTasUERH1Zv3vUaDbjrlS4gnpGz9iyJrqdjrkaZbFvVSv8\n\
            AeFWY9CvoRBBwlUdIl1VHrpsTIhxyjdLAfeNMUvxhJ5L/CEHgDnp8/0g/SlwyPbT\n\
            Dd5mY/3VjqyFsaVbub8o1TtADxJPfSCfRLd6aJkrNyYZEkZ0e2I4+8VRdfR6z4Lo\n\
            2wIEuU+jAgMBAAECggEAH1KjQeLl9/T8L3bVV4UBzP22LHUt0i3oysO+oDq51InI\n\
            FYjA6IME74yc3tnyvZl7gX2sXJN9sHyxllQPTxnhTIDnQNXOOIsSBmUlCYuEBkJC\n\
            9tU2Ypisl2MqXeO3vAASlXL7JwA0cahD9zm+iP+tP8ik4xm/lO1OrJYIbE0pubSq\n\
            rVKANKx83y+GZ7tLnPD9xGm8rx/+Oasvq3vHcLUj4/iBE5ta74oCh6yvNSjL2aRg\n\
            T+eF/+RVflLkYeJ0BoyFOiOcGMC9gnl5m0L7E3IqCgBATGtrvz3gq/N7LEBMHxyg\n\
            iBZo5qJSdcwF5WwWohiicnMdDtWePD5dmsv+Iu//mQKBgQDfXPgfU5njhQRYuNQ8\n\
            Z/+ozJvwmw+2HyJB3IGTRVL8G8v3eYcygMeoemum05UkMgk4RcYk0SctBy+HjsL6\n\
            XzaH1HUQJUMmxVNI/3MtJTSlrUnYvWOKIsLvzQeNp0QC/zKA+MYNSEYmHxOQecWy\n\
            DR9LkYjHRLNp3DA0M2xstPF9RQKBgQDeGqglgL3EOOuwhRKPjEhnHZf2LRqL/Aov\n\
            ZLRQX/sXAnV9zBAnQNwYKenXcutTd3QAZCQeJj65CTVXMpsaBJ3NR6uUmJ9AVqiM\n\
            Ys2amZTn+HWvfeC5EJDspy0iZua+/0QVQN/XGM1hL2k3ez4UBlK5B4wjStQPkKnZ\n\
            D3ByGiajxwKBgQC/VhiGXUsaBzwt9EZ6aGws4PlEJtBSpmDmIkotKdlodTdICyax\n\
            MHfX7uaAxgagNuyG895Ec5YnkFw6tyR27VD9EhYleoYHlEk/4vN63MA4nDUCIVo/\n\
            Xn+2g9/QjFRKbOmKaZDel+bfiQdtX6LmXy9LwKN2b3dxW1k/nj1m8alcMQKBgFvm\n\
            Mb7axypi1vrCBQ0KYYbxEsiUnxBe6CP2CjnbjPxXUyALCIAFcUw6Q3yXG1H88i2b\n\
            QeqLrpZHfh+nW8/nKxgeWJtyjypC8RitZR9b/uYAw0kqz4ojlaOmBKHgbAeJfbVB\n\
            k5zfsVNOF74SK3yDpUTUH6MWuin6lJywq7k6otRPAoGAQ2Ka6QzC4qFYOBtKLyyP\n\
            DYu5Lu7FM2DY+ceH6aEJCvW+DFcHB9sN6McRpQLkXaQJ1X2DlvVkR6Tp8blmKdgU\n\
            XsFcATO3daNejPuJWEjsm14a6Y1OssqKlgN8ZktKxOXV5ikV0CAgIKog2NuCG0Yl\n\
            eQ5VB5SwmJyXkX/yEbrAAHk=\n\
            -----END PRIVATE KEY-----\n\
            ";
        pub const RSA_PUBLIC: &str = "\
            -----BEGIN PUBLIC KEY-----\n\
            MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwcnhUhlGazo4tNdlGUNJ\n\
            1HCAO9JUz3Eyc959bPPxMSuWhOPO06boTlaTdBfqVeUCE+TI1T7EkrPNtY6yYTpf\n\
            a5JfgFPiefo2s3F/i6Akxs3JXGTzTskY6uV7o6LaBug1r/LeJEh8vwhHtw6p3Oou\n\
            60lQfmiDoRgJU2rFBER9Wb971Gg2465UuIJ6Rs/Ysia6nY65GmWxb1Ur/AHhVmPQ\n\
            r6EQQcJVHSJdVR66bEyIcco3SwH3jTFL8YSeS/whB4A56fP9IP0pcMj20w3eZmP9\n\
            1Y6shbGlW7m/KNU7QA8ST30gn0S3emiZKzcmGRJGdHtiOPvFUXX0es+C6NsCBLlP\n\
            owIDAQAB\n\
            -----END PUBLIC KEY-----\n\
            ";
        pub const RSA_PUBLIC_PKCS1: &str = "\
            -----BEGIN RSA PUBLIC KEY-----\n\
            MIIBCgKCAQEAwcnhUhlGazo4tNdlGUNJ1HCAO9JUz3Eyc959bPPxMSuWhOPO06bo\n\
            TlaTdBfqVeUCE+TI1T7EkrPNtY6yYTpfa5JfgFPiefo2s3F/i6Akxs3JXGTzTskY\n\
            6uV7o6LaBug1r/LeJEh8vwhHtw6p3Oou60lQfmiDoRgJU2rFBER9Wb971Gg2465U\n\
            uIJ6Rs/Ysia6nY65GmWxb1Ur/AHhVmPQr6EQQcJVHSJdVR66bEyIcco3SwH3jTFL\n\
            8YSeS/whB4A56fP9IP0pcMj20w3eZmP91Y6shbGlW7m/KNU7QA8ST30gn0S3emiZ\n\
            KzcmGRJGdHtiOPvFUXX0es+C6NsCBLlPowIDAQAB\n\
            -----END RSA PUBLIC KEY-----\n\
            ";
        pub const EC_PRIVATE: &str = "\
            -----BEGIN PRIVATE KEY-----\n\
            MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgDPBgc3Fozz39uVhG\n\
            yeY4OBBdceK72feVIRtv+JRpdMahRANCAAQB3Mh00vOSzqoOyLUfNZinyR7/9a7q\n\
            IfW9bFa+7OIQLQvqhAfndidYQA8QcAs/P0afqXhYs5rZR10/TRfCih3a\n\
            -----END PRIVATE KEY-----\n\
            ";
        pub const EC_PUBLIC: &str = "\
            -----BEGIN PUBLIC KEY-----\n\
            MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAdzIdNLzks6qDsi1HzWYp8ke//Wu\n\
            6iH1vWxWvuziEC0L6oQH53YnWEAPEHALPz9Gn6l4WLOa2UddP00Xwood2g==\n\
            -----END PUBLIC KEY-----\n\
            ";
        pub const EC_P384_PUBLIC: &str = "\
            -----BEGIN PUBLIC KEY-----\n\
            MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEZbIWe+kXW+oXVQqJAGPUARVXHfBzCVes\n\
            i0TbXR4FSK51YX6qR6sDgBUePPLFvih5nbWm5gYWIyl0wSyIaYdmeKCSbd/NxWcA\n\
            LGY7WFr+90s0HbHW1BCqZGNdoS2U1Xyv\n\
            -----END PUBLIC KEY-----\n\
            ";
        pub const ED25519_PUBLIC: &str = "\
            -----BEGIN PUBLIC KEY-----\n\
            MCowBQYDK2VwAyEA7FVBdnz8ptuErtuzpN+giwD6bi42oeOIy8LpWhCQi+8=\n\
            -----END PUBLIC KEY-----\n\
            ";
    }
}
