"""Interactive sessions typed into each real client on a PTY: `hatch exec -it`, `kubectl exec -it`
(one SPDY and one WebSocket version) and `docker exec -it`. Each test runs the client from a
shell on a PTY, so it can check that the terminal's modes are exactly as before afterwards."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

from conftest import HATCH

KUBECTL_DIR = Path(os.path.realpath(shutil.which("kubectl") or "/usr/bin/kubectl")).parent
PROMPT = "HATCH-TEST-PROMPT> "


def clients(container):
    return {
        "hatch": [str(HATCH), "exec", "-it", container, "--", "sh"],
        "kubectl-1.27-spdy": [str(KUBECTL_DIR / "kubectl.1.27"), "exec", "-it", container, "--", "sh"],
        "kubectl-1.33-websocket": [str(KUBECTL_DIR / "kubectl.1.33"), "exec", "-it", container, "--", "sh"],
        "docker": ["docker", "exec", "-it", container, "sh"],
    }


@pytest.fixture
def local_shell(hatch, tmp_path):
    """A local bash on a PTY with the clients' environment; yields it and checks at the end that
    the terminal modes are what they were before the client ran."""
    env = dict(hatch.env, HOME=str(tmp_path), PS1=PROMPT, TERM="xterm")
    env.pop("PROMPT_COMMAND", None)
    shell = pexpect.spawn(
        "bash", ["--norc", "--noprofile"], env=env, encoding="utf-8", timeout=30, dimensions=(24, 80), cwd=str(tmp_path)
    )
    shell.expect_exact(PROMPT)
    shell.sendline("stty -g > modes.before")
    shell.expect_exact(PROMPT)
    yield shell
    if shell.isalive():
        shell.sendline("stty -g > modes.after; cmp -s modes.before modes.after && echo MODES-RESTORED")
        shell.expect("MODES-RESTORED")
        shell.close(force=True)


def wait_for_pod(hatch, name):
    """A container made through the Docker API shows up as a pod once the node has reported it."""
    from conftest import run

    deadline = time.time() + 15
    while time.time() < deadline:
        if run([str(HATCH), "exec", name, "--", "true"], env=hatch.env).returncode == 0:
            return
        time.sleep(0.2)
    pytest.fail(f"pod {name} never became reachable through the API server")


@pytest.mark.parametrize("client", ["hatch", "kubectl-1.27-spdy", "kubectl-1.33-websocket", "docker"])
def test_interactive_session(hatch, container, local_shell, client, tmp_path):
    wait_for_pod(hatch, container)
    sh = local_shell
    sh.sendline(" ".join(clients(container)[client]) + "; echo LOCAL-EXIT=$?")
    # The remote shell's prompt.
    sh.expect(r"[#\$] ")
    # Typed characters come back (remote echo), and the command runs.
    sh.sendline("echo typed-$((6*7))")
    sh.expect("echo typed-")
    sh.expect("typed-42")
    # The initial size, then a resize.
    sh.sendline("stty size")
    sh.expect(r"24 80")
    sh.setwinsize(40, 132)
    time.sleep(0.5)
    sh.sendline("stty size")
    sh.expect(r"40 132")
    # Ctrl-C interrupts the remote `sleep`, not the client.
    start = time.time()
    sh.sendline("sleep 100")
    time.sleep(0.5)
    sh.sendcontrol("c")
    sh.expect(r"[#\$] ")
    assert time.time() - start < 10
    sh.sendline("echo after-ctrl-c=$?")
    sh.expect("after-ctrl-c=130")
    # The remote exit code becomes the client's.
    sh.sendline("exit 3")
    sh.expect("LOCAL-EXIT=3")
    sh.expect_exact(PROMPT)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_hatch_exec_stopped_by_a_signal_restores_the_terminal(hatch, container, local_shell, sig, code):
    """SIGTERM or SIGINT sent to the client itself (not Ctrl-C typed, which goes to the remote
    process): 128+N locally, and the terminal's modes back as they were (checked by the fixture)."""
    wait_for_pod(hatch, container)
    sh = local_shell
    command = clients(container)["hatch"]
    sh.sendline(" ".join(command) + "; echo LOCAL-EXIT=$?")
    sh.expect(r"[#\$] ")
    found = subprocess.run(["pgrep", "-n", "-f", " ".join(command)], capture_output=True, text=True)
    assert found.returncode == 0, "hatch exec is not running"
    os.kill(int(found.stdout.split()[0]), sig)
    sh.expect(f"LOCAL-EXIT={code}")
    sh.expect_exact(PROMPT)


def test_tty_without_a_terminal_warns_and_still_runs(hatch, container):
    from conftest import run

    wait_for_pod(hatch, container)
    res = run([str(HATCH), "exec", "-t", container, "--", "echo", "no-tty"], env=hatch.env, input="")
    assert res.returncode == 0
    assert "Unable to use a TTY" in res.stderr
    assert res.stdout == "no-tty\n"
