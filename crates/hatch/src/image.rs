//! `hatch image import NAME TARBALL|DIR [--node N]` and `hatch image ls [--node N] [-o json]`:
//! images live on the nodes; these reach them through the API server named in the kubeconfig
//! (the node proxy), so they work from any machine, for every node.

use std::path::PathBuf;

use clap::Subcommand;
use hatch_cli::cluster::Cluster;
use hatch_cli::image;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import a root filesystem (a tarball, gzipped or not, or a directory) as an image, on one
    /// node or on every Ready node.
    Import {
        /// The node to import on (default: every Ready node).
        #[arg(long)]
        node: Option<String>,
        /// The image name, `name[:tag]`.
        name: String,
        /// A rootfs tarball or directory.
        source: PathBuf,
    },
    /// List images, on one node or on every Ready node.
    #[command(alias = "list")]
    Ls {
        /// Only this node's images.
        #[arg(long)]
        node: Option<String>,
        /// Output format: table (default) or json.
        #[arg(short, long, default_value = "table")]
        output: String,
    },
}

pub async fn run(command: ImageCommand) -> anyhow::Result<()> {
    let cluster = Cluster::new(hatch_cli::kubeconfig::load()?)?;
    match command {
        ImageCommand::Import { node, name, source } => {
            // A missing source is the user's first mistake to hear about, before any node is asked.
            std::fs::metadata(&source).map_err(|e| anyhow::anyhow!("{}: {e}", source.display()))?;
            let nodes = image::target_nodes(&cluster, node.as_deref()).await?;
            let imported = image::import(&cluster, &nodes, &name, &source).await?;
            print!("{}", image::render_imported(&imported));
        }
        ImageCommand::Ls { node, output } => {
            let json = match output.as_str() {
                "" | "table" => false,
                "json" => true,
                other => anyhow::bail!("unknown output format {other:?} (use table or json)"),
            };
            let nodes = image::target_nodes(&cluster, node.as_deref()).await?;
            let images = image::list(&cluster, &nodes).await?;
            if json {
                print!("{}", image::render_json(&images));
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                print!("{}", image::render_table(&images, now));
            }
        }
    }
    Ok(())
}
