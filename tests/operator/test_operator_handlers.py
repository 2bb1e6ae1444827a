"""Small pure helpers of the reconciler and the handlers."""

from __future__ import annotations

from crd_schema import make_body

from orpheus_operator import crd, hashing, render
from orpheus_operator.config import OperatorConfig
from orpheus_operator.handlers import owner_name
from orpheus_operator.reconcile import served_engine


def test_served_engine_is_read_back_from_the_deployment() -> None:
    body = make_body()
    build = hashing.build_spec(body["spec"], OperatorConfig())
    h = hashing.engine_hash(build)
    dep = render.render_deployment(body, OperatorConfig(), build, h)
    assert served_engine(dep) == (h, build)
    assert served_engine(None) is None
    dep["metadata"]["annotations"][crd.BUILD_SPEC_ANNOTATION] = "{not json"
    assert served_engine(dep) is None


def test_owner_name_only_follows_an_orpheustts_owner() -> None:
    body = make_body()
    job = render.render_job(body, {**hashing.build_spec(body["spec"], OperatorConfig())}, "h", 1)
    assert owner_name(job) == "voice"
    job["metadata"]["ownerReferences"][0]["apiVersion"] = "other.example/v1"
    assert owner_name(job) is None
    assert owner_name({"metadata": {}}) is None
