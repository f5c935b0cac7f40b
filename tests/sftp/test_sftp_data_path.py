"""Channel data of SFTP sessions reaches the session as views of the decrypted packets
(eftgw/sftp/asyncssh_data_path.py), with real OpenSSH and paramiko clients; every other packet keeps
asyncssh's own path."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHServerConnection
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_IGNORE, MSG_USERAUTH_SUCCESS
from sftp_support import ClientKey, GatewayThread, openssh_sftp, paramiko_sftp, sha256

from eftgw.sftp import asyncssh_ciphers, asyncssh_data_path, asyncssh_requests
from eftgw.sftp import asyncssh_compat as compat
from eftgw.sftp.buffer import BufferedUpload


class _Counts:
    def __init__(self) -> None:
        self.views = 0  # data handed to a channel as a view, by the gateway's path (deliver)
        self.accepted = 0  # of those, handed on through asyncssh's channel ``_accept_data`` (window adjusts)
        self.asyncssh_data = 0  # data packets parsed by asyncssh's ``_process_data``
        self.asyncssh_packets = 0  # packets through asyncssh's ``_recv_packet``
        self.whole = 0  # data packets taken whole (recv_whole: header step included), from a view of a read
        self.reads: list[int] = []  # the sizes of the socket reads of server connections
        self.sent: list[int] = []  # the types of the packets asyncssh's ``send_packet`` sent, in order


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> _Counts:
    seen = _Counts()
    accept, process_data = SSHChannel._accept_data, SSHChannel._process_data
    original = asyncssh_data_path._ASYNCSSH_RECV_PACKET

    def counting_accept(self: Any, data: Any, datatype: Any = None) -> None:
        seen.accepted += isinstance(data, memoryview)
        accept(self, data, datatype)

    deliver = asyncssh_data_path.deliver

    def counting_deliver(conn: Any, channel: Any, data: memoryview) -> None:
        seen.views += isinstance(data, memoryview)
        deliver(conn, channel, data)

    monkeypatch.setattr(asyncssh_data_path, "deliver", counting_deliver)

    def counting_process(self: Any, *args: Any) -> None:
        seen.asyncssh_data += 1
        process_data(self, *args)

    def counting_recv(self: Any) -> bool:
        seen.asyncssh_packets += 1
        return bool(original(self))

    send = asyncssh_data_path._ASYNCSSH_SEND_PACKET

    def counting_send(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
        seen.sent.append(pkttype)
        send(self, pkttype, *args, handler=handler)

    monkeypatch.setattr(asyncssh_data_path, "_ASYNCSSH_SEND_PACKET", counting_send)
    recv_whole = asyncssh_data_path.recv_whole

    def counting_whole(self: Any, queue: Any) -> bool | None:
        before = seen.views
        took = recv_whole(self, queue)
        seen.whole += seen.views - before  # the data packets it handed on (it goes on while they come)
        return took

    monkeypatch.setattr(asyncssh_data_path, "recv_whole", counting_whole)
    append = compat._ReceiveQueue.append

    def counting_append(self: Any, data: bytes) -> None:
        seen.reads.append(len(data))
        append(self, data)

    monkeypatch.setattr(compat._ReceiveQueue, "append", counting_append)
    monkeypatch.setattr(SSHChannel, "_accept_data", counting_accept)
    monkeypatch.setattr(SSHChannel, "_process_data", counting_process)
    monkeypatch.setitem(SSHChannel._packet_handlers, 94, counting_process)  # type: ignore[attr-defined]
    monkeypatch.setattr(asyncssh_data_path, "_ASYNCSSH_RECV_PACKET", counting_recv)
    return seen


@pytest.mark.parametrize("cipher", ["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"])
def test_an_openssh_put_reaches_the_session_as_views_and_lands_intact(
    cipher: str, counts: _Counts, gateway: GatewayThread, tmp_path: Path, client_key: ClientKey
) -> None:
    """A 24 MiB ``put`` with either gateway cipher: its channel data packets take the view path (asyncssh's
    data parsing sees none of them, its packet path the other packets); each is taken in one step
    (``recv_whole``: no separate header step; decrypted from a view of the socket read it lies in, or joined
    once, into an arena that earlier packets used and left), the file lands with its SHA-256, ``get``
    returns it byte for byte, and no ``SSH_MSG_IGNORE`` goes out before the replies. The gateway reads its
    socket at most ``SOCKET_READ`` (256 KiB) at a time, and while the client sends faster than it parses,
    it reads that much."""
    assert SSHServerConnection._recv_packet is asyncssh_data_path.recv_packet
    account = gateway.account(keys=[client_key.public_line])
    data = os.urandom(24 * 1024 * 1024 + 5)
    (tmp_path / "big.bin").write_bytes(data)
    reused = asyncssh_ciphers.ARENAS.reused
    done = openssh_sftp(
        gateway, account, "put big.bin\nget big.bin back.bin\n", cwd=tmp_path, key=client_key,
        extra=["-c", cipher],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "back.bin").read_bytes() == data
    assert gateway.file_named("big.bin").sha256 == sha256(data)
    assert counts.views >= 24 * 1024 * 1024 // (256 * 1024)  # at most 256 KiB per packet
    assert counts.asyncssh_data == 0
    # in one step to the session's buffer; asyncssh's _accept_data only for the window adjusts (one per 4 MiB)
    assert counts.accepted <= 24 * 1024 * 1024 // (4 * 1024 * 1024) + 4, (counts.accepted, counts.views)
    assert counts.whole >= counts.views  # each data packet in one step (header, decryption, delivery)
    assert max(counts.reads) == compat.SOCKET_READ == 256 * 1024, sorted(counts.reads)[-5:]
    assert counts.asyncssh_packets > 0  # key exchange, login, channel requests: asyncssh's path
    assert asyncssh_ciphers.ARENAS.reused > reused  # decrypted into arenas freed by earlier packets
    replies = counts.sent.count(MSG_CHANNEL_DATA)
    assert replies > 0 and MSG_IGNORE not in counts.sent  # no SSH_MSG_IGNORE before them


def test_paramiko_with_a_cipher_of_asyncssh_still_uploads_through_asyncssh(
    counts: _Counts, gateway: GatewayThread
) -> None:
    """paramiko (AES-CTR with an HMAC: a cipher the gateway leaves to asyncssh) uploads byte for byte; all
    its packets, data included, go through asyncssh's own path, and every packet the gateway sends after the
    login follows an ``SSH_MSG_IGNORE``, as asyncssh sends them for such ciphers."""
    account = gateway.account()
    data = os.urandom(3 * 1024 * 1024 + 1)
    with paramiko_sftp(gateway.port, account) as (transport, client):
        assert "ctr" in transport.remote_cipher or "cbc" in transport.remote_cipher
        with client.open("p.bin", "wb") as handle:
            handle.set_pipelined(True)
            handle.write(data)
    assert gateway.file_named("p.bin").sha256 == sha256(data)
    assert counts.views == 0 and counts.whole == 0 and counts.accepted == 0
    assert counts.asyncssh_data >= 3 * 1024 * 1024 // (64 * 1024)
    after_login = counts.sent[counts.sent.index(MSG_USERAUTH_SUCCESS) :]
    assert after_login.count(MSG_IGNORE) == len(after_login) // 2  # one before each packet


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
def test_an_openssh_puts_write_data_reaches_the_store_as_joined_once(
    cipher: str,
    monkeypatch: pytest.MonkeyPatch,
    gateway: GatewayThread,
    tmp_path: Path,
    client_key: ClientKey,
) -> None:
    """During a 6 MiB ``put`` the data of each write request is joined once from the packets it came in
    (``request_packet``) and that very ``bytes`` is what the write buffer hands the core (not joined again
    into 1 MiB pieces, and kept by the body pipeline as it is); the file lands with its SHA-256."""
    joined: list[bytes] = []  # the data of each write request, as request_packet joined it
    handed: list[bytes | memoryview] = []  # the pieces the write buffer handed the core
    request_packet, part = asyncssh_requests.request_packet, BufferedUpload._part

    def recording_request_packet(pieces: list[bytes | memoryview]) -> Any:
        packet = request_packet(pieces)
        if isinstance(packet, asyncssh_requests.WriteRequest):
            joined.append(packet.data)
        return packet

    async def recording_part(self: BufferedUpload) -> AsyncIterator[bytes]:
        async for piece in part(self):
            handed.append(piece)
            yield piece

    monkeypatch.setattr(asyncssh_requests, "request_packet", recording_request_packet)
    monkeypatch.setattr(BufferedUpload, "_part", recording_part)
    account = gateway.account(keys=[client_key.public_line])
    data = os.urandom(6 * 1024 * 1024 + 5)
    (tmp_path / "six.bin").write_bytes(data)
    done = openssh_sftp(gateway, account, "put six.bin\n", cwd=tmp_path, key=client_key, extra=["-c", cipher])
    assert done.returncode == 0, done.stderr
    assert gateway.file_named("six.bin").sha256 == sha256(data)
    assert b"".join(handed) == data
    assert len(joined) >= len(data) // (256 * 1024)  # each write request, at most 256 KiB
    by_id = {id(piece) for piece in joined}
    assert [
        (len(p), type(p) is bytes, id(p) in by_id)
        for p in handed
        if type(p) is not bytes or id(p) not in by_id
    ] == [], [(len(p), type(p) is bytes, id(p) in by_id) for p in handed]
