"""`gauntlet sweep throughput` on a real local Ray Tune: RAM floor, ladder path, both targets end to end.

Toy loaders stand in for the real one where the test is about the sweep (their speed and memory are
known functions of the knobs). Every RAM floor is set relative to the memory available at the time,
and no toy allocates more than 1 GB, so nothing here can endanger the machine.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest
import ray.cloudpickle

from gauntlet.deployments.app import EVAL_APP
from gauntlet.platform.sweeps import throughput as sweep_throughput
from gauntlet.platform.sweeps.ram_floor import GB, MB
from gauntlet.platform.sweeps.search import GridPlan, KnobError, LadderPlan, parse_baseline, parse_knobs
from gauntlet.platform.sweeps.throughput import KNOB_SPECS, SweepThroughputConfig, run_sweep
from gauntlet.platform.sweeps.throughput_trials import LoaderTarget, measure_loader
from gauntlet.runtime.config_args import parse_config

# Toy loaders travel to Tune's trial processes by value (this test module is not importable there).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

LOADER_SPECS = KNOB_SPECS["loader"]


class ToyLoader:
    """Yields {"actions": (batch_size, 7)} batches, sleeping `batch_s` each; may hold memory per batch."""

    def __init__(self, batch_size: int, batch_s: float, hold_mb_per_batch: int = 0, hold_limit_mb: int = 0,
                 hold_once_mb: int = 0, batches_per_epoch: int = 10_000):
        self.batch_size, self.batch_s = batch_size, batch_s
        self.hold_mb_per_batch, self.hold_limit_mb = hold_mb_per_batch, hold_limit_mb
        self.held = [b"x" * (hold_once_mb * MB)] if hold_once_mb else []
        self.batches_per_epoch = batches_per_epoch
        self.closed = False

    def __iter__(self):
        for _ in range(self.batches_per_epoch):
            if self.hold_mb_per_batch and len(self.held) * self.hold_mb_per_batch < self.hold_limit_mb:
                self.held.append(b"x" * (self.hold_mb_per_batch * MB))  # written pages: really resident
            time.sleep(self.batch_s)
            yield {"actions": np.zeros((self.batch_size, 7), np.float32)}

    def close(self) -> None:
        self.held.clear()
        self.closed = True


@dataclass(frozen=True)
class GreedyFactory:
    """num_workers=3 is the fastest but keeps 20 MB per batch (up to 1 GB); 4 breaks; the others hold 10 MB."""

    def __call__(self, knobs: dict[str, Any]) -> ToyLoader:
        workers = knobs["num_workers"]
        if workers == 4:
            raise ValueError("toy loader: 4 workers is a bad configuration")
        if workers == 3:
            return ToyLoader(8, 0.01, hold_mb_per_batch=20, hold_limit_mb=1000)
        return ToyLoader(8, {1: 0.03, 2: 0.02}[workers], hold_once_mb=10)


def ladder_speed(knobs: dict[str, Any]) -> float:
    """Samples/s as a known function of the knobs; every move is >= 29% better or worse, never a tie.

    From the baseline (1, 1, 16) the ladder should: keep num_workers 2 (+50%), not keep
    prefetch_depth 2 (-30% at batch 16), keep batch_size 32 (+50%); in round 2 not keep num_workers 4,
    keep prefetch_depth 2 (+40%: it pays at batch 32); in round 3 keep nothing and stop.
    """
    nw, pd_, bs = knobs["num_workers"], knobs["prefetch_depth"], knobs["batch_size"]
    f_nw = {1: 1.0, 2: 1.5, 4: 1.0}[nw]
    f_bs = {16: 1.0, 32: 1.5}[bs]
    f_pd = {1: 1.0, 2: 0.7 if bs == 16 else 1.4, 4: 1.0}[pd_]
    return 600.0 * f_nw * f_bs * f_pd


@dataclass(frozen=True)
class LadderFactory:
    def __call__(self, knobs: dict[str, Any]) -> ToyLoader:
        return ToyLoader(knobs["batch_size"], knobs["batch_size"] / ladder_speed(knobs))


EXPECTED_PATH = [("num_workers", 2, True), ("prefetch_depth", 2, False), ("batch_size", 32, True),
                 ("num_workers", 4, False), ("prefetch_depth", 2, True),
                 ("num_workers", 4, False), ("prefetch_depth", 4, False)]
LADDER_KNOBS = ("num_workers=1,2,4", "prefetch_depth=1,2,4", "batch_size=16,32")


def _config(tmp_path: Path, *extra: str) -> SweepThroughputConfig:
    return parse_config(SweepThroughputConfig, ["--target", "loader", "--dataset", str(tmp_path),
                                                "--out", str(tmp_path / "out"), *extra], "p", "d")


# ----------------------------------------------------------------------------- plans without Ray

def test_knob_lists_are_parsed_typed_and_checked() -> None:
    knobs = parse_knobs(["num_workers=1,2,4", "prefetch-depth=2"], LOADER_SPECS)
    assert knobs == {"num_workers": (1, 2, 4), "prefetch_depth": (2,)}
    assert all(isinstance(v, int) for v in knobs["num_workers"])
    assert parse_knobs(["batch_wait_timeout_s=0.005,0.02"], KNOB_SPECS["eval"])["batch_wait_timeout_s"] == (0.005, 0.02)
    for bad, needle in ((["warp=1,2"], "unknown knob 'warp'"), (["num_workers="], "empty value list"),
                        (["num_workers=1,x"], "not an integer"), (["num_workers=0"], "below its minimum"),
                        (["num_workers=1,1"], "twice"), (["num_workers"], "NAME=V1"),
                        (["batch_size=2", "batch_size=4"], "given twice")):
        with pytest.raises(KnobError, match="--knobs") as info:
            parse_knobs(bad, LOADER_SPECS)
        assert needle in str(info.value)
    with pytest.raises(KnobError, match="--baseline.*not among"):
        parse_baseline(["num_workers=3"], knobs, LOADER_SPECS)
    assert parse_baseline(["num_workers=2"], knobs, LOADER_SPECS) == {"num_workers": 2, "prefetch_depth": 2}


def test_grid_plan_is_every_combination_in_order() -> None:
    plan = GridPlan({"a": (1, 2), "b": (10, 20, 30)})
    points = []
    while (p := plan.propose()) is not None:
        points.append((p.knobs["a"], p.knobs["b"]))
        plan.record(p, None if p.knobs == {"a": 2, "b": 30} else float(p.knobs["a"] * p.knobs["b"]))
    assert points == [(1, 10), (1, 20), (1, 30), (2, 10), (2, 20), (2, 30)] and plan.total == 6
    assert plan.best().proposal.knobs == {"a": 2, "b": 20}  # the fastest that measured ok


def _walk(plan: LadderPlan, measure) -> list[tuple[str, Any, bool]]:
    while (p := plan.propose()) is not None:
        plan.record(p, measure(p.knobs))
    return plan.path()


def test_ladder_plan_follows_the_measurements() -> None:
    knobs = parse_knobs(LADDER_KNOBS, LOADER_SPECS)
    plan = LadderPlan(knobs, margin=0.03)
    assert _walk(plan, ladder_speed) == EXPECTED_PATH
    assert plan.current == {"num_workers": 2, "prefetch_depth": 2, "batch_size": 32}
    assert plan.best().metric == pytest.approx(1890.0) and len(plan.history) <= plan.max_trials
    # deterministic: the same measurements give the same path
    assert _walk(LadderPlan(knobs, margin=0.03), ladder_speed) == EXPECTED_PATH


def test_ladder_keeps_only_improvements_beyond_the_margin_and_never_failures() -> None:
    knobs = {"a": (1, 2, 3), "b": (1, 2)}
    # a=2 is +2% (noise: not kept), b=2 failed (ram_floor/error: not kept): the ladder stops at the baseline
    plan = LadderPlan(knobs, margin=0.03)
    path = _walk(plan, lambda k: None if k["b"] == 2 else (102.0 if k["a"] == 2 else 100.0))
    assert path == [("a", 2, False), ("b", 2, False)] and plan.current == {"a": 1, "b": 1}
    # margin 0: the same +2% is kept, then a=3 is tried from there
    plan = LadderPlan(knobs, margin=0.0)
    path = _walk(plan, lambda k: None if k["b"] == 2 else 100.0 + k["a"])
    assert path == [("a", 2, True), ("b", 2, False), ("a", 3, True), ("b", 2, False)]
    # a failed baseline: the first valid measurement is kept; a given baseline is where it starts
    plan = LadderPlan(knobs, baseline={"a": 2}, margin=0.03)
    assert _walk(plan, lambda k: None if k == {"a": 2, "b": 1} else 50.0) == [("a", 3, True), ("b", 2, False)]


# -------------------------------------------------------------------------- bad input at the edge

@pytest.mark.parametrize(("argv", "needle"), [
    (["--knobs", "warp_factor=1,2"], "--knobs: unknown knob 'warp_factor'"),
    (["--knobs", "num_workers="], "--knobs: knob 'num_workers' has an empty value list"),
    (["--ram-floor-gb", "100000"], "--ram-floor-gb"),
    (["--mode", "ladder", "--knobs", "num_workers=1,2", "--baseline", "num_workers=3"], "--baseline"),
])
def test_bad_input_is_refused_before_any_trial(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                               needle: str) -> None:
    out = tmp_path / "out"
    rc = sweep_throughput.main(["--target", "loader", "--dataset", str(tmp_path), "--out", str(out), *argv])
    assert rc == 2 and needle in capsys.readouterr().err
    assert not out.exists(), "nothing runs or is written before the input is checked"


@pytest.mark.parametrize(("argv", "needle"), [
    (["--target", "loader", "--dataset", "/no/such/ds"], "--dataset: "),
    (["--target", "eval", "--scenes", "/no/such/db"], "--scenes: "),
    (["--target", "eval", "--scenes", "/no/such/db", "--knobs", "num_workers=1"], "--knobs: unknown knob"),
])
def test_missing_inputs_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                  needle: str) -> None:
    assert sweep_throughput.main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert needle in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_flags_are_checked_by_the_config() -> None:
    with pytest.raises(SystemExit):
        parse_config(SweepThroughputConfig, ["--target", "loader", "--out", "x"], "p", "d")  # no --dataset
    with pytest.raises(SystemExit):
        parse_config(SweepThroughputConfig, ["--target", "gpu", "--out", "x"], "p", "d")
    cfg = parse_config(SweepThroughputConfig, ["--target", "eval", "--scenes", "db", "--out", "x",
                                               "--grid", "actors=1,2"], "p", "d")
    assert cfg.knobs == ("actors=1,2",) and cfg.mode == "grid" and cfg.floor_bytes >= GB


def test_measure_loader_counts_samples_and_closes(tmp_path: Path) -> None:
    made: list[ToyLoader] = []

    def factory(knobs: dict[str, Any]) -> ToyLoader:
        made.append(ToyLoader(knobs["batch_size"], 0.005, batches_per_epoch=7))
        return made[-1]

    row = measure_loader(factory, {"batch_size": 4}, warmup_batches=2, measure_s=0.2)
    assert row["samples"] == 4 * row["batches"] and row["batches"] >= 10  # epochs wrap
    assert 0 < row["samples_per_s"] <= 4 / 0.005 and made[0].closed


# ---------------------------------------------------------------------------------- on Ray Tune

@pytest.fixture(scope="module")
def local_ray(ray_session):  # the one Ray of this test session (tests/conftest.py)
    yield ray_session


def test_ram_floor_stops_the_greedy_trial_and_the_sweep_finishes(tmp_path: Path, local_ray) -> None:
    # The floor is host available memory minus 600 MB, taken when each trial starts (this machine is
    # shared: other jobs move available memory by GBs between trials); the greedy toy would take 1 GB.
    config = _config(tmp_path, "--ram-floor-gb", "1", "--ram-headroom-gb", str(600 / 1024), "--ram-margin-mb", "64")
    target = LoaderTarget(factory=GreedyFactory(), warmup_batches=1, measure_s=1.0)
    plan = GridPlan(parse_knobs(["num_workers=3,4,1,2"], LOADER_SPECS))  # the sweep goes on after each failure
    trials = run_sweep(config, target, plan)
    status = dict(zip(trials["num_workers"], trials["status"], strict=True))
    assert status == {1: "ok", 2: "ok", 3: "ram_floor", 4: "error"}, trials[["num_workers", "status", "reason"]].to_string()
    assert trials.set_index("num_workers").loc[4, "reason"] == "ValueError: toy loader: 4 workers is a bad configuration"
    greedy = trials.set_index("num_workers").loc[3]
    assert "RAM floor" in greedy["reason"] and np.isnan(greedy["samples_per_s"])
    assert 100 < greedy["tree_growth_mb"] < 1000, "stopped by what it allocated, before it had it all"
    ok = trials[trials["status"] == "ok"]
    assert (ok["samples_per_s"] > 0).all() and (ok["min_available_mb"] > ok["floor_mb"]).all()
    assert (ok["tree_growth_mb"] < 100).all()
    best = plan.best()
    assert best is not None and best.proposal.knobs == {"num_workers": 2}  # fastest above the floor


def test_ladder_over_a_toy_loader_on_tune(tmp_path: Path, local_ray) -> None:
    config = _config(tmp_path, "--mode", "ladder", "--ram-floor-gb", "0.5")
    target = LoaderTarget(factory=LadderFactory(), warmup_batches=2, measure_s=0.4)
    plan = LadderPlan(parse_knobs(LADDER_KNOBS, LOADER_SPECS), margin=0.03)
    trials = run_sweep(config, target, plan)
    assert plan.path() == EXPECTED_PATH
    assert plan.current == {"num_workers": 2, "prefetch_depth": 2, "batch_size": 32}
    assert len(trials) == len(EXPECTED_PATH) + 1 and (trials["status"] == "ok").all()
    moved = trials[trials["changed_knob"] != ""]
    assert list(zip(moved["changed_knob"], moved["kept"], strict=True)) == [(k, kept) for k, _, kept in EXPECTED_PATH]
    assert trials["kept"].dtype == bool
    # sleeping toys: no measurement beats the known speed (noise only ever slows them down)
    expected = trials.apply(lambda r: ladder_speed(r.to_dict()), axis=1)
    assert (trials["samples_per_s"] < expected * 1.02).all()


# ------------------------------------------------------------------------------ CLI end to end

@pytest.fixture(scope="module")
def scene_db(tmp_path_factory: pytest.TempPathFactory, generate_scenes) -> Path:
    return generate_scenes(tmp_path_factory.mktemp("sweep") / "scenes", variants="D0",
                           error_types="object_pose_perturb,object_push")


def test_eval_target_end_to_end(tmp_path: Path, scene_db: Path, local_ray, capsys: pytest.CaptureFixture[str]) -> None:
    from gauntlet.platform.cli import main as cli

    out = tmp_path / "sweep"
    # deploy=: the batch knobs act on a Serve replica (plain `random` runs inside the rollout actors).
    rc = cli(["sweep", "throughput", "--target", "eval", "--scenes", str(scene_db), "--policy", "deploy=random",
              "--knobs", "actors=1,2", "max_batch_size=4", "--horizon", "20", "--actor-cpus", "0.5",
              "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    trials = pd.read_parquet(out / "trials.parquet")
    assert pd.read_csv(out / "trials.csv").shape == trials.shape
    assert list(trials["actors"]) == [1, 2] and (trials["status"] == "ok").all(), trials["reason"].tolist()
    assert (trials["episodes_per_min"] > 0).all() and (trials["episodes"] == 2).all()
    assert (trials["mean_batch_size"] >= 1).all() and (trials["max_batch_size_seen"] <= 4).all()
    assert trials["actors"].dtype == np.int64 and trials["episodes_per_min"].dtype == np.float64
    report = json.loads((out / "report.json").read_text())
    runs = Path(report["eval_runs_dir"])
    assert runs.parent == (out / "eval_runs").resolve()
    for i in range(2):  # each trial's evaluation is a normal run directory
        assert (runs / f"trial-{i:03d}" / "results.parquet").is_file()
    best = trials.loc[trials["episodes_per_min"].idxmax()]
    assert report["recommended"]["knobs"] == {"actors": int(best["actors"]), "max_batch_size": 4}
    assert "## Recommendation" in (out / "report.md").read_text()
    assert "2/2 trials" in printed and "recommended: actors=" in printed
    from ray import serve

    assert EVAL_APP not in serve.status().applications  # no Serve app left behind


def test_an_eval_trial_over_the_floor_is_stopped_and_cleaned_up(tmp_path: Path, scene_db: Path, local_ray) -> None:
    # The evaluation's own driver grows by ~0.8 GB while it imports the simulator and pre-flights the
    # scenes; a 0.4 GB per-trial budget stops it there, whatever the rest of the machine is doing.
    out = tmp_path / "sweep"
    rc = sweep_throughput.main(["--target", "eval", "--scenes", str(scene_db), "--policy", "random", "--knobs",
                                "actors=1", "--horizon", "20", "--actor-cpus", "0.5", "--ram-headroom-gb", "0.4",
                                "--ram-margin-mb", "64", "--out", str(out)])
    assert rc == 1  # nothing to recommend
    trials = pd.read_parquet(out / "trials.parquet")
    assert list(trials["status"]) == ["ram_floor"] and "RAM floor" in trials["reason"].iloc[0]
    # The budget is on the host's available memory: on a shared machine other processes can take part
    # of the 336 MB drop that stops the trial, so the evaluation's own tree is asserted to have taken
    # a large share of it (beside a second test suite on this 2-core machine it took 262-273 MB).
    assert 150 < trials["tree_growth_mb"].iloc[0] < 1500 and np.isnan(trials["episodes_per_min"].iloc[0])
    report = json.loads((out / "report.json").read_text())
    assert report["recommended"] is None
    run_dir = str(Path(report["eval_runs_dir"]) / "trial-000")
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if run_dir in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, "the stopped evaluation's driver is gone"
    from ray import serve

    assert EVAL_APP not in serve.status().applications


def test_loader_target_end_to_end(tmp_path: Path, local_ray, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = _tiny_dataset(tmp_path / "ds")
    out = tmp_path / "sweep"
    rc = sweep_throughput.main(["--target", "loader", "--dataset", str(dataset), "--mode", "ladder", "--knobs",
                                "decode_workers=1,2", "batch_size=4,8", "--warmup-batches", "2", "--measure-s", "0.5",
                                "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    trials = pd.read_parquet(out / "trials.parquet")
    assert pd.read_csv(out / "trials.csv").shape == trials.shape
    assert (trials["status"] == "ok").all(), trials["reason"].tolist()
    assert trials.iloc[0][["decode_workers", "batch_size"]].tolist() == [1, 4]  # the baseline
    assert 2 <= len(trials) <= 4 and trials["kept"].dtype == bool and trials["batch_size"].dtype == np.int64
    assert (trials["samples_per_s"] > 0).all() and (trials["samples"] % trials["batch_size"] == 0).all()
    report = json.loads((out / "report.json").read_text())
    assert report["recommended"] is not None and report["ladder_path"][0]["knob"] == ""
    assert "## Ladder path" in (out / "report.md").read_text() and "recommended: " in printed


def _tiny_dataset(root: Path) -> Path:
    """Four short episodes with 16-pixel camera images, written with the real dataset writer."""
    from gauntlet.data.dataset_format import DatasetWriter

    rng = np.random.default_rng(0)
    with DatasetWriter(root, source={"kind": "test"}) as writer:
        for ep in range(4):
            n = 20
            images = {cam: rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8) for cam in ("agentview", "wrist")}
            writer.add_episode(rng.normal(size=(n, 8)).astype(np.float32), rng.normal(size=(n, 7)).astype(np.float32),
                               task="lift", variant="D0", prompt="lift the cube", success=True, images=images, seed=ep)
    return root


def test_report_to_tensorboard_logs_each_trial_and_the_final_tables(tmp_path: Path, local_ray) -> None:
    from gauntlet.runtime.tracking import read_tensorboard

    dataset = _tiny_dataset(tmp_path / "ds")
    out = tmp_path / "sweep"
    rc = sweep_throughput.main(["--target", "loader", "--dataset", str(dataset), "--knobs", "batch_size=4,8",
                                "--warmup-batches", "1", "--measure-s", "0.3", "--report-to", "tensorboard",
                                "--out", str(out)])
    assert rc == 0
    trials = pd.read_parquet(out / "trials.parquet")
    logged = read_tensorboard(out / "tensorboard")
    scalars = logged["scalars"]
    assert [s for s, _ in scalars["trial/samples_per_s"]] == [1, 2]  # one point per finished trial
    assert sorted(v for _, v in scalars["trial/config/knobs/batch_size"]) == [4.0, 8.0]
    assert sorted(v for _, v in scalars["trial/samples_per_s"]) == pytest.approx(
        sorted(trials["samples_per_s"]), rel=1e-5)
    assert [v for _, v in scalars["trial/ok"]] == [1.0, 1.0]
    assert "samples_per_s" in logged["texts"]["sweep/trials"][0]
    assert "batch_size" in logged["texts"]["sweep/recommended"][0]
    assert '"report_to": "tensorboard"' in logged["texts"]["config"][0]
