"""The Docker Engine API on the wire: version prefixes, ping, Docker-shaped errors, and hostile
input (malformed, oversized, garbage, half-sent requests) that must get an error and disturb
nothing else."""

import json
import socket
import time


def request(hatch, raw: bytes, read_timeout=5.0) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(hatch.docker_socket))
    s.settimeout(read_timeout)
    try:
        s.sendall(raw)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may stop reading a request it refuses; its answer can still be read
    chunks = []
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return b"".join(chunks)


def http(hatch, method, path, body=b"", headers=None):
    head = f"{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    raw = request(hatch, head.encode() + b"\r\n" + body)
    status_line, _, rest = raw.partition(b"\r\n")
    headers_raw, _, payload = rest.partition(b"\r\n\r\n")
    status = int(status_line.split()[1]) if status_line.startswith(b"HTTP/1.1") else 0
    hdrs = {}
    for line in headers_raw.split(b"\r\n"):
        if b":" in line:
            k, v = line.split(b":", 1)
            hdrs[k.decode().strip().lower()] = v.decode().strip()
    if hdrs.get("transfer-encoding") == "chunked":
        out, rest = b"", payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16) if size_line.strip() else 0
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        payload = out
    return status, hdrs, payload


def assert_still_serving(hatch):
    status, _, body = http(hatch, "GET", "/_ping")
    assert (status, body) == (200, b"OK")


def test_ping_head_and_get(hatch):
    status, headers, body = http(hatch, "GET", "/_ping")
    assert status == 200 and body == b"OK"
    assert headers["api-version"] == "1.50" and headers["ostype"] == "linux"
    status, headers, body = http(hatch, "HEAD", "/_ping")
    assert status == 200 and headers["api-version"] == "1.50" and body == b""


def test_every_supported_version_prefix(hatch):
    for minor in range(24, 51):
        status, _, body = http(hatch, "GET", f"/v1.{minor}/version")
        assert status == 200, (minor, body)
        assert json.loads(body)["ApiVersion"] == "1.50"
    status, _, body = http(hatch, "GET", "/v1.60/version")
    assert status == 400 and b"too new" in body
    status, _, body = http(hatch, "GET", "/v1.12/version")
    assert status == 400 and b"too old" in body
    status, _, body = http(hatch, "GET", "/v1.41/info")
    assert status == 200 and json.loads(body)["OSType"] == "linux"


def test_old_client_versions_work_end_to_end(hatch, container):
    env = dict(hatch.env, DOCKER_API_VERSION="1.24")
    from conftest import run

    res = run(["docker", "exec", container, "echo", "v1.24"], env=env)
    assert (res.returncode, res.stdout) == (0, "v1.24\n"), res.stderr


def test_errors_are_docker_shaped(hatch, container):
    status, _, body = http(hatch, "GET", "/v1.50/containers/nope/json")
    assert status == 404 and json.loads(body) == {"message": "No such container: nope"}
    status, _, body = http(hatch, "POST", "/v1.50/exec/nope/start", b"{}", {"Content-Type": "application/json"})
    assert status == 404 and "No such exec instance" in json.loads(body)["message"]
    status, _, body = http(hatch, "GET", "/v1.50/no/such/route")
    assert status == 404 and "message" in json.loads(body)
    # Exec into a stopped container: 409.
    hatch.docker("run", "-d", "--name", "api-stopped", "bb", "true", check=True)
    hatch.docker("wait", "api-stopped", check=True)
    body = json.dumps({"Cmd": ["true"]}).encode()
    status, _, payload = http(hatch, "POST", "/v1.50/containers/api-stopped/exec", body, {"Content-Type": "application/json"})
    assert status == 409 and "is not running" in json.loads(payload)["message"]
    hatch.docker("rm", "api-stopped", check=True)
    # An empty command: 400.
    body = json.dumps({"Cmd": []}).encode()
    status, _, payload = http(hatch, "POST", f"/v1.50/containers/{container}/exec", body, {"Content-Type": "application/json"})
    assert status == 400 and "No exec command specified" in json.loads(payload)["message"]


def test_malformed_and_oversized_bodies(hatch, container):
    status, _, body = http(hatch, "POST", "/v1.50/containers/create", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and "malformed JSON" in json.loads(body)["message"]
    status, _, body = http(hatch, "POST", "/v1.50/containers/create", b'{"Image": 7}', {"Content-Type": "application/json"})
    assert status == 400
    huge = b'{"Image":"bb","Env":["' + b"x" * (6 << 20) + b'"]}'
    status, _, body = http(hatch, "POST", "/v1.50/containers/create", huge, {"Content-Type": "application/json"})
    assert status == 400
    assert_still_serving(hatch)


def test_garbage_oversized_headers_and_vanishing_clients(hatch, container):
    # Garbage instead of HTTP.
    reply = request(hatch, b"\x00\x01\x02 this is not http\r\n\r\n")
    assert not reply.startswith(b"HTTP/1.1 2")
    # A header block far beyond the limit.
    reply = request(hatch, b"GET /_ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (256 * 1024) + b"\r\n\r\n")
    assert not reply.startswith(b"HTTP/1.1 2")
    # Clients that send half a request and disappear.
    for partial in [b"GET /_pi", b"POST /v1.50/containers/create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"Ima"]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(hatch.docker_socket))
        s.sendall(partial)
        s.close()
    # A hijacked exec whose client vanishes right after the upgrade.
    body = json.dumps({"AttachStdout": True, "Cmd": ["sleep", "1004"]}).encode()
    status, _, payload = http(hatch, "POST", f"/v1.50/containers/{container}/exec", body, {"Content-Type": "application/json"})
    exec_id = json.loads(payload)["Id"]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(hatch.docker_socket))
    start = b'{"Detach":false,"Tty":false}'
    s.sendall(
        f"POST /v1.50/exec/{exec_id}/start HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(start)}\r\n\r\n".encode()
        + start
    )
    assert s.recv(4096).startswith(b"HTTP/1.1 101")
    s.close()
    deadline = time.time() + 15
    while time.time() < deadline:
        status, _, payload = http(hatch, "GET", f"/v1.50/exec/{exec_id}/json")
        if not json.loads(payload)["Running"]:
            break
        time.sleep(0.2)
    assert json.loads(payload)["Running"] is False
    assert_still_serving(hatch)
    assert hatch.docker("exec", container, "echo", "fine", check=True).stdout == "fine\n"


def test_socket_is_root_only(hatch):
    import os
    import stat

    mode = os.stat(hatch.docker_socket).st_mode
    assert stat.S_IMODE(mode) == 0o660
    assert os.stat(hatch.docker_socket).st_uid == 0
