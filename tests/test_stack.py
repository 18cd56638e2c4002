"""The whole dependency stack imports together, with each known trap avoided."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_whole_stack_imports_with_the_pinned_versions() -> None:
    import flax
    import jax
    import mujoco
    import numpy
    import optax
    import pandas
    import pyarrow
    import ray
    import ray.train
    import ray.tune
    import robosuite
    import torch
    from ray import serve

    assert int(numpy.__version__.split(".")[0]) >= 2  # not robosuite's numpy<2 (via mink==0.0.5)
    assert mujoco.__version__.startswith("3.3.")  # 4.0 breaks robosuite 1.5.2 at the first reset
    assert robosuite.__version__ == "1.5.2"
    assert ray.__version__ == "2.60.0"
    assert sys.version_info[:2] == (3, 12)  # LeRobot >= 0.5 needs 3.12; Ray 2.60 has no 3.13 wheels
    # One build in both modes, the release lerobot 0.6.1 accepts (torch<2.12), so LeRobot's environment
    # (a clone of this venv) keeps it: PyPI's 2.11.0, built against CUDA 13, runs on the CPU too.
    assert torch.__version__.startswith("2.11.0") and torch.version.cuda.startswith("13.")
    assert pyarrow.__version__ and pandas.__version__ and serve and flax and optax and jax
    # pyarrow <-> numpy 2 round trip (what broke with numpy<2 and pyarrow 26)
    table = pyarrow.table({"x": numpy.arange(3)})
    assert table.to_pandas()["x"].tolist() == [0, 1, 2]


def test_the_mimicgen_placeholder_is_not_installed() -> None:
    assert importlib.util.find_spec("mimicgen") is None


def test_robosuite_resets_under_the_installed_mujoco() -> None:
    code = ("import os; os.environ['MUJOCO_GL']='egl'; import robosuite; "
            "e = robosuite.make('Lift', robots='Panda', has_renderer=False, has_offscreen_renderer=False, "
            "use_camera_obs=False); e.reset(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_import_gauntlet_stays_light() -> None:
    code = ("import sys, gauntlet, gauntlet.platform.cli, gauntlet.envs, gauntlet.policies; "
            "heavy = [m for m in ('jax', 'torch', 'robosuite', 'ray') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ray_cluster_yaml_is_a_valid_local_cluster_config() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(config))  # fills defaults as `ray up` does, then schema-checks
    assert config["provider"]["type"] == "local"
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert any("scripts/install.sh" in c for c in config["setup_commands"])
