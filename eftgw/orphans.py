"""The orphan sweep: storage leftovers no upload needs (a node died between two steps) are removed.

Staging data is live while its upload is active, or finished as a partial of a tus concatenation that may
still be joined; everything else under ``uploads/`` is an orphan. Backends without such leftovers (the local
directory, where a promotion is one rename) have no ``sweep_orphans`` and nothing to do. Run it once per
region: ``run_as_leader(repo, "orphan-sweep", 3600, lambda: sweep_orphans(repo, store, clock.now()))``.
"""

from __future__ import annotations

import datetime as dt

from eftgw.model import ConcatKind, UploadState
from eftgw.ports import UploadRepository
from eftgw.storage import ObjectStore


async def sweep_orphans(
    repo: UploadRepository, store: ObjectStore, now: dt.datetime, grace: dt.timedelta = dt.timedelta(hours=1)
) -> list[str]:
    """Remove staging data of unknown or finished uploads and stale unfinished multipart uploads."""
    sweep = getattr(store, "sweep_orphans", None)
    if sweep is None:
        return []

    async def is_live(staging: str) -> bool:
        upload = await repo.get_upload(staging.rsplit("/", 1)[-1])
        if upload is None or upload.staging_key != staging:
            return False
        partial = upload.state is UploadState.FINISHED and upload.concat is ConcatKind.PARTIAL
        return upload.state is UploadState.ACTIVE or partial

    removed: list[str] = await sweep(is_live, now=now, grace=grace)
    return removed
