"""The serve config file is valid for `serve run`/`serve deploy`, and `gauntlet serve` checks its flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gauntlet.deployments.app import SERVE_RUNTIME_ENV_FILE
from gauntlet.deployments.grpc_bind import runtime_env
from gauntlet.deployments.serve_cli import ServeCLIConfig, serving_specs
from gauntlet.policies.registry import UnknownPolicyError
from gauntlet.runtime.config_args import parse_config

CONFIG = Path(__file__).resolve().parents[2] / "gauntlet" / "deployments" / "serve_config.yaml"


def test_serve_config_matches_serves_schema_and_its_runtime_env_is_gauntlets() -> None:
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.http_options.host == "127.0.0.1"
    app = raw["applications"][0]
    assert app["import_path"] == "gauntlet.deployments.app:app_from_args"
    assert str(SERVE_RUNTIME_ENV_FILE.relative_to(CONFIG.parents[2])) in CONFIG.read_text()  # how to run it
    # The file `serve run --runtime-env` takes is exactly what `gauntlet serve` gives its own jobs.
    assert yaml.safe_load(SERVE_RUNTIME_ENV_FILE.read_text()) == runtime_env()


def test_serve_flags_are_checked() -> None:
    cfg = parse_config(ServeCLIConfig, ["--policy", "vla", "--policy", "random", "--max-batch-size", "8"], "p", "d")
    specs = serving_specs(cfg)
    assert [s.ref.name for s in specs] == ["vla", "random"]
    assert specs[0].max_ongoing_requests >= 2 * 8  # never Serve's silent default of 5
    with pytest.raises(SystemExit):
        parse_config(ServeCLIConfig, ["--policy", "vla", "--max-batch-size", "0"], "p", "d")
    with pytest.raises(UnknownPolicyError, match="unknown policy 'gpt'"):
        serving_specs(parse_config(ServeCLIConfig, ["--policy", "gpt"], "p", "d"))
