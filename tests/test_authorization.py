"""Authorization is decided by types and roles, never by free strings: a customer reaches only their case by
any path, the gateway's own power (every case, purging) is the :class:`SystemPrincipal` type, and a wrong
value is a type error that mypy reports before the code runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eftgw.errors import FileNotFound, Forbidden
from eftgw.model import SYSTEM, FileRecord, Principal, Role, SystemPrincipal, Via
from tests.support import ROOT, RunningGateway, http_session

ENGINEER = Principal("eve", Role.ENGINEER, via=Via.TOKEN)


async def _place(gw: RunningGateway, case_id: str, name: str, who: Principal = ENGINEER) -> FileRecord:
    async def body() -> AsyncIterator[bytes]:
        yield b"secret log"

    uploads = gw.gateway.uploads
    upload = await uploads.create(who, case_id, length=10, metadata={"filename": name})
    await uploads.append(who, case_id, upload.id, 0, body())
    record = await gw.gateway.repo.get_file(case_id, upload.file_id)
    assert record is not None
    return record


async def test_a_customer_reaches_another_cases_file_by_no_http_path(gw: RunningGateway) -> None:
    """A customer of C-2 gets 404 for C-1's file by every route (through C-1's URLs and through their own
    case's URLs with C-1's file id): list, metadata, content, HEAD, delete; the file survives."""
    await gw.gateway.cases.open(SYSTEM, "C-2")
    theirs = await _place(gw, "C-1", "c1.log", Principal("carol", Role.CUSTOMER, "C-1"))
    auth = {"Authorization": f"Bearer {gw.token('C-2', user='mallory')}"}
    api = f"{gw.url}/api/v1/cases"
    async with http_session() as s:
        for case in ("C-1", "C-2"):
            for method, path in (
                ("GET", f"/{case}/files/{theirs.id}"),
                ("GET", f"/{case}/files/{theirs.id}/content"),
                ("HEAD", f"/{case}/files/{theirs.id}/content"),
                ("DELETE", f"/{case}/files/{theirs.id}"),
            ):
                async with s.request(method, api + path, headers=auth) as resp:
                    assert resp.status == 404, (method, path, resp.status)
        async with s.get(f"{api}/C-1/files", headers=auth) as resp:
            assert resp.status == 404
        async with s.get(f"{api}/C-2/files", headers=auth) as resp:
            assert await resp.json() == []
    assert await gw.gateway.repo.get_file("C-1", theirs.id) is not None


async def test_the_system_power_is_a_type_not_the_via_string(gw: RunningGateway) -> None:
    """A principal that merely says ``via="system"`` (a service or a customer) reaches no other case; only
    a :class:`SystemPrincipal` does."""
    record = await _place(gw, "C-1", "a.log")
    files = gw.gateway.files
    for pretender in (
        Principal("svc", Role.SERVICE, via=Via.SYSTEM),
        Principal("mallory", Role.CUSTOMER, "C-2", via="system"),  # type: ignore[arg-type]
    ):
        assert not pretender.may_access_case("C-1")
        with pytest.raises(FileNotFound):
            await files.get(pretender, "C-1", record.id)
        with pytest.raises(FileNotFound):
            await files.list(pretender, "C-1")
    assert [f.id for f in await files.list(SystemPrincipal("retention"), "C-1")] == [record.id]


async def test_deleting_always_checks_permission_and_purging_needs_the_system(gw: RunningGateway) -> None:
    """``FileService.delete`` has no reason that skips the check (a customer cannot delete an engineer's
    file, nor pass a reason); ``purge`` and ``discard_case`` refuse anyone but a :class:`SystemPrincipal`."""
    record = await _place(gw, "C-1", "engineers.log")
    customer = Principal("carol", Role.CUSTOMER, "C-1")
    files, uploads = gw.gateway.files, gw.gateway.uploads
    with pytest.raises(Forbidden):
        await files.delete(customer, "C-1", record.id)
    with pytest.raises(TypeError):
        await files.delete(customer, "C-1", record.id, reason="retention")  # type: ignore[call-arg]
    for caller in (customer, ENGINEER, Principal("svc", Role.SERVICE, via=Via.SYSTEM)):
        with pytest.raises(Forbidden):
            await files.purge(caller, "C-1", record.id)  # type: ignore[arg-type]
        with pytest.raises(Forbidden):
            await uploads.discard_case(caller, "C-1")  # type: ignore[arg-type]
    assert await gw.gateway.repo.get_file("C-1", record.id) is not None
    await files.purge(SYSTEM, "C-1", record.id)
    assert await gw.gateway.repo.get_file("C-1", record.id) is None


WRONG = """
from eftgw.files import FileService
from eftgw.model import Principal, Role, Via
from eftgw.uploads import UploadService


async def misuse(files: FileService, uploads: UploadService) -> None:
    customer = Principal("mallory", Role.CUSTOMER, "C-2")
    await files.delete(customer, "C-1", "f", reason="retention")  # line 9: no such argument
    await files.purge(customer, "C-1", "f")  # line 10: a Principal is not a SystemPrincipal
    await uploads.discard_case(customer, "C-1")  # line 11: the same
    await uploads.create(customer, "C-2", length=1, metadata={}, via="sftpp")  # line 12: not a Transport
    Principal("mallory", Role.CUSTOMER, "C-2", via="system")  # line 13: not a Via
    if customer.via == Via.SYSTME:  # line 14: no such member
        pass
"""


def test_wrong_values_are_type_errors(tmp_path: Path) -> None:
    """mypy (strict, as CI runs it) rejects each misuse: a delete reason, a plain principal where the
    system's is required, a transport or a ``via`` given as a string, a misspelt member."""
    snippet = tmp_path / "misuse.py"
    snippet.write_text(textwrap.dedent(WRONG))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--follow-imports=silent",
            str(snippet),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    flagged = {int(line.split(":")[1]) for line in result.stdout.splitlines() if ": error:" in line}
    assert flagged == {9, 10, 11, 12, 13, 14}, result.stdout
