"""The core loads without the SQL adapter, the transports or their libraries (in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADAPTER_LIBRARIES = {"sqlalchemy", "alembic", "aiosqlite", "asyncpg", "aiohttp", "asyncssh", "minio"}


def loaded_top_level_packages(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_importing_the_upload_engine_loads_no_sql_http_or_ssh_library() -> None:
    """``import eftgw.uploads`` (and the other services) pulls in none of the adapters' libraries."""
    for module in [
        "eftgw.uploads",
        "eftgw.files",
        "eftgw.cases",
        "eftgw.accounts",
        "eftgw.auth",
        "eftgw.audit",
    ]:
        assert loaded_top_level_packages(module) & ADAPTER_LIBRARIES == set(), module


def test_the_check_sees_an_adapter_library_when_one_is_loaded() -> None:
    """The same check reports SQLAlchemy for the SQL adapter, so an empty answer above means something."""
    assert "sqlalchemy" in loaded_top_level_packages("eftgw.metadata")
