"""Property-based tests (Hypothesis) of every parser of client-controlled header text: each returns a value
within its documented bounds or raises its domain error (a 4xx), for any input whatsoever."""

from __future__ import annotations

import base64
import datetime as dt
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eftgw.auth import MAX_NUMERIC_DATE, _instant
from eftgw.errors import BadRequest, DomainError, RangeNotSatisfiable, Unauthenticated
from eftgw.hashing import CHECKSUM_ALGORITHMS, ChunkChecksum
from eftgw.http.headers import MAX_INTEGER, parse_integer, parse_range
from eftgw.http.tus import format_metadata, parse_metadata

pytestmark = pytest.mark.once  # pure parsers, no gateway: nothing here touches a backend

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that looks like numbers to a careless parser: ASCII and Unicode digits, signs, spaces, separators.
numberish = st.text(
    alphabet=st.sampled_from(
        [*string.digits, "²", "٣", "\uff11", "\u07c0", "-", "+", " ", "\t", "_", ".", "e", ","]
    ),
    max_size=40,
)
any_text = st.one_of(numberish, st.text(max_size=60))


@FUZZ
@given(any_text)
@example("9999999999999999999")
@example("²")
@example("٣")
@example("4" * 4400)
def test_integer_header_is_ascii_digits_within_bounds_or_400(raw: str) -> None:
    """parse_integer returns the value of 1-19 ASCII digits up to 2**63 - 1; anything else is BadRequest."""
    stripped = raw.strip(" \t")
    is_plain = 0 < len(stripped) <= 19 and all(c in string.digits for c in stripped)
    try:
        value = parse_integer("Upload-Length", raw)
    except BadRequest as exc:
        assert "Upload-Length" in exc.message
        assert not is_plain or int(stripped) > MAX_INTEGER
    else:
        assert is_plain and value == int(stripped) and 0 <= value <= MAX_INTEGER


@FUZZ
@given(st.integers(min_value=0, max_value=MAX_INTEGER))
def test_integer_header_round_trips_every_valid_value(value: int) -> None:
    """Every integer the gateway can store parses back from its decimal form."""
    assert parse_integer("Upload-Offset", str(value)) == value


@FUZZ
@given(st.integers(min_value=MAX_INTEGER + 1, max_value=10**30))
def test_integer_header_above_the_maximum_is_400(value: int) -> None:
    """Values beyond 2**63 - 1 are refused, whatever their length."""
    try:
        parse_integer("Upload-Offset", str(value))
    except BadRequest:
        return
    raise AssertionError("accepted an integer above the maximum")


def reference_range(first: int | None, last: int | None, size: int) -> tuple[int, int] | str | None:
    """RFC 9110 section 14.1.2, written out plainly; 'unsatisfiable' for a 416."""
    if first is None:
        assert last is not None
        if last == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - last), size
    if first >= size or (last is not None and last < first):
        return "unsatisfiable"
    return first, size if last is None else min(last + 1, size)


positions = st.one_of(st.none(), st.integers(min_value=0, max_value=10**25))


@FUZZ
@given(positions, positions, st.integers(min_value=0, max_value=10**12))
@example(None, 5, 0)
@example(0, None, 0)
@example(10**4000, None, 10)
def test_valid_single_ranges_match_rfc_9110(first: int | None, last: int | None, size: int) -> None:
    """For every well-formed single range and file size, the answer is the RFC's (206 span or 416)."""
    if first is None and last is None:
        return
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    expected = reference_range(first, last, size)
    try:
        got: tuple[int, int] | str | None = parse_range(header, size)
    except RangeNotSatisfiable:
        got = "unsatisfiable"
    assert got == expected


@FUZZ
@given(any_text.map(lambda t: "bytes=" + t), st.integers(min_value=0, max_value=10**6))
@example("bytes=-5", 0)
@example("bytes=²-", 10)
@example("bytes=" + "9" * 4400 + "-", 10)
def test_any_range_header_is_a_span_inside_the_file_or_416_or_ignored(header: str, size: int) -> None:
    """Whatever the text, parse_range gives None (whole file), a non-empty span inside the file, or 416."""
    try:
        span = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if span is not None:
        start, end = span
        assert 0 <= start < end <= size


@FUZZ
@given(any_text)
def test_upload_metadata_parses_to_text_or_400(raw: str) -> None:
    """Upload-Metadata of any shape is a dict of strings or a BadRequest, never another exception."""
    try:
        parsed = parse_metadata(raw)
    except BadRequest:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())


metadata_keys = st.text(alphabet=string.ascii_letters + string.digits + "_-.", min_size=1, max_size=12)


@FUZZ
@given(st.dictionaries(metadata_keys, st.text(max_size=40), max_size=6))
def test_upload_metadata_round_trips(metadata: dict[str, str]) -> None:
    """What HEAD sends back (format_metadata) parses to the same metadata."""
    assert parse_metadata(format_metadata(metadata)) == metadata


checksum_headers = st.one_of(
    any_text,
    st.tuples(st.sampled_from([*CHECKSUM_ALGORITHMS, "md5", "SHA1", ""]), st.binary(max_size=40)).map(
        lambda t: f"{t[0]} {base64.b64encode(t[1]).decode()}"
    ),
)


@FUZZ
@given(checksum_headers)
def test_upload_checksum_parses_or_is_a_4xx(raw: str) -> None:
    """Upload-Checksum is a known algorithm with a base64 digest, or a 400 with a reason."""
    try:
        checksum = ChunkChecksum.parse(raw)
    except DomainError as exc:
        assert exc.status == 400
        return
    assert checksum.algorithm in CHECKSUM_ALGORITHMS


json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
)


@FUZZ
@given(json_values)
@example(10**20)
@example(1e300)
@example(True)
def test_token_dates_are_sane_times_or_401(claim: object) -> None:
    """A JWT's exp/nbf/iat is a time between 1970 and 3000, or the token is refused with 401."""
    try:
        instant = _instant(claim)
    except Unauthenticated:
        return
    assert isinstance(claim, int | float) and not isinstance(claim, bool)
    assert 0 <= claim <= MAX_NUMERIC_DATE
    assert instant.tzinfo is dt.UTC and instant + dt.timedelta(days=1) > instant
