"""Running SHA-256 and XXH3-128 whose state can be written down and continued in another process.

hashlib and the ``xxhash`` package cannot export a running hash, so a node that takes over an upload would
have to re-read everything stored so far. These hashers call the very C code that hashlib and ``xxhash``
run, through ctypes: OpenSSL's ``libcrypto`` that hashlib is linked with, and the xxHash library compiled
into the (pinned) ``xxhash`` package's extension, which exports its C API. They work on a context this
module allocates, so the context's bytes are the state. ctypes releases the GIL during each call, so hashing
runs in a worker thread as before, at the same speed (see ``bench/digest_state.py``).

The exported state is canonical, not a memory dump: SHA-256 as its eight chaining words, the byte count and
the pending partial block (the same in any SHA-256 implementation); XXH3 as its accumulators, buffer and
counters, tagged with the xxHash version that wrote it, since its buffering is that version's. Pointers
(XXH3's reference to its built-in secret) are never exported; an import takes them from a fresh reset.

Both bindings depend on struct layouts that these libraries do not promise, so :func:`available` is decided
once, at first use, by a self-test against hashlib and ``xxhash`` on random splits of known data, through an
export and an import. If the libraries are missing or the self-test fails, :func:`available` is false with a
log line saying why, and callers fall back to hashlib and ``xxhash`` (and to re-reading on takeover).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import importlib
import logging
import os
import random
import struct
import sys

import xxhash

log = logging.getLogger("eftgw.digest_state")

_SHA256_CTX_SIZE = 112  # SHA_LONG h[8], Nl, Nh, data[16]; unsigned int num, md_len (OpenSSL 1.0 to 3.x)
_SHA256_H = struct.Struct("=8I")
_SHA256_COUNT = struct.Struct("=II")  # Nl, Nh: the bit count
_SHA256_NUM = struct.Struct("=II")  # num (bytes pending in data), md_len
_SHA256_DATA_AT, _SHA256_NUM_AT = 40, 104

_XXH3_STATE_SIZE = 576  # struct XXH3_state_s of xxHash 0.8.x on a 64-bit platform
_XXH3_ALIGN = 64
_XXH3_ACC = slice(0, 64)
_XXH3_BUFFER = slice(256, 512)
_XXH3_COUNTERS = struct.Struct("=IIQQQQQQ")  # bufferedSize, useSeed, nbStripesSoFar, totalLen, ...
_XXH3_COUNTERS_AT = 512
_XXH3_SECRET_LIMIT = 192 - 64
_XXH3_STRIPES_PER_BLOCK = _XXH3_SECRET_LIMIT // 8


class StateError(ValueError):
    """An exported state that cannot be imported here (garbled, or written by another library version)."""


class _Libraries:
    def __init__(self) -> None:
        self.crypto = _load_libcrypto()
        self.xxh = ctypes.CDLL(importlib.import_module("xxhash._xxhash").__file__)
        c, x = self.crypto, self.xxh
        c.SHA256_Init.argtypes = [ctypes.c_void_p]
        c.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        c.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        for name in ("SHA256_Init", "SHA256_Update", "SHA256_Final"):
            getattr(c, name).restype = ctypes.c_int
        x.XXH_versionNumber.argtypes = []
        x.XXH_versionNumber.restype = ctypes.c_uint
        x.XXH3_128bits_reset.argtypes = [ctypes.c_void_p]
        x.XXH3_128bits_reset.restype = ctypes.c_int
        # The runtime-dispatched update (AVX2/AVX-512 where the CPU has them), as xxhash.xxh3_128 calls it.
        self.xxh_update = getattr(x, "XXH3_128bits_update_dispatch", None) or x.XXH3_128bits_update
        self.xxh_update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        self.xxh_update.restype = ctypes.c_int
        x.XXH3_128bits_digest.argtypes = [ctypes.c_void_p]
        x.XXH3_128bits_digest.restype = _XXH128Hash
        self.xxh_version = int(x.XXH_versionNumber())
        if not 800 <= self.xxh_version < 900:
            raise OSError(f"xxHash {self.xxh_version} is not 0.8.x, whose XXH3 state layout this knows")


class _XXH128Hash(ctypes.Structure):
    _fields_ = (("low64", ctypes.c_uint64), ("high64", ctypes.c_uint64))


def _load(name: str, soname: str) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(soname)
    except OSError:
        found = ctypes.util.find_library(name)
        if found is None:
            raise
        return ctypes.CDLL(found)


def _load_libcrypto() -> ctypes.CDLL:
    """The libcrypto hashlib is linked with (already loaded in this process), else the system's."""
    import _hashlib  # noqa: F401  (loads its libcrypto first, so the name below resolves to that one)

    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        for line in maps:
            path = line.rsplit(" ", 1)[-1].strip()
            if "/libcrypto.so" in path and os.path.exists(path):
                return ctypes.CDLL(path)
    return _load("crypto", "libcrypto.so.3")


@functools.cache
def _libraries() -> _Libraries | None:
    if sys.byteorder != "little" or ctypes.sizeof(ctypes.c_size_t) != 8:
        log.warning("digest state export is off: this platform is not 64-bit little-endian")
        return None
    try:
        libs = _Libraries()
    except (OSError, AttributeError) as exc:
        log.warning("digest state export is off (%s); a node taking over an upload re-reads it", exc)
        return None
    return libs


class ResumableSha256:
    """SHA-256 over OpenSSL's ``SHA256_*`` functions; :meth:`export` gives its canonical state."""

    digest_size = 32

    def __init__(self, _libs: _Libraries | None = None) -> None:
        libs = _libs or _libraries()
        if libs is None:
            raise RuntimeError("resumable hashing is not available here")
        self._lib = libs.crypto
        self._ctx = ctypes.create_string_buffer(_SHA256_CTX_SIZE)
        if self._lib.SHA256_Init(self._ctx) != 1:
            raise RuntimeError("SHA256_Init failed")

    def update(self, data: bytes, /) -> None:
        self._lib.SHA256_Update(self._ctx, _in_place(data), len(data))

    def digest(self) -> bytes:
        ctx = ctypes.create_string_buffer(self._ctx.raw, _SHA256_CTX_SIZE)
        out = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(out, ctx)
        return out.raw

    def copy(self) -> ResumableSha256:
        other = ResumableSha256.__new__(ResumableSha256)
        other._lib = self._lib
        other._ctx = ctypes.create_string_buffer(self._ctx.raw, _SHA256_CTX_SIZE)
        return other

    @property
    def size(self) -> int:
        low, high = _SHA256_COUNT.unpack_from(self._ctx.raw, 32)
        return int((high << 32) | low) >> 3

    def export(self) -> bytes:
        """The chaining words (big-endian), the byte count (u64) and the pending bytes of the last block."""
        raw = self._ctx.raw
        words = _SHA256_H.unpack_from(raw, 0)
        num, md_len = _SHA256_NUM.unpack_from(raw, _SHA256_NUM_AT)
        count = self.size
        if md_len != 32 or num != count % 64:
            raise StateError("the SHA-256 context is not in the layout this module knows")
        pending = raw[_SHA256_DATA_AT : _SHA256_DATA_AT + num]
        return struct.pack(">8IQ", *words, count) + pending

    @classmethod
    def restore(cls, state: bytes, _libs: _Libraries | None = None) -> ResumableSha256:
        if len(state) < 40:
            raise StateError("SHA-256 state too short")
        *words, count = struct.unpack_from(">8IQ", state, 0)
        pending = state[40:]
        if len(pending) != count % 64 or count >= 1 << 61:
            raise StateError("SHA-256 state is inconsistent")
        hasher = cls(_libs)
        ctx = bytearray(hasher._ctx.raw)
        _SHA256_H.pack_into(ctx, 0, *words)
        bits = count << 3
        _SHA256_COUNT.pack_into(ctx, 32, bits & 0xFFFFFFFF, bits >> 32)
        ctx[_SHA256_DATA_AT : _SHA256_DATA_AT + 64] = pending.ljust(64, b"\0")
        _SHA256_NUM.pack_into(ctx, _SHA256_NUM_AT, len(pending), 32)
        ctypes.memmove(hasher._ctx, bytes(ctx), _SHA256_CTX_SIZE)
        return hasher


class ResumableXxh128:
    """XXH3-128 (seed 0, as ``xxhash.xxh3_128``) over xxHash's C API; :meth:`export` gives its state."""

    digest_size = 16

    def __init__(self, _libs: _Libraries | None = None) -> None:
        libs = _libs or _libraries()
        if libs is None:
            raise RuntimeError("resumable hashing is not available here")
        self._libs = libs
        self._lib = libs.xxh
        self._update = libs.xxh_update
        # XXH3_state_t must be 64-byte aligned: take an aligned window of a larger buffer.
        self._buffer = ctypes.create_string_buffer(_XXH3_STATE_SIZE + _XXH3_ALIGN)
        base = ctypes.addressof(self._buffer)
        self._state = base + (-base % _XXH3_ALIGN)
        if self._lib.XXH3_128bits_reset(self._state) != 0:
            raise RuntimeError("XXH3_128bits_reset failed")

    def _raw(self) -> bytes:
        return ctypes.string_at(self._state, _XXH3_STATE_SIZE)

    def update(self, data: bytes, /) -> None:
        self._update(self._state, _in_place(data), len(data))

    def digest(self) -> bytes:
        value = self._lib.XXH3_128bits_digest(self._state)
        return int((value.high64 << 64) | value.low64).to_bytes(16, "big")

    def copy(self) -> ResumableXxh128:
        other = ResumableXxh128(self._libs)
        ctypes.memmove(other._state, self._state, _XXH3_STATE_SIZE)  # same process: the pointer stays valid
        return other

    @property
    def size(self) -> int:
        return int(_XXH3_COUNTERS.unpack_from(self._raw(), _XXH3_COUNTERS_AT)[3])

    def export(self) -> bytes:
        """xxHash's version (u32), the accumulators, the buffer, bufferedSize, nbStripesSoFar, totalLen."""
        raw = self._raw()
        buffered, use_seed, stripes, total, per_block, limit, seed, _ = _XXH3_COUNTERS.unpack_from(
            raw, _XXH3_COUNTERS_AT
        )
        if use_seed or seed or per_block != _XXH3_STRIPES_PER_BLOCK or limit != _XXH3_SECRET_LIMIT:
            raise StateError("the XXH3 state is not in the layout this module knows")
        return (
            struct.pack("<I", self._libs.xxh_version)
            + raw[_XXH3_ACC]
            + raw[_XXH3_BUFFER]
            + struct.pack("<IQQ", buffered, stripes, total)
        )

    @classmethod
    def restore(cls, state: bytes, _libs: _Libraries | None = None) -> ResumableXxh128:
        if len(state) != 4 + 64 + 256 + 20:
            raise StateError("XXH3 state has the wrong size")
        hasher = cls(_libs)
        (version,) = struct.unpack_from("<I", state, 0)
        if version != hasher._libs.xxh_version:
            raise StateError(f"XXH3 state written by xxHash {version}, this is {hasher._libs.xxh_version}")
        buffered, stripes, total = struct.unpack_from("<IQQ", state, 324)
        if buffered > 256 or stripes >= _XXH3_STRIPES_PER_BLOCK:
            raise StateError("XXH3 state is inconsistent")
        raw = bytearray(hasher._raw())  # fresh: its secret pointer and limits are this process's
        raw[_XXH3_ACC] = state[4:68]
        raw[_XXH3_BUFFER] = state[68:324]
        _, use_seed, _, _, per_block, limit, seed, reserved = _XXH3_COUNTERS.unpack_from(
            raw, _XXH3_COUNTERS_AT
        )
        _XXH3_COUNTERS.pack_into(
            raw, _XXH3_COUNTERS_AT, buffered, use_seed, stripes, total, per_block, limit, seed, reserved
        )
        ctypes.memmove(hasher._state, bytes(raw), _XXH3_STATE_SIZE)
        return hasher


def _self_test(libs: _Libraries) -> str | None:
    """Compare with hashlib and ``xxhash`` on random splits, via export/import; what failed, if any."""
    rng = random.Random(20261130)  # noqa: S311  (test data, not secrets)
    data = rng.randbytes(5000)
    for rounds in range(40):
        sha, xxh = ResumableSha256(libs), ResumableXxh128(libs)
        position = 0
        limit = rng.choice((0, 1, 63, 64, 65, 255, 256, 257, 1024, 4095, len(data)))
        while position < limit:
            step = rng.randint(0, min(limit - position, 1100 if rounds % 2 else 70))
            sha.update(data[position : position + step])
            xxh.update(data[position : position + step])
            position += step
            sha = ResumableSha256.restore(sha.export(), libs)
            xxh = ResumableXxh128.restore(xxh.export(), libs)
            if sha.size != position or xxh.size != position:
                return f"the byte count after {position} bytes is {sha.size} / {xxh.size}"
        if sha.digest() != hashlib.sha256(data[:position]).digest():
            return f"SHA-256 of {position} bytes differs from hashlib's"
        if xxh.digest() != xxhash.xxh3_128(data[:position]).digest():
            return f"XXH3-128 of {position} bytes differs from the xxhash package's"
    return None


def _in_place(data: bytes | bytearray | memoryview) -> bytes | ctypes.Array[ctypes.c_char]:
    """``data`` as the C functions take it: ``bytes`` as they are, a writable buffer (the body pipeline's
    blocks are bytearrays and views of them) without a copy, anything else copied into ``bytes``."""
    if type(data) is bytes:
        return data
    view = memoryview(data)
    if view.readonly or not view.contiguous:
        return bytes(view)
    return (ctypes.c_char * view.nbytes).from_buffer(view.cast("B"))


@functools.cache
def available() -> bool:
    """Whether resumable hashers work here (libraries found, layouts verified); decided once, logged."""
    libs = _libraries()
    if libs is None:
        return False
    try:
        failure = _self_test(libs)
    except (StateError, RuntimeError, OSError) as exc:
        failure = str(exc)
    if failure is not None:
        log.error("digest state export is off: self-test failed (%s); takeovers re-read stored data", failure)
        return False
    return True


__all__ = ["ResumableSha256", "ResumableXxh128", "StateError", "available"]
