"""The bucket arithmetic of the CUDA graphs (the capture itself needs a GPU: benchmarks/ramp.py and
benchmarks/step_bench.py exercise it on one)."""

import pytest

from orpheus_tts.engine.cuda_graphs import batch_buckets, bucket_for


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert batch_buckets(200) == [1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 200]
    assert batch_buckets(100, step=100) == [1, 2, 4, 8, 16, 32, 64, 100]  # SNAC's buckets


def test_bucket_for_is_the_smallest_that_holds_the_batch():
    buckets = batch_buckets(200)
    assert [bucket_for(buckets, n) for n in (1, 2, 3, 5, 17, 33, 64, 65, 193, 200)] == [
        1, 2, 4, 8, 32, 64, 64, 96, 200, 200]  # fmt: skip
    with pytest.raises(ValueError):
        bucket_for(buckets, 201)
