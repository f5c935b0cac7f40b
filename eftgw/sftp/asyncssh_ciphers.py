"""The packet ciphers chacha20-poly1305@openssh.com and aes*-gcm@openssh.com for asyncssh's server
connections, item 5 of :mod:`eftgw.sftp.asyncssh_compat` (which documents the asyncssh internals they rely
on). Each decrypts a packet's length, and then the packet in one call from a view of the socket read, for
:func:`eftgw.sftp.asyncssh_data_path.recv_whole`; :func:`install_packet_ciphers` puts them in asyncssh's
table of ciphers."""

from __future__ import annotations

import sys
import threading
from typing import Any, Self

from asyncssh import encryption as _encryption
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from cryptography.hazmat.primitives.poly1305 import Poly1305

ARENA = 256 * 1024
"""The size of the buffers that whole packets are decrypted into (:class:`Arenas`): eight of the 32 KiB
packets OpenSSH's client sends."""
ARENA_POOL = 16
"""How many arenas the process keeps for reuse (4 MiB), whichever connection used them last."""


def _refs_while_scanned() -> int:
    """The references an arena in the pool has, seen from the pool's scan, when nothing else holds it."""
    pool = [bytearray(1)]
    for arena in pool:
        return sys.getrefcount(arena)
    raise AssertionError("unreachable")


_FREE = _refs_while_scanned()


class Arenas:
    """Reusable buffers that whole packets are decrypted into, in place of a new ``bytes`` per packet.

    ``cryptography`` allocates the output of ``AESGCM.decrypt`` and ``CipherContext.update`` zeroed (under
    callgrind, the zeroing was 12% of the event loop's instructions with aes128-gcm); ``decrypt_into`` and
    ``update_into`` write into a buffer given. A connection's cipher decrypts its packets one after the other
    into the arena it holds (:meth:`take` gives a fresh one when the next packet does not fit); what is
    delivered is a view of the arena, kept until the session joined the request it belongs to. An arena
    goes back to use only when nothing refers to it any more: every view of it holds a reference to it
    (through the buffer export of the ``memoryview`` it was cut from), so an arena whose reference count is
    what the pool's own scan gives is free. The pool is shared by the process (at most ``ARENA_POOL``
    arenas; more are made when all are in use, and go with their last view) and guarded by a lock, as
    gateways of several event loops may run in one process (tests)."""

    def __init__(self, size: int = ARENA, pool: int = ARENA_POOL) -> None:
        self.size = size
        self.limit = pool
        self.made = 0  # arenas made, and taken again (for tests and the curious)
        self.reused = 0
        self._pool: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, at_least: int) -> memoryview:
        """A view of a whole free arena of at least ``at_least`` bytes."""
        with self._lock:
            for arena in self._pool:
                if sys.getrefcount(arena) == _FREE and len(arena) >= at_least:
                    self.reused += 1
                    return memoryview(arena)
            fresh = bytearray(max(at_least, self.size))
            self.made += 1
            if len(self._pool) < self.limit and len(fresh) == self.size:
                self._pool.append(fresh)
            return memoryview(fresh)


ARENAS = Arenas()


class _Output:
    """The arena a connection's cipher decrypts its whole packets into, and how much of it is used."""

    __slots__ = ("_at", "_view")

    def __init__(self) -> None:
        self._view = memoryview(b"")
        self._at = 0

    def next(self, size: int) -> memoryview:
        """Room for the next packet's ``size`` decrypted bytes, after the last packet's."""
        start = self._at
        end = start + size
        if end > len(self._view):
            self._view = ARENAS.take(size)
            start, end = 0, size
        self._at = end
        return self._view[start:end]


_COUNTER_0 = bytes(8)  # ChaCha20's 64-bit block counter (little-endian) at 0, before the 64-bit nonce
_ONE_BLOCK = bytes(64)
_GCM_TAG = 16


class _Aead:
    """What both ciphers share: asyncssh builds them with ``new`` (the MAC arguments do not apply to an AEAD
    cipher) and takes a packet from ``decrypt_packet``, here the sum of ``decrypt_parts``."""

    ignore_before_packets = False  # see eftgw.sftp.asyncssh_data_path.send_packet

    def __init__(self, key: bytes, iv: bytes) -> None:
        raise NotImplementedError

    @classmethod
    def new(
        cls,
        cipher_name: str,
        key: bytes,
        iv: bytes,
        mac_alg: bytes = b"",
        mac_key: bytes = b"",
        etm: bool = False,
    ) -> Self:
        return cls(key, iv)

    def decrypt_parts(
        self, seq: int, first: bytes, rest: bytes | memoryview, header_len: int, mac: bytes | memoryview
    ) -> tuple[bytes, bytes] | None:
        raise NotImplementedError

    def decrypt_packet(
        self, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
    ) -> bytes | None:
        parts = self.decrypt_parts(seq, first, rest, header_len, mac)
        return None if parts is None else parts[0] + parts[1]  # b"" + x is x itself, no copy


class _ChachaPoly(_Aead, _encryption.ChachaEncryption):
    """OpenSSH's chacha20-poly1305: the length under K_1 (block 0), the Poly1305 key from block 0 of K_2 and
    the payload from block 1 of K_2, nonce = the packet's sequence number; the tag covers length + payload."""

    def __init__(self, key: bytes, iv: bytes) -> None:  # asyncssh: ChachaCipher(key); no IV
        half = len(key) // 2
        self._main = self._context(key[:half])
        self._length = self._context(key[half:])
        self._output = _Output()

    @staticmethod
    def _context(key: bytes) -> CipherContext:
        """One ChaCha20 context per key, moved to each packet's nonce by ``reset_nonce`` (building a new
        context costs ten times as much)."""
        return Cipher(ChaCha20(key, bytes(16)), mode=None).encryptor()

    @staticmethod
    def _at(stream: CipherContext, seq: int) -> CipherContext:
        stream.reset_nonce(_COUNTER_0 + seq.to_bytes(8, "big"))
        return stream

    def _payload_stream(self, seq: int) -> tuple[CipherContext, bytes]:
        """The payload's stream (at block 1) and the packet's Poly1305 key (block 0)."""
        stream = self._at(self._main, seq)
        return stream, stream.update(_ONE_BLOCK)[:32]

    def encrypt_packet(self, seq: int, header: bytes, packet: bytes) -> tuple[bytes, bytes]:
        header = self._at(self._length, seq).update(header)
        stream, poly_key = self._payload_stream(seq)
        wire = header + stream.update(packet)
        return wire, Poly1305.generate_tag(poly_key, wire)

    def decrypt_header(self, seq: int, first_block: bytes, header_len: int) -> tuple[bytes, bytes]:
        return first_block, self._at(self._length, seq).update(first_block[:header_len])

    def packet_length(self, seq: int, header: bytes | memoryview) -> int:
        """The length field of packet ``seq`` from its first 4 bytes (``asyncssh_data_path.recv_whole``)."""
        return int.from_bytes(self._at(self._length, seq).update(header), "big")

    def decrypt_whole(self, seq: int, packet: memoryview, macsize: int) -> memoryview | None:
        """The whole packet ``seq`` as it came (length, encrypted packet, tag), decrypted from the padding
        length on (what ``decrypt_packet`` returns) into the connection's arena; None if the tag is wrong
        (then nothing is decrypted)."""
        stream, poly_key = self._payload_stream(seq)
        try:
            Poly1305.verify_tag(poly_key, packet[:-macsize], bytes(packet[-macsize:]))
        except InvalidSignature:
            return None
        out = self._output.next(len(packet) - 4 - macsize)
        stream.update_into(packet[4:-macsize], out)
        return out

    def decrypt_parts(
        self, seq: int, first: bytes, rest: bytes | memoryview, header_len: int, mac: bytes | memoryview
    ) -> tuple[bytes, bytes] | None:
        """The packet as two parts, the first block's and the rest's (their sum is what ``decrypt_packet``
        returns), without joining them."""
        stream, poly_key = self._payload_stream(seq)
        tag = Poly1305(poly_key)
        tag.update(first)
        tag.update(rest)
        try:
            tag.verify(bytes(mac))
        except InvalidSignature:
            return None
        return stream.update(first[header_len:]), stream.update(rest)


class _AesGcm(_Aead, _encryption.GCMEncryption):
    """AES-GCM as RFC 5647 uses it (the length as associated data, the invocation counter in the IV's last 8
    bytes counting packets), with one ``AESGCM`` object for the key's lifetime."""

    def __init__(self, key: bytes, iv: bytes) -> None:  # asyncssh: GCMCipher(cipher_name, key, iv)
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._invocation = int.from_bytes(iv[4:], "big")
        self._output = _Output()

    def _next_iv(self) -> bytes:
        iv = self._fixed + self._invocation.to_bytes(8, "big")
        self._invocation = (self._invocation + 1) & 0xFFFFFFFFFFFFFFFF
        return iv

    def encrypt_packet(self, seq: int, header: bytes, packet: bytes) -> tuple[bytes, bytes]:
        data = self._aead.encrypt(self._next_iv(), packet, header)
        return header + data[:-_GCM_TAG], data[-_GCM_TAG:]

    def packet_length(self, seq: int, header: bytes | memoryview) -> int:
        """The length field of a packet from its first 4 bytes (sent in clear, as associated data)."""
        return int.from_bytes(header, "big")

    def decrypt_whole(self, seq: int, packet: memoryview, macsize: int) -> memoryview | None:
        """The whole packet as it came (length, encrypted packet, tag), decrypted from the padding length
        on into the connection's arena, without joining anything: the tag follows the ciphertext, as
        ``AESGCM.decrypt_into`` wants it. None if the tag is wrong (what the arena holds then is never
        handed on)."""
        iv = self._next_iv()
        out = self._output.next(len(packet) - 4 - _GCM_TAG)
        try:
            self._aead.decrypt_into(iv, packet[4:], packet[:4], out)
        except InvalidTag:
            return None
        return out

    def decrypt_parts(
        self, seq: int, first: bytes, rest: bytes | memoryview, header_len: int, mac: bytes | memoryview
    ) -> tuple[bytes, bytes] | None:
        """The packet as ``(b"", packet)``, the shape ``_ChachaPoly.decrypt_parts`` returns."""
        iv = self._next_iv()
        try:
            return b"", self._aead.decrypt(iv, b"".join((first[header_len:], rest, mac)), first[:header_len])
        except InvalidTag:
            return None


def install_packet_ciphers() -> None:
    """Use the ciphers above for chacha20-poly1305 and AES-GCM in this process (see 5. above); idempotent."""
    params: Any = _encryption._enc_params
    for name, (kind, cipher_name) in list(params.items()):
        if kind is _encryption.ChachaEncryption:
            params[name] = (_ChachaPoly, cipher_name)
        elif kind is _encryption.GCMEncryption:
            params[name] = (_AesGcm, cipher_name)
