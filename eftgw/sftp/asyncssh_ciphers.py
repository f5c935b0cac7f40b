"""The packet ciphers chacha20-poly1305@openssh.com and aes*-gcm@openssh.com for asyncssh's server
connections, item 5 of :mod:`eftgw.sftp.asyncssh_compat` (which documents the asyncssh internals they rely
on). Each decrypts a packet's length, and then the packet in one call from a view of the socket read, for
:func:`eftgw.sftp.asyncssh_data_path.recv_whole`; :func:`install_packet_ciphers` puts them in asyncssh's
table of ciphers."""

from __future__ import annotations

from typing import Any, Self

from asyncssh import encryption as _encryption
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from cryptography.hazmat.primitives.poly1305 import Poly1305

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

    def decrypt_whole(self, seq: int, packet: memoryview, macsize: int) -> bytes | None:
        """The whole packet ``seq`` as it came (length, encrypted packet, tag), decrypted from the padding
        length on (what ``decrypt_packet`` returns); None if the tag is wrong."""
        stream, poly_key = self._payload_stream(seq)
        try:
            Poly1305.verify_tag(poly_key, packet[:-macsize], bytes(packet[-macsize:]))
        except InvalidSignature:
            return None
        return stream.update(packet[4:-macsize])

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

    def decrypt_whole(self, seq: int, packet: memoryview, macsize: int) -> bytes | None:
        """The whole packet as it came (length, encrypted packet, tag), decrypted from the padding length
        on, without joining anything: the tag follows the ciphertext, as ``AESGCM.decrypt`` wants it."""
        iv = self._next_iv()
        try:
            return self._aead.decrypt(iv, packet[4:], packet[:4])
        except InvalidTag:
            return None

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
