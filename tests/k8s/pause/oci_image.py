"""Makes a one-file OCI image archive (what `ctr images import` reads) from a static binary: the pod sandbox's
pause image, with no registry, daemon or image builder. Deterministic: same binary, same digest.

usage: python oci_image.py BINARY IMAGE_NAME OUT.tar
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
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


def image_archive(binary: bytes, name: str) -> bytes:
    layer_digest, layer = blob(tar_bytes({"pause": (binary, 0o755)}))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
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
            descriptor("application/vnd.oci.image.manifest.v1+json", manifest_digest, manifest_json, annotations=names)
        ],
    }
    files = {
        "oci-layout": (json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), 0o644),
        "index.json": (json.dumps(index, sort_keys=True).encode(), 0o644),
    }
    for digest, data in ((layer_digest, layer), (config_digest, config_json), (manifest_digest, manifest_json)):
        files["blobs/sha256/" + digest.removeprefix("sha256:")] = (data, 0o644)
    return tar_bytes(files)


if __name__ == "__main__":
    binary, name, out = sys.argv[1:4]
    Path(out).write_bytes(image_archive(Path(binary).read_bytes(), name))
