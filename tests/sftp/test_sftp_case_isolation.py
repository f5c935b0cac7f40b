"""An SFTP login of one case reaches no file of another case by any operation, even by its exact name."""

from __future__ import annotations

import pytest
from sftp_support import GatewayThread, paramiko_sftp


def test_another_cases_file_is_invisible_and_untouchable(gateway: GatewayThread) -> None:
    """With ``secret.log`` in CASE-1, a CASE-2 login lists nothing, and stat, open, rename, remove and
    setstat of that name all answer "no such file"; the file is unchanged afterwards."""
    gateway.open_case("CASE-1")
    secret = gateway.place_engineer_file("secret.log", b"case one only", "CASE-1")
    account = gateway.account("CASE-2")
    with paramiko_sftp(gateway.port, account) as (_t, sftp):
        assert sftp.listdir(".") == []
        for attempt in (
            lambda: sftp.stat("secret.log"),
            lambda: sftp.open("secret.log").read(),
            lambda: sftp.rename("secret.log", "mine.log"),
            lambda: sftp.remove("secret.log"),
            lambda: sftp.utime("secret.log", (0, 0)),
        ):
            with pytest.raises(FileNotFoundError):
                attempt()
    assert [(f.id, f.name, f.sha256) for f in gateway.files("CASE-1")] == [
        (secret.id, "secret.log", secret.sha256)
    ]
