//! Joining a server: pin its CA with the join token, send a CSR, keep the certificate.
//!
//! Join tokens read `H1<sha256 of the CA certificate>::<secret>` (as `hatch server` prints them).
//! The node's key never leaves it; its identity lives in `DATA/agent/` (`node.key` 0600,
//! `node.crt`, `ca.crt`) and is reused at the next start when it still matches token and name.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use http::Method;
use rustls::pki_types::pem::PemObject as _;

use super::client::ApiClient;
use super::contract::{JoinRequest, JoinResponse};
use super::{AgentError, tls};

const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's certificate, key and the cluster CA (PEM).
#[derive(Clone)]
pub struct NodeIdentity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// The CA fingerprint a join token pins.
pub fn token_pin(token: &str) -> Result<String, AgentError> {
    let bad = || {
        AgentError::Config("invalid join token: expected H1<ca sha256>::<secret> as `hatch server` prints it".into())
    };
    let rest = token.strip_prefix("H1").ok_or_else(bad)?;
    let (pin, secret) = rest.split_once("::").ok_or_else(bad)?;
    if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) || secret.is_empty() {
        return Err(bad());
    }
    Ok(pin.to_ascii_lowercase())
}

fn write_private(path: &Path, contents: &str, private: bool) -> Result<(), AgentError> {
    let io = |e: std::io::Error| AgentError::Io(format!("{}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn load(dir: &Path, name: &str, pin: &str) -> Option<NodeIdentity> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let identity = NodeIdentity { cert_pem: read("node.crt")?, key_pem: read("node.key")?, ca_pem: read("ca.crt")? };
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes()).next()?.ok()?;
    let cn = tls::common_name(der.as_ref())?;
    (tls::fingerprint(&identity.ca_pem)? == pin && cn == format!("node:{name}")).then_some(identity)
}

/// The node's identity: from `dir` when it matches, else by joining `server_url` with `token`.
pub async fn load_or_join(
    server_url: &str,
    token: &str,
    name: &str,
    streaming_address: &str,
    dir: &Path,
) -> Result<NodeIdentity, AgentError> {
    let pin = token_pin(token)?;
    std::fs::create_dir_all(dir).map_err(|e| AgentError::Io(format!("{}: {e}", dir.display())))?;
    if let Some(identity) = load(dir, name, &pin) {
        tracing::info!(node = %name, "using the certificate from an earlier join");
        return Ok(identity);
    }

    // The CA, over a connection that proves nothing, accepted only if it matches the pin.
    let fetch = ApiClient::new(server_url, tls::ca_fetch_config()?, None)?;
    let (status, body) = fetch.request(Method::GET, "/cacerts", None, JOIN_TIMEOUT).await?;
    if !status.is_success() {
        return Err(AgentError::Refused { status: status.as_u16(), message: "fetching the CA".into() });
    }
    let ca_pem = String::from_utf8_lossy(&body).to_string();
    match tls::fingerprint(&ca_pem) {
        Some(f) if f == pin => {}
        other => {
            return Err(AgentError::Tls(format!(
                "the server's CA ({}) is not the one the join token pins ({pin}); wrong server or token",
                other.unwrap_or_else(|| "unreadable".into())
            )));
        }
    }

    let (key_pem, csr) = tls::new_key_and_csr(name)?;
    let client = ApiClient::new(server_url, tls::api_client_config(&ca_pem, None)?, Some(token.to_string()))?;
    let request = JoinRequest { name: name.to_string(), csr, streaming_address: streaming_address.to_string() };
    let answer: JoinResponse = client.json(Method::POST, "/hatch/v1/nodes/join", Some(&request), JOIN_TIMEOUT).await?;
    if tls::fingerprint(&answer.ca).as_deref() != Some(pin.as_str()) {
        return Err(AgentError::Tls("the join answer names another CA".into()));
    }
    write_private(&dir.join("node.key"), &key_pem, true)?;
    write_private(&dir.join("node.crt"), &answer.certificate, false)?;
    write_private(&dir.join("ca.crt"), &answer.ca, false)?;
    tracing::info!(node = %name, server = %server_url, "joined");
    Ok(NodeIdentity { cert_pem: answer.certificate, key_pem, ca_pem: answer.ca })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn tokens_pin_the_ca() {
        let pin = "ab".repeat(32);
        assert_eq!(token_pin(&format!("H1{pin}::secret")).unwrap(), pin);
        assert!(token_pin("secret").is_err());
        assert!(token_pin(&format!("H1{pin}::")).is_err());
        assert!(token_pin("H1abc::secret").is_err());
    }
}
