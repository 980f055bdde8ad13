"""kubectl 1.27–1.33, unmodified, against `hatch up`: discovery and Tables, pods made by kubectl and
by Docker, exec over SPDY and WebSocket with every stream, cp, authorization, the audit log, and
the failures that must come fast (dead node, stopped container). Also a second node joined over
mutual TLS (`hatch node`).

Every versioned binary gets its own HOME (kubectl caches discovery there). Protocols are checked
in the audit log: a WebSocket exec is a GET, an SPDY exec a POST.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import hashlib
from pathlib import Path

import http.client
import ssl
import urllib.parse

import pexpect
import pytest
import yaml

from conftest import HATCH, HATCH_INIT, run, short_tmpdir

KUBECTL_DIR = Path(os.path.realpath(shutil.which("kubectl") or "/usr/bin/kubectl")).parent
VERSIONS = ["1.27", "1.28", "1.29", "1.30", "1.31", "1.32", "1.33"]
WS_ENV = "KUBECTL_REMOTE_COMMAND_WEBSOCKETS"
BIG = 100 * 1024 * 1024


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Kubectl:
    """One kubectl version with its own HOME, talking to a hatch through its kubeconfig."""

    def __init__(self, hatch, version, home):
        self.hatch = hatch
        self.version = version
        self.minor = int(version.split(".")[1])
        self.binary = str(KUBECTL_DIR / f"kubectl.{version}")
        self.home = home

    def env(self, **extra):
        env = self.hatch.env
        env["HOME"] = str(self.home)
        env.pop(WS_ENV, None)
        env.update({k: v for k, v in extra.items() if v is not None})
        return env

    def __call__(self, *args, input=None, timeout=60, env=None, text=True, check=False):
        res = subprocess.run(
            [self.binary, *args], env=env or self.env(), input=input, capture_output=True, timeout=timeout, text=text
        )
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {self.version} {args} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def modes(self):
        """(label, env, expected exec method) for every transport this version can use."""
        if self.minor <= 28:
            return [("spdy", {}, "POST")]
        if self.minor == 29:
            return [("spdy", {}, "POST"), ("websocket", {WS_ENV: "true"}, "GET")]
        return [("websocket", {}, "GET"), ("spdy", {WS_ENV: "false"}, "POST")]

    def tag(self):
        return self.version.replace(".", "-")


def audit(hatch):
    path = hatch.data_dir / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def audit_for(hatch, marker, deadline=10):
    """Audit records of execs whose argv contains `marker`; waits for their end records."""
    end = time.time() + deadline
    while True:
        records = [r for r in audit(hatch) if any(marker in a for a in r.get("command", []))]
        starts = [r for r in records if r["stage"] == "start" and r["allowed"]]
        ends = [r for r in records if r["stage"] == "end"]
        if len(ends) >= len(starts) or time.time() > end:
            return records
        time.sleep(0.1)


def wait_for(what, predicate, timeout=30, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def kube(hatch):
    """The module's hatch, once its kubeconfig exists."""
    wait_for("kubeconfig", lambda: (hatch.data_dir / "kubeconfig").exists(), timeout=30)
    return hatch


@pytest.fixture(scope="module")
def admin(kube, tmp_path_factory):
    """The newest kubectl, for setting things up."""
    return Kubectl(kube, "1.33", tmp_path_factory.mktemp("home-admin"))


@pytest.fixture(scope="module", params=VERSIONS)
def kubectl(request, kube, tmp_path_factory):
    version = request.param
    binary = KUBECTL_DIR / f"kubectl.{version}"
    assert binary.exists(), f"{binary} missing"
    return Kubectl(kube, version, tmp_path_factory.mktemp(f"home-{version}"))


def pod_phase(k, name):
    return k("get", "pod", name, "-o", "jsonpath={.status.phase}").stdout


def running_containers(k, name):
    res = k("get", "pod", name, "-o", "json")
    if res.returncode != 0:
        return set()
    pod = json.loads(res.stdout)
    return {c["name"] for c in pod["status"].get("containerStatuses", []) if "running" in c["state"]}


@pytest.fixture(scope="module")
def box(admin):
    """A one-container pod made by kubectl run."""
    admin("run", "box", "--image=bb", "--", "sleep", "1d", check=True)
    admin("wait", "--for=condition=Ready", "pod/box", "--timeout=60s", check=True, timeout=90)
    return "box"


@pytest.fixture(scope="module")
def trio(admin):
    """Three containers: main and side sleep (side is the annotated default), done exits 3 at once."""
    overrides = {
        "spec": {
            "containers": [
                {"name": "main", "image": "bb", "args": ["sleep", "1d"], "env": [{"name": "WHO", "value": "main"}]},
                {"name": "side", "image": "bb", "args": ["sleep", "1d"], "env": [{"name": "WHO", "value": "side"}]},
                {"name": "done", "image": "bb", "command": ["sh", "-c", "exit 3"]},
            ]
        }
    }
    admin(
        "run",
        "trio",
        "--image=bb",
        "--annotations=kubectl.kubernetes.io/default-container=side",
        f"--overrides={json.dumps(overrides)}",
        check=True,
    )

    def settled():
        pod = json.loads(admin("get", "pod", "trio", "-o", "json", check=True).stdout)
        states = {c["name"]: c["state"] for c in pod["status"].get("containerStatuses", [])}
        return (
            "running" in states.get("main", {})
            and "running" in states.get("side", {})
            and "terminated" in states.get("done", {})
        )

    wait_for("pod trio to settle", settled, timeout=60)
    return "trio"


@pytest.fixture(scope="module")
def bigfile(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.bin"
    with open(path, "wb") as f:
        f.write(os.urandom(BIG))
    return path, sha256_file(path)


# ---- discovery, tables, objects ------------------------------------------------------------


def table_rows(output):
    lines = [l for l in output.splitlines() if l.strip()]
    return lines[0].split(), [l.split() for l in lines[1:]]


def test_get_pods_nodes_and_all_namespaces_print_tables(kubectl, box):
    header, rows = table_rows(kubectl("get", "pods", check=True).stdout)
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    row = next(r for r in rows if r[0] == "box")
    assert row[1:4] == ["1/1", "Running", "0"]

    header, rows = table_rows(kubectl("get", "pods", "-A", check=True).stdout)
    assert header == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert ["default", "box", "1/1", "Running", "0"] == next(r for r in rows if r[1] == "box")[:5]

    header, rows = table_rows(kubectl("get", "nodes", check=True).stdout)
    assert header == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert any(r[1] == "Ready" and r[2] == "control-plane" and r[4].startswith("v1.") for r in rows), rows

    header, _ = table_rows(kubectl("get", "pods", "-o", "wide", check=True).stdout)
    assert header[:7] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]


def test_get_pod_as_yaml_and_json(kubectl, box):
    pod = yaml.safe_load(kubectl("get", "pod", box, "-o", "yaml", check=True).stdout)
    assert (pod["kind"], pod["apiVersion"]) == ("Pod", "v1")
    assert pod["metadata"]["name"] == box and pod["metadata"]["namespace"] == "default"
    assert pod["metadata"]["uid"] and pod["metadata"]["resourceVersion"]
    assert pod["spec"]["containers"][0]["image"] == "bb"
    assert pod["spec"]["nodeName"]
    assert pod["status"]["phase"] == "Running"
    assert "running" in pod["status"]["containerStatuses"][0]["state"]
    missing = kubectl("get", "pod", "no-such-pod")
    assert missing.returncode == 1 and 'pods "no-such-pod" not found' in missing.stderr


def test_run_exec_and_delete_a_pod(kubectl, kube):
    name = f"run-{kubectl.tag()}"
    kubectl("run", name, "--image=bb", "--", "sleep", "1d", check=True)
    kubectl("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=60s", check=True, timeout=90)
    res = kubectl("exec", name, "--", "hostname", check=True)
    assert res.stdout.strip() == name
    containers = kube.docker("ps", "--format", "{{.Names}}", check=True).stdout.split()
    assert any(c.startswith(f"k8s_{name}_{name}_default_") for c in containers), containers

    started = time.time()
    res = kubectl("delete", "pod", name, timeout=60, check=True)
    assert f'pod "{name}" deleted' in res.stdout
    assert time.time() - started < 30
    # kubectl waited for the pod to go; the node has removed its container.
    assert kubectl("get", "pod", name).returncode == 1
    containers = kube.docker("ps", "-a", "--format", "{{.Names}}", check=True).stdout.split()
    assert not any(c.startswith(f"k8s_{name}_") for c in containers), containers


def test_a_docker_container_is_a_pod(kubectl, kube):
    name = f"dk-{kubectl.tag()}"
    kube.docker("run", "-d", "--name", name, "bb", "sleep", "1d", check=True)
    try:
        wait_for("mirror pod", lambda: pod_phase(kubectl, name) == "Running", timeout=20)
        pod = json.loads(kubectl("get", "pod", name, "-o", "json", check=True).stdout)
        assert pod["metadata"]["annotations"]["kubernetes.io/config.mirror"] == "docker"
        assert pod["spec"]["containers"][0]["name"] == name
        assert kubectl("exec", name, "--", "echo", "from-kubectl", check=True).stdout == "from-kubectl\n"
    finally:
        kube.docker("rm", "-f", name)
    wait_for("mirror pod to go", lambda: kubectl("get", "pod", name).returncode == 1, timeout=20)


# ---- exec ------------------------------------------------------------------------------------


def test_exec_streams_exit_codes_and_protocols(kubectl, kube, box):
    for label, extra, method in kubectl.modes():
        marker = f"io-{kubectl.tag()}-{label}"
        res = kubectl(
            "exec", "-i", box, "--", "sh", "-c", f"cat; echo {marker}-err >&2; exit 42",
            input="hello\nworld\n", env=kubectl.env(**extra),
        )
        assert res.returncode == 42, (label, res.stderr)
        assert res.stdout == "hello\nworld\n", label
        assert f"{marker}-err" in res.stderr and f"{marker}-err" not in res.stdout, label
        records = audit_for(kube, marker)
        starts = [r for r in records if r["stage"] == "start"]
        assert [r["method"] for r in starts] == [method], (label, starts)
        end = next(r for r in records if r["stage"] == "end")
        assert end["exitCode"] == 42 and end["bytesIn"] == 12 and end["user"] == "admin", end
        assert end["container"] == "box" and end["stdin"] is True and end["tty"] is False


def test_exec_stdin_eof_after_100_mib(kubectl, box, bigfile):
    path, digest = bigfile
    for label, extra, _ in kubectl.modes():
        with open(path, "rb") as f:
            res = subprocess.run(
                [kubectl.binary, "exec", "-i", box, "--", "sha256sum"],
                stdin=f, capture_output=True, env=kubectl.env(**extra), timeout=120,
            )
        assert res.returncode == 0, (label, res.stderr)
        assert res.stdout.decode().split()[0] == digest, label


def test_exec_container_flag_and_default_container_annotation(kubectl, trio):
    assert kubectl("exec", trio, "--", "sh", "-c", "echo $WHO", check=True).stdout == "side\n"
    assert kubectl("exec", trio, "-c", "main", "--", "sh", "-c", "echo $WHO", check=True).stdout == "main\n"
    bad = kubectl("exec", trio, "-c", "nope", "--", "true")
    assert bad.returncode != 0
    assert "nope" in bad.stderr and ("not valid for pod trio" in bad.stderr or "not found" in bad.stderr), bad.stderr


def test_exec_into_a_stopped_container_fails_fast(kubectl, trio):
    for label, extra, _ in kubectl.modes():
        started = time.time()
        res = kubectl("exec", trio, "-c", "done", "--", "true", env=kubectl.env(**extra), timeout=30)
        assert res.returncode != 0, label
        assert 'container "done" in pod "trio" is not running' in res.stderr, (label, res.stderr)
        assert time.time() - started < 5, label


def spawn_tty(kubectl, extra, pod, command="sh", rows=30, cols=100):
    child = pexpect.spawn(
        kubectl.binary, ["exec", "-it", pod, "--", command], env=kubectl.env(**extra),
        dimensions=(rows, cols), encoding="utf-8", timeout=20,
    )
    child.expect(r"# ")
    return child


def test_exec_tty_with_resize(kubectl, box):
    for label, extra, _ in kubectl.modes():
        child = spawn_tty(kubectl, extra, box)
        try:
            child.sendline("tty; stty size")
            child.expect(r"/dev/pts/\d+")
            child.expect(r"30 100")
            child.setwinsize(40, 120)  # SIGWINCH to kubectl, which sends a resize
            for attempt in range(20):
                child.sendline("stty size")
                if child.expect([r"40 120", r"30 100"]) == 0:
                    break
                time.sleep(0.25)
            else:
                raise AssertionError(f"{label}: the resize never arrived")
            child.sendline("exit 5")
            child.expect(pexpect.EOF)
        finally:
            child.close()
        assert child.exitstatus == 5, (label, child.before)


def test_exec_tty_through_script(kubectl, box):
    res = subprocess.run(
        ["script", "-qec", f"{kubectl.binary} exec -it {box} -- sh -c 'tty; echo $TERM'", "/dev/null"],
        env=kubectl.env(), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr
    assert "/dev/pts/" in res.stdout and "xterm" in res.stdout, res.stdout


def test_cp_both_ways(kubectl, box, bigfile, tmp_path):
    path, digest = bigfile
    remote = f"/tmp/cp-{kubectl.tag()}"
    kubectl("exec", box, "--", "mkdir", "-p", remote, check=True)
    try:
        kubectl("cp", str(path), f"{box}:{remote}/big.bin", check=True, timeout=180)
        res = kubectl("exec", box, "--", "sha256sum", f"{remote}/big.bin", check=True)
        assert res.stdout.split()[0] == digest
        back = tmp_path / "big.back"
        kubectl("cp", f"{box}:{remote}/big.bin", str(back), check=True, timeout=180)
        assert sha256_file(back) == digest

        tree = tmp_path / "tree"
        for rel, data in {
            "a.txt": b"alpha\n",
            "sub/b.bin": os.urandom(70000),
            "sub/deeper/c.txt": b"gamma" * 1000,
            "empty": b"",
        }.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes(data)
        kubectl("cp", str(tree), f"{box}:{remote}/tree", check=True, timeout=60)
        out = tmp_path / "tree.back"
        kubectl("cp", f"{box}:{remote}/tree", str(out), check=True, timeout=60)
        for f in tree.rglob("*"):
            if f.is_file():
                copy = out / f.relative_to(tree)
                assert copy.read_bytes() == f.read_bytes(), f
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == sorted(p.relative_to(tree) for p in tree.rglob("*"))
    finally:
        kubectl("exec", box, "--", "rm", "-rf", remote)


# ---- authentication, authorization, audit ---------------------------------------------------


@pytest.fixture(scope="module")
def view_token(kube):
    res = run([str(HATCH), "token", "create", "--role", "view", "--name", "viewer"], env=kube.env, check=True)
    return res.stdout.strip()


def test_view_token_reads_but_never_execs(kubectl, kube, box, view_token):
    assert kubectl("--token", view_token, "get", "pods", check=True).stdout
    for label, extra, method in kubectl.modes():
        marker = f"denied-{kubectl.tag()}-{label}"
        res = kubectl("--token", view_token, "exec", box, "--", "echo", marker, env=kubectl.env(**extra))
        assert res.returncode == 1, label
        assert "Forbidden" in res.stderr and 'cannot create resource "pods/exec"' in res.stderr, res.stderr
        records = audit_for(kube, marker)
        assert records and all(r["allowed"] is False and r["user"] == "viewer" for r in records), records
        # A WebSocket refusal makes kubectl retry over SPDY: both methods are refused.
        assert {r["method"] for r in records} == ({"GET", "POST"} if method == "GET" else {"POST"}), records
    deny = kubectl("--token", view_token, "delete", "pod", box)
    assert deny.returncode == 1 and "Forbidden" in deny.stderr


def test_missing_or_bad_credentials_get_401(kubectl, kube):
    bad = kubectl("--token", "not-a-token", "get", "pods")
    assert bad.returncode == 1 and "Unauthorized" in bad.stderr, bad.stderr
    bad = kubectl("--token", "not-a-token", "exec", "box", "--", "true")
    assert bad.returncode == 1 and "Unauthorized" in bad.stderr, bad.stderr
    # Without any credentials kubectl would prompt for a password; ask as a plain client does.
    for path in ["/api/v1/pods", "/api", "/api/v1/namespaces/default/pods/box/exec?command=id&stdout=true"]:
        r = https(kube, "GET", path)
        assert r.status_code == 401, (path, r.status_code)
        assert (r.json()["kind"], r.json()["reason"]) == ("Status", "Unauthorized")
    assert https(kube, "GET", "/version").json()["minor"] in [str(m) for m in range(27, 34)]


class Answer:
    def __init__(self, status, body):
        self.status_code, self.text = status, body.decode(errors="replace")

    def json(self):
        return json.loads(self.text)


def https(kube, method, path, headers=None, body=None, cert=None):
    """One request to the API server, trusting only the cluster CA (stdlib only)."""
    context = ssl.create_default_context(cafile=str(kube.data_dir / "pki" / "ca.crt"))
    if cert:
        context.load_cert_chain(*cert)
    url = urllib.parse.urlsplit(api_url(kube))
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=10)
    headers = dict(headers or {})
    if body is not None:
        body = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return Answer(resp.status, resp.read())
    finally:
        conn.close()


def api_url(kube):
    config = yaml.safe_load((kube.data_dir / "kubeconfig").read_text())
    return config["clusters"][0]["cluster"]["server"]


def test_exec_upgrades_are_refused_to_viewers_on_both_methods(kube, box, view_token):
    """Raw requests, as a browser or another client would send them."""
    path = f"/api/v1/namespaces/default/pods/{box}/exec?command=id&stdout=true"
    ws = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "v5.channel.k8s.io"}
    spdy = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": "v4.channel.k8s.io"}
    for method, headers in [("GET", ws), ("POST", spdy)]:
        r = https(kube, method, path, headers={**headers, "Authorization": f"Bearer {view_token}"})
        assert r.status_code == 403, (method, r.status_code, r.text)
        body = r.json()
        assert (body["kind"], body["apiVersion"], body["reason"], body["code"]) == ("Status", "v1", "Forbidden", 403)
        r = https(kube, method, path, headers=headers)
        assert r.status_code == 401 and r.json()["kind"] == "Status", (method, r.text)


def test_audit_log_is_json_lines_on_disk(kube):
    records = audit(kube)
    assert records, "no audit records"
    for r in records:
        assert r["stage"] in ("start", "end")
        for key in ("auditID", "user", "namespace", "pod", "container", "command", "tty", "allowed", "method"):
            assert key in r, (key, r)
    ends = [r for r in records if r["stage"] == "end" and r.get("exitCode") is not None]
    assert ends and all("bytesIn" in r and "bytesOut" in r and r["start"] and r["end"] for r in ends)
    assert oct((kube.data_dir / "audit.log").stat().st_mode & 0o777) == "0o600"


# ---- nodes -------------------------------------------------------------------------------


class GhostNode:
    """A node that joins with the join token and a CSR, reports one pod, and then goes silent."""

    def __init__(self, kube, tmp):
        self.kube, self.name = kube, "ghost"
        self.key, csr = tmp / "ghost.key", tmp / "ghost.csr"
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(self.key), "-out", str(csr), "-subj", f"/CN=node:{self.name}"], check=True)
        token = (kube.data_dir / "join-token").read_text().strip()
        r = https(kube, "POST", "/hatch/v1/nodes/join", headers={"Authorization": f"Bearer {token}"},
                  body={"name": self.name, "csr": csr.read_text(), "streamingAddress": "127.0.0.1:9"})
        assert r.status_code == 200, r.text
        self.cert = tmp / "ghost.crt"
        self.cert.write_text(r.json()["certificate"])

    def report(self):
        status = {
            "ready": True, "version": "test", "streamingAddress": "127.0.0.1:9",
            "pods": [{"namespace": "default", "name": "ghost-pod", "mirror": True,
                      "containers": [{"name": "ghost-pod", "image": "bb", "state": "running"}]}],
        }
        mtls = (str(self.cert), str(self.key))
        r = https(self.kube, "PUT", f"/hatch/v1/nodes/{self.name}/status", body=status, cert=mtls)
        assert r.status_code == 200, r.text
        # A node speaks only for itself.
        r = https(self.kube, "PUT", "/hatch/v1/nodes/other/status", body=status, cert=mtls)
        assert r.status_code == 403, r.text


def spawn_idle(admin, version, extra, pod, home):
    home.mkdir(exist_ok=True)
    return spawn_tty(Kubectl(admin.hatch, version, home), extra, pod)


def test_idle_sessions_survive_three_minutes_while_a_dead_node_fails_fast(admin, kube, box, tmp_path):
    """The slow test: idle interactive sessions over each protocol (pings answered; kubectl 1.29
    over WebSocket gives up after 16 s without pongs) stay usable after 3 minutes. While they
    idle, a node that stops reporting becomes NotReady after 40 s, and execs into its pods fail
    at once with the reason."""
    sessions = {
        "websocket-1.33": spawn_idle(admin, "1.33", {}, box, tmp_path / "h33"),
        "spdy-1.33": spawn_idle(admin, "1.33", {WS_ENV: "false"}, box, tmp_path / "h33"),
        "websocket-1.29": spawn_idle(admin, "1.29", {WS_ENV: "true"}, box, tmp_path / "h29"),
        "spdy-1.27": spawn_idle(admin, "1.27", {}, box, tmp_path / "h27"),
    }
    try:
        ghost = GhostNode(kube, tmp_path)
        ghost.report()
        assert pod_phase(admin, "ghost-pod") == "Running"
        silent_since = time.time()
        header, rows = table_rows(admin("get", "nodes", check=True).stdout)
        assert next(r for r in rows if r[0] == "ghost")[1] == "Ready"
        # Ready but unreachable: the node proxy says so, at once, in one line.
        started = time.time()
        res = run([str(HATCH), "image", "ls", "--node", "ghost"], env=kube.env, timeout=30)
        assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert 'error dialing node "ghost"' in res.stderr and "503" in res.stderr, res.stderr
        assert time.time() - started < 10

        wait_for("ghost NotReady", lambda: "NotReady" in admin("get", "node", "ghost").stdout, timeout=60, interval=1)
        assert time.time() - silent_since >= 39
        for version in ("1.27", "1.33"):
            k = Kubectl(kube, version, tmp_path / f"h{version[2:]}")
            started = time.time()
            res = k("exec", "ghost-pod", "--", "true", timeout=30)
            assert res.returncode != 0
            assert 'node "ghost" of pod "ghost-pod" is not ready' in res.stderr, res.stderr
            assert time.time() - started < 5, version
        # Images: the NotReady node is refused at once; without --node, only Ready nodes are asked.
        started = time.time()
        res = run([str(HATCH), "image", "ls", "--node", "ghost"], env=kube.env, timeout=30)
        assert res.returncode == 1 and 'node "ghost" is not ready' in res.stderr and "503" in res.stderr, res.stderr
        assert time.time() - started < 5
        res = run([str(HATCH), "image", "ls"], env=kube.env, timeout=30)
        assert res.returncode == 0 and "ghost" not in res.stdout and "bb" in res.stdout, res.stderr
        # Its pods can still be deleted, at once.
        admin("run", "orphan", "--image=bb", f"--overrides={json.dumps({'spec': {'nodeName': 'ghost'}})}", check=True)
        started = time.time()
        admin("delete", "pod", "orphan", check=True, timeout=20)
        assert time.time() - started < 5

        remaining = 185 - (time.time() - silent_since)
        if remaining > 0:
            time.sleep(remaining)
        for label, child in sessions.items():
            child.sendline(f"echo still-$((6*7))-{label}")
            child.expect(f"still-42-{label}")
            child.sendline("exit 0")
            child.expect(pexpect.EOF)
            child.close()
            assert child.exitstatus == 0, (label, child.before)
    finally:
        for child in sessions.values():
            if child.isalive():
                child.terminate(force=True)


class Worker:
    """A second node: `hatch node` joined to the module's server with its join token."""

    def __init__(self, kube):
        self.data_dir = short_tmpdir("hatch-node-") / "data"
        self.data_dir.mkdir(parents=True)
        self.log_path = self.data_dir.parent / "node.log"
        self.socket = self.data_dir / "docker.sock"
        env = dict(os.environ)
        env.setdefault("HATCH_LOG", "info,hatch_node::agent=debug")
        env["HATCH_INIT"] = str(HATCH_INIT)
        token = (kube.data_dir / "join-token").read_text().strip()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(HATCH), "node", "--server", api_url(kube), "--token", token, "--name", "worker",
                 "--data-dir", str(self.data_dir), "--streaming-listen", "127.0.0.1:0"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )

    def docker(self, *args, **kw):
        env = dict(os.environ, DOCKER_HOST=f"unix://{self.socket}")
        env.pop("DOCKER_CONTEXT", None)
        return run(["docker", *args], env=env, **kw)

    def log(self):
        return self.log_path.read_text(errors="replace")[-5000:]

    def teardown(self):
        if self.proc.poll() is None:
            ids = self.docker("ps", "-aq", timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, timeout=60)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        root = str(self.data_dir / "runc")
        listing = run(["runc", "--root", root, "list", "-q"])
        for cid in listing.stdout.split() if listing.returncode == 0 else []:
            run(["runc", "--root", root, "kill", "--all", cid, "KILL"])
            time.sleep(0.1)
            run(["runc", "--root", root, "delete", "--force", cid])
        with open("/proc/self/mountinfo") as f:
            mounts = [l.split()[4] for l in f if l.split()[4].startswith(str(self.data_dir))]
        for m in sorted(mounts, key=len, reverse=True):
            run(["umount", "-l", m])
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def test_a_joined_node_runs_pods_and_execs_over_mutual_tls(admin, kube, bb_tarball, bigfile, tmp_path):
    worker = Worker(kube)
    try:
        wait_for("worker ready", lambda: "Ready" in admin("get", "node", "worker").stdout.replace("NotReady", ""),
                 timeout=30)
        wait_for("worker docker socket", lambda: worker.socket.exists(), timeout=10)
        # The image goes to the worker through the server's node proxy, over mutual TLS.
        res = run([str(HATCH), "image", "import", "--node", "worker", "bb", str(bb_tarball)], env=kube.env, timeout=60)
        assert res.returncode == 0 and res.stdout.split()[3] == "worker", (res.stdout, res.stderr, worker.log())
        images = json.loads(run([str(HATCH), "image", "ls", "-o", "json"], env=kube.env, check=True).stdout)
        assert {i["node"] for i in images if "bb:latest" in i["repoTags"]} >= {"worker"}, images
        assert len({i["node"] for i in images}) == 2, images
        garbage = tmp_path / "garbage.tar"
        garbage.write_bytes(os.urandom(16 * 1024 * 1024))
        res = run([str(HATCH), "image", "import", "--node", "worker", "junk", str(garbage)], env=kube.env, timeout=60)
        assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert 'node "worker": not an importable root-filesystem tarball' in res.stderr and "400" in res.stderr
        overrides = json.dumps({"spec": {"nodeName": "worker"}})
        admin("run", "far", "--image=bb", f"--overrides={overrides}", "--", "sleep", "1d", check=True)
        admin("wait", "--for=condition=Ready", "pod/far", "--timeout=60s", check=True, timeout=90)
        pod = json.loads(admin("get", "pod", "far", "-o", "json", check=True).stdout)
        assert pod["spec"]["nodeName"] == "worker" and pod["status"]["hostIP"] == "127.0.0.1"

        path, digest = bigfile
        for label, extra, method in Kubectl(kube, "1.33", admin.home).modes():
            marker = f"far-{label}"
            res = admin("exec", "-i", "far", "--", "sh", "-c", f"cat >/dev/null; echo {marker}; exit 7",
                        input="x" * 1000, env=admin.env(**extra))
            assert (res.returncode, res.stdout) == (7, f"{marker}\n"), (label, res.stderr, worker.log())
            records = audit_for(kube, marker)
            assert [r["method"] for r in records if r["stage"] == "start"] == [method]
            end = next(r for r in records if r["stage"] == "end")
            assert (end["node"], end["exitCode"], end["bytesIn"]) == ("worker", 7, 1000), end
            with open(path, "rb") as f:
                res = subprocess.run([admin.binary, "exec", "-i", "far", "--", "sha256sum"], stdin=f,
                                     capture_output=True, env=admin.env(**extra), timeout=120)
            assert res.stdout.decode().split()[0] == digest, (label, res.stderr)

        small = tmp_path / "small.txt"
        small.write_text("over mutual tls\n")
        admin("cp", str(small), "far:/tmp/small.txt", check=True)
        assert admin("exec", "far", "--", "cat", "/tmp/small.txt", check=True).stdout == "over mutual tls\n"

        admin("delete", "pod", "far", check=True, timeout=60)
        assert not worker.docker("ps", "-aq").stdout.split(), "the worker removed the pod's container"
    finally:
        worker.teardown()
