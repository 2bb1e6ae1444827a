"""Engines from one ReadWriteOnce volume to pods on any node (the operator's "copy" storage mode).

`orpheus-tts serve-engines --dir /engines`: a read-only HTTP server next to the volume (the operator's
`<name>-engines` Deployment). It serves only finished engines: `GET /<hash>/manifest.json` and the files that
manifest lists; nothing else on the volume (download cache, unfinished builds) is reachable.

`orpheus-tts fetch-engine --url http://<name>-engines:8080/<hash> --out /engines/<hash>`: the runtime pod's init
container. Downloads the manifest, then each file it lists, verifies every file's size and sha256 against it,
and writes the manifest last (a directory with a manifest is complete, as after a build). Already-verified files
are kept, so a restarted init container resumes. Exit codes: 0 ok, 1 store unreachable or a file does not match.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import pathlib
import shutil
import sys
import time
import urllib.parse
import urllib.request

from orpheus_tts.build import manifest as mf

CHUNK = 1 << 20


class Mismatch(ValueError):
    """A downloaded file differs from its manifest entry: retrying would not help."""


# ---- serve ---------------------------------------------------------------------------------------------


def listed_file(root: pathlib.Path, url_path: str) -> pathlib.Path | None:
    """The file a request may read: <hash>/manifest.json of a finished engine, or a file its manifest lists."""
    parts = urllib.parse.unquote(url_path).strip("/").split("/", 1)
    if len(parts) != 2 or not parts[0] or parts[0].startswith("."):
        return None
    engine_dir, rel = root / parts[0], parts[1]
    try:
        manifest = mf.read(engine_dir)
    except mf.ManifestError:
        return None
    if rel == mf.MANIFEST_NAME or rel in {f.path for f in manifest.files}:
        return engine_dir / rel
    return None


def make_handler(root: pathlib.Path) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send_bytes(b"ok\n")
                return
            path = listed_file(root, self.path)
            if path is None or not path.is_file():
                self.send_error(404, "no such engine file")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(path.stat().st_size))
            self.end_headers()
            with open(path, "rb") as f:
                shutil.copyfileobj(f, self.wfile, CHUNK)

        def _send_bytes(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            print(f"serve-engines: {self.address_string()} {format % args}", file=sys.stderr, flush=True)

    return Handler


def serve_engines_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orpheus-tts serve-engines", description=__doc__)
    p.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("/engines"))
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    return p


def serve_engines_main(argv: list[str] | None = None) -> int:
    args = serve_engines_parser().parse_args(argv)
    server = http.server.ThreadingHTTPServer((args.host, args.port), make_handler(args.dir))
    print(f"serve-engines: serving finished engines of {args.dir} on {args.host}:{args.port}", file=sys.stderr)
    server.serve_forever()
    return 0


# ---- fetch ---------------------------------------------------------------------------------------------


def _get(url: str, timeout: float):
    return urllib.request.urlopen(url, timeout=timeout)


def _download(url: str, dest: pathlib.Path, entry: mf.FileEntry, timeout: float) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    h = hashlib.sha256()
    with _get(url, timeout) as resp, open(tmp, "wb") as out:
        while block := resp.read(CHUNK):
            h.update(block)
            out.write(block)
    size = tmp.stat().st_size
    if size != entry.size or h.hexdigest() != entry.sha256:
        tmp.unlink()
        raise Mismatch(f"{entry.path}: {size} bytes, sha256 {h.hexdigest()}; manifest: {entry.size}, {entry.sha256}")
    os.replace(tmp, dest)


def fetch(base_url: str, out: pathlib.Path, timeout: float = 60.0) -> mf.Manifest:
    """Copies one engine from the store into `out`, verified against its manifest."""
    base = base_url.rstrip("/")
    with _get(f"{base}/{mf.MANIFEST_NAME}", timeout) as resp:
        text = resp.read().decode()
    manifest = mf.Manifest.from_json(text)
    out.mkdir(parents=True, exist_ok=True)
    for entry in manifest.files:
        dest = out / entry.path
        if dest.is_file() and dest.stat().st_size == entry.size and mf.sha256_file(dest) == entry.sha256:
            continue  # a restarted init container keeps what it verified
        _download(f"{base}/{urllib.parse.quote(entry.path)}", dest, entry, timeout)
    mf.write_atomically(out / mf.MANIFEST_NAME, text)
    return manifest


def fetch_engine_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orpheus-tts fetch-engine", description=__doc__)
    p.add_argument("--url", required=True, help="http://<store>:8080/<engine hash>")
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--retry-seconds", type=float, default=600.0, help="how long to wait for the store to answer")
    return p


def fetch_engine_main(argv: list[str] | None = None) -> int:
    args = fetch_engine_parser().parse_args(argv)
    deadline = time.monotonic() + args.retry_seconds
    while True:
        try:
            m = fetch(args.url, args.out)
            total = sum(f.size for f in m.files)
            print(f"fetch-engine: {len(m.files)} files, {total} bytes verified into {args.out}", file=sys.stderr)
            return 0
        except (OSError, ValueError) as e:  # URLError is an OSError; a half-written manifest a ValueError
            if isinstance(e, Mismatch) or time.monotonic() > deadline:
                print(f"fetch-engine: cannot copy the engine from {args.url}: {e}", file=sys.stderr)
                return 1
            print(f"fetch-engine: {args.url} not ready ({e}); retrying", file=sys.stderr, flush=True)
            time.sleep(5)
