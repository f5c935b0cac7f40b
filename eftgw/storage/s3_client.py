"""The edge between eftgw and the ``minio`` client: a bounded thread pool, typed calls, converted errors.

``minio`` is synchronous, so every call runs in a :class:`~concurrent.futures.ThreadPoolExecutor` of
``max_workers`` threads (and an HTTP connection pool of the same size), never on the event loop. Every
third-party exception is converted here: "no such key/upload" becomes :class:`ObjectNotFound`, a full store
(HTTP 507, MinIO's ``XMinioStorageFull``, a bucket or user quota: ``QuotaExceeded``) :class:`OutOfSpace`,
everything else :class:`StorageError` with a message an operator can act on and the original as ``__cause__``.

Every request with a body carries a checksum of the bytes to be stored, which the store verifies, so it
refuses a body that changed on the way instead of keeping it: the body's SHA-256 signed as
``x-amz-content-sha256`` (``XAmzContentSHA256Mismatch``) for UploadPart and for every PutObject of a
:class:`Body` (commit records, small files); ``Content-MD5`` (``BadDigest``) for a PutObject of plain bytes.
The SHA-256 runs with the CPU's SHA extensions, more than twice as fast as MD5 here, in a worker thread:
here, or in the S3 writer, which hashes each part as it fills and passes the digest. (Ceph RGW 16 ignores
the newer ``x-amz-checksum-*`` headers.) Bodies are sent as they are, in pieces (a part's chunks, a record's
header and tail), never joined into a new buffer first.

This module is also the one place that uses minio beyond its public API (its compatibility module). The
single-request PutObject with our own headers and the multipart calls (create, upload part, upload part
copy, list parts, complete, abort, list uploads) are not public in minio 7.2: they are its own request
builders (``Minio._put_object``, ``Minio._create_multipart_upload`` etc.), used here with ``genheaders`` and
``quote`` from ``minio.helpers``. :func:`require_tested_minio` refuses, when the store opens, a minio version
they were not tested with; ``tests/storage/test_minio_compat.py`` names each of them, so an upgrade that
changes one fails there loudly.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import mmap
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar
from xml.etree import ElementTree

import certifi
import minio
import urllib3
from minio import Minio
from minio import time as minio_time
from minio.commonconfig import REPLACE, CopySource, Tags
from minio.datatypes import Part
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.helpers import genheaders, quote

from eftgw.storage.base import ObjectNotFound, OutOfSpace, StorageError

T = TypeVar("T")
TESTED_MINIO_VERSIONS = frozenset({"7.2.20"})
"""The minio versions whose private request builders this module was checked against (one is pinned)."""
NOT_FOUND = {"NoSuchKey", "NoSuchObject", "NoSuchUpload", "NoSuchVersion", "ResourceNotFound"}
FULL = {"XMinioStorageFull", "QuotaExceeded", "XMinioAdminBucketQuotaExceeded", "InsufficientStorage"}
INSUFFICIENT_STORAGE = 507
TRANSIENT = (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError)


class UntestedMinioVersion(StorageError):
    """minio is not a version this module's use of its private request builders was tested with."""


def require_tested_minio(version: str | None = None) -> None:
    """Refuse to use S3 with a minio this module was not tested with (its private builders may differ).

    :raises UntestedMinioVersion: naming the installed and the tested versions.
    """
    found = version if version is not None else minio.__version__
    if found not in TESTED_MINIO_VERSIONS:
        raise UntestedMinioVersion(
            f"minio {found} is installed, but eftgw's S3 store was tested only with minio "
            f"{', '.join(sorted(TESTED_MINIO_VERSIONS))}; install the version pinned in eftgw's requirements"
        )


@dataclass(frozen=True)
class Listed:
    """One object (or object version) in a listing."""

    name: str
    size: int
    modified: dt.datetime | None
    version_id: str | None = None


@dataclass(frozen=True)
class Unfinished:
    """A multipart upload that was started and neither completed nor aborted."""

    name: str
    upload_id: str
    initiated: dt.datetime | None


def content_md5(data: bytes) -> str:
    """The ``Content-MD5`` header value of a request body (RFC 1864: base64 of the binary MD5)."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


PAYLOAD_SHA256 = "x-eftgw-payload-sha256"  # our request header: the body's SHA-256, to be signed
SEND_BLOCK = 1024 * 1024  # what urllib3 reads from a file-like body per send() (its default is 16 KiB)

Buffer = bytes | memoryview
"""Bytes, or a view of a buffer (such as a spooled part's)."""

Piece = bytes | bytearray | memoryview | tuple[BinaryIO, int, int]
"""A piece of a :class:`Body`: bytes as they are, or ``(file, start, length)``: a range of a file."""


class Body:
    """A request body made of pieces sent one after the other, never joined into one buffer.

    urllib3 reads it like a file (each :meth:`read` gives the next piece, or the next 1 MiB of a file range)
    and sends each piece with ``sendall``, so parts built from the blocks the client sent go out without a
    copy; it records :meth:`tell` before sending and :meth:`seek` s back to retry. Bytes-like pieces must not
    change until the request is over.
    """

    def __init__(self, pieces: Sequence[Piece]) -> None:
        self._pieces: list[memoryview | tuple[BinaryIO, int, int]] = []
        for piece in pieces:
            if isinstance(piece, tuple):
                if piece[2]:
                    self._pieces.append(piece)
            elif len(piece):
                self._pieces.append(memoryview(piece).cast("B"))
        self._sizes = [p.nbytes if isinstance(p, memoryview) else p[2] for p in self._pieces]
        self.length = sum(self._sizes)
        self._index = 0  # the piece read next
        self._offset = 0  # how far into it

    def __len__(self) -> int:
        return self.length

    def read(self, size: int = -1) -> bytes | memoryview:
        """The next piece (or what is left of it), a file range 1 MiB at a time; ``b""`` at the end."""
        if self._index >= len(self._pieces):
            return b""
        piece, offset = self._pieces[self._index], self._offset
        if isinstance(piece, memoryview):
            block: bytes | memoryview = piece[offset:]
        else:
            file, start, length = piece
            block = os.pread(file.fileno(), min(SEND_BLOCK, length - offset), start + offset)
            if not block:
                raise OSError(f"the file ended {length - offset} bytes early")
        self._offset += len(block)
        if self._offset == self._sizes[self._index]:
            self._index, self._offset = self._index + 1, 0
        return block

    def tell(self) -> int:
        return sum(self._sizes[: self._index]) + self._offset

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or not 0 <= position <= self.length:
            raise OSError(f"cannot seek a request body to {position} (whence {whence})")
        self._index, self._offset = 0, position
        while self._index < len(self._sizes) and self._offset >= self._sizes[self._index]:
            self._offset -= self._sizes[self._index]
            self._index += 1
        return position

    def blocks(self) -> Iterator[bytes | memoryview]:
        """Every byte of the body in order, without moving the read position."""
        for piece in self._pieces:
            if isinstance(piece, memoryview):
                yield piece
                continue
            file, start, length = piece
            for at in range(start, start + length, SEND_BLOCK):
                yield os.pread(file.fileno(), min(SEND_BLOCK, start + length - at), at)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for block in self.blocks():
            digest.update(block)
        return digest.hexdigest()


class _SignedPayloadMinio(Minio):
    """``Minio`` that signs a SHA-256 of the body computed by the caller (on HTTP and HTTPS alike).

    minio signs ``UNSIGNED-PAYLOAD`` on HTTPS and hashes the body again on HTTP. With the caller's SHA-256
    in ``x-amz-content-sha256`` (signed), S3 verifies the body against it and refuses a damaged one
    (``XAmzContentSHA256Mismatch``), and the body is hashed once, with the CPU's SHA extensions, instead of
    an MD5 plus minio's own SHA-256. The override mirrors ``Minio._build_headers`` of the pinned minio.
    """

    def _build_headers(
        self, host: str, headers: Any = None, body: bytes | None = None, creds: Any = None
    ) -> tuple[Any, dt.datetime]:
        headers = headers or {}
        payload = headers.pop(PAYLOAD_SHA256, None)
        if payload is None or creds is None:
            return super()._build_headers(host, headers, body, creds)
        headers["Host"] = host
        headers["User-Agent"] = self._user_agent
        if body:  # bytes or a Body: both have a length
            headers["Content-Length"] = str(len(body))
        headers["x-amz-content-sha256"] = payload
        if creds.session_token:
            headers["X-Amz-Security-Token"] = creds.session_token
        date = minio_time.utcnow()
        headers["x-amz-date"] = minio_time.to_amz_date(date)
        return headers, date


def object_tags(values: dict[str, str]) -> Tags:
    tags = Tags.new_object_tags()
    for key, value in values.items():
        tags[key] = value
    return tags


class S3Client:
    """Async wrapper of one bucket of a ``minio`` client. Methods name the S3 operation they perform."""

    def __init__(
        self,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        bucket: str,
        *,
        secure: bool = True,
        region: str | None = None,
        max_workers: int = 16,
        timeout: float = 120.0,
    ) -> None:
        self.bucket = bucket
        self.endpoint = endpoint
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10.0, read=timeout),
            maxsize=max_workers,
            blocksize=SEND_BLOCK,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self.minio = _SignedPayloadMinio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="eftgw-s3")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    async def run(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in the pool; ``what`` names the operation in error messages."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except S3Error as exc:
            raise self.convert(what, exc) from exc
        except (ServerError, InvalidResponseError) as exc:
            status = exc.status_code if isinstance(exc, ServerError) else exc._code
            if status == INSUFFICIENT_STORAGE:
                raise OutOfSpace(f"S3 storage at {self.endpoint} is full ({what}: HTTP 507).") from exc
            raise StorageError(
                f"S3 storage at {self.endpoint} did not complete {what}: HTTP {status}."
            ) from exc
        except TRANSIENT as exc:
            raise StorageError(
                f"S3 storage at {self.endpoint} did not complete {what}: {type(exc).__name__}."
            ) from exc

    def convert(self, what: str, exc: S3Error) -> Exception:
        if exc.code in NOT_FOUND:
            return ObjectNotFound(exc.object_name or what)
        if exc.code in FULL or getattr(exc.response, "status", None) == INSUFFICIENT_STORAGE:
            return OutOfSpace(f"S3 storage is full or over quota ({what}: {exc.code}).")
        if exc.code in ("BadDigest", "XAmzContentSHA256Mismatch"):
            return StorageError(
                f"S3 storage refused {what}: the body did not match its checksum (Content-MD5 or the"
                " signed SHA-256)."
            )
        if exc.code == "NoSuchBucket":
            return StorageError(f"S3 bucket {self.bucket!r} does not exist ({what}).")
        if exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(
                f"S3 storage refused {what} on bucket {self.bucket!r} ({exc.code}): check the access key, the"
                " secret and the key's rights."
            )
        return StorageError(f"S3 storage failed {what} ({exc.code}).")

    # objects ----------------------------------------------------------------------------------------

    async def put(
        self,
        name: str,
        data: bytes | Body,
        metadata: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """PutObject of ``data``: bytes carry ``Content-MD5``, a :class:`Body` (sent in pieces) its signed
        SHA-256; S3 refuses a damaged body either way."""

        body: Any = data if len(data) else b""  # an empty Body would go out chunked: send no body

        def put() -> None:
            headers = genheaders(
                {f"x-amz-meta-{k}": v for k, v in (metadata or {}).items()}, None, tags, None, False
            )
            headers["Content-Type"] = "application/octet-stream"
            if isinstance(body, Body):
                headers[PAYLOAD_SHA256] = body.sha256()
            else:
                headers["Content-MD5"] = content_md5(body)
            self.minio._put_object(self.bucket, name, body, headers)

        await self.run(f"PUT {name}", put)

    async def head(self, name: str) -> tuple[int, dict[str, str]]:
        """Size and user metadata (keys without ``x-amz-meta-``, lower case) of an object."""

        def head() -> tuple[int, dict[str, str]]:
            stat = self.minio.stat_object(self.bucket, name)
            meta = {
                k.lower().removeprefix("x-amz-meta-"): v
                for k, v in (stat.metadata or {}).items()
                if k.lower().startswith("x-amz-meta-")
            }
            return int(stat.size or 0), meta

        return await self.run(f"HEAD {name}", head)

    def open_range(self, name: str, start: int, length: int) -> Any:
        """(In a worker thread) open a GET of ``length`` bytes from ``start`` (0: to the end)."""
        return self.minio.get_object(self.bucket, name, offset=start, length=length)

    async def get_bytes(self, name: str, start: int, length: int) -> bytes:
        def get() -> bytes:
            response = self.open_range(name, start, length)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        return await self.run(f"GET {name}", get)

    async def get_line_and_rest(
        self, name: str, keep: int, spill: Callable[[int], mmap.mmap]
    ) -> tuple[bytes, bytes | memoryview]:
        """The first line of an object (without its newline) and the rest: as bytes if at most ``keep``
        bytes, else read straight into ``spill(size)`` (a buffer outside memory) and returned as its view."""

        def get() -> tuple[bytes, bytes | memoryview]:
            response = self.open_range(name, 0, 0)
            try:
                total = int(response.headers["Content-Length"])
                head = bytearray()
                while (newline := head.find(b"\n")) < 0 and len(head) < total:
                    head += response.read(min(SEND_BLOCK, total - len(head)))
                if newline < 0:
                    return bytes(head), b""
                rest = memoryview(head)[newline + 1 :]
                size = total - newline - 1
                if size <= keep:
                    return bytes(head[:newline]), bytes(rest) + response.read()
                buffer = memoryview(spill(size))
                buffer[: len(rest)] = rest
                got = len(rest)
                while got < size:
                    n = response.readinto(buffer[got : got + SEND_BLOCK])
                    if not n:
                        raise OSError(f"{name} ended after {got} of {size} bytes")
                    got += n
                line = bytes(head[:newline])
                rest.release()
                return line, buffer
            finally:
                response.close()
                response.release_conn()

        return await self.run(f"GET {name}", get)

    async def copy(self, source: str, name: str, metadata: dict[str, str], tags: dict[str, str]) -> None:
        await self.run(
            f"COPY {source} to {name}",
            self.minio.copy_object,
            self.bucket,
            name,
            CopySource(self.bucket, source),
            metadata={f"x-amz-meta-{k}": v for k, v in metadata.items()},
            metadata_directive=REPLACE,
            tags=object_tags(tags),
            tagging_directive=REPLACE,
        )

    async def tags(self, name: str) -> dict[str, str]:
        def get() -> dict[str, str]:
            try:
                return dict(self.minio.get_object_tags(self.bucket, name) or {})
            except ElementTree.ParseError:  # RGW answers an empty body for an object without tags
                return {}

        return await self.run(f"GET tagging of {name}", get)

    async def set_tags(self, name: str, tags: dict[str, str]) -> None:
        """Replace the object's tags (RGW 16 ignores ``x-amz-tagging`` on CreateMultipartUpload)."""
        await self.run(
            f"PUT tagging of {name}", self.minio.set_object_tags, self.bucket, name, object_tags(tags)
        )

    async def listing(self, prefix: str, *, versions: bool = False) -> list[Listed]:
        def objects() -> list[Listed]:
            found = self.minio.list_objects(
                self.bucket, prefix=prefix, recursive=True, include_version=versions
            )
            return [
                Listed(
                    o.object_name or "", int(o.size or 0), o.last_modified, o.version_id if versions else None
                )
                for o in found
            ]

        return await self.run(f"LIST {prefix}", objects)

    async def delete(self, objects: list[tuple[str, str | None]]) -> None:
        """Delete objects (name, version id or ``None``); missing ones are not an error."""
        if not objects:
            return

        def delete() -> None:
            for start in range(0, len(objects), 1000):
                batch = [DeleteObject(name, version) for name, version in objects[start : start + 1000]]
                errors = [e for e in self.minio.remove_objects(self.bucket, batch) if e.code not in NOT_FOUND]
                if errors:
                    raise StorageError(
                        f"S3 storage did not delete {errors[0].name} ({errors[0].code}) and"
                        f" {len(errors) - 1} more."
                    )

        await self.run("DELETE objects", delete)

    # multipart uploads --------------------------------------------------------------------------------

    async def create_multipart(self, name: str, metadata: dict[str, str], tags: dict[str, str]) -> str:
        headers = genheaders({f"x-amz-meta-{k}": v for k, v in metadata.items()}, None, tags, None, False)
        return await self.run(
            f"CreateMultipartUpload {name}", self.minio._create_multipart_upload, self.bucket, name, headers
        )

    async def upload_part(
        self, name: str, upload_id: str, number: int, data: bytes | Body, sha256: str | None = None
    ) -> Part:
        """UploadPart with ``data`` (bytes, or a :class:`Body` sent without joining it). Its SHA-256 is
        signed, so S3 refuses a damaged body; ``sha256`` is that digest if the caller already has it."""

        def upload() -> str:
            # hashed in the worker thread, not on the event loop; S3 verifies the signed SHA-256
            digest = sha256 or (data.sha256() if isinstance(data, Body) else hashlib.sha256(data).hexdigest())
            headers: dict[str, str | list[str] | tuple[str]] = {PAYLOAD_SHA256: digest}
            body: Any = data  # minio passes the body on to urllib3, which takes bytes or a file-like body
            etag: str = self.minio._upload_part(self.bucket, name, body, headers, upload_id, number)
            return etag

        etag = await self.run(f"UploadPart {name}#{number}", upload)
        return Part(number, etag)

    async def upload_part_copy(
        self, name: str, upload_id: str, number: int, source: str, start: int, length: int
    ) -> Part:
        headers = {
            "x-amz-copy-source": quote(f"/{self.bucket}/{source}"),
            "x-amz-copy-source-range": f"bytes={start}-{start + length - 1}",
        }
        etag, _ = await self.run(
            f"UploadPartCopy {source} to {name}#{number}",
            self.minio._upload_part_copy,
            self.bucket,
            name,
            upload_id,
            number,
            headers,
        )
        return Part(number, etag)

    async def list_parts(self, name: str, upload_id: str) -> list[Part]:
        """Every part stored in the multipart upload (number, ETag, size), in number order."""

        def listing() -> list[Part]:
            parts: list[Part] = []
            marker: str | None = None
            while True:
                result = self.minio._list_parts(self.bucket, name, upload_id, part_number_marker=marker)
                parts += result.parts
                if not result.is_truncated:
                    return parts
                marker = result.next_part_number_marker

        return await self.run(f"ListParts {name}", listing)

    async def complete_multipart(self, name: str, upload_id: str, parts: list[Part]) -> None:
        await self.run(
            f"CompleteMultipartUpload {name}",
            self.minio._complete_multipart_upload,
            self.bucket,
            name,
            upload_id,
            parts,
        )

    async def abort_multipart(self, name: str, upload_id: str) -> None:
        try:
            await self.run(
                f"AbortMultipartUpload {name}",
                self.minio._abort_multipart_upload,
                self.bucket,
                name,
                upload_id,
            )
        except ObjectNotFound:
            return

    async def unfinished(self, prefix: str) -> list[Unfinished]:
        """Every multipart upload under ``prefix`` that was neither completed nor aborted."""

        def listing() -> Iterator[Unfinished]:
            key_marker: str | None = None
            upload_marker: str | None = None
            while True:
                result = self.minio._list_multipart_uploads(
                    self.bucket, prefix=prefix, key_marker=key_marker, upload_id_marker=upload_marker
                )
                for upload in result.uploads:
                    yield Unfinished(upload.object_name, upload.upload_id or "", upload.initiated_time)
                if not result.is_truncated:
                    return
                key_marker, upload_marker = result.next_key_marker, result.next_upload_id_marker

        return await self.run(f"ListMultipartUploads {prefix}", lambda: list(listing()))

    # bucket -----------------------------------------------------------------------------------------

    async def ensure_bucket(self, region: str | None) -> bool:
        """Create the bucket unless it exists; return whether versioning is enabled on it."""

        def ensure() -> bool:
            try:
                if not self.minio.bucket_exists(self.bucket):
                    self.minio.make_bucket(self.bucket, location=region)
            except S3Error as exc:
                if exc.code in ("BucketAlreadyOwnedByYou",):
                    pass
                elif exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    raise StorageError(
                        f"S3 bucket {self.bucket!r} does not exist or is not accessible, and these"
                        f" credentials may not create it ({exc.code}). Create the bucket, or grant"
                        " s3:CreateBucket,"
                        " s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject and the multipart"
                        " rights to this access key."
                    ) from exc
                else:
                    raise
            return self.minio.get_bucket_versioning(self.bucket).status == "Enabled"

        return await self.run(f"create/check bucket {self.bucket}", ensure)
