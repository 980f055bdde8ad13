//! Starting one process: everything is resolved before `fork` (user, program path, argv/env as C
//! strings, capability masks, terminal); between `fork` and `execve` the child makes only plain
//! system calls and reports a failure through a close-on-exec pipe.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, Pid};

use hatch_init::proto::{FdRole, ProcessSpec};

use crate::users::{self, Identity};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a process could not be started, with the exit status a shell would report.
#[derive(Debug)]
pub struct SpawnError {
    pub code: i32,
    pub message: String,
}

impl SpawnError {
    fn cannot_invoke(message: impl Into<String>) -> Self {
        SpawnError { code: 126, message: message.into() }
    }
}

/// The stdio a new process gets.
pub enum Stdio {
    /// A terminal: the child makes the peer of this master its controlling terminal.
    Pty { slave: OwnedFd },
    /// Explicit descriptors; `None` means /dev/null.
    Fds { stdin: Option<OwnedFd>, stdout: Option<OwnedFd>, stderr: Option<OwnedFd> },
}

/// A process that was started.
pub struct Spawned {
    pub pid: Pid,
    pub pidfd: OwnedFd,
}

/// Opens a new terminal in the container's devpts (`/dev/ptmx` there is `pts/ptmx`), as runc does
/// for `exec -t`, so `tty` inside prints a path that exists in the container.
pub fn open_pty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let fail = |what: &str, e: Errno| SpawnError::cannot_invoke(format!("allocate terminal: {what}: {}", e.desc()));
    let master = open("/dev/ptmx", OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| fail("open /dev/ptmx", e))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, which lives across the call.
    Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })
        .map_err(|e| fail("unlock", e))?;
    set_window_size(master.as_fd(), rows, cols).map_err(|e| fail("set size", e))?;
    // TIOCGPTPEER opens the slave through the master, with no path lookup that a process in the
    // container could race.
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor.
    let slave = Errno::result(unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
    })
    .map_err(|e| fail("open peer", e))?;
    // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    Ok((master, slave))
}

pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> Result<(), Errno> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which lives across the call.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// Everything the child needs, prepared before fork.
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    identity: Identity,
    capabilities: u64,
}

fn cstring(s: &str, what: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::cannot_invoke(format!("{what} contains a NUL byte")))
}

fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter().rev().find_map(|kv| kv.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

fn is_executable_file(path: &std::path::Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds `name` in `PATH` like execvp would, but before forking, so a missing command is a clean
/// 127 with a message rather than a child that dies.
fn find_program(name: &str, env: &[String]) -> Result<String, SpawnError> {
    if name.contains('/') {
        return Ok(name.to_string());
    }
    let path = env_value(env, "PATH").unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| format!("{}/{name}", dir.trim_end_matches('/')))
        .find(|candidate| is_executable_file(std::path::Path::new(candidate)))
        .ok_or_else(|| SpawnError { code: 127, message: format!("exec: {name:?}: executable file not found in $PATH") })
}

fn prepare(spec: &ProcessSpec) -> Result<Prepared, SpawnError> {
    let Some(arg0) = spec.args.first() else {
        return Err(SpawnError::cannot_invoke("no command specified"));
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let identity = users::resolve(&spec.user, &passwd, &group).map_err(|e| SpawnError::cannot_invoke(e.to_string()))?;

    let mut env = spec.env.clone();
    if env_value(&env, "HOME").is_none() {
        env.push(format!("HOME={}", identity.home));
    }
    let program = find_program(arg0, &env)?;
    let cwd = if spec.cwd.is_empty() { "/" } else { spec.cwd.as_str() };
    Ok(Prepared {
        program: cstring(&program, "command")?,
        argv: spec.args.iter().map(|a| cstring(a, "argument")).collect::<Result<_, _>>()?,
        envp: env.iter().map(|e| cstring(e, "environment")).collect::<Result<_, _>>()?,
        cwd: cstring(cwd, "working directory")?,
        identity,
        // A process can never get more than init holds.
        capabilities: spec.capabilities & current_permitted_capabilities(),
    })
}

/// The stage at which the child failed, sent to the parent with the errno.
#[repr(u8)]
#[derive(Clone, Copy)]
enum Stage {
    Setup = 1,
    Chdir = 2,
    Identity = 3,
    Capabilities = 4,
    Exec = 5,
}

/// Starts a process described by `spec` with `stdio`.
pub fn spawn(spec: &ProcessSpec, stdio: Stdio) -> Result<Spawned, SpawnError> {
    let prepared = prepare(spec)?;
    let (err_read, err_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::cannot_invoke(format!("pipe: {}", e.desc())))?;
    let devnull = open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| SpawnError::cannot_invoke(format!("open /dev/null: {}", e.desc())))?;

    // SAFETY: init is single-threaded, so the child is a faithful copy with no locks held by other
    // threads; the child only makes system calls before execve or _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let (stage, errno) = child_setup(&prepared, &stdio, devnull.as_fd());
            report_and_exit(err_write.as_fd(), stage, errno)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(err_write);
            drop(stdio);
            let mut report = [0u8; 5];
            let n = read_full(err_read.as_fd(), &mut report);
            if n == report.len() {
                // The child failed before execve and has exited; collect it here so the reaper
                // never reports it as a started process.
                let _ = nix::sys::wait::waitpid(child, None);
                let errno = Errno::from_raw(i32::from_ne_bytes([report[1], report[2], report[3], report[4]]));
                return Err(describe_failure(report[0], errno, spec, &prepared));
            }
            let pidfd =
                pidfd_open(child).map_err(|e| SpawnError::cannot_invoke(format!("pidfd_open: {}", e.desc())))?;
            Ok(Spawned { pid: child, pidfd })
        }
        Err(e) => Err(SpawnError::cannot_invoke(format!("fork: {}", e.desc()))),
    }
}

fn read_full(fd: BorrowedFd<'_>, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    got
}

fn describe_failure(stage: u8, errno: Errno, spec: &ProcessSpec, prepared: &Prepared) -> SpawnError {
    let program = prepared.program.to_string_lossy();
    let desc = errno.desc().to_lowercase();
    match stage {
        s if s == Stage::Chdir as u8 => {
            SpawnError::cannot_invoke(format!("chdir to cwd ({:?}) failed: {desc}", prepared.cwd.to_string_lossy()))
        }
        s if s == Stage::Identity as u8 => SpawnError::cannot_invoke(format!("set user {:?}: {desc}", spec.user)),
        s if s == Stage::Capabilities as u8 => SpawnError::cannot_invoke(format!("set capabilities: {desc}")),
        s if s == Stage::Exec as u8 && errno == Errno::ENOENT => {
            SpawnError { code: 127, message: format!("exec: {program:?}: no such file or directory") }
        }
        s if s == Stage::Exec as u8 => SpawnError::cannot_invoke(format!("exec: {program:?}: {desc}")),
        _ => SpawnError::cannot_invoke(format!("process setup failed: {desc}")),
    }
}

/// Runs in the child between fork and exec; returns only on failure.
fn child_setup(p: &Prepared, stdio: &Stdio, devnull: BorrowedFd<'_>) -> (Stage, Errno) {
    macro_rules! check {
        ($stage:expr, $e:expr) => {
            if let Err(errno) = $e {
                return ($stage, errno);
            }
        };
    }
    // init blocks the signals it handles through signalfd; the new process starts unblocked (the
    // dispositions were reset to default once, when init started).
    check!(Stage::Setup, unblock_signals());
    check!(Stage::Setup, nix::unistd::setsid().map(drop));
    match stdio {
        Stdio::Pty { slave } => {
            // SAFETY: TIOCSCTTY takes an int argument by value; the slave is an open terminal.
            check!(Stage::Setup, Errno::result(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) }));
            for target in 0..3 {
                check!(Stage::Setup, dup_to(slave.as_fd(), target));
            }
        }
        Stdio::Fds { stdin, stdout, stderr } => {
            for (target, fd) in [stdin, stdout, stderr].into_iter().enumerate() {
                let src = fd.as_ref().map_or(devnull, |f| f.as_fd());
                check!(Stage::Setup, dup_to(src, target as i32));
            }
        }
    }
    // Nothing init holds may leak into the container's processes.
    check!(Stage::Setup, mark_cloexec_from(3));
    check!(Stage::Chdir, nix::unistd::chdir(p.cwd.as_c_str()));
    check!(Stage::Capabilities, drop_bounding_set(p.capabilities));
    check!(Stage::Identity, set_identity(&p.identity));
    check!(Stage::Capabilities, set_process_capabilities(p.capabilities, p.identity.uid));
    match nix::unistd::execve(&p.program, &p.argv, &p.envp) {
        Err(e) => (Stage::Exec, e),
        Ok(never) => match never {},
    }
}

fn report_and_exit(fd: BorrowedFd<'_>, stage: Stage, errno: Errno) -> ! {
    let code = (errno as i32).to_ne_bytes();
    let report = [stage as u8, code[0], code[1], code[2], code[3]];
    let _ = nix::unistd::write(fd, &report);
    let status = if stage as u8 == Stage::Exec as u8 && errno == Errno::ENOENT { 127 } else { 126 };
    // SAFETY: _exit skips atexit handlers and stdio flushing, which belong to the parent.
    unsafe { libc::_exit(status) }
}

fn dup_to(src: BorrowedFd<'_>, target: i32) -> Result<(), Errno> {
    if src.as_raw_fd() == target {
        // dup2 onto itself keeps close-on-exec set; clear it instead.
        return nix::fcntl::fcntl(src, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).map(drop);
    }
    // SAFETY: dup2 onto a fixed low descriptor in the child, which owns its whole fd table.
    Errno::result(unsafe { libc::dup2(src.as_raw_fd(), target) }).map(drop)
}

fn unblock_signals() -> Result<(), Errno> {
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
}

/// Restores every signal's default disposition. Ignored signals survive execve, and the chain
/// that starts init (the node, runc) may have ignored some (Rust ignores SIGPIPE); the processes
/// init starts must not inherit that. Done once at startup, so execs need not.
pub fn reset_signal_dispositions() {
    /// The kernel's `struct sigaction` on x86_64 (not glibc's, which differs).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
    // The raw syscall, because glibc refuses to touch the real-time signals it reserves (32, 33),
    // and those can arrive ignored too.
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads one kernel sigaction from the pointer, which lives across the
        // call; the old action pointer is null and the mask size is the kernel's (8 bytes).
        unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, &default, std::ptr::null_mut::<KernelSigaction>(), 8) };
    }
}

fn mark_cloexec_from(first: u32) -> Result<(), Errno> {
    // SAFETY: close_range only changes descriptor flags.
    Errno::result(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) }).map(drop)
}

fn drop_bounding_set(keep: u64) -> Result<(), Errno> {
    for cap in 0..64u64 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes the capability number by value.
        match Errno::result(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) }) {
            Ok(_) => {}
            // Past the kernel's last capability.
            Err(Errno::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn set_identity(id: &Identity) -> Result<(), Errno> {
    let groups: Vec<nix::unistd::Gid> = id.groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups)?;
    let gid = nix::unistd::Gid::from_raw(id.gid);
    nix::unistd::setresgid(gid, gid, gid)?;
    let uid = nix::unistd::Uid::from_raw(id.uid);
    // A non-root uid loses every permitted and effective capability here, as with Docker.
    nix::unistd::setresuid(uid, uid, uid)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn set_process_capabilities(keep: u64, uid: u32) -> Result<(), Errno> {
    // SAFETY: clearing the ambient set takes no pointers.
    let _ = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    if uid != 0 {
        return Ok(());
    }
    let header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let lo = keep as u32;
    let hi = (keep >> 32) as u32;
    let data = [
        CapData { effective: lo, permitted: lo, inheritable: 0 },
        CapData { effective: hi, permitted: hi, inheritable: 0 },
    ];
    // SAFETY: capset reads a version-3 header and two data structs, both alive for the call.
    Errno::result(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) }).map(drop)
}

/// init's own permitted set (on some hosts, a few capabilities are withheld even from root).
fn current_permitted_capabilities() -> u64 {
    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes a version-3 header and two data structs, both alive for the call.
    match Errno::result(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) }) {
        Ok(_) => u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32),
        Err(_) => 0,
    }
}

fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) })?;
    // SAFETY: the descriptor was just created for us (pidfds are close-on-exec by default).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The descriptor roles a non-tty exec request carries, in order.
pub fn exec_fd_roles(spec: &ProcessSpec) -> Vec<FdRole> {
    let mut roles = Vec::new();
    if spec.stdin {
        roles.push(FdRole::Stdin);
    }
    if spec.stdout {
        roles.push(FdRole::Stdout);
    }
    if spec.stderr {
        roles.push(FdRole::Stderr);
    }
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_lookup() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(find_program("sh", &env).is_ok_and(|p| p.ends_with("/sh")));
        let err = find_program("definitely-not-here", &env).err().map(|e| (e.code, e.message));
        assert_eq!(err, Some((127, "exec: \"definitely-not-here\": executable file not found in $PATH".to_string())));
        assert_eq!(find_program("./x", &env).ok().as_deref(), Some("./x"));
    }

    #[test]
    fn env_lookup_takes_last() {
        let env = vec!["A=1".to_string(), "AB=2".to_string(), "A=3".to_string()];
        assert_eq!(env_value(&env, "A"), Some("3"));
        assert_eq!(env_value(&env, "B"), None);
    }
}
