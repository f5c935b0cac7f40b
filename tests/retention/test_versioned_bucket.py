"""A purge on a versioned S3 bucket removes every version and delete marker of the case, not just the
current objects (a real Ceph RGW; runs in every test run whatever the backend pass)."""

from __future__ import annotations

import datetime as dt
import io
import secrets
from pathlib import Path

import pytest
from minio import Minio
from minio.commonconfig import ENABLED
from minio.versioningconfig import VersioningConfig

from eftgw.clock import FixedClock
from eftgw.model import SYSTEM, Principal, Role
from eftgw.retention.worker import sweep
from tests.services import fresh_bucket
from tests.support import running_gateway

pytestmark = pytest.mark.once


async def body(data: bytes):
    yield data


async def test_purge_removes_all_versions(tmp_path: Path) -> None:
    """Files overwritten and deleted leave versions behind; the purge lists and removes every one."""
    env = fresh_bucket("versioned-" + secrets.token_hex(2))
    admin = Minio(
        env["EFTGW_S3_ENDPOINT"], env["EFTGW_S3_ACCESS_KEY"], env["EFTGW_S3_SECRET_KEY"], secure=False
    )
    bucket = env["EFTGW_S3_BUCKET"]
    admin.make_bucket(bucket)
    admin.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
    clock = FixedClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    overrides = {k.removeprefix("EFTGW_").lower(): v for k, v in env.items()}
    async with running_gateway(tmp_path / "gw", clock=clock, storage="s3", **overrides) as gw:
        await gw.gateway.cases.open(SYSTEM, "V-1")
        customer = Principal("alice", Role.CUSTOMER, "V-1")
        for name in ("a.log", "b.log"):
            data = secrets.token_bytes(100_000)
            upload = await gw.gateway.uploads.create(
                customer, "V-1", length=len(data), metadata={"filename": name}
            )
            await gw.gateway.uploads.append(customer, "V-1", upload.id, 0, body(data))
        # an extra version of one object, as a versioned bucket keeps after an overwrite
        (first, _) = await gw.gateway.repo.list_files("V-1")
        admin.put_object(bucket, first.object_key, io.BytesIO(b"overwritten"), 11)
        versions = list(admin.list_objects(bucket, prefix="cases/V-1/", recursive=True, include_version=True))
        assert len(versions) >= 3
        await gw.gateway.cases.close(SYSTEM, "V-1")
        clock.advance(dt.timedelta(days=31))
        result = await sweep(gw.gateway.retention)
        assert [p.case_id for p in result.purged] == ["V-1"] and result.failed == {}
    for prefix in ("cases/V-1/", "uploads/V-1/"):
        left = list(admin.list_objects(bucket, prefix=prefix, recursive=True, include_version=True))
        assert left == [], [(o.object_name, o.version_id) for o in left]
