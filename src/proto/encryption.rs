//! Per-client encryption (PROTOCOL.md §7): the ECDH P-256 handshake and
//! AES-256-GCM messages, byte-compatible with the reference's `ECDH`
//! helper, which is WebCrypto (`crypto.subtle`) in browsers and Bun.
//!
//! - Handshake: the client's raw uncompressed P-256 point (65 bytes,
//!   standard base64) in `authenticate.data.publicKey`; the server answers
//!   with a fresh key pair's public point and a fresh 32-byte salt in
//!   `connected` (`serverPublicKey`, `salt`). Both sides compute
//!   ECDH → 256-bit shared secret (the x coordinate, WebCrypto's
//!   `deriveBits(…, 256)`) → HKDF-SHA-256(salt, info
//!   `ignis-ecdh-p256-aes-256-gcm-v1`) → AES-256-GCM key.
//! - Messages: `{"event":"encrypted","data":{"iv":…,"ct":…}}`, a fresh
//!   random 12-byte IV per message, `ct` = ciphertext ‖ 128-bit tag (as
//!   WebCrypto's `encrypt` returns it), both standard base64 with padding.
//!   The plaintext is the JSON `{"event":E,"data":D}` the client would
//!   otherwise have received.
//!
//! Crypto is aws-lc-rs (chosen by `benches/encryption.rs`, see
//! PERFORMANCE.md). Its keys live in memory it allocates and scrubs when
//! they are freed (`OPENSSL_free` cleanses, the ECDH secret is
//! `Zeroizing`): dropping a [`Cipher`] on disconnect erases the key.
//!
//! Sans-io like the rest of `proto/`: no socket and no clock. Key pairs
//! and salts come from aws-lc's DRBG, IVs from the thread's CSPRNG (see
//! [`Cipher::fresh_iv`]); both are seeded by the OS.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, ECDH_P256, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{BufMut, Bytes};

use super::frame::{self, OpCode};

/// HKDF `info` of the reference's `ECDH` helper (its `DEFAULT_HKDF_INFO`).
pub const HKDF_INFO: &[u8] = b"ignis-ecdh-p256-aes-256-gcm-v1";
/// Salt bytes per handshake (the reference's `SALT_BYTES`).
pub const SALT_LEN: usize = 32;
/// IV bytes per message (the reference's `IV_BYTES`).
pub const IV_LEN: usize = NONCE_LEN;
/// GCM tag bytes (`TAG_BITS` = 128).
pub const TAG_LEN: usize = 16;
/// A raw uncompressed P-256 point: `0x04 ‖ x ‖ y`.
pub const PUBLIC_KEY_LEN: usize = 65;

/// Why a handshake or an encrypted message was refused. Never a panic:
/// every input here comes from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncryptionError {
    #[error("publicKey is not standard base64")]
    PublicKeyBase64,
    #[error("publicKey is not a 65-byte uncompressed P-256 point")]
    PublicKeyLength,
    #[error("publicKey is not a point on P-256")]
    PublicKeyInvalid,
    #[error("iv is not 12 bytes of standard base64")]
    Iv,
    #[error("ct is not standard base64 or is shorter than the tag")]
    Ciphertext,
    #[error("decryption failed: wrong key or tampered message")]
    Tag,
    #[error("encrypted message is not {{\"iv\":…,\"ct\":…}}")]
    Shape,
    #[error("the random number generator failed")]
    Rng,
    #[error("key derivation failed")]
    Derive,
    #[error("encryption failed")]
    Seal,
}

/// What a successful handshake gives: the two strings for `connected`
/// and the client's cipher.
#[derive(Debug)]
pub struct Handshake {
    /// The server's public point, base64 (`connected.serverPublicKey`).
    pub server_public_key: String,
    /// The HKDF salt, base64 (`connected.salt`).
    pub salt: String,
    pub cipher: Cipher,
}

/// Decode standard base64 the way the reference's `fromBase64` accepts it:
/// non-empty, padded, standard alphabet.
fn decode_b64(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() % 4 != 0 {
        return None;
    }
    B64.decode(s).ok()
}

/// Check and decode a client's `publicKey`.
pub fn parse_public_key(b64: &str) -> Result<[u8; PUBLIC_KEY_LEN], EncryptionError> {
    let raw = decode_b64(b64).ok_or(EncryptionError::PublicKeyBase64)?;
    let point: [u8; PUBLIC_KEY_LEN] = raw
        .as_slice()
        .try_into()
        .map_err(|_| EncryptionError::PublicKeyLength)?;
    if point[0] != 0x04 {
        return Err(EncryptionError::PublicKeyLength);
    }
    Ok(point)
}

/// Run the server side of the handshake for a client's `publicKey`: a
/// fresh key pair and salt for this client alone.
pub fn handshake(client_public_key_b64: &str) -> Result<Handshake, EncryptionError> {
    let client = parse_public_key(client_public_key_b64)?;
    let private = PrivateKey::generate(&ECDH_P256).map_err(|_| EncryptionError::Rng)?;
    let mut salt = [0u8; SALT_LEN];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| EncryptionError::Rng)?;
    handshake_with(&private, &client, &salt)
}

/// [`handshake`] with the server's key and the salt given: for known-answer
/// tests against WebCrypto.
#[doc(hidden)]
pub fn handshake_with(
    private: &PrivateKey,
    client_point: &[u8; PUBLIC_KEY_LEN],
    salt: &[u8; SALT_LEN],
) -> Result<Handshake, EncryptionError> {
    let public = private
        .compute_public_key()
        .map_err(|_| EncryptionError::Derive)?;
    let peer = UnparsedPublicKey::new(&ECDH_P256, client_point);
    let key = agreement::agree(private, peer, EncryptionError::PublicKeyInvalid, |shared| {
        derive_key(shared, salt)
    })?;
    Ok(Handshake {
        server_public_key: B64.encode(public.as_ref()),
        salt: B64.encode(salt),
        cipher: Cipher { key },
    })
}

/// HKDF-SHA-256(salt, shared secret, info) → AES-256-GCM key, as
/// WebCrypto's `deriveKey({name:'HKDF',…}, …, {name:'AES-GCM',length:256})`.
fn derive_key(shared: &[u8], salt: &[u8]) -> Result<LessSafeKey, EncryptionError> {
    let prk = Salt::new(HKDF_SHA256, salt).extract(shared);
    let okm = prk
        .expand(&[HKDF_INFO], &AES_256_GCM)
        .map_err(|_| EncryptionError::Derive)?;
    let key: UnboundKey = okm.into();
    Ok(LessSafeKey::new(key))
}

/// One client's AES-256-GCM key. Dropping it erases the key (aws-lc
/// scrubs its key schedule when it frees it).
pub struct Cipher {
    key: LessSafeKey,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(AES-256-GCM, key hidden)")
    }
}

const FRAME_PREFIX: &[u8] = br#"{"event":"encrypted","data":{"iv":""#;
const FRAME_MIDDLE: &[u8] = br#"","ct":""#;
const FRAME_SUFFIX: &[u8] = br#""}}"#;

impl Cipher {
    /// Encrypt `plaintext` with `iv`: ciphertext ‖ tag, WebCrypto's output.
    /// `buf` is a scratch buffer (cleared first) that receives it.
    pub fn seal_with_iv(
        &self,
        iv: [u8; IV_LEN],
        plaintext: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<(), EncryptionError> {
        buf.clear();
        buf.reserve(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), buf)
            .map_err(|_| EncryptionError::Seal)
    }

    /// A fresh random IV, from the thread's ChaCha12 CSPRNG (rand's
    /// `ThreadRng`, seeded and periodically reseeded from the OS). aws-lc's
    /// own DRBG costs ~425 ns per call here, five times the AES-GCM of a
    /// 100-byte message; this costs ~9 ns (`benches/encryption.rs`, `iv/*`).
    /// 96 random bits per message: a repeat under one key is negligible
    /// (birthday bound ~2^48 messages).
    pub fn fresh_iv() -> Result<[u8; IV_LEN], EncryptionError> {
        use rand::RngCore as _;
        let mut iv = [0u8; IV_LEN];
        rand::thread_rng()
            .try_fill_bytes(&mut iv)
            .map_err(|_| EncryptionError::Rng)?;
        Ok(iv)
    }

    /// The whole server text frame carrying
    /// `{"event":"encrypted","data":{"iv":…,"ct":…}}` for `plaintext` (the
    /// `{"event":E,"data":D}` JSON), under a fresh random IV. `scratch` is
    /// reused between calls.
    pub fn encrypt_frame(
        &self,
        plaintext: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<Bytes, EncryptionError> {
        let iv = Self::fresh_iv()?;
        self.encrypt_frame_with_iv(iv, plaintext, scratch)
    }

    /// [`Cipher::encrypt_frame`] with a given IV (tests, benches).
    #[doc(hidden)]
    pub fn encrypt_frame_with_iv(
        &self,
        iv: [u8; IV_LEN],
        plaintext: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<Bytes, EncryptionError> {
        self.seal_with_iv(iv, plaintext, scratch)?;
        let ct_b64 = base64::encoded_len(scratch.len(), true).unwrap_or(usize::MAX);
        let len = FRAME_PREFIX.len() + 16 + FRAME_MIDDLE.len() + ct_b64 + FRAME_SUFFIX.len();
        Ok(frame::server_frame_with_capacity(OpCode::Text, len, |b| {
            b.put_slice(FRAME_PREFIX);
            put_b64(b, &iv);
            b.put_slice(FRAME_MIDDLE);
            put_b64(b, scratch);
            b.put_slice(FRAME_SUFFIX);
        }))
    }

    /// Decrypt an inbound `{iv, ct}` (both base64) into the plaintext bytes.
    pub fn open(&self, iv_b64: &str, ct_b64: &str) -> Result<Vec<u8>, EncryptionError> {
        let iv: [u8; IV_LEN] = decode_b64(iv_b64)
            .and_then(|v| v.try_into().ok())
            .ok_or(EncryptionError::Iv)?;
        let mut ct = decode_b64(ct_b64).ok_or(EncryptionError::Ciphertext)?;
        if ct.len() < TAG_LEN {
            return Err(EncryptionError::Ciphertext);
        }
        let n = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut ct)
            .map_err(|_| EncryptionError::Tag)?
            .len();
        ct.truncate(n);
        Ok(ct)
    }
}

/// Append standard base64 of `data` without an intermediate `String`.
fn put_b64(b: &mut bytes::BytesMut, data: &[u8]) {
    let start = b.len();
    let n = base64::encoded_len(data.len(), true).unwrap_or(0);
    b.resize(start + n, 0);
    // encode_slice cannot fail here: the slice is exactly the encoded size.
    let written = B64.encode_slice(data, &mut b[start..]).unwrap_or(0);
    b.truncate(start + written);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client key pair the way a browser makes one.
    fn client() -> (PrivateKey, String) {
        let k = PrivateKey::generate(&ECDH_P256).unwrap();
        let p = B64.encode(k.compute_public_key().unwrap().as_ref());
        (k, p)
    }

    /// The client's side of the derivation (what WebCrypto does).
    fn client_cipher(k: &PrivateKey, h: &Handshake) -> Cipher {
        let server = parse_public_key(&h.server_public_key).unwrap();
        let salt = B64.decode(&h.salt).unwrap();
        let key = agreement::agree(
            k,
            UnparsedPublicKey::new(&ECDH_P256, &server),
            EncryptionError::PublicKeyInvalid,
            |s| derive_key(s, &salt),
        )
        .unwrap();
        Cipher { key }
    }

    fn frame_json(f: &Bytes) -> serde_json::Value {
        let p = frame::server_frame_payload(f).unwrap();
        serde_json::from_slice(p).unwrap()
    }

    #[test]
    fn both_sides_derive_the_same_key() {
        let (ck, cp) = client();
        let h = handshake(&cp).unwrap();
        assert_eq!(B64.decode(&h.server_public_key).unwrap().len(), 65);
        assert_eq!(B64.decode(&h.salt).unwrap().len(), 32);
        let c = client_cipher(&ck, &h);
        let mut s = Vec::new();
        let f = h
            .cipher
            .encrypt_frame(br#"{"event":"a","data":1}"#, &mut s)
            .unwrap();
        let v = frame_json(&f);
        assert_eq!(v["event"], "encrypted");
        let pt = c
            .open(
                v["data"]["iv"].as_str().unwrap(),
                v["data"]["ct"].as_str().unwrap(),
            )
            .unwrap();
        assert_eq!(pt, br#"{"event":"a","data":1}"#);
    }

    /// Vectors computed by Node's WebCrypto (`crypto.subtle`: importKey
    /// jwk/raw, deriveBits 256, HKDF deriveKey, AES-GCM encrypt), i.e. by
    /// the implementation browsers and the reference use.
    #[test]
    fn known_answer_from_webcrypto() {
        let d = (1u8..=32).collect::<Vec<u8>>();
        let server = PrivateKey::from_private_key(&ECDH_P256, &d).unwrap();
        let client = parse_public_key(
            "BGjsfPCM1BBuQ7FN6JVCZSK9CkUVDAJ+RceVNDTXR+e64685qI677oZ5u2HnhFw6icubWjI3w/2wsFh9uvQVEY0=",
        )
        .unwrap();
        let salt: [u8; 32] = std::array::from_fn(|i| 0xa0 ^ i as u8);
        let h = handshake_with(&server, &client, &salt).unwrap();
        assert_eq!(
            h.server_public_key,
            "BFFcPW6545a5BNP+yn9U/c0MwemXvzddylFa0KbDtANfRTa+OlDzGPv5pUdZAqIhUCvvDVfgjFOyzApW8X2fk1Q="
        );
        assert_eq!(h.salt, "oKGio6SlpqeoqaqrrK2ur7CxsrO0tba3uLm6u7y9vr8=");
        let iv: [u8; 12] = std::array::from_fn(|i| i as u8);
        let pt = br#"{"event":"chat","data":{"text":"hello"}}"#;
        let mut s = Vec::new();
        h.cipher.seal_with_iv(iv, pt, &mut s).unwrap();
        assert_eq!(
            B64.encode(&s),
            "wLvoiBVof5gCyS8yViSPZPYXgk/pJrNOdO9+CIVN551p73VLCGxB8UGfVLLITUBkLn0I8qMo7Yk="
        );
        let f = h.cipher.encrypt_frame_with_iv(iv, pt, &mut s).unwrap();
        let v = frame_json(&f);
        assert_eq!(v["data"]["iv"], "AAECAwQFBgcICQoL");
        assert_eq!(
            h.cipher
                .open("AAECAwQFBgcICQoL", v["data"]["ct"].as_str().unwrap())
                .unwrap(),
            pt
        );
    }

    #[test]
    fn bad_public_keys_are_refused() {
        use EncryptionError::*;
        assert_eq!(handshake("").unwrap_err(), PublicKeyBase64);
        assert_eq!(handshake("not base64!").unwrap_err(), PublicKeyBase64);
        assert_eq!(handshake("QUJD").unwrap_err(), PublicKeyLength);
        // Unpadded base64 of a right-length key.
        let (_, p) = client();
        assert_eq!(
            handshake(p.trim_end_matches('=')).unwrap_err(),
            PublicKeyBase64
        );
        // 65 bytes, right prefix, not on the curve.
        let mut off = [0x11u8; 65];
        off[0] = 4;
        assert_eq!(handshake(&B64.encode(off)).unwrap_err(), PublicKeyInvalid);
        // Compressed form (33 bytes) is not what WebCrypto's 'raw' export gives.
        let mut comp = [0x11u8; 33];
        comp[0] = 2;
        assert_eq!(handshake(&B64.encode(comp)).unwrap_err(), PublicKeyLength);
        // 65 bytes with the wrong prefix.
        let mut raw = B64.decode(&p).unwrap();
        raw[0] = 3;
        assert_eq!(handshake(&B64.encode(&raw)).unwrap_err(), PublicKeyLength);
        // The point at infinity / all zero.
        let mut zero = [0u8; 65];
        zero[0] = 4;
        assert_eq!(handshake(&B64.encode(zero)).unwrap_err(), PublicKeyInvalid);
    }

    #[test]
    fn tampered_and_wrong_key_are_refused() {
        let (ck, cp) = client();
        let h = handshake(&cp).unwrap();
        let c = client_cipher(&ck, &h);
        let mut s = Vec::new();
        let f = c.encrypt_frame(b"hello", &mut s).unwrap();
        let v = frame_json(&f);
        let iv = v["data"]["iv"].as_str().unwrap();
        let ct = v["data"]["ct"].as_str().unwrap();
        assert_eq!(h.cipher.open(iv, ct).unwrap(), b"hello");
        let mut raw = B64.decode(ct).unwrap();
        raw[0] ^= 1;
        assert_eq!(
            h.cipher.open(iv, &B64.encode(&raw)).unwrap_err(),
            EncryptionError::Tag
        );
        // Another client's key.
        let (_, other) = client();
        let h2 = handshake(&other).unwrap();
        assert_eq!(h2.cipher.open(iv, ct).unwrap_err(), EncryptionError::Tag);
        assert_eq!(h.cipher.open("AAAA", ct).unwrap_err(), EncryptionError::Iv);
        assert_eq!(
            h.cipher.open(iv, "AAAA").unwrap_err(),
            EncryptionError::Ciphertext
        );
        assert_eq!(
            h.cipher.open(iv, "!!").unwrap_err(),
            EncryptionError::Ciphertext
        );
    }

    #[test]
    fn ivs_never_repeat_in_100k_messages() {
        let (_, cp) = client();
        let h = handshake(&cp).unwrap();
        let mut seen = std::collections::HashSet::with_capacity(100_000);
        let mut s = Vec::new();
        for _ in 0..100_000 {
            let f = h.cipher.encrypt_frame(b"{}", &mut s).unwrap();
            let p = frame::server_frame_payload(&f).unwrap();
            let iv = &p[FRAME_PREFIX.len()..FRAME_PREFIX.len() + 16];
            assert!(seen.insert(iv.to_vec()), "IV repeated");
        }
    }
}
