//! The cluster's certificate authority, generated at first start under `DATA/pki/`.
//!
//! * `ca.crt` / `ca.key` (0600): the CA, kept across restarts; kubeconfigs and nodes trust it.
//! * `server.crt` / `server.key` (0600): the server's certificate (`CN=hatch-server`), reissued at
//!   every start so its names follow the host; it serves HTTPS and is the client certificate the
//!   server presents to nodes.
//! * Node certificates are issued from CSRs at join (`CN=node:<name>`), from the public key alone:
//!   names, usages and lifetime are the CA's choice, never the requester's.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Common name of the server's certificate; nodes accept exec connections only from it.
pub const SERVER_COMMON_NAME: &str = "hatch-server";
/// Prefix of node certificates' common names.
pub const NODE_CN_PREFIX: &str = "node:";

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Tolerated clock skew between machines.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),
    #[error("{0}: not a valid PEM certificate or key")]
    BadPem(String),
    #[error("invalid node name {0:?}: use lower-case letters, digits, '-' and '.' (a DNS subdomain)")]
    BadNodeName(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.display().to_string(), source }
}

/// Writes a file atomically; `private` files get mode 0600 from their creation.
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(contents).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    ca_key: KeyPair,
    server: Issued,
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

fn serial(params: &mut CertificateParams) {
    let bytes: [u8; 16] = rand::random();
    let mut bytes = bytes.to_vec();
    bytes[0] &= 0x7f; // positive
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&bytes));
}

fn san(name: &str) -> Result<SanType, PkiError> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.to_string().try_into()?),
    })
}

/// Kubernetes node names are DNS subdomains; they also become a DNS name in the node's certificate.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// SHA-256 of the CA certificate (DER), hex: what a join token pins.
pub fn ca_fingerprint(ca_pem: &str) -> Option<String> {
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).ok()?;
    Some(hex::encode(Sha256::digest(der.as_ref())))
}

impl Pki {
    /// Loads the CA from `dir` (creating it on first start) and issues the server certificate for
    /// `names` (IP addresses or DNS names) plus localhost, 127.0.0.1, ::1 and the host name.
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Pki, PkiError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let ca_crt = dir.join("ca.crt");
        let ca_key_path = dir.join("ca.key");
        let (ca_pem, ca_key) = if ca_crt.exists() && ca_key_path.exists() {
            let pem = std::fs::read_to_string(&ca_crt).map_err(io_err(&ca_crt))?;
            let key_pem = std::fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|_| PkiError::BadPem(ca_key_path.display().to_string()))?;
            (pem, key)
        } else {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "hatch-ca");
            dn.push(DnType::OrganizationName, "hatch");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages =
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            validity(&mut params, CA_LIFETIME);
            serial(&mut params);
            let cert = params.self_signed(&key)?;
            // Key first: a crash in between leaves no CA certificate without its key.
            write_file(&ca_key_path, key.serialize_pem().as_bytes(), true)?;
            write_file(&ca_crt, cert.pem().as_bytes(), false)?;
            tracing::info!(dir = %dir.display(), "generated a new cluster CA");
            (cert.pem(), key)
        };
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|_| PkiError::BadPem(ca_crt.display().to_string()))?
            .into_owned();
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            ca_pem,
            ca_der,
            ca_key,
            server: Issued { cert_pem: String::new(), key_pem: String::new() },
        };
        let mut all_names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        if let Some(host) = hostname() {
            all_names.push(host);
        }
        for n in names {
            if !n.is_empty() && n != "0.0.0.0" && n != "::" && !all_names.contains(n) {
                all_names.push(n.clone());
            }
        }
        let server = pki.issue(SERVER_COMMON_NAME, &all_names, true, true)?;
        write_file(&pki.dir.join("server.key"), server.key_pem.as_bytes(), true)?;
        write_file(&pki.dir.join("server.crt"), server.cert_pem.as_bytes(), false)?;
        pki.server = server;
        Ok(pki)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    pub fn ca_fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.ca_der.as_ref()))
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(&self.ca_der, &self.ca_key)?)
    }

    fn leaf_params(
        common_name: &str,
        names: &[String],
        client: bool,
        server: bool,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if server {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if client {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_LIFETIME);
        serial(&mut params);
        Ok(params)
    }

    /// Issues a fresh key and certificate.
    pub fn issue(&self, common_name: &str, names: &[String], client: bool, server: bool) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let params = Pki::leaf_params(common_name, names, client, server)?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Signs a node's CSR: `CN=node:<name>`, client and server usage, DNS name `<name>` plus the
    /// given addresses. Only the CSR's public key is used.
    pub fn sign_node_csr(&self, csr_pem: &str, node_name: &str, addresses: &[String]) -> Result<String, PkiError> {
        if !valid_node_name(node_name) {
            return Err(PkiError::BadNodeName(node_name.to_string()));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut names = vec![node_name.to_string()];
        for a in addresses {
            if !a.is_empty() && !names.contains(a) && a != "0.0.0.0" && a != "::" {
                names.push(a.clone());
            }
        }
        let params = Pki::leaf_params(&format!("{NODE_CN_PREFIX}{node_name}"), &names, true, true)?;
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }

    /// The server's certificate chain (leaf, CA) and key, for TLS.
    pub fn server_identity(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        identity_from_pem(&self.server.cert_pem, &self.server.key_pem, Some(&self.ca_der))
    }
}

/// Parses a PEM certificate (chain) and key for rustls; `ca`, when given, is appended to the chain.
pub fn identity_from_pem(
    cert_pem: &str,
    key_pem: &str,
    ca: Option<&CertificateDer<'static>>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let mut chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| PkiError::BadPem("certificate".into()))?;
    if chain.is_empty() {
        return Err(PkiError::BadPem("certificate".into()));
    }
    if let Some(ca) = ca {
        chain.push(ca.clone());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| PkiError::BadPem("private key".into()))?;
    Ok((chain, key))
}

/// The machine's host name, lower-cased, if it has one.
pub fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn ca_persists_and_keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path(), &[]).unwrap();
        let b = Pki::load_or_create(dir.path(), &["10.1.2.3".into()]).unwrap();
        assert_eq!(a.ca_pem(), b.ca_pem());
        assert_eq!(a.ca_fingerprint(), ca_fingerprint(b.ca_pem()).unwrap());
        for key in ["ca.key", "server.key"] {
            let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        let (chain, _) = b.server_identity().unwrap();
        assert_eq!(common_name(chain[0].as_ref()).as_deref(), Some(SERVER_COMMON_NAME));
        let (_, cert) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
        let sans = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
        assert!(sans.contains("10.1.2.3") || sans.contains("[10, 1, 2, 3]"), "{sans}");
        assert!(sans.contains("localhost"), "{sans}");
    }

    #[test]
    fn csr_signing_takes_only_the_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        // A CSR asking to be a CA for another name.
        let key = KeyPair::generate().unwrap();
        let mut req = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        req.distinguished_name.push(DnType::CommonName, "hatch-server");
        req.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = req.serialize_request(&key).unwrap().pem().unwrap();
        let cert_pem = pki.sign_node_csr(&csr, "worker-1", &["192.0.2.7".into()]).unwrap();
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        assert_eq!(common_name(der.as_ref()).as_deref(), Some("node:worker-1"));
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        assert!(!cert.is_ca());
        let sans = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
        assert!(sans.contains("worker-1") && !sans.contains("evil"), "{sans}");
        // The certificate carries the CSR's key.
        assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
        // And it chains to the CA.
        let (_, ca) = x509_parser::parse_x509_certificate(pki.ca_der().as_ref()).unwrap();
        assert!(cert.verify_signature(Some(ca.public_key())).is_ok());
    }

    #[test]
    fn bad_csrs_and_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert!(matches!(pki.sign_node_csr("garbage", "n1", &[]), Err(PkiError::BadCsr(_))));
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
        assert!(matches!(pki.sign_node_csr(&csr, "Bad_Name", &[]), Err(PkiError::BadNodeName(_))));
        // A CSR whose signature does not match its key.
        let mut tampered = csr.clone().into_bytes();
        let mid = tampered.len() / 2;
        tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
        assert!(pki.sign_node_csr(&String::from_utf8(tampered).unwrap(), "n1", &[]).is_err());
        assert!(valid_node_name("node-1.example"));
        assert!(!valid_node_name("-x") && !valid_node_name("") && !valid_node_name("a..b"));
    }
}
