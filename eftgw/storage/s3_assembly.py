"""Server-side assembly of an object from byte ranges of other objects (promotion and concatenation).

The bytes never pass through the gateway, with one exception S3 forces: every part but the last must be at
least 5 MiB, so a short piece that is not last (a partial upload of a few KiB in a tus concatenation) is read
and re-uploaded together with the bytes that follow it until they make 5 MiB. That buffer is bounded by
5 MiB whatever the size of the file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from minio.datatypes import Part

from eftgw.storage.base import StorageError
from eftgw.storage.s3_client import S3Client
from eftgw.storage.s3_parts import MAX_PART, MAX_PARTS, MIN_PART

COPY_CONCURRENCY = 8


@dataclass(frozen=True)
class Segment:
    """``length`` bytes from ``start`` of the object ``name``, placed at ``offset`` of the result."""

    name: str
    offset: int
    length: int
    start: int = 0


def _copy_length(remaining: int) -> int:
    """How much of a piece one UploadPartCopy takes: at most 5 GiB, never leaving a remainder below 5 MiB."""
    if remaining <= MAX_PART:
        return remaining
    return MAX_PART if remaining - MAX_PART >= MIN_PART else remaining - MIN_PART


async def assemble(client: S3Client, key: str, segments: list[Segment], tags: dict[str, str]) -> None:
    """Make the object ``key`` from ``segments`` in order, tagged with ``tags`` (also as metadata)."""
    metadata = {f"eftgw-{k}": v for k, v in tags.items()}
    segments = [s for s in segments if s.length > 0]
    total = sum(s.length for s in segments)
    if total == 0:
        await client.put(key, b"", metadata=metadata, tags=tags)
        return
    if len(segments) == 1 and segments[0].start == 0 and segments[0].length <= MAX_PART:
        await client.copy(segments[0].name, key, metadata, tags)
        await client.set_tags(key, tags)  # RGW 16 ignores the tagging directive of CopyObject
        return
    upload_id = await client.create_multipart(key, metadata, tags)
    try:
        parts = await _parts(client, key, upload_id, segments, total)
        await client.complete_multipart(key, upload_id, parts)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.shield(client.abort_multipart(key, upload_id))
        raise
    await client.set_tags(key, tags)  # RGW 16 ignores x-amz-tagging on CreateMultipartUpload


async def _parts(
    client: S3Client, key: str, upload_id: str, segments: list[Segment], total: int
) -> list[Part]:
    limit = asyncio.Semaphore(COPY_CONCURRENCY)
    jobs: list[asyncio.Task[Part]] = []

    def add(request: Callable[..., Awaitable[Part]], *args: object) -> asyncio.Task[Part]:
        """Queue ``request(key, upload_id, part_number, *args)`` as the next part."""
        if len(jobs) >= MAX_PARTS:
            raise StorageError("The object would need more than 10,000 parts; S3 cannot assemble it.")
        number = len(jobs) + 1

        async def limited() -> Part:
            async with limit:
                return await request(key, upload_id, number, *args)

        jobs.append(asyncio.ensure_future(limited()))
        return jobs[-1]

    pending = bytearray()
    done = 0  # bytes of the result accounted for
    try:
        for segment in segments:
            position, remaining = segment.start, segment.length
            while remaining > 0:
                later = total - done - remaining
                if pending or (remaining < MIN_PART and later > 0):
                    take = min(remaining, MIN_PART - len(pending)) if pending else remaining
                    pending += await client.get_bytes(segment.name, position, take)
                    if len(pending) >= MIN_PART:
                        await add(client.upload_part, bytes(pending))  # one buffer in memory at a time
                        pending.clear()
                else:
                    take = _copy_length(remaining)
                    add(client.upload_part_copy, segment.name, position, take)
                position += take
                remaining -= take
                done += take
        if pending:
            add(client.upload_part, bytes(pending))
        return list(await asyncio.gather(*jobs))
    except BaseException:
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        raise
