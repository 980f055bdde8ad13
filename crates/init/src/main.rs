//! hatch-init: PID 1 of every hatch container.
//!
//! It reaps zombies, forwards signals to the main process, and serves exec requests from the node
//! on a listening socket it inherits (the socket's path is on the host, outside the container, so
//! no process in the container can reach it). It is single-threaded: one `poll` loop over the
//! listener, a signalfd and the open connections.
//!
//! Usage (set up by the node through `runc run --preserve-fds 2`):
//! `hatch-init --control-fd 3 --status-fd 4`

mod spawn;
mod users;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{SockFlag, accept4};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use hatch_init::proto::{self, FdRole, PROTOCOL_VERSION, ProcessSpec, Reply, Request};
use spawn::{SpawnError, Stdio};

/// How long a hung-up exec gets between SIGHUP and SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_secs(3);

/// Signals init passes on to the main process rather than acting on.
const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTERM,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

/// What a connection is waiting for.
enum Role {
    /// Connected, no request yet.
    Idle,
    /// Will get `Exited` for this exec'd process.
    Exec(Pid),
    /// Will get `Exited` for the main process.
    Main,
}

struct Conn {
    fd: OwnedFd,
    role: Role,
}

/// An exec'd process init reports on.
struct Child {
    conn: Option<u64>,
    detach: bool,
    hung_up: bool,
}

struct MainProcess {
    pid: Pid,
    pidfd: OwnedFd,
    tty: bool,
    /// init keeps the main process's stdio so output waits in the pipe (not lost, no SIGPIPE)
    /// while no node is connected; nodes get duplicates.
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    pty: Option<OwnedFd>,
    exited: Option<i32>,
}

struct Init {
    listener: OwnedFd,
    signals: SignalFd,
    status: Option<File>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    children: HashMap<Pid, Child>,
    main: Option<MainProcess>,
    /// Process groups to SIGKILL at the given time unless their leader is gone first.
    kill_at: Vec<(Instant, Pid)>,
}

#[derive(Debug, thiserror::Error)]
enum InitError {
    #[error("usage: hatch-init --control-fd N [--status-fd N]")]
    Usage,
    #[error("{0}: {1}")]
    Sys(&'static str, Errno),
}

fn parse_args() -> Result<(OwnedFd, Option<File>), InitError> {
    let mut args = std::env::args().skip(1);
    let (mut control, mut status) = (None, None);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse::<i32>().ok()).ok_or(InitError::Usage)?;
        match arg.as_str() {
            "--control-fd" => control = Some(value),
            "--status-fd" => status = Some(value),
            _ => return Err(InitError::Usage),
        }
    }
    let control = control.ok_or(InitError::Usage)?;
    // Check both descriptors are open before taking ownership of them.
    for fd in [Some(control), status].into_iter().flatten() {
        // SAFETY: F_GETFD only queries flags of a descriptor number; it does not take ownership.
        Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFD) })
            .map_err(|e| InitError::Sys("inherited descriptor", e))?;
    }
    // SAFETY: the node passes these descriptors to us (runc --preserve-fds); nothing else in this
    // process owns them, and they were checked to be open above.
    let control = unsafe { OwnedFd::from_raw_fd(control) };
    // SAFETY: as above.
    let status = status.map(|fd| unsafe { File::from_raw_fd(fd) });
    Ok((control, status))
}

fn set_cloexec_nonblock(fd: BorrowedFd<'_>, nonblock: bool) -> Result<(), Errno> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    if nonblock {
        let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from((code & 0xff) as u8),
        Err(e) => {
            eprintln!("hatch-init: {e}");
            ExitCode::from(126)
        }
    }
}

fn run() -> Result<i32, InitError> {
    spawn::reset_signal_dispositions();
    let (listener, status) = parse_args()?;
    set_cloexec_nonblock(listener.as_fd(), true).map_err(|e| InitError::Sys("control socket", e))?;
    if let Some(f) = &status {
        set_cloexec_nonblock(f.as_fd(), false).map_err(|e| InitError::Sys("status file", e))?;
    }
    // Keep /proc/1 unreadable and un-ptraceable for the container's processes, and reap orphans
    // even when run outside a PID namespace (tests).
    nix::sys::prctl::set_dumpable(false).map_err(|e| InitError::Sys("prctl dumpable", e))?;
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| InitError::Sys("prctl subreaper", e))?;

    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    for sig in FORWARDED {
        mask.add(*sig);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(|e| InitError::Sys("sigprocmask", e))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| InitError::Sys("signalfd", e))?;

    let mut init = Init {
        listener,
        signals,
        status,
        conns: HashMap::new(),
        next_conn: 0,
        children: HashMap::new(),
        main: None,
        kill_at: Vec::new(),
    };
    init.serve()
}

impl Init {
    fn serve(&mut self) -> Result<i32, InitError> {
        loop {
            let conn_ids: Vec<u64> = self.conns.keys().copied().collect();
            let (listener_ready, signals_ready, ready_conns) = {
                let mut fds = Vec::with_capacity(conn_ids.len() + 2);
                fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
                fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
                for id in &conn_ids {
                    if let Some(c) = self.conns.get(id) {
                        fds.push(PollFd::new(c.fd.as_fd(), PollFlags::POLLIN));
                    }
                }
                match poll(&mut fds, self.poll_timeout()) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(InitError::Sys("poll", e)),
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let conns: Vec<u64> =
                    conn_ids.iter().zip(&fds[2..]).filter(|(_, f)| ready(f)).map(|(id, _)| *id).collect();
                (ready(&fds[0]), ready(&fds[1]), conns)
            };

            if signals_ready {
                self.handle_signals();
            }
            if let Some(code) = self.main.as_ref().and_then(|m| m.exited) {
                return Ok(self.finish(code));
            }
            if listener_ready {
                self.accept_all();
            }
            for id in ready_conns {
                self.handle_conn(id);
            }
            self.fire_kills();
        }
    }

    fn poll_timeout(&self) -> PollTimeout {
        match self.kill_at.iter().map(|(t, _)| *t).min() {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t.saturating_duration_since(Instant::now()).as_millis().min(60_000) as i32;
                PollTimeout::try_from(ms + 1).unwrap_or(PollTimeout::MAX)
            }
        }
    }

    /// The main process is gone: record its status where the node will find it, and exit. The
    /// kernel then kills everything left in the container.
    fn finish(&mut self, code: i32) -> i32 {
        if let Some(f) = &self.status {
            let line = format!("{code}\n");
            if let Err(e) = f.write_all_at(line.as_bytes(), 0).and_then(|_| f.sync_data()) {
                eprintln!("hatch-init: write exit status: {e}");
            }
        }
        code
    }

    fn accept_all(&mut self) {
        loop {
            match accept4(&self.listener, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
                Ok(fd) => {
                    let id = self.next_conn;
                    self.next_conn += 1;
                    self.conns.insert(id, Conn { fd, role: Role::Idle });
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    eprintln!("hatch-init: accept: {}", e.desc());
                    return;
                }
            }
        }
    }

    fn handle_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.get(&id) else { return };
        match proto::recv::<Request>(conn.fd.as_fd()) {
            Ok(Some((request, fds))) => self.handle_request(id, request, fds),
            Err(proto::ProtoError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(None) | Err(proto::ProtoError::Io(_)) => self.close_conn(id),
            Err(e) => {
                self.reply(id, &Reply::Error { message: e.to_string() }, &[]);
                self.close_conn(id);
            }
        }
    }

    /// Sends a reply; a peer that cannot take a small message is dropped.
    fn reply(&mut self, id: u64, reply: &Reply, fds: &[BorrowedFd<'_>]) {
        let Some(conn) = self.conns.get(&id) else { return };
        if let Err(e) = proto::send(conn.fd.as_fd(), reply, fds) {
            eprintln!("hatch-init: reply: {e}");
            self.close_conn(id);
        }
    }

    fn close_conn(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else { return };
        if let Role::Exec(pid) = conn.role
            && let Some(child) = self.children.get_mut(&pid)
        {
            child.conn = None;
            if !child.detach {
                self.hang_up(pid);
            }
        }
    }

    /// The client of an exec is gone: hang up its whole process group, then make sure.
    fn hang_up(&mut self, pid: Pid) {
        let Some(child) = self.children.get_mut(&pid) else { return };
        if child.hung_up {
            return;
        }
        child.hung_up = true;
        let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGHUP);
        let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGCONT);
        self.kill_at.push((Instant::now() + HANGUP_GRACE, pid));
    }

    fn handle_request(&mut self, id: u64, request: Request, fds: Vec<OwnedFd>) {
        if let Request::Hangup = request {
            match self.conns.get(&id).map(|c| &c.role) {
                Some(Role::Exec(pid)) => {
                    let pid = *pid;
                    self.hang_up(pid);
                }
                _ => self.reply(id, &Reply::Error { message: "hangup needs a running exec".into() }, &[]),
            }
            return;
        }
        let idle = self.conns.get(&id).is_some_and(|c| matches!(c.role, Role::Idle));
        if !idle {
            self.reply(id, &Reply::Error { message: "one request per connection".into() }, &[]);
            return;
        }
        match request {
            Request::Hello => self.reply(id, &Reply::Hello { version: PROTOCOL_VERSION }, &[]),
            Request::Exec { spec, fds: roles } => self.exec(id, spec, roles, fds),
            Request::StartMain { spec } => self.start_main(id, spec),
            Request::AttachMain => self.attach_main(id),
            Request::Hangup => {}
            Request::CloseMainStdin => {
                if let Some(main) = &mut self.main {
                    main.stdin = None;
                }
                self.reply(id, &Reply::Ok, &[]);
            }
        }
    }

    fn exec(&mut self, id: u64, spec: ProcessSpec, roles: Vec<FdRole>, fds: Vec<OwnedFd>) {
        let expected = if spec.tty { Vec::new() } else { spawn::exec_fd_roles(&spec) };
        if roles != expected || proto::expect_fds(&roles, &fds).is_err() {
            let message = format!("exec request carries descriptors {roles:?}, expected {expected:?}");
            self.reply(id, &Reply::Error { message }, &[]);
            return;
        }
        let (stdio, master) = if spec.tty {
            match spawn::open_pty(spec.rows, spec.cols) {
                Ok((master, slave)) => (Stdio::Pty { slave }, Some(master)),
                Err(e) => return self.reply_failed(id, e),
            }
        } else {
            let mut fds = fds.into_iter();
            let mut take = |wanted: bool| if wanted { fds.next() } else { None };
            let stdin = take(spec.stdin);
            let stdout = take(spec.stdout);
            let stderr = take(spec.stderr);
            (Stdio::Fds { stdin, stdout, stderr }, None)
        };
        match spawn::spawn(&spec, stdio) {
            Ok(spawned) => {
                self.children.insert(spawned.pid, Child { conn: Some(id), detach: spec.detach, hung_up: false });
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.role = Role::Exec(spawned.pid);
                }
                let mut fds = vec![spawned.pidfd.as_fd()];
                let mut roles = vec![FdRole::Pidfd];
                if let Some(m) = &master {
                    fds.push(m.as_fd());
                    roles.push(FdRole::Pty);
                }
                self.reply(id, &Reply::Started { pid: spawned.pid.as_raw(), fds: roles }, &fds);
            }
            Err(e) => self.reply_failed(id, e),
        }
    }

    fn reply_failed(&mut self, id: u64, e: SpawnError) {
        self.reply(id, &Reply::Failed { code: e.code, message: e.message }, &[]);
    }

    fn start_main(&mut self, id: u64, spec: ProcessSpec) {
        if self.main.is_some() {
            self.reply(id, &Reply::Error { message: "main process already started".into() }, &[]);
            return;
        }
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC);
        let setup = || -> Result<(Stdio, [Option<OwnedFd>; 4]), SpawnError> {
            if spec.tty {
                let (master, slave) = spawn::open_pty(spec.rows, spec.cols)?;
                return Ok((Stdio::Pty { slave }, [None, None, None, Some(master)]));
            }
            let fail = |e: Errno| SpawnError { code: 126, message: format!("pipe: {}", e.desc()) };
            let (stdin_r, stdin_w) =
                if spec.stdin { pipe().map(|(r, w)| (Some(r), Some(w))).map_err(fail)? } else { (None, None) };
            let (out_r, out_w) = pipe().map_err(fail)?;
            let (err_r, err_w) = pipe().map_err(fail)?;
            Ok((
                Stdio::Fds { stdin: stdin_r, stdout: Some(out_w), stderr: Some(err_w) },
                [stdin_w, Some(out_r), Some(err_r), None],
            ))
        };
        let (stdio, [stdin, stdout, stderr, pty]) = match setup() {
            Ok(s) => s,
            Err(e) => return self.reply_failed(id, e),
        };
        match spawn::spawn(&spec, stdio) {
            Ok(spawned) => {
                self.main = Some(MainProcess {
                    pid: spawned.pid,
                    pidfd: spawned.pidfd,
                    tty: spec.tty,
                    stdin,
                    stdout,
                    stderr,
                    pty,
                    exited: None,
                });
                self.send_main(id, true);
            }
            Err(e) => self.reply_failed(id, e),
        }
    }

    fn attach_main(&mut self, id: u64) {
        if self.main.is_none() {
            self.reply(id, &Reply::Error { message: "main process not started".into() }, &[]);
            return;
        }
        self.send_main(id, false);
    }

    /// Sends the main process's pidfd and stdio duplicates, and subscribes the connection to its
    /// exit.
    fn send_main(&mut self, id: u64, just_started: bool) {
        let Some(main) = &self.main else { return };
        let mut roles = vec![FdRole::Pidfd];
        let mut fds = vec![main.pidfd.as_fd()];
        for (role, fd) in [
            (FdRole::Stdin, &main.stdin),
            (FdRole::Stdout, &main.stdout),
            (FdRole::Stderr, &main.stderr),
            (FdRole::Pty, &main.pty),
        ] {
            if let Some(fd) = fd {
                roles.push(role);
                fds.push(fd.as_fd());
            }
        }
        let reply = if just_started {
            Reply::Started { pid: main.pid.as_raw(), fds: roles }
        } else {
            Reply::Main { pid: main.pid.as_raw(), tty: main.tty, exited: main.exited, fds: roles }
        };
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.role = Role::Main;
        if let Err(e) = proto::send(conn.fd.as_fd(), &reply, &fds) {
            eprintln!("hatch-init: reply: {e}");
            self.close_conn(id);
        }
    }

    fn handle_signals(&mut self) {
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) => {
                    let signo = info.ssi_signo as i32;
                    if signo == libc::SIGCHLD {
                        continue;
                    }
                    match (&self.main, Signal::try_from(signo)) {
                        (Some(main), Ok(sig)) if main.exited.is_none() => {
                            let _ = kill(main.pid, sig);
                        }
                        // No main process to pass it to: a stop signal ends init.
                        (None, Ok(Signal::SIGTERM | Signal::SIGINT)) => std::process::exit(128 + signo),
                        _ => {}
                    }
                }
                Ok(None) | Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("hatch-init: signalfd: {}", e.desc());
                    break;
                }
            }
        }
        // SIGCHLD may coalesce: always reap everything that is ready.
        self.reap();
    }

    fn reap(&mut self) {
        loop {
            let (pid, code) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("hatch-init: waitpid: {}", e.desc());
                    return;
                }
            };
            if let Some(main) = &mut self.main
                && main.pid == pid
            {
                main.exited = Some(code);
                let watchers: Vec<u64> =
                    self.conns.iter().filter(|(_, c)| matches!(c.role, Role::Main)).map(|(id, _)| *id).collect();
                for id in watchers {
                    self.reply(id, &Reply::Exited { code }, &[]);
                }
                continue;
            }
            if let Some(child) = self.children.remove(&pid) {
                if child.hung_up {
                    // Its group may outlive the leader; finish the hang-up now, while the group id
                    // cannot have been reused.
                    let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
                    self.kill_at.retain(|(_, p)| *p != pid);
                }
                if let Some(id) = child.conn {
                    self.reply(id, &Reply::Exited { code }, &[]);
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.role = Role::Idle;
                    }
                }
            }
        }
    }

    fn fire_kills(&mut self) {
        let now = Instant::now();
        self.kill_at.retain(|(when, pid)| {
            if *when > now {
                return true;
            }
            let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
            false
        });
    }
}
