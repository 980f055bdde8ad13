"""Images through the docker CLI: import, load, save, images, rmi; archives that try to escape the
store are refused; a `docker save` archive made by a real dockerd loads and runs."""

import http.client
import io
import json
import os
import re
import ssl
import tarfile
import time
from pathlib import Path

import pytest

from conftest import HATCH, run

DOCKERD_SOCKET = "/var/run/docker.sock"


def test_images_lists_imported_image(hatch):
    out = hatch.docker("images", check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("bb "))
    assert "latest" in line
    size = json.loads(hatch.docker("image", "inspect", "bb", check=True).stdout)[0]["Size"]
    assert size > 1_000_000  # busybox itself


def test_save_load_round_trip_and_rmi(hatch, tmp_path):
    hatch.docker("tag", "bb", "bbcopy:v1", check=True)
    archive = tmp_path / "bbcopy.tar"
    hatch.docker("save", "-o", str(archive), "bbcopy:v1", check=True)
    with tarfile.open(archive) as t:
        names = t.getnames()
    assert "manifest.json" in names
    out = hatch.docker("rmi", "bbcopy:v1", check=True).stdout
    assert "Untagged: bbcopy:v1" in out and "Deleted" not in out  # bb still tags the image
    out = hatch.docker("load", "-i", str(archive), check=True).stdout
    assert "Loaded image: bbcopy:v1" in out
    assert hatch.docker("run", "--rm", "bbcopy:v1", "echo", "loaded", check=True).stdout == "loaded\n"
    hatch.docker("rmi", "bbcopy:v1", check=True)


def test_rmi_of_an_image_in_use_is_a_conflict(hatch, bb_tarball):
    with open(bb_tarball, "rb") as f:
        run(["docker", "import", "-", "inuse"], env=hatch.env, input=f.read(), text=False, check=True)
    hatch.docker("run", "-d", "--name", "user-of-inuse", "inuse", "sleep", "1d", check=True)
    res = hatch.docker("rmi", "inuse")
    assert res.returncode != 0 and "being used by container" in res.stderr
    hatch.docker("rm", "-f", "user-of-inuse", check=True)
    out = hatch.docker("rmi", "inuse", check=True).stdout
    assert "Deleted: sha256:" in out
    assert "No such image" in hatch.docker("image", "inspect", "inuse").stderr


def test_pull_is_refused_with_a_hint(hatch):
    res = hatch.docker("run", "--rm", "nosuchimage:1.0", "true")
    assert res.returncode != 0
    assert "no registry" in res.stderr


def tarball(entries):
    """Builds a tar in memory from (TarInfo, data) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name, kind=tarfile.REGTYPE, data=b"", linkname="", devmajor=0):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = devmajor, 1
    return info, (data if kind == tarfile.REGTYPE else None)


ESCAPES = {
    "dotdot": [member("../../../escaped-dotdot", data=b"x")],
    "write_through_symlink": [
        member("link", tarfile.SYMTYPE, linkname="CANARY_DIR"),
        member("link/escaped-symlink", data=b"x"),
    ],
    "climbing_symlink": [member("up", tarfile.SYMTYPE, linkname="../../../../../../CANARY_DIR")],
    "hardlink_out": [member("hl", tarfile.LNKTYPE, linkname="../../../../../../etc/passwd")],
    "device_node": [member("dev/sda", tarfile.BLKTYPE, devmajor=8)],
    "char_device": [member("kmem", tarfile.CHRTYPE, devmajor=1)],
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_escaping_tarballs_are_refused_and_nothing_is_written(hatch, case, tmp_path):
    canary_dir = tmp_path / "canary"
    canary_dir.mkdir()
    entries = []
    for info, data in ESCAPES[case]:
        info.linkname = info.linkname.replace("CANARY_DIR", str(canary_dir))
        entries.append((info, data))
    before = set(os.listdir(hatch.data_dir / "images" / "rootfs"))
    res = run(["docker", "import", "-", f"evil-{case}"], env=hatch.env, input=tarball(entries), text=False)
    assert res.returncode != 0
    message = res.stderr.decode()
    assert "refusing" in message or "unsafe" in message, message
    assert os.listdir(canary_dir) == []
    assert not Path("/escaped-dotdot").exists()
    assert set(os.listdir(hatch.data_dir / "images" / "rootfs")) == before
    assert os.listdir(hatch.data_dir / "images" / "tmp") == []
    assert "evil" not in hatch.docker("images", check=True).stdout


def test_absolute_symlinks_inside_an_image_are_fine(hatch):
    data = tarball([member("bin", tarfile.DIRTYPE), member("bin/sh-link", tarfile.SYMTYPE, linkname="/bin/busybox")])
    res = run(["docker", "import", "-", "abs-links"], env=hatch.env, input=data, text=False)
    assert res.returncode == 0, res.stderr
    hatch.docker("rmi", "abs-links", check=True)


def hatch_cli(hatch, *args, env=None, **kw):
    """`hatch` with the kubeconfig only: no Docker socket to fall back on."""
    env = dict(env or hatch.env, DOCKER_HOST="unix:///nonexistent/docker.sock")
    return run([str(HATCH), *args], env=env, **kw)


def wait_for_kubeconfig(hatch):
    deadline = time.time() + 30
    while not (hatch.data_dir / "kubeconfig").exists():
        assert time.time() < deadline, "no kubeconfig after 30 s"
        time.sleep(0.1)


def node_name(hatch):
    res = hatch_cli(hatch, "get", "nodes", "-o", "json", check=True)
    return json.loads(res.stdout)["items"][0]["metadata"]["name"]


def one_line_error(res):
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_hatch_image_import_through_the_server_tarball_and_directory(hatch, bb_tarball, bb_rootfs):
    wait_for_kubeconfig(hatch)
    node = node_name(hatch)
    # Without --node: every Ready node (here the one), one line each.
    res = hatch_cli(hatch, "image", "import", "fromtar", str(bb_tarball))
    assert res.returncode == 0, res.stderr
    out = [line.split() for line in res.stdout.strip().splitlines()]
    assert out[0] == ["NODE", "IMAGE", "ID"] and out[1][0] == node and out[1][1].startswith("sha256:"), res.stdout
    res = hatch_cli(hatch, "image", "import", "--node", node, "fromdir:v2", str(bb_rootfs))
    assert res.returncode == 0, res.stderr

    listing = hatch_cli(hatch, "image", "ls", check=True).stdout
    rows = [line.split() for line in listing.strip().splitlines()]
    assert rows[0] == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE", "NODE"]
    assert any(r[:2] == ["fromtar", "latest"] and r[-1] == node for r in rows[1:]), listing
    assert any(r[:2] == ["fromdir", "v2"] and r[-1] == node for r in rows[1:]), listing
    images = json.loads(hatch_cli(hatch, "image", "ls", "--node", node, "-o", "json", check=True).stdout)
    fromdir = next(i for i in images if "fromdir:v2" in i["repoTags"])
    assert fromdir["node"] == node and fromdir["id"].startswith("sha256:") and fromdir["size"] > 1_000_000
    assert isinstance(fromdir["created"], int)

    # A pod from the imported image, and an exec into it, all through the server.
    res = hatch_cli(hatch, "run", "--name", "from-imported", "fromdir:v2", "--", "sleep", "1d")
    assert res.returncode == 0, res.stderr
    try:
        res = hatch_cli(hatch, "exec", "from-imported", "--", "head", "-n1", "/etc/passwd")
        assert (res.returncode, res.stdout) == (0, "root:x:0:0:root:/root:/bin/sh\n"), res.stderr
    finally:
        hatch_cli(hatch, "rm", "-f", "from-imported")
    deadline = time.time() + 30
    while hatch.docker("ps", "-aq", "--filter", "ancestor=fromdir:v2").stdout.strip() and time.time() < deadline:
        time.sleep(0.2)
    hatch.docker("rmi", "fromtar", "fromdir:v2", check=True)


def test_hatch_image_errors_are_one_clear_line(hatch, bb_tarball, tmp_path):
    wait_for_kubeconfig(hatch)
    line = one_line_error(hatch_cli(hatch, "image", "import", "broken", "/nonexistent/path"))
    assert "/nonexistent/path" in line
    line = one_line_error(hatch_cli(hatch, "image", "import", "--node", "nope", "x", str(bb_tarball)))
    assert 'node "nope" not found' in line and "hatch get nodes" in line
    line = one_line_error(hatch_cli(hatch, "image", "ls", "--node", "nope"))
    assert 'node "nope" not found' in line

    garbage = tmp_path / "garbage.tar"
    # Large enough to be still uploading when the node refuses it: the refusal must arrive.
    garbage.write_bytes(os.urandom(48 * 1024 * 1024))
    line = one_line_error(hatch_cli(hatch, "image", "import", "garbage", str(garbage)))
    assert "400" in line and "<binary data>" in line, line
    escaping = tmp_path / "escaping.tar"
    escaping.write_bytes(tarball(ESCAPES["dotdot"]))
    line = one_line_error(hatch_cli(hatch, "image", "import", "evil-via-server", str(escaping)))
    assert ("refusing" in line or "unsafe" in line) and "400" in line, line
    assert not Path("/escaped-dotdot").exists()
    assert "evil" not in hatch.docker("images", check=True).stdout
    assert os.listdir(hatch.data_dir / "images" / "tmp") == []

    # nodes/proxy is admin only: a view token may neither import nor list.
    res = hatch_cli(hatch, "token", "create", "--role", "view", "--name", "image-viewer", check=True)
    kubeconfig = tmp_path / "view.kubeconfig"
    original = (hatch.data_dir / "kubeconfig").read_text()
    kubeconfig.write_text(re.sub(r"token: .*", f"token: {res.stdout.strip()}", original))
    env = dict(hatch.env, KUBECONFIG=str(kubeconfig))
    line = one_line_error(hatch_cli(hatch, "image", "import", "viewer-image", str(bb_tarball), env=env))
    assert "forbidden (403)" in line and "nodes/proxy" in line, line
    line = one_line_error(hatch_cli(hatch, "image", "ls", env=env))
    assert "forbidden (403)" in line, line
    # The upload itself, as any client would send it.
    token = res.stdout.strip()
    server = re.search(r"server: https://([^:]+):(\d+)", original)
    context = ssl.create_default_context(cafile=str(hatch.data_dir / "pki" / "ca.crt"))
    conn = http.client.HTTPSConnection(server.group(1), int(server.group(2)), context=context, timeout=10)
    try:
        conn.request("POST", f"/api/v1/nodes/{node_name(hatch)}/proxy/images?name=viewer-image", body=b"x" * 1024,
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-tar"})
        answer = conn.getresponse()
        status = json.loads(answer.read())
    finally:
        conn.close()
    assert answer.status == 403 and status["reason"] == "Forbidden", status
    assert 'cannot create resource "nodes/proxy"' in status["message"], status
    # Paths under proxy/ other than images are not served.
    conn = http.client.HTTPSConnection(server.group(1), int(server.group(2)), context=context, timeout=10)
    admin = re.search(r"token: (.*)", original).group(1).strip()
    try:
        conn.request("GET", f"/api/v1/nodes/{node_name(hatch)}/proxy/exec/default/x/y",
                     headers={"Authorization": f"Bearer {admin}"})
        answer = conn.getresponse()
        answer.read()
    finally:
        conn.close()
    assert answer.status == 404
    assert "viewer-image" not in hatch.docker("images", check=True).stdout


def dockerd_available():
    return os.path.exists(DOCKERD_SOCKET) and run(["docker", "-H", f"unix://{DOCKERD_SOCKET}", "version"], timeout=20).returncode == 0


def test_docker_load_of_an_archive_saved_by_dockerd(hatch, bb_tarball, tmp_path):
    if not dockerd_available():
        if os.environ.get("HATCH_REQUIRE_DOCKERD") == "1":
            pytest.fail("dockerd is required (HATCH_REQUIRE_DOCKERD=1) but not reachable at " + DOCKERD_SOCKET)
        pytest.skip("no dockerd at /var/run/docker.sock")
    real = ["docker", "-H", f"unix://{DOCKERD_SOCKET}"]
    tag = f"hatch-test-bb:{os.getpid()}"
    with open(bb_tarball, "rb") as f:
        run(real + ["import", "-c", "CMD [\"echo\", \"from-dockerd\"]", "-", tag], input=f.read(), text=False, check=True)
    archive = tmp_path / "from-dockerd.tar"
    try:
        run(real + ["save", "-o", str(archive), tag], check=True)
    finally:
        run(real + ["rmi", tag])
    out = hatch.docker("load", "-i", str(archive), check=True).stdout
    assert f"Loaded image: {tag}" in out
    assert hatch.docker("run", "--rm", tag, check=True).stdout == "from-dockerd\n"
    hatch.docker("rmi", tag, check=True)
