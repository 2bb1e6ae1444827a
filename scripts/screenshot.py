"""`make screenshot`: docs/playground.png, the playground in Debian's headless Chromium while it plays.

Serves the tiny random-weight model (.demo/model, made by `make demo` or here) on CPU, speaks one utterance to
fill the results table, then takes the picture while a second one is still streaming.
"""

from __future__ import annotations

import asyncio
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from playwright.async_api import async_playwright

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / ".demo/model"
OUT = ROOT / "docs/playground.png"
SECOND_TEXT = "Hey there! This is Orpheus, speaking as the words are generated. <laugh> Pretty quick, right?"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", "--hide-scrollbars"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("the server exited during startup (see .demo/screenshot-server.log)")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit("the server was not ready in time")


async def until(page, predicate: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not await page.evaluate(predicate):
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {predicate}")
        await asyncio.sleep(0.05)


async def shoot(base: str) -> None:
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="orpheus-screenshot-"), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1040, "height": 840}, device_scale_factor=1,
        )  # fmt: skip
        page = await context.new_page()
        await page.goto(base + "/playground/")
        await until(page, "() => window.playground && window.playground.state === 'idle'")
        await page.fill("#seed", "7")
        await page.fill("#text", "Hello from Orpheus, served on a laptop.")
        await page.fill("#min_tokens", "84")
        await page.fill("#max_tokens", "168")
        await page.click("#speak")
        await until(page, "() => window.playground.utterances.length === 1 && window.playground.state === 'idle'")
        await page.fill("#text", SECOND_TEXT)
        await page.fill("#voice", "leo")
        await page.fill("#min_tokens", "168")
        await page.fill("#max_tokens", "256")
        before = await page.evaluate("() => window.playground.played")
        await page.click("#speak")
        # Half a second of this utterance played, and sound in the analyser right now (not a gap between chunks).
        await until(page, f"() => window.playground.played > {before} + 12000 "
                          "&& document.getElementById('level').style.width !== '0%'")  # fmt: skip
        # (a full-page capture re-lays the page out and can catch the canvas blank)
        await page.screenshot(path=str(OUT))
        await page.click("#stop")
        await context.close()


def main() -> int:
    if not (MODEL / "snac/config.json").is_file():
        subprocess.run([sys.executable, "-m", "orpheus_tts.cli", "make-tiny-model", str(MODEL)], check=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "orpheus_tts.cli", "serve", "--model", str(MODEL), "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--snac-device", "cpu", "--no-cuda-graphs",
           "--max-output-len", "256"]  # fmt: skip
    with open(ROOT / ".demo/screenshot-server.log", "w") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(base, server)
            asyncio.run(shoot(base))
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
