"""How the S3 backend lays out an upload in progress: the part schedule and the commit record.

The bytes of an upload go to S3 once, as parts of a multipart upload *for the file's final key*
(``cases/<case>/<file>``); finishing the upload is one CompleteMultipartUpload, not a copy. Parts of an
unfinished multipart upload are invisible and S3 cannot tell which of them were acknowledged, so the staging
key ``K`` (``uploads/<case>/<upload>``) holds the *commit record*, one small object PUT on every commit:

- its body is one line of JSON (``Record``: the target key, the UploadId, the ETag and size of every committed
  part, ``base``, ``sealing``) followed by the *tail*: the committed bytes after the last full part, shorter
  than the next part. A commit is one PUT of this object, so it is atomic: parts uploaded after it are
  never part of the file unless a later commit lists them;
- its metadata ``x-amz-meta-eftgw-size`` is the committed size and ``x-amz-meta-eftgw-upload`` the UploadId,
  so a HEAD answers ``staging_size`` and the orphan sweep knows which multipart uploads are live.

``base`` is a prefix of the upload that already is a completed object at the target key: S3 cannot read
parts of an unfinished upload, so reading staging data back (a restart rebuilding digests, a truncate inside
the parts, a tus concatenation) first *seals* it: the committed parts are completed into the target object.
Later parts go to a new multipart upload whose first part numbers are reserved for copying the base back in
(``copy_ranges``) when the upload finally completes. Only these rare paths copy server-side.

Part sizes are fixed by part number so that every node cuts parts the same way without knowing the file's
length (tus creation-defer-length and SFTP do not say it): 16 MiB for parts 1 to 1,000, doubling every 1,000
parts up to 4 GiB. Files up to 46.9 GiB use parts of at most 32 MiB (which a writer keeps in memory; larger
ones are spooled, see :mod:`eftgw.storage.s3_writer`); 9,999 parts plus the tail hold more than the 5 TiB S3
allows for one object.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB

MIN_PART = 5 * MiB  # S3: every part but the last is at least this big
MAX_PART = 5 * GiB  # S3: no part is bigger
MAX_PARTS = 10_000  # S3: parts per multipart upload
MAX_OBJECT = 5 * TiB  # S3: the biggest object

BASE_PART = 16 * MiB
TIER = 1_000  # parts per size tier
MAX_DOUBLINGS = 8  # 16 MiB << 8 = 4 GiB
MAX_FULL_PARTS = MAX_PARTS - 1  # one part number is kept for the tail

SIZE_META = "eftgw-size"  # x-amz-meta-eftgw-size of the commit record: the committed size
UPLOAD_META = "eftgw-upload"  # x-amz-meta-eftgw-upload: the UploadId the record lists ("" for none)
DATA_SUFFIX = "/data"  # the target of staging data created without one (tus partial uploads)


def part_size(number: int) -> int:
    """The size of full part ``number`` (1-based, as S3 numbers parts)."""
    return BASE_PART << min((number - 1) // TIER, MAX_DOUBLINGS)


def copy_ranges(size: int) -> list[tuple[int, int]]:
    """(start, length) of the UploadPartCopy requests that copy ``size`` bytes: at most 5 GiB each and none
    but the last below 5 MiB."""
    ranges: list[tuple[int, int]] = []
    start = 0
    while start < size:
        remaining = size - start
        if remaining <= MAX_PART:
            length = remaining
        else:
            length = MAX_PART if remaining - MAX_PART >= MIN_PART else remaining - MIN_PART
        ranges.append((start, length))
        start += length
    return ranges


@functools.lru_cache(maxsize=64)
def capacity(first: int) -> int:
    """The most bytes that full parts ``first .. 9,999`` plus a tail can hold."""
    return sum(part_size(n) for n in range(first, MAX_FULL_PARTS + 1)) + part_size(MAX_FULL_PARTS + 1) - 1


@dataclass
class Record:
    """The committed state of one upload in progress (the commit record without its tail)."""

    target: str  # the key the multipart upload completes into
    base: int = 0  # bytes at the start that are a completed object at ``target``
    upload: str | None = None  # the UploadId of the multipart upload holding the parts after ``base``
    parts: list[tuple[str, int]] = field(default_factory=list)  # (ETag, size) of parts first, first+1, ...
    sealing: bool = False  # the parts are being completed into ``target`` (finished on the next load)

    @property
    def first(self) -> int:
        """The part number of the first part after the base (numbers before it are kept for the base)."""
        return len(copy_ranges(self.base)) + 1

    @property
    def parts_end(self) -> int:
        """Where the tail starts: the base plus every full part."""
        return self.base + sum(size for _etag, size in self.parts)

    def next_part_size(self) -> int:
        return part_size(self.first + len(self.parts))

    def limit(self) -> int:
        """The most bytes this upload may hold: 5 TiB, or less if the base took many part numbers."""
        return min(MAX_OBJECT, self.base + capacity(self.first))

    def encode(self, tail: bytes) -> bytes:
        head = {
            "v": 1,
            "target": self.target,
            "base": self.base,
            "upload": self.upload,
            "parts": self.parts,
            "sealing": self.sealing,
        }
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + tail

    @classmethod
    def decode(cls, body: bytes) -> tuple[Record, bytes]:
        line, _sep, tail = body.partition(b"\n")
        head = json.loads(line)
        if head.get("v") != 1:
            raise ValueError(f"unknown commit record version {head.get('v')!r}")
        parts = [(str(etag), int(size)) for etag, size in head["parts"]]
        record = cls(head["target"], int(head["base"]), head["upload"], parts, bool(head["sealing"]))
        return record, tail


def staging_of(name: str) -> str:
    """The staging key an object of the staging layout belongs to (``K`` for ``K`` and ``K/data``)."""
    return name.removesuffix(DATA_SUFFIX)
