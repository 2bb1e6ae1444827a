"""The operator's configuration: one typed dataclass, and the one place its environment variables are read.

CLI flags (main.py) override the environment. Resource defaults are NOT here: they live in the CRD's
OpenAPI schema; this only holds what the cluster owner decides (images, namespaces, timing).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_RUNTIME_IMAGE = "ghcr.io/orpheus-tts/orpheus-tts:0.1.0"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class OperatorConfig:
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    build_image: str | None = None  # None: the runtime image builds its own engines
    namespaces: tuple[str, ...] = field(default=())  # empty: all namespaces
    health_port: int = 8080
    log_level: str = "INFO"
    # Level-triggered resync of every resource; child watch events make most reactions immediate.
    resync_seconds: float = 30.0
    # A failed build is retried after base * 2**(attempt-1) seconds, capped at max.
    build_retry_base_seconds: float = 60.0
    build_retry_max_seconds: float = 1800.0
    # The CRD to install over the cluster's at start (the chart mounts its crds/ file): `helm upgrade` never
    # upgrades a CRD, so the operator of a new chart version brings its own. None: leave the CRD alone.
    crd_file: str | None = None

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


ENV_VARS: dict[str, str] = {
    "ORPHEUS_OPERATOR_RUNTIME_IMAGE": "runtime_image",
    "ORPHEUS_OPERATOR_BUILD_IMAGE": "build_image",
    "ORPHEUS_OPERATOR_NAMESPACES": "namespaces",
    "ORPHEUS_OPERATOR_HEALTH_PORT": "health_port",
    "ORPHEUS_OPERATOR_LOG_LEVEL": "log_level",
    "ORPHEUS_OPERATOR_RESYNC_SECONDS": "resync_seconds",
    "ORPHEUS_OPERATOR_BUILD_RETRY_BASE_SECONDS": "build_retry_base_seconds",
    "ORPHEUS_OPERATOR_BUILD_RETRY_MAX_SECONDS": "build_retry_max_seconds",
    "ORPHEUS_OPERATOR_CRD_FILE": "crd_file",
}


def split_namespaces(raw: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else [n for part in raw for n in part.split(",")]
    return tuple(dict.fromkeys(n.strip() for n in items if n.strip()))


def _parse(name: str, raw: str) -> object:
    try:
        if name == "namespaces":
            return split_namespaces(raw)
        if name == "health_port":
            return int(raw)
        if name.endswith("_seconds"):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{name}: cannot parse {raw!r}") from None
    if name in ("build_image", "crd_file"):
        return raw or None  # set but empty (the chart's default) means unset
    return raw


def validate(cfg: OperatorConfig) -> OperatorConfig:
    if not cfg.runtime_image:
        raise ConfigError("runtime_image must not be empty")
    if not 0 < cfg.health_port < 65536:
        raise ConfigError(f"health_port must be a TCP port, got {cfg.health_port}")
    for name in ("resync_seconds", "build_retry_base_seconds", "build_retry_max_seconds"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)}")
    return cfg


def from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> OperatorConfig:
    """Defaults, then the environment, then explicit overrides (CLI flags; None means unset)."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {name: _parse(name, environ[var]) for var, name in ENV_VARS.items() if var in environ}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return validate(OperatorConfig(**values))  # type: ignore[arg-type]


def add_cli_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace",
        "-n",
        dest="namespaces",
        action="append",
        default=None,
        help="watch this namespace (repeatable, or comma-separated); default: all namespaces",
    )
    parser.add_argument(
        "--all-namespaces",
        "-A",
        action="store_true",
        help="watch all namespaces, even if ORPHEUS_OPERATOR_NAMESPACES is set",
    )
    parser.add_argument("--health-port", type=int, default=None, help="liveness endpoint port (default 8080)")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING... (default INFO)")
    parser.add_argument("--runtime-image", default=None)
    parser.add_argument("--build-image", default=None)
    parser.add_argument("--resync-seconds", type=float, default=None)


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> OperatorConfig:
    overrides: dict[str, object] = {
        "health_port": args.health_port,
        "log_level": args.log_level,
        "runtime_image": args.runtime_image,
        "build_image": args.build_image,
        "resync_seconds": args.resync_seconds,
        "namespaces": split_namespaces(args.namespaces) if args.namespaces else None,
    }
    if args.all_namespaces:
        overrides["namespaces"] = ()
    return from_env(environ, **overrides)
