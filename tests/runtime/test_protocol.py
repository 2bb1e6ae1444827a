"""protocol.py and audio.py are the one home of the protocol's and the audio format's constants: these tests tie
each other side to them (the playground's copy, aiohttp's close codes, the engine's sampling parameters, the
clients' flags, SNAC's config)."""

from __future__ import annotations

import argparse
import dataclasses
import html.parser
import json
import math
import pathlib
import re
import subprocess
import sys

from aiohttp import WSCloseCode

from orpheus_tts import audio, protocol
from orpheus_tts.engine.interface import SamplingParams
from orpheus_tts.model.model_spec import ModelSpec
from orpheus_tts.model.tiny_model import SNAC_24KHZ_CONFIG
from orpheus_tts.protocol import (
    BUSY,
    DRAINING,
    INTEGER_SAMPLING_FIELDS,
    LOADING,
    SAMPLING_FIELDS,
    UNAUTHORIZED_REASON,
    Cancel,
    CloseCode,
    Problem,
    Speak,
    parse_message,
)
from orpheus_tts.tools.client import build_message, sampling_flags

PLAYGROUND = pathlib.Path(__file__).parents[2] / "runtime/orpheus_tts/serve/playground"


def playground_protocol() -> dict:
    """The JSON object literal `const PROTOCOL = {...}; // end PROTOCOL` in playground.js."""
    js = (PLAYGROUND / "playground.js").read_text()
    start = js.index("const PROTOCOL = ") + len("const PROTOCOL = ")
    end = js.index("; // end PROTOCOL", start)
    return json.loads(js[start:end])


def test_playground_copy_equals_protocol() -> None:
    copy = playground_protocol()
    assert copy["close"] == {code.name: code.value for code in CloseCode}
    assert copy["retry_reasons"] == [BUSY, LOADING, DRAINING]
    assert UNAUTHORIZED_REASON.startswith(copy["unauthorized_prefix"] + ":")
    assert copy["sampling_fields"] == list(SAMPLING_FIELDS)
    assert copy["integer_sampling_fields"] == list(INTEGER_SAMPLING_FIELDS)


def test_playground_words_every_retry_reason_and_has_an_input_per_sampling_field() -> None:
    js = (PLAYGROUND / "playground.js").read_text()
    for reason in (BUSY, LOADING, DRAINING):
        assert re.search(rf'^\s+{reason}: "', js, re.M), f"closeMessage has no words for the 1013 reason {reason!r}"

    class Inputs(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.ids: set[str] = set()

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "input":
                self.ids.add(dict(attrs).get("id") or "")

    page = Inputs()
    page.feed((PLAYGROUND / "index.html").read_text())
    assert set(SAMPLING_FIELDS) <= page.ids


def test_close_codes_are_aiohttps() -> None:
    """The server closes with these through aiohttp: the same numbers under the same names."""
    for code in CloseCode:
        assert WSCloseCode[code.name] == code.value


def test_sampling_fields_are_the_engines_parameters() -> None:
    fields = {f.name: f for f in dataclasses.fields(SamplingParams)}
    assert set(SAMPLING_FIELDS) <= set(fields)
    integral = {name for name in SAMPLING_FIELDS if "int" in str(fields[name].type)}
    assert integral == set(INTEGER_SAMPLING_FIELDS)


def test_client_flags_send_every_sampling_field_and_the_server_reads_them() -> None:
    parser = argparse.ArgumentParser()
    sampling_flags(parser)
    args = parser.parse_args(["--temperature", "0.5", "--top-p", "0.9", "--repetition-penalty", "1.2",
                              "--max-tokens", "70", "--min-tokens", "7", "--seed", "3"])  # fmt: skip
    message = build_message("Hi.", "leo", args)
    assert set(message) == {"text", "voice", *SAMPLING_FIELDS}
    assert all(isinstance(message[name], int) for name in INTEGER_SAMPLING_FIELDS)
    parsed = parse_message(json.dumps(message))
    assert parsed == Speak("Hi.", "leo", {name: message[name] for name in SAMPLING_FIELDS})


def test_parse_message() -> None:
    assert parse_message('{"text": "hi", "voice": "leo", "seed": 3, "junk": 1}') == Speak("hi", "leo", {"seed": 3})
    assert parse_message('{"type": "speak", "text": "a"}') == Speak("a", None, {})
    assert parse_message('{"type": "cancel"}') == Cancel()
    assert parse_message("{") == Problem("invalid_json", "message is not valid JSON")
    assert parse_message("[" * 100_000) == Problem("invalid_json", "message is not valid JSON")
    for data in ("[1]", '{"text": 5}', '{"type": "dance"}', '{"text": "a", "voice": 1}'):
        parsed = parse_message(data)
        assert isinstance(parsed, Problem) and parsed.code == "invalid_message"


def test_protocol_imports_neither_torch_nor_aiohttp() -> None:
    """Clients on a laptop import it (through tools/client.py) for nothing heavy."""
    code = (f"import sys; import {protocol.__name__}, {audio.__name__}; "
            "print(sorted(m for m in ('torch', 'aiohttp', 'numpy') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_audio_constants_are_snac_24khz() -> None:
    """audio.py against the SNAC config the tiny model writes (the real hubertsiuzdak/snac_24khz config): its
    sampling rate, and samples per frame = hop length (product of the decoder rates) x the coarsest codebook's
    stride (one code per frame)."""
    snac = SNAC_24KHZ_CONFIG
    assert snac["sampling_rate"] == audio.SAMPLE_RATE
    assert math.prod(snac["decoder_rates"]) * max(snac["vq_strides"]) == audio.SAMPLES_PER_FRAME
    # 1 + 2 + 4 codes of the three codebooks per frame (audio_codes.snac_codes)
    assert sum(max(snac["vq_strides"]) // s for s in snac["vq_strides"]) == audio.CODES_PER_FRAME
    assert ModelSpec().sample_rate == audio.SAMPLE_RATE and ModelSpec().samples_per_frame == audio.SAMPLES_PER_FRAME
