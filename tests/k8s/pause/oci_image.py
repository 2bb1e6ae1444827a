"""Makes an OCI image archive (what `ctr images import` reads) from static binaries, with no registry, daemon or
image builder: the pod sandbox's pause image, and a busybox image for the e2e cluster's smoke tests.
Deterministic: same files, same digest.

usage: python oci_image.py NAME OUT.tar HOST_FILE:IMAGE_PATH... [--user UID:GID]
The entrypoint is the first file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path


def blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def tar_bytes(files: dict[str, tuple[bytes, int]]) -> bytes:
    """An uncompressed tar with fixed owners and times (so the digest depends only on the contents)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def descriptor(media_type: str, digest: str, data: bytes, **extra: object) -> dict:
    return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}


def image_archive(files: dict[str, bytes], name: str, user: str) -> bytes:
    """files: image path -> contents (all executable); the first is the entrypoint."""
    layer_digest, layer = blob(tar_bytes({path.lstrip("/"): (data, 0o755) for path, data in files.items()}))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [next(iter(files))], "User": user},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_json = blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", config_digest, config_json),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer_digest, layer)],
    }
    manifest_digest, manifest_json = blob(json.dumps(manifest, sort_keys=True).encode())
    # containerd's importer names the image after io.containerd.image.name (else after ref.name).
    names = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            descriptor(
                "application/vnd.oci.image.manifest.v1+json",
                manifest_digest,
                manifest_json,
                annotations=names,
                platform={"architecture": "amd64", "os": "linux"},
            )
        ],
    }
    archive = {
        "oci-layout": (json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), 0o644),
        "index.json": (json.dumps(index, sort_keys=True).encode(), 0o644),
    }
    for digest, data in ((layer_digest, layer), (config_digest, config_json), (manifest_digest, manifest_json)):
        archive["blobs/sha256/" + digest.removeprefix("sha256:")] = (data, 0o644)
    return tar_bytes(archive)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("out", type=Path)
    parser.add_argument("files", nargs="+", help="HOST_FILE:IMAGE_PATH")
    parser.add_argument("--user", default="0:0")
    args = parser.parse_args()
    files = {spec.split(":", 1)[1]: Path(spec.split(":", 1)[0]).read_bytes() for spec in args.files}
    args.out.write_bytes(image_archive(files, args.name, args.user))
