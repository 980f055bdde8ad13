"""`docker exec` against hatch's Docker Engine API with the real docker CLI: every flag, exit
statuses, stdio separation, half-close, TTY, and what happens when the client vanishes."""

import hashlib
import json
import os
import re
import signal
import subprocess
import time

import pexpect
import pytest

from conftest import run

ALL_CAPS = None


def test_exec_runs_through_hatch_init_not_runc(hatch, container):
    res = hatch.docker("exec", container, "cat", "/proc/1/cmdline", check=True)
    assert res.stdout.split("\0")[0] == "/sbin/hatch-init"
    # The main process is init's child.
    ps = hatch.docker("exec", container, "ps", "-o", "pid,ppid,comm", check=True).stdout
    assert re.search(r"^\s*\d+\s+1\s+sleep", ps, re.M), ps


def test_exit_status_is_the_commands(hatch, container):
    assert hatch.docker("exec", container, "sh", "-c", "exit 42").returncode == 42
    res = hatch.docker("exec", container, "no-such-command")
    assert res.returncode == 127
    assert "executable file not found" in res.stdout + res.stderr
    res = hatch.docker("exec", container, "/etc/passwd")
    assert res.returncode == 126, res
    # Killed by a signal: 128 + N.
    assert hatch.docker("exec", container, "sh", "-c", "kill -9 $$").returncode == 137
    assert hatch.docker("exec", container, "sh", "-c", "kill -15 $$").returncode == 143


def test_stdout_and_stderr_stay_apart_without_tty(hatch, container):
    res = hatch.docker("exec", container, "sh", "-c", "echo out; echo err >&2; echo out2")
    assert res.stdout == "out\nout2\n"
    assert res.stderr == "err\n"


def test_user_environment_and_workdir(hatch, container):
    assert hatch.docker("exec", "-u", "alice", container, "id", check=True).stdout.strip() == (
        "uid=1000(alice) gid=1000(alice) groups=50(staff)"
    )
    out = hatch.docker(
        "exec", "-u", "alice:staff", "-w", "/tmp", "-e", "FOO=bar baz", container, "sh", "-c", 'id -u; id -g; pwd; echo "$FOO"; echo $HOME',
        check=True,
    ).stdout.split("\n")
    assert out[:5] == ["1000", "50", "/tmp", "bar baz", "/home/alice"]
    assert hatch.docker("exec", "-u", "4242:4343", container, "id", check=True).stdout.strip() == "uid=4242 gid=4343"
    res = hatch.docker("exec", "-u", "bob", container, "id")
    assert res.returncode == 126
    assert "unable to find user bob: no matching entries in passwd file" in res.stdout + res.stderr
    res = hatch.docker("exec", "-u", "alice:nogroupxyz", container, "id")
    assert res.returncode == 126
    assert "unable to find group nogroupxyz" in res.stdout + res.stderr
    res = hatch.docker("exec", "-w", "/does/not/exist", container, "true")
    assert res.returncode == 126


def cap_eff(hatch, container, *flags):
    out = hatch.docker("exec", *flags, container, "grep", "CapEff", "/proc/self/status", check=True).stdout
    return int(out.split()[1], 16)


def test_privileged_gives_all_capabilities_to_that_process_only(hatch, container):
    default = cap_eff(hatch, container)
    privileged = cap_eff(hatch, container, "--privileged")
    with open("/proc/self/status") as f:
        host = int(next(l for l in f if l.startswith("CapBnd")).split()[1], 16)
    assert bin(default).count("1") == 14, hex(default)
    assert privileged == host
    # The next process is back to the container's set.
    assert cap_eff(hatch, container) == default
    # A non-root user keeps no capabilities.
    assert cap_eff(hatch, container, "-u", "alice") == 0


def test_exec_into_a_missing_or_stopped_container(hatch):
    res = hatch.docker("exec", "nope-nope", "true")
    assert res.returncode == 1
    assert "No such container: nope-nope" in res.stderr
    hatch.docker("run", "-d", "--name", "stopped1", "bb", "true", check=True)
    assert hatch.docker("wait", "stopped1", check=True).stdout.strip() == "0"
    res = hatch.docker("exec", "stopped1", "true")
    assert res.returncode == 1
    assert "is not running" in res.stderr
    hatch.docker("rm", "stopped1", check=True)


def sha256_of(data):
    return hashlib.sha256(data).hexdigest()


def test_stdin_half_close_delivers_eof_and_keeps_output(hatch, container, tmp_path):
    data = os.urandom(200 * 1024 * 1024)
    res = run(["docker", "exec", "-i", container, "sha256sum"], env=hatch.env, input=data, text=False, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0].decode() == sha256_of(data)
    # And the other way: the container's file read back through stdout.
    res = run(["docker", "exec", "-i", container, "sh", "-c", "cat > /tmp/big"], env=hatch.env, input=data, text=False, timeout=120)
    assert res.returncode == 0
    res = run(["docker", "exec", container, "cat", "/tmp/big"], env=hatch.env, text=False, timeout=120)
    assert res.returncode == 0
    assert sha256_of(res.stdout) == sha256_of(data)
    hatch.docker("exec", container, "rm", "/tmp/big")


def test_short_lived_output_is_never_lost(hatch, container):
    for i in range(40):
        assert hatch.docker("exec", container, "echo", f"hi{i}", check=True).stdout == f"hi{i}\n"


def test_detached_exec_keeps_running_and_inspect_reports_it(hatch, container):
    res = hatch.docker("exec", "-d", container, "sh", "-c", "sleep 0.5; echo done > /tmp/detached")
    assert res.returncode == 0 and res.stdout == ""
    deadline = time.time() + 10
    while time.time() < deadline:
        if hatch.docker("exec", container, "cat", "/tmp/detached").stdout == "done\n":
            break
        time.sleep(0.2)
    else:
        pytest.fail("detached exec did not finish its work")


def test_exec_inspect_has_running_exit_code_and_pid(hatch, container):
    import docker

    client = docker.DockerClient(base_url=hatch.env["DOCKER_HOST"])
    api = client.api
    exec_id = api.exec_create(container, ["sh", "-c", "sleep 1; exit 5"])["Id"]
    api.exec_start(exec_id, detach=True)
    info = api.exec_inspect(exec_id)
    assert info["Running"] is True
    assert info["ExitCode"] is None
    assert info["Pid"] > 0
    assert os.path.exists(f"/proc/{info['Pid']}"), "Pid is a host pid"
    deadline = time.time() + 10
    while api.exec_inspect(exec_id)["Running"] and time.time() < deadline:
        time.sleep(0.1)
    info = api.exec_inspect(exec_id)
    assert info["Running"] is False and info["ExitCode"] == 5


def spawn_docker(hatch, args, rows=24, cols=80):
    child = pexpect.spawn("docker", args, env=hatch.env, timeout=20, encoding="utf-8", dimensions=(rows, cols))
    return child


def test_tty_is_a_real_pty_with_console_size_and_resize(hatch, container):
    child = spawn_docker(hatch, ["exec", "-it", container, "sh"], rows=33, cols=111)
    child.expect(r"[#\$] ")
    child.sendline("tty; stty size")
    child.expect(r"/dev/pts/\d+")
    child.expect("33 111")
    child.setwinsize(40, 120)
    time.sleep(0.5)
    child.sendline("stty size")
    child.expect("40 120")
    # The seed's listing: ptmx -> pts/ptmx, the std* links, null, zero, urandom, tty.
    child.sendline("ls -l /dev")
    child.expect(r"ptmx -> pts/ptmx")
    child.sendline("ls /dev | tr '\\n' ' '")
    child.expect(r"fd .*null .*pts .*stdin .*tty .*urandom .*zero")
    # stdout and stderr are one stream on a terminal.
    child.sendline("echo to-stderr >&2")
    child.expect("to-stderr")
    child.sendline("exit 3")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 3


def test_ctrl_c_reaches_the_remote_process(hatch, container):
    child = spawn_docker(hatch, ["exec", "-it", container, "sh"])
    child.expect(r"[#\$] ")
    start = time.time()
    child.sendline("sleep 100")
    time.sleep(0.5)
    child.sendcontrol("c")
    child.expect(r"[#\$] ")
    assert time.time() - start < 10
    child.sendline("echo status=$?")
    child.expect("status=130")
    child.sendline("exit")
    child.expect(pexpect.EOF)


def detach_through_raw_socket(hatch, container, keys, detach_keys=None):
    """Starts a TTY exec with docker-py's raw socket (which, unlike the docker CLI, passes the
    keys through), types `keys`, and returns (connection closed by the daemon?, pid)."""
    import docker

    api = docker.DockerClient(base_url=hatch.env["DOCKER_HOST"]).api
    kwargs = {"detach_keys": detach_keys} if detach_keys else {}
    exec_id = api.exec_create(
        container, ["sh", "-c", "echo $$ > /tmp/detach.pid; exec sleep 300"], tty=True, stdin=True, **kwargs
    )["Id"]
    sock = api.exec_start(exec_id, tty=True, socket=True)
    raw = sock._sock
    time.sleep(1)
    raw.sendall(keys)
    raw.settimeout(10)
    closed = False
    try:
        while raw.recv(4096):
            pass
        closed = True
    except OSError:
        pass
    raw.close()
    pid = hatch.docker("exec", container, "cat", "/tmp/detach.pid", check=True).stdout.strip()
    return closed, pid, api.exec_inspect(exec_id)


def test_detach_keys_leave_the_process_running(hatch, container):
    closed, pid, info = detach_through_raw_socket(hatch, container, b"\x10\x11")
    assert closed, "the daemon did not end the session on ctrl-p,ctrl-q"
    # The detached process outlives the hang-up grace period.
    time.sleep(5)
    assert hatch.docker("exec", container, "kill", "-0", pid).returncode == 0
    assert info["Running"] is True
    hatch.docker("exec", container, "kill", pid)

    closed, pid, _ = detach_through_raw_socket(hatch, container, b"\x01x", detach_keys="ctrl-a,x")
    assert closed
    time.sleep(1)
    assert hatch.docker("exec", container, "kill", "-0", pid).returncode == 0
    hatch.docker("exec", container, "kill", pid)


def test_docker_cli_detach_sequence_ends_the_client(hatch, container):
    # The docker CLI consumes ctrl-p,ctrl-q itself and just closes the socket, which hatch cannot
    # tell from a killed client: the CLI returns at once, and the exec is hung up (no orphans).
    child = spawn_docker(hatch, ["exec", "-it", container, "sh", "-c", "exec sleep 301"])
    time.sleep(1)
    child.sendcontrol("p")
    child.sendcontrol("q")
    child.expect("read escape sequence")
    child.expect(pexpect.EOF)
    deadline = time.time() + 15
    while time.time() < deadline and count_sleepers(hatch, container, "sleep 301") > 0:
        time.sleep(0.2)
    assert count_sleepers(hatch, container, "sleep 301") == 0


def count_sleepers(hatch, container, marker):
    ps = hatch.docker("exec", container, "ps", "-o", "args", check=True).stdout
    return sum(1 for line in ps.splitlines() if line.strip().startswith(marker))


def test_vanished_client_leaves_no_orphans(hatch, container):
    # A client killed mid-exec: the exec's process group is hung up, then killed.
    proc = subprocess.Popen(
        ["docker", "exec", container, "sh", "-c", "sleep 1001 & sleep 1002; wait"],
        env=hatch.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)
    assert count_sleepers(hatch, container, "sleep 100") == 2
    proc.kill()
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and count_sleepers(hatch, container, "sleep 100") > 0:
        time.sleep(0.2)
    assert count_sleepers(hatch, container, "sleep 100") == 0

    # The same with a TTY and an interactive shell.
    child = spawn_docker(hatch, ["exec", "-it", container, "sh", "-c", "sleep 1003"])
    time.sleep(1)
    child.kill(signal.SIGKILL)
    deadline = time.time() + 15
    while time.time() < deadline and count_sleepers(hatch, container, "sleep 1003") > 0:
        time.sleep(0.2)
    assert count_sleepers(hatch, container, "sleep 1003") == 0


def test_zombies_are_reaped(hatch, container):
    # Orphans re-parent to init, which must reap them.
    hatch.docker("exec", container, "sh", "-c", "for i in 1 2 3 4 5; do (sleep 0.1 &); done", check=True)
    time.sleep(1)
    ps = hatch.docker("exec", container, "ps", "-o", "stat,args", check=True).stdout
    assert not re.search(r"^\s*Z", ps, re.M), ps
