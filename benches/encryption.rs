#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: bench setup
//! Per-client encryption (PROTOCOL.md §7), the numbers behind the crypto
//! crate choice in PERFORMANCE.md:
//!
//! - `seal/*`: AES-256-GCM of one message with a given IV, in aws-lc-rs,
//!   ring and RustCrypto (`aes-gcm`), 100 B and 1 KiB plaintexts.
//! - `iv/*`: one fresh random 12-byte IV from each library's generator
//!   (aws-lc's DRBG, ring's `SystemRandom` = getrandom(2), rand's `StdRng`
//!   for RustCrypto, which has no generator of its own).
//! - `recipient/*`: what the server does per encrypted recipient: fresh
//!   IV + seal + base64 + the `{"event":"encrypted",…}` frame, for each
//!   library; `ignis-ws` is the shipped `Cipher::encrypt_frame`.
//! - `handshake/*`: key pair + ECDH + HKDF per client.

use std::hint::black_box;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{BufMut, Bytes};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ignis_ws::proto::encryption::{self, HKDF_INFO};
use ignis_ws::proto::frame::{OpCode, server_frame_with_capacity};

const SIZES: [(usize, &str); 2] = [(100, "100B"), (1024, "1KiB")];

fn plaintext(n: usize) -> Vec<u8> {
    let mut v = br#"{"event":"chat","data":{"text":""#.to_vec();
    while v.len() + 3 < n {
        v.push(b'x');
    }
    v.extend_from_slice(br#""}}"#);
    v
}

/// The same frame building for every library.
fn frame(iv: &[u8; 12], sealed: &[u8]) -> Bytes {
    let cap = 64 + sealed.len() * 4 / 3;
    server_frame_with_capacity(OpCode::Text, cap, |b| {
        b.put_slice(br#"{"event":"encrypted","data":{"iv":""#);
        b.put_slice(B64.encode(iv).as_bytes());
        b.put_slice(br#"","ct":""#);
        b.put_slice(B64.encode(sealed).as_bytes());
        b.put_slice(br#""}}"#);
    })
}

const KEY: [u8; 32] = [7; 32];

/// A module `$name` of `key` and `seal` over `$krate`'s `aead` (ring and
/// aws-lc-rs share that API).
macro_rules! ring_like {
    ($name:ident, $krate:ident) => {
        mod $name {
            use $krate::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
            pub fn key() -> LessSafeKey {
                LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &super::KEY).unwrap())
            }
            pub fn seal(k: &LessSafeKey, iv: [u8; 12], pt: &[u8], buf: &mut Vec<u8>) {
                buf.clear();
                buf.extend_from_slice(pt);
                k.seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), buf)
                    .unwrap();
            }
        }
    };
}

ring_like!(lc, aws_lc_rs);
ring_like!(rg, ring);

mod rc {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use aes_gcm::{Aes256Gcm, Nonce};
    pub fn key() -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&super::KEY).unwrap()
    }
    pub fn seal(k: &Aes256Gcm, iv: [u8; 12], pt: &[u8], buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(pt);
        k.encrypt_in_place(&Nonce::from(iv), b"", buf).unwrap();
    }
}

fn seal(c: &mut Criterion) {
    let (klc, krg, krc) = (lc::key(), rg::key(), rc::key());
    for (n, name) in SIZES {
        let pt = plaintext(n);
        let mut g = c.benchmark_group(format!("seal/{name}"));
        g.throughput(Throughput::Bytes(n as u64));
        let mut buf = Vec::new();
        // The three agree (checked once, so the bench compares like with like).
        let mut a = Vec::new();
        let mut b = Vec::new();
        lc::seal(&klc, [1; 12], &pt, &mut a);
        rg::seal(&krg, [1; 12], &pt, &mut b);
        assert_eq!(a, b);
        rc::seal(&krc, [1; 12], &pt, &mut b);
        assert_eq!(a, b);
        g.bench_function("aws-lc-rs", |bch| {
            bch.iter(|| lc::seal(&klc, [1; 12], black_box(&pt), &mut buf))
        });
        g.bench_function("ring", |bch| {
            bch.iter(|| rg::seal(&krg, [1; 12], black_box(&pt), &mut buf))
        });
        g.bench_function("rustcrypto", |bch| {
            bch.iter(|| rc::seal(&krc, [1; 12], black_box(&pt), &mut buf))
        });
        g.finish();
    }
}

fn iv(c: &mut Criterion) {
    use rand::{RngCore, SeedableRng};
    use ring::rand::SecureRandom;
    let mut g = c.benchmark_group("iv");
    g.throughput(Throughput::Elements(1));
    g.bench_function("aws-lc-rs DRBG", |b| {
        b.iter(|| {
            let mut iv = [0u8; 12];
            aws_lc_rs::rand::fill(&mut iv).unwrap();
            black_box(iv)
        })
    });
    let sys = ring::rand::SystemRandom::new();
    g.bench_function("ring SystemRandom", |b| {
        b.iter(|| {
            let mut iv = [0u8; 12];
            sys.fill(&mut iv).unwrap();
            black_box(iv)
        })
    });
    let mut rng = rand::rngs::StdRng::from_entropy();
    g.bench_function("rand StdRng (RustCrypto)", |b| {
        b.iter(|| {
            let mut iv = [0u8; 12];
            rng.fill_bytes(&mut iv);
            black_box(iv)
        })
    });
    g.bench_function("ignis-ws (rand ThreadRng)", |b| {
        b.iter(|| black_box(encryption::Cipher::fresh_iv().unwrap()))
    });
    g.finish();
}

fn recipient(c: &mut Criterion) {
    use rand::{RngCore, SeedableRng};
    use ring::rand::SecureRandom;
    let (klc, krg, krc) = (lc::key(), rg::key(), rc::key());
    let sys = ring::rand::SystemRandom::new();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let (_, client_pub) = {
        let k =
            aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256).unwrap();
        let p = B64.encode(k.compute_public_key().unwrap().as_ref());
        (k, p)
    };
    let ours = encryption::handshake(&client_pub).unwrap().cipher;
    for (n, name) in SIZES {
        let pt = plaintext(n);
        let mut g = c.benchmark_group(format!("recipient/{name}"));
        g.throughput(Throughput::Elements(1));
        let mut buf = Vec::new();
        g.bench_function("ignis-ws (aws-lc-rs)", |b| {
            b.iter(|| ours.encrypt_frame(black_box(&pt), &mut buf).unwrap())
        });
        g.bench_function("aws-lc-rs", |b| {
            b.iter(|| {
                let mut iv = [0u8; 12];
                aws_lc_rs::rand::fill(&mut iv).unwrap();
                lc::seal(&klc, iv, black_box(&pt), &mut buf);
                frame(&iv, &buf)
            })
        });
        g.bench_function("ring", |b| {
            b.iter(|| {
                let mut iv = [0u8; 12];
                sys.fill(&mut iv).unwrap();
                rg::seal(&krg, iv, black_box(&pt), &mut buf);
                frame(&iv, &buf)
            })
        });
        g.bench_function("rustcrypto", |b| {
            b.iter(|| {
                let mut iv = [0u8; 12];
                rng.fill_bytes(&mut iv);
                rc::seal(&krc, iv, black_box(&pt), &mut buf);
                frame(&iv, &buf)
            })
        });
        g.finish();
    }
}

fn handshake(c: &mut Criterion) {
    let client =
        aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256).unwrap();
    let client_raw = client.compute_public_key().unwrap().as_ref().to_vec();
    let client_b64 = B64.encode(&client_raw);
    let salt = [9u8; 32];
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ignis-ws (aws-lc-rs)", |b| {
        b.iter(|| encryption::handshake(black_box(&client_b64)).unwrap())
    });
    g.bench_function("ring", |b| {
        use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
        let rng = ring::rand::SystemRandom::new();
        b.iter(|| {
            let k = EphemeralPrivateKey::generate(&ECDH_P256, &rng).unwrap();
            let public = k.compute_public_key().unwrap();
            let key = agree_ephemeral(k, &UnparsedPublicKey::new(&ECDH_P256, &client_raw), |s| {
                let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &salt).extract(s);
                let okm = prk.expand(&[HKDF_INFO], &ring::aead::AES_256_GCM).unwrap();
                ring::aead::LessSafeKey::new(okm.into())
            })
            .unwrap();
            black_box((public, key))
        })
    });
    g.bench_function("rustcrypto", |b| {
        use aes_gcm::aead::KeyInit;
        let peer = p256::PublicKey::from_sec1_bytes(&client_raw).unwrap();
        b.iter(|| {
            let k = p256::ecdh::EphemeralSecret::random(&mut rand_core::OsRng);
            let public = p256::EncodedPoint::from(k.public_key());
            let shared = k.diffie_hellman(&peer);
            let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), shared.raw_secret_bytes());
            let mut okm = [0u8; 32];
            hk.expand(HKDF_INFO, &mut okm).unwrap();
            black_box((public, aes_gcm::Aes256Gcm::new_from_slice(&okm).unwrap()))
        })
    });
    g.finish();
}

criterion_group!(benches, seal, iv, recipient, handshake);
criterion_main!(benches);
