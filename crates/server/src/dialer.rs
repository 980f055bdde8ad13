//! Connections to nodes' streaming endpoints (mutual TLS).
//!
//! Each exec gets a connection of its own that carries exactly one request. To keep the TLS
//! handshake out of exec start, one connection per recently used node is dialled ahead of time and
//! handed to the next exec; it has never carried a request, and it is discarded before the node
//! would time it out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A warm connection older than this is dropped unused (nodes close silent connections at 30 s).
const WARM_FOR: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("error dialing node {node:?} at {address}: {reason}")]
    Unreachable { node: String, address: String, reason: String },
    #[error("node name {0:?} cannot be a TLS server name")]
    BadName(String),
}

type Key = (String, String);

/// Whether an unused connection is still open: the node sends nothing before a request, so a
/// read that completes at once means it closed (or broke the protocol).
fn still_open(conn: &mut TlsStream<TcpStream>) -> bool {
    let mut byte = [0u8; 1];
    conn.read(&mut byte).now_or_never().is_none()
}

pub struct NodeDialer {
    tls: TlsConnector,
    warm: Mutex<HashMap<Key, (TlsStream<TcpStream>, Instant)>>,
    dialling: Mutex<std::collections::HashSet<Key>>,
}

impl NodeDialer {
    pub fn new(config: Arc<rustls::ClientConfig>) -> Arc<NodeDialer> {
        Arc::new(NodeDialer {
            tls: TlsConnector::from(config),
            warm: Mutex::new(HashMap::new()),
            dialling: Mutex::new(Default::default()),
        })
    }

    /// A fresh connection: dials, verifying the node's certificate for `node`.
    pub async fn dial(&self, node: &str, address: &str) -> Result<TlsStream<TcpStream>, DialError> {
        let unreachable =
            |reason: String| DialError::Unreachable { node: node.to_string(), address: address.to_string(), reason };
        let name = ServerName::try_from(node.to_string()).map_err(|_| DialError::BadName(node.to_string()))?;
        let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        tokio::time::timeout(DIAL_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| unreachable("tls handshake timed out".into()))?
            .map_err(|e| unreachable(format!("tls: {e}")))
    }

    /// A warm connection if one is ready (`true`), else a fresh one; either way another is
    /// dialled in the background for the next exec.
    pub async fn connect(
        self: &Arc<Self>,
        node: &str,
        address: &str,
    ) -> Result<(TlsStream<TcpStream>, bool), DialError> {
        let key = (node.to_string(), address.to_string());
        let warm = self.warm.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        let warm = warm.and_then(|(mut conn, at)| (at.elapsed() < WARM_FOR && still_open(&mut conn)).then_some(conn));
        let conn = match warm {
            Some(conn) => (conn, true),
            None => (self.dial(node, address).await?, false),
        };
        self.prepare(key);
        Ok(conn)
    }

    /// Dials a connection for the next exec to `key`, unless one is ready or on its way.
    fn prepare(self: &Arc<Self>, key: Key) {
        if !self.dialling.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone()) {
            return;
        }
        let dialer = self.clone();
        tokio::spawn(async move {
            match dialer.dial(&key.0, &key.1).await {
                Ok(conn) => {
                    dialer.warm.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), (conn, Instant::now()));
                }
                Err(e) => tracing::debug!(error = %e, "pre-dialling a node"),
            }
            dialer.dialling.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        });
    }
}
