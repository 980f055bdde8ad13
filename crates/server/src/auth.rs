//! Authentication (bearer tokens stored hashed, node client certificates) and authorization (the
//! exec policy).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pki::NODE_CN_PREFIX;
use crate::store::{Store, StoreError};

const TOKENS_PREFIX: &str = "/hatch/tokens/";
/// How long a token lookup is trusted before the store is asked again.
const CACHE_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, exec included.
    Admin,
    /// Read-only: get, list and watch; never exec.
    View,
    /// Only joins nodes.
    Join,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "view" => Some(Role::View),
            "join" => Some(Role::Join),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::View => "view",
            Role::Join => "join",
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    Token {
        name: String,
        role: Role,
    },
    /// A node, by its client certificate `CN=node:<name>`.
    Node(String),
}

impl Identity {
    /// The user name written to the audit log and in Forbidden messages.
    pub fn user(&self) -> String {
        match self {
            Identity::Anonymous => "system:anonymous".into(),
            Identity::Token { name, .. } => name.clone(),
            Identity::Node(name) => format!("system:node:{name}"),
        }
    }

    pub fn role_name(&self) -> &'static str {
        match self {
            Identity::Anonymous => "anonymous",
            Identity::Token { role, .. } => role.as_str(),
            Identity::Node(_) => "node",
        }
    }

    /// The identity a verified client certificate proves, by its common name.
    pub fn from_certificate_cn(cn: &str) -> Identity {
        match cn.strip_prefix(NODE_CN_PREFIX) {
            Some(name) if !name.is_empty() => Identity::Node(name.to_string()),
            _ => Identity::Anonymous,
        }
    }
}

/// What a request wants to do, in Kubernetes RBAC terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
        }
    }

    fn read_only(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Action<'a> {
    pub verb: Verb,
    /// Plural resource (`pods`), or `tokens` for hatch's own API.
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
}

/// Subresources that run code or open connections into a pod: never read-only.
const CONNECT_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward", "proxy"];

/// The policy. `Err` carries the Kubernetes-style reason, e.g.
/// `User "viewer" cannot create resource "pods/exec" in API group "" in the namespace "default"`.
pub fn authorize(identity: &Identity, action: &Action<'_>) -> Result<(), String> {
    let connect = action.subresource.is_some_and(|s| CONNECT_SUBRESOURCES.contains(&s));
    let allowed = match identity {
        Identity::Token { role: Role::Admin, .. } => true,
        // Kubernetes let `get` exec over WebSocket for years (the GET upgrade); not here: any
        // exec is a create, whatever the HTTP method.
        Identity::Token { role: Role::View, .. } => action.verb.read_only() && !connect && action.resource != "tokens",
        Identity::Token { role: Role::Join, .. } | Identity::Node(_) | Identity::Anonymous => false,
    };
    if allowed {
        return Ok(());
    }
    // Exec over GET is still a create in the message, as Kubernetes reports it today.
    let verb = if connect { "create" } else { action.verb.as_str() };
    let resource = match action.subresource {
        Some(sub) => format!("{}/{sub}", action.resource),
        None => action.resource.to_string(),
    };
    let scope = match action.namespace {
        Some(ns) => format!("in the namespace {}", go_quote(ns)),
        None => "at the cluster scope".to_string(),
    };
    Err(format!(
        "User {} cannot {verb} resource {} in API group \"\" {scope}",
        go_quote(&identity.user()),
        go_quote(&resource)
    ))
}

fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    pub created: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt token record: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// Bearer tokens. Only a SHA-256 of each token is stored: a copy of the store grants nothing.
pub struct Tokens {
    store: Arc<dyn Store>,
    cache: Mutex<HashMap<String, (TokenRecord, Instant)>>,
}

/// A new random secret (256 bits, hex).
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Tokens {
    pub fn new(store: Arc<dyn Store>) -> Tokens {
        Tokens { store, cache: Mutex::new(HashMap::new()) }
    }

    /// Records `token` (idempotent): used for the admin and join tokens made at first start.
    pub async fn register(&self, token: &str, name: &str, role: Role) -> Result<(), TokenError> {
        let record = TokenRecord { name: name.to_string(), role, created: crate::k8s::now_rfc3339() };
        let key = format!("{TOKENS_PREFIX}{}", digest(token));
        match self.store.get(&key).await? {
            Some(existing) if serde_json::from_slice::<TokenRecord>(&existing.value).is_ok_and(|r| r.role == role) => {
                Ok(())
            }
            _ => {
                self.store.put(&key, serde_json::to_vec(&record)?).await?;
                Ok(())
            }
        }
    }

    /// Mints a new token for `role`.
    pub async fn mint(&self, name: &str, role: Role) -> Result<String, TokenError> {
        let token = random_secret();
        let record = TokenRecord { name: name.to_string(), role, created: crate::k8s::now_rfc3339() };
        self.store.create(&format!("{TOKENS_PREFIX}{}", digest(&token)), serde_json::to_vec(&record)?).await?;
        Ok(token)
    }

    pub async fn lookup(&self, token: &str) -> Result<Option<TokenRecord>, TokenError> {
        if token.is_empty() || token.len() > 4096 {
            return Ok(None);
        }
        let hash = digest(token);
        if let Some((record, at)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&hash)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(Some(record.clone()));
        }
        let Some(kv) = self.store.get(&format!("{TOKENS_PREFIX}{hash}")).await? else { return Ok(None) };
        let record: TokenRecord = serde_json::from_slice(&kv.value)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(hash, (record.clone(), Instant::now()));
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn token(role: Role) -> Identity {
        Identity::Token { name: format!("{}-user", role.as_str()), role }
    }

    fn exec(verb: Verb) -> Action<'static> {
        Action { verb, resource: "pods", subresource: Some("exec"), namespace: Some("default") }
    }

    #[test]
    fn admin_may_do_everything() {
        let admin = token(Role::Admin);
        for verb in [Verb::Get, Verb::Create, Verb::Delete] {
            assert!(authorize(&admin, &exec(verb)).is_ok());
            assert!(authorize(&admin, &Action { verb, resource: "pods", subresource: None, namespace: None }).is_ok());
        }
    }

    #[test]
    fn view_reads_but_never_execs() {
        let view = token(Role::View);
        for verb in [Verb::Get, Verb::List, Verb::Watch] {
            let a = Action { verb, resource: "pods", subresource: None, namespace: Some("default") };
            assert!(authorize(&view, &a).is_ok());
        }
        // GET (WebSocket) and POST (SPDY) exec are both refused.
        for verb in [Verb::Get, Verb::Create] {
            let why = authorize(&view, &exec(verb)).unwrap_err();
            assert_eq!(
                why,
                r#"User "view-user" cannot create resource "pods/exec" in API group "" in the namespace "default""#
            );
        }
        for sub in ["attach", "portforward", "proxy"] {
            let a = Action { verb: Verb::Get, resource: "pods", subresource: Some(sub), namespace: Some("x") };
            assert!(authorize(&view, &a).is_err());
        }
        let create = Action { verb: Verb::Create, resource: "pods", subresource: None, namespace: Some("default") };
        assert!(authorize(&view, &create).is_err());
        let delete = Action { verb: Verb::Delete, resource: "pods", subresource: None, namespace: Some("default") };
        assert!(authorize(&view, &delete).is_err());
        let tokens = Action { verb: Verb::Get, resource: "tokens", subresource: None, namespace: None };
        assert!(authorize(&view, &tokens).is_err());
        let nodes = Action { verb: Verb::List, resource: "nodes", subresource: None, namespace: None };
        assert!(authorize(&view, &nodes).is_ok());
    }

    #[test]
    fn others_get_nothing_from_the_kubernetes_api() {
        for who in [Identity::Anonymous, Identity::Node("n1".into()), token(Role::Join)] {
            let a = Action { verb: Verb::Get, resource: "pods", subresource: None, namespace: None };
            assert!(authorize(&who, &a).unwrap_err().ends_with("at the cluster scope"));
            assert!(authorize(&who, &exec(Verb::Create)).is_err());
        }
    }

    #[test]
    fn certificate_names() {
        assert_eq!(Identity::from_certificate_cn("node:w1"), Identity::Node("w1".into()));
        assert_eq!(Identity::from_certificate_cn("node:"), Identity::Anonymous);
        assert_eq!(Identity::from_certificate_cn("hatch-server"), Identity::Anonymous);
        assert_eq!(Identity::Node("w1".into()).user(), "system:node:w1");
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::EmbeddedStore::open(&dir.path().join("s.redb")).await.unwrap());
        let tokens = Tokens::new(store.clone());
        let t = tokens.mint("viewer", Role::View).await.unwrap();
        let rec = tokens.lookup(&t).await.unwrap().unwrap();
        assert_eq!((rec.name.as_str(), rec.role), ("viewer", Role::View));
        assert!(tokens.lookup("nope").await.unwrap().is_none());
        assert!(tokens.lookup("").await.unwrap().is_none());
        let listing = store.list(TOKENS_PREFIX).await.unwrap();
        assert_eq!(listing.items.len(), 1);
        assert!(!listing.items[0].key.contains(&t));
        assert!(!String::from_utf8_lossy(&listing.items[0].value).contains(&t));
        tokens.register("fixed", "admin", Role::Admin).await.unwrap();
        tokens.register("fixed", "admin", Role::Admin).await.unwrap();
        assert_eq!(tokens.lookup("fixed").await.unwrap().unwrap().role, Role::Admin);
    }
}
