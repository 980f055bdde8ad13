//! Async client for a container's `hatch-init` control socket (see `hatch_init::proto`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hatch_init::proto::{self, FdRole, ProcessSpec, ProtoError, Reply, Request};
use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
use tokio::io::unix::AsyncFd;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("container init is not reachable at {path}: {source}")]
    Connect { path: PathBuf, source: Errno },
    #[error("container init closed the connection (the container stopped)")]
    Gone,
    #[error("container init: {0}")]
    Protocol(#[from] ProtoError),
    #[error("container init refused the request: {0}")]
    Refused(String),
    #[error("container init sent an unexpected reply: {0:?}")]
    Unexpected(Box<Reply>),
    #[error("container init: {0}")]
    Io(#[from] std::io::Error),
}

/// One connection to init; each carries one request and its replies.
pub struct InitConn {
    fd: AsyncFd<OwnedFd>,
}

/// A process init started.
#[derive(Debug)]
pub struct Started {
    /// Pid inside the container's PID namespace.
    pub pid: i32,
    /// A pidfd for the process: signals go through it, and it names the host pid.
    pub pidfd: OwnedFd,
    /// Terminal master (tty processes).
    pub pty: Option<OwnedFd>,
    /// The main process's stdio duplicates (non-tty main process only).
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl Started {
    fn from_reply(pid: i32, roles: Vec<FdRole>, fds: Vec<OwnedFd>) -> Result<Started, InitError> {
        proto::expect_fds(&roles, &fds)?;
        let (mut pidfd, mut pty, mut stdin, mut stdout, mut stderr) = (None, None, None, None, None);
        for (role, fd) in roles.into_iter().zip(fds) {
            let slot = match role {
                FdRole::Pidfd => &mut pidfd,
                FdRole::Pty => &mut pty,
                FdRole::Stdin => &mut stdin,
                FdRole::Stdout => &mut stdout,
                FdRole::Stderr => &mut stderr,
            };
            *slot = Some(fd);
        }
        let pidfd = pidfd.ok_or_else(|| InitError::Refused("reply carries no pidfd".into()))?;
        Ok(Started { pid, pidfd, pty, stdin, stdout, stderr })
    }

    /// The process's pid in the host's PID namespace.
    pub fn host_pid(&self) -> Option<i32> {
        host_pid_of(self.pidfd.as_fd())
    }
}

/// Outcome of a start request.
#[derive(Debug)]
pub enum Outcome {
    Started(Started),
    /// Nothing started; `code` is 126 (cannot invoke) or 127 (not found).
    Failed {
        code: i32,
        message: String,
    },
}

/// State of the main process when re-attaching.
#[derive(Debug)]
pub struct MainState {
    pub process: Started,
    pub tty: bool,
    pub exited: Option<i32>,
}

impl InitConn {
    /// Connects to init's control socket.
    pub async fn connect(path: &Path) -> Result<InitConn, InitError> {
        let err = |source| InitError::Connect { path: path.to_path_buf(), source };
        let fd =
            socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
                .map_err(err)?;
        let addr = UnixAddr::new(path).map_err(err)?;
        // A unix connect completes at once unless init's backlog is full.
        let mut backoff = Duration::from_millis(1);
        loop {
            match connect(fd.as_raw_fd(), &addr) {
                Ok(()) => break,
                Err(Errno::EAGAIN) if backoff < Duration::from_secs(2) => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(InitConn { fd: crate::stdio::register(fd)? })
    }

    pub async fn send(&self, request: &Request, fds: &[BorrowedFd<'_>]) -> Result<(), InitError> {
        loop {
            let mut guard = self.fd.writable().await?;
            match proto::send(self.fd.get_ref().as_fd(), request, fds) {
                Err(ProtoError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => guard.clear_ready(),
                other => return Ok(other?),
            }
        }
    }

    /// The next reply; `Gone` when init closed the connection.
    pub async fn recv(&self) -> Result<(Reply, Vec<OwnedFd>), InitError> {
        loop {
            let mut guard = self.fd.readable().await?;
            match proto::recv::<Reply>(self.fd.get_ref().as_fd()) {
                Err(ProtoError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(ProtoError::Io(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => return Err(InitError::Gone),
                Ok(None) => return Err(InitError::Gone),
                Ok(Some(reply)) => return Ok(reply),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Checks that init answers, and its protocol version.
    pub async fn hello(&self) -> Result<u32, InitError> {
        self.send(&Request::Hello, &[]).await?;
        match self.recv().await? {
            (Reply::Hello { version }, _) => Ok(version),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Starts an exec'd process. For a non-tty process, `stdio` holds the descriptors for the
    /// streams the spec asks for (stdin, stdout, stderr, in that order).
    pub async fn exec(&self, spec: ProcessSpec, stdio: &[OwnedFd]) -> Result<Outcome, InitError> {
        let mut roles = Vec::new();
        if !spec.tty {
            for (wanted, role) in
                [(spec.stdin, FdRole::Stdin), (spec.stdout, FdRole::Stdout), (spec.stderr, FdRole::Stderr)]
            {
                if wanted {
                    roles.push(role);
                }
            }
        }
        let fds: Vec<BorrowedFd<'_>> = stdio.iter().map(|f| f.as_fd()).collect();
        self.send(&Request::Exec { spec, fds: roles }, &fds).await?;
        self.started().await
    }

    /// Starts the container's main process; init creates and keeps its stdio.
    pub async fn start_main(&self, spec: ProcessSpec) -> Result<Outcome, InitError> {
        self.send(&Request::StartMain { spec }, &[]).await?;
        self.started().await
    }

    async fn started(&self) -> Result<Outcome, InitError> {
        match self.recv().await? {
            (Reply::Started { pid, fds: roles }, fds) => Ok(Outcome::Started(Started::from_reply(pid, roles, fds)?)),
            (Reply::Failed { code, message }, _) => Ok(Outcome::Failed { code, message }),
            (Reply::Error { message }, _) => Err(InitError::Refused(message)),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Attaches to the running (or just exited) main process.
    pub async fn attach_main(&self) -> Result<MainState, InitError> {
        self.send(&Request::AttachMain, &[]).await?;
        match self.recv().await? {
            (Reply::Main { pid, tty, exited, fds: roles }, fds) => {
                Ok(MainState { process: Started::from_reply(pid, roles, fds)?, tty, exited })
            }
            (Reply::Error { message }, _) => Err(InitError::Refused(message)),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// Delivers EOF to the main process's stdin.
    pub async fn close_main_stdin(&self) -> Result<(), InitError> {
        self.send(&Request::CloseMainStdin, &[]).await?;
        match self.recv().await? {
            (Reply::Ok, _) => Ok(()),
            (other, _) => Err(unexpected(other)),
        }
    }

    /// The client of this exec went away: init hangs up the process group and still reports
    /// `Exited` on this connection.
    pub async fn hangup(&self) -> Result<(), InitError> {
        self.send(&Request::Hangup, &[]).await
    }

    /// Waits for the process this connection started or attached to, and returns its exit
    /// status (128+N when killed by signal N).
    pub async fn wait_exit(&self) -> Result<i32, InitError> {
        loop {
            match self.recv().await? {
                (Reply::Exited { code }, _) => return Ok(code),
                (other, _) => tracing::debug!(?other, "ignoring init reply while waiting for exit"),
            }
        }
    }
}

fn unexpected(reply: Reply) -> InitError {
    InitError::Unexpected(Box::new(reply))
}

/// Reads the host pid a pidfd refers to from /proc/self/fdinfo.
pub fn host_pid_of(pidfd: BorrowedFd<'_>) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|v| v.trim().parse().ok()).filter(|p: &i32| *p > 0)
}

/// Sends a signal through a pidfd (no pid-reuse race).
pub fn signal_pidfd(pidfd: BorrowedFd<'_>, signal: i32) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal takes a descriptor, a signal number and a null siginfo by value.
    Errno::result(unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0)
    })
    .map(drop)
}
