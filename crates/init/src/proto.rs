//! The control protocol between the node and `hatch-init`.
//!
//! Transport: a `SOCK_SEQPACKET` unix socket, so every message keeps its boundaries and the file
//! descriptors passed with `SCM_RIGHTS` stay attached to the message they belong to. A message is
//! one JSON document; the descriptors it carries are listed, in order, in the message itself
//! (`fds`), so neither side ever has to guess what a descriptor is.
//!
//! One connection per request: the node connects, sends one [`Request`], and reads [`Reply`]s
//! until `Exited`. A `Hangup` on a running exec's connection, or closing that connection (the node
//! died), tells init the client is gone; init then hangs up the process group (SIGHUP, then
//! SIGKILL after a grace period) unless the exec is detached.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

/// Largest message either side accepts. Requests carry argv and env, which stay well below this.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 4;
/// Version of this protocol; init answers `Hello` with it.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a process needs in order to be started inside the container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the `PATH` of `env` when it has no slash.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs. init adds `HOME` from the passwd entry when missing.
    pub env: Vec<String>,
    /// Working directory inside the container; empty means the user's home or `/`.
    pub cwd: String,
    /// `name|uid[:group|gid]`, resolved by init against the container's own /etc/passwd and
    /// /etc/group. Empty means root.
    pub user: String,
    /// Capability bitmask (bit N = capability N) the process keeps; everything else is dropped
    /// from its bounding set before exec.
    pub capabilities: u64,
    /// Allocate a terminal from the container's devpts and make it the controlling terminal.
    pub tty: bool,
    /// Initial terminal size when `tty` is set.
    pub rows: u16,
    pub cols: u16,
    /// Non-tty exec: which of stdin/stdout/stderr the request carries as descriptors (in that
    /// order). A stream not carried is connected to /dev/null. For `StartMain`, which streams
    /// init must create pipes for.
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// A detached process keeps running when its connection closes.
    pub detach: bool,
}

/// The role of a descriptor carried by a message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FdRole {
    Stdin,
    Stdout,
    Stderr,
    /// Master side of the process's terminal.
    Pty,
    /// A pidfd for the process (lets the node signal it and learn its host pid).
    Pidfd,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Liveness and version check; answered with `Hello`.
    Hello,
    /// Start a process whose stdio the node supplies (`fds`) or, with `tty`, a terminal init
    /// allocates and returns.
    Exec { spec: ProcessSpec, fds: Vec<FdRole> },
    /// Start the container's main process. init creates and keeps its stdio so that output is
    /// not lost while no node is connected; the node gets duplicates.
    StartMain { spec: ProcessSpec },
    /// (Re)attach to the main process's stdio, e.g. after a node restart.
    AttachMain,
    /// Close init's copy of the main process's stdin pipe, delivering EOF.
    CloseMainStdin,
    /// Sent on the connection of a running exec whose client went away: hang up its process
    /// group (SIGHUP, then SIGKILL after a grace period) and still report `Exited`.
    Hangup,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        version: u32,
    },
    /// The process runs; `fds` lists the descriptors attached to this message.
    Started {
        pid: i32,
        fds: Vec<FdRole>,
    },
    /// Nothing was started. `code` is the exit status a shell would give (126, 127).
    Failed {
        code: i32,
        message: String,
    },
    /// The process ended: its exit status, or 128+N when killed by signal N.
    Exited {
        code: i32,
    },
    /// State of the main process for `AttachMain`; the stdio duplicates are attached.
    Main {
        pid: i32,
        tty: bool,
        exited: Option<i32>,
        fds: Vec<FdRole>,
    },
    /// The request could not be served (bad message, wrong state).
    Error {
        message: String,
    },
    /// Answer to `CloseMainStdin` and other requests with nothing to report.
    Ok,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control message too large ({0} bytes)")]
    TooLarge(usize),
    #[error("control message carries {0} descriptors, at most {MAX_FDS} allowed")]
    TooManyFds(usize),
    #[error("control message was truncated")]
    Truncated,
    #[error("malformed control message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("descriptor count does not match the message ({expected} listed, {got} received)")]
    FdMismatch { expected: usize, got: usize },
}

impl From<nix::Error> for ProtoError {
    fn from(e: nix::Error) -> Self {
        ProtoError::Io(std::io::Error::from(e))
    }
}

/// Sends one message with its descriptors. Fails with `WouldBlock` on a full non-blocking socket.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ProtoError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_MESSAGE {
        return Err(ProtoError::TooLarge(body.len()));
    }
    if fds.len() > MAX_FDS {
        return Err(ProtoError::TooManyFds(fds.len()));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [IoSlice::new(&body)];
    let cmsgs = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsgs };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and the descriptors that came with it (close-on-exec).
/// `Ok(None)` means the peer closed the connection.
pub fn recv<T: for<'de> Deserialize<'de>>(sock: BorrowedFd<'_>) -> Result<Option<(T, Vec<OwnedFd>)>, ProtoError> {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds, truncated) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg_buf), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        for fd in received {
                            // SAFETY: the kernel just installed this descriptor in our table for
                            // us; nothing else owns it.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                let truncated = msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                break (msg.bytes, fds, truncated);
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if truncated || len > MAX_MESSAGE {
        return Err(ProtoError::Truncated);
    }
    if len == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..len])?;
    Ok(Some((msg, fds)))
}

/// Checks that a message listing `roles` came with exactly that many descriptors.
pub fn expect_fds(roles: &[FdRole], fds: &[OwnedFd]) -> Result<(), ProtoError> {
    if roles.len() != fds.len() {
        return Err(ProtoError::FdMismatch { expected: roles.len(), got: fds.len() });
    }
    Ok(())
}

/// Linux capability names, indexed by number (see capabilities(7)).
pub const CAPABILITY_NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Bitmask of every capability this protocol knows.
pub fn all_capabilities() -> u64 {
    (1u64 << CAPABILITY_NAMES.len()) - 1
}

/// Capability number for a name such as `NET_ADMIN` or `CAP_NET_ADMIN` (any case).
pub fn capability_from_name(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITY_NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

/// The set Docker gives a container by default.
pub fn default_capabilities() -> u64 {
    [
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ]
    .iter()
    .filter_map(|n| capability_from_name(n))
    .fold(0, |mask, cap| mask | (1 << cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::fd::AsFd;

    #[test]
    fn message_and_fds_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        let (r, w) = nix::unistd::pipe()?;
        let req = Request::Exec {
            spec: ProcessSpec { args: vec!["sh".into(), "-c".into(), "exit 3".into()], ..Default::default() },
            fds: vec![FdRole::Stdin, FdRole::Stdout],
        };
        send(a.as_fd(), &req, &[r.as_fd(), w.as_fd()])?;
        let (got, fds): (Request, _) = recv(b.as_fd())?.ok_or("closed")?;
        assert_eq!(got, req);
        assert_eq!(fds.len(), 2);
        drop(a);
        assert!(recv::<Request>(b.as_fd())?.is_none());
        Ok(())
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() -> Result<(), Box<dyn std::error::Error>> {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        nix::unistd::write(&a, b"\xff\x00{not json")?;
        assert!(matches!(recv::<Request>(b.as_fd()), Err(ProtoError::Malformed(_))));
        Ok(())
    }

    #[test]
    fn capability_names() {
        assert_eq!(capability_from_name("cap_net_admin"), Some(12));
        assert_eq!(capability_from_name("KILL"), Some(5));
        assert_eq!(capability_from_name("nope"), None);
        assert_eq!(default_capabilities().count_ones(), 14);
        assert_eq!(all_capabilities().count_ones() as usize, CAPABILITY_NAMES.len());
    }
}
