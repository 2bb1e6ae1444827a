import torch

from orpheus_tts.engine.sampling import (
    SlotParams,
    SlotSampler,
    apply_repetition_penalty,
    hashed_uniform,
    output_rows,
    sample_from_logits,
    top_p_filter,
)
from orpheus_tts.model.model_spec import ModelSpec

SPEC = ModelSpec()
N_ROWS = SPEC.audio_rows + len(SPEC.stop_ids)


def test_hashed_uniform():
    seeds, counters = torch.tensor([1, 1, 2, 2**32 - 1]), torch.tensor([0, 1, 0, 0])
    u = hashed_uniform(seeds, counters, 50_000)
    assert u.shape == (4, 50_000) and bool((u > 0).all()) and bool((u < 1).all())
    assert torch.equal(u, hashed_uniform(seeds, counters, 50_000))  # a pure function
    for i in range(4):
        assert abs(u[i].mean().item() - 0.5) < 0.01 and abs(u[i].var().item() - 1 / 12) < 0.005
        for j in range(i):  # rows differing in seed or counter are uncorrelated
            assert abs(torch.corrcoef(torch.stack([u[i], u[j]]))[0, 1].item()) < 0.02
    # Neighbouring columns are uncorrelated too.
    assert abs(torch.corrcoef(torch.stack([u[0, :-1], u[0, 1:]]))[0, 1].item()) < 0.02


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    present = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, present, torch.tensor([2.0]))
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_top_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3], [0.05, 0.5, 0.15, 0.3], [0.05, 0.5, 0.15, 0.3]])
    out = top_p_filter(probs, torch.tensor([0.7, 1.0, 0.01]))
    expected = torch.tensor([[0.0, 0.5, 0.0, 0.3], [0.05, 0.5, 0.15, 0.3], [0.0, 0.5, 0.0, 0.0]])
    assert torch.equal(out, expected)


def test_sampling_distribution_and_greedy():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).repeat(20_000, 1)
    n = logits.shape[0]
    uniform = hashed_uniform(torch.full((n,), 7), torch.arange(n), 4)
    picks = sample_from_logits(logits, torch.ones(n), torch.ones(n), uniform)
    freq = torch.bincount(picks, minlength=4).float() / n
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015), freq
    # temperature 0 is argmax whatever the noise; top_p keeps only the nucleus {0.4, 0.3}.
    assert bool((sample_from_logits(logits, torch.zeros(n), torch.ones(n), uniform) == 3).all())
    nucleus = sample_from_logits(logits, torch.ones(n), torch.full((n,), 0.6), uniform)
    assert set(nucleus.tolist()) == {2, 3}
    # Temperature 0.3 samples from p^(1/0.3), normalised.
    cold = sample_from_logits(logits, torch.full((n,), 0.3), torch.ones(n), uniform)
    sharp = torch.tensor([0.1, 0.2, 0.3, 0.4]) ** (1 / 0.3)
    freq = torch.bincount(cold, minlength=4).float() / n
    assert torch.allclose(freq, sharp / sharp.sum(), atol=0.015), freq


def _sampler(slots=2, **params) -> SlotSampler:
    s = SlotSampler(SPEC, slots, torch.device("cpu"))
    defaults = dict(temperature=1.0, top_p=1.0, repetition_penalty=1.0, min_tokens=0, seed=0)
    for slot in range(slots):
        s.reset(slot, SlotParams(**{**defaults, **params, "seed": slot}))
    return s


def test_position_constraint_and_stop_only_at_frame_boundary():
    s = _sampler(min_tokens=0)
    slots = torch.tensor([0, 1])
    logits = torch.randn(2, N_ROWS)
    logits[:, -1] = 1e4  # the stop id is by far the most likely token...
    assert s.sample(logits, slots).tolist() == [128258, 128258]  # ...and allowed at i == 0
    s = _sampler(min_tokens=9)
    ids = [s.sample(logits, slots).tolist() for _ in range(15)]
    for i, step in enumerate(ids[:14]):
        for tok in step:  # audio codes of block i % 7 until min_tokens (9) -> next frame boundary (14)
            assert SPEC.audio_offset + (i % 7) * 4096 <= tok < SPEC.audio_offset + (i % 7 + 1) * 4096
    assert ids[14] == [128258, 128258]


def test_repetition_penalty_uses_presence_per_slot():
    s = _sampler(temperature=0.0, repetition_penalty=2.0)
    slots = torch.tensor([0])
    logits = torch.zeros(1, N_ROWS)
    logits[0, -1] = -1e4  # never stop
    logits[0, 5], logits[0, 6] = 1.0, 0.9  # block 0: code 5 best, code 6 next
    first = s.sample(logits, slots).item()
    assert first == SPEC.audio_offset + 5
    for _ in range(6):
        s.sample(logits, slots)
    # Frame 2, position 0 again: code 5 now scores 0.5 < 0.9.
    assert s.sample(logits, slots).item() == SPEC.audio_offset + 6
    assert bool(s.present[0, 5]) and not bool(s.present[1].any())  # slot 1 untouched


def test_output_rows():
    rows = output_rows(SPEC)
    assert rows.shape == (N_ROWS,) and rows[0] == 128266 and rows[-2] == 156937 and rows[-1] == 128258
