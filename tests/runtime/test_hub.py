import errno
import http.server
import json
import logging
import pathlib
import socket
import threading

import pytest

from orpheus_tts import hub
from orpheus_tts.hub import HubError, classify, resolve_model, snapshot_commit

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_SecretTokenValue123"


@pytest.fixture
def cache(tmp_path: pathlib.Path) -> pathlib.Path:
    """A hub cache holding org/tiny at main == SHA, in huggingface_hub's on-disk layout."""
    repo = tmp_path / "cache" / "models--org--tiny"
    snap = repo / "snapshots" / SHA
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return tmp_path / "cache"


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers repo-info calls the way huggingface.co does for failing repos (status + X-Error-Code)."""

    auth_seen: list[str | None] = []  # noqa: RUF012 - one test at a time

    def do_GET(self) -> None:
        if self.path.startswith("/api/models/"):
            type(self).auth_seen.append(self.headers.get("Authorization"))
        status, code = 500, None
        if "/org/gated/" in self.path:
            status, code = 403, "GatedRepo"
        elif "/org/missing/" in self.path:
            status, code = 401, "RepoNotFound"
        elif "/org/tiny/revision/nope" in self.path:
            status, code = 404, "RevisionNotFound"
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        body = json.dumps({"error": code or "boom"}).encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub.constants as constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _FakeHub.auth_seen = []
    yield server
    server.shutdown()
    server.server_close()


def test_local_directory_returned_as_is(tmp_path):
    assert resolve_model(str(tmp_path), None, TOKEN) == tmp_path
    with pytest.raises(HubError) as e:
        resolve_model(str(tmp_path / "nope"), None, None)
    assert e.value.kind == "not_found" and "does not exist" in str(e.value)


def test_offline_cache(cache):
    path = resolve_model("org/tiny", None, None, offline=True, cache_dir=str(cache))
    assert path == cache / "models--org--tiny" / "snapshots" / SHA and snapshot_commit(path) == SHA
    assert resolve_model("org/tiny", SHA, None, offline=True, cache_dir=str(cache)) == path  # pinned commit
    assert snapshot_commit(cache) is None
    with pytest.raises(HubError) as e:
        resolve_model("org/tiny", "v2", None, offline=True, cache_dir=str(cache))
    assert e.value.kind == "revision" and "'v2'" in str(e.value)
    with pytest.raises(HubError) as e:
        resolve_model("org/other", None, None, offline=True, cache_dir=str(cache))
    assert e.value.kind == "not_found" and "not in the local cache" in str(e.value)


@pytest.mark.parametrize(
    "repo, revision, kind, text",
    [
        ("org/gated", None, "auth", "gated"),
        ("org/missing", None, "not_found", "not found"),
        ("org/tiny", "nope", "revision", "'nope'"),
        ("org/down", None, "network", "cannot reach the hub"),
    ],
)
def test_hub_errors_mapped_and_token_kept_secret(fake_hub, cache, caplog, repo, revision, kind, text):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(HubError) as e:
        resolve_model(repo, revision, TOKEN, cache_dir=str(cache / "empty"))
    assert e.value.kind == kind and text in str(e.value)
    assert _FakeHub.auth_seen and _FakeHub.auth_seen[0] == f"Bearer {TOKEN}"  # the token was used...
    assert TOKEN not in str(e.value) and TOKEN not in caplog.text  # ...and never shown


def test_hub_unreachable_falls_back_to_cache(fake_hub, cache, monkeypatch):
    import huggingface_hub.constants as constants

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    assert resolve_model("org/tiny", None, None, cache_dir=str(cache)).name == SHA
    with pytest.raises(HubError) as e:
        resolve_model("org/nothere", None, None, cache_dir=str(cache))
    assert e.value.kind == "network" and "ConnectError" in str(e.value)


def test_classify_disk_full_and_other():
    full = OSError(errno.ENOSPC, "No space left on device")
    assert classify(full, "o/r", None, offline=False, has_token=False, repo_cached=False)[0] == "disk_full"
    kind, msg = classify(ValueError("weird"), "o/r", None, offline=False, has_token=True, repo_cached=False)
    assert kind == "other" and "weird" in msg
    assert hub.redact(f"url?token={TOKEN}", TOKEN) == "url?token=***"


def test_download_cli(cache, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert hub.main(["org/tiny", "--offline", "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.strip().endswith(SHA)
    assert hub.main(["org/tiny", "--offline", "--revision", "v9", "--cache-dir", str(cache)]) == 4
    err = capsys.readouterr().err
    assert "error (revision)" in err and TOKEN not in err
