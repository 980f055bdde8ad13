//! `hatch up`: everything on one machine — the engine and its Docker API, the API server, and the
//! local node, in one process. Execs to the local node are in-process calls on the client's own
//! connection; the kubeconfig for kubectl is written to `DATA_DIR/kubeconfig`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use hatch_node::agent::{Agent, AgentConfig};
use hatch_node::k8s::StreamingServer;
use hatch_server::{Server, ServerConfig};

use crate::engine_setup::{EngineArgs, default_node_name, open_engine, require_root};
use crate::local::{LocalAudit, LocalControlPlane, LocalExec};
use crate::server::{certificate_names, client_url};

/// Where the API server listens unless told otherwise (a free port when it is taken).
const DEFAULT_LISTEN: &str = "127.0.0.1:6443";

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The API server's HTTPS address (default 127.0.0.1:6443, or a free port when that is taken;
    /// port 0 picks one). The kubeconfig names the real address.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

async fn bind(listen: Option<SocketAddr>) -> anyhow::Result<TcpListener> {
    if let Some(addr) = listen {
        return TcpListener::bind(addr).await.with_context(|| format!("listen on {addr}"));
    }
    match TcpListener::bind(DEFAULT_LISTEN).await {
        Ok(l) => Ok(l),
        Err(e) => {
            tracing::warn!(error = %e, "{DEFAULT_LISTEN} is taken; the API server takes a free port");
            TcpListener::bind("127.0.0.1:0").await.context("listen on 127.0.0.1")
        }
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    require_root("up")?;
    let listener = bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let opened = open_engine(args.engine).await?;
    let (engine, data_dir, docker_socket) = (opened.engine, opened.data_dir, opened.docker_socket);
    let demo = match hatch_node::demo::ensure_demo(&engine, &data_dir).await {
        Ok(demo) => demo,
        Err(e) => {
            tracing::warn!(error = %e, "could not start the demo pod");
            None
        }
    };

    let mut config = ServerConfig::new(data_dir.clone());
    config.cert_names = certificate_names(&addr, &[]);
    let server = Server::open(config).await?;
    let node = default_node_name();
    let streaming =
        StreamingServer::new(engine.clone(), Some(Arc::new(LocalAudit { server: server.clone(), node: node.clone() })));
    server.set_local_node(&node, Arc::new(LocalExec(streaming)));
    let labels = BTreeMap::from([("node-role.kubernetes.io/control-plane".to_string(), String::new())]);
    server.registry.register_node(&node, labels).await.map_err(|e| anyhow::anyhow!("register node {node}: {e}"))?;
    let agent = Agent::new(
        engine.clone(),
        AgentConfig { name: node.clone(), streaming_address: String::new(), state_dir: data_dir.join("agent") },
        Arc::new(LocalControlPlane { server: server.clone(), node: node.clone() }),
    );
    // The node is listed before anyone holds a kubeconfig.
    agent.report_now().await.with_context(|| format!("first status of node {node}"))?;

    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.clone().serve(listener, shutdown.clone()));
    tokio::spawn(agent.clone().run(shutdown.clone()));
    let kubeconfig = data_dir.join("kubeconfig");
    let url = client_url(&addr);
    server.write_admin_kubeconfig(&kubeconfig, &url)?;
    let docker = tokio::spawn(hatch_node::docker::serve(engine.clone(), docker_socket.clone(), shutdown.clone()));

    println!("hatch is up (data in {})", data_dir.display());
    println!();
    println!("  export DOCKER_HOST=unix://{}", docker_socket.display());
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!();
    println!("API server: {url} (node {node:?}); other nodes join with:");
    println!();
    println!("  hatch node --server {url} --token {}", server.join_token());
    println!();
    if let Some(pod) = &demo {
        println!("A demo pod is running. Get a shell in it:");
        println!();
        println!("  hatch exec -it {pod} -- sh");
        println!("  kubectl exec -it {pod} -- sh");
        println!("  docker exec -it {pod} sh");
        println!();
    }
    println!("Containers keep running when hatch stops; `hatch up` with the same --data-dir picks them up again.");

    tokio::select! {
        result = crate::shutdown::requested() => result.context("listening for Ctrl-C and SIGTERM")?,
        result = docker => {
            result.context("docker API task")??;
            anyhow::bail!("the Docker API stopped unexpectedly");
        }
        _ = serving => anyhow::bail!("the API server stopped unexpectedly"),
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    Ok(())
}
