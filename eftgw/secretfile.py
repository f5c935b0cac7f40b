"""Secret files made once on first start (signing key, account key, SSH host keys, TLS key): one writer.

Several processes may start at the same moment (two nodes sharing a data dir, ``serve`` and an admin
command), and each would make its own secret. :func:`load_or_create` lets exactly one of them win: the secret
is written in full to a private temporary file (mode 0600, fsynced) and then *linked* to its name, which
fails if the name already exists. A loser throws its own away and uses the winner's, so every process ends up
with the same secret, and no reader ever sees a partly written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def load_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """The content of ``path``; if it does not exist, ``make()`` it and store it (mode 0600) first.

    :param path: where the secret lives; its directory is created (mode 0700) if missing.
    :param make: makes a new secret; called only when ``path`` does not exist yet.
    :returns: the bytes stored at ``path``, which are ``make()``'s only if this call won the race.
    """
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = make()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes()  # another process won; its secret is complete (linked after fsync)
        _fsync_dir(path.parent)
        return data
    finally:
        os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
