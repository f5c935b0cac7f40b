"""Integrity of stored files: every completed file is re-hashed against the SHA-256 recorded when it was
uploaded, while it is served whole (:func:`verified`) and by the scrub ``eftgw verify`` (:func:`scrub`).

A stored byte can change without anyone writing it (a failing disk, a bug in a storage layer, an operator's
mistake). The recorded SHA-256 is the truth the customer and the engineer compare with ``sha256sum``, so a
file whose bytes no longer hash to it is *damaged*: a download of it must never end cleanly, and the scrub
lists it. Both log the case and file ids (never file names) at error level and count it in
``eftgw_integrity_failures_total``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from eftgw import metrics
from eftgw.model import FileRecord
from eftgw.ports import ScrubRepository
from eftgw.storage import ObjectNotFound, ObjectStore, StorageError

log = logging.getLogger("eftgw.scrub")


@dataclass(frozen=True)
class Damage:
    """A stored file whose bytes do not hash to its recorded SHA-256."""

    case_id: str
    file_id: str
    expected_sha256: str
    actual_sha256: str
    expected_size: int
    actual_size: int

    def as_json(self) -> dict[str, Any]:
        return {
            "case": self.case_id,
            "file": self.file_id,
            "expected_sha256": self.expected_sha256,
            "actual_sha256": self.actual_sha256,
            "expected_size": self.expected_size,
            "actual_size": self.actual_size,
        }


class DamagedFile(Exception):
    """Raised by :func:`verified` at the end of a stream whose bytes do not match the record."""

    def __init__(self, damage: Damage) -> None:
        self.damage = damage
        super().__init__(f"file {damage.file_id} of case {damage.case_id} does not match its SHA-256")


def _report(damage: Damage, found_by: str) -> None:
    metrics.INTEGRITY_FAILURES.labels(found_by).inc()
    log.error(
        "stored file %s of case %s is damaged (found by %s): expected sha256 %s of %d bytes, read %s of %d",
        damage.file_id,
        damage.case_id,
        found_by,
        damage.expected_sha256,
        damage.expected_size,
        damage.actual_sha256,
        damage.actual_size,
    )


async def _hash(record: FileRecord, stream: AsyncIterator[bytes]) -> Damage | None:
    digest = hashlib.sha256()
    size = 0
    async for block in stream:
        await asyncio.to_thread(digest.update, block)
        size += len(block)
    actual = digest.hexdigest()
    if size == record.size and actual == record.sha256:
        return None
    return Damage(record.case_id, record.id, record.sha256, actual, record.size, size)


async def verified(
    record: FileRecord, stream: AsyncIterator[bytes], *, found_by: str = "download"
) -> AsyncIterator[bytes]:
    """Yield the whole file ``stream`` of ``record``, raising :class:`DamagedFile` before its last block if
    the bytes do not hash to the recorded SHA-256 (or their count differs from the recorded size).

    The last block is held back until the hash is known, so a consumer that stops at the error has not passed
    on the whole file: a damaged file never arrives complete. Memory: one block more than the stream holds.
    """
    digest = hashlib.sha256()
    size = 0
    held: bytes | None = None
    hashing: asyncio.Future[None] | None = (
        None  # the block being hashed in a thread while the last one is sent
    )
    try:
        async for block in stream:
            if not block:
                continue
            if hashing is not None:
                await hashing  # blocks are hashed in order, one at a time
            hashing = asyncio.ensure_future(asyncio.to_thread(digest.update, block))
            size += len(block)
            if held is not None:
                yield held
            held = block
        if hashing is not None:
            await hashing
    finally:
        if hashing is not None and not hashing.done():
            hashing.cancel()
    actual = digest.hexdigest()
    if size != record.size or actual != record.sha256:
        damage = Damage(record.case_id, record.id, record.sha256, actual, record.size, size)
        _report(damage, found_by)
        raise DamagedFile(damage)
    if held is not None:
        yield held


@dataclass
class ScrubReport:
    """What a scrub found: ``ok`` only when every file was read and matched."""

    checked: int = 0
    bytes: int = 0
    damaged: list[Damage] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.damaged or self.missing or self.unreadable)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "bytes": self.bytes,
            "damaged": [d.as_json() for d in self.damaged],
            "missing": self.missing,
            "unreadable": self.unreadable,
        }


async def scrub(repo: ScrubRepository, store: ObjectStore, case_id: str | None = None) -> ScrubReport:
    """Re-hash every stored file (of one case, or of all) against its recorded SHA-256, one at a time.

    A file deleted while the scrub runs is skipped; an object that is gone while its record remains is
    *missing*; one the store fails to read is *unreadable* (with the store's message). Memory is one block.
    """
    report = ScrubReport()
    case_ids = [case_id] if case_id is not None else sorted(c.id for c in await repo.list_cases())
    for cid in case_ids:
        for record in await repo.list_files(cid):
            entry = {"case": record.case_id, "file": record.id, "object_key": record.object_key}
            try:
                damage = await _hash(record, store.read_object(record.object_key))
            except ObjectNotFound:
                if await repo.get_file(record.case_id, record.id) is None:
                    continue  # deleted meanwhile
                log.error("stored file %s of case %s is missing from the store", record.id, record.case_id)
                metrics.INTEGRITY_FAILURES.labels("scrub").inc()
                report.missing.append(entry)
                continue
            except StorageError as exc:
                log.error("stored file %s of case %s could not be read: %s", record.id, record.case_id, exc)
                report.unreadable.append({**entry, "error": exc.message})
                continue
            report.checked += 1
            report.bytes += record.size
            if damage is not None:
                _report(damage, "scrub")
                report.damaged.append(damage)
    return report
