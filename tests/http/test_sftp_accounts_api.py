"""SFTP accounts over HTTP: the portal creates, lists and revokes them; the case's customer sees its own
account (the web client's SFTP panel); closing the case revokes them."""

from __future__ import annotations

import datetime as dt

from eftgw.model import SYSTEM
from tests.support import RunningGateway, http_session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_portal_creates_lists_and_revokes_accounts(gw: RunningGateway) -> None:
    """Creation returns the credentials and a 120-hour expiry; the list hides passwords; revocation sticks."""
    service = gw.token(None, role="service", user="portal")
    async with http_session() as s:
        async with s.post(
            f"{gw.url}/api/v1/integration/cases/C-1/sftp-accounts", headers=bearer(service)
        ) as resp:
            assert resp.status == 201
            account = await resp.json()
        created = dt.datetime.fromisoformat(account["created_at"].replace("Z", "+00:00"))
        expires = dt.datetime.fromisoformat(account["expires_at"].replace("Z", "+00:00"))
        assert expires - created == dt.timedelta(hours=120)
        assert account["username"].startswith("sftp-") and len(account["password"]) >= 20
        assert account["port"] == gw.gateway.settings.sftp_port and account["state"] == "active"
        async with s.get(
            f"{gw.url}/api/v1/integration/cases/C-1/sftp-accounts", headers=bearer(service)
        ) as resp:
            (listed,) = await resp.json()
            assert "password" not in listed and listed["username"] == account["username"]
        customer = gw.token("C-1")
        async with s.get(f"{gw.url}/api/v1/cases/C-1/sftp-account", headers=bearer(customer)) as resp:
            mine = await resp.json()
            assert mine["username"] == account["username"] and mine["expires_at"] == account["expires_at"]
            assert "password" not in mine  # the portal hands the password over; the browser never carries it
        async with s.post(
            f"{gw.url}/api/v1/integration/cases/C-1/sftp-accounts", headers=bearer(customer)
        ) as resp:
            assert resp.status == 403
        async with s.delete(
            f"{gw.url}/api/v1/integration/sftp-accounts/{account['username']}", headers=bearer(service)
        ) as resp:
            assert (await resp.json())["state"] == "revoked"
        async with s.get(f"{gw.url}/api/v1/cases/C-1/sftp-account", headers=bearer(customer)) as resp:
            assert resp.status == 404


async def test_other_cases_cannot_see_an_account(gw: RunningGateway) -> None:
    """A customer of another case gets 404 for this case's account."""
    await gw.gateway.cases.open(SYSTEM, "C-2")
    service = gw.token(None, role="service", user="portal")
    async with http_session() as s:
        async with s.post(
            f"{gw.url}/api/v1/integration/cases/C-1/sftp-accounts", headers=bearer(service)
        ) as resp:
            assert resp.status == 201
        async with s.get(f"{gw.url}/api/v1/cases/C-1/sftp-account", headers=bearer(gw.token("C-2"))) as resp:
            assert resp.status == 404


async def test_closing_the_case_revokes_its_accounts(gw: RunningGateway) -> None:
    """After closure the account is revoked, and stays revoked if the case is reopened."""
    service = gw.token(None, role="service", user="portal")
    async with http_session() as s:
        async with s.post(
            f"{gw.url}/api/v1/integration/cases/C-1/sftp-accounts", headers=bearer(service)
        ) as resp:
            username = (await resp.json())["username"]
        async with s.post(f"{gw.url}/api/v1/integration/cases/C-1/close", headers=bearer(service)) as resp:
            assert resp.status == 200
        async with s.post(f"{gw.url}/api/v1/integration/cases/C-1/reopen", headers=bearer(service)) as resp:
            assert resp.status == 200
        async with s.get(
            f"{gw.url}/api/v1/integration/cases/C-1/sftp-accounts", headers=bearer(service)
        ) as resp:
            (account,) = await resp.json()
    assert account["username"] == username and account["state"] == "revoked"
    events = [e.action for e in await gw.gateway.repo.list_audit("C-1")]
    assert events.index("case.closed") < events.index("sftp.account.revoked")
