"""Fixtures for the store conformance suite: every test runs once per backend.

The ``s3`` backend talks to a real S3 server (a Ceph RADOS Gateway that ``scripts/ceph-rgw start`` runs on
loopback) found through ``EFTGW_TEST_S3_ENDPOINT``, ``EFTGW_TEST_S3_ACCESS_KEY`` and
``EFTGW_TEST_S3_SECRET_KEY``. A missing or unreachable server fails the tests; it never skips them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio import Minio
from minio.deleteobjects import DeleteObject

from eftgw.storage.filesystem import FilesystemStore
from eftgw.storage.s3 import S3Store
from eftgw.storage.s3_client import S3Client

BACKENDS = ["filesystem", "s3"]


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def client(self, bucket: str, *, secret_key: str | None = None) -> S3Client:
        return S3Client(self.endpoint, self.access_key, secret_key or self.secret_key, bucket, secure=False)

    def store(self, bucket: str, *, secret_key: str | None = None) -> S3Store:
        return S3Store(self.client(bucket, secret_key=secret_key))

    def admin(self) -> Minio:
        return Minio(self.endpoint, self.access_key, self.secret_key, secure=False)


def _s3_server() -> S3Server:
    endpoint = os.environ.get("EFTGW_TEST_S3_ENDPOINT")
    if not endpoint:
        pytest.fail(
            'EFTGW_TEST_S3_ENDPOINT is not set: start the S3 server with `eval "$(scripts/ceph-rgw start)"`'
        )
    return S3Server(
        endpoint.removeprefix("http://"),
        os.environ.get("EFTGW_TEST_S3_ACCESS_KEY", ""),
        os.environ.get("EFTGW_TEST_S3_SECRET_KEY", ""),
    )


def empty_bucket(admin: Minio, bucket: str, *, remove: bool = False) -> None:
    """Delete every object version and unfinished multipart upload in ``bucket`` (and the bucket)."""
    if not admin.bucket_exists(bucket):
        return
    listed = admin.list_objects(bucket, recursive=True, include_version=True)
    doomed = [DeleteObject(o.object_name or "", o.version_id) for o in listed]
    for error in admin.remove_objects(bucket, doomed):
        raise AssertionError(f"could not delete {error.name}: {error.code}")
    for upload in admin._list_multipart_uploads(bucket).uploads:
        admin._abort_multipart_upload(bucket, upload.object_name, upload.upload_id or "")
    if remove:
        admin.remove_bucket(bucket)


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    """The real S3 server of the test run (fails the test if it is not configured)."""
    return _s3_server()


@pytest.fixture(scope="session")
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A bucket of its own for this test session, emptied and removed at the end."""
    name = "eftgw-test-" + secrets.token_hex(4)
    yield name
    empty_bucket(s3_server.admin(), name, remove=True)


@pytest.fixture
def new_bucket(s3_server: S3Server) -> Iterator[Callable[[], str]]:
    """Names of buckets that do not exist yet; whatever a test creates under them is removed afterwards."""
    names: list[str] = []

    def make() -> str:
        names.append("eftgw-test-" + secrets.token_hex(4))
        return names[-1]

    yield make
    admin = s3_server.admin()
    for name in names:
        empty_bucket(admin, name, remove=True)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], object]:
    """Make a store of the backend under test; several calls give several "nodes" on the same data."""
    if backend == "filesystem":
        return lambda: FilesystemStore(tmp_path / "objects")
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return lambda: server.store(bucket)


@pytest.fixture
async def store(make_store: Callable[[], object]) -> AsyncIterator[object]:
    """An opened store of the backend under test."""
    opened = make_store()
    await opened.open()  # type: ignore[attr-defined]
    yield opened
    await opened.close()  # type: ignore[attr-defined]


@pytest.fixture
def case_id() -> str:
    """A case id of its own per test, so tests sharing a bucket never see each other's keys."""
    return "C-" + secrets.token_hex(6)
