"""The torch engine's scheduler on its own (pure: no model, no threads). test_torch_engine.py runs it inside
the engine with the tiny model."""

import sys

from orpheus_tts.engine.interface import EngineError, SamplingParams
from orpheus_tts.engine.scheduler import END, Request, Scheduler

STOP = 99
FRAME = 7


def _req(rid: str, max_tokens: int = 100) -> Request:
    return Request(rid, [1, 2, 3], SamplingParams(max_tokens=max_tokens), seed=0)


def _scheduler(capacity: int = 2) -> Scheduler[Request]:
    return Scheduler(capacity, frozenset({STOP}), FRAME)


def test_is_pure():
    """The scheduler is importable and testable without torch (the engine's device side is model_runner.py)."""
    import subprocess

    code = "import sys, orpheus_tts.engine.scheduler; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_admits_in_arrival_order_into_free_slots():
    s = _scheduler(capacity=2)
    a, b, c = _req("a"), _req("b"), _req("c")
    for r in (a, b, c):
        s.add(r)
    batch = s.schedule()
    assert batch.prefill == [a, b] and batch.decode == []  # c waits: no free slot
    assert {a.slot, b.slot} == {0, 1} and c.slot == -1 and list(s.pending) == [c]
    batch = s.schedule()
    assert batch.prefill == [] and batch.decode == [a, b]  # already running: one token each
    s.finish(a, END)
    batch = s.schedule()
    assert batch.prefill == [c] and c.slot == 0  # a's slot, free at once
    assert batch.decode == [b]  # what ran before this step's admission
    assert not s.pending and s.has_work()


def test_ids_go_out_a_whole_frame_at_a_time_and_the_rest_at_the_end():
    s = _scheduler()
    r = _req("r", max_tokens=10)
    s.add(r)
    s.schedule()
    out = []
    for tok in range(10):
        s.update([r], [tok])
        out += s.take_output()
    assert out == [(r, list(range(7))), (r, [7, 8, 9]), (r, END)]
    assert r.slot == -1 and not s.active and sorted(s.free) == [0, 1]
    assert s.take_output() == [] and not s.has_work()


def test_a_stop_id_ends_the_request_and_is_not_handed_over():
    s = _scheduler()
    r = _req("r")
    s.add(r)
    s.schedule()
    s.update([r], [1])
    s.update([r], [STOP])
    assert s.take_output() == [(r, [1]), (r, END)]
    assert r.generated == 2 and r.slot == -1 and not s.active


def test_cancelled_requests_end_running_or_waiting():
    s = _scheduler(capacity=1)
    running, waiting, other = _req("running"), _req("waiting"), _req("other")
    for r in (running, waiting, other):
        s.add(r)
    s.schedule()
    s.update([running], [5])
    running.cancelled = waiting.cancelled = True  # set from the event loop's thread
    s.drop_cancelled()
    assert s.take_output() == [(running, [5]), (running, END), (waiting, END)]
    batch = s.schedule()
    assert batch.prefill == [other] and waiting.slot == -1  # a cancelled request never gets a slot


def test_a_failed_request_ends_with_its_error_and_its_late_ids_are_dropped():
    s = _scheduler()
    a, b = _req("a"), _req("b")
    s.add(a)
    s.add(b)
    s.schedule()
    error = EngineError("prefill failed: boom")
    s.finish(a, error)
    s.update([a, b], [1, 2])  # a's id from the same step arrives after its failure
    assert s.take_output() == [(a, error)]
    assert a.tokens == [] and b.tokens == [2]


def test_fail_all_ends_everything():
    s = _scheduler(capacity=1)
    a, b = _req("a"), _req("b")
    s.add(a)
    s.add(b)
    s.schedule()
    error = EngineError("engine failed")
    s.fail_all(error)
    assert s.take_output() == [(a, error), (b, error)]
    assert not s.active
