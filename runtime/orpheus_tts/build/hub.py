"""Model files from a local directory or the Hugging Face hub, with errors a person can act on.

`resolve_model` returns a local directory as is; anything else is a hub repo id downloaded (or found in
the cache) with `huggingface_hub.snapshot_download`, restricted by allow-patterns: Orpheus's repo also
holds ~100 GB of optimizer/FSDP state that serving never reads. Failures become `HubError` with a
`kind` that callers map to exit codes and status reasons. The token is never part of a message.

`orpheus-tts download REPO [--revision R] ...` is `main`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import pathlib
import sys

from orpheus_tts.build.exit_codes import ExitCode

log = logging.getLogger(__name__)

DEFAULT_ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model"]
KINDS = ("auth", "not_found", "revision", "network", "disk_full", "other")
# Each kind's exit code, the same for `download`, `make-calibration` and `build-engine`.
EXIT_CODES = {
    "auth": ExitCode.AUTH,
    "not_found": ExitCode.NOT_FOUND,
    "revision": ExitCode.NOT_FOUND,
    "disk_full": ExitCode.DISK_FULL,
    "network": ExitCode.NETWORK,
    "other": ExitCode.FAILED,
}


class HubError(RuntimeError):
    def __init__(self, message: str, kind: str) -> None:
        assert kind in KINDS, kind
        super().__init__(message)
        self.kind = kind


def redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~")) or s.count("/") > 1


def _cache_has_repo(repo_id: str, cache_dir: str | None) -> bool:
    from huggingface_hub import constants

    root = pathlib.Path(cache_dir or constants.HF_HUB_CACHE)
    return (root / f"models--{repo_id.replace('/', '--')}").is_dir()


def classify(exc: BaseException, repo_id: str, revision: str | None, *, offline: bool, has_token: bool,
             repo_cached: bool) -> tuple[str, str]:  # fmt: skip
    """Pure: a huggingface_hub / OS exception -> (kind, message). Order matters: GatedRepoError is a
    RepositoryNotFoundError, which is an HfHubHTTPError, which is an OSError.

    Works with huggingface_hub 1.x (httpx) and 0.3x (requests), which NVIDIA's TensorRT-LLM image ships
    (transformers pins it below 1.0): 0.3x has no IncompleteSnapshotError, and its transport errors are
    `requests` exceptions. tests/runtime/test_hub_compat.py runs this against both."""
    from huggingface_hub import errors as e

    rev = revision or "main"
    token_hint = "" if has_token else " (no HF_TOKEN is set)"
    if isinstance(exc, e.GatedRepoError):
        return "auth", (f"{repo_id} is gated: accept its licence on huggingface.co with the account whose token "
                        f"is in HF_TOKEN{token_hint}")  # fmt: skip
    if isinstance(exc, e.RepositoryNotFoundError):
        return "not_found", f"repository {repo_id} not found, or private and not readable with this token{token_hint}"
    if isinstance(exc, e.RevisionNotFoundError):
        return "revision", f"revision {rev!r} not found in {repo_id}"
    if isinstance(exc, e.HfHubHTTPError) and exc.response is not None and exc.response.status_code in (401, 403):
        return "auth", f"the hub refused access to {repo_id} (HTTP {exc.response.status_code}){token_hint}"
    if isinstance(exc, e.HFValidationError):
        return "not_found", f"{repo_id!r} is neither a local directory nor a valid hub repo id"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk_full", f"no space left on device while downloading {repo_id}: free disk or use a larger volume"
    incomplete = getattr(e, "IncompleteSnapshotError", None)  # huggingface_hub >= 1.0 only
    if incomplete is not None and isinstance(exc, incomplete):
        return "network", f"the cached copy of {repo_id}@{rev} is incomplete and the hub cannot be reached"
    if isinstance(exc, e.LocalEntryNotFoundError):
        if offline:
            if repo_cached:
                return "revision", f"revision {rev!r} of {repo_id} is not in the local cache (offline mode)"
            return "not_found", f"{repo_id} is not in the local cache (offline mode: HF_HUB_OFFLINE)"
        return "network", f"cannot reach the hub to download {repo_id}, and it is not cached: {_cause(exc)}"
    if is_network_error(exc):
        return "network", f"network error while downloading {repo_id}: {type(exc).__name__}"
    return "other", f"downloading {repo_id} failed: {type(exc).__name__}: {exc}"


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__
    return f"{type(cause).__name__}" if cause is not None else "no connection"


def is_network_error(exc: BaseException) -> bool:
    """A transport failure (no connection, timeout, reset) of whichever HTTP client huggingface_hub uses:
    httpx in 1.x, requests in 0.3x; either may be absent."""
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import httpx

        kinds.append(httpx.TransportError)
    except ImportError:
        pass
    try:
        import requests

        kinds += [requests.ConnectionError, requests.Timeout]
    except ImportError:
        pass
    return isinstance(exc, tuple(kinds))


def resolve_model(repo_or_dir: str, revision: str | None, token: str | None, *,
                  allow_patterns: list[str] | None = None, offline: bool = False,
                  cache_dir: str | None = None) -> pathlib.Path:  # fmt: skip
    """A local directory as is, else the hub snapshot's directory (downloaded if needed).

    `revision` pins a branch, tag or commit; `offline` only looks in the cache."""
    local = pathlib.Path(repo_or_dir).expanduser()
    if local.is_dir():
        return local
    if _looks_like_path(repo_or_dir):
        raise HubError(f"local model directory {repo_or_dir} does not exist", "not_found")
    from huggingface_hub import snapshot_download

    patterns = DEFAULT_ALLOW_PATTERNS if allow_patterns is None else allow_patterns
    log.info("resolving %s@%s from the hub%s", repo_or_dir, revision or "main", " (offline)" if offline else "")
    try:
        path = snapshot_download(repo_or_dir, revision=revision, token=token, allow_patterns=patterns,
                                 cache_dir=cache_dir, local_files_only=offline)  # fmt: skip
    except Exception as exc:
        kind, message = classify(exc, repo_or_dir, revision, offline=offline, has_token=bool(token),
                                 repo_cached=_cache_has_repo(repo_or_dir, cache_dir))  # fmt: skip
        raise HubError(redact(message, token), kind) from None
    return pathlib.Path(path)


def snapshot_commit(path: pathlib.Path) -> str | None:
    """The commit a hub-cache snapshot directory holds (its name), None for other directories."""
    return path.name if path.parent.name == "snapshots" else None


def main(argv: list[str] | None = None) -> int:
    from orpheus_tts.config import ConfigError, from_env

    parser = argparse.ArgumentParser(prog="orpheus-tts download", description="Download a model from the hub.")
    parser.add_argument("repo", help="hub repo id, e.g. canopylabs/orpheus-3b-0.1-ft")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument("--cache-dir", default=None, help="hub cache directory (default: HF_HOME's)")
    parser.add_argument(
        "--allow-pattern",
        action="append",
        dest="patterns",
        help=f"file pattern to fetch, repeatable (default: {' '.join(DEFAULT_ALLOW_PATTERNS)})",
    )
    parser.add_argument("--offline", action="store_true", default=None, help="only look in the cache")
    args = parser.parse_args(argv)
    try:
        cfg = from_env()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    offline = cfg.hf_offline if args.offline is None else True
    try:
        path = resolve_model(args.repo, args.revision, cfg.hf_token, allow_patterns=args.patterns,
                             offline=offline, cache_dir=args.cache_dir)  # fmt: skip
    except HubError as e:
        print(f"error ({e.kind}): {e}", file=sys.stderr)
        return EXIT_CODES[e.kind]
    print(path)
    return ExitCode.OK
