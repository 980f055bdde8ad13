//! `hatch token create --role view|admin [--name N]`: mints a bearer token on the server (needs an
//! admin's kubeconfig).

use http::Method;
use serde::Deserialize;
use serde_json::json;

use crate::cluster::{Cluster, ClusterError};

#[derive(Debug, Deserialize)]
pub struct Token {
    pub name: String,
    pub role: String,
    pub token: String,
}

pub async fn create(cluster: &Cluster, role: &str, name: Option<&str>) -> Result<Token, ClusterError> {
    let body = serde_json::to_vec(&json!({ "role": role, "name": name })).unwrap_or_default();
    let answer = cluster.request(Method::POST, "/hatch/v1/tokens", Some(body), "application/json").await?;
    serde_json::from_slice(&answer).map_err(|e| ClusterError::Connection {
        server: cluster.config.server.clone(),
        reason: format!("unexpected answer to token create: {e}"),
    })
}
