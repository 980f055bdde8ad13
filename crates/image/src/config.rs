//! The Docker / OCI image config JSON (`application/vnd.oci.image.config.v1+json`).
//!
//! Loaded configs keep their raw bytes elsewhere (the image id is their sha256), so these
//! types only need to read every field we use and keep the rest in `extra` for inspect.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::timefmt::parse_rfc3339;

/// `PATH` Docker gives containers whose image sets none.
pub fn default_path_env() -> String {
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()
}

/// `null` and absent both mean "default" in Go-written JSON.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The whole image config document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, deserialize_with = "null_as_default")]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub os: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Docker's commit / import message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: RunConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    pub rootfs: RootFs,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Fields hatch does not interpret (`container_config`, `docker_version`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ImageConfig {
    /// Parse config bytes, checking what flattening layers relies on.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let config: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if config.rootfs.kind != "layers" {
            return Err(format!("rootfs type is {:?}, expected \"layers\"", config.rootfs.kind));
        }
        for diff_id in &config.rootfs.diff_ids {
            if diff_id.strip_prefix("sha256:").is_none_or(|hex| !crate::is_full_hex(hex)) {
                return Err(format!("diff id {diff_id:?} is not a sha256:<64 hex> digest"));
            }
        }
        Ok(config)
    }

    /// Creation time in unix seconds (0 when absent or malformed, as Docker shows it).
    pub fn created_unix(&self) -> i64 {
        self.created.as_deref().and_then(parse_rfc3339).unwrap_or(0)
    }

    /// Hex of each layer's diff id, in order.
    pub fn diff_id_hexes(&self) -> Vec<String> {
        self.rootfs.diff_ids.iter().map(|d| d.trim_start_matches("sha256:").to_owned()).collect()
    }
}

/// The `config` section: how to run a container from the image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `"80/tcp": {}`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Fields hatch does not interpret (`Healthcheck`, `Shell`, `OnBuild`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl RunConfig {
    pub fn env(&self) -> &[String] {
        self.env.as_deref().unwrap_or_default()
    }

    pub fn cmd(&self) -> &[String] {
        self.cmd.as_deref().unwrap_or_default()
    }

    pub fn entrypoint(&self) -> &[String] {
        self.entrypoint.as_deref().unwrap_or_default()
    }

    /// Working directory, `/` when unset (as runc needs an absolute path).
    pub fn working_dir(&self) -> &str {
        match self.working_dir.as_deref() {
            None | Some("") => "/",
            Some(dir) => dir,
        }
    }

    /// User spec (`uid[:gid]` or names), empty for root.
    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or_default()
    }

    /// Exposed ports as `80/tcp` strings, sorted.
    pub fn exposed_ports(&self) -> Vec<String> {
        self.exposed_ports.as_ref().map(|ports| ports.keys().cloned().collect()).unwrap_or_default()
    }

    /// Set `KEY=value` in `env`, replacing an earlier value of `KEY`.
    pub fn set_env(&mut self, key: &str, value: &str) {
        let env = self.env.get_or_insert_with(Vec::new);
        let entry = format!("{key}={value}");
        let prefix = format!("{key}=");
        match env.iter_mut().find(|e| e.starts_with(&prefix) || *e == key) {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self { kind: "layers".to_owned(), diff_ids: Vec::new() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// GOARCH spelling of the build target, as image configs carry it.
pub(crate) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_config_with_nulls() {
        let json = br#"{"architecture":"amd64","config":{"Hostname":"","Env":["PATH=/bin"],
            "Cmd":["sh"],"Entrypoint":null,"Labels":null,"WorkingDir":"","User":"",
            "ExposedPorts":{"80/tcp":{}}},"created":"2023-05-19T20:19:19.111222333Z",
            "docker_version":"20.10.24","history":[{"created":"2023-05-19T20:19:19Z",
            "created_by":"/bin/sh -c #(nop) ADD file:abc in / "}],"os":"linux",
            "rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
        let config = ImageConfig::parse(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.config.env(), ["PATH=/bin"]);
        assert_eq!(config.config.cmd(), ["sh"]);
        assert!(config.config.entrypoint().is_empty());
        assert_eq!(config.config.working_dir(), "/");
        assert_eq!(config.config.exposed_ports(), ["80/tcp"]);
        assert_eq!(config.created_unix(), 1_684_527_559);
        assert_eq!(config.rootfs.diff_ids.len(), 1);
        assert!(config.extra.contains_key("docker_version"));
        assert!(config.config.extra.contains_key("Hostname"));
    }

    #[test]
    fn refuses_bad_rootfs() {
        assert!(ImageConfig::parse(br#"{"rootfs":{"type":"other","diff_ids":[]}}"#).is_err());
        assert!(ImageConfig::parse(br#"{"rootfs":{"type":"layers","diff_ids":["md5:x"]}}"#).is_err());
        assert!(ImageConfig::parse(b"[1]").is_err());
    }

    #[test]
    fn set_env_replaces() {
        let mut run = RunConfig::default();
        run.set_env("A", "1");
        run.set_env("B", "2");
        run.set_env("A", "3");
        assert_eq!(run.env(), ["A=3", "B=2"]);
    }
}
