//! What `hatch up` and `hatch node` share: the engine's flags, finding its tools, opening it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use hatch_node::engine::{Engine, EngineConfig};
use hatch_runtime::rootfs::RootfsKind;

#[derive(Args)]
pub struct EngineArgs {
    /// Where hatch keeps images, containers and its state.
    #[arg(long, default_value = "/var/lib/hatch", env = "HATCH_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The Docker Engine API socket (default: DATA_DIR/docker.sock).
    #[arg(long)]
    pub docker_socket: Option<PathBuf>,
    /// The static hatch-init binary mounted into containers as PID 1.
    #[arg(long, env = "HATCH_INIT")]
    pub init_binary: Option<PathBuf>,
    /// The runc binary.
    #[arg(long, default_value = "runc", env = "HATCH_RUNC")]
    pub runc: PathBuf,
    /// Container root filesystems: `overlay` (a copy where the kernel lacks overlayfs) or `copy`.
    #[arg(long, default_value = "overlay", env = "HATCH_ROOTFS", value_parser = ["overlay", "copy"])]
    pub rootfs: String,
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

pub fn require_root(verb: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("hatch {verb} must run as root (it creates namespaces, mounts and cgroups)");
    }
    Ok(())
}

/// The engine, opened and reattached to containers that kept running.
pub struct OpenedEngine {
    pub engine: Arc<Engine>,
    pub data_dir: PathBuf,
    pub docker_socket: PathBuf,
}

pub async fn open_engine(args: EngineArgs) -> anyhow::Result<OpenedEngine> {
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
    Ok(OpenedEngine { engine, data_dir, docker_socket })
}

/// The machine's host name as a Kubernetes node name (a DNS subdomain), or `hatch`.
pub fn default_node_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' })
        .collect();
    let name = name.trim_matches(['-', '.']).to_string();
    if name.is_empty() { "hatch".into() } else { name }
}
