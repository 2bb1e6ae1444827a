"""The request checks both engines share (interface.validate_request); test_torch_engine.py and
test_trtllm_engine.py check that each engine refuses such requests through its stream."""

import pytest

from orpheus_tts.engine.interface import EngineError, GenerationRequest, SamplingParams, validate_request


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ([], SamplingParams(), r"prompt has 0 tokens; the engine takes 1\.\.24"),
        (list(range(25)), SamplingParams(), r"prompt has 25 tokens"),
        ([1, 2, 300], SamplingParams(), r"prompt ids must be integers in \[0, 256\)"),
        ([1, 2, -1], SamplingParams(), r"prompt ids must be integers"),
        ([1, 2, 3], SamplingParams(max_tokens=1025), r"max_tokens must be in \[1, 1024\]"),
        ([1, 2, 3], SamplingParams(top_p=0.0), r"top_p"),
        ([1, 2, 3], SamplingParams(min_tokens=10, max_tokens=5), r"min_tokens"),
    ],
)
def test_refuses_what_breaks_the_limits(prompt, params, message):
    with pytest.raises(EngineError, match=message) as e:
        validate_request(GenerationRequest("r", prompt, params), 24, 1024, vocab_size=256)
    assert e.value.kind == "invalid_request"


def test_accepts_requests_within_the_limits_and_checks_ids_only_given_a_vocabulary():
    validate_request(GenerationRequest("r", [0, 255] * 12, SamplingParams(max_tokens=64)), 24, 64, vocab_size=256)
    validate_request(GenerationRequest("r", [1, 2, 300], SamplingParams()), 24, 1024)  # TensorRT-LLM: no vocab check
