//! Runs the real hatch-init binary on the host (outside any container) and talks to it over its
//! control socket, as the node does.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hatch_init::proto::{self, FdRole, ProcessSpec, Reply, Request};
use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, listen, socket};

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Init {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Init {
    fn start() -> Result<Init, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("init.sock");
        let listener = socket_fd()?;
        bind(std::os::fd::AsRawFd::as_raw_fd(&listener), &UnixAddr::new(&socket)?)?;
        listen(&listener, Backlog::new(16)?)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hatch-init"));
        cmd.args(["--control-fd", "3"]);
        let fd = listener;
        // SAFETY: dup2 is async-signal-safe; it places the listener at fd 3 in the child.
        unsafe {
            cmd.pre_exec(move || {
                let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
                // dup2 onto itself would keep close-on-exec set.
                let ok = if raw == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(raw, 3) };
                if ok < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Init { child, socket, _dir: dir })
    }

    fn connect(&self) -> Result<OwnedFd, Box<dyn std::error::Error>> {
        let fd = socket_fd()?;
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &UnixAddr::new(self.socket.as_path())?)?;
        Ok(fd)
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn socket_fd() -> nix::Result<OwnedFd> {
    socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
}

fn recv(fd: &OwnedFd) -> Result<(Reply, Vec<OwnedFd>), Box<dyn std::error::Error>> {
    Ok(proto::recv::<Reply>(fd.as_fd())?.ok_or("init closed the connection")?)
}

fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/bin:/bin".into()],
        capabilities: proto::all_capabilities(),
        ..Default::default()
    }
}

fn read_all(fd: OwnedFd) -> String {
    let mut s = String::new();
    let _ = std::fs::File::from(fd).read_to_string(&mut s);
    s
}

#[test]
fn exec_with_pipes_reports_output_and_exit_code() -> TestResult {
    let init = Init::start()?;
    let conn = init.connect()?;
    let (out_r, out_w) = nix::unistd::pipe()?;
    let (err_r, err_w) = nix::unistd::pipe()?;
    let mut s = spec(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
    s.stdout = true;
    s.stderr = true;
    let req = Request::Exec { spec: s, fds: vec![FdRole::Stdout, FdRole::Stderr] };
    proto::send(conn.as_fd(), &req, &[out_w.as_fd(), err_w.as_fd()])?;
    drop((out_w, err_w));
    let (started, fds) = recv(&conn)?;
    assert!(matches!(started, Reply::Started { ref fds, .. } if fds == &[FdRole::Pidfd]), "{started:?}");
    assert_eq!(fds.len(), 1);
    assert_eq!(recv(&conn)?.0, Reply::Exited { code: 3 });
    assert_eq!(read_all(out_r), "out\n");
    assert_eq!(read_all(err_r), "err\n");
    Ok(())
}

#[test]
fn exec_with_tty_gets_a_terminal_of_the_requested_size() -> TestResult {
    let init = Init::start()?;
    let conn = init.connect()?;
    let mut s = spec(&["sh", "-c", "tty; stty size"]);
    s.tty = true;
    s.rows = 33;
    s.cols = 111;
    proto::send(conn.as_fd(), &Request::Exec { spec: s, fds: vec![] }, &[])?;
    let (started, mut fds) = recv(&conn)?;
    assert!(matches!(started, Reply::Started { ref fds, .. } if fds == &[FdRole::Pidfd, FdRole::Pty]), "{started:?}");
    let master = fds.pop().ok_or("no pty")?;
    let mut output = Vec::new();
    let mut buf = [0u8; 4096];
    // The master reports EIO once the process and its terminal are gone.
    while let Ok(n) = nix::unistd::read(&master, &mut buf) {
        if n == 0 {
            break;
        }
        output.extend_from_slice(&buf[..n]);
    }
    let output = String::from_utf8_lossy(&output);
    assert!(output.contains("/dev/pts/"), "{output}");
    assert!(output.contains("33 111"), "{output}");
    assert_eq!(recv(&conn)?.0, Reply::Exited { code: 0 });
    Ok(())
}

#[test]
fn missing_command_and_unknown_user_fail_cleanly() -> TestResult {
    let init = Init::start()?;
    let conn = init.connect()?;
    proto::send(conn.as_fd(), &Request::Exec { spec: spec(&["no-such-command"]), fds: vec![] }, &[])?;
    let (reply, _) = recv(&conn)?;
    assert!(matches!(reply, Reply::Failed { code: 127, ref message } if message.contains("not found")), "{reply:?}");

    let conn = init.connect()?;
    let mut s = spec(&["true"]);
    s.user = "no-such-user-xyz".into();
    proto::send(conn.as_fd(), &Request::Exec { spec: s, fds: vec![] }, &[])?;
    let (reply, _) = recv(&conn)?;
    assert_eq!(
        reply,
        Reply::Failed {
            code: 126,
            message: "unable to find user no-such-user-xyz: no matching entries in passwd file".into()
        }
    );

    let conn = init.connect()?;
    let mut s = spec(&["true"]);
    s.cwd = "/no/such/dir".into();
    proto::send(conn.as_fd(), &Request::Exec { spec: s, fds: vec![] }, &[])?;
    let (reply, _) = recv(&conn)?;
    assert!(matches!(reply, Reply::Failed { code: 126, .. }), "{reply:?}");
    Ok(())
}

#[test]
fn mismatched_descriptors_are_refused() -> TestResult {
    let init = Init::start()?;
    let conn = init.connect()?;
    let mut s = spec(&["true"]);
    s.stdout = true;
    // Claims a stdout descriptor but sends none.
    proto::send(conn.as_fd(), &Request::Exec { spec: s, fds: vec![FdRole::Stdout] }, &[])?;
    assert!(matches!(recv(&conn)?.0, Reply::Error { .. }));
    // Garbage on a fresh connection does not disturb init.
    let bad = init.connect()?;
    nix::unistd::write(&bad, b"\x00garbage")?;
    let conn = init.connect()?;
    proto::send(conn.as_fd(), &Request::Hello, &[])?;
    assert!(matches!(recv(&conn)?.0, Reply::Hello { .. }));
    Ok(())
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn vanished_client_hangs_up_the_process_group_but_detached_survive() -> TestResult {
    let init = Init::start()?;
    let conn = init.connect()?;
    // The shell ignores SIGHUP, so only the SIGKILL after the grace period ends it; its child
    // `sleep` shares the group and must die too.
    let s = spec(&["sh", "-c", "trap '' HUP; sleep 100 & echo $! > /dev/null; wait"]);
    proto::send(conn.as_fd(), &Request::Exec { spec: s, fds: vec![] }, &[])?;
    let Reply::Started { pid, .. } = recv(&conn)?.0 else { return Err("not started".into()) };

    let detached = init.connect()?;
    let mut s = spec(&["sleep", "100"]);
    s.detach = true;
    proto::send(detached.as_fd(), &Request::Exec { spec: s, fds: vec![] }, &[])?;
    let Reply::Started { pid: detached_pid, .. } = recv(&detached)?.0 else { return Err("not started".into()) };

    drop(conn);
    drop(detached);
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "hung-up exec still running");
    assert!(alive(detached_pid), "detached exec was killed");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(detached_pid), nix::sys::signal::Signal::SIGKILL)?;
    Ok(())
}

#[test]
fn main_process_exit_ends_init_with_its_code() -> TestResult {
    let mut init = Init::start()?;
    let conn = init.connect()?;
    let mut s = spec(&["sh", "-c", "echo hello; read line; echo got $line; exit 7"]);
    s.stdin = true;
    s.stdout = true;
    s.stderr = true;
    proto::send(conn.as_fd(), &Request::StartMain { spec: s }, &[])?;
    let (reply, mut fds) = recv(&conn)?;
    assert!(
        matches!(reply, Reply::Started { ref fds, .. } if fds == &[FdRole::Pidfd, FdRole::Stdin, FdRole::Stdout, FdRole::Stderr]),
        "{reply:?}"
    );
    let _stderr = fds.pop();
    let stdout = fds.pop().ok_or("no stdout")?;
    let stdin = fds.pop().ok_or("no stdin")?;
    nix::unistd::write(&stdin, b"abc\n")?;
    drop(stdin);
    assert_eq!(recv(&conn)?.0, Reply::Exited { code: 7 });
    assert_eq!(read_all(stdout), "hello\ngot abc\n");
    let status = init.child.wait()?;
    assert_eq!(status.code(), Some(7));
    Ok(())
}

#[test]
fn hangup_request_kills_the_group_and_still_reports_exit() -> TestResult {
    let init = Init::start()?;
    let conn = init.connect()?;
    proto::send(conn.as_fd(), &Request::Exec { spec: spec(&["sleep", "100"]), fds: vec![] }, &[])?;
    let Reply::Started { .. } = recv(&conn)?.0 else { return Err("not started".into()) };
    proto::send(conn.as_fd(), &Request::Hangup, &[])?;
    // sleep dies of SIGHUP: 128 + 1.
    assert_eq!(recv(&conn)?.0, Reply::Exited { code: 129 });
    Ok(())
}

#[test]
fn processes_start_with_default_signal_dispositions_and_nothing_blocked() -> TestResult {
    // The test process ignores SIGPIPE (Rust does) and init blocks signals for its signalfd;
    // neither may leak into what init starts.
    let init = Init::start()?;
    let conn = init.connect()?;
    let (out_r, out_w) = nix::unistd::pipe()?;
    let mut s = spec(&["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]);
    s.stdout = true;
    proto::send(conn.as_fd(), &Request::Exec { spec: s, fds: vec![FdRole::Stdout] }, &[out_w.as_fd()])?;
    drop(out_w);
    assert!(matches!(recv(&conn)?.0, Reply::Started { .. }));
    assert_eq!(recv(&conn)?.0, Reply::Exited { code: 0 });
    assert_eq!(read_all(out_r), "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
    Ok(())
}
