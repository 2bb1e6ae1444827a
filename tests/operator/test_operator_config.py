from __future__ import annotations

import pytest

from orpheus_operator import config
from orpheus_operator.main import parse_args


def test_env_is_read() -> None:
    cfg = config.from_env(
        {
            "ORPHEUS_OPERATOR_RUNTIME_IMAGE": "r:1",
            "ORPHEUS_OPERATOR_BUILD_IMAGE": "b:1",
            "ORPHEUS_OPERATOR_NAMESPACES": "a, b,,a",
            "ORPHEUS_OPERATOR_HEALTH_PORT": "9090",
            "ORPHEUS_OPERATOR_RESYNC_SECONDS": "2.5",
        }
    )
    assert (cfg.runtime_image, cfg.build_image, cfg.namespaces, cfg.health_port, cfg.resync_seconds) == (
        "r:1",
        "b:1",
        ("a", "b"),
        9090,
        2.5,
    )
    assert not cfg.clusterwide


def test_defaults_watch_all_namespaces() -> None:
    cfg = config.from_env({})
    assert cfg.clusterwide and cfg.build_image is None and cfg.health_port == 8080


def test_cli_overrides_env() -> None:
    env = {"ORPHEUS_OPERATOR_NAMESPACES": "a", "ORPHEUS_OPERATOR_LOG_LEVEL": "DEBUG"}
    cfg = config.from_args(parse_args(["-n", "x", "--namespace", "y,z", "--health-port", "1234"]), env)
    assert cfg.namespaces == ("x", "y", "z") and cfg.health_port == 1234 and cfg.log_level == "DEBUG"
    assert config.from_args(parse_args(["--all-namespaces"]), env).clusterwide


@pytest.mark.parametrize(
    "env",
    [
        {"ORPHEUS_OPERATOR_HEALTH_PORT": "http"},
        {"ORPHEUS_OPERATOR_RESYNC_SECONDS": "0"},
        {"ORPHEUS_OPERATOR_RUNTIME_IMAGE": ""},
    ],
)
def test_bad_values_are_clear_errors(env: dict) -> None:
    with pytest.raises(config.ConfigError):
        config.from_env(env)


def test_entry_point_reports_bad_config_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from orpheus_operator.main import main

    assert main(["--health-port", "70000"]) == 2
    assert "health_port must be a TCP port" in capsys.readouterr().err
