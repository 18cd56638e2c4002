"""The embedded Ray of `gauntlet serve`: every listener of its process tree on loopback, Ray's token auth
on (no job without the token, on any listener), and the token file private."""

from __future__ import annotations

import ipaddress
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from gauntlet.runtime.ray_session import (
    AUTH_MODE_ENV,
    AUTH_TOKEN_ENV,
    AUTH_TOKEN_PATH_ENV,
    DEFAULT_TOKEN_FILE,
    TOKEN_FILE_MODE,
    enable_token_auth,
    ensure_private_token,
)

JOB_PATHS = ("/api/jobs/", "/api/job_agent/jobs/")  # Ray's job API: the dashboard head's and the agent's
START_TIMEOUT_S = 180  # a cold embedded Ray plus Serve on 2 busy cores
MARKER_WAIT_S = 5  # how long an unauthenticated job is given to show up before we say it did not run
JOB_RUN_TIMEOUT_S = 120  # an authenticated job: a supervisor actor starts, then runs `touch`


@dataclass(frozen=True)
class ServeTree:
    proc: subprocess.Popen  # the `gauntlet serve` process, root of the tree
    home: Path  # its private HOME: Ray's default token file lives under it
    http_port: int  # Serve's HTTP proxy
    grpc_port: int  # Serve's gRPC proxy
    log: Path  # the process's stdout and stderr


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _listeners(root: psutil.Process) -> list[tuple[str, int, str]]:
    """(address, port, "pid command") of every TCP socket in LISTEN state in the process tree."""
    found = []
    for proc in _tree(root):
        try:
            conns = proc.net_connections(kind="tcp")
            command = " ".join(proc.cmdline())[:100]
        except psutil.Error:  # a worker that exited while we looked
            continue
        found += [(c.laddr.ip, c.laddr.port, f"{proc.pid} {command}")
                  for c in conns if c.status == psutil.CONN_LISTEN]
    return sorted(found)


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is a dual-stack socket bound to loopback
    return (mapped or addr).is_loopback


def _stop(tree: ServeTree) -> None:
    """SIGINT (Gauntlet's clean shutdown), then kill whatever of the tree is still there."""
    procs = _tree(psutil.Process(tree.proc.pid))
    tree.proc.send_signal(signal.SIGINT)
    try:
        tree.proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


@pytest.fixture(scope="module")
def serve_tree(tmp_path_factory: pytest.TempPathFactory, free_ports) -> Iterator[ServeTree]:
    """A real `gauntlet serve` with its own embedded Ray, a private HOME and none of the test process's Ray
    settings (no RAY_ADDRESS, no token or auth mode, no loopback switch): what a user's shell gives it."""
    from ray._private.ray_constants import ENABLE_RAY_CLUSTERS_ENV_VAR

    home = tmp_path_factory.mktemp("serve_home")
    http_port, grpc_port = free_ports(2)
    dropped = {"RAY_ADDRESS", AUTH_MODE_ENV, AUTH_TOKEN_ENV, AUTH_TOKEN_PATH_ENV, ENABLE_RAY_CLUSTERS_ENV_VAR}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["HOME"] = str(home)
    log = home / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gauntlet.platform.cli", "serve", "--policy", "random",
             "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    tree = ServeTree(proc, home, http_port, grpc_port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gauntlet serve did not come up: {log.read_text()[-3000:]}")
            time.sleep(1)
        yield tree
    finally:
        _stop(tree)


def _assert_all_on_loopback(tree: ServeTree) -> list[tuple[str, int, str]]:
    listeners = _listeners(psutil.Process(tree.proc.pid))
    listing = "\n".join(f"{ip}:{port}  {who}" for ip, port, who in listeners)
    exposed = [item for item in listeners if not _is_loopback(item[0])]
    assert not exposed, f"{len(exposed)} of {len(listeners)} listeners are not on loopback:\n{listing}"
    return listeners


def test_every_listener_of_a_served_tree_is_on_loopback(serve_tree: ServeTree) -> None:
    listeners = _assert_all_on_loopback(serve_tree)
    ports = {port for _, port, _ in listeners}
    listing = "\n".join(f"{ip}:{port}  {who}" for ip, port, who in listeners)
    # The listing sees the whole tree: Serve's two proxies, the GCS and the raylet are all in it.
    assert {serve_tree.http_port, serve_tree.grpc_port} <= ports, listing
    assert any("gcs_server" in who for *_, who in listeners), listing
    assert any("raylet" in who for *_, who in listeners), listing


def _post_job(port: int, path: str, marker: Path, token: str | None = None) -> int | str:
    """POSTs a job whose entrypoint touches `marker`; the HTTP status, or the error of a non-HTTP port."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return httpx.post(f"http://127.0.0.1:{port}{path}", json={"entrypoint": f"touch {marker}"},
                          headers=headers, timeout=3).status_code
    except httpx.HTTPError as err:
        return type(err).__name__


def _gcs_answers(port: int, token: str | None) -> str:
    """A raw GCS gRPC call, with or without Ray's token: "ok" or the gRPC status code's name."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), metadata=metadata, timeout=10)
        except grpc.RpcError as err:
            return err.code().name
    return "ok"


def test_no_unauthenticated_job_runs_on_any_listener(serve_tree: ServeTree) -> None:
    token_file = serve_tree.home / DEFAULT_TOKEN_FILE
    assert stat.S_IMODE(token_file.stat().st_mode) == TOKEN_FILE_MODE
    token = token_file.read_text().strip()
    listeners = _listeners(psutil.Process(serve_tree.proc.pid))
    marker = serve_tree.home / "unauthenticated-job-ran"
    answers = {(port, path): _post_job(port, path, marker) for _, port, _ in listeners for path in JOB_PATHS}
    accepted = {key: status for key, status in answers.items() if isinstance(status, int) and status < 300}
    assert not accepted, f"job submissions accepted without a token: {accepted}"
    time.sleep(MARKER_WAIT_S)
    assert not marker.exists(), f"an unauthenticated job ran; answers: {answers}"

    # The refusals are the token's doing: the GCS refuses a call without it and answers one with it.
    gcs_ports = [port for _, port, who in listeners if "gcs_server" in who]
    assert gcs_ports, listeners
    assert [_gcs_answers(port, None) for port in gcs_ports] == ["UNAUTHENTICATED"] * len(gcs_ports)
    assert [_gcs_answers(port, token) for port in gcs_ports] == ["ok"] * len(gcs_ports)

    # The dashboard agent's job API binds a fixed port (52365) that another Ray on this machine may
    # hold; where this tree holds it, it refused the job above, and it runs the same job with the token.
    agent_ports = [port for _, port, who in listeners
                   if "DashboardAgent" in who and answers[port, "/api/job_agent/jobs/"] == 401]
    authorized = serve_tree.home / "authorized-job-ran"
    for port in agent_ports:
        assert _post_job(port, "/api/job_agent/jobs/", authorized, token) == 200
        deadline = time.monotonic() + JOB_RUN_TIMEOUT_S
        while not authorized.exists() and time.monotonic() < deadline:
            time.sleep(1)
        assert authorized.exists(), f"the authorized job did not run: {serve_tree.log.read_text()[-2000:]}"
    assert not marker.exists()
    _assert_all_on_loopback(serve_tree)  # the workers the job attempts started listen on loopback too


def test_a_token_file_others_can_read_is_made_private(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "auth_token"
    path.write_text("a" * 64)
    path.chmod(0o644)  # what Ray itself writes under a usual umask
    ensure_private_token(path, "test")
    assert stat.S_IMODE(path.stat().st_mode) == TOKEN_FILE_MODE
    assert path.read_text() == "a" * 64  # the same token: clients that hold it keep working
    err = capsys.readouterr().err
    assert f"{path}: Ray's token file was readable by others (mode 0644), now 0600" in err
    assert err.count("\n") == 1

    ensure_private_token(path, "test")  # already private: left alone, nothing said
    assert capsys.readouterr().err == ""


def test_a_missing_token_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "new_dir" / "auth_token"
    ensure_private_token(path, "test")
    assert stat.S_IMODE(path.stat().st_mode) == TOKEN_FILE_MODE
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # Ray's generator: 256 random bits, hex
    assert [p.name for p in path.parent.iterdir()] == ["auth_token"]  # the staged copy is gone
    ensure_private_token(path, "test")
    assert path.read_text() == token  # an existing token is kept: running clusters still accept it


def test_a_staged_token_file_left_by_a_killed_start_does_not_block_the_next(tmp_path: Path) -> None:
    """A start SIGKILLed between staging and linking leaves its staged file behind; a later process
    (even one given the same pid) still creates the token."""
    path = tmp_path / "auth_token"
    stale = [tmp_path / f".auth_token.{os.getpid()}.new", tmp_path / ".auth_token.stale.new"]
    for leftover in stale:
        leftover.write_text("half a tok")
    ensure_private_token(path, "test")
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0 and stat.S_IMODE(path.stat().st_mode) == TOKEN_FILE_MODE
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["auth_token", *(p.name for p in stale)])


def test_an_embedded_ray_refuses_to_run_without_token_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUTH_MODE_ENV, "disabled")
    with pytest.raises(ValueError, match=f"{AUTH_MODE_ENV}=disabled"):
        enable_token_auth("test")


def test_the_cluster_config_runs_every_node_with_token_auth_on_the_documented_ports() -> None:
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = (Path(__file__).resolve().parents[2] / "ray_cluster.yaml").read_text()
    config = yaml.safe_load(text)
    validate_config(prepare_config(config))  # what `ray up` accepts
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # one token for every node
    assert any("chmod 600 ~/.ray/auth_token" in c for c in config["setup_commands"])
    starts = {role: next(c for c in config[f"{role}_start_ray_commands"] if "bin/ray start" in c)
              for role in ("head", "worker")}
    pinned = ("--node-manager-port=6380", "--object-manager-port=6381", "--runtime-env-agent-port=6382",
              "--dashboard-agent-grpc-port=6383", "--dashboard-agent-listen-port=52365",
              "--metrics-export-port=6384", "--min-worker-port=10002", "--max-worker-port=10999")
    header = text.split("cluster_name:")[0]  # the comments that list the ports for a firewall
    assert all(flag.split("=")[1] in header for flag in pinned)
    for role, command in starts.items():
        assert "RAY_AUTH_MODE=token ~/gauntlet/.venv/bin/ray start" in command, role
        assert all(flag in command for flag in pinned), (role, command)
    assert "--dashboard-host=127.0.0.1" in starts["head"] and "--port=6379" in starts["head"]
