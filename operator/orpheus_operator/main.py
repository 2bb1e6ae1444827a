"""`orpheus-operator`: runs the OrpheusTTS operator (kopf; standalone, or peering when several replicas run)."""

from __future__ import annotations

import argparse
import logging
import random
import sys

import kopf

from orpheus_operator import config, handlers, metrics


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
    # --- issue #12: operator metrics; kopf peering (leader election) when ORPHEUS_OPERATOR_PEERING names one.
    # Each replica draws a random priority: the highest reconciles, the others pause until its record expires.
    if cfg.metrics_port:
        metrics.serve(cfg.metrics_port)
    peering = {"peering_name": cfg.peering, "priority": random.randrange(1, 2**31)} if cfg.peering else {}
    # --- end issue #12
    kopf.run(
        registry=registry,
        standalone=not cfg.peering,  # issue #12
        **peering,  # issue #12
        clusterwide=cfg.clusterwide,
        namespaces=cfg.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{cfg.health_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
