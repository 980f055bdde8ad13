//! Finding the cluster as kubectl does: `$KUBECONFIG` (the first file that has a current
//! context), else `~/.kube/config`; then the current context's cluster, user and namespace.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("no kubeconfig: set KUBECONFIG (hatch up writes DATA_DIR/kubeconfig) or create ~/.kube/config")]
    Missing,
    #[error("read kubeconfig {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("kubeconfig {path} is not valid YAML: {message}")]
    Parse { path: String, message: String },
    #[error("kubeconfig {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    clusters: Vec<Named<ClusterEntry>>,
    #[serde(default)]
    users: Vec<Named<UserEntry>>,
    #[serde(default)]
    contexts: Vec<Named<ContextEntry>>,
    #[serde(default, rename = "current-context")]
    current_context: String,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: T,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry {
    server: String,
    #[serde(default)]
    certificate_authority_data: Option<String>,
    #[serde(default)]
    certificate_authority: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_file: Option<String>,
    #[serde(default)]
    client_certificate_data: Option<String>,
    #[serde(default)]
    client_key_data: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ContextEntry {
    cluster: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// Everything needed to talk to the API server.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `https://host:port`, without a trailing slash.
    pub server: String,
    /// PEM of the CA that signed the server's certificate (`None`: the system roots).
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_tls_verify: bool,
    pub token: Option<String>,
    /// PEM client certificate and key, for certificate authentication.
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
    pub namespace: String,
    /// The file it came from, for error messages.
    pub source: PathBuf,
}

fn candidates() -> Vec<PathBuf> {
    match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(list) => std::env::split_paths(&list).collect(),
        None => std::env::var_os("HOME").map(|h| vec![Path::new(&h).join(".kube/config")]).unwrap_or_default(),
    }
}

/// Loads the current context from the kubeconfig kubectl would use.
pub fn load() -> Result<ClusterConfig, KubeconfigError> {
    for path in candidates() {
        if !path.exists() {
            continue;
        }
        let config = load_file(&path)?;
        if let Some(config) = config {
            return Ok(config);
        }
    }
    Err(KubeconfigError::Missing)
}

fn decode_b64(path: &Path, field: &str, value: &str) -> Result<Vec<u8>, KubeconfigError> {
    base64::engine::general_purpose::STANDARD.decode(value.trim()).map_err(|e| KubeconfigError::Invalid {
        path: path.display().to_string(),
        message: format!("{field} is not base64: {e}"),
    })
}

/// Reads one kubeconfig file; `Ok(None)` when it has no current context.
pub fn load_file(path: &Path) -> Result<Option<ClusterConfig>, KubeconfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KubeconfigError::Read { path: shown.clone(), source })?;
    let file: File = serde_saphyr::from_str(&text)
        .map_err(|e| KubeconfigError::Parse { path: shown.clone(), message: e.to_string() })?;
    if file.current_context.is_empty() {
        return Ok(None);
    }
    let invalid = |message: String| KubeconfigError::Invalid { path: shown.clone(), message };
    let context = file
        .contexts
        .iter()
        .find(|c| c.name == file.current_context)
        .ok_or_else(|| invalid(format!("current context {:?} is not defined", file.current_context)))?;
    let cluster = file
        .clusters
        .iter()
        .find(|c| c.name == context.value.cluster)
        .ok_or_else(|| invalid(format!("cluster {:?} is not defined", context.value.cluster)))?;
    let user = file.users.iter().find(|u| u.name == context.value.user).map(|u| &u.value);
    let dir = path.parent().unwrap_or(Path::new("."));
    let ca_pem = match (&cluster.value.certificate_authority_data, &cluster.value.certificate_authority) {
        (Some(data), _) => Some(decode_b64(path, "certificate-authority-data", data)?),
        (None, Some(file)) => {
            Some(std::fs::read(dir.join(file)).map_err(|source| KubeconfigError::Read { path: file.clone(), source })?)
        }
        (None, None) => None,
    };
    let token = match user {
        Some(UserEntry { token: Some(t), .. }) => Some(t.trim().to_string()),
        Some(UserEntry { token_file: Some(f), .. }) => Some(
            std::fs::read_to_string(dir.join(f))
                .map_err(|source| KubeconfigError::Read { path: f.clone(), source })?
                .trim()
                .to_string(),
        ),
        _ => None,
    };
    let pem = |field: &str, v: &Option<String>| v.as_ref().map(|d| decode_b64(path, field, d)).transpose();
    Ok(Some(ClusterConfig {
        server: cluster.value.server.trim_end_matches('/').to_string(),
        ca_pem,
        insecure_skip_tls_verify: cluster.value.insecure_skip_tls_verify,
        token,
        client_cert_pem: pem("client-certificate-data", &user.and_then(|u| u.client_certificate_data.clone()))?,
        client_key_pem: pem("client-key-data", &user.and_then(|u| u.client_key_data.clone()))?,
        namespace: context.value.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into()),
        source: path.to_path_buf(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_current_context() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster:\n    server: https://127.0.0.1:6443/\n    certificate-authority-data: aGVsbG8=\n\
             users:\n- name: u\n  user:\n    token: secret\n\
             contexts:\n- name: c\n  context:\n    cluster: a\n    user: u\n    namespace: team\n\
             current-context: c\n",
        )?;
        let config = load_file(&path)?.ok_or("no context")?;
        assert_eq!(config.server, "https://127.0.0.1:6443");
        assert_eq!(config.ca_pem.as_deref(), Some(&b"hello"[..]));
        assert_eq!(config.token.as_deref(), Some("secret"));
        assert_eq!(config.namespace, "team");
        Ok(())
    }

    #[test]
    fn broken_files_are_clear_errors() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config");
        std::fs::write(&path, "current-context: nope\ncontexts: []\n")?;
        assert!(matches!(load_file(&path), Err(KubeconfigError::Invalid { .. })));
        std::fs::write(&path, ": : :\n  - [")?;
        assert!(matches!(load_file(&path), Err(KubeconfigError::Parse { .. })));
        Ok(())
    }
}
