"""Text -> Orpheus prompts: normalise, split into sentences, pack them into chunks that fit the engine.

Each chunk becomes one generation request. Orpheus was fine-tuned on sentence-length utterances and the
engine's `max_input_len` bounds a prompt, so long text is cut at sentence ends, then at word ends, never
inside a word or an inline tag such as `<laugh>`. Short neighbouring sentences share a chunk: fewer
requests, and more natural prosody than sentence-by-sentence.

Prompt layout: [start_of_human, bos] + tokens("{voice}: {chunk}") + [end_of_text, end_of_human,
start_of_ai, start_of_speech].
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Protocol

from orpheus_tts.model.model_spec import INLINE_TAGS, ModelSpec


class PromptError(ValueError):
    """The text cannot become prompts; `code` is "unknown_voice" | "empty_text" | "text_too_long"."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class _Encoding(Protocol):
    @property
    def ids(self) -> list[int]: ...


class Tokenizer(Protocol):
    """The part of `tokenizers.Tokenizer` we use."""

    def encode(self, sequence: str, /, *, add_special_tokens: bool = ...) -> _Encoding: ...


_TAG = re.compile("(" + "|".join(re.escape(t) for t in INLINE_TAGS) + ")", re.IGNORECASE)
# Typographic characters the tokenizer would split into rare byte tokens; plain ASCII reads the same.
_REPLACE = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": " - ",
                          "\u2026": "...", "\u00a0": " "})  # fmt: skip
# A sentence ends at . ! ? (or one of them and a closing quote/bracket) before whitespace. Two fixed-width
# lookbehinds because `re` has no variable-width one.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")


def normalise(text: str) -> str:
    """NFKC, ASCII punctuation, no control characters, single spaces; inline tags lower-cased."""
    text = unicodedata.normalize("NFKC", text).translate(_REPLACE)
    text = "".join(ch if ch in "\n\t" or unicodedata.category(ch)[0] != "C" else " " for ch in text)
    text = _TAG.sub(lambda m: m.group(0).lower(), text)
    return re.sub(r"[ \t]+", " ", text).strip()


def split_sentences(text: str) -> list[str]:
    """Sentences of normalised text; blank lines and line breaks end sentences too."""
    sentences = []
    for line in re.split(r"\s*\n\s*", text):
        sentences += [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]
    return sentences


def _words(sentence: str) -> list[str]:
    """Words, with each inline tag a word of its own even when glued to text ("so<laugh>")."""
    return [w for part in _TAG.split(sentence) for w in (part.split() if not _TAG.fullmatch(part) else [part]) if w]


def _split_word(word: str, fits: Callable[[str], bool]) -> list[str]:
    """Cuts one word that does not fit alone into the longest pieces that do.

    A URL or a run of text without spaces can exceed the budget on its own. Refusing the whole request
    for it would be worse than speaking it in two halves, so this is the one place a word is cut.
    """
    pieces, current = [], ""
    for ch in word:
        if current and not fits(current + ch):
            pieces.append(current)
            current = ""
        current += ch
    return [*pieces, current] if current else pieces


def chunk_text(sentences: list[str], fits: Callable[[str], bool]) -> list[str]:
    """Greedy packing: whole sentences while they fit, else words, else pieces of a word."""
    chunks: list[str] = []
    current = ""

    def add(unit: str) -> None:
        nonlocal current
        candidate = f"{current} {unit}" if current else unit
        if fits(candidate):
            current = candidate
            return
        if current:
            chunks.append(current)
        current = ""
        if fits(unit):
            current = unit
            return
        words = _words(unit)
        if len(words) > 1:
            for word in words:
                add(word)
        else:
            for piece in _split_word(unit, fits):
                add(piece)

    for sentence in sentences:
        add(sentence)
    if current:
        chunks.append(current)
    return chunks


def prompt_ids(body_ids: list[int], spec: ModelSpec) -> list[int]:
    return [spec.start_of_human, spec.bos, *body_ids, spec.end_of_text, spec.end_of_human, spec.start_of_ai,
            spec.start_of_speech]  # fmt: skip


PROMPT_OVERHEAD = 6  # special tokens around the text


def build_prompts(text: str, voice: str, tokenizer: Tokenizer, spec: ModelSpec, max_input_len: int) -> list[list[int]]:
    if voice not in spec.voices:
        raise PromptError(f"unknown voice {voice!r}; available: {', '.join(spec.voices)}", "unknown_voice")
    sentences = split_sentences(normalise(text))
    if not sentences:
        raise PromptError("text is empty", "empty_text")

    def body(chunk: str) -> list[int]:
        return tokenizer.encode(f"{voice}: {chunk}", add_special_tokens=False).ids

    def fits(chunk: str) -> bool:
        return len(body(chunk)) + PROMPT_OVERHEAD <= max_input_len

    # The voice prefix and special tokens are fixed; if even one character does not fit after them, no
    # split of the text can help.
    if not fits("a"):
        raise PromptError(
            f"max_input_len {max_input_len} leaves no room for text after the {len(body(''))} prefix and "
            f"{PROMPT_OVERHEAD} special tokens",
            "text_too_long",
        )
    prompts = [prompt_ids(body(chunk), spec) for chunk in chunk_text(sentences, fits)]
    # Only a single character that needs more tokens than the room left (e.g. a 4-byte emoji with 2 tokens
    # of room) can still be too long here; refuse it rather than hand the engine an over-long prompt.
    too_long = [len(p) for p in prompts if len(p) > max_input_len]
    if too_long:
        raise PromptError(
            f"a character needs {max(too_long)} tokens, more than max_input_len {max_input_len}", "text_too_long"
        )
    return prompts
