"""PROXY protocol v2 on a listener: the client's own address when a load balancer passes TCP through.

A balancer in TCP passthrough (HAProxy ``send-proxy-v2``) opens its own connection to a node, so the node sees
the balancer's address for every client. With PROXY protocol the balancer first writes a binary header
naming the client's address, then relays the client's bytes (TLS, SSH) unchanged.

:class:`ProxyProtocolListener` accepts connections itself and, per connection:

- from a **trusted proxy** (``EFTGW_TRUSTED_PROXIES``): reads exactly the v2 header, no byte more, and refuses
  the connection (a clean close) if the header is missing, malformed or v1. ``LOCAL`` headers (the
  balancer's own health checks) keep the balancer's address.
- from **any other address**: the connection is the client's own. On a listener whose clients speak first
  (HTTPS), one that starts with a PROXY header is refused: only a trusted proxy may name an address. (On
  SSH, whose server greets first, such a connection ends anyway: asyncssh refuses any first line that is
  not an SSH version.)

It then hands the socket to the real server (aiohttp, asyncssh) as an already-accepted socket whose
``getpeername()`` answers the client's address, so ``request.remote``, the SFTP connection's
``peername`` and everything downstream (login defender, audit events, logs) see the client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

log = logging.getLogger("eftgw.proxy")

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
HEADER_TIMEOUT = 10.0  # seconds a trusted proxy has to send the whole header
MAX_ADDRESS_BLOCK = 4096  # addresses plus TLVs; HAProxy sends far less

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PeerAddress = tuple[Any, ...]  # what socket.getpeername() answers for an IP socket: (host, port[, ...])
Handoff = Callable[[socket.socket], Awaitable[object]]


class ProxyHeaderError(Exception):
    """The connection does not start with an acceptable PROXY v2 header (the connection is refused)."""


@dataclasses.dataclass(frozen=True)
class ProxyHeader:
    """A parsed v2 header. ``source`` is the client's ``(host, port)``; ``None`` for ``LOCAL`` or
    address families that carry no IP address (the connection then keeps its own peer address)."""

    command: str  # "PROXY" or "LOCAL"
    source: tuple[str, int] | None
    length: int  # bytes of the whole header


def parse_networks(values: Iterable[str]) -> list[IPNetwork]:
    """CIDRs (or single addresses) as networks; raises ``ValueError`` for anything else."""
    return [ipaddress.ip_network(value.strip(), strict=False) for value in values]


def is_trusted(address: str, networks: Sequence[IPNetwork]) -> bool:
    """Whether ``address`` (IPv4, IPv6, or IPv4-mapped IPv6) lies in one of ``networks``."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def header_length(fixed: bytes) -> int:
    """The whole header's length, from its first 16 bytes; raises :class:`ProxyHeaderError` if they are not
    the start of a PROXY v2 header."""
    if fixed.startswith(V1_PREFIX):
        raise ProxyHeaderError("PROXY protocol v1 is not accepted; send v2 (HAProxy: send-proxy-v2)")
    if len(fixed) < 16 or not fixed.startswith(SIGNATURE):
        raise ProxyHeaderError("the connection does not start with a PROXY v2 header")
    if fixed[12] >> 4 != 2:
        raise ProxyHeaderError(f"unknown PROXY protocol version {fixed[12] >> 4}")
    length = int.from_bytes(fixed[14:16], "big")
    if length > MAX_ADDRESS_BLOCK:
        raise ProxyHeaderError(f"PROXY v2 header too long ({length} bytes of addresses)")
    return 16 + length


def parse_header(data: bytes) -> ProxyHeader:
    """Parse one complete v2 header (``data`` is exactly :func:`header_length` bytes)."""
    length = header_length(data[:16])
    if len(data) != length:
        raise ProxyHeaderError("truncated PROXY v2 header")
    command = data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    body = data[16:]
    if command == 0x0:
        return ProxyHeader("LOCAL", None, length)
    if command != 0x1:
        raise ProxyHeaderError(f"unknown PROXY v2 command {command}")
    if family == 0x1 and transport == 0x1:  # TCP over IPv4: src, dst, src port, dst port
        if len(body) < 12:
            raise ProxyHeaderError("PROXY v2 header too short for IPv4 addresses")
        host = str(ipaddress.IPv4Address(body[0:4]))
        (port,) = struct.unpack("!H", body[8:10])
        return ProxyHeader("PROXY", (host, port), length)
    if family == 0x2 and transport == 0x1:  # TCP over IPv6
        if len(body) < 36:
            raise ProxyHeaderError("PROXY v2 header too short for IPv6 addresses")
        ip6 = ipaddress.IPv6Address(body[0:16])
        host = str(ip6.ipv4_mapped or ip6)
        (port,) = struct.unpack("!H", body[32:34])
        return ProxyHeader("PROXY", (host, port), length)
    # UNSPEC, UNIX or datagram: the spec says to accept the connection and ignore the addresses.
    return ProxyHeader("PROXY", None, length)


def encode_header(source: tuple[str, int] | None, destination: tuple[str, int] | None = None) -> bytes:
    """A v2 header for TCP from ``source`` to ``destination`` (``LOCAL`` when ``source`` is None)."""
    if source is None:
        return SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0] if destination else ("::" if src.version == 6 else "0.0.0.0"))  # noqa: S104
    dport = destination[1] if destination else 0
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], dport)
    return SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


class ClientAddressSocket(socket.socket):
    """A connected socket whose ``getpeername()`` answers the client's address from the PROXY header.

    asyncio reads the peer address of an accepted socket once, through ``getpeername()``, when it builds the
    transport; aiohttp (``request.remote``) and asyncssh (the connection's ``peername``) take it from there.
    Everything else is the real socket (the file descriptor is taken over, not copied).
    """

    def __init__(self, sock: socket.socket, client: PeerAddress) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self.client = client

    def getpeername(self) -> PeerAddress:
        return self.client


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, count: int) -> bytes:
    """Read exactly ``count`` bytes (``recv`` never takes more than asked, so nothing after them is lost)."""
    data = bytearray()
    while len(data) < count:
        chunk = await loop.sock_recv(sock, count - len(data))
        if not chunk:
            raise ProxyHeaderError("the connection closed inside the PROXY header")
        data += chunk
    return bytes(data)


async def read_header(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> ProxyHeader:
    """Read and parse the v2 header at the start of ``sock``, consuming exactly its bytes."""
    fixed = await _recv_exactly(loop, sock, 16)
    rest = await _recv_exactly(loop, sock, header_length(fixed) - 16)
    return parse_header(fixed + rest)


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket, count: int) -> bytes:
    """The first bytes the peer sent, left in the socket for the real server to read."""
    readable = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: None if readable.done() else readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(sock.fileno())
    return sock.recv(count, socket.MSG_PEEK)


def looks_like_proxy_header(first: bytes) -> bool:
    """Whether the first bytes of a connection start a PROXY header (v2, or v1's ``PROXY ``)."""
    if first.startswith(V1_PREFIX):
        return True
    head = first[: len(SIGNATURE)]
    return len(head) >= 4 and SIGNATURE.startswith(head)


class ProxyProtocolListener(asyncio.AbstractServer):
    """A TCP listener that admits connections through PROXY protocol v2 rules, then hands each socket on.

    ``handoff`` receives the accepted socket (its ``getpeername()`` is the client's address) and runs the real
    protocol on it, e.g. ``loop.connect_accepted_socket`` or ``asyncssh.run_server``; it may keep running
    (asyncssh returns only after the login). ``client_speaks_first`` says whether this listener's protocol
    starts with the client (TLS, HTTP: an untrusted connection can be checked for a forged header).
    """

    def __init__(
        self,
        sock: socket.socket,
        handoff: Handoff,
        trusted: Sequence[IPNetwork],
        *,
        name: str,
        client_speaks_first: bool,
        log_connections: bool = False,
        header_timeout: float = HEADER_TIMEOUT,
        on_refused: Callable[[], object] | None = None,
    ) -> None:
        self._sock = sock
        self._handoff = handoff
        self._trusted = list(trusted)
        self._name = name
        self._client_speaks_first = client_speaks_first
        self._header_timeout = header_timeout
        self._log_connections = log_connections
        self._on_refused = on_refused
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        host: str,
        port: int,
        handoff: Handoff,
        trusted: Sequence[IPNetwork],
        *,
        name: str,
        client_speaks_first: bool,
        log_connections: bool = False,
        backlog: int = 256,
        header_timeout: float = HEADER_TIMEOUT,
    ) -> ProxyProtocolListener:
        """Bind ``host:port`` and start accepting."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, address = infos[0]
        sock = socket.create_server(address[:2], family=family, backlog=backlog)
        sock.setblocking(False)
        return cls.on_socket(
            sock,
            handoff,
            trusted,
            name=name,
            client_speaks_first=client_speaks_first,
            log_connections=log_connections,
            header_timeout=header_timeout,
        )

    @classmethod
    def on_socket(
        cls,
        sock: socket.socket,
        handoff: Handoff,
        trusted: Sequence[IPNetwork],
        *,
        name: str,
        client_speaks_first: bool,
        log_connections: bool = False,
        header_timeout: float = HEADER_TIMEOUT,
        on_refused: Callable[[], object] | None = None,
    ) -> ProxyProtocolListener:
        """Start accepting on a bound, listening, non-blocking ``sock``. ``on_refused`` is called for each
        accepted connection closed here, before the handoff (the SFTP listener gives back its budget)."""
        listener = cls(
            sock,
            handoff,
            trusted,
            name=name,
            client_speaks_first=client_speaks_first,
            log_connections=log_connections,
            header_timeout=header_timeout,
            on_refused=on_refused,
        )
        listener._accepting = asyncio.create_task(listener._accept_loop(), name=f"{name}-proxy-accept")
        return listener

    def get_port(self) -> int:
        port: int = self._sock.getsockname()[1]
        return port

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._accepting is not None and not self._accepting.done()

    def close(self) -> None:
        """Stop accepting and drop connections still being admitted (running ones are the server's)."""
        if self._accepting is not None:
            self._accepting.cancel()
        for task in self._tasks:
            task.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        pending = [t for t in (self._accepting, *self._tasks) if t is not None]
        if pending:
            await asyncio.wait(pending)

    async def _accept_loop(self) -> None:
        while True:
            try:
                conn, peer = await self._loop.sock_accept(self._sock)
            except OSError as exc:  # e.g. out of file descriptors: keep serving the connections we have
                log.warning("%s: accept failed: %s", self._name, exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            task = self._loop.create_task(self._admit(conn, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _admit(self, conn: socket.socket, peer: PeerAddress) -> None:
        try:
            client = await asyncio.wait_for(self._client_address(conn, peer), self._header_timeout)
        except (ProxyHeaderError, TimeoutError, OSError) as exc:
            reason = "no PROXY header in time" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("%s: connection from %s refused: %s", self._name, peer[0], reason)
            self._refuse(conn)
            return
        except asyncio.CancelledError:
            self._refuse(conn)
            raise
        handed: socket.socket = conn if client is peer else ClientAddressSocket(conn, client)
        if self._log_connections and client is not peer:  # not the balancer's own health checks
            log.info(
                "%s connection from %s through %s",
                self._name,
                client[0],
                peer[0],
                extra={"client": client[0]},
            )
        try:
            await self._handoff(handed)
        except asyncio.CancelledError:
            handed.close()
            raise
        except Exception as exc:  # a failed TLS handshake, an SSH client that gave up: the client's business
            log.debug("%s: connection from %s ended early: %r", self._name, client[0], exc)
            handed.close()

    def _refuse(self, conn: socket.socket) -> None:
        conn.close()
        if self._on_refused is not None:
            self._on_refused()

    async def _client_address(self, conn: socket.socket, peer: PeerAddress) -> PeerAddress:
        if is_trusted(str(peer[0]), self._trusted):
            header = await read_header(self._loop, conn)
            return peer if header.source is None else header.source
        if self._client_speaks_first:
            first = await _peek(self._loop, conn, len(SIGNATURE))
            if looks_like_proxy_header(first):
                raise ProxyHeaderError(f"a PROXY header from {peer[0]}, which is not a trusted proxy")
        return peer
