import pathlib

import pytest
from tokenizers import Tokenizer

from orpheus_tts.model.model_spec import ModelSpec
from orpheus_tts.speech.prompts import PromptError, build_prompts, chunk_text, normalise, split_sentences

SPEC = ModelSpec()
HEAD = [128259, 128000]
TAIL = [128009, 128260, 128261, 128257]


@pytest.fixture(scope="module")
def tok(tiny_model_dir: pathlib.Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


def _text_of(prompt: list[int], tok: Tokenizer) -> str:
    assert prompt[:2] == HEAD and prompt[-4:] == TAIL
    return tok.decode(prompt[2:-4])


def test_normalise():
    assert normalise("  Hello\u00a0 \u201cworld\u201d\u2026 <LAUGH>\x07 ok ") == 'Hello "world"... <laugh> ok'
    assert normalise("\ufb01ne \u2014 really") == "fine - really"  # NFKC ligature, dash spaced
    assert normalise(" \n\t ") == ""


def test_split_sentences():
    assert split_sentences('Hi there. How are you?! "Fine." Ok\nnext line') == [
        "Hi there.", "How are you?!", '"Fine."', "Ok", "next line"]  # fmt: skip
    assert split_sentences("3.5 is a number. e.g.this") == ["3.5 is a number.", "e.g.this"]


def test_exact_layout_single_prompt(tok):
    prompts = build_prompts("Hello world.", "tara", tok, SPEC, 48)
    assert prompts == [HEAD + tok.encode("tara: Hello world.", add_special_tokens=False).ids + TAIL]


def test_sentences_packed_and_never_cut(tok):
    text = ("The quick brown fox jumps over the lazy dog. " * 6) + "She sells sea shells <laugh> by the sea shore!"
    prompts = build_prompts(text, "leo", tok, SPEC, 40)
    assert len(prompts) > 2
    texts = [_text_of(p, tok) for p in prompts]
    assert all(len(p) <= 40 for p in prompts)
    assert all(t.startswith("leo: ") for t in texts)
    # Rejoined chunks give back the text, so no word was cut or lost, and the tag is intact in one chunk.
    assert " ".join(t.removeprefix("leo: ") for t in texts) == normalise(text)
    assert any("<laugh>" in t for t in texts)


def test_words_when_a_sentence_is_too_long(tok):
    text = "one two three four five six seven eight nine ten " * 4
    prompts = build_prompts(text, "tara", tok, SPEC, 24)
    chunks = [_text_of(p, tok).removeprefix("tara: ") for p in prompts]
    assert all(len(p) <= 24 for p in prompts) and len(chunks) >= 3
    assert " ".join(chunks).split() == text.split()  # only cut between words


def test_overlong_word_is_split_not_crashing(tok):
    word = "x" * 300  # a URL-like run with no spaces: longer than any budget
    prompts = build_prompts(f"Look: {word} done.", "tara", tok, SPEC, 20)
    chunks = [_text_of(p, tok).removeprefix("tara: ") for p in prompts]
    assert all(len(p) <= 20 for p in prompts)
    assert "".join(chunks).replace(" ", "") == f"Look:{word}done."
    assert len(prompts) >= 300 // 14


def test_tags_stay_whole_when_glued():
    fits = lambda s: len(s) <= 12  # noqa: E731 - a character budget is enough to test packing
    assert chunk_text(["so<laugh>funny really"], fits) == ["so <laugh>", "funny really"]


@pytest.mark.parametrize(
    "text, voice, max_len, code",
    [
        ("hello", "bob", 48, "unknown_voice"),
        ("   \n ", "tara", 48, "empty_text"),
        ("hello", "tara", 8, "text_too_long"),
    ],
)
def test_errors(tok, text, voice, max_len, code):
    with pytest.raises(PromptError) as e:
        build_prompts(text, voice, tok, SPEC, max_len)
    assert e.value.code == code
