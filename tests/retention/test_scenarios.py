"""The retention rules as scenarios, driven through the CLI and the HTTP API of a real gateway process,
with explicit times (``case close --at``, ``retention run --now``)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from tests.support import GatewayProcess, gateway_process, http_session, tus_headers

OCTETS = "application/offset+octet-stream"
CLOSED_AT = "2026-01-01T12:00:00Z"


def retention(node: GatewayProcess, now: str) -> dict:
    return json.loads(node.cli("retention", "run", "--now", now, "--json").stdout)


def audit(node: GatewayProcess, case_id: str) -> list[dict]:
    return [json.loads(line) for line in node.cli("audit", "list", "--case", case_id).stdout.splitlines()]


async def stored_keys(node: GatewayProcess, case_id: str) -> list[str]:
    return await node.stored_keys(f"cases/{case_id}/") + await node.stored_keys(f"uploads/{case_id}/")


async def upload_file(node: GatewayProcess, case_id: str, data: bytes, name: str = "log.txt") -> dict:
    token = node.token(case_id)
    meta = "filename " + __import__("base64").b64encode(name.encode()).decode()
    async with http_session() as s:
        h = tus_headers(token, Upload_Length=str(len(data)), Upload_Metadata=meta, Content_Type=OCTETS)
        async with s.post(
            f"{node.url}/api/v1/cases/{case_id}/uploads", data=io.BytesIO(data), headers=h
        ) as resp:
            assert resp.status == 201
        return await list_files(node, case_id, token)


async def list_files(node: GatewayProcess, case_id: str, token: str | None = None) -> dict:
    token = token or node.token(case_id)
    async with (
        http_session() as s,
        s.get(
            f"{node.url}/api/v1/cases/{case_id}/files", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        return {"status": resp.status, "files": await resp.json() if resp.status == 200 else None}


async def test_closed_29_days_is_kept_and_31_days_is_purged_completely(tmp_path: Path) -> None:
    """Day 29 keeps everything; day 31 removes every object, row and session, and leaves an audit record."""
    with gateway_process(tmp_path / "node") as node:
        node.cli("case", "open", "C-1")
        listing = await upload_file(node, "C-1", os.urandom(200_000), "secret-name.log")
        (record,) = listing["files"]
        node.cli("case", "close", "C-1", "--at", CLOSED_AT)
        kept = retention(node, "2026-01-30T12:00:00Z")
        assert kept["purged"] == [] and kept["due"] == []
        assert (await list_files(node, "C-1"))["files"][0]["purge_due_at"] == "2026-01-31T12:00:00Z"
        dry = json.loads(
            node.cli("retention", "run", "--now", "2026-02-01T12:00:00Z", "--dry-run", "--json").stdout
        )
        assert [d["case_id"] for d in dry["due"]] == ["C-1"] and dry["purged"] == []
        assert await stored_keys(node, "C-1") != []
        purged = retention(node, "2026-02-01T12:00:00Z")
        assert [p["case_id"] for p in purged["purged"]] == ["C-1"]
        assert purged["purged"][0]["files"] == 1 and purged["purged"][0]["bytes"] == 200_000
        assert await stored_keys(node, "C-1") == []
        assert (await list_files(node, "C-1"))["status"] == 404
        assert node.cli("case", "show", "C-1", check=False).returncode == 2
        events = audit(node, "C-1")
        (purge_event,) = [e for e in events if e["action"] == "case.purged"]
        assert purge_event["detail"]["file_ids"] == [record["id"]]
        assert purge_event["detail"]["sha256"] == [record["sha256"]]
        assert "secret-name" not in json.dumps(purge_event)
        assert any(e["action"] == "file.deleted" and e["detail"]["reason"] == "retention" for e in events)


async def test_reopened_case_keeps_files_and_a_later_closure_starts_a_new_period(tmp_path: Path) -> None:
    """A reopening cancels the purge; closing again on day 10 makes day 40 the purge day, not day 30."""
    with gateway_process(tmp_path / "node") as node:
        node.cli("case", "open", "C-2")
        await upload_file(node, "C-2", b"keep me")
        node.cli("case", "close", "C-2", "--at", CLOSED_AT)
        node.cli("case", "reopen", "C-2")
        assert retention(node, "2026-02-15T00:00:00Z")["purged"] == []  # open: never purged
        node.cli("case", "close", "C-2", "--at", "2026-01-11T12:00:00Z")
        assert retention(node, "2026-02-01T12:00:00Z")["purged"] == []
        assert len((await list_files(node, "C-2"))["files"]) == 1
        assert [p["case_id"] for p in retention(node, "2026-02-10T12:00:00Z")["purged"]] == ["C-2"]


async def test_case_reopened_after_its_purge_is_open_and_empty(tmp_path: Path) -> None:
    """After the purge, reopening gives an open case with no files, ready for new uploads."""
    with gateway_process(tmp_path / "node") as node:
        node.cli("case", "open", "C-3")
        await upload_file(node, "C-3", b"old")
        node.cli("case", "close", "C-3", "--at", CLOSED_AT)
        retention(node, "2026-03-01T00:00:00Z")
        reopened = json.loads(node.cli("case", "reopen", "C-3").stdout)
        assert reopened["state"] == "open" and reopened["closed_at"] is None
        assert (await list_files(node, "C-3"))["files"] == []
        assert len((await upload_file(node, "C-3", b"new"))["files"]) == 1


async def test_upload_in_flight_at_closure_is_refused_and_removed_at_purge(tmp_path: Path) -> None:
    """Closing refuses the next chunk of a started upload; the purge removes its stored part."""
    with gateway_process(tmp_path / "node") as node:
        node.cli("case", "open", "C-4")
        token = node.token("C-4")
        async with http_session() as s:
            h = tus_headers(token, Upload_Length="1000", Content_Type=OCTETS)
            async with s.post(f"{node.url}/api/v1/cases/C-4/uploads", data=b"x" * 400, headers=h) as resp:
                url = resp.headers["Location"]
            node.cli("case", "close", "C-4", "--at", CLOSED_AT)
            h = tus_headers(token, Upload_Offset="400", Content_Type=OCTETS)
            async with s.patch(url, data=b"y" * 600, headers=h) as resp:
                assert resp.status == 403 and (await resp.json())["code"] == "case_closed"
            assert any(k.startswith("uploads/") for k in await stored_keys(node, "C-4"))
            purged = retention(node, "2026-02-01T12:00:00Z")
            assert purged["purged"][0]["unfinished_uploads"] == 1
            assert await stored_keys(node, "C-4") == []
            async with s.head(url, headers=tus_headers(token)) as resp:
                assert resp.status == 404


async def test_idle_unfinished_uploads_expire_and_are_cleaned_up(tmp_path: Path) -> None:
    """An upload idle past EFTGW_UPLOAD_EXPIRY is gone (410) and its data deleted by the sweep."""
    with gateway_process(tmp_path / "node", env={"EFTGW_UPLOAD_EXPIRY": "3600"}) as node:
        node.cli("case", "open", "C-5")
        token = node.token("C-5")
        async with http_session() as s:
            h = tus_headers(token, Upload_Length="1000", Content_Type=OCTETS)
            async with s.post(f"{node.url}/api/v1/cases/C-5/uploads", data=b"x" * 10, headers=h) as resp:
                url = resp.headers["Location"]
                expires = resp.headers["Upload-Expires"]
            assert expires.endswith("GMT")
            later = __import__("datetime").datetime.now(__import__("datetime").UTC) + __import__(
                "datetime"
            ).timedelta(hours=2)
            result = retention(node, later.isoformat())
            assert result["expired_uploads"] == 1
            assert await stored_keys(node, "C-5") == []
            async with s.head(url, headers=tus_headers(token)) as resp:
                assert resp.status == 410
