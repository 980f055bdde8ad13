//! `hatch node`: a node that joins a server — the engine, the Docker API, the agent, and the exec
//! streaming endpoint (mutual TLS; only the server's certificate may open sessions).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use hatch_node::agent::remote::{AuditForwarder, RemoteControlPlane};
use hatch_node::agent::{Agent, AgentConfig, ControlPlane, client, join, tls};
use hatch_node::k8s::StreamingServer;

use crate::engine_setup::{EngineArgs, default_node_name, open_engine, require_root};

#[derive(Args)]
pub struct NodeArgs {
    /// The server, `https://HOST:PORT`.
    #[arg(long)]
    server: String,
    /// The join token `hatch server` printed (`H1<ca hash>::<secret>`).
    #[arg(long, env = "HATCH_TOKEN")]
    token: String,
    /// The node's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
    /// Where the exec streaming endpoint listens.
    #[arg(long, default_value = "0.0.0.0:10250")]
    streaming_listen: SocketAddr,
    /// `HOST:PORT` the server dials for execs (default: this machine's address towards the server).
    #[arg(long)]
    streaming_address: Option<String>,
}

/// The local address the kernel would use to reach `authority` (no packet is sent).
fn local_ip_towards(authority: &str) -> Option<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let target = authority.to_socket_addrs().ok()?.next()?;
    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    require_root("node")?;
    let name = args.name.clone().unwrap_or_else(default_node_name);
    let (_, authority) = client::parse_server_url(&args.server)?;
    let listener = TcpListener::bind(args.streaming_listen)
        .await
        .with_context(|| format!("listen on {}", args.streaming_listen))?;
    let port = listener.local_addr()?.port();
    let streaming_address = match &args.streaming_address {
        Some(a) => a.clone(),
        None => {
            let ip = match args.streaming_listen.ip() {
                ip if ip.is_unspecified() => local_ip_towards(&authority).with_context(|| {
                    format!("cannot tell this machine's address towards {authority}; pass --streaming-address")
                })?,
                ip => ip,
            };
            SocketAddr::new(ip, port).to_string()
        }
    };

    let opened = open_engine(args.engine).await?;
    let engine = opened.engine.clone();
    let agent_dir = opened.data_dir.join("agent");
    let identity = join::load_or_join(&args.server, &args.token, &name, &streaming_address, &agent_dir).await?;
    let control: Arc<dyn ControlPlane> = Arc::new(RemoteControlPlane::new(&args.server, &name, &identity)?);

    let shutdown = CancellationToken::new();
    let streaming = StreamingServer::new(engine.clone(), Some(AuditForwarder::start(control.clone())));
    let tls = tls::streaming_server_config(&identity.ca_pem, &identity.cert_pem, &identity.key_pem)?;
    tokio::spawn(streaming.serve(listener, Some(tls), shutdown.clone()));

    let agent = Agent::new(
        engine.clone(),
        AgentConfig { name: name.clone(), streaming_address: streaming_address.clone(), state_dir: agent_dir },
        control,
    );
    if let Err(e) = agent.report_now().await {
        tracing::warn!(error = %e, "first status report failed; the agent keeps trying");
    }
    tokio::spawn(agent.clone().run(shutdown.clone()));
    let docker = tokio::spawn(hatch_node::docker::serve(engine, opened.docker_socket.clone(), shutdown.clone()));

    println!("hatch node {name:?} joined {} (data in {})", args.server, opened.data_dir.display());
    println!();
    println!("  export DOCKER_HOST=unix://{}", opened.docker_socket.display());
    println!();
    println!("Exec streaming endpoint: {streaming_address} (mutual TLS)");

    tokio::select! {
        result = crate::shutdown::requested() => result.context("listening for Ctrl-C and SIGTERM")?,
        result = docker => {
            result.context("docker API task")??;
            anyhow::bail!("the Docker API stopped unexpectedly");
        }
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    Ok(())
}
