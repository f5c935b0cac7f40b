"""The S3 part schedule respects S3's limits for every file size up to 5 TiB."""

from __future__ import annotations

import pytest

from eftgw.storage.s3_parts import (
    CAPACITY,
    MAX_FULL_PARTS,
    MAX_OBJECT,
    MAX_PART,
    MIN_PART,
    MiB,
    TiB,
    part_at,
    part_size,
    part_start,
    staging_of,
)


def test_five_tebibytes_fit_in_ten_thousand_parts() -> None:
    """9,999 full parts plus a tail hold a 5 TiB object, the largest S3 allows."""
    assert CAPACITY == MAX_OBJECT == 5 * TiB
    assert part_start(MAX_FULL_PARTS) + part_size(MAX_FULL_PARTS) > 5 * TiB


def test_every_part_size_is_within_s3_limits() -> None:
    """Every full part is between 5 MiB and 5 GiB."""
    assert all(MIN_PART <= part_size(i) <= MAX_PART for i in range(MAX_FULL_PARTS + 1))


def test_small_files_use_small_parts() -> None:
    """Files up to 7.8 GiB use 8 MiB parts, so a writer buffers at most 8 MiB of them."""
    assert part_size(0) == part_size(999) == 8 * MiB
    assert part_start(1000) == 1000 * 8 * MiB


@pytest.mark.parametrize(
    "offset", [0, 1, 8 * MiB - 1, 8 * MiB, 8000 * MiB, 8000 * MiB + 1, 3 * TiB, 5 * TiB - 1]
)
def test_part_at_finds_the_part_holding_an_offset(offset: int) -> None:
    """part_at is the inverse of part_start."""
    index = part_at(offset)
    assert part_start(index) <= offset < part_start(index) + part_size(index)


def test_staging_of_maps_parts_to_their_upload() -> None:
    """Every object of a staging upload maps back to its staging key."""
    assert staging_of("uploads/C/u1") == "uploads/C/u1"
    assert staging_of("uploads/C/u1/part-00003") == "uploads/C/u1"
