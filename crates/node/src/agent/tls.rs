//! The node's certificates and TLS configurations (ring provider only).
//!
//! * Join: a fresh key and a CSR for `CN=node:<name>`; the CA is fetched once and accepted only if
//!   its SHA-256 matches the one pinned in the join token.
//! * To the server: the cluster CA as the only root, the node certificate as client identity.
//! * The streaming endpoint: the node certificate, and a client certificate that chains to the CA
//!   **and** names `hatch-server` — another node's certificate is not enough to exec here.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

use super::AgentError;

/// The server's certificate common name; only it may open exec sessions on the node.
pub const SERVER_COMMON_NAME: &str = "hatch-server";

/// The `ring` provider. rustls 0.23.48 deprecates it only for lacking post-quantum key exchange.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> AgentError {
    AgentError::Tls(e.to_string())
}

/// A new key and a CSR for `CN=node:<name>` (PEM each).
pub fn new_key_and_csr(name: &str) -> Result<(String, String), AgentError> {
    let key = rcgen::KeyPair::generate().map_err(tls_err)?;
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("node:{name}"));
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(tls_err)?.pem().map_err(tls_err)?;
    Ok((key.serialize_pem(), csr))
}

/// SHA-256 (hex) of a PEM certificate's DER.
pub fn fingerprint(pem: &str) -> Option<String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(hex::encode(Sha256::digest(der.as_ref())))
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.subject().iter_common_name().next()?.as_str().ok()?.to_string())
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, AgentError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(tls_err)?).map_err(tls_err)?;
    }
    if roots.is_empty() {
        return Err(AgentError::Tls("no CA certificate".into()));
    }
    Ok(Arc::new(roots))
}

fn identity(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), AgentError> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(tls_err)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(tls_err)?;
    Ok((chain, key))
}

/// Client configuration for the API server: trust only the CA; present `identity` when given.
pub fn api_client_config(ca_pem: &str, client: Option<(&str, &str)>) -> Result<Arc<ClientConfig>, AgentError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match client {
        Some((cert, key)) => {
            let (chain, key) = identity(cert, key)?;
            builder.with_client_auth_cert(chain, key).map_err(tls_err)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate (handshake signatures are still checked). Used once, to fetch
/// the CA, which is then accepted only if it matches the pin in the join token.
#[derive(Debug)]
struct FetchCaOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for FetchCaOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Client configuration for fetching the CA before it is known (see [`FetchCaOnly`]).
pub fn ca_fetch_config() -> Result<Arc<ClientConfig>, AgentError> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(FetchCaOnly(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Chains to the CA (WebPKI) and names the server.
#[derive(Debug)]
struct ServerOnly {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for ServerOnly {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        match common_name(end_entity.as_ref()) {
            Some(cn) if cn == SERVER_COMMON_NAME => Ok(verified),
            other => Err(rustls::Error::General(format!(
                "client certificate {:?} is not the API server's",
                other.unwrap_or_default()
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The streaming endpoint's configuration: the node's certificate; the API server's certificate
/// required from clients.
pub fn streaming_server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, AgentError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider()).build().map_err(tls_err)?;
    let (mut chain, key) = identity(cert_pem, key_pem)?;
    chain.extend(CertificateDer::pem_slice_iter(ca_pem.as_bytes()).filter_map(Result::ok));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_client_cert_verifier(Arc::new(ServerOnly { inner }))
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
