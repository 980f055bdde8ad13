//! A container's writable root filesystem: an overlay with the image's (read-only, shared) rootfs
//! below and a per-container upper directory, or a full copy where overlayfs is unavailable.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("create {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("copy image into {path}: {message}")]
    Copy { path: PathBuf, message: String },
    #[error("unmount {path}: {source}")]
    Unmount { path: PathBuf, source: nix::Error },
}

/// How a rootfs was made, so it can be torn down the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsKind {
    Overlay,
    Copy,
}

/// Layout under a container directory.
pub fn paths(container_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (container_dir.join("rootfs"), container_dir.join("upper"), container_dir.join("work"))
}

fn mkdir(path: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(path).map_err(|source| RootfsError::Create { path: path.to_path_buf(), source })
}

/// Makes `<container_dir>/rootfs` from `image_rootfs`: an overlay, unless `kind` asks for a copy
/// or the kernel has no overlayfs. A container started again keeps what it wrote either way.
pub fn prepare(image_rootfs: &Path, container_dir: &Path, kind: RootfsKind) -> Result<RootfsKind, RootfsError> {
    let (target, upper, work) = paths(container_dir);
    let copied = container_dir.join("rootfs.copied");
    if copied.exists() {
        return Ok(RootfsKind::Copy);
    }
    for dir in [&target, &upper, &work] {
        mkdir(dir)?;
    }
    if is_mounted(&target) {
        return Ok(RootfsKind::Overlay);
    }
    if kind == RootfsKind::Overlay {
        let options =
            format!("lowerdir={},upperdir={},workdir={}", image_rootfs.display(), upper.display(), work.display());
        match nix::mount::mount(Some("overlay"), &target, Some("overlay"), MsFlags::empty(), Some(options.as_str())) {
            Ok(()) => return Ok(RootfsKind::Overlay),
            Err(e) => tracing::warn!(error = %e, "overlayfs unavailable, copying the image instead"),
        }
    }
    copy_tree(image_rootfs, &target)?;
    // Marks a complete copy, so a restart reuses it rather than copying over it.
    std::fs::write(&copied, b"").map_err(|source| RootfsError::Create { path: copied, source })?;
    Ok(RootfsKind::Copy)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), RootfsError> {
    // `cp -a` preserves owners, modes, links, times and xattrs, and never follows symlinks.
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .map_err(|e| RootfsError::Copy { path: to.to_path_buf(), message: e.to_string() })?;
    if !status.success() {
        return Err(RootfsError::Copy { path: to.to_path_buf(), message: format!("cp exited with {status}") });
    }
    Ok(())
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mounted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (std::fs::metadata(path), path.parent().map(std::fs::metadata)) else {
        return false;
    };
    me.dev() != parent.dev()
}

/// Unmounts the rootfs if it is mounted. Safe to call repeatedly.
pub fn release(container_dir: &Path) -> Result<(), RootfsError> {
    let (target, _, _) = paths(container_dir);
    if !is_mounted(&target) {
        return Ok(());
    }
    nix::mount::umount2(&target, MntFlags::MNT_DETACH).map_err(|source| RootfsError::Unmount { path: target, source })
}
