"""The hatch client verbs through the real API server: exec (every flag, binary-safe streams, stdin
EOF, hatch's extensions), run/ps/rm/get, token create, and one-line errors for each way a
connection can go wrong."""

import hashlib
import json
import os
import re
import subprocess
import time

import pytest

from conftest import HATCH, run


def hatch_cli(hatch, *args, input=None, env=None, text=True, timeout=60):
    return run([str(HATCH), *args], env=env or hatch.env, input=input, text=text, timeout=timeout)


@pytest.fixture(scope="module")
def pod(hatch):
    """A pod created through the server (`hatch run`), removed afterwards."""
    res = hatch_cli(hatch, "run", "--name", "cli-pod", "bb", "--", "sleep", "1d")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "cli-pod"
    yield "cli-pod"
    hatch_cli(hatch, "rm", "-f", "cli-pod")


def test_exec_streams_and_exit_codes(hatch, pod):
    res = hatch_cli(hatch, "exec", pod, "--", "sh", "-c", "echo out; echo err >&2; exit 42")
    assert (res.returncode, res.stdout, res.stderr) == (42, "out\n", "err\n")
    res = hatch_cli(hatch, "exec", pod, "--", "no-such-command")
    assert res.returncode == 127 and "not found" in res.stderr
    assert hatch_cli(hatch, "exec", pod, "--", "sh", "-c", "kill -9 $$").returncode == 137


def test_exec_stdin_is_binary_safe_and_eof_reaches_the_process(hatch, pod):
    data = os.urandom(64 * 1024 * 1024)
    res = hatch_cli(hatch, "exec", "-i", pod, "--", "sha256sum", input=data, text=False, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    # Output is binary-safe too.
    res = hatch_cli(hatch, "exec", "-i", pod, "--", "cat", input=data[:4_000_000], text=False)
    assert res.stdout == data[:4_000_000]


def test_a_reader_that_goes_away_ends_the_exec_quietly(hatch, pod):
    """`hatch exec p -- cat big | head -c 10`: 141 like a program killed by SIGPIPE, nothing on
    stderr, and the remote process is hung up rather than left writing."""
    client = subprocess.Popen(
        [str(HATCH), "exec", pod, "--", "sh", "-c", "echo $$ > /tmp/reader-gone.pid; exec cat /dev/zero"],
        env=hatch.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert client.stdout.read(10) == b"\0" * 10
    client.stdout.close()
    assert client.wait(timeout=30) == 141
    assert client.stderr.read() == b""
    client.stderr.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        alive = hatch_cli(hatch, "exec", pod, "--", "sh", "-c", "kill -0 $(cat /tmp/reader-gone.pid) 2>/dev/null && echo alive")
        if alive.stdout.strip() != "alive":
            break
        time.sleep(0.2)
    else:
        pytest.fail("the remote cat kept running after its reader went away")


def test_hatch_extensions_user_env_workdir_privileged_detach(hatch, pod):
    res = hatch_cli(hatch, "exec", "-u", "alice", "-e", "A=1", "-e", "B=two", "-w", "/tmp", pod, "--", "sh", "-c", 'id -un; echo "$A $B"; pwd')
    assert res.stdout == "alice\n1 two\n/tmp\n", res.stderr
    caps = lambda *flags: int(  # noqa: E731
        re.search(r"CapEff:\s+(\w+)", hatch_cli(hatch, "exec", *flags, pod, "--", "cat", "/proc/self/status").stdout).group(1), 16
    )
    assert bin(caps()).count("1") == 14
    assert caps("--privileged") > caps()
    res = hatch_cli(hatch, "exec", "-u", "nobody-such", pod, "--", "id")
    assert res.returncode == 126 and "unable to find user nobody-such" in res.stderr
    start = time.time()
    res = hatch_cli(hatch, "exec", "-d", pod, "--", "sh", "-c", "sleep 2; echo detached > /tmp/d")
    assert res.returncode == 0 and time.time() - start < 2
    deadline = time.time() + 10
    while time.time() < deadline and hatch_cli(hatch, "exec", pod, "--", "cat", "/tmp/d").stdout != "detached\n":
        time.sleep(0.2)
    assert hatch_cli(hatch, "exec", pod, "--", "cat", "/tmp/d").stdout == "detached\n"


def test_exec_into_docker_made_container_and_multi_container_flag(hatch):
    hatch.docker("run", "-d", "--name", "cli-mirror", "bb", "sleep", "1d", check=True)
    deadline = time.time() + 15
    while time.time() < deadline:
        res = hatch_cli(hatch, "exec", "cli-mirror", "--", "hostname")
        if res.returncode == 0:
            break
        time.sleep(0.2)
    assert res.returncode == 0, res.stderr
    res = hatch_cli(hatch, "exec", "-c", "nope", "cli-mirror", "--", "true")
    assert res.returncode == 1 and "nope" in res.stderr
    hatch.docker("rm", "-f", "cli-mirror", check=True)


def rows(text):
    return [line.split() for line in text.strip().splitlines()]


def test_get_ps_and_json(hatch, pod):
    out = hatch_cli(hatch, "get", "pods").stdout
    assert rows(out)[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert any(r[0] == pod and r[2] == "Running" for r in rows(out)[1:])
    nodes = rows(hatch_cli(hatch, "get", "nodes").stdout)
    assert nodes[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"] and nodes[1][1] == "Ready"
    ps = rows(hatch_cli(hatch, "ps").stdout)
    assert ps[0][:2] == ["NAMESPACE", "NAME"]
    assert any(r[:2] == ["default", pod] for r in ps)
    listing = json.loads(hatch_cli(hatch, "get", "pods", "-o", "json").stdout)
    assert any(p["metadata"]["name"] == pod for p in listing["items"])
    res = hatch_cli(hatch, "get", "pods", "-o", "yamlish")
    assert res.returncode == 1 and "unknown output format" in res.stderr


def test_run_failures_and_rm(hatch):
    res = hatch_cli(hatch, "run", "--name", "cli-badimage", "no-such-image", "--", "true")
    assert res.returncode == 1
    assert "ErrImageNeverPull" in res.stderr and "no registry" in res.stderr
    assert hatch_cli(hatch, "rm", "-f", "cli-badimage").returncode == 0
    res = hatch_cli(hatch, "run", "-d", "-e", "GREETING=hi", "bb", "--", "sh", "-c", "echo $GREETING; sleep 1d")
    name = res.stdout.strip()
    assert res.returncode == 0 and name.startswith("bb-")
    res = hatch_cli(hatch, "rm", "nonexistent-pod")
    assert res.returncode == 1 and "not found" in res.stderr
    assert hatch_cli(hatch, "rm", name).returncode == 0


def test_token_create_gives_a_view_token_that_cannot_exec(hatch, pod, tmp_path):
    res = hatch_cli(hatch, "token", "create", "--role", "view", "--name", "auditor")
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip()
    kubeconfig = tmp_path / "view.kubeconfig"
    original = (hatch.data_dir / "kubeconfig").read_text()
    kubeconfig.write_text(re.sub(r"token: .*", f"token: {token}", original))
    env = dict(hatch.env, KUBECONFIG=str(kubeconfig))
    assert hatch_cli(hatch, "get", "pods", env=env).returncode == 0
    res = hatch_cli(hatch, "exec", pod, "--", "true", env=env)
    assert res.returncode == 1 and "forbidden" in res.stderr.lower()


def test_connection_problems_are_one_clear_line(hatch, pod, tmp_path):
    original = (hatch.data_dir / "kubeconfig").read_text()

    def with_config(text, *args):
        path = tmp_path / f"k{abs(hash(text))}"
        path.write_text(text)
        res = hatch_cli(hatch, *args, env=dict(hatch.env, KUBECONFIG=str(path)))
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        return lines[0]

    # Token rejected.
    line = with_config(re.sub(r"token: .*", "token: not-a-real-token", original), "exec", pod, "--", "true")
    assert "rejected the token" in line
    # Server down.
    line = with_config(re.sub(r"server: https://127\.0\.0\.1:\d+", "server: https://127.0.0.1:1", original), "ps")
    assert "cannot reach the hatch server" in line
    # Certificate mismatch: a CA that did not sign the server's certificate.
    ca = tmp_path / "other-ca"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{ca}.key",
         "-out", f"{ca}.crt", "-subj", "/CN=not-hatch", "-days", "1"],
        check=True, capture_output=True,
    )
    import base64

    other = base64.b64encode(open(f"{ca}.crt", "rb").read()).decode()
    line = with_config(re.sub(r"certificate-authority-data: .*", f"certificate-authority-data: {other}", original), "ps")
    assert "certificate mismatch" in line
    # Pod not found.
    res = hatch_cli(hatch, "exec", "no-such-pod", "--", "true")
    assert res.returncode == 1 and 'pods "no-such-pod" not found' in res.stderr
    # No kubeconfig at all.
    res = hatch_cli(hatch, "ps", env=dict(hatch.env, KUBECONFIG=str(tmp_path / "missing"), HOME=str(tmp_path)))
    assert res.returncode == 1 and "no kubeconfig" in res.stderr


def test_extensions_are_refused_before_a_server_that_would_ignore_them(hatch, tmp_path):
    """A Kubernetes API server ignores query parameters it does not know: `-u alice` sent there
    would run as the image's user. hatch exec asks /version first and refuses in one line; a plain
    exec goes straight to the upgrade. The server here answers like a Kubernetes API server
    (none runs on this machine), and records what it was asked."""
    import http.server
    import ssl
    import threading

    # A CA and a serving certificate for 127.0.0.1 signed by it, as a cluster has.
    ca_cert, ca_key = tmp_path / "ca.crt", tmp_path / "ca.key"
    cert, key, csr, ext = (tmp_path / n for n in ("k8s.crt", "k8s.key", "k8s.csr", "k8s.ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for cmd in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca_cert, "-subj", "/CN=kubernetes", "-days", "1"],
        ["req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=kube-apiserver"],
        ["x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "1",
         "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    seen = []

    class KubeApiServer(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            seen.append(self.path)
            if self.path == "/version":
                body, code = {"major": "1", "minor": "33", "gitVersion": "v1.33.1", "platform": "linux/amd64"}, 200
            else:
                name = self.path.split("/pods/")[-1].split("/")[0]
                body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                        "message": f'pods "{name}" not found', "code": 404}
                code = 404
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KubeApiServer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        import base64

        ca = base64.b64encode(ca_cert.read_bytes()).decode()
        config = tmp_path / "kubeconfig"
        config.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: k8s, cluster: {{server: "https://127.0.0.1:{server.server_address[1]}", certificate-authority-data: {ca}}}}}]
users: [{{name: u, user: {{token: t0ken}}}}]
contexts: [{{name: c, context: {{cluster: k8s, user: u}}}}]
current-context: c
""")
        env = dict(hatch.env, KUBECONFIG=str(config))
        res = hatch_cli(hatch, "exec", "-u", "alice", "-w", "/tmp", "web", "--", "id", env=env)
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert "is not a hatch server" in lines[0] and "-u/--user, -w/--workdir" in lines[0], lines[0]
        assert seen == ["/version"], seen  # refused before any exec request
        # Without extensions there is nothing to check: straight to the exec upgrade.
        seen.clear()
        res = hatch_cli(hatch, "exec", "web", "--", "id", env=env)
        assert res.returncode == 1 and 'pods "web" not found' in res.stderr, res.stderr
        assert len(seen) == 1 and seen[0].startswith("/api/v1/namespaces/default/pods/web/exec?"), seen
    finally:
        server.shutdown()
        server.server_close()
