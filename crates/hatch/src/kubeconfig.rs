//! Finding the server as kubectl does: `--kubeconfig`, `$KUBECONFIG` (first file), or
//! `~/.kube/config`; the current context's cluster URL, CA and bearer token.

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine as _;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Config {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context_>>,
    #[serde(default)]
    current_context: String,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    item: Option<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    #[serde(default)]
    certificate_authority_data: Option<String>,
    #[serde(default)]
    certificate_authority: Option<PathBuf>,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    token: Option<String>,
}

#[derive(Deserialize)]
struct Context_ {
    cluster: String,
    user: String,
}

/// What a client needs to call the server.
pub struct Target {
    pub server: String,
    pub ca_pem: String,
    pub token: String,
}

fn locate(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(list) = std::env::var_os("KUBECONFIG")
        && let Some(first) = std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty())
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME").context("neither KUBECONFIG nor HOME is set")?;
    Ok(PathBuf::from(home).join(".kube").join("config"))
}

pub fn load(explicit: Option<&Path>) -> anyhow::Result<Target> {
    let path = locate(explicit)?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("read kubeconfig {}", path.display()))?;
    parse(&text, path.parent()).with_context(|| format!("kubeconfig {}", path.display()))
}

fn parse(text: &str, base: Option<&Path>) -> anyhow::Result<Target> {
    let config: Config = serde_saphyr::from_str(text).context("not a kubeconfig")?;
    let context_name = &config.current_context;
    let context = config
        .contexts
        .iter()
        .find(|c| &c.name == context_name)
        .and_then(|c| c.item.as_ref())
        .with_context(|| format!("current context {context_name:?} not found"))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.item.as_ref())
        .with_context(|| format!("cluster {:?} not found", context.cluster))?;
    let user = config
        .users
        .iter()
        .find(|u| u.name == context.user)
        .and_then(|u| u.item.as_ref())
        .with_context(|| format!("user {:?} not found", context.user))?;
    let ca_pem = match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
        (Some(data), _) => String::from_utf8(
            base64::engine::general_purpose::STANDARD.decode(data.trim()).context("certificate-authority-data")?,
        )
        .context("certificate-authority-data is not PEM")?,
        (None, Some(file)) => {
            let file = match base {
                Some(b) if file.is_relative() => b.join(file),
                _ => file.clone(),
            };
            std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?
        }
        (None, None) => anyhow::bail!("cluster {:?} has no certificate authority", context.cluster),
    };
    let token = user.token.clone().with_context(|| format!("user {:?} has no bearer token", context.user))?;
    Ok(Target { server: cluster.server.clone(), ca_pem, token })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn reads_what_the_server_writes() {
        let text = "apiVersion: v1\nkind: Config\nclusters:\n- name: hatch\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: LS0tCg==\nusers:\n- name: admin\n  user:\n    token: abc\ncontexts:\n- name: hatch\n  context:\n    cluster: hatch\n    user: admin\n    namespace: default\ncurrent-context: hatch\npreferences: {}\n";
        let t = parse(text, None).unwrap();
        assert_eq!(t.server, "https://127.0.0.1:6443");
        assert_eq!(t.ca_pem, "---\n");
        assert_eq!(t.token, "abc");
        assert!(parse("current-context: nope\n", None).is_err());
    }
}
