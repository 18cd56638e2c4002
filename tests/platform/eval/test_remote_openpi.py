"""`gauntlet eval --policy remote=ws://…` against a server written here from openpi's documented protocol.

The server behaves like openpi's `WebsocketPolicyServer`: on connect it sends its metadata (`{}` unless
configured), then answers each msgpack-numpy observation with `{"actions": (H, D)}`, one request at a
time, and reports a failure as a text frame before closing. It records what it receives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from gauntlet.keys import EPISODE_ID_KEY, IMAGE_KEY, MAX_MESSAGE_BYTES, PROMPT_KEY, STATE_KEY, WRIST_IMAGE_KEY
from gauntlet.platform.eval.driver import main
from gauntlet.platform.eval.openpi import resize_with_pad
from gauntlet.platform.eval.status import EvalStatus
from gauntlet.policies import msgpack_numpy

LIFT_PROMPT = "pick up the red cube"
Answer = Callable[[int, dict[str, Any]], Any]  # (1-based request number, observation) -> reply


def chunk(h: int = 10, d: int = 7) -> Answer:
    return lambda n, obs: {"actions": np.zeros((h, d), dtype=np.float32)}


class Raw(bytes):
    """Bytes the server writes to its socket as they are, past the WebSocket library (a forged frame)."""


def huge_frame_header(length: int = 2**40) -> Raw:
    """A binary frame that announces `length` bytes of payload and carries 4 of them: a client without
    a size limit would wait for (or buffer) the rest."""
    return Raw(bytes([0x82, 127]) + length.to_bytes(8, "big") + b"\x00" * 4)


class OpenpiServer:
    """openpi's policy-server protocol on 127.0.0.1, a free port; records every request."""

    def __init__(self, answer: Answer, metadata: dict[str, Any] | Raw | None = None):
        from websockets.sync.server import serve

        self.answer = answer
        self.metadata = metadata or {}
        self.requests: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        self._lock = threading.Lock()  # one request at a time, as openpi's server runs its policy
        self._server = serve(self._handle, "127.0.0.1", 0, compression=None, max_size=None)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _handle(self, ws: Any) -> None:
        self.auth_headers.append(ws.request.headers.get("Authorization"))
        if isinstance(self.metadata, Raw):
            ws.socket.sendall(self.metadata)
            return
        ws.send(msgpack_numpy.packb(self.metadata))
        for message in ws:
            with self._lock:
                obs = msgpack_numpy.unpackb(message)
                self.requests.append(obs)
                reply = self.answer(len(self.requests), obs)
            if isinstance(reply, Raw):
                ws.socket.sendall(reply)
                continue
            if isinstance(reply, str):  # openpi: the traceback as text, then close 1011
                ws.send(reply)
                ws.close(1011, "internal error")
                return
            ws.send(msgpack_numpy.packb(reply))

    def close(self) -> None:
        self._server.shutdown()


@pytest.fixture
def servers() -> Iterator[Callable[..., OpenpiServer]]:
    started: list[OpenpiServer] = []

    def start(answer: Answer, metadata: dict[str, Any] | Raw | None = None) -> OpenpiServer:
        started.append(OpenpiServer(answer, metadata))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture(scope="module")
def scene_db(tmp_path_factory: pytest.TempPathFactory, generate_scenes) -> Path:
    return generate_scenes(tmp_path_factory.mktemp("remote") / "scenes", variants="D0,D1",
                           error_types="object_pose_perturb")


def _eval(scene_db: Path, run: Path, *policies: str, extra: tuple[str, ...] = ()) -> int:
    return main(["--scenes", str(scene_db), "--out", str(run), "--policy", *policies, "--limit", "2",
                 "--actors", "1", *extra])


def test_openpi_server_gets_full_observation_replans_and_gets_the_key(
        ray_session, scene_db: Path, tmp_path: Path, servers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spec-less server (A) gets openpi's LIBERO observation at 224 px and is replanned every 4
    steps; a server declaring its spec (B) gets exactly that spec and its whole chunk is executed."""
    monkeypatch.setenv("GAUNTLET_REMOTE_API_KEY", "s3cret-key")
    a = servers(chunk(h=10))
    b = servers(chunk(h=5), metadata={"observation_spec": {STATE_KEY: {"shape": [8]},
                                                           IMAGE_KEY: {"shape": [64, 64, 3], "dtype": "uint8"}},
                                      "action_dim": 7, "chunk_len": 5})
    run = tmp_path / "run"
    code = _eval(scene_db, run, f"remote={a.url}", f"remote={b.url}",
                 extra=("--horizon", "12", "--replan-steps", f"remote:{a.url}=4"))
    assert code == 0
    frame = pd.read_parquet(run / "results.parquet").set_index("policy")
    assert not frame["skipped"].any(), frame["skip_reason"].tolist()
    # A: 12 steps, 4 actions of each 10-action chunk -> 3 requests per episode (+1 probe)
    assert frame.loc[f"remote:{a.url}", "replan_steps"].tolist() == [4, 4]
    assert frame.loc[f"remote:{a.url}", "inference_calls"].tolist() == [3, 3]
    assert len(a.requests) == 1 + 2 * 3
    for obs in a.requests:
        assert set(obs) == {IMAGE_KEY, WRIST_IMAGE_KEY, STATE_KEY, PROMPT_KEY}
        assert obs[IMAGE_KEY].shape == obs[WRIST_IMAGE_KEY].shape == (224, 224, 3)
        assert obs[IMAGE_KEY].dtype == obs[WRIST_IMAGE_KEY].dtype == np.uint8
        assert obs[STATE_KEY].shape == (8,) and obs[STATE_KEY].dtype == np.float32
        assert obs[PROMPT_KEY] == LIFT_PROMPT
    assert all(obs[IMAGE_KEY].any() and obs[STATE_KEY].any() for obs in a.requests[1:])  # real renders/state
    # B: its declared spec (64 px, no wrist camera), its 5-action chunks used whole -> 3 requests
    assert frame.loc[f"remote:{b.url}", "replan_steps"].tolist() == [5, 5]
    assert len(b.requests) == 1 + 2 * 3
    for obs in b.requests:
        assert set(obs) == {IMAGE_KEY, STATE_KEY, PROMPT_KEY, EPISODE_ID_KEY}
        assert obs[IMAGE_KEY].shape == (64, 64, 3)
    # The key reached both servers on every connection and is in no file of the run.
    assert a.auth_headers and set(a.auth_headers) == set(b.auth_headers) == {"Api-Key s3cret-key"}
    assert all("s3cret-key" not in p.read_text(errors="replace") for p in run.rglob("*.json"))
    assert "GAUNTLET_REMOTE_API_KEY" in (run / "run.json").read_text()  # the variable's name only


@pytest.mark.parametrize(("answer", "needle"), [
    (lambda n, obs: {"result": np.zeros((10, 7))}, "answered without 'actions': it sent {result: float64[10, 7]}"),
    (chunk(h=10, d=6), "sent actions of shape [10, 6]; expected (H, 7)"),
    (lambda n, obs: "Traceback: KeyError: 'observation/exterior_image_1_left'", "KeyError"),
])
def test_a_garbage_first_answer_stops_the_run_before_results(scene_db: Path, tmp_path: Path, servers, answer: Answer,
                                                              needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    server = servers(answer)
    run = tmp_path / "run"
    assert _eval(scene_db, run, f"remote={server.url}", extra=("--horizon", "8")) == 2
    err = capsys.readouterr().err
    assert server.url in err and needle in err, err
    assert len(server.requests) == 1 and not (run / "results").exists()


def test_an_unreachable_server_is_a_clear_error_within_the_retry_budget(scene_db: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    assert _eval(scene_db, tmp_path / "run", f"remote=ws://127.0.0.1:{port}", extra=("--remote-connect-s", "2")) == 2
    assert time.monotonic() - start < 60  # scene pre-flight + a 2 s budget, never a hang
    err = capsys.readouterr().err
    assert f"ws://127.0.0.1:{port}: unreachable" in err and "in 2 s" in err, err
    assert not (tmp_path / "run" / "results").exists()


def test_a_server_that_turns_bad_mid_run_makes_eval_exit_nonzero_with_reasons(
        ray_session, scene_db: Path, tmp_path: Path, servers, capsys: pytest.CaptureFixture[str]) -> None:
    """The probe passes, every later answer has the wrong shape: that policy's episodes are all skipped
    with the reason, the other policy's results stand, and the command exits 1 with a summary."""
    bad = servers(lambda n, obs: chunk()(n, obs) if n == 1 else {"actions": np.zeros((10, 3))})
    good = servers(chunk(h=4))
    run = tmp_path / "run"
    assert _eval(scene_db, run, f"remote={bad.url}", f"remote={good.url}", extra=("--horizon", "4")) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM remote:{bad.url}: every one of its 2 episodes was skipped (2 RemoteAnswerError)" in out
    status = EvalStatus.read(run)
    assert len(status.problems) == 1
    assert status.policies[f"remote:{bad.url}"]["skip_reasons"] == {"RemoteAnswerError": 2}
    assert status.policies[f"remote:{good.url}"]["ran"] == 2
    frame = pd.read_parquet(run / "results.parquet")
    assert frame.loc[frame["skipped"], "skip_reason"].str.contains("shape \\[10, 3\\]").all()


IMAGE_FIELD = f"metadata.observation_spec[{IMAGE_KEY!r}]"


@pytest.mark.parametrize(("metadata", "answer", "needle"), [
    ({"observation_spec": {IMAGE_KEY: {"shape": [100_000, 100_000, 3], "dtype": "uint8"}}}, chunk(),
     f"{IMAGE_FIELD}.shape: expected at most 4 whole numbers in [-1, 4096]"),
    ({"observation_spec": {f"cam{i}": {"shape": [4096, 4096, 3], "dtype": "uint8"} for i in range(3)}}, chunk(),
     "metadata.observation_spec: its fields hold 150994944 elements in all; the limit is 134217728"),
    ({"observation_spec": {IMAGE_KEY: {"shape": [64, 64, 3], "dtype": "V1000000000"}}}, chunk(),
     f"{IMAGE_FIELD}.dtype"),
    ({"observation_spec": {IMAGE_KEY: {"shape": [64, 64, 3], "dtype": ","}}}, chunk(),  # np.dtype: SyntaxError
     f"{IMAGE_FIELD}.dtype"),
    ({"action_dim": "seven"}, chunk(), "metadata.action_dim: expected a whole number in [0, 4096], got 'seven'"),
    ({"chunk_len": 10**12}, chunk(), "metadata.chunk_len"),
    (huge_frame_header(), chunk(), f"over the client's limit of {MAX_MESSAGE_BYTES} bytes (max_reply_bytes)"),
    ({}, lambda n, obs: huge_frame_header(), f"over the client's limit of {MAX_MESSAGE_BYTES} bytes (max_reply_bytes)"),
])
def test_a_server_past_the_clients_limits_is_refused_naming_the_field(
        scene_db: Path, tmp_path: Path, servers, metadata: Any, answer: Answer, needle: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """What a server declares is checked before anything is sized from it, and a message past the
    frame limit is refused from its header: exit 2 at the probe, naming the field; nothing allocated."""
    import resource

    server = servers(answer, metadata)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    # A 30 s retry budget: a limit mistaken for a lost connection would be retried, not answered at once.
    assert _eval(scene_db, tmp_path / "run", f"remote={server.url}", extra=("--remote-connect-s", "30")) == 2
    err = capsys.readouterr().err
    assert server.url in err and needle in err, err
    assert len(server.auth_headers) == 1  # one connection: refused, never retried
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) < 2**20  # under 1 GiB more
    assert not (tmp_path / "run" / "results").exists()


@pytest.mark.parametrize(("flags", "needle"), [
    (("--replan-steps", "vla=4"), "no policy 'vla'"),
    (("--replan-steps", "0"), "K must be >= 1"),
    (("--replan-steps", "remote:ws://127.0.0.1:9=x"), "K a whole number"),
])
def test_bad_replan_steps_are_refused_before_any_work(scene_db: Path, tmp_path: Path, flags: tuple[str, ...],
                                                      needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _eval(scene_db, tmp_path / "run", "remote=ws://127.0.0.1:9", extra=flags) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resize_with_pad_keeps_the_aspect_ratio_as_openpi_does() -> None:
    image = np.full((50, 100, 3), 200, dtype=np.uint8)  # wide: scaled to 224 x 112, black bands above/below
    out = resize_with_pad(image, 224, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert (out[:56] == 0).all() and (out[-56:] == 0).all() and (out[56:168] == 200).all()
    assert resize_with_pad(image, 50, 100) is image  # already the size: untouched
