"""Images through the docker CLI: import, load, save, images, rmi; archives that try to escape the
store are refused; a `docker save` archive made by a real dockerd loads and runs."""

import io
import json
import os
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


def test_hatch_image_import_tarball_and_directory(hatch, bb_tarball, bb_rootfs):
    res = run([str(HATCH), "image", "import", "fromtar", str(bb_tarball)], env=hatch.env)
    assert res.returncode == 0, res.stderr
    res = run([str(HATCH), "image", "import", "fromdir:v2", str(bb_rootfs)], env=hatch.env)
    assert res.returncode == 0, res.stderr
    listing = run([str(HATCH), "image", "ls"], env=hatch.env, check=True).stdout
    assert "fromtar" in listing and "fromdir" in listing and "v2" in listing
    assert hatch.docker("run", "--rm", "fromdir:v2", "cat", "/etc/passwd", check=True).stdout.startswith("root:")
    res = run([str(HATCH), "image", "import", "broken", "/nonexistent/path"], env=hatch.env)
    assert res.returncode != 0 and "/nonexistent/path" in res.stderr
    hatch.docker("rmi", "fromtar", "fromdir:v2", check=True)


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
