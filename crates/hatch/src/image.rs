//! `hatch image import NAME TARBALL|DIR` and `hatch image ls`: images live on the node; these
//! talk to its Docker API socket (`DOCKER_HOST=unix://…`, else /var/lib/hatch/docker.sock).

use std::path::PathBuf;

use clap::Subcommand;
use hatch_cli::docker_socket::DockerSocket;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import a root filesystem (a tarball, gzipped or not, or a directory) as an image.
    Import {
        /// The image name, `name[:tag]`.
        name: String,
        /// A rootfs tarball or directory.
        source: PathBuf,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Output format: table (default) or json.
        #[arg(short, long, default_value = "table")]
        output: String,
    },
}

pub async fn run(command: ImageCommand) -> anyhow::Result<()> {
    let node = DockerSocket::from_env()?;
    match command {
        ImageCommand::Import { name, source } => {
            let id = hatch_cli::image::import(&node, &name, &source).await?;
            println!("{id}");
        }
        ImageCommand::Ls { output } => {
            print!("{}", hatch_cli::image::list(&node, output == "json").await?);
        }
    }
    Ok(())
}
