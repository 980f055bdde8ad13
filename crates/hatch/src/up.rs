//! `hatch up`: everything on one machine.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use hatch_node::engine::{Engine, EngineConfig};
use hatch_runtime::rootfs::RootfsKind;

#[derive(Args)]
pub struct UpArgs {
    /// Where hatch keeps images, containers and its state.
    #[arg(long, default_value = "/var/lib/hatch", env = "HATCH_DATA_DIR")]
    data_dir: PathBuf,
    /// The Docker Engine API socket (default: DATA_DIR/docker.sock).
    #[arg(long)]
    docker_socket: Option<PathBuf>,
    /// The static hatch-init binary mounted into containers as PID 1.
    #[arg(long, env = "HATCH_INIT")]
    init_binary: Option<PathBuf>,
    /// The runc binary.
    #[arg(long, default_value = "runc", env = "HATCH_RUNC")]
    runc: PathBuf,
    /// Container root filesystems: `overlay` (a copy where the kernel lacks overlayfs) or `copy`.
    #[arg(long, default_value = "overlay", env = "HATCH_ROOTFS", value_parser = ["overlay", "copy"])]
    rootfs: String,
}

/// Finds hatch-init: beside this binary, or where `cargo build --target x86_64-unknown-linux-gnu`
/// puts the static build relative to a target/<profile>/ directory.
fn find_init_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the hatch binary")?;
    let dir = exe.parent().context("hatch binary has no directory")?;
    let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or("release");
    let candidates =
        [dir.join("..").join("x86_64-unknown-linux-gnu").join(profile).join("hatch-init"), dir.join("hatch-init")];
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "hatch-init not found (looked in {}); build it statically with ./scripts/build or pass --init-binary",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// A dynamically linked init would fail inside images without libc (busybox-static, scratch).
fn check_static(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    if bytes.windows(b"/ld-linux".len()).any(|w| w == b"/ld-linux") {
        anyhow::bail!(
            "{} is dynamically linked; containers without libc could not start it. Build it with ./scripts/build",
            path.display()
        );
    }
    Ok(())
}

fn resolve_runc(runc: &Path) -> anyhow::Result<PathBuf> {
    if runc.components().count() > 1 {
        return Ok(runc.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(runc))
        .find(|p| p.is_file())
        .with_context(|| format!("{} not found in PATH (install the Debian package `runc`)", runc.display()))
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if !nix_is_root() {
        anyhow::bail!("hatch up must run as root (it creates namespaces, mounts and cgroups)");
    }
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let init_binary = match args.init_binary {
        Some(p) => p,
        None => find_init_binary()?,
    };
    let init_binary = init_binary.canonicalize().with_context(|| format!("hatch-init at {}", init_binary.display()))?;
    check_static(&init_binary)?;
    let runc = resolve_runc(&args.runc)?;
    let docker_socket = args.docker_socket.unwrap_or_else(|| data_dir.join("docker.sock"));

    let rootfs = if args.rootfs == "copy" { RootfsKind::Copy } else { RootfsKind::Overlay };
    let engine = Engine::open(EngineConfig { data_dir: data_dir.clone(), runc, init_binary, rootfs }).await?;
    engine.restore().await;
    let demo = match hatch_node::demo::ensure_demo(&engine, &data_dir).await {
        Ok(demo) => demo,
        Err(e) => {
            tracing::warn!(error = %e, "could not start the demo pod");
            None
        }
    };

    let shutdown = CancellationToken::new();
    let docker = tokio::spawn(hatch_node::docker::serve(engine.clone(), docker_socket.clone(), shutdown.clone()));

    println!("hatch is up (data in {})", data_dir.display());
    println!();
    println!("  export DOCKER_HOST=unix://{}", docker_socket.display());
    println!();
    if let Some(pod) = &demo {
        println!("A demo pod is running. Get a shell in it:");
        println!();
        println!("  docker exec -it {pod} sh");
        println!();
    }
    println!("Containers keep running when hatch stops; `hatch up` with the same --data-dir picks them up again.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        result = docker => {
            result.context("docker API task")??;
            anyhow::bail!("the Docker API stopped unexpectedly");
        }
    }
    tracing::info!("shutting down");
    shutdown.cancel();
    Ok(())
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
