"""Shared builders for the data tests: small real datasets written with the real writer."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gauntlet.data.dataset_writer import DatasetWriter

LEROBOT_TASK_TIMEOUT_S = 900  # the first task of a session builds LeRobot's runtime_env (uv, cached)


def known_action(episode: int, frame: int) -> float:
    """The value every dimension of (episode, frame)'s action holds in `build_dataset` datasets."""
    return episode * 1000.0 + frame


def write_dataset(
    root: Path,
    lengths: Sequence[int],
    *,
    image_size: int | None = None,
    cameras: Sequence[str] = ("agentview", "wrist"),
    sim: bool = False,
    splits: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Writes a dataset whose actions encode (episode, frame) (see `known_action`) and whose states
    are random; returns what was written so tests can compare."""
    rng = np.random.default_rng(seed)
    written: dict[str, Any] = {"states": [], "actions": [], "images": [], "sim": [], "prompts": []}
    with DatasetWriter(root, source={"kind": "test"}) as writer:
        for ep, n in enumerate(lengths):
            states = rng.normal(size=(n, 8)).astype(np.float32)
            actions = np.repeat(np.array([known_action(ep, t) for t in range(n)], dtype=np.float32)[:, None], 7, 1)
            images = None
            if image_size:
                images = {cam: rng.integers(0, 256, size=(n, image_size, image_size, 3), dtype=np.uint8)
                          for cam in cameras}
            sim_states = rng.normal(size=(n, 12)) if sim else None
            prompt = f"task {ep % 2}"
            writer.add_episode(states, actions, task="lift", variant="D0", prompt=prompt, success=ep % 3 != 2,
                               sim_states=sim_states, model_xml="<mujoco model='t'/>" if sim else None,
                               images=images, split=(splits[ep] if splits else "train"), seed=ep)
            written["states"].append(states)
            written["actions"].append(actions)
            written["images"].append(images)
            written["sim"].append(sim_states)
            written["prompts"].append(prompt)
    return written


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, Any]]]:
    """`make_dataset([5, 3, 7], image_size=16, ...)` -> (dataset path, what was written)."""
    counter = iter(range(1000))

    def build(lengths: Sequence[int], **kwargs: Any) -> tuple[Path, dict[str, Any]]:
        root = tmp_path / f"ds{next(counter)}"
        return root, write_dataset(root, lengths, **kwargs)

    return build


@pytest.fixture
def edit_info() -> Callable[[Path, Callable[[dict[str, Any]], Any]], None]:
    """`edit_info(root, edit)`: applies `edit` to the dataset's meta/info.json in place (a hand-edited file)."""

    def apply(root: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
        path = root / "meta" / "info.json"
        info = json.loads(path.read_text())
        edit(info)
        path.write_text(json.dumps(info))

    return apply


@pytest.fixture(scope="session")
def run_in_lerobot(ray_session, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """`run_in_lerobot(fn, *args, release=None)`: fn(*args) in a Ray task in the LeRobot replicas' own
    runtime_env for `release` (None: the default one; same install spec, so Ray builds each once per
    session and uv's cache makes later sessions fast),
    offline, with HF caches in a temporary directory. LeRobot pins its own dependencies and must never enter
    Gauntlet's environment. `fn`'s module is shipped by value (Ray's workers cannot import tests)."""
    import sys

    from ray._private.ray_constants import WORKER_PROCESS_SETUP_HOOK_ENV_VAR

    from gauntlet.policies.lerobot.environment import runtime_env

    tmp = tmp_path_factory.mktemp("lerobot_env")

    def run(fn: Callable[..., Any], *args: Any, release: str | None = None) -> Any:
        env, caches = runtime_env(release), tmp / (release or "default")  # one HF cache per release
        env["env_vars"] = {**env["env_vars"], "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                           "HF_HOME": str(caches / "hf_home"), "HF_DATASETS_CACHE": str(caches / "hf_datasets"),
                           # The session's Serve gRPC bind hook imports ray.serve, which the LeRobot venv's
                           # protobuf breaks; these tasks start no Serve proxy, so they skip the hook.
                           WORKER_PROCESS_SETUP_HOOK_ENV_VAR: ""}
        ray_session.cloudpickle.register_pickle_by_value(sys.modules[fn.__module__])
        task = ray_session.remote(fn).options(runtime_env=env, num_cpus=1, max_retries=0)
        return ray_session.get(task.remote(*args), timeout=LEROBOT_TASK_TIMEOUT_S)

    return run
