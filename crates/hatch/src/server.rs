//! `hatch server`: the API server alone; nodes join it with `hatch node`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use hatch_server::{Server, ServerConfig};

#[derive(Args)]
pub struct ServerArgs {
    /// Where the server keeps its CA, store, tokens and audit log.
    #[arg(long, default_value = "/var/lib/hatch-server", env = "HATCH_SERVER_DATA_DIR")]
    data_dir: PathBuf,
    /// HTTPS address (port 0 picks a free one; the real address is printed).
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// `embedded` (default, DATA_DIR/store.redb), `redb:///path`, or `etcd://host:port[,host:port][/prefix]`.
    #[arg(long)]
    store: Option<String>,
    /// More names (DNS or IP) for the server certificate.
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// Seconds without a status after which a node is NotReady.
    #[arg(long, default_value_t = 40, hide = true)]
    node_timeout: u64,
}

/// Names the server certificate needs: the listen address, or every interface address when it
/// listens on all of them.
pub fn certificate_names(listen: &SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = extra.to_vec();
    if listen.ip().is_unspecified() {
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for a in addrs {
                let ip: Option<IpAddr> = a.address.as_ref().and_then(|s| {
                    s.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                });
                if let Some(ip) = ip.filter(|ip| !ip.is_unspecified()) {
                    names.push(ip.to_string());
                }
            }
        }
    } else {
        names.push(listen.ip().to_string());
    }
    names.sort();
    names.dedup();
    names
}

/// The URL clients use for a bound address (loopback for a wildcard).
pub fn client_url(addr: &SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    format!("https://{ip}:{}", addr.port())
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut config = ServerConfig::new(data_dir.clone());
    config.store_url = args.store.clone();
    config.node_timeout = Duration::from_secs(args.node_timeout.max(1));
    config.cert_names = certificate_names(&addr, &args.tls_san);
    let server = Server::open(config).await?;
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.clone().serve(listener, shutdown.clone()));
    let url = client_url(&addr);
    let kubeconfig = data_dir.join("kubeconfig");
    server.write_admin_kubeconfig(&kubeconfig, &url)?;

    println!("hatch server is up on {url} (data in {})", data_dir.display());
    println!();
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!();
    println!("Join nodes with:");
    println!();
    println!("  hatch node --server {url} --token {}", server.join_token());
    println!();

    tokio::select! {
        result = crate::shutdown::requested() => result.context("listening for Ctrl-C and SIGTERM")?,
        _ = serving => anyhow::bail!("the API server stopped unexpectedly"),
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    Ok(())
}
