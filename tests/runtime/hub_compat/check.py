"""Runs hub.py's error mapping in whichever Python runs it (the main venv: huggingface_hub 1.x; the
hub-compat venv: 0.3x) and prints {case: kind} as JSON. Called by tests/runtime/test_hub_compat.py with
PYTHONPATH=runtime and HF_ENDPOINT pointing at that test's fake hub on loopback.

Usage: check.py CACHE_DIR UNREACHABLE_URL
"""

import json
import os
import sys

import huggingface_hub
from huggingface_hub import errors

from orpheus_tts.build import hub

cache, unreachable = sys.argv[1], sys.argv[2]
kinds: dict[str, str] = {"version": huggingface_hub.__version__}


def kind_of(repo: str, revision: str | None = None, **kwargs) -> str:
    try:
        hub.resolve_model(repo, revision, "hf_SecretTokenValue123", cache_dir=cache, **kwargs)
    except hub.HubError as e:
        assert "hf_SecretTokenValue123" not in str(e)
        return e.kind
    return "ok"


for case, repo, revision in [("gated", "org/gated", None), ("missing", "org/missing", None),
                             ("revision", "org/tiny", "nope"), ("down", "org/down", None)]:  # fmt: skip
    kinds[case] = kind_of(repo, revision)
kinds["offline"] = kind_of("org/other", None, offline=True)

# The hub unreachable (nothing listens): the HTTP client's own transport error, wrapped or not.
from huggingface_hub import constants  # noqa: E402

constants.ENDPOINT = unreachable
constants.HUGGINGFACE_CO_URL_TEMPLATE = unreachable + "/{repo_id}/resolve/{revision}/{filename}"
kinds["unreachable"] = kind_of("org/nothere")

# What the HTTP client raises bare, as classify() sees it from other call sites.
if huggingface_hub.__version__.startswith("0."):
    import requests

    bare = requests.ConnectionError("connection reset")
    response = requests.Response()
    response.status_code = 403
    refused = errors.HfHubHTTPError("forbidden", response=response)
else:
    import httpx

    bare = httpx.ConnectError("connection reset")
    refused = errors.HfHubHTTPError("forbidden", response=httpx.Response(403, request=httpx.Request("GET", "http://x")))
kinds["bare_transport"] = hub.classify(bare, "o/r", None, offline=False, has_token=False, repo_cached=False)[0]
kinds["refused"] = hub.classify(refused, "o/r", None, offline=False, has_token=True, repo_cached=False)[0]
print(json.dumps(kinds))
sys.stdout.flush()
os._exit(0)
