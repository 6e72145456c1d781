//! The TLS record layer of an established connection (TLS 1.2 and 1.3,
//! AES-GCM and ChaCha20-Poly1305), sans-io: [`Session::seal`] turns
//! plaintext chunks into records appended to a buffer, [`Session::open`]
//! turns bytes from the peer into plaintext.
//!
//! The keys come from rustls's handshake (its kTLS interface); a TLS 1.3
//! key update (asked for by the peer, or ours before the AES-GCM
//! confidentiality limit) derives the next ones here from the traffic
//! secret (RFC 8446 §7.2), which the handshake captured. The expanded
//! AEAD keys are built from the raw secrets when a record needs
//! them and dropped by [`Session::release_idle`] when the connection has
//! not used them since the last call: an idle connection keeps only
//! secrets and sequence numbers.

use std::io::IoSlice;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion};

/// Most plaintext in one record (RFC 8446 §5.1).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest record body accepted from the peer: TLS 1.3 allows 256 bytes of
/// expansion, TLS 1.2 2048 (RFC 5246 §6.2.3).
const MAX_CIPHERTEXT_12: usize = MAX_PLAINTEXT + 2048;
const MAX_CIPHERTEXT_13: usize = MAX_PLAINTEXT + 256;
const HEADER: usize = 5;
const TAG: usize = 16;
/// TLS 1.2 AES-GCM's explicit nonce in every record.
const EXPLICIT: usize = 8;

const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
const CT_APPDATA: u8 = 23;
const HS_KEY_UPDATE: u8 = 24;

/// Records sealed under one TLS 1.3 key before we move to the next one:
/// well under AES-GCM's confidentiality limit (2^24.5 records, RFC 8446
/// §5.5), which rustls cannot count for us any more.
pub const KEY_UPDATE_AFTER: u64 = 1 << 23;
/// TLS 1.2 has no key update: past this many records the connection ends
/// (the client reconnects with fresh keys).
const TLS12_RECORD_LIMIT: u64 = 1 << 24;
/// KeyUpdates accepted without application data in between (rustls's
/// bound too).
const MAX_KEY_UPDATES_IN_A_ROW: u8 = 32;

/// Why a TLS connection cannot go on. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS handshake: {0}")]
    Handshake(rustls::Error),
    #[error("TLS record: {0}")]
    BadRecord(&'static str),
    #[error("TLS record too large")]
    TooLarge,
    #[error("TLS record failed to decrypt")]
    Decrypt,
    #[error("TLS alert from the peer: {0}")]
    Alert(u8),
    #[error("unexpected TLS message: {0}")]
    Unexpected(&'static str),
    #[error("the peer closed the TLS connection")]
    Closed,
    #[error("TLS 1.2 connection used up its keys")]
    KeysExhausted,
    #[error("TLS: {0}")]
    Internal(String),
}

/// What [`Session::open`] found besides plaintext.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The peer sent close_notify: nothing follows.
    pub peer_closed: bool,
}

/// Secret bytes, up to `N`, zeroed when dropped; never printed.
pub(super) struct Secret<const N: usize> {
    bytes: [u8; N],
    len: u8,
}

impl<const N: usize> Secret<N> {
    pub(super) fn new(b: &[u8]) -> Result<Secret<N>, TlsError> {
        let mut bytes = [0u8; N];
        bytes
            .get_mut(..b.len())
            .ok_or_else(|| TlsError::Internal("secret too long".into()))?
            .copy_from_slice(b);
        Ok(Secret {
            bytes,
            len: b.len() as u8,
        })
    }

    fn get(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl<const N: usize> Drop for Secret<N> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.bytes);
    }
}

/// A TLS 1.3 traffic secret and its hash: what the next key comes from.
pub(super) struct Traffic {
    pub(super) secret: Secret<48>,
    pub(super) hash: hkdf::Algorithm,
}

/// One direction's keys.
pub(super) struct Direction {
    alg: &'static aead::Algorithm,
    key: Secret<32>,
    iv: [u8; aead::NONCE_LEN],
    /// TLS 1.3: the traffic secret, for a key update.
    traffic: Option<Traffic>,
    pub(super) seq: u64,
    /// Built from `key` on first use; dropped while idle.
    built: Option<LessSafeKey>,
    used: bool,
}

impl Direction {
    fn new(
        (seq, secrets): (u64, ConnectionTrafficSecrets),
        traffic: Option<Traffic>,
    ) -> Result<Direction, TlsError> {
        let (alg, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(TlsError::Unexpected("cipher suite")),
        };
        let d = Direction {
            alg,
            key: Secret::new(key.as_ref())?,
            iv: iv
                .as_ref()
                .try_into()
                .map_err(|_| TlsError::Internal("bad IV length".into()))?,
            traffic,
            seq,
            built: None,
            used: false,
        };
        // Refuse a key we cannot use now rather than at the first record.
        d.build()?;
        // The traffic secret must be the one these keys come from: it is
        // not if the peer sent a KeyUpdate together with its Finished
        // (rustls then moved on to the next keys during the handshake).
        if let Some(t) = &d.traffic {
            let mut key = [0u8; 32];
            let key_len = d.alg.key_len();
            let mut iv = [0u8; aead::NONCE_LEN];
            expand_label(t.secret.get(), t.hash, b"key", &mut key[..key_len])?;
            expand_label(t.secret.get(), t.hash, b"iv", &mut iv)?;
            let same = key[..key_len] == *d.key.get() && iv == d.iv;
            zeroize::Zeroize::zeroize(&mut key);
            if !same {
                return Err(TlsError::Unexpected("key update during the handshake"));
            }
        }
        Ok(d)
    }

    fn build(&self) -> Result<LessSafeKey, TlsError> {
        UnboundKey::new(self.alg, self.key.get())
            .map(LessSafeKey::new)
            .map_err(|_| TlsError::Internal("bad traffic key".into()))
    }

    fn key(&mut self) -> Result<&LessSafeKey, TlsError> {
        self.used = true;
        if self.built.is_none() {
            self.built = Some(self.build()?);
        }
        self.built
            .as_ref()
            .ok_or_else(|| TlsError::Internal("no key".into()))
    }

    /// TLS 1.3 key update (RFC 8446 §7.2): the next traffic secret, and
    /// the key and IV from it; the sequence starts again at 0.
    fn update(&mut self) -> Result<(), TlsError> {
        let Some(t) = &self.traffic else {
            return Err(TlsError::Unexpected("key update without TLS 1.3"));
        };
        let hash = t.hash;
        let mut buf = [0u8; 48];
        let hash_len = t.secret.get().len();
        expand_label(t.secret.get(), hash, b"traffic upd", &mut buf[..hash_len])?;
        let next = Secret::<48>::new(&buf[..hash_len]);
        zeroize::Zeroize::zeroize(&mut buf);
        let next = next?;
        let key_len = self.alg.key_len();
        expand_label(next.get(), hash, b"key", &mut buf[..key_len])?;
        let key = Secret::new(&buf[..key_len]);
        zeroize::Zeroize::zeroize(&mut buf);
        let mut iv = [0u8; aead::NONCE_LEN];
        expand_label(next.get(), hash, b"iv", &mut iv)?;
        self.key = key?;
        self.iv = iv;
        self.traffic = Some(Traffic { secret: next, hash });
        self.seq = 0;
        self.built = None;
        Ok(())
    }

    /// `iv XOR seq` (RFC 8446 §5.3; rustls's TLS 1.2 construction too).
    fn nonce(&self) -> [u8; aead::NONCE_LEN] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn is_gcm(&self) -> bool {
        *self.alg != aead::CHACHA20_POLY1305
    }
}

/// HKDF-Expand-Label with an empty context (RFC 8446 §7.1).
fn expand_label(
    secret: &[u8],
    hash: hkdf::Algorithm,
    label: &[u8],
    out: &mut [u8],
) -> Result<(), TlsError> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let length = (out.len() as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    hkdf::Prk::new_less_safe(hash, secret)
        .expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| TlsError::Internal("HKDF-Expand-Label failed".into()))
}

/// An established TLS connection's record layer.
pub struct Session {
    tls13: bool,
    pub(super) tx: Direction,
    rx: Direction,
    suite: rustls::CipherSuite,
    /// The start of a record whose end has not arrived (empty, with no
    /// allocation, between records).
    partial: Vec<u8>,
    /// Records sealed but not yet taken by the socket.
    pub pending: Vec<u8>,
    peer_closed: bool,
    close_sent: bool,
    /// Records under one TLS 1.3 key before we update it.
    pub(super) tx_limit: u64,
    /// The peer asked for our key update: sent before our next record.
    key_update_owed: bool,
    /// KeyUpdates received since the last application data.
    key_updates_in_a_row: u8,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("tls13", &self.tls13)
            .field("tx_seq", &self.tx.seq)
            .field("rx_seq", &self.rx.seq)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// From the handshake's secrets; for TLS 1.3 with the traffic secrets
    /// (client's, server's) that key updates start from.
    pub(super) fn new(
        secrets: ExtractedSecrets,
        version: ProtocolVersion,
        suite: rustls::CipherSuite,
        traffic: Option<(Traffic, Traffic)>,
    ) -> Result<Session, TlsError> {
        let tls13 = match version {
            ProtocolVersion::TLSv1_3 => true,
            ProtocolVersion::TLSv1_2 => false,
            _ => return Err(TlsError::Unexpected("protocol version")),
        };
        let (client, server) = match traffic {
            Some((c, s)) => (Some(c), Some(s)),
            None if tls13 => return Err(TlsError::Internal("no TLS 1.3 traffic secrets".into())),
            None => (None, None),
        };
        Ok(Session {
            tls13,
            tx: Direction::new(secrets.tx, server)?,
            rx: Direction::new(secrets.rx, client)?,
            suite,
            partial: Vec::new(),
            pending: Vec::new(),
            peer_closed: false,
            close_sent: false,
            tx_limit: KEY_UPDATE_AFTER,
            key_update_owed: false,
            key_updates_in_a_row: 0,
        })
    }

    /// The cipher suite's name, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub fn suite(&self) -> rustls::CipherSuite {
        self.suite
    }

    /// Drop the expanded keys a direction has not used since the last
    /// call, and any emptied buffer. Returns whether anything was freed.
    pub fn release_idle(&mut self) -> bool {
        let mut freed = false;
        for d in [&mut self.tx, &mut self.rx] {
            if !d.used && d.built.is_some() {
                d.built = None;
                freed = true;
            }
            d.used = false;
        }
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            self.partial = Vec::new();
            freed = true;
        }
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            self.pending = Vec::new();
            freed = true;
        }
        freed
    }

    /// Whether expanded keys are held now (for tests and metrics).
    pub fn holds_keys(&self) -> bool {
        self.tx.built.is_some() || self.rx.built.is_some()
    }

    /// Seal up to `max` bytes of `chunks` (in order, from `skip` bytes
    /// into the first) as application data, appended to `out`, as few
    /// records as fit: many frames per record. Returns the plaintext
    /// bytes taken.
    pub fn seal(
        &mut self,
        chunks: &[IoSlice<'_>],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, TlsError> {
        let mut cursor = Cursor {
            chunks,
            index: 0,
            offset: 0,
        };
        let mut taken = 0;
        while taken < max && !cursor.is_empty() {
            let want = (max - taken).min(MAX_PLAINTEXT);
            taken += self.seal_record(CT_APPDATA, out, |out| cursor.copy_into(out, want))?;
        }
        Ok(taken)
    }

    /// Seal `data` as application data (all of it) into `out`.
    pub fn seal_all(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), TlsError> {
        let mut rest = data;
        loop {
            let n = rest.len().min(MAX_PLAINTEXT);
            self.seal_record(CT_APPDATA, out, |out| {
                out.extend_from_slice(&rest[..n]);
                n
            })?;
            rest = &rest[n..];
            if rest.is_empty() {
                return Ok(());
            }
        }
    }

    /// close_notify (once), appended to `out`.
    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        if self.close_sent {
            return Ok(());
        }
        // Warning level, close_notify (RFC 8446 §6.1).
        let r = self.seal_record(CT_ALERT, out, |out| {
            out.extend_from_slice(&[1, 0]);
            2
        });
        // Nothing is sealed after it.
        self.close_sent = true;
        r.map(drop)
    }

    /// One record of content type `typ`, its plaintext written by `fill`
    /// (which returns how much it wrote, at most [`MAX_PLAINTEXT`]). First
    /// moves to the next key (TLS 1.3) or stops (TLS 1.2) when the current
    /// one has sealed enough.
    fn seal_record(
        &mut self,
        typ: u8,
        out: &mut Vec<u8>,
        fill: impl FnOnce(&mut Vec<u8>) -> usize,
    ) -> Result<usize, TlsError> {
        if self.close_sent {
            return Err(TlsError::Unexpected("record after close_notify"));
        }
        if self.tls13 && (self.key_update_owed || self.tx.seq >= self.tx_limit) {
            self.key_update_owed = false;
            self.key_update_tx(out)?;
        } else if !self.tls13 && self.tx.seq >= TLS12_RECORD_LIMIT {
            return Err(TlsError::KeysExhausted);
        }
        self.seal_raw(typ, out, fill)
    }

    /// [`Session::seal_record`] under the current key, whatever its count.
    fn seal_raw(
        &mut self,
        typ: u8,
        out: &mut Vec<u8>,
        fill: impl FnOnce(&mut Vec<u8>) -> usize,
    ) -> Result<usize, TlsError> {
        let start = out.len();
        let outer = if self.tls13 { CT_APPDATA } else { typ };
        out.extend_from_slice(&[outer, 3, 3, 0, 0]);
        let nonce = self.tx.nonce();
        let explicit = !self.tls13 && self.tx.is_gcm();
        if explicit {
            out.extend_from_slice(&nonce[4..]);
        }
        let body = out.len();
        let n = fill(out);
        if self.tls13 {
            out.push(typ);
        }
        let sealed_len = out.len() - body + TAG;
        let record_len = sealed_len + if explicit { EXPLICIT } else { 0 };
        let len = u16::try_from(record_len).map_err(|_| TlsError::TooLarge)?;
        out[start + 3..start + 5].copy_from_slice(&len.to_be_bytes());
        let aad12: [u8; 13];
        let aad13: [u8; HEADER];
        let aad: &[u8] = if self.tls13 {
            aad13 = [outer, 3, 3, len.to_be_bytes()[0], len.to_be_bytes()[1]];
            &aad13
        } else {
            aad12 = tls12_aad(self.tx.seq, typ, n);
            &aad12
        };
        let tag = self
            .tx
            .key()?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[body..],
            )
            .map_err(|_| TlsError::Internal("seal failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        self.tx.seq += 1;
        Ok(n)
    }

    /// Decrypt what arrived from the peer (any amount: records may be
    /// split anywhere), appending the application data to `plain`. A key
    /// update the peer asks for is answered before our next record.
    pub fn open(&mut self, input: &[u8], plain: &mut Vec<u8>) -> Result<Opened, TlsError> {
        if self.peer_closed {
            return Ok(Opened { peer_closed: true });
        }
        if self.partial.is_empty() {
            let used = self.open_records(input, plain)?;
            if !self.peer_closed && used < input.len() {
                self.partial.extend_from_slice(&input[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(input);
            let used = self.open_records(&buf, plain)?;
            buf.drain(..used);
            if !self.peer_closed && !buf.is_empty() {
                // Keep what the partial record needs, not the whole read.
                if buf.capacity() > 2 * buf.len() + 1024 {
                    buf.shrink_to_fit();
                }
                self.partial = buf;
            }
        }
        Ok(Opened {
            peer_closed: self.peer_closed,
        })
    }

    /// Open every whole record at the start of `buf`; returns the bytes
    /// used.
    fn open_records(&mut self, buf: &[u8], plain: &mut Vec<u8>) -> Result<usize, TlsError> {
        let mut at = 0;
        while !self.peer_closed {
            let rest = &buf[at..];
            if rest.len() < HEADER {
                break;
            }
            let (typ, len) = (rest[0], usize::from(u16::from_be_bytes([rest[3], rest[4]])));
            if rest[1] != 3 {
                return Err(TlsError::BadRecord("not a TLS record"));
            }
            let max = if self.tls13 {
                MAX_CIPHERTEXT_13
            } else {
                MAX_CIPHERTEXT_12
            };
            if len > max {
                return Err(TlsError::TooLarge);
            }
            if rest.len() < HEADER + len {
                break;
            }
            self.open_record(typ, &rest[..HEADER + len], plain)?;
            at += HEADER + len;
        }
        Ok(at)
    }

    fn open_record(&mut self, typ: u8, record: &[u8], plain: &mut Vec<u8>) -> Result<(), TlsError> {
        let body = &record[HEADER..];
        let at = plain.len();
        let (nonce, ct, aad13, aad12);
        if self.tls13 {
            if typ != CT_APPDATA {
                return Err(TlsError::Unexpected("unencrypted record"));
            }
            nonce = self.rx.nonce();
            ct = body;
            aad13 = [record[0], record[1], record[2], record[3], record[4]];
            aad12 = [0u8; 13];
        } else {
            let explicit = self.rx.is_gcm();
            let need = TAG + if explicit { EXPLICIT } else { 0 };
            if body.len() < need {
                return Err(TlsError::BadRecord("short record"));
            }
            if explicit {
                let mut n = [0u8; aead::NONCE_LEN];
                n[..4].copy_from_slice(&self.rx.iv[..4]);
                n[4..].copy_from_slice(&body[..EXPLICIT]);
                nonce = n;
                ct = &body[EXPLICIT..];
            } else {
                nonce = self.rx.nonce();
                ct = body;
            }
            aad12 = tls12_aad(self.rx.seq, typ, ct.len() - TAG);
            aad13 = [0u8; HEADER];
        }
        if ct.len() < TAG {
            return Err(TlsError::BadRecord("short record"));
        }
        plain.extend_from_slice(ct);
        let aad: &[u8] = if self.tls13 { &aad13 } else { &aad12 };
        let n = self
            .rx
            .key()?
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut plain[at..],
            )
            .map_err(|_| TlsError::Decrypt);
        let n = match n {
            Ok(p) => p.len(),
            Err(e) => {
                plain.truncate(at);
                return Err(e);
            }
        };
        self.rx.seq += 1;
        plain.truncate(at + n);
        let inner = if self.tls13 {
            // Strip the zero padding; the last non-zero byte is the type.
            let Some(end) = plain[at..].iter().rposition(|&b| b != 0) else {
                plain.truncate(at);
                return Err(TlsError::BadRecord("no content type"));
            };
            let t = plain[at + end];
            plain.truncate(at + end);
            t
        } else {
            typ
        };
        if plain.len() - at > MAX_PLAINTEXT {
            return Err(TlsError::TooLarge);
        }
        match inner {
            CT_APPDATA => {
                self.key_updates_in_a_row = 0;
                Ok(())
            }
            CT_ALERT => {
                let alert = plain[at..].to_vec();
                plain.truncate(at);
                match alert.as_slice() {
                    [_, 0] => {
                        self.peer_closed = true;
                        Ok(())
                    }
                    // user_canceled is followed by close_notify.
                    [_, 90] => Ok(()),
                    [_, d] => Err(TlsError::Alert(*d)),
                    _ => Err(TlsError::BadRecord("malformed alert")),
                }
            }
            CT_HANDSHAKE => {
                let msg = plain[at..].to_vec();
                plain.truncate(at);
                self.on_handshake(&msg)
            }
            _ => {
                plain.truncate(at);
                Err(TlsError::Unexpected("record type"))
            }
        }
    }

    /// A handshake message after the handshake: only a TLS 1.3 KeyUpdate
    /// is welcome (TLS 1.2 renegotiation is refused).
    fn on_handshake(&mut self, msg: &[u8]) -> Result<(), TlsError> {
        if !self.tls13 {
            return Err(TlsError::Unexpected("renegotiation"));
        }
        let [HS_KEY_UPDATE, 0, 0, 1, request] = *msg else {
            return Err(TlsError::Unexpected("post-handshake message"));
        };
        if request > 1 {
            return Err(TlsError::BadRecord("malformed key update"));
        }
        // As rustls: a peer may not make us derive keys without end.
        self.key_updates_in_a_row += 1;
        if self.key_updates_in_a_row > MAX_KEY_UPDATES_IN_A_ROW {
            return Err(TlsError::Unexpected("too many key updates"));
        }
        self.rx.update()?;
        // Answered once, before our next record (RFC 8446 §4.6.3), however
        // many requests came: nothing is queued per request.
        if request == 1 {
            self.key_update_owed = true;
        }
        Ok(())
    }

    /// TLS 1.3: KeyUpdate(update_not_requested) under the current key,
    /// then the next key for everything after it.
    fn key_update_tx(&mut self, out: &mut Vec<u8>) -> Result<(), TlsError> {
        self.seal_raw(CT_HANDSHAKE, out, |out| {
            out.extend_from_slice(&[HS_KEY_UPDATE, 0, 0, 1, 0]);
            5
        })?;
        self.tx.update()?;
        Ok(())
    }
}

/// TLS 1.2's additional data: seq, type, version, plaintext length.
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = typ;
    a[9] = 3;
    a[10] = 3;
    a[11..].copy_from_slice(&(len as u16).to_be_bytes());
    a
}

/// Where [`Session::seal`] is in its chunks.
struct Cursor<'a, 'b> {
    chunks: &'a [IoSlice<'b>],
    index: usize,
    offset: usize,
}

impl Cursor<'_, '_> {
    /// Whether nothing is left (skipping used-up and empty chunks, so each
    /// is looked at once over the whole seal).
    fn is_empty(&mut self) -> bool {
        while self.index < self.chunks.len() && self.offset >= self.chunks[self.index].len() {
            self.index += 1;
            self.offset = 0;
        }
        self.index == self.chunks.len()
    }

    /// Append up to `max` bytes to `out`; returns how many.
    fn copy_into(&mut self, out: &mut Vec<u8>, max: usize) -> usize {
        let mut n = 0;
        while n < max && self.index < self.chunks.len() {
            let c = &self.chunks[self.index][self.offset..];
            let k = c.len().min(max - n);
            out.extend_from_slice(&c[..k]);
            n += k;
            self.offset += k;
            if self.offset == self.chunks[self.index].len() {
                self.index += 1;
                self.offset = 0;
            }
        }
        n
    }
}
