//! A container: its persisted record, and the live state of its main process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use hatch_runtime::stdio::{PtyMaster, Sink};

/// What a container is asked to be (Docker's `Config` + the `HostConfig` parts hatch honours).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub image: String,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub hostname: String,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub labels: std::collections::BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<i64>,
    pub auto_remove: bool,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
}

/// Lifecycle status, named as Docker names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
    Removing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Removing => "removing",
        }
    }
}

/// The part of a container that is written to disk and survives a node restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    /// Unix nanoseconds.
    pub created: i64,
    pub image_id: String,
    pub spec: ContainerSpec,
    /// The argv of the main process, resolved from the image at create time.
    pub path: String,
    pub args: Vec<String>,
    /// Environment of the main process (image + container), also the base for execs.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub capabilities: u64,
    pub status: Status,
    /// Host pid of the container's init while running.
    pub pid: i32,
    pub exit_code: i32,
    pub started_at: i64,
    pub finished_at: i64,
    pub error: String,
    pub restart_count: u32,
}

/// Container events that waiters (`docker wait`, `docker run`) follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// Bumped at every exit, so `next-exit` waiters can tell exits apart.
    pub exits: u64,
    pub status: Status,
    pub exit_code: i32,
    pub removed: bool,
}

/// A chunk of main-process output for attached clients.
#[derive(Debug, Clone)]
pub struct OutputChunk {
    pub stderr: bool,
    pub data: Bytes,
}

/// Live handles to a running main process.
#[derive(Default)]
pub struct MainIo {
    pub stdin: Option<Sink>,
    pub pty: Option<Arc<PtyMaster>>,
    pub pidfd: Option<std::os::fd::OwnedFd>,
}

pub struct Container {
    pub id: String,
    pub dir: PathBuf,
    record: Mutex<Record>,
    lifecycle: watch::Sender<Lifecycle>,
    /// Clients attached to the main process's output.
    attached: Mutex<Vec<mpsc::Sender<OutputChunk>>>,
    /// stdin of the main process, shared by attached clients.
    pub io: tokio::sync::Mutex<MainIo>,
    /// Serialises start, stop, restart and removal.
    pub op: tokio::sync::Mutex<()>,
    /// Wakes `docker logs -f` readers when output was appended.
    pub log_appended: tokio::sync::Notify,
}

impl Container {
    pub fn new(dir: PathBuf, record: Record) -> Arc<Container> {
        let lifecycle = Lifecycle { exits: 0, status: record.status, exit_code: record.exit_code, removed: false };
        Arc::new(Container {
            id: record.id.clone(),
            dir,
            record: Mutex::new(record),
            lifecycle: watch::channel(lifecycle).0,
            attached: Mutex::new(Vec::new()),
            io: tokio::sync::Mutex::new(MainIo::default()),
            op: tokio::sync::Mutex::new(()),
            log_appended: tokio::sync::Notify::new(),
        })
    }

    /// The record; hold the guard briefly (never across an await).
    pub fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn snapshot(&self) -> Record {
        self.record().clone()
    }

    pub fn name(&self) -> String {
        self.record().name.clone()
    }

    pub fn status(&self) -> Status {
        self.record().status
    }

    pub fn is_running(&self) -> bool {
        self.status() == Status::Running
    }

    pub fn lifecycle(&self) -> watch::Receiver<Lifecycle> {
        self.lifecycle.subscribe()
    }

    /// Publishes the record's status to waiters.
    pub fn publish(&self, exited: bool, removed: bool) {
        let (status, exit_code) = {
            let r = self.record();
            (r.status, r.exit_code)
        };
        self.lifecycle.send_modify(|l| {
            l.status = status;
            l.exit_code = exit_code;
            l.removed |= removed;
            if exited {
                l.exits += 1;
            }
        });
    }

    pub fn attach_output(&self) -> mpsc::Receiver<OutputChunk> {
        let (tx, rx) = mpsc::channel(64);
        self.attached.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        rx
    }

    /// The senders of attached clients, for the output pump.
    pub fn attached_senders(&self) -> Vec<mpsc::Sender<OutputChunk>> {
        let mut list = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|tx| !tx.is_closed());
        list.clone()
    }

    /// Drops every attached client's sender, ending their streams once drained.
    pub fn detach_all(&self) {
        self.attached.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn record_path(&self) -> PathBuf {
        record_path(&self.dir)
    }

    /// Writes the record atomically.
    pub fn save(&self) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(&self.snapshot())?;
        let tmp = self.dir.join("container.json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, self.record_path())
    }
}

pub fn record_path(dir: &Path) -> PathBuf {
    dir.join("container.json")
}

pub fn load_record(dir: &Path) -> std::io::Result<Record> {
    let bytes = std::fs::read(record_path(dir))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}
