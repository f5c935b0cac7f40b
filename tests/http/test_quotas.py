"""Quotas on uploads: unfinished uploads per case and uploads started per principal are capped, and the
refusal is a 429 with ``Retry-After`` and a sentence; what exists is untouched."""

from __future__ import annotations

from pathlib import Path

from eftgw.model import SYSTEM
from tests.support import http_session, running_gateway, tus_headers


async def test_unfinished_uploads_per_case_are_capped(tmp_path: Path) -> None:
    """With ``max_active_uploads_per_case=3`` the fourth unfinished upload of a case is 429 (for customers
    and engineers alike); another case is not affected, and cancelling one makes room again."""
    async with running_gateway(tmp_path / "gw", max_active_uploads_per_case=3) as gw:
        await gw.gateway.cases.open(SYSTEM, "C-1")
        await gw.gateway.cases.open(SYSTEM, "C-2")
        customer, engineer = gw.token("C-1"), gw.token(None, role="engineer", user="eve")
        create = tus_headers(customer, Upload_Length="10")
        async with http_session() as s:
            urls = []
            for _ in range(3):
                async with s.post(gw.uploads_url("C-1"), headers=create) as resp:
                    assert resp.status == 201
                    urls.append(resp.headers["Location"])
            for token in (customer, engineer):
                h = tus_headers(token, Upload_Length="10")
                async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
                    assert resp.status == 429
                    assert int(resp.headers["Retry-After"]) > 0
                    body = await resp.json()
                    assert body["code"] == "too_many_requests"
                    assert "3 unfinished uploads" in body["message"]
            other = tus_headers(gw.token("C-2", user="bob"), Upload_Length="10")
            async with s.post(gw.uploads_url("C-2"), headers=other) as resp:
                assert resp.status == 201
            async with s.delete(urls[0], headers=tus_headers(customer)) as resp:
                assert resp.status == 204
            async with s.post(gw.uploads_url("C-1"), headers=create) as resp:
                assert resp.status == 201
        assert len(await gw.gateway.repo.list_uploads("C-1")) == 4  # 3 unfinished + the terminated one


async def test_uploads_started_per_principal_are_rate_limited(tmp_path: Path) -> None:
    """With a burst of 3 and 1 a minute, a principal's fourth upload in a row is 429 with the seconds to
    wait (a minute at most); another principal still starts uploads."""
    async with running_gateway(tmp_path / "gw", upload_creation_burst=3, upload_creation_rate=1) as gw:
        await gw.gateway.cases.open(SYSTEM, "C-1")
        alice = tus_headers(gw.token("C-1", user="alice"), Upload_Defer_Length="1")
        async with http_session() as s:
            for _ in range(3):
                async with s.post(gw.uploads_url("C-1"), headers=alice) as resp:
                    assert resp.status == 201
            async with s.post(gw.uploads_url("C-1"), headers=alice) as resp:
                assert resp.status == 429
                assert 1 <= int(resp.headers["Retry-After"]) <= 60
                assert "try again in" in (await resp.json())["message"]
            bob = tus_headers(gw.token("C-1", user="bob"), Upload_Defer_Length="1")
            async with s.post(gw.uploads_url("C-1"), headers=bob) as resp:
                assert resp.status == 201
        assert len(await gw.gateway.repo.list_uploads("C-1")) == 4
