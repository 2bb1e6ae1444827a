"""`orpheus-tts serve-engines` / `fetch-engine`: an engine copied over real HTTP, verified against its manifest."""

from __future__ import annotations

import http.server
import pathlib
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from orpheus_tts.build import engine_store
from orpheus_tts.build import manifest as mf


def make_engine(root: pathlib.Path, name: str = "abc123") -> mf.Manifest:
    engine = root / name
    (engine / "weights").mkdir(parents=True)
    (engine / "weights" / "rank0.engine").write_bytes(b"\x01" * 3_000_000)
    (engine / "config.json").write_text('{"x": 1}')
    m = mf.Manifest(
        backend="trtllm",
        model_repo="tiny-random",
        requested_revision=None,
        resolved_commit=None,
        weight_quantization="int4_awq",
        kv_cache_dtype="int8",
        max_batch_size=4,
        max_input_len=48,
        max_output_len=64,
        files=mf.list_files(engine),
    )
    mf.write(m, engine)
    return m


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[tuple[str, pathlib.Path]]:
    root = tmp_path / "volume"
    make_engine(root)
    (root / ".cache" / "huggingface").mkdir(parents=True)
    (root / ".cache" / "huggingface" / "secret").write_text("not for the network")
    (root / "unfinished").mkdir()
    (root / "unfinished" / "part").write_text("x")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), engine_store.make_handler(root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_copies_and_verifies_an_engine(store: tuple[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    url, root = store
    out = tmp_path / "cache" / "abc123"
    assert engine_store.fetch_engine_main(["--url", f"{url}/abc123", "--out", str(out)]) == 0
    m = mf.read(out)
    assert not mf.missing_or_changed(m, out, verify_hashes=True)
    assert (out / "weights" / "rank0.engine").read_bytes() == (
        root / "abc123" / "weights" / "rank0.engine"
    ).read_bytes()
    # A restarted init container keeps what it verified and completes.
    (out / mf.MANIFEST_NAME).unlink()
    assert engine_store.fetch_engine_main(["--url", f"{url}/abc123", "--out", str(out)]) == 0


def test_only_finished_engines_files_are_served(store: tuple[str, pathlib.Path]) -> None:
    url, _ = store
    for path in ("/.cache/huggingface/secret", "/unfinished/part", "/abc123/../.cache/huggingface/secret", "/abc123/x"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url + path, timeout=5)
        assert info.value.code == 404, path


def test_a_file_that_differs_from_the_manifest_fails_at_once(
    store: tuple[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    url, root = store
    (root / "abc123" / "config.json").write_text('{"x": 2}')  # same size, other bytes
    out = tmp_path / "cache" / "abc123"
    assert engine_store.fetch_engine_main(["--url", f"{url}/abc123", "--out", str(out), "--retry-seconds", "60"]) == 1
    assert not (out / mf.MANIFEST_NAME).exists()  # never looks complete


def test_unreachable_store_gives_up_after_the_retry_window(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "cache" / "abc123"
    assert (
        engine_store.fetch_engine_main(
            ["--url", "http://127.0.0.1:9/abc123", "--out", str(out), "--retry-seconds", "0"]
        )
        == 1
    )
