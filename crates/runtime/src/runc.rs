//! The `runc` command-line driver. runc creates and destroys containers; it is never on the exec
//! path (init serves execs).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use command_fds::{CommandFdExt, FdMapping};
use serde::Deserialize;
use tokio::process::Command;

use crate::bundle::{CONTROL_FD, STATUS_FD};

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("run {binary}: {source}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("runc {verb}: {message}")]
    Failed { verb: &'static str, message: String },
    #[error("runc state: {0}")]
    State(#[from] serde_json::Error),
}

/// runc's view of a container (`runc state`).
#[derive(Debug, Clone, Deserialize)]
pub struct State {
    pub id: String,
    pub pid: i32,
    pub status: String,
}

#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    /// runc's state directory; hatch keeps its own so it never sees other engines' containers.
    root: PathBuf,
}

impl Runc {
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Runc { binary: binary.into(), root: root.into() }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root).stdin(Stdio::null());
        cmd
    }

    async fn output(&self, verb: &'static str, mut cmd: Command) -> Result<Vec<u8>, RuncError> {
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| RuncError::Spawn { binary: self.binary.clone(), source })?;
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(RuncError::Failed { verb, message });
        }
        Ok(out.stdout)
    }

    /// `runc run --detach`: creates and starts the container. init inherits `control` (a
    /// listening socket) and `status` (the exit-status file); its stdout and stderr go to `log`.
    pub async fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        control: OwnedFd,
        status: OwnedFd,
        log_path: &Path,
    ) -> Result<i32, RuncError> {
        let spawn_err = |source| RuncError::Spawn { binary: self.binary.clone(), source };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).map_err(spawn_err)?;
        let pid_file = bundle.join("init.pid");
        let mut cmd = self.command();
        cmd.arg("run")
            .arg("--detach")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--preserve-fds")
            .arg("2")
            .arg(id);
        let log_err = log.try_clone().map_err(spawn_err)?;
        cmd.stdout(log).stderr(log_err);
        cmd.fd_mappings(vec![
            FdMapping { parent_fd: control, child_fd: CONTROL_FD },
            FdMapping { parent_fd: status, child_fd: STATUS_FD },
        ])
        .map_err(|e| RuncError::Failed { verb: "run", message: e.to_string() })?;
        let status = cmd.status().await.map_err(spawn_err)?;
        if !status.success() {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            let message = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            return Err(RuncError::Failed { verb: "run", message: format!("{status}: {message}") });
        }
        let pid = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        Ok(pid)
    }

    /// Sends `signal` (a name such as `TERM` or a number) to init, or with `all` to every process.
    pub async fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RuncError> {
        let mut cmd = self.command();
        cmd.arg("kill");
        if all {
            cmd.arg("--all");
        }
        cmd.arg(id).arg(signal);
        self.output("kill", cmd).await.map(drop)
    }

    /// Removes the container from runc's state (and its cgroup). `force` kills it first.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RuncError> {
        let mut cmd = self.command();
        cmd.arg("delete");
        if force {
            cmd.arg("--force");
        }
        cmd.arg(id);
        match self.output("delete", cmd).await {
            Err(RuncError::Failed { message, .. }) if message.contains("does not exist") => Ok(()),
            other => other.map(drop),
        }
    }

    /// The container's state, or `None` when runc does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<State>, RuncError> {
        let mut cmd = self.command();
        cmd.arg("state").arg(id);
        match self.output("state", cmd).await {
            Ok(out) => Ok(Some(serde_json::from_slice(&out)?)),
            Err(RuncError::Failed { message, .. }) if message.contains("does not exist") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every container in hatch's runc root.
    pub async fn list(&self) -> Result<Vec<State>, RuncError> {
        let mut cmd = self.command();
        cmd.arg("list").arg("--format").arg("json");
        let out = self.output("list", cmd).await?;
        if out.trim_ascii().is_empty() || out.trim_ascii() == b"null" {
            return Ok(Vec::new());
        }
        Ok(serde_json::from_slice(&out)?)
    }
}
