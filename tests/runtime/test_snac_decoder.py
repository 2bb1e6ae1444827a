import math

import numpy as np
import pytest
import torch
from test_windows import plan, random_frames

from orpheus_tts.audio import SAMPLES_PER_FRAME
from orpheus_tts.speech.snac_decoder import SnacLoadError, SnacModel, disable_noise, load_snac, to_pcm16
from orpheus_tts.speech.windows import WINDOW_FRAMES


@pytest.fixture(scope="module")
def snac_model():
    from snac import SNAC

    from orpheus_tts.model.tiny_model import SNAC_24KHZ_CONFIG

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: two threads per conv made each decode ~10x slower here
    yield SnacModel(disable_noise(SNAC(**SNAC_24KHZ_CONFIG)), torch.device("cpu"))
    torch.set_num_threads(threads)


def snr_db(test: np.ndarray, ref: np.ndarray) -> float:
    noise = np.sum((test.astype(np.float64) - ref) ** 2)
    return 10 * math.log10(np.sum(ref.astype(np.float64) ** 2) / max(noise, 1e-9))


@pytest.mark.parametrize(("n", "steps"), [(1, [1]), (2, [1]), (3, [2]), (9, [1, 3]), (16, [5])])
def test_streamed_equals_offline(snac_model, n, steps):
    frames = random_frames(n, 100 + n)
    offline = to_pcm16(snac_model.decode_frames([tuple(frames)]))[0].numpy()
    _, windows = plan(frames, steps)
    streamed = np.frombuffer(b"".join(b for w in windows for b in snac_model.decode_windows([w])), np.int16)
    assert streamed.size == offline.size == n * SAMPLES_PER_FRAME
    assert snr_db(streamed, offline) >= 40.0


def test_batched_decode_equals_single(snac_model):
    _, windows = plan(random_frames(20, 5), [20])
    same = [w for w in windows if w.n_frames == WINDOW_FRAMES][:2]
    assert len(same) == 2
    batched = [np.frombuffer(b, np.int16) for b in snac_model.decode_windows(same)]
    single = [np.frombuffer(snac_model.decode_windows([w])[0], np.int16) for w in same]
    for b, s in zip(batched, single, strict=True):
        assert b.size == s.size
        assert snr_db(b, s) >= 60.0
    assert [b.size for b in batched] == [(w.keep_to - w.keep_from) * SAMPLES_PER_FRAME for w in same]


def test_decode_windows_rejects_mixed_shapes(snac_model):
    _, windows = plan(random_frames(3, 1), [1])
    assert len({w.n_frames for w in windows}) > 1
    with pytest.raises(ValueError):
        snac_model.decode_windows(windows)


def test_load_snac_from_local_dir(tiny_model_dir):
    from orpheus_tts.config import RuntimeConfig

    model = load_snac(str(tiny_model_dir / "snac"), RuntimeConfig(snac_device="cpu"))
    assert model.device.type == "cpu"
    model.warm_up()


def test_load_snac_missing_dir_is_a_load_error(tmp_path):
    from orpheus_tts.config import RuntimeConfig

    with pytest.raises(SnacLoadError, match="SNAC decoder"):
        load_snac(str(tmp_path / "nope"), RuntimeConfig(snac_device="cpu"))


def test_folded_weights_and_plain_snake_are_the_same_function():
    """Folded weight_norm and the plain Snake (what the compiled decoder runs) compute what SNAC computes."""
    from snac import SNAC

    from orpheus_tts.model.tiny_model import SNAC_24KHZ_CONFIG
    from orpheus_tts.speech.snac_decoder import fold_weight_norm, plain_snake

    torch.manual_seed(1)
    shipped = disable_noise(SNAC(**SNAC_24KHZ_CONFIG)).eval()
    # A second instance, not a deepcopy: removing a parametrization edits the class, which copies share.
    folded = disable_noise(SNAC(**SNAC_24KHZ_CONFIG))
    folded.load_state_dict(shipped.state_dict())
    folded = plain_snake(fold_weight_norm(folded.eval()))
    assert not any(name.endswith("original0") for name, _ in folded.named_parameters())  # no weight_norm left
    codes = [torch.randint(0, 4096, (2, 3 * n)) for n in (1, 2, 4)]
    with torch.inference_mode():
        want, got = shipped.decode(codes), folded.decode(codes)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
