"""Small pure helpers of the reconciler and the handlers."""

from __future__ import annotations

from crd_schema import make_body

from orpheus_operator import buildstate, crd, engine_identity, render
from orpheus_operator.config import OperatorConfig
from orpheus_operator.handlers import owner_name
from orpheus_operator.reconcile import ServedEngine, attempts_to_keep, engine_to_serve, served_engine


def test_served_engine_is_read_back_from_the_deployment() -> None:
    body = make_body()
    build = engine_identity.build_spec(body["spec"], OperatorConfig())
    h = engine_identity.engine_hash(build)
    dep = render.render_deployment(body, OperatorConfig(), build, h)
    assert served_engine(dep) == (h, build)
    assert served_engine(None) is None
    dep["metadata"]["annotations"][crd.BUILD_SPEC_ANNOTATION] = "{not json"
    assert served_engine(dep) is None


def test_owner_name_only_follows_an_orpheustts_owner() -> None:
    body = make_body()
    job = render.render_job(body, {**engine_identity.build_spec(body["spec"], OperatorConfig())}, "h", 1)
    assert owner_name(job) == "voice"
    job["metadata"]["ownerReferences"][0]["apiVersion"] = "other.example/v1"
    assert owner_name(job) is None
    assert owner_name({"metadata": {}}) is None


def _job(engine_hash: str, attempt: int) -> dict:
    labels = {crd.HASH_LABEL: engine_hash, crd.ATTEMPT_LABEL: str(attempt)}
    return {"metadata": {"name": f"v-build-{engine_hash}-{attempt}", "labels": labels}}


def test_the_deployment_keeps_its_engine_until_the_new_one_is_built() -> None:
    before = ServedEngine("old", {"repo": "a"})
    new_build = {"repo": "b"}
    building = buildstate.building("new", 1, "v-build-new-1")
    assert engine_to_serve(building, new_build, before) == before
    assert engine_to_serve(building, new_build, None) is None  # nothing to serve before the first build
    failed = buildstate.BuildState("new", buildstate.FAILED, 2, "v-build-new-2", "BuildFailed", "x")
    assert engine_to_serve(failed, new_build, before) == before
    built = buildstate.BuildState("new", buildstate.SUCCEEDED, 1, "v-build-new-1")
    assert engine_to_serve(built, new_build, before) == ServedEngine("new", new_build)


def test_the_served_engines_build_job_is_kept_while_a_new_engine_builds() -> None:
    jobs = [_job("old", 1), _job("old", 3), _job("new", 1), _job("new", 2)]
    state = buildstate.building("new", 2, "v-build-new-2")
    assert attempts_to_keep(jobs, state, ServedEngine("old", {})) == {"new": 2, "old": 3}
    assert attempts_to_keep(jobs, state, ServedEngine("new", {})) == {"new": 2}
    assert attempts_to_keep(jobs, state, None) == {"new": 2}
    # A served engine whose Job is gone already (deleted by hand): nothing of it to keep, nothing to delete.
    assert attempts_to_keep(jobs, state, ServedEngine("gone", {})) == {"new": 2, "gone": 0}
    stale = buildstate.stale_jobs(jobs, attempts_to_keep(jobs, state, ServedEngine("old", {})))
    assert [j["metadata"]["name"] for j in stale] == ["v-build-old-1", "v-build-new-1"]
