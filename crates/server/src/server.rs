//! The server: state, first-start bootstrap (CA, admin and join tokens), the TLS listener, and the
//! in-process interface a local node uses under `hatch up`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Body};
use crate::audit::{AuditError, AuditLog};
use crate::auth::{Identity, Role, TokenError, Tokens, random_secret};
use crate::contract::{DesiredPods, ExecEnd, NodeStatusReport};
use crate::dialer::NodeDialer;
use crate::error::ApiError;
use crate::pki::{Pki, PkiError, common_name, write_file};
use crate::registry::Registry;
use crate::store::{self, Store, StoreError};
use crate::tls::{self, TlsError};

/// Nodes not heard from for this long are NotReady (docs/architecture.md).
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(40);
/// Prefix of join tokens: `H1<sha256 of the CA>::<secret>`; the node pins the CA with it.
pub const JOIN_TOKEN_PREFIX: &str = "H1";
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io { path: path.display().to_string(), source }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// `embedded` (default), `redb:///path`, `etcd://host:port[,…][/prefix]`.
    pub store_url: Option<String>,
    pub node_timeout: Duration,
    /// Names (IPs or DNS) the server certificate must cover besides localhost and the host name.
    pub cert_names: Vec<String>,
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf) -> ServerConfig {
        ServerConfig { data_dir, store_url: None, node_timeout: DEFAULT_NODE_TIMEOUT, cert_names: Vec::new() }
    }
}

/// The node that lives in the server's process (`hatch up`): execs to its pods are a function
/// call with the client's own request, so the upgrade is the client's connection.
#[async_trait]
pub trait LocalNode: Send + Sync + 'static {
    async fn exec(&self, req: Request<Incoming>) -> Response<Body>;
    /// A node-proxy request for the node's `/images` (path already rewritten).
    async fn images(&self, req: Request<Incoming>) -> Response<Body>;
}

pub struct Server {
    pub config: ServerConfig,
    pub pki: Pki,
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub tokens: Tokens,
    pub audit: AuditLog,
    tls: Arc<rustls::ServerConfig>,
    pub(crate) dialer: Arc<NodeDialer>,
    local: RwLock<Option<(String, Arc<dyn LocalNode>)>>,
    admin_token: String,
    join_token: String,
    /// `host:port` clients reach the server at (for `/api`'s serverAddressByClientCIDRs).
    advertised: RwLock<String>,
}

/// Reads a token file, or writes a new token there (0600).
fn load_or_create_token(
    path: &Path,
    make: impl FnOnce() -> String,
    valid: impl Fn(&str) -> bool,
) -> Result<String, ServerError> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_string();
        if valid(&existing) {
            return Ok(existing);
        }
    }
    let token = make();
    write_file(path, format!("{token}\n").as_bytes(), true)?;
    Ok(token)
}

impl Server {
    /// Opens the data directory: CA and server certificate, store, audit log, and the admin and
    /// join tokens (created at first start, in `DATA/admin-token` and `DATA/join-token`).
    pub async fn open(config: ServerConfig) -> Result<Arc<Server>, ServerError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(io_err(&data_dir))?;
        let pki = Pki::load_or_create(&data_dir.join("pki"), &config.cert_names)?;
        let store = store::open(config.store_url.as_deref(), &data_dir).await?;
        let registry = Registry::open(store.clone(), config.node_timeout).await?;
        let tokens = Tokens::new(store.clone());
        let admin_token = load_or_create_token(&data_dir.join("admin-token"), random_secret, |t| t.len() >= 32)?;
        tokens.register(&admin_token, "admin", Role::Admin).await?;
        let pin = format!("{JOIN_TOKEN_PREFIX}{}::", pki.ca_fingerprint());
        let join_token = load_or_create_token(
            &data_dir.join("join-token"),
            || format!("{pin}{}", random_secret()),
            |t| t.starts_with(&pin) && t.len() > pin.len() + 32,
        )?;
        tokens.register(&join_token, "node-join", Role::Join).await?;
        let audit = AuditLog::open(&data_dir.join("audit.log"))?;
        let tls = tls::server_config(&pki)?;
        let dialer = NodeDialer::new(tls::node_dial_config(&pki)?);
        Ok(Arc::new(Server {
            config,
            pki,
            store,
            registry,
            tokens,
            audit,
            tls,
            dialer,
            local: RwLock::new(None),
            admin_token,
            join_token,
            advertised: RwLock::new(String::new()),
        }))
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub fn join_token(&self) -> &str {
        &self.join_token
    }

    pub fn set_local_node(&self, name: &str, node: Arc<dyn LocalNode>) {
        *self.local.write().unwrap_or_else(|p| p.into_inner()) = Some((name.to_string(), node));
    }

    pub(crate) fn local_node(&self, name: &str) -> Option<Arc<dyn LocalNode>> {
        let local = self.local.read().unwrap_or_else(|p| p.into_inner());
        local.as_ref().filter(|(n, _)| n == name).map(|(_, node)| node.clone())
    }

    pub(crate) fn advertised_address(&self) -> String {
        self.advertised.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A kubeconfig for `server_url` with the CA and `token`.
    pub fn kubeconfig(&self, server_url: &str, user: &str, token: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.pki.ca_pem());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: hatch\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: hatch\n  context:\n    cluster: hatch\n    user: {user}\n    namespace: default\ncurrent-context: hatch\npreferences: {{}}\n"
        )
    }

    /// Writes the admin kubeconfig atomically (0600).
    pub fn write_admin_kubeconfig(&self, path: &Path, server_url: &str) -> Result<(), ServerError> {
        write_file(path, self.kubeconfig(server_url, "admin", &self.admin_token).as_bytes(), true)?;
        Ok(())
    }

    /// Serves HTTPS on `listener` until `shutdown`; also runs the housekeeping loop.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        if let Ok(addr) = listener.local_addr() {
            *self.advertised.write().unwrap_or_else(|p| p.into_inner()) = advertised(addr);
        }
        let sweeper = tokio::spawn(self.clone().sweep_loop(shutdown.clone()));
        let acceptor = TlsAcceptor::from(self.tls.clone());
        loop {
            let (tcp, remote) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let server = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "tls handshake");
                        return;
                    }
                    Err(_) => return,
                };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| common_name(cert.as_ref()))
                    .map(|cn| Identity::from_certificate_cn(&cn))
                    .unwrap_or(Identity::Anonymous);
                let service = service_fn(move |req| {
                    let server = server.clone();
                    let identity = identity.clone();
                    async move { Ok::<_, Infallible>(api::handle(server, identity, remote, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
            });
        }
        sweeper.abort();
    }

    async fn sweep_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.registry.sweep().await {
                tracing::warn!(error = %e, "housekeeping");
            }
        }
    }

    // ---- the node API, in process (hatch up) and behind /hatch/v1/nodes (api::nodes) ----

    pub async fn node_status(&self, node: &str, report: NodeStatusReport) -> Result<(), ApiError> {
        self.registry.report_status(node, report).await
    }

    pub async fn node_desired_pods(&self, node: &str, known: &str, timeout: Duration) -> Result<DesiredPods, ApiError> {
        self.registry.desired_pods(node, known, timeout.min(Duration::from_secs(120))).await
    }

    /// The end of an exec this server forwarded; `node` (when given) must be the node it went to.
    pub async fn exec_finished(&self, node: Option<&str>, end: ExecEnd) -> Result<(), ApiError> {
        let written = self
            .audit
            .finish(&end.audit_id, node, |r| {
                r.start = Some(end.started.clone());
                r.end = Some(end.ended.clone());
                r.exit_code = end.exit_code;
                r.bytes_in = Some(end.bytes_in);
                r.bytes_out = Some(end.bytes_out);
                r.error = end.error.clone();
            })
            .await
            .map_err(ApiError::internal)?;
        if !written {
            tracing::debug!(audit_id = %end.audit_id, "exec end without a pending start; ignored");
        }
        Ok(())
    }
}

fn advertised(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = crate::pki::hostname().unwrap_or_else(|| "127.0.0.1".into());
        format!("{host}:{}", addr.port())
    } else {
        addr.to_string()
    }
}
