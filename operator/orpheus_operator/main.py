"""`orpheus-operator`: runs the OrpheusTTS operator (kopf; standalone, or peering when several replicas run)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys

import kopf
import yaml

from orpheus_operator import config, handlers, metrics
from orpheus_operator.kube import ApiError, Kube

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="orpheus-operator", description=__doc__)
    config.add_cli_flags(parser)
    return parser.parse_args(argv)


def upgrade_crd(api: Kube, path: str) -> None:
    """Replaces the cluster's OrpheusTTS CRD with `path` (a whole-object update, so that fields the new version
    drops go too; server-side apply would keep those that `helm install` created). Failure is logged, not fatal:
    the operator then runs against the CRD it finds."""
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        logger.warning("CRD not updated: cannot read %s: %s", path, e)
        return
    name = doc["metadata"]["name"]
    try:
        current = asyncio.run(api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", name))
        if current is None:
            logger.warning("CRD %s is not installed; install the chart's crds/ first", name)
            return
        doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        doc["metadata"].setdefault("labels", {}).update(current["metadata"].get("labels") or {})
        doc["metadata"].setdefault("annotations", {}).update(current["metadata"].get("annotations") or {})
        asyncio.run(api.replace(doc))
        logger.info("CRD %s updated from %s", name, path)
    except ApiError as e:
        logger.warning("CRD %s not updated from %s: %s", name, path, e)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = config.from_args(args)
    except config.ConfigError as e:
        print(f"orpheus-operator: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api = Kube()
    if cfg.crd_file:
        upgrade_crd(api, cfg.crd_file)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, cfg, api)
    logger.info(
        "watching %s; runtime image %s",
        "all namespaces" if cfg.clusterwide else ",".join(cfg.namespaces),
        cfg.runtime_image,
    )
    # --- issue #12: operator metrics; kopf peering (leader election) when ORPHEUS_OPERATOR_PEERING names one.
    # Each replica draws a random priority: the highest reconciles, the others pause until its record expires.
    if cfg.metrics_port:
        metrics.serve(cfg.metrics_port)
    # --- end issue #12
    kopf.run(
        registry=registry,
        standalone=not cfg.peering,  # issue #12
        peering_name=cfg.peering or None,  # None, like the priority: kopf's defaults
        priority=random.randrange(1, 2**31) if cfg.peering else None,
        clusterwide=cfg.clusterwide,
        namespaces=cfg.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{cfg.health_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
