"""`orpheus-tts make-calibration`: the calibration set for INT4-AWQ and INT8-KV, made of what we serve.

TensorRT-LLM calibrates activation ranges and KV scales on text it tokenizes itself. By default it
downloads all of CNN/DailyMail (~2 GB) to use 32 news articles: the wrong distribution (the engine
serves audio-code sequences, ids 128266+, not English prose), and impossible under HF_HUB_OFFLINE. So
we generate our own: Orpheus prompts followed by the audio codes the torch engine samples for them,
written as text in which every id is a token string of the model's tokenizer (`<custom_token_N>` for
the audio codes and specials), which the library's tokenizer maps back to the same ids.

Layout of a calibration directory (what `datasets.load_dataset(dir, split="train")["text"]` reads):
  train.jsonl          one {"text": ...} per sequence
  calibration.json     how it was made (model, rows, seed, max_tokens), written last

build_engine.py makes one by default on the engines volume (`<engines>/.calibration/<key>`) and reuses it.
With the tiny random model the "audio" is noise: only the plumbing is real.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys
from typing import Any

from orpheus_tts.build.exit_codes import ExitCode

FORMAT_VERSION = 1
DATA_FILE = "train.jsonl"
META_FILE = "calibration.json"
DEFAULT_ROWS = 64
# Sentences of the kind people send to a TTS service: greetings, numbers, questions, long and short,
# with and without Orpheus's emotion tags. Each is spoken by every voice in turn.
SENTENCES = (
    "Hello! Thanks for calling, how can I help you today?",
    "Your order number is 4 8 1 5, and it should arrive on Tuesday the 14th.",
    "I'm not sure that's right <chuckle> but let's give it a try anyway.",
    "The meeting has been moved to three thirty in the afternoon, in room two hundred and six.",
    "Wow, that is honestly the best news I've heard all week!",
    "Please hold while I transfer you to the next available agent.",
    "Take the second exit at the roundabout, then keep left for about two kilometres.",
    "Well <sigh> I suppose we could try again tomorrow morning.",
    "Did you remember to bring the charger, or is it still at home?",
    "Temperatures tonight will drop to minus four, with light snow after midnight.",
    "Once upon a time, in a village by the sea, there lived an old clockmaker.",
    "Okay, so first you open the settings, and then you tap on accounts.",
    "I can't believe it, you actually did it <laugh> congratulations!",
    "The quarterly revenue grew by twelve percent, driven mostly by subscriptions.",
    "Sorry, I didn't quite catch that. Could you say it one more time?",
    "Breathe in slowly, hold it for a moment, and let it go.",
)


def default_key(model: str, revision: str | None, rows: int, max_tokens: int) -> str:
    """Names the default calibration directory: same model and settings, same set."""
    text = json.dumps([FORMAT_VERSION, model, revision, rows, max_tokens])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_complete(directory: pathlib.Path) -> bool:
    return (directory / META_FILE).is_file() and (directory / DATA_FILE).is_file()


def prompts(rows: int, voices: tuple[str, ...]) -> list[tuple[str, str]]:
    """(voice, sentence) pairs: every sentence with every voice in turn, `rows` of them."""
    return [(voices[i % len(voices)], SENTENCES[i % len(SENTENCES)]) for i in range(rows)]


def sequence_text(ids: list[int], tokenizer: Any) -> str:
    """The ids as text the model's tokenizer turns back into the same ids (specials and
    `<custom_token_N>` included); checked by `check_round_trip`."""
    return tokenizer.decode(ids, skip_special_tokens=False)


def check_round_trip(ids: list[int], text: str, tokenizer: Any) -> None:
    back = tokenizer.encode(text, add_special_tokens=False).ids
    if back != ids:
        first = next((i for i, (a, b) in enumerate(zip(ids, back, strict=False)) if a != b), min(len(ids), len(back)))
        raise ValueError(f"calibration text does not tokenize back to its ids (first difference at {first})")


def read_rows(directory: pathlib.Path) -> list[str]:
    """The `text` column of a calibration directory's train split: our train.jsonl, or any layout
    `datasets` reads (the TensorRT-LLM image has it; CI does not need it)."""
    data = directory / DATA_FILE
    if data.is_file():
        rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
        return [str(row["text"]) for row in rows]
    try:
        from datasets import load_dataset  # type: ignore[import-not-found]
    except ImportError:
        raise ValueError(f"{directory} has no {DATA_FILE} (one JSON object with a 'text' field per line)") from None
    return [str(t) for t in load_dataset(str(directory), split="train")["text"]]


def write_rows(
    directory: pathlib.Path, texts: list[str], meta: dict[str, Any], files: tuple[str, ...] = (DATA_FILE,)
) -> None:
    """Writes the rows (into each of `files`) and then the metadata, in a temporary sibling renamed into
    place: a reader sees a complete directory or none."""
    tmp = directory.with_name(f".{directory.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    body = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    for name in files:
        (tmp / name).write_text(body)
    (tmp / META_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2) + "\n")
    try:
        os.rename(tmp, directory)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_complete(directory):  # not someone else's finished copy of the same set
            raise


async def generate(model_dir: pathlib.Path, rows: int, max_tokens: int, seed: int, cfg: Any) -> list[list[int]]:
    """Prompt + sampled audio codes for `rows` prompts, from the torch engine (the reference sampler:
    per-position codebook constraint, stops only at frame boundaries)."""
    from orpheus_tts.engine.interface import GenerationRequest, SamplingParams
    from orpheus_tts.engine.torch_engine import TorchEngine
    from orpheus_tts.model.model_spec import load_model_spec
    from orpheus_tts.serve.loader import load_tokenizer
    from orpheus_tts.speech.prompts import prompt_ids

    spec = load_model_spec(model_dir)
    tokenizer = load_tokenizer(model_dir)
    body = [
        tokenizer.encode(f"{voice}: {text}", add_special_tokens=False).ids for voice, text in prompts(rows, spec.voices)
    ]
    inputs = [prompt_ids(ids, spec) for ids in body]
    # Whole sentences, unchunked: the engine's input limit is widened to the longest prompt if needed.
    cfg = dataclasses.replace(cfg, max_input_len=max(cfg.max_input_len, *map(len, inputs)),
                              max_output_len=max(cfg.max_output_len, max_tokens))  # fmt: skip
    engine = TorchEngine(model_dir, cfg, spec)
    await engine.start()
    try:

        async def one(i: int, prompt: list[int]) -> list[int]:
            params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                                    repetition_penalty=cfg.repetition_penalty, max_tokens=max_tokens,
                                    seed=seed + i)  # fmt: skip
            codes = [t async for chunk in engine.submit(GenerationRequest(f"calib-{i}", prompt, params)) for t in chunk]
            return prompt + codes

        return list(await asyncio.gather(*(one(i, prompt) for i, prompt in enumerate(inputs))))
    finally:
        await engine.close()


def make_calibration(model_dir: pathlib.Path, out: pathlib.Path, *, rows: int = DEFAULT_ROWS,
                     max_tokens: int | None = None, seed: int = 0, cfg: Any = None,
                     source: str | None = None) -> pathlib.Path:  # fmt: skip
    """Generates and writes a calibration directory; returns it. `cfg` is a RuntimeConfig (device, batch)."""
    from orpheus_tts.config import RuntimeConfig
    from orpheus_tts.serve.loader import load_tokenizer

    cfg = cfg or RuntimeConfig(max_batch_size=min(rows, 32))
    max_tokens = max_tokens or cfg.max_output_len
    sequences = asyncio.run(generate(model_dir, rows, max_tokens, seed, cfg))
    _release_gpu_memory()  # the build quantizes next, on the same GPU
    tokenizer = load_tokenizer(model_dir)
    texts = []
    for ids in sequences:
        text = sequence_text(ids, tokenizer)
        check_round_trip(ids, text, tokenizer)
        texts.append(text)
    meta = {"model": source or str(model_dir), "rows": rows, "max_tokens": max_tokens, "seed": seed,
            "tokens": sum(map(len, sequences))}  # fmt: skip
    write_rows(out, texts, meta)
    return out


def _release_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    from orpheus_tts import config
    from orpheus_tts.build import hub

    p = argparse.ArgumentParser(prog="orpheus-tts make-calibration", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="local HF model directory or hub repo id")
    p.add_argument("--revision", default=None)
    p.add_argument("--out", required=True, type=pathlib.Path, help="directory to create (e.g. on the engines PVC)")
    p.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="sequences to generate (AWQ uses at most 32)")
    p.add_argument("--max-tokens", type=int, default=None, help="audio tokens per sequence (default: max output len)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.rows <= 0:
        p.error("--rows must be positive")
    try:
        cfg = config.from_env()
    except config.ConfigError as e:
        print(f"orpheus-tts make-calibration: invalid environment: {e}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        model_dir = hub.resolve_model(args.model, args.revision, cfg.hf_token, offline=cfg.hf_offline)
    except hub.HubError as e:
        print(f"orpheus-tts make-calibration: {e}", file=sys.stderr)
        return hub.EXIT_CODES[e.kind]
    if args.out.exists():
        print(f"orpheus-tts make-calibration: {args.out} exists; choose a new --out", file=sys.stderr)
        return ExitCode.USAGE
    cfg.max_batch_size = min(args.rows, cfg.max_batch_size)
    make_calibration(model_dir, args.out, rows=args.rows, max_tokens=args.max_tokens, seed=args.seed, cfg=cfg,
                     source=args.model)  # fmt: skip
    print(args.out)
    return ExitCode.OK
