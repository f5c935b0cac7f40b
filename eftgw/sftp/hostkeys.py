"""The gateway's SSH host keys: generated once in the data dir (``ssh/``, mode 0600) and kept.

Two keys: Ed25519 (what current clients use) and RSA-3072 (for clients without Ed25519; it is only ever
used with SHA-2 signatures, ``rsa-sha2-256``/``rsa-sha2-512``). Clients pin the host key on first connect,
so the keys must never change behind their back: they are only created when missing, and nodes behind one
address must share them (``EFTGW_SFTP_HOST_KEYS_DIR``).
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh

from eftgw.secretfile import load_or_create

HOST_KEYS: tuple[tuple[str, str, dict[str, int]], ...] = (
    ("ssh_host_ed25519_key", "ssh-ed25519", {}),
    ("ssh_host_rsa_key", "ssh-rsa", {"key_size": 3072}),
)


def load_or_create_host_keys(directory: Path) -> list[asyncssh.SSHKey]:
    """The host keys in ``directory``, creating those that are missing."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    keys = []
    for filename, algorithm, options in HOST_KEYS:
        path = directory / filename

        def make(algorithm: str = algorithm, options: dict[str, int] = options) -> bytes:
            made = asyncssh.generate_private_key(algorithm, comment="eftgw host key", **options)
            return bytes(made.export_private_key("openssh"))

        key = asyncssh.import_private_key(load_or_create(path, make))
        public = path.with_name(filename + ".pub")
        if not public.exists():
            public.write_bytes(key.export_public_key("openssh"))
        keys.append(key)
    return keys


def host_key_pairs(keys: list[asyncssh.SSHKey], allowed: list[str]) -> list[asyncssh.SSHKeyPair]:
    """The keys as asyncssh serves them, offering only ``allowed`` signature algorithms.

    asyncssh offers every algorithm a key type can sign with (for RSA also SHA-1 ``ssh-rsa``); the
    ``signature_algs`` option does not narrow the host key algorithms, so they are narrowed here.
    """
    wanted = {alg.encode() for alg in allowed}
    pairs = asyncssh.load_keypairs(keys)
    for pair in pairs:
        pair.host_key_algorithms = [alg for alg in pair.host_key_algorithms if alg in wanted]
    return [pair for pair in pairs if pair.host_key_algorithms]


def fingerprints(keys: list[asyncssh.SSHKey]) -> list[str]:
    """``<algorithm> SHA256:...`` of each key, as ``ssh-keygen -l`` shows them, for operators to publish."""
    return [f"{key.get_algorithm()} {key.get_fingerprint('sha256')}" for key in keys]
