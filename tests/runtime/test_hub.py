import errno
import hashlib
import http.server
import json
import logging
import pathlib
import socket
import threading
import urllib.parse

import pytest

from orpheus_tts.build import hub
from orpheus_tts.build.hub import HubError, classify, resolve_model, snapshot_commit

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


DL_SHA = "fedcba9876543210fedcba9876543210fedcba98"
# A repo like Orpheus's: serving files plus training state that the allow-patterns must skip.
DL_FILES = {"config.json": b'{"a": 1}', "model.safetensors": b"weights", "tokenizer.json": b"{}",
            "optimizer.pt": b"x" * 100, "global_step1/state.pt": b"y"}  # fmt: skip


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """The few huggingface.co endpoints snapshot_download uses, on loopback. org/dl downloads; the
    other repos fail the way huggingface.co fails them (status + X-Error-Code)."""

    auth_seen: list[str | None] = []  # noqa: RUF012 - one test at a time
    fetched: list[str] = []  # noqa: RUF012

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = urllib.parse.urlparse(self.path).path
        if path.startswith("/api/models/"):
            type(self).auth_seen.append(self.headers.get("Authorization"))
        errors = {"/org/gated/": (403, "GatedRepo"), "/org/missing/": (401, "RepoNotFound"),
                  "/org/tiny/revision/nope": (404, "RevisionNotFound")}  # fmt: skip
        for fragment, (status, code) in errors.items():
            if fragment in path:
                return self._send(status, b"{}", {"X-Error-Code": code})
        if path == "/api/models/org/dl/revision/main":
            info = {"id": "org/dl", "sha": DL_SHA, "siblings": [{"rfilename": f} for f in DL_FILES]}
            return self._send(200, json.dumps(info).encode())
        if path.startswith(f"/api/models/org/dl/tree/{DL_SHA}"):
            tree = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for f, b in DL_FILES.items()]  # fmt: skip
            return self._send(200, json.dumps(tree).encode())
        name = path.removeprefix(f"/org/dl/resolve/{DL_SHA}/")
        if name in DL_FILES:
            if self.command == "GET":
                type(self).fetched.append(name)
            etag = f'"{hashlib.sha1(DL_FILES[name]).hexdigest()}"'
            return self._send(200, DL_FILES[name], {"X-Repo-Commit": DL_SHA, "ETag": etag})
        return self._send(500, b"{}")  # anything else: the hub is down

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass


def _point_hub_at(monkeypatch, url: str) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def fake_hub(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _point_hub_at(monkeypatch, f"http://127.0.0.1:{server.server_port}")
    _FakeHub.auth_seen, _FakeHub.fetched = [], []
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


def test_download_with_allow_patterns(fake_hub, tmp_path):
    path = resolve_model("org/dl", None, TOKEN, cache_dir=str(tmp_path))
    assert snapshot_commit(path) == DL_SHA
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) == [
        "config.json", "model.safetensors", "tokenizer.json"]  # fmt: skip
    assert (path / "model.safetensors").read_bytes() == b"weights"
    assert "optimizer.pt" not in _FakeHub.fetched and _FakeHub.auth_seen == [f"Bearer {TOKEN}"] * 2
    # Now cached: found offline, and a pinned commit resolves without asking the hub.
    assert resolve_model("org/dl", None, None, offline=True, cache_dir=str(tmp_path)) == path
    _FakeHub.auth_seen.clear()
    assert resolve_model("org/dl", DL_SHA, None, cache_dir=str(tmp_path)) == path
    assert _FakeHub.auth_seen == []
    only_config = resolve_model("org/dl", None, None, allow_patterns=["config.json"], cache_dir=str(tmp_path / "c"))
    assert [p.name for p in only_config.iterdir()] == ["config.json"]


def test_hub_unreachable_falls_back_to_cache(cache, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _point_hub_at(monkeypatch, f"http://127.0.0.1:{port}")
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
