"""How the S3 backend cuts staging data into parts: a fixed schedule of part sizes, and the commit record.

S3 allows at most 10,000 parts of at least 5 MiB (except the last) and at most 5 GiB each, and objects of
at most 5 TiB. An upload's length may be unknown while it is written (tus creation-defer-length, SFTP), so
part sizes cannot be derived from it. Instead part ``i`` (0-based) has the size ``part_size(i)``: 8 MiB for
the first 1,000 parts, doubling every 1,000 parts, capped at 2 GiB. Small files use small parts (a 2 GiB
file is 256 parts of 8 MiB, so a writer holds at most 8 MiB of it in memory); 9,999 parts plus the tail
hold 5.85 TiB, more than the 5 TiB S3 allows for one object. Because the sizes are fixed, every node
computes where each part starts without listing anything.

Staging data of the upload at key ``K`` (``uploads/<case>/<upload>``):

- ``K/part-00000``, ``K/part-00001``, ...: the committed full parts, plain objects of exactly
  ``part_size(i)`` bytes (objects rather than parts of a multipart upload, so that promotion can copy them
  server-side into the file's object);
- ``K`` itself: the *commit record*. Its body is the tail (committed bytes after the last full part, shorter
  than the next part) and its metadata ``x-amz-meta-eftgw-parts`` says how many full parts are committed.
  A commit is one PUT of this object, so it is atomic: parts numbered beyond the record are leftovers of
  uncommitted writes and are never read.
"""

from __future__ import annotations

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB

MIN_PART = 5 * MiB  # S3: every part but the last is at least this big
MAX_PART = 5 * GiB  # S3: no part is bigger
MAX_PARTS = 10_000  # S3: parts per multipart upload
MAX_OBJECT = 5 * TiB  # S3: the biggest object

BASE_PART = 8 * MiB
TIER = 1_000  # parts per size tier
MAX_DOUBLINGS = 8  # 8 MiB << 8 = 2 GiB
MAX_FULL_PARTS = MAX_PARTS - 1  # one part is kept for the tail

PARTS_META = "eftgw-parts"  # user metadata of the commit record (x-amz-meta-eftgw-parts)


def part_size(index: int) -> int:
    """The size of full part ``index`` (0-based)."""
    return BASE_PART << min(index // TIER, MAX_DOUBLINGS)


def part_start(index: int) -> int:
    """The byte offset where part ``index`` starts, i.e. the size of parts ``0 .. index-1``."""
    tiers, rest = divmod(index, TIER)
    start = 0
    for tier in range(tiers):
        start += TIER * (BASE_PART << min(tier, MAX_DOUBLINGS))
    return start + rest * (BASE_PART << min(tiers, MAX_DOUBLINGS))


def part_at(offset: int) -> int:
    """The index of the part that holds byte ``offset`` (the part that would start there, at a boundary)."""
    tiers = 0
    while tiers < MAX_DOUBLINGS and offset >= part_start((tiers + 1) * TIER):
        tiers += 1
    first = tiers * TIER
    return first + (offset - part_start(first)) // part_size(first)


CAPACITY = min(MAX_OBJECT, part_start(MAX_FULL_PARTS) + part_size(MAX_FULL_PARTS) - 1)
"""The most bytes one staging upload may hold: 5 TiB (the schedule could hold more)."""


def part_name(staging: str, index: int) -> str:
    return f"{staging}/part-{index:05d}"


def staging_of(name: str) -> str:
    """The staging key an object of the staging layout belongs to (``K`` for ``K`` and ``K/part-...``)."""
    head, sep, tail = name.rpartition("/")
    return head if sep and tail.startswith("part-") else name
