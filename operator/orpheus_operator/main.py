"""`orpheus-operator`: runs the OrpheusTTS operator (kopf, standalone: one replica, no peering)."""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from orpheus_operator import config, handlers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="orpheus-operator", description=__doc__)
    config.add_cli_flags(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = config.from_args(args)
    except config.ConfigError as e:
        print(f"orpheus-operator: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = kopf.OperatorRegistry()
    handlers.register(registry, cfg)
    logging.getLogger(__name__).info(
        "watching %s; runtime image %s",
        "all namespaces" if cfg.clusterwide else ",".join(cfg.namespaces),
        cfg.runtime_image,
    )
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=cfg.clusterwide,
        namespaces=cfg.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{cfg.health_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
