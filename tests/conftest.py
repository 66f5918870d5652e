"""Session-wide real servers: Ceph RADOS Gateway (S3), two Apache mod_dav endpoints, memcached.

Each starts once per test session on free loopback ports and is stopped by pid at the end.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests import servers

    rgw = servers.start_ceph_rgw(tmp_path_factory.mktemp("ceph"))
    try:
        yield rgw
    finally:
        rgw.stop()


@pytest.fixture(scope="session")
def s3client(ceph: Any) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=ceph.url,
        aws_access_key_id=ceph.access_key,
        aws_secret_access_key=ceph.secret_key,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def _dav(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Any]:
    # Not under pytest's base temporary directory: every pytest session that starts resets it to 0700,
    # and Apache's www-data workers must reach the docroot and the DAV lock database all along.
    work = Path(tempfile.mkdtemp(prefix=f"fedd-{name}-"))
    docroot = work / "docroot"
    docroot.mkdir()
    from tests import servers

    dav = servers.start_apache_dav(work / "apache", docroot)
    try:
        yield dav
    finally:
        dav.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def dav1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from _dav(tmp_path_factory, "dav1")


@pytest.fixture(scope="session")
def dav2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from _dav(tmp_path_factory, "dav2")


@pytest.fixture()
def memcached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests import servers

    mc = servers.start_memcached(tmp_path_factory.mktemp("memcached"))
    try:
        yield mc
    finally:
        mc.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests import servers

    emulator = servers.start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield emulator
    finally:
        emulator.stop()
