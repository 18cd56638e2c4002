"""LeRobot releases side by side: `lerobot=DIR` runs the default release (0.6.1), `lerobot@0.4.4=DIR`
the older one, each in its own Ray runtime_env; a checkpoint whose config.json the chosen release
cannot read is refused before any replica starts, naming the field and the release to try.

The 0.4.4 environment pins its own torch (`torch<2.11`), so its first build on a machine downloads
that torch once (uv's cache keeps it for later sessions).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from gauntlet.deployments.app import PolicyServing, build_app, specs_from_names, start_serve
from gauntlet.policies import msgpack_numpy
from gauntlet.policies.lerobot.config import CONFIG_FILE
from gauntlet.policies.lerobot.release_check import LeRobotReleaseError, check_config
from gauntlet.policies.registry import PolicyRef, runtime_env_for

pytestmark = pytest.mark.slow

HTTP_PORT = 18471
IMAGE = 32
OLD = "0.4.4"
SETUP_S = 1800  # a first build of an environment downloads torch


def _saved(ray, release: str | None, out: Path) -> str:
    from gauntlet.policies.lerobot.untrained_checkpoints import save_random_policy

    save = ray.remote(num_cpus=0.5, max_retries=0, runtime_env=runtime_env_for("lerobot", release))(save_random_policy)
    return ray.get(save.remote("act", str(out), image_size=IMAGE), timeout=SETUP_S)


@pytest.fixture(scope="module")
def checkpoints(ray_session, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An ACT checkpoint saved by each release, and a copy of the new one with a field no release has."""
    root = tmp_path_factory.mktemp("releases")
    out = {"new": _saved(ray_session, None, root / "new"), "old": _saved(ray_session, OLD, root / "old")}
    future = Path(shutil.copytree(out["new"], root / "future"))
    config = json.loads((future / CONFIG_FILE).read_text())
    (future / CONFIG_FILE).write_text(json.dumps({**config, "from_the_future": True}))
    out["future"] = str(future)
    return out


def _build(path: str, release: str | None):
    spec = PolicyServing(PolicyRef("lerobot", path, release), num_cpus=0.5,
                         runtime_env=runtime_env_for("lerobot", release))
    return build_app([spec])


def test_each_release_writes_what_the_other_may_not_read(checkpoints: dict[str, str]) -> None:
    new_config = json.loads((Path(checkpoints["new"]) / CONFIG_FILE).read_text())
    old_config = json.loads((Path(checkpoints["old"]) / CONFIG_FILE).read_text())
    assert "pretrained_revision" in new_config and "pretrained_revision" not in old_config
    # 0.4.4 cannot read 0.6.1's config: refused before deploying, naming the field and the release.
    with pytest.raises(LeRobotReleaseError, match=r"pretrained_revision: not a field of ACTConfig in lerobot "
                       r"0\.4\.4.*--policy lerobot@0\.6\.1=DIR"):
        _build(checkpoints["new"], OLD)
    # 0.6.1 reads 0.4.4's config (a field it added has a default), but no release has this one.
    _build(checkpoints["old"], None)
    with pytest.raises(LeRobotReleaseError, match=r"from_the_future: not a field of ACTConfig in lerobot "
                       r"0\.6\.1.*--policy lerobot@0\.4\.4=DIR"):
        _build(checkpoints["future"], None)


def test_a_pinned_release_serves_its_own_checkpoint(ray_session, checkpoints: dict[str, str]) -> None:
    from ray import serve

    from gauntlet.policies.lerobot.untrained_checkpoints import reference_actions

    serve.shutdown()  # other modules' Serve instances listen on other ports
    spec = specs_from_names([f"lerobot@{OLD}={checkpoints['old']}"], max_batch_size=4)[0]
    spec = replace(spec, num_cpus=0.5)
    assert spec.ref.release == OLD and spec.runtime_env["uv"]["packages"][0] == f"lerobot=={OLD}"
    try:
        start_serve([spec], http_port=HTTP_PORT, grpc_port=None)
        rng = np.random.default_rng(0)
        obs = {"observation/state": rng.normal(size=8).astype(np.float32),
               "observation/image": rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8),
               "observation/wrist_image": rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8)}
        answer = httpx.post(f"http://127.0.0.1:{HTTP_PORT}/v1/policies/lerobot/infer", timeout=120,
                            content=msgpack_numpy.packb(obs), headers={"content-type": "application/msgpack"})
        assert answer.status_code == 200, answer.text
        actions = msgpack_numpy.unpackb(answer.content)["actions"]
        check = ray_session.remote(num_cpus=0, runtime_env=spec.runtime_env)(check_config)
        assert ray_session.get(check.remote(checkpoints["old"]), timeout=SETUP_S) == OLD  # the release it runs
        reference = ray_session.remote(num_cpus=0.5, runtime_env=spec.runtime_env)(reference_actions)
        batch = {k: v[None] for k, v in obs.items()}
        ref = ray_session.get(reference.remote(checkpoints["old"], batch), timeout=SETUP_S)
        np.testing.assert_allclose(actions, ref["chunk"][0], rtol=1e-4, atol=1e-4)
    finally:
        serve.shutdown()

