"""Logging setup, and the rule that no credential reaches any log line, whoever writes it.

Log lines an operator can ship: ``EFTGW_LOG_FORMAT=json`` writes one JSON object per line, access log and
application log alike, with the same fields::

    {"time": "2026-11-30T11:04:41.123+00:00", "level": "INFO", "logger": "eftgw.access", "node": "gw1",
     "region": "emea", "request_id": "6f1c...", "case": "C-1", "upload": "u_...", "client": "203.0.113.9",
     "event": "203.0.113.9 PATCH /api/v1/cases/C-1/uploads/u_... 204 1.234s"}

``request_id``, ``case``, ``upload`` and ``client`` come from the context the HTTP layer binds for each
request (:func:`bind`), or from a record's ``extra`` (the SFTP listener and the audit log pass them); a
field that is unknown is ``null``. :class:`JsonFormatter` formats records that redaction (below) has already
cleaned, so a JSON line holds what the text line would, never more.

Credentials arrive in places other code logs without meaning to: aiohttp's own "bad request" error quotes
the raw header line (a whole ``Cookie`` or ``Authorization`` header), an exception message may quote a URL
with a launch token. So redaction does not rely on each caller: :func:`install_redaction` replaces the
log record factory, and every record, from any logger, is redacted when it is made — its message, the text
of its exception and stack — before any handler or formatter (text or JSON) sees it. The formatted
exception is kept in ``record.exc_text`` (which :class:`logging.Formatter` prints) and ``record.exc_info``
is cleared, so no formatter can render the unredacted exception again.

What counts as a credential: bearer and basic credentials, anything shaped like a JWT (access and launch
tokens), the session cookie and any ``*session*`` cookie, and the value of any field named like a token,
password or secret (``token=...``, ``"password": "..."``, ``X-CSRF-Token: ...``), webhook secrets.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

REDACTED = "[redacted]"

_RULES: list[tuple[re.Pattern[str], str]] = [
    # JWTs (access and launch tokens), even cut short by a "..." in a quoted line.
    (re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}"), REDACTED),
    (re.compile(r"(?i)\b(bearer|basic|digest)(\s+)[^\s'\",;]+"), rf"\1\2{REDACTED}"),
    # name=value and "name": "value" where the name says secret: cookies, form and query fields, JSON.
    (
        re.compile(
            r"(?i)([\w.-]*(?:session|token|password|passwd|secret|csrf|api[_-]?key)[\w.-]*)"
            r"(['\"]?\s*[:=]\s*['\"]?)([^\s'\",;&]+)"
        ),
        rf"\1\2{REDACTED}",
    ),
    (re.compile(r"whsec_[A-Za-z0-9+/=_-]+"), REDACTED),
]


def redact(text: str) -> str:
    """``text`` with every credential replaced by ``[redacted]``."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def _redacting_factory(factory: Any) -> Any:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: still log what there is, redacted
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    make.eftgw_redacting = True  # type: ignore[attr-defined]
    return make


def install_redaction() -> None:
    """Redact every log record this process makes (idempotent)."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "eftgw_redacting", False):
        logging.setLogRecordFactory(_redacting_factory(factory))


def configure_logging(level: str) -> None:
    """The process's logging: one stream handler at ``level``, credentials redacted in every record."""
    install_redaction()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


class ProtocolLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's connection-level logger for the gateway's listeners.

    A request that does not parse as HTTP (an oversized header line, a bad request line) is the client's
    error, answered with a 4xx by aiohttp: one info line with its kind, not an ERROR with a traceback that
    quotes the raw line (and the credentials in it). Anything else stays an error with its traceback.
    """

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        # aiohttp is not imported here: the admin commands log through this module without it, and an
        # exception of aiohttp's can only exist once aiohttp is loaded.
        http_exceptions = sys.modules.get("aiohttp.http_exceptions")
        if http_exceptions is not None and isinstance(exc_info, http_exceptions.HttpProcessingError):
            remote = args[0] if args else "?"
            self.logger.info(
                "refused a malformed request from %s: %s (%d)", remote, type(exc_info).__name__, exc_info.code
            )
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


PROTOCOL_LOG = ProtocolLog(logging.getLogger("aiohttp.server"), {})


CONTEXT_FIELDS = ("request_id", "case", "upload", "client")

_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"eftgw_log_{name}", default=None) for name in CONTEXT_FIELDS
}


@contextlib.contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Attach ``request_id``, ``case``, ``upload`` or ``client`` to every log line inside the block."""
    tokens = [(_context[name], _context[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current(name: str) -> str | None:
    """The bound value of a context field (``None`` if unbound)."""
    return _context[name].get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the node's identity and the bound context fields."""

    def __init__(self, node: str, region: str) -> None:
        super().__init__()
        self.node = node
        self.region = region

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "node": self.node,
            "region": self.region,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            line[name] = str(value) if value is not None else _context[name].get()
        line["event"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["error"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def use_json(node: str, region: str, logger: logging.Logger | None = None) -> None:
    """Switch every handler of ``logger`` (the root logger by default) to :class:`JsonFormatter`.

    The handlers themselves, with their filters, stay as they are.
    """
    formatter = JsonFormatter(node, region)
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(formatter)
