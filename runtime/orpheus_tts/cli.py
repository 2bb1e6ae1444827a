"""`orpheus-tts <command> ...`: each command lives in its own module, imported only when used
(so `orpheus-tts say` does not import torch)."""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("orpheus_tts.serve.server", "Run the HTTP/WebSocket server"),
    "say": ("orpheus_tts.tools.client", "Synthesize text through a running server into a WAV file"),
    "warmup": ("orpheus_tts.tools.client", "Send one short request and wait for its audio"),
    "bench": ("orpheus_tts.tools.bench", "Concurrent streams against a server: first audio, real-time factor"),
    "make-tiny-model": ("orpheus_tts.model.tiny_model", "Write a tiny random-weight model in Orpheus layout"),
    "download": ("orpheus_tts.build.hub", "Download a model from the Hugging Face hub (HF_TOKEN)"),
    "build-engine": ("orpheus_tts.build.build_engine", "Build the serving engine into a directory, with manifest"),
    "serve-engines": ("orpheus_tts.build.engine_store", "Serve finished engines of a volume over HTTP (read-only)"),
    "fetch-engine": ("orpheus_tts.build.engine_store", "Copy one engine from serve-engines, verified by its manifest"),
    "make-calibration": (
        "orpheus_tts.build.calibration",
        "Generate the INT4-AWQ / INT8-KV calibration set from the model",
    ),
    "doctor": ("orpheus_tts.build.doctor", "Check this node and image (GPU, libraries, an engine's manifest)"),
}


def usage() -> str:
    lines = ["usage: orpheus-tts <command> [options]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    # First, before torch and its threads exist (memory.py says why).
    from orpheus_tts.config import allocator_tuned_by_env
    from orpheus_tts.memory import tune_malloc

    if not allocator_tuned_by_env():
        tune_malloc()
    module = importlib.import_module(COMMANDS[name][0])
    # Each module exposes `main(argv)`; client.py serves two commands.
    entry = getattr(module, f"{name.replace('-', '_')}_main", None) or module.main
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
