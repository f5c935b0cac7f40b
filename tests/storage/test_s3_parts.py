"""The S3 part schedule, the memory it costs and the commit record, for every file size up to 5 TiB."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

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
from eftgw.storage.s3_writer import PER_UPLOAD, held_for, memory_for, spool_for

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


def test_memory_per_upload_is_64_mib_up_to_109_gib() -> None:
    """For every part size the schedule uses up to 109 GiB, the part filling plus the parts in flight hold at
    most 64 MiB; beyond, one part at a time (the part size) is what a writer holds."""
    for number in NUMBERS:
        size = part_size(number)
        assert held_for(size) == (PER_UPLOAD if size <= PER_UPLOAD else size)
    boundary = sum(part_size(n) for n in range(1, 3001))  # 1,000 parts each of 16, 32 and 64 MiB
    assert boundary == 112_000 * MiB > 109 * GiB
    assert largest_part_for(boundary) == 64 * MiB
    for length in (1, 16 * MiB, 20 * GiB, 100 * GiB, boundary):
        assert held_for(largest_part_for(length)) <= 64 * MiB
    assert largest_part_for(5 * TiB) <= 4 * GiB  # the cost above 109 GiB, stated in docs/storage-s3.md


def test_memory_per_upload_is_64_mib_at_every_size_up_to_5_tib() -> None:
    """Parts above 64 MiB (files past 109 GiB) are spooled to a temporary file, so for every part number, and
    so for every file size up to 5 TiB, a writer holds at most 64 MiB of memory; the spool holds at most
    two parts (one filling, one uploading), 8 GiB for the 4 GiB parts past 2 TiB."""
    for number in NUMBERS:
        size = part_size(number)
        assert memory_for(size) <= PER_UPLOAD
        assert spool_for(size) == (0 if size <= PER_UPLOAD else 2 * size)
    for length in (1, 20 * GiB, 109 * GiB, 110 * GiB, 2 * TiB, 5 * TiB):
        assert memory_for(largest_part_for(length)) <= 64 * MiB
        assert spool_for(largest_part_for(length)) <= 8 * GiB
    assert memory_for(16 * MiB, spool_above=4 * MiB) == 0  # the small setting the spool test runs with


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
