"""The minio internals the S3 store relies on (eftgw/storage/s3_client.py) are still there, shaped as used.

Each test names what it checks; a minio upgrade that renames or reshapes one fails here first, with the name.
"""

from __future__ import annotations

import inspect

import pytest
from minio import Minio
from minio.helpers import genheaders, quote

from eftgw.storage import s3_client

# The private request builders, with the parameters s3_client passes (positionally or by name).
USED = {
    "_put_object": ["self", "bucket_name", "object_name", "data", "headers"],
    "_create_multipart_upload": ["self", "bucket_name", "object_name", "headers"],
    "_upload_part": ["self", "bucket_name", "object_name", "data", "headers", "upload_id", "part_number"],
    "_upload_part_copy": ["self", "bucket_name", "object_name", "upload_id", "part_number", "headers"],
    "_list_parts": ["self", "bucket_name", "object_name", "upload_id"],
    "_complete_multipart_upload": ["self", "bucket_name", "object_name", "upload_id", "parts"],
    "_abort_multipart_upload": ["self", "bucket_name", "object_name", "upload_id"],
    "_list_multipart_uploads": ["self", "bucket_name"],
}
KEYWORDS = {
    "_list_parts": {"part_number_marker"},
    "_list_multipart_uploads": {"prefix", "key_marker", "upload_id_marker"},
}


def test_the_installed_minio_is_the_tested_one() -> None:
    """The pinned minio is one the S3 client's use of its internals was checked against."""
    s3_client.require_tested_minio()


def test_another_minio_version_is_refused_with_a_clear_message() -> None:
    """An untested minio stops the S3 store when it opens, naming both versions."""
    with pytest.raises(s3_client.UntestedMinioVersion, match=r"minio 8\.0\.0 is installed.*7\.2\.20"):
        s3_client.require_tested_minio("8.0.0")


@pytest.mark.parametrize("name", sorted(USED))
def test_each_private_request_builder_takes_the_arguments_we_pass(name: str) -> None:
    """``Minio.<name>`` exists and its leading parameters (and the keywords we use) are unchanged."""
    method = getattr(Minio, name, None)
    assert method is not None, f"minio no longer has Minio.{name}"
    params = list(inspect.signature(method).parameters)
    assert params[: len(USED[name])] == USED[name], (name, params)
    assert KEYWORDS.get(name, set()) <= set(params), (name, params)


def test_the_header_helpers_behave_as_used() -> None:
    """``genheaders(headers, sse, tags, retention, legal_hold)`` turns tags into ``x-amz-tagging`` and keeps
    our metadata headers; ``quote`` percent-encodes a copy source but keeps its slashes."""
    assert list(inspect.signature(genheaders).parameters) == [
        "headers",
        "sse",
        "tags",
        "retention",
        "legal_hold",
    ]
    headers = genheaders({"x-amz-meta-eftgw-case": "C-1"}, None, {"case": "C-1", "sha256": "ab"}, None, False)
    assert headers["x-amz-meta-eftgw-case"] == "C-1"
    assert "case=C-1" in str(headers["x-amz-tagging"]) and "sha256=ab" in str(headers["x-amz-tagging"])
    assert quote("/bucket/cases/C 1/f") == "/bucket/cases/C%201/f"


def test_the_signed_payload_override_matches_minio_build_headers() -> None:
    """``Minio._build_headers(host, headers, body, creds)`` is what s3_client overrides to sign the body's
    SHA-256 it computed: the parameters are unchanged, and with our header the request carries that SHA-256
    as ``x-amz-content-sha256`` (on HTTP and HTTPS) with no Content-MD5; without it, minio's own behaviour."""
    from minio.credentials import Credentials

    params = list(inspect.signature(Minio._build_headers).parameters)
    assert params == ["self", "host", "headers", "body", "creds"]
    creds = Credentials("key", "secret")
    for secure in (False, True):
        client = s3_client._SignedPayloadMinio("127.0.0.1:1", "key", "secret", secure=secure)
        signed, _date = client._build_headers("h", {s3_client.PAYLOAD_SHA256: "ab" * 32}, b"body", creds)
        assert signed["x-amz-content-sha256"] == "ab" * 32 and signed["Content-Length"] == "4"
        assert "Content-MD5" not in signed and s3_client.PAYLOAD_SHA256 not in signed
        plain, _date = client._build_headers("h", {}, b"body", creds)
        assert plain["x-amz-content-sha256"] != "ab" * 32
