"""docker-py 7.1 against hatch: the SDK's own negotiation (`GET /version`), containers, exec with
demultiplexed streams, streaming, exit codes, and a raw exec socket with manual half-close."""

import hashlib
import os
import socket

import docker
import pytest


@pytest.fixture(scope="module")
def client(hatch):
    c = docker.DockerClient(base_url=hatch.env["DOCKER_HOST"], version="auto")
    yield c
    c.close()


def test_version_and_ping(client):
    assert client.ping() is True
    v = client.version()
    assert v["ApiVersion"] == "1.50"
    assert client.api.api_version == "1.50"


def test_container_lifecycle(client):
    c = client.containers.run("bb", ["sh", "-c", "echo hello-py; sleep 1d"], detach=True, name="py1")
    try:
        c.reload()
        assert c.status == "running"
        assert c.name == "py1"
        assert any(x.id == c.id for x in client.containers.list())
        import time

        time.sleep(0.3)
        assert c.logs() == b"hello-py\n"
        c.stop(timeout=2)
        assert c.wait()["StatusCode"] in (143, 137)
        c.reload()
        assert c.status == "exited"
    finally:
        c.remove(force=True)
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("py1")


def test_run_returns_output_and_raises_on_failure(client):
    assert client.containers.run("bb", ["echo", "ran"], remove=True) == b"ran\n"
    with pytest.raises(docker.errors.ContainerError) as err:
        client.containers.run("bb", ["sh", "-c", "echo oops >&2; exit 3"], remove=True)
    assert err.value.exit_status == 3


def test_exec_run_demux_exit_codes_and_env(client, container):
    c = client.containers.get(container)
    res = c.exec_run(["sh", "-c", "echo out; echo err >&2; exit 4"], demux=True)
    assert res.exit_code == 4
    assert res.output == (b"out\n", b"err\n")
    res = c.exec_run("sh -c 'echo $A-$B; pwd; id -un'", environment={"A": "1", "B": "2"}, workdir="/tmp", user="alice")
    assert res.exit_code == 0
    assert res.output == b"1-2\n/tmp\nalice\n"
    assert c.exec_run(["no-such-cmd"]).exit_code == 127
    res = c.exec_run(["cat", "/proc/self/status"], privileged=True)
    capeff = next(l for l in res.output.decode().splitlines() if l.startswith("CapEff"))
    assert int(capeff.split()[1], 16) > 0x3FFFFFFF


def test_exec_run_stream(client, container):
    c = client.containers.get(container)
    res = c.exec_run(["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.1; done"], stream=True)
    assert b"".join(res.output) == b"line1\nline2\nline3\n"


def test_raw_exec_socket_with_half_close(client, container):
    api = client.api
    exec_id = api.exec_create(container, ["sha256sum"], stdin=True)["Id"]
    sock = api.exec_start(exec_id, socket=True)
    raw = sock._sock
    data = os.urandom(8 * 1024 * 1024)
    raw.sendall(data)
    # docker-py never half-closes; the caller must, as the protocol digest notes.
    raw.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        chunk = raw.recv(65536)
        if not chunk:
            break
        out += chunk
    raw.close()
    # stdcopy frame: 8-byte header then payload.
    assert out[0] == 1
    assert out[8:].split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert api.exec_inspect(exec_id)["ExitCode"] == 0


def test_images_api(client):
    tags = [t for image in client.images.list() for t in image.tags]
    assert "bb:latest" in tags
    image = client.images.get("bb")
    assert image.id.startswith("sha256:")
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get("does-not-exist")
