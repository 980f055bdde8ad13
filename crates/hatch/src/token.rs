//! `hatch token create --role view|admin [--name N]`: mints a bearer token on the server named by
//! the kubeconfig (an admin's), and prints it.

use clap::{Args, Subcommand};

use hatch_cli::cluster::Cluster;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a bearer token bound to a role and print it.
    Create(CreateArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// `view` (get, list, watch; never exec) or `admin` (everything).
    #[arg(long, value_parser = ["view", "admin"])]
    role: String,
    /// The user name the token stands for (audit log, Forbidden messages).
    #[arg(long)]
    name: Option<String>,
}

pub async fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(args) => {
            let cluster = Cluster::new(hatch_cli::kubeconfig::load()?)?;
            let token = hatch_cli::token::create(&cluster, &args.role, args.name.as_deref()).await?;
            eprintln!("created token for {:?} (role {})", token.name, token.role);
            println!("{}", token.token);
            Ok(())
        }
    }
}
