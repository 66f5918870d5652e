"""The Belle II mount: the federation as a FUSE file system (`rclone mount`, webdav backend), the
way Belle II jobs read their inputs through gfalFS. Merged listings, sizes, sequential and random
reads of a file whose only replica is on Ceph RGW behind a presigned redirect."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import free_port

BUCKET = "fedd-mount"
SEED = 20261130


@pytest.fixture(scope="module")
def content() -> dict[str, bytes]:
    rnd = random.Random(SEED)
    return {"ceph": rnd.randbytes(9 << 20), "dav": rnd.randbytes(300_000)}


@pytest.fixture(scope="module")
def fed(
    ceph: Any, s3client: Any, dav1: Any, content: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fedd]:
    os.environ["FEDD_TEST_SECRET"] = ceph.secret_key
    s3client.create_bucket(Bucket=BUCKET)
    s3client.put_object(Bucket=BUCKET, Key="belle/mc/input-ceph.root", Body=content["ceph"])
    s3client.put_object(Bucket=BUCKET, Key="belle/mc/sub/deep.txt", Body=b"deep in ceph\n")
    dav_dir = Path(dav1.docroot) / "belle" / "mc"
    dav_dir.mkdir(parents=True, exist_ok=True)
    (dav_dir / "input-dav.root").write_bytes(content["dav"])
    port = free_port()
    conf = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[endpoint ceph]
kind = s3
url = {ceph.url}
bucket = {BUCKET}
access_key = {ceph.access_key}
secret_key_env = FEDD_TEST_SECRET
map = /belle /belle
[endpoint dav]
kind = dav
url = {dav1.url}
map = /belle /belle
"""
    f = start_fedd(tmp_path_factory.mktemp("mount"), conf, port)
    try:
        yield f
    finally:
        f.stop()
        assert "Traceback" not in f.log_text()


@pytest.fixture()
def rclone_mount(fed: Fedd, tmp_path: Path) -> Iterator[Path]:
    point = tmp_path / "b2data"
    point.mkdir()
    log = tmp_path / "rclone.log"
    subprocess.run(
        [
            "rclone",
            "mount",
            ":webdav:",
            str(point),
            "--webdav-url",
            f"{fed.url}/belle",
            "--read-only",
            "--vfs-cache-mode",
            "off",
            "--dir-cache-time",
            "1s",
            "--daemon",
            "--daemon-timeout",
            "20s",
            "--log-file",
            str(log),
            "--config",
            "/dev/null",
        ],
        check=True,
        timeout=60,
    )
    try:
        wait_for(lambda: os.path.ismount(point), 20, "the rclone mount")
        yield point
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(point)], check=False, timeout=30)
        assert not os.path.ismount(point)


def test_listing_stat_and_reads_through_rclone_mount(rclone_mount: Path, content: dict[str, bytes]) -> None:
    mc = rclone_mount / "mc"
    assert sorted(os.listdir(mc)) == ["input-ceph.root", "input-dav.root", "sub"]  # merged from both
    assert os.listdir(mc / "sub") == ["deep.txt"]
    assert (mc / "input-ceph.root").stat().st_size == len(content["ceph"])
    assert (mc / "input-dav.root").stat().st_size == len(content["dav"])
    assert (mc / "sub").is_dir()
    # sequential: the whole file, through fedd's 302 to a presigned Ceph URL
    assert (mc / "input-ceph.root").read_bytes() == content["ceph"]
    assert (mc / "input-dav.root").read_bytes() == content["dav"]
    # random reads (ROOT files are read that way): Range requests after the redirect
    rnd = random.Random(SEED)
    with open(mc / "input-ceph.root", "rb") as f:
        for _ in range(40):
            offset = rnd.randrange(len(content["ceph"]) - 70_000)
            size = rnd.randrange(1, 70_000)
            f.seek(offset)
            assert f.read(size) == content["ceph"][offset : offset + size], (offset, size)
    assert (mc / "sub" / "deep.txt").read_bytes() == b"deep in ceph\n"
    assert not (mc / "missing.root").exists()
