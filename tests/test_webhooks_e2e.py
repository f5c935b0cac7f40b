"""Webhooks from a real ``eftgw serve`` process to a real receiver (which verifies every signature with
``standardwebhooks``): what uploads over tus and SFTP and a case's lifecycle send, a receiver that is down
for a while, a gateway killed with SIGKILL between a change and its delivery, and a receiver so slow that it
holds every request while uploads go on. Short poll, retry and lease settings keep each test to seconds."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tusclient import client as tus_client

from eftgw.auth import TokenSigner, load_or_create_signing_key
from eftgw.clock import SystemClock
from eftgw.model import Role
from tests.sftp.sftp_support import Account, paramiko_sftp
from tests.support import GatewayProcess, gateway_process, http_session, tus_headers
from tests.webhook_receiver import Receiver, receiving

MiB = 1024 * 1024
OCTETS = "application/offset+octet-stream"

#: Settings that make the sender quick to notice, retry and take over (seconds).
FAST = {
    "EFTGW_WEBHOOK_POLL_INTERVAL": "0.05",
    "EFTGW_WEBHOOK_RETRY_BASE": "0.05",
    "EFTGW_WEBHOOK_RETRY_MAX": "0.5",
    "EFTGW_WEBHOOK_LEADER_TTL": "2",
    # A receiver here answers at once; a longer timeout keeps a stalled, loaded machine from making an
    # attempt time out and be repeated (at least once is allowed, but these tests count exactly once).
    "EFTGW_WEBHOOK_TIMEOUT": "120",
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


def put_over_sftp(port: int, account: Account, name: str, data: bytes) -> None:
    with paramiko_sftp(port, account) as (_transport, sftp):
        sftp.putfo(io.BytesIO(data), name)


def outbox(node: GatewayProcess, state: str | None = None) -> list[dict[str, Any]]:
    """``eftgw events list`` of the node, parsed: every stored event in seq order, with its state."""
    args = ["events", "list"] + (["--state", state] if state else [])
    return [json.loads(line) for line in node.cli(*args).stdout.splitlines()]


def assert_once_each_and_in_case_order(receiver: Receiver, stored: list[dict[str, Any]]) -> None:
    """Every stored event arrived exactly once (2xx), as stored; each case's events in the outbox's order."""
    got = receiver.delivered()
    ids = [r.id for r in got]
    assert sorted(ids) == sorted(e["id"] for e in stored)
    assert len(set(ids)) == len(ids), "an event was delivered twice"
    by_id = {r.id: r.payload for r in got}
    for event in stored:
        assert by_id[event["id"]] == {
            k: event[k] for k in ("id", "type", "timestamp", "region", "case_id", "data")
        }
    for case in {e["case_id"] for e in stored if e["case_id"]}:
        assert [r.id for r in got if r.payload["case_id"] == case] == [
            e["id"] for e in stored if e["case_id"] == case
        ]


def mint(node: GatewayProcess, case_id: str | None, role: str = "customer", user: str = "alice") -> str:
    """A token signed with the node's issuer key, as ``eftgw token`` prints it (without a process start)."""
    settings = node.settings()
    key = load_or_create_signing_key(
        settings.signing_key or settings.resolved_data_dir / "keys" / "issuer-ed25519.pem"
    )
    signer = TokenSigner(key, settings.token_issuer, settings.audience, SystemClock())
    return signer.mint(role=Role(role), user=user, case_id=case_id, ttl=3600)


def service_token(node: GatewayProcess) -> str:
    return mint(node, None, "service", "portal")


async def case_action(
    node: GatewayProcess, token: str, case_id: str, action: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The portal's call: ``POST /api/v1/integration/cases/{case}/{action}`` (``open``, ``close``,
    ``reopen``, ``sftp-accounts``)."""
    async with (
        http_session() as s,
        s.post(
            f"{node.url}/api/v1/integration/cases/{case_id}/{action}",
            headers={"Authorization": f"Bearer {token}"},
            json=body or {},
        ) as resp,
    ):
        assert resp.status in (200, 201), await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def tus_upload(node: GatewayProcess, token: str, case_id: str, name: str, data: bytes) -> None:
    """A whole tus upload (creation, one PATCH) with aiohttp."""
    meta = "filename " + base64.b64encode(name.encode()).decode()
    async with http_session() as s:
        h = tus_headers(token, Upload_Length=str(len(data)), Upload_Metadata=meta)
        async with s.post(f"{node.url}/api/v1/cases/{case_id}/uploads", headers=h) as resp:
            assert resp.status == 201, await resp.text()
            url = resp.headers["Location"]
        h = tus_headers(token, Upload_Offset="0", Content_Type=OCTETS)
        async with s.patch(url, data=io.BytesIO(data), headers=h) as resp:
            assert resp.status == 204, await resp.text()


async def test_uploads_over_tus_and_sftp_and_a_case_lifecycle_each_send_their_event_once(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tuspy uploads a file, paramiko another over SFTP; the portal closes the case, reopens it and closes it
    as of 31 days ago, and the gateway's retention sweep purges it. The receiver gets each stored event
    exactly once, in the case's order, with the fields the event types promise: file names, sizes, SHA-256,
    uploader, role, transport and client address on ``file.finished``; counts and bytes, never names, on the
    case's lifecycle events."""
    by_http, by_sftp = os.urandom(3 * MiB + 11), os.urandom(MiB + 5)
    env = receiver.env(**FAST, EFTGW_REGION="emea", EFTGW_RETENTION_INTERVAL="1")
    with gateway_process(tmp_path / "gw", env) as node:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(node.data_dir / "tls" / "tls-cert.pem"))
        portal = service_token(node)
        await case_action(node, portal, "C-1", "open")
        uploader = tus_client.TusClient(
            f"{node.url}/api/v1/cases/C-1/uploads", headers={"Authorization": f"Bearer {mint(node, 'C-1')}"}
        ).uploader(file_stream=io.BytesIO(by_http), chunk_size=MiB, metadata={"filename": "report.txt"})
        await asyncio.to_thread(uploader.upload)
        issued = await case_action(node, portal, "C-1", "sftp-accounts")
        account = Account(issued["username"], issued["password"], "C-1")
        await asyncio.to_thread(put_over_sftp, node.sftp_port, account, "logs.tar", by_sftp)
        await case_action(node, portal, "C-1", "close")
        await case_action(node, portal, "C-1", "reopen")
        long_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=31)).isoformat()
        await case_action(node, portal, "C-1", "close", {"closed_at": long_ago})
        await receiver.until(lambda r: len(r.of_type("case.purged")) == 1)
        await asyncio.sleep(0.5)  # a duplicate would arrive within a few poll intervals
        stored = outbox(node)
    # The purge removed the case's delivered events from the outbox; only its own event is left.
    assert [(e["type"], e["state"]) for e in stored] == [("case.purged", "delivered")]
    got = receiver.delivered()
    assert len({r.id for r in got}) == len(got) == len(receiver.arrived), "an event arrived twice"
    assert [r.payload["type"] for r in got] == [
        "file.finished",
        "sftp_account.created",
        "file.finished",
        "case.closed",
        "sftp_account.revoked",
        "case.reopened",
        "case.closed",
        "case.purged",
    ]
    assert {r.payload["case_id"] for r in got} == {"C-1"}
    stamps = [r.payload["timestamp"] for r in got]
    assert stamps == sorted(stamps)

    finished = {e["data"]["via"]: e for e in receiver.of_type("file.finished")}
    assert set(finished) == {"http", "sftp"}
    http, sftp = finished["http"], finished["sftp"]
    assert http["case_id"] == "C-1" and http["region"] == "emea"
    assert http["data"]["name"] == "report.txt" and http["data"]["size"] == len(by_http)
    assert http["data"]["sha256"] == hashlib.sha256(by_http).hexdigest()
    assert http["data"]["uploader"] == "alice" and http["data"]["role"] == "customer"
    assert http["data"]["client"] == "127.0.0.1"
    assert sftp["data"]["name"] == "logs.tar" and sftp["data"]["size"] == len(by_sftp)
    assert sftp["data"]["sha256"] == hashlib.sha256(by_sftp).hexdigest()
    assert sftp["data"]["uploader"] == issued["username"] and sftp["data"]["client"] == "127.0.0.1"

    total = len(by_http) + len(by_sftp)
    lifecycle = [e for e in receiver.of_type("case.closed") + receiver.of_type("case.reopened")]
    assert len(receiver.of_type("case.closed")) == 2 and len(receiver.of_type("case.reopened")) == 1
    for event in [*lifecycle, *receiver.of_type("case.purged")]:
        assert event["data"] == {"files": 2, "bytes": total}, event
    (created,) = receiver.of_type("sftp_account.created")
    assert created["data"]["username"] == issued["username"]
    assert [e["data"]["username"] for e in receiver.of_type("sftp_account.revoked")] == [issued["username"]]
    types = [r.payload["type"] for r in receiver.delivered()]
    assert types.index("case.reopened") < types.index("case.purged")


async def test_a_receiver_down_for_a_while_gets_every_event_in_case_order_when_back(
    tmp_path: Path, receiver: Receiver
) -> None:
    """With the receiver's port closed, three cases are closed and reopened twice, interleaved; the gateway
    counts the refused attempts and keeps the events. Once the receiver listens again every event arrives,
    once, each case's in the order they happened."""
    with gateway_process(tmp_path / "gw", receiver.env(**FAST)) as node:
        token = service_token(node)
        for case in ("A", "B", "C"):
            await case_action(node, token, case, "open")
        receiver.down()
        for _round in range(2):
            for case in ("A", "B", "C"):
                await case_action(node, token, case, "close")
            for case in ("C", "B", "A"):
                await case_action(node, token, case, "reopen")
        await wait_metric(node, 'eftgw_webhook_failures_total{reason="connection"}', at_least=3)
        assert len(outbox(node, "pending")) == 12
        receiver.up()
        await receiver.until(lambda r: len(r.delivered()) == 12)
        await asyncio.sleep(0.5)  # a duplicate would arrive within the poll interval
        stored = outbox(node)
    assert_once_each_and_in_case_order(receiver, stored)


async def wait_metric(node: GatewayProcess, sample: str, at_least: float, within: float = 30.0) -> float:
    """Poll the node's ``/metrics`` until ``sample`` (name and labels) reaches ``at_least``."""
    deadline = asyncio.get_running_loop().time() + within
    value = 0.0
    while asyncio.get_running_loop().time() < deadline:
        async with http_session() as s, s.get(f"{node.url}/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith(sample + " "):
                value = float(line.split()[-1])
        if value >= at_least:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sample} stayed at {value} (< {at_least})")


async def test_an_event_survives_kill_9_between_its_change_and_its_delivery(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The receiver refuses (503) while a file is uploaded: its ``file.finished`` is attempted, not
    delivered. The gateway is killed with SIGKILL; after a restart the same event (same id) is delivered."""
    receiver.status = 503
    with gateway_process(tmp_path / "gw", receiver.env(**FAST)) as node:
        await case_action(node, service_token(node), "C-1", "open")
        await tus_upload(node, mint(node, "C-1"), "C-1", "crash.log", b"x" * 1000)
        await receiver.until(lambda r: len(r.arrived) >= 1)
        (event_id,) = set(receiver.arrived)
        node.kill9()
        receiver.status = 204
        assert receiver.delivered() == []
        node.start()
        await receiver.until(lambda r: len(r.delivered()) == 1)
        (pending,) = [e for e in outbox(node) if e["id"] == event_id]
    (got,) = receiver.delivered()
    assert got.id == event_id and got.payload["type"] == "file.finished"
    assert got.payload["data"]["name"] == "crash.log" and pending["state"] == "delivered"


async def test_a_receiver_holding_every_request_does_not_slow_uploads(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The receiver holds each request unanswered until the test releases it (longer than the issue's 10 s:
    whatever the uploads take, they cannot be waiting on it). With the sender's whole connection pool (2)
    taken by held requests, six more uploads to three cases each finish while the first two webhooks are
    still unanswered, and their events wait in the outbox; once released, every event arrives."""
    receiver.hold = 600.0
    env = receiver.env(**(FAST | {"EFTGW_WEBHOOK_CONCURRENCY": "2", "EFTGW_WEBHOOK_TIMEOUT": "600"}))
    with gateway_process(tmp_path / "gw", env) as node:
        token = service_token(node)
        for case in ("C-1", "C-2", "C-3"):
            await case_action(node, token, case, "open")
        tokens = {case: mint(node, case) for case in ("C-1", "C-2", "C-3")}
        await tus_upload(node, tokens["C-1"], "C-1", "first.bin", os.urandom(MiB))
        await tus_upload(node, tokens["C-2"], "C-2", "first.bin", os.urandom(MiB))
        await receiver.until(lambda r: r.holding == 2)
        for i in range(6):
            case = ("C-1", "C-2", "C-3")[i % 3]
            await tus_upload(node, tokens[case], case, f"more-{i}.bin", os.urandom(4 * MiB))
        assert receiver.holding == 2 and receiver.requests == []  # still nothing answered
        assert len(receiver.arrived) == 2  # the pool is full: nothing else was sent
        pending = outbox(node, "pending")
        assert sum(e["type"] == "file.finished" for e in pending) == 8
        receiver.release()
        await receiver.until(lambda r: len(r.of_type("file.finished")) == 8)
