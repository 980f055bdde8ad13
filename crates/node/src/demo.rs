//! The demo pod `hatch up` starts on a fresh machine: a `busybox` image built from the host's
//! static busybox (Debian's `busybox-static`; there is no registry to pull from), and a container
//! `demo` that runs until removed.

use std::path::Path;
use std::sync::Arc;

use crate::engine::container::ContainerSpec;
use crate::engine::{Engine, EngineError};

pub const DEMO_NAME: &str = "demo";
pub const DEMO_IMAGE: &str = "busybox:latest";
const HOST_BUSYBOX: &str = "/bin/busybox";

fn internal(context: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(format!("{context}: {e}"))
}

/// Whether a binary is statically linked (it names no program interpreter).
fn is_static(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| !bytes.windows(b"/ld-linux".len()).any(|w| w == b"/ld-linux"))
}

/// A root filesystem with busybox, its applets, and users root and alice.
fn build_rootfs(dir: &Path) -> std::io::Result<()> {
    for sub in ["bin", "etc", "tmp", "root", "home/alice", "var/log"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::copy(HOST_BUSYBOX, dir.join("bin/busybox"))?;
    let list = std::process::Command::new(HOST_BUSYBOX).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nalice:x:1000:\nnogroup:x:65534:\n")?;
    std::os::unix::fs::chown(dir.join("home/alice"), Some(1000), Some(1000))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))
}

/// Makes sure the demo container exists and runs. Returns `None` (and does nothing) when the
/// host has no static busybox to build the image from.
pub async fn ensure_demo(engine: &Arc<Engine>, scratch: &Path) -> Result<Option<String>, EngineError> {
    if let Ok(c) = engine.lookup(DEMO_NAME) {
        if !c.is_running() {
            engine.start(&c).await?;
        }
        return Ok(Some(DEMO_NAME.to_string()));
    }
    let images = engine.images.clone();
    if images.resolve(DEMO_IMAGE).is_err() {
        if !Path::new(HOST_BUSYBOX).exists() || !is_static(Path::new(HOST_BUSYBOX)) {
            return Ok(None);
        }
        let dir = scratch.join("demo-rootfs");
        let _ = std::fs::remove_dir_all(&dir);
        let store = images.clone();
        let import_dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            build_rootfs(&import_dir).map_err(|e| internal("build the demo image", e))?;
            store.import_dir(&import_dir, Some(DEMO_IMAGE)).map_err(EngineError::from)
        })
        .await
        .map_err(|e| internal("build the demo image", e))??;
        let _ = std::fs::remove_dir_all(&dir);
    }
    let spec = ContainerSpec {
        image: DEMO_IMAGE.to_string(),
        cmd: Some(vec!["tail".into(), "-f".into(), "/dev/null".into()]),
        ..Default::default()
    };
    let c = engine.create(Some(DEMO_NAME.to_string()), spec).await?;
    engine.start(&c).await?;
    Ok(Some(DEMO_NAME.to_string()))
}
