//! A test CA and a server certificate signed by it, made by the test
//! (rcgen), as PEM files. Shared by the integration tests (`util::tls`) and
//! the record layer's unit tests (`src/tls/tests.rs`, through `#[path]`).

use std::path::Path;

/// Write `ca.pem`, `cert.pem` (leaf then CA) and `key.pem` for `name` and
/// 127.0.0.1 into `dir`; returns the CA's DER.
pub fn write_pki(dir: &Path, name: &str) -> Vec<u8> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL takes a leaf named like its issuer for a
    // self-signed certificate.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ignis-ws test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec![name.to_string(), "127.0.0.1".into()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, name);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    ca.der().to_vec()
}
