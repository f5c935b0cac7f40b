"""JSON log lines: one object per record with the node, the region and the request's bound context."""

from __future__ import annotations

import io
import json
import logging

import pytest

from eftgw import logs

pytestmark = pytest.mark.once  # log formatting only: the backend does not matter here


def capture(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logs.use_json("gw-1", "emea", logger)
    return logger, stream


def test_a_line_carries_node_region_and_the_bound_request_context() -> None:
    """Inside ``bind`` every line names the request, case, upload and client; outside, those are null."""
    logger, stream = capture("eftgw.test.json1")
    with logs.bind(request_id="r1", case="C-1", upload="u1", client="198.51.100.7"):
        logger.info("PATCH %s", "/x")
    logger.info("idle")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["node"] == "gw-1" and first["region"] == "emea" and first["level"] == "INFO"
    assert (first["request_id"], first["case"], first["upload"], first["client"]) == (
        "r1",
        "C-1",
        "u1",
        "198.51.100.7",
    )
    assert first["event"] == "PATCH /x" and first["time"].endswith("+00:00")
    assert second["case"] is None and second["client"] is None


def test_extra_fields_win_and_errors_stay_on_one_line() -> None:
    """A record's own ``client``/``case`` (SFTP, audit) override the context; a traceback is one field."""
    logger, stream = capture("eftgw.test.json2")
    with logs.bind(client="10.0.0.1"):
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed", extra={"client": "203.0.113.5", "case": "C-9"})
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["client"] == "203.0.113.5" and record["case"] == "C-9"
    assert "ValueError: boom" in record["error"] and record["level"] == "ERROR"
