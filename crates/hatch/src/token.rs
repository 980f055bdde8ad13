//! `hatch token create --role view|admin [--name N]`: mints a bearer token on the server named by
//! the kubeconfig (an admin's), and prints it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use http::Method;

use hatch_node::agent::client::ApiClient;
use hatch_node::agent::tls::api_client_config;

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
    /// The kubeconfig to use (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

pub async fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(args) => create(args).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let target = crate::kubeconfig::load(args.kubeconfig.as_deref())?;
    let tls = api_client_config(&target.ca_pem, None)?;
    let client = ApiClient::new(&target.server, tls, Some(target.token))?;
    let request = hatch_server::contract::TokenRequest { role: args.role, name: args.name };
    let answer: hatch_server::contract::TokenResponse = client
        .json(Method::POST, "/hatch/v1/tokens", Some(&request), Duration::from_secs(30))
        .await
        .context("create token")?;
    eprintln!("created token for {:?} (role {})", answer.name, answer.role);
    println!("{}", answer.token);
    Ok(())
}
