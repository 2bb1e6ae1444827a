#!/bin/sh
# `pip` inside an image build (every Dockerfile here runs pip through this script, so that all images install the
# same way). When the build mounts a CA bundle as the secret `pip-ca` (`buildah build --secret id=pip-ca,src=...` or
# `docker buildx build --secret ...`; images/build.sh passes the host's $PIP_CERT), pip trusts it. A secret mount is
# never written to a layer, so the bundle leaves no trace in the image. Without the secret, pip uses its own CAs.
# pip's download cache is the build's cache mount (RUN --mount=type=cache,target=/var/cache/orpheus-pip), kept
# between builds by the builder: a changed pin does not download torch again. (pip would otherwise look under $HOME,
# which the images set to the serving user's home.)
set -eu
if [ -s /run/secrets/pip-ca ]; then
  export PIP_CERT=/run/secrets/pip-ca
fi
if [ -d /var/cache/orpheus-pip ]; then
  export PIP_CACHE_DIR=/var/cache/orpheus-pip
fi
exec python3 -m pip "$@"
