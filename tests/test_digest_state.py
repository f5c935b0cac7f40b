"""Whole-file digests whose state is exported and continued elsewhere: the same SHA-256 and xxh128 as hashlib
and the ``xxhash`` package for any split of the data, a state that is refused (never misused) when it is
not exactly the state of the bytes it claims, and a gateway that still works where no state can be exported.
Two real nodes taking over each other's uploads: ``tests/test_digest_takeover.py``."""

from __future__ import annotations

import base64
import ctypes
import hashlib
import io
import os
import struct

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from eftgw import digest_state, metrics
from eftgw.digest_state import ResumableSha256, ResumableXxh128, StateError
from eftgw.hashing import FileDigests
from eftgw.model import SYSTEM
from tests.support import RunningGateway, http_session, tus_headers

PROPERTY = settings(max_examples=150, deadline=None)
OCTETS = "application/offset+octet-stream"
MiB = 1024 * 1024


@pytest.mark.once
def test_resumable_hashers_are_available_on_the_platform_eftgw_runs_on() -> None:
    """libcrypto and xxHash load and pass the self-test where eftgw runs (Debian 12, Python 3.11): no silent
    fallback."""
    assert digest_state.available()
    digests = FileDigests()
    assert isinstance(digests.sha256, ResumableSha256) and isinstance(digests.xxh128, ResumableXxh128)


@pytest.mark.once
def test_the_c_functions_release_the_gil() -> None:
    """The bindings are ctypes CDLL functions (which drop the GIL during a call), so hashing in a worker
    thread leaves the event loop free, as hashlib did."""
    libs = digest_state._libraries()
    assert libs is not None
    for function in (libs.crypto.SHA256_Update, libs.xxh_update):
        assert not function._flags_ & ctypes._FUNCFLAG_PYTHONAPI


@pytest.mark.once
@PROPERTY
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=8))
def test_any_split_through_export_and_restore_gives_hashlibs_digests(data: bytes, cuts: list[int]) -> None:
    """Hashing in pieces, exporting and restoring the state between every two, ends with the digests of the
    whole data in one piece (SHA-256 as hashlib's, xxh128 as xxhash's xxh3_128)."""
    digests = FileDigests()
    start = 0
    for cut in sorted({min(c, len(data)) for c in cuts} | {len(data)}):
        digests.update(data[start:cut])
        start = cut
        state = digests.export()
        assert state is not None
        digests = FileDigests.restore(state, cut)
        assert digests.size == cut
    assert digests.sha256_hex == hashlib.sha256(data).hexdigest()
    assert digests.xxh128_hex == xxhash.xxh3_128(data).hexdigest()


@pytest.mark.once
def test_megabyte_blocks_across_many_restores_match_hashlib() -> None:
    """The upload path's 1 MiB blocks (XXH3's long-input path, SHA-256's full blocks) with a restore after
    each, and an odd tail."""
    data = os.urandom(5 * 1024 * 1024 + 333)
    digests = FileDigests()
    for start in range(0, len(data), 1024 * 1024):
        digests.update(data[start : start + 1024 * 1024])
        digests = FileDigests.restore(digests.export() or b"", digests.size)
    assert digests.sha256_hex == hashlib.sha256(data).hexdigest()
    assert digests.xxh128_hex == xxhash.xxh3_128(data).hexdigest()


@pytest.mark.once
def test_a_copy_diverges_from_its_original() -> None:
    """``copy`` gives independent hashers: updating one leaves the other's digests as they were."""
    digests = FileDigests()
    digests.update(b"same start ")
    other = digests.copy()
    other.update(b"different end")
    assert digests.sha256_hex == hashlib.sha256(b"same start ").hexdigest()
    assert other.xxh128_hex == xxhash.xxh3_128(b"same start different end").hexdigest()


@pytest.mark.once
def test_a_state_of_another_offset_is_refused() -> None:
    """A state is only used for exactly the offset it was exported at: older or newer is a StateError."""
    digests = FileDigests()
    digests.update(b"x" * 1000)
    state = digests.export()
    assert state is not None
    for offset in (0, 999, 1001):
        with pytest.raises(StateError, match="covers 1000 bytes"):
            FileDigests.restore(state, offset)


@pytest.mark.once
def test_a_garbled_or_foreign_state_is_refused() -> None:
    """Any changed byte (the CRC), another format version, or an XXH3 state written by another xxHash
    version is refused rather than continued."""
    digests = FileDigests()
    digests.update(os.urandom(777))
    state = digests.export()
    assert state is not None
    for position in (0, 5, 20, len(state) // 2, len(state) - 1):
        garbled = bytearray(state)
        garbled[position] ^= 0x40
        with pytest.raises(StateError):
            FileDigests.restore(bytes(garbled), 777)
    with pytest.raises(StateError):
        FileDigests.restore(state[:-5] + state[-4:], 777)
    xxh = digests.xxh128
    assert isinstance(xxh, ResumableXxh128)
    other_version = xxh._libs.xxh_version + 1
    foreign = struct.pack("<I", other_version) + xxh.export()[4:]
    with pytest.raises(StateError, match=f"xxHash {other_version}"):
        ResumableXxh128.restore(foreign)


@pytest.mark.once
def test_inconsistent_hasher_states_are_refused() -> None:
    """A SHA-256 state whose pending bytes do not match its count, or an XXH3 state with impossible counters,
    is refused."""
    sha = ResumableSha256()
    sha.update(b"abc")
    exported = sha.export()
    with pytest.raises(StateError):
        ResumableSha256.restore(exported + b"d")
    xxh = ResumableXxh128()
    xxh.update(b"abc")
    state = bytearray(xxh.export())
    struct.pack_into("<I", state, 324, 257)  # bufferedSize beyond the 256-byte buffer
    with pytest.raises(StateError):
        ResumableXxh128.restore(bytes(state))


@pytest.mark.once
def test_the_self_test_catches_a_wrong_struct_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """If OpenSSL's SHA256_CTX were laid out differently (here: the pending data assumed elsewhere), the
    self-test reports it, so the gateway falls back instead of saving wrong states."""
    libs = digest_state._libraries()
    assert libs is not None
    assert digest_state._self_test(libs) is None
    monkeypatch.setattr(digest_state, "_SHA256_DATA_AT", 44)
    assert digest_state._self_test(libs) is not None


@pytest.mark.once
def test_without_resumable_hashers_digests_still_work_but_export_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the libraries are missing or fail the self-test, FileDigests uses hashlib and xxhash, exports
    ``None`` and refuses to restore (the caller re-reads the stored data)."""
    exported = FileDigests()
    exported.update(b"abc")
    state = exported.export()
    assert state is not None
    monkeypatch.setattr(digest_state, "available", lambda: False)
    digests = FileDigests()
    digests.update(b"abc")
    assert digests.sha256_hex == hashlib.sha256(b"abc").hexdigest()
    assert digests.export() is None
    with pytest.raises(StateError, match="not available"):
        FileDigests.restore(state, 3)


async def test_without_resumable_hashers_only_the_process_that_hashed_continues(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With export off, a gateway still continues its own uploads without re-reading (its row holds a mark
    of the digests it keeps, and a chunk refused for its checksum leaves them untouched), while any other
    process, holding no digests under that mark, re-reads the stored bytes: counted, and the SHA-256 right."""
    monkeypatch.setattr(digest_state, "available", lambda: False)
    token = gw.token("C-1")
    data = os.urandom(3 * MiB)

    def reread() -> float:
        return metrics.REGISTRY.get_sample_value("eftgw_digest_reread_bytes_total") or 0.0

    before = reread()
    async with http_session() as s:
        h = tus_headers(token, Upload_Length=str(len(data)))
        async with s.post(gw.uploads_url("C-1"), headers=h) as resp:
            assert resp.status == 201
            url = resp.headers["Location"]

        async def patch(offset: int, body: bytes, status: int, **extra: str) -> None:
            h = tus_headers(token, Upload_Offset=str(offset), Content_Type=OCTETS, **extra)
            async with s.patch(url, data=io.BytesIO(body), headers=h) as resp:
                assert resp.status == status, await resp.text()

        await patch(0, data[:MiB], 204)
        wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
        await patch(MiB, b"\0" * MiB, 460, Upload_Checksum=f"sha256 {wrong}")
        await patch(MiB, data[MiB : 2 * MiB], 204)
        assert reread() == before
        gw.gateway.uploads.ingest.local_digests.clear()  # as if the next request went to another process
        await patch(2 * MiB, data[2 * MiB :], 204)
    assert reread() == before + 2 * MiB
    (record,) = await gw.gateway.files.list(SYSTEM, "C-1")
    assert record.sha256 == hashlib.sha256(data).hexdigest()
