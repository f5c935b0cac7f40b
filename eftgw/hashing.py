"""Digests: the tus ``Upload-Checksum`` algorithms and the whole-file digests every file gets.

A whole-file digest is SHA-256 (what customers compare with ``sha256sum``) plus xxh128 (fast, for internal
integrity checks). ``Repr-Digest`` (RFC 9530) carries the SHA-256 on download.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable
from typing import Protocol

import xxhash

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
    """Running SHA-256 and xxh128 of a whole file, resumable across requests within one process."""

    def __init__(self, sha256: Hasher | None = None, xxh128: Hasher | None = None, size: int = 0) -> None:
        self.sha256 = sha256 or hashlib.sha256()
        self.xxh128 = xxh128 or xxhash.xxh3_128()
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


def repr_digest(sha256_hex: str) -> str:
    """The RFC 9530 ``Repr-Digest`` value for a SHA-256 given in hex."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode() + ":"
