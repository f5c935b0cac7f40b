"""Integration events of SFTP transfers with a real client (paramiko over TCP, from 127.0.0.2): a file
finished over SFTP, one continued after it was finished (the old version is reported deleted as replaced),
one overwritten, and a download, each with exactly its type's fields."""

from __future__ import annotations

import hashlib
import os
import socket

from sftp_support import FXF_WRITE, Account, GatewayThread, open_with_flags, paramiko_sftp

from eftgw.events import EVENT_TYPES, Event


def events(gateway: GatewayThread, kind: str) -> list[Event]:
    stored = gateway.call(gateway.gw.repo.events_after(0, 1000))
    for event in stored:
        assert set(event.data) == set(EVENT_TYPES[event.type]), event
    return [e for e in stored if e.type == kind]


def from_second_address(gateway: GatewayThread) -> socket.socket:
    """A TCP connection to the gateway from 127.0.0.2, so the reported client address is the client's."""
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=30, source_address=("127.0.0.2", 0))


def put(gateway: GatewayThread, account: Account, name: str, data: bytes) -> None:
    sock = from_second_address(gateway)
    with paramiko_sftp(gateway.port, account, sock=sock) as (_t, sftp), sftp.open(name, "wb") as out:
        out.write(data)


def test_an_sftp_upload_and_download_are_reported_with_the_account_and_client(gateway: GatewayThread) -> None:
    """A file written and closed over SFTP gives file.finished (via sftp, the account as uploader, the
    client's address); reading it back gives file.downloaded (via sftp)."""
    account = gateway.account()
    data = os.urandom(300_000)
    put(gateway, account, "trace.pcap", data)
    sock = from_second_address(gateway)
    with (
        paramiko_sftp(gateway.port, account, sock=sock) as (_t, sftp),
        sftp.open("trace.pcap", "rb") as source,
    ):
        assert source.read() == data
    record = gateway.file_named("trace.pcap")
    (finished,) = events(gateway, "file.finished")
    assert finished.case_id == "CASE-1"
    assert finished.data == {
        "file_id": record.id,
        "name": "trace.pcap",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "uploader": account.username,
        "role": "customer",
        "via": "sftp",
        "client": "127.0.0.2",
    }
    downloaded = events(gateway, "file.downloaded")
    assert downloaded and downloaded[0].data == {
        "file_id": record.id,
        "name": "trace.pcap",
        "size": len(data),
        "by": account.username,
        "role": "customer",
        "via": "sftp",
        "client": "127.0.0.2",
    }


def test_continuing_a_finished_file_reports_the_new_file_and_the_replaced_one(gateway: GatewayThread) -> None:
    """A finished file reopened for writing (FileZilla's resume) and continued becomes a new file: one more
    file.finished with the whole content, and file.deleted of the old version with the reason ``replaced``;
    overwriting a file reports the same pair."""
    account = gateway.account()
    data = os.urandom(200_000)
    put(gateway, account, "app.log", data[:50_000])
    old = gateway.file_named("app.log")
    with paramiko_sftp(gateway.port, account, sock=from_second_address(gateway)) as (_t, sftp):
        handle = open_with_flags(sftp, "app.log", FXF_WRITE)
        handle.seek(50_000)
        handle.write(data[50_000:])
        handle.close()
    new = gateway.file_named("app.log")
    assert new.id != old.id and gateway.content(new) == data
    put(gateway, account, "app.log", b"overwritten")
    newest = gateway.file_named("app.log")
    finished = events(gateway, "file.finished")
    assert [(e.data["file_id"], e.data["size"]) for e in finished] == [
        (old.id, 50_000),
        (new.id, len(data)),
        (newest.id, 11),
    ]
    assert finished[1].data["sha256"] == hashlib.sha256(data).hexdigest()
    deleted = events(gateway, "file.deleted")
    assert [e.data for e in deleted] == [
        {
            "file_id": record.id,
            "name": "app.log",
            "size": record.size,
            "by": account.username,
            "role": "customer",
            "reason": "replaced",
        }
        for record in (old, new)
    ]
