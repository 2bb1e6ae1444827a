"""The playground in Debian's headless Chromium (driven by Playwright), against a real `orpheus-tts serve`
with the tiny model and an API key. The page counts the samples it received, scheduled on the audio clock and
played out (window.playground); the tests read those counters.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import wave

import aiohttp
import pytest
from playwright.async_api import BrowserContext, Page, async_playwright
from test_server import SAMPLES_PER_FRAME
from test_server_drain import free_port, wait_ready

CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/system-packages.txt); never a downloaded browser
# No network beyond loopback here: without the background-networking flags Chromium keeps dialling out.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]  # fmt: skip
KEY = "browser-s3cret-key"
TOKENS = 168  # per utterance of one sentence: 24 frames of 2048 samples


@pytest.fixture(scope="module")
def served(fast_model_dir, tmp_path_factory):
    """`orpheus-tts serve` with an API key and room for one stream (to make "busy" easy); yields (base URL, log)."""
    port = free_port()
    cmd = [sys.executable, "-m", "orpheus_tts.cli", "serve", "--model", str(fast_model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--snac-device", "cpu", "--no-cuda-graphs", "--max-input-len", "24",
           "--max-output-len", "1024", "--max-batch-size", "2", "--max-streams", "1",
           "--log-level", "DEBUG"]  # fmt: skip
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "ORPHEUS_API_KEY": KEY}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(base, proc))
        yield base, log_path
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        server_log = log_path.read_text()
        print(server_log)  # shown by pytest on failure
    assert KEY not in server_log  # whatever the tests did, the key never reached the log


@pytest.fixture
def chromium() -> str:
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: run `bash scripts/system-deps.sh` (Debian's chromium)"
    return CHROMIUM


@pytest.fixture
async def browser(chromium, tmp_path) -> BrowserContext:
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=chromium, args=CHROMIUM_ARGS, headless=True, accept_downloads=True
        )
        try:
            yield context
        finally:
            await context.close()


async def until(page: Page, predicate: str, timeout: float = 60.0) -> None:
    """Polls a JS predicate with page.evaluate (Playwright's wait_for_function evaluates strings, which the page's
    Content-Security-Policy forbids)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await page.evaluate(predicate):
        if loop.time() > deadline:
            raise AssertionError(f"{predicate} not true after {timeout} s: {await counters(page)}")
        await asyncio.sleep(0.05)


async def counters(page: Page) -> dict:
    return await page.evaluate("() => window.playground")


async def open_page(browser: BrowserContext, base: str, key: str | None = KEY) -> Page:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    await page.goto(base + "/")  # redirected to /playground/
    await until(page, "() => window.playground && window.playground.state === 'idle'")
    if key is not None:
        await page.fill("#apikey", key)
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def set_length(page: Page, tokens: int) -> None:
    await page.fill("#min_tokens", str(tokens))
    await page.fill("#max_tokens", str(tokens))


async def test_speak_plays_the_stream_and_offers_the_wav(served, browser, tmp_path) -> None:
    base, _ = served
    page = await open_page(browser, base)
    assert page.url == base + "/playground/"
    assert await page.is_visible("#noise")  # the tiny model: the page says its audio is noise
    assert await page.is_visible("#keyfield")
    assert await page.eval_on_selector_all("#voices option", "os => os.map(o => o.value)") == [
        "tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe"]  # fmt: skip

    await page.fill("#text", "Hello from the browser.")
    await set_length(page, TOKENS)
    await page.click("#speak")
    await until(page, "() => window.playground.utterances.length === 1 && window.playground.state === 'idle'")
    await until(page, "() => window.playground.events.at(-1).startsWith('close')")  # the page closes the socket
    stats = await counters(page)
    expected = TOKENS // 7 * SAMPLES_PER_FRAME
    # Every sample arrived, was scheduled on the audio clock, and played out to its end (not stopped).
    assert stats["received"] == stats["scheduled"] == stats["played"] == expected, stats
    (u,) = stats["utterances"]
    assert u["result"] == "complete" and u["voice"] == "tara"
    assert 0 < u["firstAudioMs"] < 30_000 and u["rtf"] > 0 and u["audioS"] == expected / 24000
    assert stats["events"] == ["open", "speak", "audio", "end", "close 1000"]
    assert stats["error"] is None and not page.errors
    row = await page.inner_text("#stats tbody tr")
    assert "tara" in row and "complete" in row and " ms" in row

    async with page.expect_download() as info:
        await page.click("#download")
    path = tmp_path / "speech.wav"
    await (await info.value).save_as(path)
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (24000, 1, 2, expected)


async def test_stop_sends_cancel_and_silences(served, browser) -> None:
    base, _ = served
    page = await open_page(browser, base)
    await page.fill("#text", "A long utterance to stop.")
    await set_length(page, 1022)  # 146 frames, about 12 s of audio: still generating when Stop is clicked
    await page.click("#speak")
    await until(page, "() => window.playground.received > 0")
    await page.click("#stop")
    await until(page, "() => window.playground.state === 'idle'", timeout=30)
    await until(page, "() => window.playground.events.at(-1).startsWith('close')")
    stats = await counters(page)
    assert stats["events"][-3:] == ["cancel", "cancelled", "close 1000"], stats["events"]
    assert stats["utterances"][-1]["result"] == "stopped"
    assert stats["played"] < stats["scheduled"]  # what was still buffered was not played
    await asyncio.sleep(0.5)
    assert (await counters(page))["played"] == stats["played"]  # and nothing plays after Stop

    # The server freed the stream at once (it admits only one): the next utterance is served.
    await set_length(page, 14)
    await page.click("#speak")
    await until(page, "() => window.playground.utterances.length === 2 && window.playground.state === 'idle'")
    assert (await counters(page))["utterances"][-1]["result"] == "complete"
    assert not page.errors


async def test_unknown_voice_is_a_readable_message(served, browser) -> None:
    base, _ = served
    page = await open_page(browser, base)
    await page.fill("#voice", "nobody")
    await page.click("#speak")
    await until(page, "() => window.playground.error !== null")
    message = await page.inner_text("#error")
    assert await page.is_visible("#error")
    assert message.startswith("Unknown voice “nobody”") and "tara" in message, message
    assert (await counters(page))["state"] == "idle"


async def test_server_busy_is_a_readable_message(served, browser) -> None:
    base, _ = served
    page = await open_page(browser, base)
    async with aiohttp.ClientSession() as s:
        # Another client holds the server's only stream.
        async with s.ws_connect(base + "/ws/tts", headers={"Authorization": f"Bearer {KEY}"}) as other:
            await asyncio.sleep(0.2)
            await page.click("#speak")
            await until(page, "() => window.playground.error !== null")
            assert "busy" in await page.inner_text("#error")
            assert (await counters(page))["events"][-1] == "close 1013"
            assert not other.closed
    # Free again: the page works.
    await set_length(page, 14)
    await until(page, "() => window.playground.state === 'idle'")
    for _ in range(50):  # the server notices the other client's close within a moment
        await page.click("#speak")
        await until(page, "() => window.playground.state === 'idle'")
        if (await counters(page))["utterances"][-1]["result"] == "complete":
            break
        await asyncio.sleep(0.1)
    assert (await counters(page))["utterances"][-1]["result"] == "complete"


async def test_api_key_missing_or_wrong(served, browser) -> None:
    base, log_path = served
    page = await open_page(browser, base, key=None)
    await page.click("#speak")
    await until(page, "() => window.playground.error !== null")
    assert "needs an API key" in await page.inner_text("#error")
    assert (await counters(page))["events"] == []  # nothing was sent

    await page.fill("#apikey", "wrong-key")
    await page.click("#speak")
    await until(page, "() => window.playground.events.includes('close 1008')")
    assert "refused the API key" in await page.inner_text("#error")

    await page.fill("#apikey", KEY)
    await set_length(page, 14)
    await page.click("#speak")
    await until(page, "() => window.playground.utterances.some(u => u.result === 'complete')")
    assert KEY not in log_path.read_text() and "wrong-key" not in log_path.read_text()


def test_page_module_has_no_copy_of_the_protocol_constants() -> None:
    """The page takes the subprotocol names, path and end marker from /playground/info.json (protocol.py's)."""
    js = (pathlib.Path(__file__).parents[2] / "runtime/orpheus_tts/serve/playground/playground.js").read_text()
    for constant in ("orpheus-tts.v1", "base64url.bearer", "__END__", "/ws/tts", "24000"):
        assert constant not in js
