"""The core loads without the SQL adapter, the transports or their libraries (in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Imports and admin commands on the embedded database: the backend does not matter here.
pytestmark = pytest.mark.once

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
        "eftgw.ingest",
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


def test_an_admin_command_on_a_current_schema_loads_neither_alembic_nor_aiohttp(tmp_path: Path) -> None:
    """``eftgw case show`` (which tests and operators run many times) starts without Alembic when no migration
    is due and without aiohttp, which only the transports need; a fresh database still gets migrated."""
    code = (
        "import json, sys\n"
        "from eftgw.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "print(json.dumps({'status': status, 'loaded': sorted({m.split('.')[0] for m in sys.modules})}))\n"
    )
    env = {**os.environ, "EFTGW_DATA_DIR": str(tmp_path / "gw"), "PYTHONPATH": str(ROOT)}

    def run(*args: str) -> tuple[str, set[str]]:
        out = subprocess.run(
            [sys.executable, "-c", code, *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        first, _, last = out.stdout.strip().rpartition("\n")
        result = json.loads(last)
        assert result["status"] == 0, out.stderr
        return first, set(result["loaded"])

    _, loaded = run("case", "open", "C-1")  # a fresh database: the migrations run
    assert "alembic" in loaded
    shown, loaded = run("case", "show", "C-1")
    assert json.loads(shown)["id"] == "C-1"
    assert loaded & {"alembic", "aiohttp"} == set()
