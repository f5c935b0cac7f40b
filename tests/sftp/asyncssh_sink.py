"""An asyncssh server on a loopback port that runs a given session handler, for the tests of the asyncssh
internals the gateway relies on (its receive path, its replies)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncssh


class Sink(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: this server only counts bytes


@contextlib.asynccontextmanager
async def sink_connection(
    sink: Callable[[asyncssh.SSHServerProcess[bytes]], Awaitable[None]], cipher: str
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """A client connection to a loopback asyncssh server that runs ``sink`` for each session, both with
    only ``cipher``; the server is closed when the block ends."""
    server = await asyncssh.create_server(
        Sink, "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        process_factory=sink, encoding=None, encryption_algs=[cipher],
    )  # fmt: skip
    try:
        port = server.sockets[0].getsockname()[1]
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, username="u", encryption_algs=[cipher]
        ) as conn:
            yield conn
    finally:
        server.close()
        await server.wait_closed()
