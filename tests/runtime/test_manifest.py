import json
import pathlib

import pytest

from orpheus_tts.build import manifest
from orpheus_tts.build.manifest import Environment, Manifest, ManifestError


def _trtllm_manifest(**kw) -> Manifest:
    values = dict(
        backend="trtllm",
        model_repo="canopylabs/orpheus-3b-0.1-ft",
        requested_revision="main",
        resolved_commit="a" * 40,
        weight_quantization="int4_awq",
        kv_cache_dtype="int8",
        max_batch_size=20,
        max_input_len=48,
        max_output_len=1024,
        tools={"orpheus-tts": "0.1.0", "torch": "2.9.1", "tensorrt_llm": "1.2.1", "tensorrt": "10.14.1"},
        gpu_agnostic=False,
        gpu_name="NVIDIA H100 80GB HBM3",
        gpu_arch="sm_90",
    )
    values.update(kw)
    return Manifest(**values)


H100 = Environment("NVIDIA H100 80GB HBM3", "sm_90", {"tensorrt_llm": "1.2.1", "tensorrt": "10.14.1"})


def _write_engine_dir(root: pathlib.Path, m: Manifest) -> pathlib.Path:
    (root / "engine").mkdir(parents=True)
    (root / "engine" / "rank0.engine").write_bytes(b"x" * 100)
    (root / "model").mkdir()
    (root / "model" / "tokenizer.json").write_text("{}")
    m.files = manifest.list_files(root)
    manifest.write(m, root)
    return root


def test_json_round_trip_keeps_every_field():
    files = [manifest.FileEntry("engine/rank0.engine", 5, "ab")]
    m = _trtllm_manifest(files=files, built_at="2025-01-01T00:00:00Z")
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert json.loads(m.to_json())["gpu_arch"] == "sm_90"


def test_unknown_keys_are_ignored_but_bad_json_is_an_error(tmp_path):
    data = json.loads(_trtllm_manifest().to_json())
    data["future_field"] = 1
    assert Manifest.from_json(json.dumps(data)).backend == "trtllm"
    tmp_path.joinpath("manifest.json").write_text("[1, 2]")
    with pytest.raises(ManifestError, match="not a valid manifest"):
        manifest.read(tmp_path)


def test_compatible_environment_has_no_problems():
    assert manifest.check_compatible(_trtllm_manifest(), H100) == []


def test_wrong_gpu_arch_names_both_gpus():
    a100 = Environment("NVIDIA A100-SXM4-80GB", "sm_80", H100.tools)
    [problem] = manifest.check_compatible(_trtllm_manifest(), a100)
    assert "sm_90 (NVIDIA H100 80GB HBM3)" in problem and "sm_80 (NVIDIA A100-SXM4-80GB)" in problem


def test_no_gpu_for_gpu_bound_engine():
    [problem] = manifest.check_compatible(_trtllm_manifest(), Environment(tools=H100.tools))
    assert "no GPU is visible" in problem


def test_different_tensorrt_llm_and_tensorrt_versions():
    env = Environment("H100", "sm_90", {"tensorrt_llm": "1.2.0", "tensorrt": "10.13.0"})
    problems = manifest.check_compatible(_trtllm_manifest(), env)
    assert len(problems) == 2
    assert "tensorrt_llm 1.2.1" in problems[0] and "tensorrt_llm 1.2.0" in problems[0]
    assert "tensorrt 10.14.1" in problems[1]


def test_tensorrt_llm_not_installed():
    problems = manifest.check_compatible(_trtllm_manifest(), Environment("H100", "sm_90", {}))
    assert any("tensorrt_llm is not installed" in p for p in problems)


def test_unknown_format_version_stops_all_other_checks():
    [problem] = manifest.check_compatible(_trtllm_manifest(format_version=99), Environment())
    assert "format version 99" in problem


def test_backend_mismatch_and_unknown_backend():
    [problem] = manifest.check_compatible(_trtllm_manifest(), H100, backend="torch")
    assert "built for backend 'trtllm'" in problem and "'torch'" in problem
    [problem] = manifest.check_compatible(_trtllm_manifest(backend="vllm", gpu_agnostic=True), H100)
    assert "unknown backend 'vllm'" in problem


def test_torch_engine_is_gpu_agnostic_and_ignores_torch_version():
    m = _trtllm_manifest(
        backend="torch",
        weight_quantization="int8",
        kv_cache_dtype="auto",
        gpu_agnostic=True,
        gpu_arch=None,
        gpu_name=None,
        tools={"torch": "2.0.0"},
    )
    assert manifest.check_compatible(m, Environment(tools={"torch": "2.11.0"})) == []


def test_build_identity_ignores_results_but_not_inputs():
    a = _trtllm_manifest(built_at="t1", resolved_commit="a" * 40)
    b = _trtllm_manifest(built_at="t2", resolved_commit="b" * 40, files=[manifest.FileEntry("x", 1, "y")])
    assert manifest.build_identity(a) == manifest.build_identity(b)
    assert manifest.build_identity(a) != manifest.build_identity(_trtllm_manifest(max_batch_size=32))
    assert manifest.build_identity(a) != manifest.build_identity(_trtllm_manifest(gpu_arch="sm_80"))
    tools = dict(a.tools, tensorrt_llm="1.2.0")
    assert manifest.build_identity(a) != manifest.build_identity(_trtllm_manifest(tools=tools))
    # torch's version does not bind a trtllm engine (TensorRT does), so it is not an input
    other_torch = _trtllm_manifest(tools=dict(a.tools, torch="9"))
    assert manifest.build_identity(a) == manifest.build_identity(other_torch)


def test_load_for_serving_accepts_complete_compatible_dir(tmp_path):
    root = _write_engine_dir(tmp_path / "e", _trtllm_manifest())
    m = manifest.load_for_serving(root, env=H100)
    assert {f.path for f in m.files} == {"engine/rank0.engine", "model/tokenizer.json"}
    assert manifest.load_for_serving(str(root), env=H100, verify_hashes=True).backend == "trtllm"


def test_load_for_serving_refuses_missing_dir_and_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        manifest.load_for_serving(tmp_path / "nope", env=H100)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "engine").mkdir()
    with pytest.raises(ManifestError, match="build did not finish"):
        manifest.load_for_serving(tmp_path / "half", env=H100)


def test_load_for_serving_refuses_missing_or_truncated_files(tmp_path):
    root = _write_engine_dir(tmp_path / "e", _trtllm_manifest())
    (root / "engine" / "rank0.engine").write_bytes(b"x" * 10)
    with pytest.raises(ManifestError, match=r"rank0.engine has 10 bytes, manifest says 100"):
        manifest.load_for_serving(root, env=H100)
    (root / "engine" / "rank0.engine").unlink()
    with pytest.raises(ManifestError, match=r"rank0\.engine is missing"):
        manifest.load_for_serving(root, env=H100)


def test_load_for_serving_detects_same_size_corruption_only_when_hashing(tmp_path):
    root = _write_engine_dir(tmp_path / "e", _trtllm_manifest())
    (root / "engine" / "rank0.engine").write_bytes(b"y" * 100)
    manifest.load_for_serving(root, env=H100)
    with pytest.raises(ManifestError, match="sha256"):
        manifest.load_for_serving(root, env=H100, verify_hashes=True)


def test_load_for_serving_refuses_incompatible_environment_readably(tmp_path):
    root = _write_engine_dir(tmp_path / "e", _trtllm_manifest())
    a100 = Environment("NVIDIA A100-SXM4-80GB", "sm_80", {"tensorrt_llm": "1.2.0", "tensorrt": "10.14.1"})
    with pytest.raises(ManifestError) as e:
        manifest.load_for_serving(root, env=a100)
    msg = str(e.value)
    assert "cannot be served here" in msg and "sm_80" in msg and "tensorrt_llm 1.2.0" in msg


def test_probe_environment_for_torch_does_not_touch_the_gpu(monkeypatch):
    monkeypatch.setattr(manifest, "probe_gpu", lambda: pytest.fail("probed the GPU"))
    env = manifest.probe_environment("torch")
    assert env.gpu_arch is None and "torch" in env.tools and "tensorrt_llm" not in env.tools


def test_probe_environment_for_trtllm_reports_missing_tensorrt_llm(monkeypatch):
    monkeypatch.setattr(manifest, "probe_gpu", lambda: ("Fake GPU", "sm_89"))
    monkeypatch.setattr(manifest, "_version", lambda dist: None if dist == "tensorrt_llm" else "1.0")
    monkeypatch.setattr(manifest, "_tensorrt_version", lambda: None)
    env = manifest.probe_environment("trtllm")
    assert env.gpu_arch == "sm_89" and "tensorrt_llm" not in env.tools
