"""Fresh databases and buckets on the test run's real PostgreSQL and S3 servers (``EFTGW_TEST_BACKEND=s3pg``).

``scripts/test`` starts both services and exports ``EFTGW_TEST_DATABASE_URL`` and ``EFTGW_TEST_S3_*``; a
missing variable fails the test that needs it (never a skip). Each gateway a test makes gets a database and
a bucket of its own; both servers are throwaway, removed when ``scripts/test`` stops them.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess

import pytest


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the suite with scripts/test, which starts PostgreSQL and S3")
    return value


def fresh_database(label: str) -> str:
    """Create an empty PostgreSQL database and return its URL."""
    base = _required("EFTGW_TEST_DATABASE_URL")
    name = "eftgw_" + re.sub(r"[^a-z0-9]", "_", label.lower())[:30] + "_" + secrets.token_hex(4)
    subprocess.run(
        ["psql", base, "-v", "ON_ERROR_STOP=1", "-q", "-c", f'CREATE DATABASE "{name}"'],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return f"{base.rpartition('/')[0]}/{name}"


def fresh_bucket(label: str) -> dict[str, str]:
    """Settings for a bucket of its own on the S3 server (the gateway creates it at start)."""
    endpoint = _required("EFTGW_TEST_S3_ENDPOINT").removeprefix("http://")
    bucket = (
        ("eftgw-" + re.sub(r"[^a-z0-9-]", "-", label.lower()))[:50].rstrip("-") + "-" + secrets.token_hex(4)
    )
    return {
        "EFTGW_S3_ENDPOINT": endpoint,
        "EFTGW_S3_ACCESS_KEY": _required("EFTGW_TEST_S3_ACCESS_KEY"),
        "EFTGW_S3_SECRET_KEY": _required("EFTGW_TEST_S3_SECRET_KEY"),
        "EFTGW_S3_BUCKET": bucket,
        "EFTGW_S3_SECURE": "false",
    }
