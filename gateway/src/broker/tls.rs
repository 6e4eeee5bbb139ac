//! MQTT over TLS on the `broker.tls_listen` listeners (rustls, `ring` provider, TLS 1.2 and 1.3).
//!
//! With `broker.tls_client_ca` set, the server asks every TLS client for a certificate but does not require
//! one: a certificate that is sent must verify against that CA (else the handshake fails), and then
//! authenticates the device named by its subject CN (see
//! [`Authenticator::authenticate_certificate`](crate::auth::Authenticator::authenticate_certificate)).
//! A client without a certificate goes through the usual username/password rules of its listener.
//!
//! Once the handshake is done the connection is served like a plain one (`connection::serve`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use super::{connection, BrokerError, Shared};
use crate::auth::VerifiedCertificate;
use crate::config::BrokerConfig;

pub(crate) use tokio_rustls::TlsAcceptor;

/// A config key and why its value cannot be used.
type KeyError = (String, String);

/// The rules on the `broker.tls_*` keys that need no file access: with TLS listeners or any TLS file set,
/// `tls_cert` and `tls_key` are required. Returns their paths, `None` when TLS is not configured at all.
pub(crate) fn check_keys(config: &BrokerConfig) -> Result<Option<(PathBuf, PathBuf)>, KeyError> {
    let any_set =
        config.tls_cert.is_some() || config.tls_key.is_some() || config.tls_client_ca.is_some();
    if config.tls_listen.is_empty() && !any_set {
        return Ok(None);
    }
    let required = |key: &str, path: &Option<PathBuf>| match path {
        Some(path) => Ok(path.clone()),
        None => Err((
            format!("broker.{key}"),
            "required when broker.tls_listen or another broker.tls_* key is set".to_owned(),
        )),
    };
    Ok(Some((
        required("tls_cert", &config.tls_cert)?,
        required("tls_key", &config.tls_key)?,
    )))
}

/// Builds the TLS server configuration from `[broker]`, reading the certificate, key and client CA files.
/// `None` when TLS is not configured at all. Errors name the config key, the file and the reason.
pub(crate) fn server_config(config: &BrokerConfig) -> Result<Option<Arc<ServerConfig>>, KeyError> {
    let Some((cert_path, key_path)) = check_keys(config)? else {
        return Ok(None);
    };
    let invalid = |key: &str, path: &Path, reason: String| {
        (
            format!("broker.{key}"),
            format!("{}: {reason}", path.display()),
        )
    };

    let (certs, key) = certificate_and_key("broker", &cert_path, &key_path)?;
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("broker.tls_listen".to_owned(), e.to_string()))?;
    let builder = match &config.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for cert in
                read_certificates(ca_path).map_err(|e| invalid("tls_client_ca", ca_path, e))?
            {
                roots
                    .add(cert)
                    .map_err(|e| invalid("tls_client_ca", ca_path, format!("bad CA: {e}")))?;
            }
            let verifier = client_verifier(roots, provider)
                .map_err(|e| invalid("tls_client_ca", ca_path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let server = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid("tls_key", &key_path, format!("unusable with tls_cert: {e}")))?;
    Ok(Some(Arc::new(server)))
}

/// A server's certificate chain and key from `{section}.tls_cert` and `{section}.tls_key`; errors name
/// the key, the file and the reason.
fn certificate_and_key(
    section: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KeyError> {
    let invalid = |key: &str, path: &Path, reason: String| {
        (
            format!("{section}.{key}"),
            format!("{}: {reason}", path.display()),
        )
    };
    let certs = read_certificates(cert_path).map_err(|e| invalid("tls_cert", cert_path, e))?;
    let key_pem = read(key_path).map_err(|e| invalid("tls_key", key_path, e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            "tls_key",
            key_path,
            format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    Ok((certs, key))
}

/// A TLS server configuration without client certificates (the HTTP API's), from
/// `{section}.tls_cert` and `{section}.tls_key`.
pub(crate) fn server_config_for(
    section: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<ServerConfig>, KeyError> {
    let (certs, key) = certificate_and_key(section, cert_path, key_path)?;
    let server = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| (format!("{section}.tls_listen"), e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            (
                format!("{section}.tls_key"),
                format!("{}: unusable with tls_cert: {e}", key_path.display()),
            )
        })?;
    Ok(Arc::new(server))
}

fn client_verifier(
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn tokio_rustls::rustls::server::danger::ClientCertVerifier>, String> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        // Ask for a certificate, do not require one: clients without one log in with a password.
        .allow_unauthenticated()
        .build()
        .map_err(|e| e.to_string())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

/// Every CERTIFICATE block of a PEM file; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM file: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM CERTIFICATE in the file".into());
    }
    Ok(certs)
}

/// The acceptor for `broker.tls_listen`, or `None` without TLS listeners.
pub(crate) fn acceptor(config: &BrokerConfig) -> Result<Option<TlsAcceptor>, BrokerError> {
    if config.tls_listen.is_empty() {
        return Ok(None);
    }
    let server = server_config(config).map_err(|(key, reason)| BrokerError::Tls { key, reason })?;
    Ok(server.map(TlsAcceptor::from))
}

/// Completes the TLS handshake of an accepted socket (within `connection_timeout_ms`), reads the subject
/// CN of the client certificate rustls verified, if any, and serves the connection.
pub(crate) async fn serve(
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
    alive: mpsc::Sender<()>,
) {
    let limit = Duration::from_millis(shared.config.connection_timeout_ms.into());
    let stream = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::info!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "no TLS handshake within {} ms, closing", limit.as_millis());
            return;
        }
    };
    // rustls only hands out a peer certificate chain it verified against `tls_client_ca`.
    let certificate = match stream.get_ref().1.peer_certificates() {
        None | Some([]) => None,
        Some([leaf, ..]) => match common_name(leaf) {
            Ok(common_name) => Some(VerifiedCertificate { common_name }),
            Err(e) => {
                tracing::warn!(%peer, "refused a TLS client certificate: {e}");
                return;
            }
        },
    };
    let (read_half, write_half) = tokio::io::split(stream);
    let accepted = connection::Accepted {
        read_half: Box::new(read_half),
        write_half: Box::new(write_half),
        socket: None,
        peer,
        listener,
        certificate,
    };
    connection::serve(shared, accepted, alive).await;
}

/// The single subject CN of a DER certificate.
fn common_name(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut names = cert.subject().iter_common_name();
    let name = names.next().ok_or("the certificate's subject has no CN")?;
    if names.next().is_some() {
        return Err("the certificate's subject has more than one CN".into());
    }
    let name = name
        .as_str()
        .map_err(|e| format!("the certificate's subject CN is not text: {e}"))?;
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests;
