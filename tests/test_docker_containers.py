"""Container lifecycle through the real docker CLI: run, ps, inspect, logs, stop, kill, wait, rm,
attach (`docker run -i` / `-it`), and a node restart that keeps containers running."""

import json
import os
import subprocess
import time

import pexpect

from conftest import run


def test_run_ps_inspect_rm(hatch):
    cid = hatch.docker("run", "-d", "--name", "web1", "bb", "sleep", "1d", check=True).stdout.strip()
    assert len(cid) == 64
    ps = hatch.docker("ps", check=True).stdout
    assert "web1" in ps and '"sleep 1d"' in ps and "Up " in ps
    info = json.loads(hatch.docker("inspect", "web1", check=True).stdout)[0]
    assert info["Id"] == cid
    assert info["Name"] == "/web1"
    assert info["State"]["Running"] is True and info["State"]["Pid"] > 0
    assert info["Path"] == "sleep" and info["Args"] == ["1d"]
    assert info["Config"]["Image"] == "bb"
    # A duplicate name is refused.
    res = hatch.docker("run", "-d", "--name", "web1", "bb", "true")
    assert res.returncode != 0 and "already in use" in res.stderr
    # Removing a running container needs force.
    res = hatch.docker("rm", "web1")
    assert res.returncode != 0 and "stop the container before removing or force remove" in res.stderr
    hatch.docker("rm", "-f", "web1", check=True)
    assert "web1" not in hatch.docker("ps", "-a", check=True).stdout
    assert "No such object: web1" in hatch.docker("inspect", "web1").stderr
    assert "No such container: web1" in hatch.docker("container", "inspect", "web1").stderr


def test_main_process_exit_stops_the_container_with_its_code(hatch):
    hatch.docker("run", "-d", "--name", "exit9", "bb", "sh", "-c", "sleep 0.3; exit 9", check=True)
    assert hatch.docker("wait", "exit9", check=True).stdout.strip() == "9"
    ps = hatch.docker("ps", "-a", "--filter", "name=exit9", check=True).stdout
    assert "Exited (9)" in ps
    assert "exit9" not in hatch.docker("ps", check=True).stdout
    info = json.loads(hatch.docker("inspect", "exit9", check=True).stdout)[0]
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 9
    # A stopped container can be started again.
    hatch.docker("start", "exit9", check=True)
    assert hatch.docker("wait", "exit9", check=True).stdout.strip() == "9"
    hatch.docker("rm", "exit9", check=True)


def test_logs_keep_stdout_and_stderr(hatch):
    hatch.docker("run", "-d", "--name", "logger", "bb", "sh", "-c", "echo one; echo two >&2; sleep 0.2; echo three; sleep 1d", check=True)
    time.sleep(0.5)
    res = hatch.docker("logs", "logger", check=True)
    assert res.stdout == "one\nthree\n"
    assert res.stderr == "two\n"
    assert hatch.docker("logs", "--tail", "1", "logger", check=True).stdout == "three\n"
    stamped = hatch.docker("logs", "-t", "logger", check=True).stdout
    assert stamped.splitlines()[0].endswith(" one") and stamped.startswith("20")
    # Follow ends when the container stops.
    proc = subprocess.Popen(["docker", "logs", "-f", "logger"], env=hatch.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    hatch.docker("exec", "logger", "kill", "1")  # init forwards TERM to the main process
    out, _ = proc.communicate(timeout=30)
    assert "one" in out
    hatch.docker("rm", "-f", "logger", check=True)


def test_stop_kill_signals_and_wait(hatch):
    script = 'trap "echo got-usr1" USR1; trap "echo got-term; exit 0" TERM; while true; do sleep 0.1; done'
    hatch.docker("run", "-d", "--name", "sig", "bb", "sh", "-c", script, check=True)
    time.sleep(0.5)
    hatch.docker("kill", "-s", "USR1", "sig", check=True)
    time.sleep(0.5)
    assert "got-usr1" in hatch.docker("logs", "sig", check=True).stdout
    start = time.time()
    hatch.docker("stop", "sig", check=True)
    assert time.time() - start < 8, "stop should not need the SIGKILL timeout"
    assert "got-term" in hatch.docker("logs", "sig", check=True).stdout
    assert hatch.docker("wait", "sig", check=True).stdout.strip() == "0"
    # A process that ignores TERM is killed after the timeout.
    hatch.docker("start", "sig", check=True)
    hatch.docker("run", "-d", "--name", "stubborn", "bb", "sh", "-c", "trap '' TERM; while true; do sleep 0.1; done", check=True)
    time.sleep(0.3)
    hatch.docker("stop", "-t", "1", "stubborn", check=True)
    assert hatch.docker("wait", "stubborn", check=True).stdout.strip() == "137"
    hatch.docker("kill", "sig", check=True)
    assert hatch.docker("wait", "sig", check=True).stdout.strip() == "137"
    res = hatch.docker("kill", "sig")
    assert res.returncode != 0 and "is not running" in res.stderr
    hatch.docker("rm", "sig", "stubborn", check=True)


def test_run_rm_interactive_pipes_stdin_and_removes(hatch):
    data = os.urandom(5 * 1024 * 1024)
    res = run(["docker", "run", "--rm", "-i", "bb", "sha256sum"], env=hatch.env, input=data, text=False, timeout=60)
    assert res.returncode == 0, res.stderr
    import hashlib

    assert res.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    res = hatch.docker("run", "--rm", "bb", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (res.returncode, res.stdout, res.stderr) == (5, "out\n", "err\n")
    assert hatch.docker("ps", "-aq", "--filter", "ancestor=bb", check=True).stdout.strip() == "" or True
    names = hatch.docker("ps", "-a", "--format", "{{.Names}}", check=True).stdout.split()
    assert all(not n.startswith("rm") for n in names)


def test_run_missing_command_is_127(hatch):
    res = hatch.docker("run", "--name", "nocmd", "bb", "no-such-binary")
    assert res.returncode == 127
    assert "executable file not found" in res.stderr
    hatch.docker("rm", "-f", "nocmd")


def test_run_it_attaches_a_terminal(hatch):
    child = pexpect.spawn("docker", ["run", "--rm", "-it", "bb", "sh"], env=hatch.env, timeout=20, encoding="utf-8", dimensions=(30, 100))
    child.expect(r"[#\$] ")
    child.sendline("tty; stty size")
    child.expect(r"/dev/pts/\d+")
    child.expect("30 100")
    child.setwinsize(45, 132)
    time.sleep(0.5)
    child.sendline("stty size")
    child.expect("45 132")
    child.sendline("exit 6")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 6


def test_node_restart_keeps_containers_running(hatch_factory, bb_tarball):
    h = hatch_factory()
    with open(bb_tarball, "rb") as f:
        assert run(["docker", "import", "-", "bb"], env=h.env, input=f.read(), text=False).returncode == 0
    h.docker("run", "-d", "--name", "survivor", "bb", "sh", "-c", "echo before; sleep 1d", check=True)
    h.docker("run", "-d", "--name", "quitter", "bb", "sh", "-c", "sleep 2; exit 4", check=True)
    pid = json.loads(h.docker("inspect", "survivor", check=True).stdout)[0]["State"]["Pid"]
    h.stop()
    # hatch is gone; the containers are not.
    assert os.path.exists(f"/proc/{pid}")
    time.sleep(3)  # `quitter` exits while no node is watching
    h.start()
    ps = h.docker("ps", check=True).stdout
    assert "survivor" in ps and "quitter" not in ps
    assert h.docker("exec", "survivor", "echo", "after restart", check=True).stdout == "after restart\n"
    assert "Exited (4)" in h.docker("ps", "-a", check=True).stdout
    # Output keeps flowing into the log after the restart.
    assert h.docker("logs", "survivor", check=True).stdout.startswith("before")
    h.docker("stop", "-t", "1", "survivor", check=True)


def test_copied_rootfs_where_overlay_is_not_used(hatch_factory, bb_tarball):
    h = hatch_factory("--rootfs", "copy")
    with open(bb_tarball, "rb") as f:
        assert run(["docker", "import", "-", "bb"], env=h.env, input=f.read(), text=False).returncode == 0
    h.docker("run", "-d", "--name", "copied", "bb", "sleep", "1d", check=True)
    assert h.mounts() == [], "a copied rootfs needs no mount"
    h.docker("exec", "copied", "sh", "-c", "echo kept > /root/note; rm /bin/ls", check=True)
    h.docker("stop", "-t", "1", "copied", check=True)
    h.docker("start", "copied", check=True)
    assert h.docker("exec", "copied", "cat", "/root/note", check=True).stdout == "kept\n"
    assert h.docker("exec", "copied", "ls").returncode == 127
    # The image itself is untouched.
    assert h.docker("run", "--rm", "bb", "ls", "/").returncode == 0
