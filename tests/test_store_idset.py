"""IdSet, the compact index of finished ids that resume checks every input record against: every
id put in is found and no other is, across the lookup table's group boundaries."""

from __future__ import annotations

import pytest

from llmrun.job.store import IdSet


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 1023, 1024, 1025, 4097, 50_000])
def test_every_id_is_found_and_no_other(n: int) -> None:
    ids = [f"id-{i}" for i in range(n)]
    done = IdSet(ids + ids[: n // 2])  # repeats count once
    assert len(done) == n
    assert all(i in done for i in ids)
    assert not any(f"other-{i}" in done for i in range(5_000))
    assert 7 not in done and None not in done
