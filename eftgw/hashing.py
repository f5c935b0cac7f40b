"""Digests: the tus ``Upload-Checksum`` algorithms and the whole-file digests every file gets.

A whole-file digest is SHA-256 (what customers compare with ``sha256sum``) plus xxh128 (fast, for internal
integrity checks). ``Repr-Digest`` (RFC 9530) carries the SHA-256 on download. Their running state can be
exported (:meth:`FileDigests.export`), so that any node continues an upload's digests without re-reading it.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from collections.abc import Callable
from typing import Protocol

import xxhash

from eftgw import digest_state
from eftgw.digest_state import ResumableSha256, ResumableXxh128, StateError
from eftgw.errors import BadRequest, UnsupportedChecksum


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...
    def copy(self) -> Hasher: ...


class Crc32:
    """CRC-32 (as zlib computes it) with the hashlib interface; digest is 4 bytes big-endian."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def update(self, data: bytes, /) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")

    def copy(self) -> Crc32:
        return Crc32(self.value)


CHECKSUM_ALGORITHMS: dict[str, Callable[[], Hasher]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
    "md5": hashlib.md5,
    "crc32": Crc32,
    "xxh3": xxhash.xxh3_64,
    "xxh64": xxhash.xxh64,
    "xxh128": xxhash.xxh3_128,
    "xxh32": xxhash.xxh32,
}


class ChunkChecksum:
    """An expected checksum of one request body, parsed from ``Upload-Checksum: <algorithm> <base64>``."""

    def __init__(self, algorithm: str, expected: bytes) -> None:
        self.algorithm = algorithm
        self.expected = expected
        self.hasher = CHECKSUM_ALGORITHMS[algorithm]()

    @classmethod
    def parse(cls, header: str) -> ChunkChecksum:
        parts = header.strip().split(" ")
        if len(parts) != 2:
            raise BadRequest("Upload-Checksum must be '<algorithm> <base64 digest>'.")
        algorithm, encoded = parts[0].lower(), parts[1]
        if algorithm not in CHECKSUM_ALGORITHMS:
            raise UnsupportedChecksum(
                f"Checksum algorithm {algorithm!r} is not supported; use one of "
                + ", ".join(CHECKSUM_ALGORITHMS)
                + "."
            )
        try:
            expected = base64.b64decode(encoded, validate=True)
        except ValueError as exc:
            raise BadRequest("The Upload-Checksum digest is not valid base64.") from exc
        return cls(algorithm, expected)

    def update(self, data: bytes) -> None:
        self.hasher.update(data)

    def matches(self) -> bool:
        return self.hasher.digest() == self.expected


class FileDigests:
    """Running SHA-256 and xxh128 of a whole file, exportable so that any node can continue it.

    With :func:`eftgw.digest_state.available`, the hashers are the resumable ones and :meth:`export` gives
    the state to save with the upload's durable offset; :meth:`restore` continues from it. Otherwise they are
    hashlib's and ``xxhash``'s, and :meth:`export` gives ``None``.

    The exported state, version 1: ``EDG`` ``\\x01``, the number of bytes hashed (u64, big-endian), the
    length of the SHA-256 state (u8), the SHA-256 state, the XXH3-128 state (both as
    :mod:`eftgw.digest_state` exports them), and a CRC-32 of all that.
    """

    def __init__(self, sha256: Hasher | None = None, xxh128: Hasher | None = None, size: int = 0) -> None:
        if sha256 is None or xxh128 is None:
            sha256, xxh128 = _new_hashers()
        self.sha256 = sha256
        self.xxh128 = xxh128
        self.size = size

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        self.xxh128.update(data)
        self.size += len(data)

    def copy(self) -> FileDigests:
        return FileDigests(self.sha256.copy(), self.xxh128.copy(), self.size)

    @property
    def sha256_hex(self) -> str:
        return self.sha256.digest().hex()

    @property
    def xxh128_hex(self) -> str:
        return self.xxh128.digest().hex()

    def export(self) -> bytes | None:
        """The state to save beside the offset :attr:`size`, or ``None`` where it cannot be exported."""
        if not isinstance(self.sha256, ResumableSha256) or not isinstance(self.xxh128, ResumableXxh128):
            return None
        sha = self.sha256.export()
        body = _STATE_HEADER.pack(_STATE_MAGIC, self.size, len(sha)) + sha + self.xxh128.export()
        return body + zlib.crc32(body).to_bytes(4, "big")

    @classmethod
    def restore(cls, state: bytes, size: int) -> FileDigests:
        """Continue from an exported state, which must be of exactly ``size`` bytes.

        Raises :class:`StateError` if it is not (a state older or newer than the durable offset), if it is
        garbled or of another version, or if resumable hashers are not available here.
        """
        if not digest_state.available():
            raise StateError("resumable hashers are not available on this node")
        if len(state) < _STATE_HEADER.size + 4 or zlib.crc32(state[:-4]) != int.from_bytes(state[-4:], "big"):
            raise StateError("the digest state is garbled")
        magic, hashed, sha_length = _STATE_HEADER.unpack_from(state, 0)
        if magic != _STATE_MAGIC:
            raise StateError(f"unknown digest state version {magic!r}")
        if hashed != size:
            raise StateError(f"the digest state covers {hashed} bytes, the upload has {size}")
        sha_end = _STATE_HEADER.size + sha_length
        sha256 = ResumableSha256.restore(state[_STATE_HEADER.size : sha_end])
        xxh128 = ResumableXxh128.restore(state[sha_end:-4])
        if sha256.size != size or xxh128.size != size:
            raise StateError("the digest state's hashers disagree with its size")
        return cls(sha256, xxh128, size)


_STATE_MAGIC = b"EDG\x01"
_STATE_HEADER = struct.Struct(">4sQB")


def _new_hashers() -> tuple[Hasher, Hasher]:
    if digest_state.available():
        return ResumableSha256(), ResumableXxh128()
    return hashlib.sha256(), xxhash.xxh3_128()


def repr_digest(sha256_hex: str) -> str:
    """The RFC 9530 ``Repr-Digest`` value for a SHA-256 given in hex."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode() + ":"


__all__ = [
    "CHECKSUM_ALGORITHMS",
    "ChunkChecksum",
    "Crc32",
    "FileDigests",
    "Hasher",
    "StateError",
    "repr_digest",
]
