//! Certificates made at test time with rcgen: a CA, and server and client certificates it signs, written
//! as PEM where a broker or a config can name them. For the device listener's TLS tests and the uplink's
//! mutual TLS with a real mosquitto.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its private key.
pub struct Issued {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

impl Issued {
    /// Writes `{name}.pem` (the certificate) and `{name}.key` (its key, PKCS#8) into `dir`; their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, self.cert.pem()).unwrap();
        std::fs::write(&key, self.key.serialize_pem()).unwrap();
        (cert, key)
    }
}

/// A self-signed CA named `name`.
pub fn ca(name: &str) -> Issued {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Issued { cert, key }
}

/// A server certificate signed by `ca` for `names` (DNS names or IP addresses), its CN the first one.
pub fn server_cert(ca: &Issued, names: &[&str]) -> Issued {
    issue(ca, names[0], names, ExtendedKeyUsagePurpose::ServerAuth)
}

/// A client certificate signed by `ca` whose subject CN is `cn`.
pub fn client_cert(ca: &Issued, cn: &str) -> Issued {
    issue(ca, cn, &[], ExtendedKeyUsagePurpose::ClientAuth)
}

fn issue(ca: &Issued, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    Issued { cert, key }
}
