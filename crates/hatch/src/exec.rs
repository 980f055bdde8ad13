//! `hatch exec [-i] [-t] [-d] [-u USER[:GROUP]] [--privileged] [-e K=V]... [-w DIR] [-c CONTAINER]
//! POD -- CMD [ARG...]`, through the API server in the kubeconfig.

use clap::Args;

use hatch_cli::cluster::Cluster;
use hatch_cli::exec::{ExecError, ExecRequest};

#[derive(Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Keep stdin open and send it to the process.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal (needs stdin to be one).
    #[arg(short = 't', long)]
    tty: bool,
    /// Run in the background; print nothing and return at once.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Run as `name|uid[:group|gid]`, resolved in the container.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Give the process every capability (that process only).
    #[arg(long)]
    privileged: bool,
    /// Set environment variables.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Container in the pod (default: the pod's default container).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Namespace (default: the kubeconfig context's, else `default`).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// The pod.
    pod: String,
    /// The command and its arguments (after `--`).
    #[arg(required = true, num_args = 1..)]
    command: Vec<String>,
}

/// Runs the exec; returns the process's exit code, or prints the error and returns 1.
pub async fn run(args: ExecArgs) -> i32 {
    let result = async {
        let cluster = Cluster::new(hatch_cli::kubeconfig::load()?)?;
        let request = ExecRequest {
            namespace: args.namespace,
            pod: args.pod,
            container: args.container,
            command: args.command,
            stdin: args.interactive,
            tty: args.tty,
            detach: args.detach,
            user: args.user,
            privileged: args.privileged,
            env: args.env,
            workdir: args.workdir,
        };
        Ok::<_, anyhow::Error>(hatch_cli::exec::exec(&cluster, request).await?)
    }
    .await;
    match result {
        Ok(code) => code,
        Err(e) if reader_went_away(&e) => 141,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Whoever read our stdout closed it (`hatch exec p -- cat big | head`): not an error to report.
/// Quiet, with the status a shell gives a program killed by SIGPIPE (128 + 13), as `cat` would.
fn reader_went_away(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<ExecError>(), Some(ExecError::Terminal(io)) if io.kind() == std::io::ErrorKind::BrokenPipe)
}
