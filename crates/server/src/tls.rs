//! rustls configurations, all on the `ring` provider.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;

use crate::pki::{Pki, PkiError};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The `ring` provider (the project's one provider). rustls 0.23.48 deprecates it only because
/// ring has no post-quantum key exchange; its classical suites are what kubectl negotiates.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// The API listener: HTTP/1.1 only (exec upgrades need it), client certificates optional (nodes
/// present theirs; kubectl uses a bearer token).
pub fn server_config(pki: &Pki) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(pki.ca_der())?, provider())
        .allow_unauthenticated()
        .build()?;
    let (chain, key) = pki.server_identity()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Dialing a node's streaming endpoint: trust only the cluster CA, present the server's certificate.
/// The node is checked by name (its certificate carries its node name as a DNS name).
pub fn node_dial_config(pki: &Pki) -> Result<Arc<ClientConfig>, TlsError> {
    let (chain, key) = pki.server_identity()?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(pki.ca_der())?)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
