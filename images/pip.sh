#!/bin/sh
# pip inside an image build; every Dockerfile here runs pip through this script, so all images install the same way.
#
#   pip.sh install-requirements FILE   install a pinned requirements file through the wheel cache (below)
#   pip.sh ARGS...                     plain pip
#
# When the build mounts a CA bundle as the secret `pip-ca` (`buildah build --secret id=pip-ca,src=...` or
# `docker build --secret ...`; images/build.sh passes the host's $PIP_CERT), pip trusts it. A secret mount is never
# written to a layer, so the bundle leaves no trace in the image. Without the secret, pip uses its own CAs.
#
# The wheel cache is the build's cache mount at /var/cache/orpheus-pip (RUN --mount=type=cache), kept between
# builds by the builder: wheels are downloaded into it once (`pip download` skips files it already holds) and
# installed from it, so a changed pin does not download torch and its CUDA wheels again. pip's own HTTP cache would
# not do: it keeps only responses with caching headers, which the registry proxy here strips.
set -eu
if [ -s /run/secrets/pip-ca ]; then
  export PIP_CERT=/run/secrets/pip-ca
fi
if [ "${1:-}" = install-requirements ]; then
  wheels=/var/cache/orpheus-pip/wheels
  if [ -d /var/cache/orpheus-pip ]; then
    # What this image lacks (resolved from package metadata; what the base ships counts as installed), fetched
    # into the cache unless it is there, then installed from the cache alone.
    python3 -m pip install --dry-run --quiet --report /tmp/pip-plan.json -r "$2"
    python3 -c 'import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    print(item["metadata"]["name"] + "==" + item["metadata"]["version"])' /tmp/pip-plan.json >/tmp/pip-plan.txt
    python3 -m pip download --no-deps --only-binary=:all: --dest "$wheels" -r /tmp/pip-plan.txt
    python3 -m pip install --no-cache-dir --no-index --find-links "$wheels" -r "$2"
    exec rm /tmp/pip-plan.json /tmp/pip-plan.txt
  fi
  exec python3 -m pip install --no-cache-dir -r "$2"
fi
exec python3 -m pip "$@"
