"""The serve config file is valid for `serve run`/`serve deploy`, and `gauntlet serve` checks its flags."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gauntlet.deployments.app import SERVE_RUNTIME_ENV_FILE, app_from_args
from gauntlet.deployments.grpc_bind import runtime_env
from gauntlet.deployments.serve_cli import ServeCLIConfig, serving_specs
from gauntlet.runtime.config_args import parse_config
from gauntlet.runtime.registry import UnknownNameError

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
    with pytest.raises(UnknownNameError, match="unknown policy 'gpt'"):
        serving_specs(parse_config(ServeCLIConfig, ["--policy", "gpt"], "p", "d"))


def _is_loopback(ip: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(ip)
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def _serve_run(gcs_address: str, config: Path, *extra: str) -> None:
    serve_cli = Path(sys.executable).with_name("serve")  # Ray's own `serve` command, as a user runs it
    proc = subprocess.run([str(serve_cli), "run", "--non-blocking", "--address", gcs_address, *extra, str(config)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _app_status(name: str, until: set[str]) -> object:
    from ray import serve

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = serve.status().applications.get(name)
        if status is not None and status.status in until:
            return status
        time.sleep(1)
    pytest.fail(f"{name} did not reach {until}: {serve.status().applications.get(name)}")


@pytest.mark.slow
def test_serve_run_of_the_config_refuses_without_gauntlets_runtime_env_and_applies_it_with(
        ray_session, tmp_path) -> None:
    """`serve run` of (a copy of) the shipped config, with its policies made light: without the
    runtime_env file the build fails saying which file to pass; with it the gRPC proxy listens on
    127.0.0.1 only, refuses a message over 16 MiB, and the key read from api_key_file guards both
    Gauntlet's routes and Serve's own."""
    import grpc
    import httpx
    import numpy as np
    import psutil
    from ray import serve

    from gauntlet.deployments.proto import policy_pb2, policy_pb2_grpc

    http_port, grpc_port = 18631, 19631
    (tmp_path / "key").write_text("yaml-key\n")
    raw = yaml.safe_load(CONFIG.read_text())
    raw["http_options"]["port"], raw["grpc_options"]["port"] = http_port, grpc_port
    app = raw["applications"][0]
    app["args"] = {"policies": ["random"], "max_batch_size": 4, "api_key_file": str(tmp_path / "key")}
    app.pop("deployments")
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(raw))
    gcs = ray_session.get_runtime_context().gcs_address
    base = f"http://127.0.0.1:{http_port}"
    serve.shutdown()  # `serve run` starts Serve under its own job, as a user's does
    try:
        _serve_run(gcs, config)
        failed = _app_status(app["name"], {"DEPLOY_FAILED", "RUNNING"})
        assert failed.status == "DEPLOY_FAILED" and f"--runtime-env {SERVE_RUNTIME_ENV_FILE}" in failed.message
        serve.shutdown()

        _serve_run(gcs, config, "--runtime-env", str(SERVE_RUNTIME_ENV_FILE))
        assert _app_status(app["name"], {"DEPLOY_FAILED", "RUNNING"}).status == "RUNNING"
        auth = {"Authorization": "Api-Key yaml-key"}
        obs = {"observation/state": [0.0] * 8}
        assert httpx.post(f"{base}/v1/policies/random/infer", json=obs, timeout=30).status_code == 401
        assert httpx.post(f"{base}/v1/policies/random/infer", json=obs, headers=auth, timeout=30).status_code == 200
        assert httpx.get(f"{base}/-/routes", timeout=30).status_code == 401
        listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                     if c.laddr and c.laddr.port == grpc_port and c.status == psutil.CONN_LISTEN}
        assert listening and all(_is_loopback(ip) for ip in listening), listening
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.max_send_message_length", 2**26)])
        big = np.zeros(17 * 2**20 // 4, np.float32)
        tensor = policy_pb2.Tensor(dtype=big.dtype.str, shape=list(big.shape), data=big.tobytes())
        with pytest.raises(grpc.RpcError) as refused:
            policy_pb2_grpc.PolicyServiceStub(channel).Infer(
                policy_pb2.InferRequest(policy="random", observation={"observation/state": tensor}),
                metadata=(("application", app["name"]), ("authorization", "Api-Key yaml-key")), timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        channel.close()
    finally:
        serve.shutdown()


def test_the_config_builder_refuses_a_key_written_in_the_config(ray_session) -> None:
    """The driver of this test session runs with Gauntlet's runtime_env, so only the key is wrong."""
    with pytest.raises(ValueError, match="api_key_file"):
        app_from_args({"policies": ["random"], "api_key": "in-the-open"})
