"""End-to-end fixtures: a real `hatch up` on a temporary data dir, a busybox-static image built at
test time, and the real clients (docker CLI, docker-py, kubectl) pointed at it.

Every hatch started here is torn down completely, even when a test fails: containers removed
through the API, then anything left in hatch's runc root killed and deleted, mounts under the data
dir unmounted, and the process stopped. `assert_nothing_left` checks it.
"""

import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROFILE = os.environ.get("HATCH_PROFILE", "debug")
# HATCH_TARGET_DIR: use binaries from another cargo target dir (default: ROOT/target).
TARGET = Path(os.environ.get("HATCH_TARGET_DIR", ROOT / "target"))
HATCH = TARGET / PROFILE / "hatch"
HATCH_INIT = TARGET / "x86_64-unknown-linux-gnu" / PROFILE / "hatch-init"
BUSYBOX = Path("/bin/busybox")


def run(cmd, env=None, input=None, timeout=60, check=False, text=True, **kw):
    """Runs a command and returns the CompletedProcess (stdout/stderr captured)."""
    res = subprocess.run(cmd, env=env, input=input, capture_output=True, timeout=timeout, text=text, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} exited {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}")
    return res


def build_busybox_rootfs(dest: Path) -> Path:
    """A minimal root filesystem: static busybox with its applets, users and groups for -u tests."""
    assert BUSYBOX.exists(), "busybox-static is required (apt-get install busybox-static)"
    for d in ["bin", "etc", "tmp", "root", "home/alice", "var/log"]:
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (dest / "bin" / applet).symlink_to("busybox")
    (dest / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/:/bin/false\n"
    )
    (dest / "etc" / "group").write_text("root:x:0:\nalice:x:1000:\nstaff:x:50:alice\nnogroup:x:65534:\n")
    os.chmod(dest / "tmp", 0o1777)
    os.chown(dest / "home" / "alice", 1000, 1000)
    return dest


@pytest.fixture(scope="session")
def bb_rootfs(tmp_path_factory):
    return build_busybox_rootfs(tmp_path_factory.mktemp("bbroot"))


@pytest.fixture(scope="session")
def bb_tarball(bb_rootfs, tmp_path_factory):
    """The rootfs as a plain tar, as `docker import` takes it."""
    path = tmp_path_factory.mktemp("bbtar") / "bb.tar"
    with tarfile.open(path, "w") as tar:
        for entry in sorted(bb_rootfs.iterdir()):
            tar.add(entry, arcname=entry.name)
    return path


class Hatch:
    """A running `hatch up` and the environment its clients need."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.docker_socket = data_dir / "docker.sock"
        self.proc = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def env(self):
        env = dict(os.environ)
        env["DOCKER_HOST"] = f"unix://{self.docker_socket}"
        env.pop("DOCKER_CONTEXT", None)
        kubeconfig = self.data_dir / "kubeconfig"
        if kubeconfig.exists():
            env["KUBECONFIG"] = str(kubeconfig)
        return env

    def start(self, extra_args=()):
        assert HATCH.exists(), f"{HATCH} missing: run scripts/build --debug first"
        log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("HATCH_LOG", "info,hatch_node=debug")
        env["HATCH_INIT"] = str(HATCH_INIT)
        self.proc = subprocess.Popen(
            [str(HATCH), "up", "--data-dir", str(self.data_dir), *extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hatch up exited {self.proc.returncode}:\n{self.log()}")
            if self.docker_socket.exists() and run(["docker", "version"], env=self.env, timeout=10).returncode == 0:
                return self
            time.sleep(0.1)
        raise AssertionError(f"hatch up not ready after 30s:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM):
        """Stops the hatch process only; containers keep running (as after a crash or restart)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def docker(self, *args, input=None, timeout=60, check=False, text=True):
        return run(["docker", *args], env=self.env, input=input, timeout=timeout, check=check, text=text)

    def runc_containers(self):
        root = self.data_dir / "runc"
        if not root.exists():
            return []
        res = run(["runc", "--root", str(root), "list", "--format", "json"])
        if res.returncode != 0 or not res.stdout.strip() or res.stdout.strip() == "null":
            return []
        return json.loads(res.stdout)

    def mounts(self):
        prefix = str(self.data_dir)
        with open("/proc/self/mountinfo") as f:
            return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]

    def teardown(self):
        """Removes everything this hatch made, whatever state it is in."""
        if self.proc and self.proc.poll() is None:
            res = self.docker("ps", "-aq", timeout=30)
            ids = res.stdout.split() if res.returncode == 0 else []
            if ids:
                self.docker("rm", "-f", *ids, timeout=60)
        self.stop()
        for c in self.runc_containers():
            run(["runc", "--root", str(self.data_dir / "runc"), "kill", "--all", c["id"], "KILL"])
            time.sleep(0.1)
            run(["runc", "--root", str(self.data_dir / "runc"), "delete", "--force", c["id"]])
        for mnt in sorted(self.mounts(), key=len, reverse=True):
            run(["umount", "-l", mnt])

    def assert_nothing_left(self):
        assert self.runc_containers() == [], "runc containers left behind"
        assert self.mounts() == [], "mounts left behind"
        leftover = run(["pgrep", "-f", f"--data-dir {self.data_dir}"]).stdout.split()
        assert leftover == [], f"hatch processes left behind: {leftover}"


def short_tmpdir(prefix):
    """Unix socket paths must stay short: keep data dirs directly under /tmp."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture
def hatch_factory():
    """Starts as many hatch instances as a test needs; all are torn down afterwards."""
    started = []

    def make(*extra_args):
        h = Hatch(short_tmpdir("hatch-") / "data")
        h.data_dir.mkdir(parents=True)
        started.append(h)
        return h.start(extra_args)

    yield make
    for h in started:
        h.teardown()
    for h in started:
        h.assert_nothing_left()
        shutil.rmtree(h.data_dir.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def hatch(bb_tarball):
    """One hatch per test module, with the busybox image imported as `bb`."""
    h = Hatch(short_tmpdir("hatch-") / "data")
    h.data_dir.mkdir(parents=True)
    try:
        h.start()
        with open(bb_tarball, "rb") as f:
            res = run(["docker", "import", "-", "bb"], env=h.env, input=f.read(), text=False, timeout=60)
        assert res.returncode == 0, res.stderr
        yield h
    finally:
        h.teardown()
    h.assert_nothing_left()
    shutil.rmtree(h.data_dir.parent, ignore_errors=True)


@pytest.fixture
def container(hatch, request):
    """A running `bb` container (`sleep 1d`) removed after the test."""
    name = f"c-{request.node.name[:40]}".replace("[", "-").replace("]", "").replace("/", "-")
    res = hatch.docker("run", "-d", "--name", name, "bb", "sleep", "1d")
    assert res.returncode == 0, res.stderr
    yield name
    hatch.docker("rm", "-f", name)
