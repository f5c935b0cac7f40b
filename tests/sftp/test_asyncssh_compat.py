"""The asyncssh internals eftgw relies on (eftgw/sftp/asyncssh_compat.py) are still there and shaped as used.

Each test names one internal; an asyncssh upgrade that moves or reshapes it fails here with that name, before
any SFTP client test has to be read to find out why.
"""

from __future__ import annotations

import inspect

import asyncssh
import pytest
from asyncssh.constants import FXP_WRITE
from asyncssh.sftp import SFTPServerHandler
from asyncssh.stream import SSHServerStreamSession

from eftgw.sftp import asyncssh_compat as compat

pytestmark = pytest.mark.once  # asyncssh's internals, no gateway: the backend does not matter here


def test_the_installed_asyncssh_is_the_tested_one() -> None:
    """The pinned asyncssh is one the compatibility module was checked against."""
    compat.require_tested_version()


def test_another_asyncssh_version_is_refused_with_a_clear_message() -> None:
    """An untested version stops the SFTP service at start, naming both versions."""
    with pytest.raises(compat.UntestedAsyncsshVersion, match=r"asyncssh 9\.9\.9 is installed.*2\.24\.1"):
        compat.require_tested_version("9.9.9")


def test_the_sftp_request_loop_internals_are_shaped_as_used() -> None:
    """``SFTPServerHandler``: ``_extensions`` (name, value) byte pairs, ``_packet_handlers`` keyed by packet
    type and extension name, ``_cleanup(exc)`` and ``run()`` coroutines, and
    ``__init__(server, reader, writer, sftp_version)``."""
    assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in SFTPServerHandler._extensions)
    names = {name for name, _ in SFTPServerHandler._extensions}
    assert {b"posix-rename@openssh.com", b"fsync@openssh.com", b"limits@openssh.com"} <= names
    handlers = SFTPServerHandler._packet_handlers
    assert FXP_WRITE in handlers and b"limits@openssh.com" in handlers
    assert inspect.iscoroutinefunction(SFTPServerHandler._cleanup)
    assert list(inspect.signature(SFTPServerHandler._cleanup).parameters) == ["self", "exc"]
    assert inspect.iscoroutinefunction(SFTPServerHandler.run)
    assert list(inspect.signature(SFTPServerHandler.__init__).parameters)[:5] == [
        "self",
        "server",
        "reader",
        "writer",
        "sftp_version",
    ]


def test_the_gateway_handler_replaces_only_what_it_means_to() -> None:
    """Our handler keeps asyncssh's handlers for every packet type but WRITE, and offers only the supported
    extensions."""
    ours = compat._GatewaySFTPHandler._packet_handlers
    for key, handler in SFTPServerHandler._packet_handlers.items():
        if isinstance(key, int) and key != FXP_WRITE:
            assert ours[key] is handler
    assert {name for name, _ in compat._GatewaySFTPHandler._extensions} <= {
        *compat._SUPPORTED_EXTENSIONS,
        b"newline",
        b"vendor-id",
    }


def test_the_stream_session_internals_are_shaped_as_used() -> None:
    """``SSHServerStreamSession.__init__(handler_factory, sftp_factory, sftp_version, allow_scp)`` and the
    ``_chan``/``_conn``/``_encoding`` attributes it sets."""
    params = list(inspect.signature(SSHServerStreamSession.__init__).parameters)
    assert params[:5] == ["self", "session_factory", "sftp_factory", "sftp_version", "allow_scp"]
    session = compat.SFTPOnlySession(lambda chan: asyncssh.SFTPServer(chan))
    for attribute in ("_chan", "_conn", "_encoding"):
        assert hasattr(session, attribute), attribute


def test_strict_kex_is_read_from_the_connection_attribute_asyncssh_sets() -> None:
    """asyncssh's connection keeps the strict-kex outcome in ``_strict_kex`` (set in its constructor)."""
    source = inspect.getsource(asyncssh.connection.SSHConnection.__init__)
    assert "self._strict_kex" in source

    class Conn:
        _strict_kex = True

    assert compat.strict_kex_negotiated(Conn())  # type: ignore[arg-type]


def test_a_wrapped_signature_check_sees_the_outcome_of_the_keys_own_verify() -> None:
    """``wrap_signature_check`` routes the key's ``verify`` through our check, which can call the original."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = asyncssh.import_public_key(key.export_public_key())
    seen: list[bool] = []

    def check(data: bytes, sig: bytes, verify: object) -> bool:
        result = bool(verify(data, sig))  # type: ignore[operator]
        seen.append(result)
        return result

    compat.wrap_signature_check(public, check)
    signature = key.sign(b"data", b"ssh-ed25519")
    assert public.verify(b"data", signature) is True
    assert public.verify(b"other", signature) is False
    assert seen == [True, False]
