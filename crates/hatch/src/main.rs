//! The `hatch` binary: wires the subcommands to the library crates.

mod cluster_verbs;
mod engine_setup;
mod exec;
mod image;
mod local;
mod node;
mod server;
mod shutdown;
mod token;
mod up;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hatch", version, about = "A fast, secure exec stack for containers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a single-machine hatch: the API server and a node (containers, Docker API) in one process.
    Up(up::UpArgs),
    /// Run the API server alone (nodes join it with `hatch node`).
    Server(server::ServerArgs),
    /// Run a node that joins a server.
    Node(node::NodeArgs),
    /// Manage bearer tokens (needs an admin kubeconfig).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Run a command in a pod's container (`-it` for a shell), like `docker exec` / `kubectl exec`.
    Exec(exec::ExecArgs),
    /// Create a one-container pod from an image.
    Run(cluster_verbs::RunArgs),
    /// List pods (every namespace unless -n).
    Ps(cluster_verbs::ListArgs),
    /// Delete pods.
    Rm(cluster_verbs::RmArgs),
    /// List pods or nodes, as `kubectl get` does.
    #[command(subcommand)]
    Get(cluster_verbs::GetCommand),
    /// Import and list images on the cluster's nodes, through the API server.
    #[command(subcommand)]
    Image(image::ImageCommand),
}

fn main() {
    if let Err(e) = run() {
        // One line, whatever RUST_BACKTRACE says: these reach users, not developers.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HATCH_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Command::Exec(args) = cli.command {
        // The client needs no worker pool: one thread starts faster and keeps the keystroke path short.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let code = runtime.block_on(exec::run(args));
        // Leave at once: stdin may still be held by a reader thread.
        runtime.shutdown_background();
        std::process::exit(code);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Exec(_) => Ok(()),
        Command::Up(args) => runtime.block_on(up::run(args)),
        Command::Server(args) => runtime.block_on(server::run(args)),
        Command::Node(args) => runtime.block_on(node::run(args)),
        Command::Token(command) => runtime.block_on(token::run(command)),
        Command::Image(command) => runtime.block_on(image::run(command)),
        Command::Run(args) => runtime.block_on(cluster_verbs::run(args)),
        Command::Ps(args) => runtime.block_on(cluster_verbs::ps(args)),
        Command::Rm(args) => runtime.block_on(cluster_verbs::rm(args)),
        Command::Get(command) => runtime.block_on(cluster_verbs::get(command)),
    }
}
