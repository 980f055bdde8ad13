//! The cluster client verbs: `hatch get pods|nodes`, `hatch ps`, `hatch run`, `hatch rm`, through
//! the API server named in the kubeconfig.

use clap::{Args, Subcommand};

use hatch_cli::cluster::Cluster;
use hatch_cli::pods::{self, Output, RunRequest, Scope};

#[derive(Subcommand)]
pub enum GetCommand {
    /// List pods.
    #[command(alias = "pod", alias = "po")]
    Pods(ListArgs),
    /// List nodes.
    #[command(alias = "node", alias = "no")]
    Nodes(OutputArg),
}

#[derive(Args)]
pub struct OutputArg {
    /// Output format: table, wide or json.
    #[arg(short, long, default_value = "table")]
    output: String,
}

#[derive(Args)]
pub struct ListArgs {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[command(flatten)]
    output: OutputArg,
}

#[derive(Args)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Return once the pod is created, without waiting for it to run.
    #[arg(short, long)]
    detach: bool,
    /// The pod's name (default: from the image, with a random suffix).
    #[arg(long)]
    name: Option<String>,
    /// Environment variables.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// The image.
    image: String,
    /// The command (the image's default when empty).
    command: Vec<String>,
}

#[derive(Args)]
pub struct RmArgs {
    /// Delete at once, without the grace period.
    #[arg(short, long)]
    force: bool,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// The pods.
    #[arg(required = true)]
    pods: Vec<String>,
}

fn cluster() -> anyhow::Result<Cluster> {
    Ok(Cluster::new(hatch_cli::kubeconfig::load()?)?)
}

fn scope(cluster: &Cluster, namespace: Option<String>, all: bool) -> Scope {
    if all {
        Scope::AllNamespaces
    } else {
        Scope::Namespace(namespace.unwrap_or_else(|| cluster.config.namespace.clone()))
    }
}

pub async fn get(command: GetCommand) -> anyhow::Result<()> {
    let cluster = cluster()?;
    let out = match command {
        GetCommand::Pods(args) => {
            let scope = scope(&cluster, args.namespace, args.all_namespaces);
            pods::get_pods(&cluster, scope, Output::parse(&args.output.output)?).await?
        }
        GetCommand::Nodes(args) => pods::get_nodes(&cluster, Output::parse(&args.output)?).await?,
    };
    print!("{out}");
    Ok(())
}

/// `hatch ps`: pods in every namespace (or one with `-n`).
pub async fn ps(args: ListArgs) -> anyhow::Result<()> {
    let cluster = cluster()?;
    let all = args.all_namespaces || args.namespace.is_none();
    let scope = scope(&cluster, args.namespace, all);
    print!("{}", pods::get_pods(&cluster, scope, Output::parse(&args.output.output)?).await?);
    Ok(())
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let cluster = cluster()?;
    let namespace = args.namespace.unwrap_or_else(|| cluster.config.namespace.clone());
    let request = RunRequest {
        namespace,
        name: args.name,
        image: args.image,
        args: args.command,
        env: args.env,
        detach: args.detach,
    };
    println!("{}", pods::run(&cluster, request).await?);
    Ok(())
}

pub async fn rm(args: RmArgs) -> anyhow::Result<()> {
    let cluster = cluster()?;
    let namespace = args.namespace.unwrap_or_else(|| cluster.config.namespace.clone());
    for pod in &args.pods {
        pods::rm(&cluster, &namespace, pod, args.force).await?;
        println!("{pod}");
    }
    Ok(())
}
