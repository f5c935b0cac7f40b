"""The S3 part schedule, the memory it costs and the commit record, for every file size up to 5 TiB."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from eftgw.memory import PER_UPLOAD, pipeline_held
from eftgw.storage.s3_parts import (
    DATA_SUFFIX,
    MAX_FULL_PARTS,
    MAX_OBJECT,
    MAX_PART,
    MAX_PARTS,
    MIN_PART,
    GiB,
    MiB,
    Record,
    TiB,
    capacity,
    copy_ranges,
    part_size,
    staging_of,
)
from eftgw.storage.s3_writer import WRITER_MEMORY, S3Writer, inflight_for, memory_for, spool_for

NUMBERS = range(1, MAX_PARTS + 1)


def largest_part_for(length: int) -> int:
    """The biggest full part a writer fills for a file of ``length`` bytes (cut by the schedule)."""
    start, number, largest = 0, 1, 0
    while start + part_size(number) <= length:
        largest = part_size(number)
        start += part_size(number)
        number += 1
    return max(largest, part_size(number) if start < length else 0)


def test_five_tebibytes_fit_in_ten_thousand_parts() -> None:
    """9,999 full parts plus a tail hold a 5 TiB object, the largest S3 allows."""
    assert capacity(1) > MAX_OBJECT == 5 * TiB
    assert Record("t").limit() == 5 * TiB


def test_every_part_size_is_within_s3_limits() -> None:
    """Every full part is between 5 MiB and 5 GiB, and sizes never shrink."""
    sizes = [part_size(n) for n in NUMBERS]
    assert all(MIN_PART <= s <= MAX_PART for s in sizes)
    assert sizes == sorted(sizes)


def test_an_upload_holds_at_most_64_mib_for_every_part_number() -> None:
    """For every part number up to 10,000 (every file size up to 5 TiB), the writer's share of memory plus
    what the body pipeline and the connection hold outside it (two blocks and the receive buffers) is at
    most 64 MiB: 53.25 MiB for the writer, 10.75 MiB outside."""
    outside = pipeline_held(S3Writer.block_size)
    assert outside == 10 * MiB + 768 * 1024
    assert WRITER_MEMORY + outside == PER_UPLOAD == 64 * MiB
    for number in NUMBERS:
        assert memory_for(part_size(number)) + outside <= 64 * MiB
    for length in (1, 16 * MiB, 20 * GiB, 100 * GiB, 109 * GiB, 110 * GiB, 2 * TiB, 5 * TiB):
        assert memory_for(largest_part_for(length)) + outside <= 64 * MiB


def test_parts_keep_uploading_while_the_next_fills_and_64_mib_parts_are_spooled() -> None:
    """Within the writer's 53.25 MiB, three 16 MiB parts upload while the fourth fills (its first 5.25 MiB),
    and one 32 MiB part while the next fills; 64 MiB parts and larger (from part 2,001: files past 48,000 MiB,
    46.9 GiB) are spooled to a temporary file, one uploading while the next fills, so the spool holds at most
    two parts: 8 GiB for the 4 GiB parts past 2 TiB."""
    assert inflight_for(16 * MiB) == 3 and WRITER_MEMORY - 3 * 16 * MiB == 5 * MiB + 256 * 1024
    assert inflight_for(32 * MiB) == 1 and WRITER_MEMORY - 32 * MiB == 21 * MiB + 256 * 1024
    first_spooled = next(n for n in NUMBERS if memory_for(part_size(n)) == 0)
    assert first_spooled == 2001 and part_size(first_spooled) == 64 * MiB
    assert sum(part_size(n) for n in range(1, first_spooled)) == 48_000 * MiB
    assert largest_part_for(48_000 * MiB) == 32 * MiB and largest_part_for(48_000 * MiB + 1) == 64 * MiB
    for number in NUMBERS:
        size = part_size(number)
        assert spool_for(size) == (0 if number < first_spooled else 2 * size)
        assert inflight_for(size) >= 1
    for length in (1, 20 * GiB, 109 * GiB, 110 * GiB, 2 * TiB, 5 * TiB):
        assert spool_for(largest_part_for(length)) <= 8 * GiB
    assert largest_part_for(5 * TiB) <= 4 * GiB
    assert memory_for(16 * MiB, writer_memory=4 * MiB) == 0  # the small setting the spool test runs with


def test_small_files_use_16_mib_parts() -> None:
    """Files up to 15.6 GiB are cut into 16 MiB parts (a 1 GiB file is 64 of them)."""
    assert part_size(1) == part_size(1000) == 16 * MiB
    assert part_size(1001) == 32 * MiB
    assert largest_part_for(1 * GiB) == 16 * MiB


@given(st.integers(min_value=0, max_value=5 * TiB))
def test_copy_ranges_cover_a_base_in_valid_parts(size: int) -> None:
    """A sealed base of any size is copied back in ranges that tile it, each at most 5 GiB and none but the
    last under 5 MiB; a base that is a multiple of 16 MiB never leaves a short last range."""
    ranges = copy_ranges(size)
    assert sum(length for _start, length in ranges) == size
    assert all(a + la == b for (a, la), (b, _) in itertools.pairwise(ranges))
    assert all(length <= MAX_PART for _s, length in ranges)
    assert all(length >= MIN_PART for _s, length in ranges[:-1])
    aligned = size - size % (16 * MiB)
    assert all(length >= MIN_PART for _s, length in copy_ranges(aligned))


def test_a_base_reserves_few_part_numbers() -> None:
    """Copying a base back takes one part number per 5 GiB, so a sealed upload can still reach 5 TiB."""
    record = Record("t", base=100 * GiB)
    assert record.first == 21
    assert record.limit() == 5 * TiB
    assert record.next_part_size() == 16 * MiB


@given(
    st.lists(st.tuples(st.text(alphabet='0123456789abcdef"', max_size=34), st.integers(1, 5 * GiB))),
    st.binary(max_size=256),
    st.integers(0, 5 * TiB),
    st.booleans(),
)
def test_the_commit_record_round_trips(
    parts: list[tuple[str, int]], tail: bytes, base: int, sealing: bool
) -> None:
    """A commit record decodes to what was encoded, whatever its tail bytes are (newlines included)."""
    record = Record("cases/C/f_1", base, "upload-1", parts, sealing)
    assert Record.decode(record.encode(tail)) == (record, tail)
    assert MAX_FULL_PARTS == MAX_PARTS - 1


def test_staging_of_maps_the_data_object_to_its_upload() -> None:
    """Every object of a staging upload maps back to its staging key."""
    assert staging_of("uploads/C/u1") == "uploads/C/u1"
    assert staging_of("uploads/C/u1" + DATA_SUFFIX) == "uploads/C/u1"
