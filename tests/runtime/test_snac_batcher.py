import asyncio
import random
import threading
import time

import numpy as np
import pytest
import torch

from orpheus_tts.speech.snac_batcher import BatcherClosed, SnacBatcher


class Recorder:
    """A fake model: doubles numbers, records each call, fails on negative items."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay = delay

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if any(i < 0 for i in items):
            raise ValueError(f"bad item in {items}")
        return [2 * i for i in items]


def make(rec, max_batch=64, timeout_ms=50.0, key=lambda i: 0):
    b = SnacBatcher(rec, key, max_batch, timeout_ms)
    b.start()
    return b


async def test_concurrent_windows_share_one_call():
    rec = Recorder()
    b = make(rec)
    results = await asyncio.gather(*(b.decode(i) for i in range(10)))
    await b.close()
    assert results == [2 * i for i in range(10)]
    assert rec.calls == [list(range(10))]
    assert rec.threads and all(t.startswith("snac") for t in rec.threads)


async def test_max_batch_splits_calls():
    rec = Recorder()
    b = make(rec, max_batch=4)
    assert await asyncio.gather(*(b.decode(i) for i in range(10))) == [2 * i for i in range(10)]
    await b.close()
    assert [len(c) for c in rec.calls] == [4, 4, 2]


async def test_timeout_flushes_a_lone_window():
    rec = Recorder()
    b = make(rec, timeout_ms=30.0)
    t0 = time.monotonic()
    assert await b.decode(21) == 42
    waited = time.monotonic() - t0
    await asyncio.sleep(0.05)  # after the deadline: a new batch
    assert await b.decode(1) == 2
    await b.close()
    assert 0.025 <= waited < 2.0
    assert rec.calls == [[21], [1]]


async def test_one_call_per_shape_and_results_fan_back():
    rec = Recorder()
    b = make(rec, key=lambda i: i % 3)
    items = list(range(12))
    random.Random(0).shuffle(items)
    assert await asyncio.gather(*(b.decode(i) for i in items)) == [2 * i for i in items]
    await b.close()
    assert len(rec.calls) == 3
    # One key per call, smallest key first (for SNAC: the shortest windows are streams' first audio).
    assert [{i % 3 for i in call} for call in rec.calls] == [{0}, {1}, {2}]


async def test_error_fails_only_the_bad_window():
    rec = Recorder()
    b = make(rec)
    results = await asyncio.gather(*(b.decode(i) for i in (1, -1, 3)), return_exceptions=True)
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], ValueError)
    assert await b.decode(5) == 10  # and the batcher keeps serving
    await b.close()


async def test_event_loop_stays_responsive_while_decoding():
    rec = Recorder(delay=0.3)
    b = make(rec, timeout_ms=0.0)
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    assert await b.decode(1) == 2
    ticker.cancel()
    await b.close()
    assert ticks >= 10


async def test_cancelled_caller_is_skipped():
    rec = Recorder()
    b = make(rec, timeout_ms=50.0)
    doomed = asyncio.create_task(b.decode(7))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await b.decode(8) == 16
    await b.close()
    assert rec.calls == [[8]]


async def test_closed_batcher_refuses():
    b = make(Recorder())
    await b.close()
    with pytest.raises(BatcherClosed):
        await b.decode(1)


async def test_real_snac_batched_equals_unbatched():
    from snac import SNAC

    from orpheus_tts.model.tiny_model import SNAC_24KHZ_CONFIG
    from orpheus_tts.speech.snac_decoder import SnacModel, disable_noise
    from orpheus_tts.speech.windows import StreamWindows

    torch.manual_seed(0)
    # A narrow decoder (same rates, so same frame/sample layout) keeps this fast on CPU.
    model = SnacModel(disable_noise(SNAC(**{**SNAC_24KHZ_CONFIG, "decoder_dim": 64})), torch.device("cpu"))
    rng = random.Random(1)
    windows = []
    for _ in range(5):  # 5 streams, each a burst of 9 frames -> windows of several shapes
        sw = StreamWindows()
        sw.add([tuple(rng.randrange(4096) for _ in range(7)) for _ in range(9)])
        while (w := sw.next_window(final=True)) is not None:
            windows.append(w)
    sizes: list[int] = []
    b = SnacBatcher(model.decode_windows, lambda w: w.n_frames, 64, 50.0, on_call=sizes.append)
    b.start()
    batched = await asyncio.gather(*(b.decode(w) for w in windows))
    await b.close()
    assert len(sizes) == len({w.n_frames for w in windows}) < len(windows)
    for w, got in zip(windows, batched, strict=True):
        want = model.decode_windows([w])[0]
        assert len(got) == len(want)
        diff = np.frombuffer(got, np.int16).astype(int) - np.frombuffer(want, np.int16)
        assert np.abs(diff).max() <= 2


# -- order "deadline" (issue #17): the listener with the least buffered audio first --------------------


def test_group_order_by_key_or_by_most_urgent_item():
    from orpheus_tts.speech.snac_batcher import group_order

    groups = {7: [0, 1], 4: [2], 5: [3, 4]}
    assert group_order(groups, None) == [[2], [3, 4], [0, 1]]  # "shape": shortest windows first
    deadlines = [9.0, 1.0, 5.0, 7.0, 8.0]  # item 1 (in the 7-frame group) runs dry first
    assert group_order(groups, deadlines) == [[0, 1], [2], [3, 4]]


async def test_deadline_order_takes_the_most_urgent_windows_first():
    rec = Recorder(delay=0.05)
    b = SnacBatcher(rec, lambda i: 0, max_batch=2, timeout_ms=0.0, order="deadline")
    b.start()
    now = time.monotonic()
    busy = asyncio.ensure_future(b.decode(100, now))  # occupies the decoder while the others queue
    await asyncio.sleep(0.01)
    others = [asyncio.ensure_future(b.decode(i, now + d)) for i, d in ((1, 3.0), (2, 1.0), (3, 2.0), (4, 0.5))]
    await asyncio.gather(busy, *others)
    await b.close()
    assert rec.calls == [[100], [4, 2], [3, 1]]


async def test_shape_order_stays_first_come_first_served():
    rec = Recorder(delay=0.05)
    b = SnacBatcher(rec, lambda i: 0, max_batch=2, timeout_ms=0.0)
    b.start()
    busy = asyncio.ensure_future(b.decode(100, 0.0))
    await asyncio.sleep(0.01)
    others = [asyncio.ensure_future(b.decode(i, 10.0 - i)) for i in (1, 2, 3, 4)]  # deadlines ignored
    await asyncio.gather(busy, *others)
    await b.close()
    assert rec.calls == [[100], [1, 2], [3, 4]]


async def test_deadline_order_hands_each_group_back_as_soon_as_it_is_decoded():
    done_at: dict[int, float] = {}
    rec = Recorder(delay=0.1)
    b = SnacBatcher(rec, key=lambda i: i // 10, max_batch=8, timeout_ms=20.0, order="deadline")
    b.start()
    now = time.monotonic()

    async def one(i, deadline):
        result = await b.decode(i, deadline)
        done_at[i] = time.monotonic()
        return result

    # Two shapes in one batch: the 20s (most urgent) first; their results come back before the 10s decode.
    results = await asyncio.gather(one(11, now + 5), one(12, now + 6), one(21, now + 0.1))
    await b.close()
    assert results == [22, 24, 42]
    assert rec.calls == [[21], [11, 12]]
    assert done_at[11] - done_at[21] >= 0.08  # 21 did not wait for the second group's 0.1 s call


async def test_deadline_order_isolates_a_failing_group():
    rec = Recorder()
    b = SnacBatcher(rec, key=lambda i: 0 if i < 0 else 1, max_batch=8, timeout_ms=20.0, order="deadline")
    b.start()
    results = await asyncio.gather(b.decode(-1), b.decode(3), return_exceptions=True)
    await b.close()
    assert isinstance(results[0], ValueError) and results[1] == 6


def test_unknown_order_is_refused():
    with pytest.raises(ValueError, match="order"):
        SnacBatcher(Recorder(), lambda i: 0, 4, 0.0, order="random")
