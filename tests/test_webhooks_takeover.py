"""Two real gateway processes sharing one PostgreSQL database: only the node that leads the ``events``
election sends webhooks; killed with SIGKILL while an event is undelivered, the other node takes over and
delivers it under the id it was minted with."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import fresh_database
from tests.support import GatewayProcess
from tests.test_webhooks_e2e import (
    FAST,
    assert_once_each_and_in_case_order,
    case_action,
    outbox,
    service_token,
)
from tests.webhook_receiver import Receiver, receiving

pytestmark = pytest.mark.once

LEADS = "this node now leads events"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from receiving()


@pytest.fixture
def nodes(tmp_path: Path, receiver: Receiver) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two started nodes on one fresh PostgreSQL database and a shared directory, sending to ``receiver``."""
    shared = {
        "EFTGW_DATABASE_URL": fresh_database("wh" + secrets.token_hex(3)),
        "EFTGW_STORAGE": "filesystem",
        "EFTGW_STORAGE_DIR": str(tmp_path / "shared-objects"),
        "EFTGW_SIGNING_KEY": str(tmp_path / "shared-issuer.pem"),
        # A lease of 5 s: takeover within seconds, yet no flip of the lead while a loaded machine stalls.
        **receiver.env(**(FAST | {"EFTGW_WEBHOOK_LEADER_TTL": "5"})),
    }
    a = GatewayProcess(tmp_path / "node-a", shared)
    b = GatewayProcess(tmp_path / "node-b", shared)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def leader_of(
    a: GatewayProcess, b: GatewayProcess, within: float = 30.0
) -> tuple[GatewayProcess, GatewayProcess]:
    """(the node leading the events election, the other), from their logs; fails if none or both lead."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        leading = [node for node in (a, b) if LEADS in node.log_path.read_text()]
        if leading:
            assert len(leading) == 1, "both nodes claim the events election"
            (leader,) = leading
            return leader, (b if leader is a else a)
        time.sleep(0.05)
    raise AssertionError("no node leads the events election")


async def test_when_the_sending_node_dies_the_other_delivers_under_the_same_ids(nodes, receiver) -> None:
    """Node-independent events: a case closed on either node is delivered by the leader. While the receiver
    refuses (503), the leader attempts a new event and is then killed with SIGKILL; the other node takes the
    election over and delivers that event with the id the dead node attempted it under. No event is ever
    sent under two ids, and each is delivered once."""
    a, b = nodes
    leader, other = leader_of(a, b)
    token = service_token(a)
    await case_action(other, token, "C-1", "open")
    await case_action(other, token, "C-1", "close")  # changed on the follower, sent by the leader
    await receiver.until(lambda r: len(r.delivered()) == 1)

    receiver.status = 503
    await case_action(leader, token, "C-1", "reopen")
    await receiver.until(lambda r: len(r.arrived) >= 2)
    attempted = receiver.arrived[-1]
    leader.kill9()
    receiver.status = 204
    await case_action(other, token, "C-2", "open")
    await case_action(other, token, "C-2", "close")
    await receiver.until(lambda r: len(r.delivered()) == 3, within=60)
    assert LEADS in other.log_path.read_text()
    stored = outbox(other)
    assert attempted in receiver.delivered_ids()
    assert set(receiver.arrived) == {e["id"] for e in stored}  # ids never re-minted
    assert_once_each_and_in_case_order(receiver, stored)
    assert [e["type"] for e in stored if e["case_id"] == "C-1"] == ["case.closed", "case.reopened"]
