//! The node's engine: containers on runc with hatch-init as PID 1, exec sessions, logs.
//!
//! Front ends (the Docker Engine API, the Kubernetes streaming server) translate their requests
//! into calls here and relay bytes; all lifecycle rules live in this module.

pub mod container;
pub mod exec;
pub mod logs;
mod names;
pub mod pods;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
use tokio::sync::{mpsc, watch};

use hatch_image::ImageStore;
use hatch_init::proto::{self, ProcessSpec};
use hatch_runtime::bundle::{self, BundleConfig};
use hatch_runtime::initctl::{InitConn, InitError, Outcome, Started};
use hatch_runtime::rootfs;
use hatch_runtime::runc::Runc;
use hatch_runtime::stdio::{self, PtyMaster, Sink, Source};

use container::{Container, ContainerSpec, OutputChunk, Record, Status};
use exec::{ExecControl, ExecSession, ExecSpec, OutputReader, RunningExec};

pub use container::Lifecycle;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    #[error("pod {0} not found on this node")]
    NoSuchPod(String),
    #[error("No such exec instance: {0}")]
    NoSuchExec(String),
    #[error("No such image: {0}")]
    NoSuchImage(String),
    #[error("Container {0} is not running")]
    NotRunning(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    /// The request asks for the state the container is already in (Docker answers 304).
    #[error("container already in the requested state")]
    NotModified,
    #[error("{0}")]
    StartFailed(String),
    #[error("{0}")]
    Image(hatch_image::Error),
    #[error("{0}")]
    Internal(String),
}

impl From<hatch_image::Error> for EngineError {
    fn from(e: hatch_image::Error) -> EngineError {
        match e {
            hatch_image::Error::NotFound(reference) => EngineError::NoSuchImage(reference),
            other => EngineError::Image(other),
        }
    }
}

impl EngineError {
    fn internal(context: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::Internal(format!("{context}: {e}"))
    }
}

/// Where the engine keeps its state and finds its tools.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub runc: PathBuf,
    pub init_binary: PathBuf,
    /// How container root filesystems are made: overlay (copying when the kernel has no
    /// overlayfs) or always a copy.
    pub rootfs: rootfs::RootfsKind,
}

pub struct Engine {
    containers_dir: PathBuf,
    sockets_dir: PathBuf,
    init_binary: PathBuf,
    rootfs_kind: rootfs::RootfsKind,
    runc: Runc,
    pub images: Arc<ImageStore>,
    containers: RwLock<HashMap<String, Arc<Container>>>,
    /// Bumped whenever a container is created, starts, stops or goes: the agent reports at once.
    changes: watch::Sender<u64>,
    execs: Mutex<HashMap<String, Arc<ExecSession>>>,
    /// Capabilities the node itself holds; no container gets more.
    host_capabilities: u64,
}

/// How long the record of a finished (or never started) exec stays inspectable.
const EXEC_RECORD_TTL: Duration = Duration::from_secs(300);

/// How `docker wait` decides it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    NotRunning,
    NextExit,
    Removed,
}

/// The outcome of starting an exec.
pub enum ExecStarted {
    Running(RunningExec),
    Detached,
    /// Nothing ran; Docker reports `code` as the exec's exit code.
    Failed {
        code: i32,
        message: String,
    },
}

fn now_nanos() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64
}

/// Sets `KEY=VALUE` in an environment list, replacing an earlier value of `KEY`.
fn set_env(env: &mut Vec<String>, entry: &str) {
    let key = entry.split('=').next().unwrap_or(entry);
    env.retain(|e| e.split('=').next() != Some(key));
    env.push(entry.to_string());
}

fn host_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapBnd:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or_else(proto::default_capabilities)
}

/// Docker's capability arithmetic: default set, plus `add`, minus `drop` (`ALL` allowed in both).
fn container_capabilities(spec: &ContainerSpec, host: u64) -> Result<u64, EngineError> {
    if spec.privileged {
        return Ok(host);
    }
    let parse = |names: &[String]| -> Result<u64, EngineError> {
        names.iter().try_fold(0u64, |mask, name| {
            if name.eq_ignore_ascii_case("ALL") {
                return Ok(proto::all_capabilities());
            }
            proto::capability_from_name(name)
                .map(|c| mask | (1 << c))
                .ok_or_else(|| EngineError::BadRequest(format!("unknown capability: {name:?}")))
        })
    };
    Ok((proto::default_capabilities() | parse(&spec.cap_add)?) & !parse(&spec.cap_drop)? & host)
}

fn create_listener(path: &Path) -> Result<OwnedFd, EngineError> {
    let fail = |e: nix::Error| EngineError::internal("create control socket", e);
    let _ = std::fs::remove_file(path);
    let fd = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(fail)?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path).map_err(fail)?).map_err(fail)?;
    listen(&fd, Backlog::new(128).map_err(fail)?).map_err(fail)?;
    Ok(fd)
}

impl Engine {
    /// Opens (or creates) the engine's state under `config.data_dir` and loads its containers.
    pub async fn open(config: EngineConfig) -> Result<Arc<Engine>, EngineError> {
        let containers_dir = config.data_dir.join("containers");
        let sockets_dir = config.data_dir.join("run");
        for dir in [&containers_dir, &sockets_dir] {
            std::fs::create_dir_all(dir).map_err(|e| EngineError::internal("create state directory", e))?;
        }
        let probe = sockets_dir.join(format!("{}.sock", "0".repeat(12)));
        if probe.as_os_str().len() >= 100 {
            return Err(EngineError::Internal(format!(
                "data directory {} is too long for unix socket paths; use a shorter --data-dir",
                config.data_dir.display()
            )));
        }
        let image_root = config.data_dir.join("images");
        let images = tokio::task::spawn_blocking(move || ImageStore::open(&image_root))
            .await
            .map_err(|e| EngineError::internal("open image store", e))??;
        let engine = Arc::new(Engine {
            runc: Runc::new(&config.runc, config.data_dir.join("runc")),
            containers_dir,
            sockets_dir,
            init_binary: config.init_binary,
            rootfs_kind: config.rootfs,
            images: Arc::new(images),
            containers: RwLock::new(HashMap::new()),
            changes: watch::channel(0).0,
            execs: Mutex::new(HashMap::new()),
            host_capabilities: host_capabilities(),
        });
        engine.load_containers();
        Ok(engine)
    }

    fn load_containers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.containers_dir) else { return };
        let mut map = self.containers.write().unwrap_or_else(|p| p.into_inner());
        for entry in entries.flatten() {
            let dir = entry.path();
            match container::load_record(&dir) {
                Ok(record) => {
                    map.insert(record.id.clone(), Container::new(dir, record));
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "skipping unreadable container"),
            }
        }
    }

    /// After a node restart: reattach to containers that kept running, and record the exit of
    /// those that stopped while the node was away.
    pub async fn restore(self: &Arc<Self>) {
        for c in self.list() {
            if c.status() != Status::Running {
                continue;
            }
            let attached = async {
                let conn = InitConn::connect(&self.socket_path(&c.id)).await?;
                let state = conn.attach_main().await?;
                Ok::<_, InitError>((conn, state))
            }
            .await;
            match attached {
                Ok((conn, state)) => {
                    tracing::info!(id = %c.id, "reattached to running container");
                    let output = self.install_main_io(&c, state.process, state.tty).await;
                    self.spawn_monitor(&c, conn, output);
                }
                Err(e) => {
                    tracing::info!(id = %c.id, error = %e, "container stopped while the node was away");
                    let code = self.read_exit_status(&c).unwrap_or(137);
                    self.finish_exit(&c, code).await;
                }
            }
        }
    }

    /// Follows container changes (creations, starts, exits, removals): the value is a counter.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn socket_path(&self, id: &str) -> PathBuf {
        self.sockets_dir.join(format!("{}.sock", &id[..id.len().min(12)]))
    }

    fn status_path(c: &Container) -> PathBuf {
        c.dir.join("exit-status")
    }

    pub fn log_path(c: &Container) -> PathBuf {
        c.dir.join("container.log")
    }

    fn read_exit_status(&self, c: &Container) -> Option<i32> {
        std::fs::read_to_string(Self::status_path(c)).ok()?.trim().parse().ok()
    }

    pub fn list(&self) -> Vec<Arc<Container>> {
        let mut list: Vec<_> = self.containers.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        list.sort_by_key(|c| std::cmp::Reverse(c.record().created));
        list
    }

    /// Finds a container by full id, name (with or without a leading `/`), or unique id prefix.
    pub fn lookup(&self, key: &str) -> Result<Arc<Container>, EngineError> {
        let map = self.containers.read().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(key) {
            return Ok(c.clone());
        }
        let name = key.strip_prefix('/').unwrap_or(key);
        if let Some(c) = map.values().find(|c| c.record().name == name) {
            return Ok(c.clone());
        }
        let mut matches = map.values().filter(|c| !key.is_empty() && c.id.starts_with(key));
        match (matches.next(), matches.next()) {
            (Some(c), None) => Ok(c.clone()),
            (Some(_), Some(_)) => {
                Err(EngineError::BadRequest(format!("multiple IDs found with provided prefix: {key}")))
            }
            _ => Err(EngineError::NoSuchContainer(key.to_string())),
        }
    }

    /// Creates a container (not started).
    pub async fn create(&self, name: Option<String>, spec: ContainerSpec) -> Result<Arc<Container>, EngineError> {
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => {
                let n = n.strip_prefix('/').unwrap_or(&n).to_string();
                if !names::valid_name(&n) {
                    return Err(EngineError::BadRequest(format!(
                        "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                n
            }
            None => names::generated_name(),
        };
        let images = self.images.clone();
        let reference = spec.image.clone();
        let image = tokio::task::spawn_blocking(move || images.resolve(&reference))
            .await
            .map_err(|e| EngineError::internal("resolve image", e))?
            .map_err(|_| EngineError::NoSuchImage(spec.image.clone()))?;
        let run = image.run_config();

        let entrypoint = spec.entrypoint.clone().unwrap_or_else(|| run.entrypoint().to_vec());
        let cmd =
            spec.cmd.clone().unwrap_or_else(|| if spec.entrypoint.is_some() { vec![] } else { run.cmd().to_vec() });
        let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        let Some((path, args)) = argv.split_first() else {
            return Err(EngineError::BadRequest("no command specified".into()));
        };
        let id = names::new_id();
        let hostname = if spec.hostname.is_empty() { id[..12].to_string() } else { spec.hostname.clone() };
        let mut env: Vec<String> = Vec::new();
        for e in run.env().iter().chain(spec.env.iter()) {
            set_env(&mut env, e);
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, hatch_image::default_path_env());
        }
        set_env(&mut env, &format!("HOSTNAME={hostname}"));
        if spec.tty {
            set_env(&mut env, "TERM=xterm");
        }
        let capabilities = container_capabilities(&spec, self.host_capabilities)?;
        let record = Record {
            id: id.clone(),
            name: name.clone(),
            created: now_nanos(),
            image_id: image.id.clone(),
            path: path.clone(),
            args: args.to_vec(),
            env,
            working_dir: if spec.working_dir.is_empty() {
                run.working_dir().to_string()
            } else {
                spec.working_dir.clone()
            },
            user: if spec.user.is_empty() { run.user().to_string() } else { spec.user.clone() },
            capabilities,
            spec: ContainerSpec { hostname, ..spec },
            status: Status::Created,
            pid: 0,
            exit_code: 0,
            started_at: 0,
            finished_at: 0,
            error: String::new(),
            restart_count: 0,
        };
        let dir = self.containers_dir.join(&id);
        let c = Container::new(dir.clone(), record);
        {
            let mut map = self.containers.write().unwrap_or_else(|p| p.into_inner());
            if let Some(other) = map.values().find(|o| o.record().name == name) {
                return Err(EngineError::Conflict(format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                    other.id
                )));
            }
            std::fs::create_dir_all(&dir).map_err(|e| EngineError::internal("create container directory", e))?;
            c.save().map_err(|e| EngineError::internal("save container", e))?;
            map.insert(id, c.clone());
            self.changed();
        }
        Ok(c)
    }

    /// Starts a created or exited container.
    pub async fn start(self: &Arc<Self>, c: &Arc<Container>) -> Result<(), EngineError> {
        let _op = c.op.lock().await;
        match c.status() {
            Status::Running => return Err(EngineError::NotModified),
            Status::Removing => return Err(EngineError::Conflict(format!("container {} is marked for removal", c.id))),
            Status::Created | Status::Exited => {}
        }
        let record = c.snapshot();
        let images = self.images.clone();
        let image_id = record.image_id.clone();
        let image = tokio::task::spawn_blocking(move || images.resolve(&image_id))
            .await
            .map_err(|e| EngineError::internal("resolve image", e))?
            .map_err(|_| EngineError::NoSuchImage(record.image_id.clone()))?;

        let dir = c.dir.clone();
        let image_rootfs = image.rootfs.clone();
        let kind = self.rootfs_kind;
        tokio::task::spawn_blocking(move || rootfs::prepare(&image_rootfs, &dir, kind))
            .await
            .map_err(|e| EngineError::internal("prepare rootfs", e))?
            .map_err(|e| EngineError::internal("prepare rootfs", e))?;

        let hostname = record.spec.hostname.clone();
        let files = self.write_etc_files(c, &hostname)?;
        let bundle_config = BundleConfig {
            hostname,
            init_binary: self.init_binary.clone(),
            // init holds the widest set any exec may get (`--privileged`) and drops it per process.
            capabilities: self.host_capabilities,
            privileged: record.spec.privileged,
            files,
            cgroups_path: format!("/hatch/{}", c.id),
        };
        bundle::write(&c.dir, &bundle_config).map_err(|e| EngineError::internal("write bundle", e))?;

        let socket_path = self.socket_path(&c.id);
        let listener = create_listener(&socket_path)?;
        let status_file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(Self::status_path(c))
            .map_err(|e| EngineError::internal("create exit-status file", e))?;

        let _ = self.runc.delete(&c.id, true).await;
        let init_pid =
            match self.runc.run_detached(&c.id, &c.dir, listener, status_file.into(), &c.dir.join("init.log")).await {
                Ok(pid) => pid,
                Err(e) => {
                    let _ = rootfs::release(&c.dir);
                    return Err(EngineError::StartFailed(format!("failed to create container: {e}")));
                }
            };

        let spec = ProcessSpec {
            args: std::iter::once(record.path.clone()).chain(record.args.iter().cloned()).collect(),
            env: record.env.clone(),
            cwd: record.working_dir.clone(),
            user: record.user.clone(),
            capabilities: record.capabilities,
            tty: record.spec.tty,
            rows: 24,
            cols: 80,
            stdin: record.spec.open_stdin,
            stdout: true,
            stderr: true,
            detach: true,
        };
        let started = async {
            let conn = InitConn::connect(&socket_path).await?;
            let outcome = conn.start_main(spec).await?;
            Ok::<_, InitError>((conn, outcome))
        }
        .await;
        match started {
            Ok((conn, Outcome::Started(process))) => {
                // Stdio first, then "running": whoever waits for the start finds stdin ready, and
                // whoever asks for the logs finds the log (the pump appends to it later).
                let output = self.install_main_io(c, process, record.spec.tty).await;
                if let Err(e) = std::fs::OpenOptions::new().create(true).append(true).open(Self::log_path(c)) {
                    tracing::warn!(id = %c.id, error = %e, "create container log");
                }
                {
                    let mut r = c.record();
                    r.status = Status::Running;
                    r.pid = init_pid;
                    r.exit_code = 0;
                    r.error.clear();
                    r.started_at = now_nanos();
                    r.finished_at = 0;
                }
                let _ = c.save();
                c.publish(false, false);
                self.changed();
                self.spawn_monitor(c, conn, output);
                Ok(())
            }
            Ok((_, Outcome::Failed { code, message })) => {
                self.abort_start(c, code, &message).await;
                Err(EngineError::StartFailed(format!(
                    "failed to create task for container: OCI runtime create failed: unable to start container process: {message}: unknown"
                )))
            }
            Err(e) => {
                self.abort_start(c, 128, &e.to_string()).await;
                Err(EngineError::StartFailed(format!("failed to start container: {e}")))
            }
        }
    }

    async fn abort_start(&self, c: &Arc<Container>, code: i32, message: &str) {
        let _ = self.runc.delete(&c.id, true).await;
        let _ = rootfs::release(&c.dir);
        {
            let mut r = c.record();
            r.status = if r.started_at == 0 { Status::Created } else { Status::Exited };
            r.exit_code = code;
            r.error = message.to_string();
        }
        let _ = c.save();
        // Counts as an exit: clients waiting for the start (stdin) or the next exit return.
        c.publish(true, false);
        self.changed();
    }

    fn write_etc_files(&self, c: &Container, hostname: &str) -> Result<Vec<(PathBuf, String)>, EngineError> {
        let hostname_file = c.dir.join("hostname");
        let hosts_file = c.dir.join("hosts");
        let write = |path: &Path, content: String| {
            std::fs::write(path, content).map_err(|e| EngineError::internal("write container file", e))
        };
        write(&hostname_file, format!("{hostname}\n"))?;
        write(&hosts_file, format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"))?;
        Ok(vec![(hostname_file, "/etc/hostname".into()), (hosts_file, "/etc/hosts".into())])
    }

    /// Installs a running main process's stdin, terminal and pidfd on the container, and returns
    /// its output streams.
    async fn install_main_io(&self, c: &Container, process: Started, tty: bool) -> (Option<Source>, Option<Source>) {
        let Started { pidfd, pty, stdin, stdout, stderr, .. } = process;
        let (stdout, stderr, stdin) = if tty {
            let master = pty.and_then(|fd| PtyMaster::new(fd).ok()).map(Arc::new);
            (master.clone().map(Source::Pty), None, master.map(Sink::Pty))
        } else {
            (
                stdout.and_then(|fd| Source::pipe(fd).ok()),
                stderr.and_then(|fd| Source::pipe(fd).ok()),
                stdin.and_then(|fd| Sink::pipe(fd).ok()),
            )
        };
        let mut io = c.io.lock().await;
        io.pty = match &stdout {
            Some(Source::Pty(m)) => Some(m.clone()),
            _ => None,
        };
        io.stdin = stdin;
        io.pidfd = Some(pidfd);
        (stdout, stderr)
    }

    /// Pumps the main process's output to the log and attached clients, and waits for its exit.
    fn spawn_monitor(self: &Arc<Self>, c: &Arc<Container>, conn: InitConn, output: (Option<Source>, Option<Source>)) {
        let (exit_tx, exit_rx) = watch::channel(None);
        let log_path = Self::log_path(c);
        let pump = tokio::spawn(pump_main_output(c.clone(), OutputReader::new(output.0, output.1, exit_rx), log_path));
        let engine = self.clone();
        let c = c.clone();
        tokio::spawn(async move {
            let code = match conn.wait_exit().await {
                Ok(code) => code,
                Err(e) => {
                    tracing::debug!(id = %c.id, error = %e, "lost container init");
                    engine.read_exit_status(&c).unwrap_or(137)
                }
            };
            let _ = exit_tx.send(Some(code));
            let _ = pump.await;
            engine.finish_exit(&c, code).await;
        });
    }

    /// Records a container's exit and releases what it held.
    async fn finish_exit(self: &Arc<Self>, c: &Arc<Container>, code: i32) {
        if let Err(e) = self.runc.delete(&c.id, true).await {
            tracing::warn!(id = %c.id, error = %e, "runc delete");
        }
        if let Err(e) = rootfs::release(&c.dir) {
            tracing::warn!(id = %c.id, error = %e, "release rootfs");
        }
        let _ = std::fs::remove_file(self.socket_path(&c.id));
        *c.io.lock().await = container::MainIo::default();
        let auto_remove = {
            let mut r = c.record();
            r.status = Status::Exited;
            r.exit_code = code;
            r.pid = 0;
            r.finished_at = now_nanos();
            r.spec.auto_remove
        };
        let _ = c.save();
        c.detach_all();
        c.publish(true, false);
        self.changed();
        self.forget_execs(&c.id, false);
        if auto_remove && let Err(e) = self.remove(c, true).await {
            tracing::warn!(id = %c.id, error = %e, "auto-remove");
        }
    }

    /// Sends `signal` to the main process.
    pub async fn kill(&self, c: &Arc<Container>, signal: i32) -> Result<(), EngineError> {
        let io = c.io.lock().await;
        match (&io.pidfd, c.is_running()) {
            (Some(pidfd), true) => hatch_runtime::initctl::signal_pidfd(pidfd.as_fd(), signal)
                .map_err(|e| EngineError::internal("send signal", e)),
            _ => Err(EngineError::Conflict(format!(
                "Cannot kill container: {}: Container {} is not running",
                c.name(),
                c.id
            ))),
        }
    }

    /// Docker's stop: the stop signal, then SIGKILL to everything after `timeout` seconds.
    pub async fn stop(&self, c: &Arc<Container>, timeout: Option<i64>, signal: Option<i32>) -> Result<(), EngineError> {
        if !c.is_running() {
            return Err(EngineError::NotModified);
        }
        let spec_signal = c.record().spec.stop_signal.clone().and_then(|s| parse_signal(&s));
        let signal = signal.or(spec_signal).unwrap_or(libc::SIGTERM);
        let timeout = timeout.or(c.record().spec.stop_timeout).unwrap_or(10);
        let mut lifecycle = c.lifecycle();
        let _ = self.kill(c, signal).await;
        let stopped = lifecycle.wait_for(|l| l.status != Status::Running);
        let grace = Duration::from_secs(timeout.max(0) as u64);
        if tokio::time::timeout(grace, stopped).await.is_err() {
            let _ = self.runc.kill(&c.id, "KILL", true).await;
            let _ = c.lifecycle().wait_for(|l| l.status != Status::Running).await;
        }
        Ok(())
    }

    /// Waits for a container per Docker's conditions; returns the exit code.
    pub async fn wait(&self, c: &Arc<Container>, condition: WaitCondition) -> i32 {
        let mut lifecycle = c.lifecycle();
        let start = *lifecycle.borrow();
        let done = |l: &Lifecycle| match condition {
            WaitCondition::NotRunning => l.status != Status::Running,
            WaitCondition::NextExit => l.exits > start.exits,
            WaitCondition::Removed => l.removed,
        };
        match lifecycle.wait_for(done).await {
            Ok(l) => l.exit_code,
            // The container was dropped: it is gone, with its last code.
            Err(_) => c.record().exit_code,
        }
    }

    /// Removes a container; a running one only with `force` (it is killed first).
    pub async fn remove(self: &Arc<Self>, c: &Arc<Container>, force: bool) -> Result<(), EngineError> {
        if c.is_running() {
            if !force {
                return Err(EngineError::Conflict(format!(
                    "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                    c.name()
                )));
            }
            let _ = self.runc.kill(&c.id, "KILL", true).await;
            let _ =
                tokio::time::timeout(Duration::from_secs(10), c.lifecycle().wait_for(|l| l.status != Status::Running))
                    .await;
        }
        let _op = c.op.lock().await;
        if c.status() == Status::Removing {
            return Ok(());
        }
        c.record().status = Status::Removing;
        let _ = self.runc.delete(&c.id, true).await;
        let _ = rootfs::release(&c.dir);
        let _ = std::fs::remove_file(self.socket_path(&c.id));
        let dir = c.dir.clone();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(id = %c.id, error = %e, "remove container directory");
        }
        self.containers.write().unwrap_or_else(|p| p.into_inner()).remove(&c.id);
        self.forget_execs(&c.id, true);
        c.publish(false, true);
        self.changed();
        Ok(())
    }

    /// Whether any container uses the image.
    pub fn image_in_use(&self, image_id: &str) -> Option<String> {
        self.list().into_iter().find(|c| c.record().image_id == image_id).map(|c| c.id.clone())
    }

    // ---- main process I/O ---------------------------------------------------------------

    /// Subscribes to the main process's output (`docker attach`, `docker run`).
    pub fn attach_output(&self, c: &Container) -> mpsc::Receiver<OutputChunk> {
        c.attach_output()
    }

    /// Waits until a created container has been started (or has failed to start).
    async fn started(c: &Container) {
        let _ = c.lifecycle().wait_for(|l| l.status != Status::Created || l.exits > 0).await;
    }

    /// Writes to the main process's stdin; input sent before the start (`docker run -i` attaches
    /// first) waits for it.
    pub async fn write_stdin(&self, c: &Container, data: &[u8]) -> std::io::Result<()> {
        Self::started(c).await;
        let mut io = c.io.lock().await;
        match &mut io.stdin {
            Some(sink) => sink.write_all(data).await,
            None => Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stdin is closed")),
        }
    }

    /// Ends the main process's stdin (`StdinOnce` after the first attached client's EOF).
    pub async fn close_stdin(&self, c: &Container) {
        Self::started(c).await;
        let tty = c.record().spec.tty;
        if tty {
            return;
        }
        c.io.lock().await.stdin = None;
        if let Ok(conn) = InitConn::connect(&self.socket_path(&c.id)).await {
            let _ = conn.close_main_stdin().await;
        }
    }

    pub async fn resize(&self, c: &Container, rows: u16, cols: u16) -> Result<(), EngineError> {
        if !c.is_running() {
            return Err(EngineError::NotRunning(c.id.clone()));
        }
        if let Some(pty) = &c.io.lock().await.pty {
            pty.resize(rows, cols).map_err(|e| EngineError::internal("resize", e))?;
        }
        Ok(())
    }

    // ---- exec ---------------------------------------------------------------------------

    pub fn exec_create(&self, c: &Arc<Container>, spec: ExecSpec) -> Result<Arc<ExecSession>, EngineError> {
        if !c.is_running() {
            return Err(EngineError::NotRunning(c.id.clone()));
        }
        if spec.cmd.is_empty() {
            return Err(EngineError::BadRequest("No exec command specified".into()));
        }
        let session = ExecSession::new(names::new_id(), c.id.clone(), spec);
        let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        // Like dockerd's exec GC: a record nobody started, or whose process ended, goes after a
        // while, so a container exec'd into all day keeps a bounded table.
        execs.retain(|_, s| {
            let state = s.state();
            state.running || state.touched.is_none_or(|t| t.elapsed() < EXEC_RECORD_TTL)
        });
        execs.insert(session.id.clone(), session.clone());
        Ok(session)
    }

    pub fn exec_lookup(&self, id: &str) -> Result<Arc<ExecSession>, EngineError> {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchExec(id.into()))
    }

    /// Drops one exec record now. Front ends whose sessions nobody can look up by id (the k8s
    /// streaming server) call it when done, so a long-lived container's exec map does not grow
    /// with every `kubectl exec`. A process still running keeps running; only the record goes.
    pub fn exec_forget(&self, id: &str) {
        self.execs.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Drops exec records of a container: all of them once it is removed, the finished ones
    /// when it stops (their exit codes stay readable until then in Docker too).
    fn forget_execs(&self, container_id: &str, all: bool) {
        let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        execs.retain(|_, s| s.container_id != container_id || (!all && s.state().running));
    }

    /// Starts an exec. `detach` runs it with no streams attached.
    pub async fn exec_start(&self, session: &Arc<ExecSession>, detach: bool) -> Result<ExecStarted, EngineError> {
        let c = self.lookup(&session.container_id)?;
        if !c.is_running() {
            return Err(EngineError::NotRunning(c.id.clone()));
        }
        {
            let mut state = session.state();
            if state.started {
                return Err(EngineError::Conflict(format!("Exec command {} has already run", session.id)));
            }
            state.started = true;
            state.running = true;
        }
        let record = c.snapshot();
        let s = &session.spec;
        let mut env = record.env.clone();
        if s.tty {
            set_env(&mut env, "TERM=xterm");
        }
        for e in &s.env {
            set_env(&mut env, e);
        }
        // A size asked for before the start (the k8s resize channel) is the terminal's first size.
        let (rows, cols) = session.requested_size().or(s.console_size).unwrap_or((24, 80));
        let spec = ProcessSpec {
            args: s.cmd.clone(),
            env,
            cwd: if s.working_dir.is_empty() { record.working_dir.clone() } else { s.working_dir.clone() },
            user: if s.user.is_empty() { record.user.clone() } else { s.user.clone() },
            capabilities: if s.privileged { self.host_capabilities } else { record.capabilities },
            tty: s.tty,
            rows,
            cols,
            stdin: !detach && !s.tty && s.attach_stdin,
            stdout: !detach && !s.tty && s.attach_stdout,
            stderr: !detach && !s.tty && s.attach_stderr,
            detach,
        };

        // The process's ends go to init; the node keeps the others.
        let mut child_fds = Vec::new();
        let mut ours: [Option<OwnedFd>; 3] = [None, None, None];
        let io_err = |e| EngineError::internal("create pipe", e);
        if spec.stdin {
            let (r, w) = stdio::pipe().map_err(io_err)?;
            child_fds.push(r);
            ours[0] = Some(w);
        }
        for (wanted, slot) in [(spec.stdout, 1), (spec.stderr, 2)] {
            if wanted {
                let (r, w) = stdio::pipe().map_err(io_err)?;
                child_fds.push(w);
                ours[slot] = Some(r);
            }
        }

        let outcome = async {
            let conn = InitConn::connect(&self.socket_path(&c.id)).await?;
            let outcome = conn.exec(spec, &child_fds).await?;
            Ok::<_, InitError>((conn, outcome))
        }
        .await;
        drop(child_fds);
        let (conn, process) = match outcome {
            Ok((conn, Outcome::Started(process))) => (conn, process),
            Ok((_, Outcome::Failed { code, message })) => {
                session.state().finish(code);
                return Ok(ExecStarted::Failed { code, message });
            }
            Err(e) => {
                session.state().finish(126);
                return Err(match e {
                    InitError::Connect { .. } | InitError::Gone => EngineError::NotRunning(c.id.clone()),
                    other => EngineError::internal("exec", other),
                });
            }
        };
        session.state().pid = process.host_pid().unwrap_or(process.pid);

        let (exit_tx, exit_rx) = watch::channel(None);
        let (control_tx, control_rx) = mpsc::channel(4);
        let pty = match process.pty {
            Some(fd) => Some(Arc::new(PtyMaster::new(fd).map_err(|e| EngineError::internal("terminal", e))?)),
            None => None,
        };
        session.set_pty(pty.clone());
        tokio::spawn(watch_exec(session.clone(), conn, process.pidfd, exit_tx, control_rx));
        if detach {
            return Ok(ExecStarted::Detached);
        }
        let [stdin_w, stdout_r, stderr_r] = ours;
        let (stdin, stdout, stderr) = match pty {
            Some(m) => (s.attach_stdin.then(|| Sink::Pty(m.clone())), Some(Source::Pty(m)), None),
            None => (
                stdin_w.and_then(|fd| Sink::pipe(fd).ok()),
                stdout_r.and_then(|fd| Source::pipe(fd).ok()),
                stderr_r.and_then(|fd| Source::pipe(fd).ok()),
            ),
        };
        Ok(ExecStarted::Running(RunningExec {
            session: session.clone(),
            stdin,
            output: OutputReader::new(stdout, stderr, exit_rx),
            control: control_tx,
        }))
    }
}

/// Owns an exec's init connection: records its exit, and passes on a hang-up.
async fn watch_exec(
    session: Arc<ExecSession>,
    conn: InitConn,
    _pidfd: OwnedFd,
    exit_tx: watch::Sender<Option<i32>>,
    mut control: mpsc::Receiver<ExecControl>,
) {
    let wait = conn.wait_exit();
    tokio::pin!(wait);
    let mut control_open = true;
    let code = loop {
        tokio::select! {
            result = &mut wait => break result.unwrap_or(137),
            message = control.recv(), if control_open => match message {
                Some(ExecControl::Hangup) => {
                    if conn.hangup().await.is_err() {
                        break 137;
                    }
                }
                // The front end is done with the exec (or detached from it): keep waiting.
                None => control_open = false,
            },
        }
    };
    session.state().finish(code);
    session.set_pty(None);
    let _ = exit_tx.send(Some(code));
}

/// Copies the main process's output to its log and to attached clients, until it ends.
async fn pump_main_output(c: Arc<Container>, mut output: OutputReader, log_path: PathBuf) {
    let mut log = match logs::LogWriter::open(&log_path).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(id = %c.id, error = %e, "open container log");
            None
        }
    };
    loop {
        let (stream, len) = match output.next().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(id = %c.id, error = %e, "read container output");
                break;
            }
        };
        let stderr = stream == exec::Stream::Stderr;
        let data = Bytes::copy_from_slice(output.chunk(stream, len));
        if let Some(l) = &mut log
            && let Err(e) = l.append(stderr, now_nanos(), &data).await
        {
            tracing::warn!(id = %c.id, error = %e, "write container log");
        }
        c.log_appended.notify_waiters();
        for tx in c.attached_senders() {
            let _ = tx.send(OutputChunk { stderr, data: data.clone() }).await;
        }
    }
    c.log_appended.notify_waiters();
}

/// A signal given as a name (`TERM`, `SIGTERM`, any case) or a number.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<nix::sys::signal::Signal>().ok().map(|sig| sig as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Some(15));
        assert_eq!(parse_signal("sigkill"), Some(9));
        assert_eq!(parse_signal("10"), Some(10));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(parse_signal("0"), None);
    }

    #[test]
    fn capability_arithmetic() {
        let all = proto::all_capabilities();
        let spec =
            ContainerSpec { cap_add: vec!["NET_ADMIN".into()], cap_drop: vec!["CHOWN".into()], ..Default::default() };
        let caps = container_capabilities(&spec, all).unwrap_or(0);
        assert_ne!(caps & (1 << 12), 0);
        assert_eq!(caps & 1, 0);
        let privileged = ContainerSpec { privileged: true, ..Default::default() };
        assert_eq!(container_capabilities(&privileged, all).unwrap_or(0), all);
        let bad = ContainerSpec { cap_add: vec!["BOGUS".into()], ..Default::default() };
        assert!(container_capabilities(&bad, all).is_err());
    }

    #[test]
    fn env_override() {
        let mut env = vec!["A=1".to_string(), "B=2".to_string()];
        set_env(&mut env, "A=3");
        assert_eq!(env, vec!["B=2".to_string(), "A=3".to_string()]);
    }
}
