//! Containers on runc, with `hatch-init` as PID 1.
//!
//! The pieces, each independent of the node's bookkeeping:
//! - [`bundle`]: the OCI `config.json` for a container (via `oci-spec`).
//! - [`rootfs`]: the container's writable root (overlayfs over the image, or a copy).
//! - [`runc`]: the `runc` command-line driver (run, kill, delete, state).
//! - [`initctl`]: the async client for init's control socket (exec, main process).
//! - [`stdio`]: async pipes and terminal masters for relaying a process's stdio.

pub mod bundle;
pub mod initctl;
pub mod rootfs;
pub mod runc;
pub mod stdio;

pub use hatch_init::proto::{ProcessSpec, all_capabilities, capability_from_name, default_capabilities};
