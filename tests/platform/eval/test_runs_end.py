"""Runs end: a scene that kills its actor every time, actors that cannot be placed or started, and
`--resume` running transient skips again while keeping permanent ones (real Ray, real robosuite)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gauntlet.platform.eval.config import EvalConfig, EvalRunError
from gauntlet.platform.eval.dispatch import Dispatcher
from gauntlet.platform.eval.driver import prepare_run_dir, run_eval
from gauntlet.platform.eval.episode import WorkItem
from gauntlet.platform.eval.results import (
    ACTOR_RAISED,
    KEY,
    PERMANENT,
    TRANSIENT,
    ResultsStore,
    arrow_schema,
    new_row,
    skipped_row,
)
from gauntlet.platform.eval.scenes import run_scenes, scene_records
from gauntlet.platform.eval.status import EvalStatus, StatusLine
from gauntlet.platform.eval.targets import policy_targets
from gauntlet.runtime.config_args import parse_config

SCENE = {"task": "lift", "variant": "D0", "error_type": "drop", "category": "natural"}
UNREACHABLE = "PolicyUnavailableError: policy unavailable for 120 s: connection refused"
RESTORE_FAILED = "restore failed: SceneDBError: corrupt scene array file"


@pytest.fixture(scope="module")
def scene_db(tmp_path_factory: pytest.TempPathFactory, generate_scenes) -> Path:
    """Four lift scenes (two variants x two error types)."""
    return generate_scenes(tmp_path_factory.mktemp("runs_end") / "scenes", variants="D0,D1",
                           error_types="object_pose_perturb,object_push", workers=1)


def _cfg(**kw: Any) -> EvalConfig:
    argv = []
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            for v in value if isinstance(value, list) else [value]:
                argv += [flag, str(v)]
    return parse_config(EvalConfig, argv, "gauntlet eval", "")


def _once(run: Path) -> pd.DataFrame:
    return _once_of(pd.read_parquet(run / "results.parquet"))


def _once_of(frame: pd.DataFrame) -> pd.DataFrame:
    assert not frame.duplicated(subset=list(KEY)).any()
    return frame.set_index("scene_id")


def _rollout_actors() -> list[dict[str, Any]]:
    """This test process's rollout actors that are not dead (alive, pending or being created)."""
    import ray
    from ray._private import state

    job = ray.get_runtime_context().get_job_id()
    return [a for a in state.actors().values() if a["ActorClassName"] == "RolloutActor"
            and a["State"] != "DEAD" and a["JobID"] == job]


def _rollout_pids() -> list[int]:
    return [a["Pid"] for a in _rollout_actors() if a["State"] == "ALIVE"]


# ------------------------------------------------------------------------ one row per key, no Ray


def _item(scene_id: str, trial: int = 0) -> WorkItem:
    return WorkItem("r", scene_id, "random", trial, 30)


def test_a_later_row_replaces_a_transient_skip_and_nothing_else(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    ran = new_row(_item("a"), SCENE, "w", "v", steps=30)
    store.write([skipped_row(_item("a"), SCENE, UNREACHABLE, "w", "v"),  # then ran on --resume
                 new_row(_item("b"), SCENE, "w", "v", steps=7),  # ran, then a late transient duplicate
                 skipped_row(_item("c"), SCENE, RESTORE_FAILED, "w", "v"),  # permanent, then transient
                 skipped_row(_item("d"), SCENE, "TimeoutError: first", "w", "v")])  # two transient skips
    store.write([ran, skipped_row(_item("b"), SCENE, UNREACHABLE, "w", "v"),
                 skipped_row(_item("c"), SCENE, UNREACHABLE, "w", "v"),
                 skipped_row(_item("d"), SCENE, "TimeoutError: second", "w", "v")])
    for _ in range(2):  # the same answer before and after folding the parts
        frame = store.read().set_index("scene_id")
        assert list(frame.index) == ["b", "c", "d", "a"]  # one per key, in the order the kept rows were written
        assert not frame.loc["a", "skipped"] and frame.loc["a", "steps"] == 30
        assert not frame.loc["b", "skipped"] and frame.loc["b", "steps"] == 7
        assert (frame.loc["c", "skip_kind"], frame.loc["c", "skip_reason"]) == (PERMANENT, RESTORE_FAILED)
        assert (frame.loc["d", "skip_kind"], frame.loc["d", "skip_reason"]) == (TRANSIENT, "TimeoutError: first")
        assert store.done_keys() == {_item(s).key for s in "abc"}  # d runs again on --resume
        store.compact()


def test_rows_without_skip_kind_read_with_it_derived(tmp_path: Path) -> None:
    """Parts without the skip_kind column still read; their skips are classified by reason."""
    store = ResultsStore(tmp_path)
    rows = [skipped_row(_item("a"), SCENE, UNREACHABLE, "w", "v"),
            skipped_row(_item("b"), SCENE, RESTORE_FAILED, "w", "v"),
            skipped_row(_item("c"), SCENE, "fingerprint mismatch: scene 1 vs env 2", "driver", "v"),
            new_row(_item("d"), SCENE, "w", "v")]
    old = pa.Table.from_pylist(rows, schema=arrow_schema()).drop_columns(["skip_kind"])
    pq.write_table(old, store.dir / "part-000001.parquet")
    frame = store.read().set_index("scene_id")
    assert frame["skip_kind"].to_dict() == {"a": TRANSIENT, "b": PERMANENT, "c": PERMANENT, "d": ""}
    assert store.done_keys() == {_item(s).key for s in "bcd"}


# ------------------------------------------------------------------------------ real runs


PADDING = 20_000  # tiny arrays added to the poisoned scene's file: loading it holds the file open ~1 s


def _pad(path: Path) -> bytes:
    """Adds PADDING arrays to a scene's array file (its state is untouched); returns the original bytes."""
    original = path.read_bytes()
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update({f"padding/{i}": np.zeros(1) for i in range(PADDING)})
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return original


def _holds_open(pid: int, path: str) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == path for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # the process (or one of its descriptors) is gone
        return False


def _kill_every_reader(path: Path, stop: threading.Event) -> tuple[threading.Thread, list[int]]:
    """SIGKILLs every process of this test process's Ray seen holding `path` open, until `stop`: only a
    rollout actor restoring that scene opens it. Every pass looks at every process, so an actor
    started a moment ago is seen on its first restore however slow the machine is."""
    killed: list[int] = []

    def killer() -> None:
        me = psutil.Process()
        while not stop.is_set():
            for proc in me.children(recursive=True):  # this test process's Ray only, never this process
                if proc.pid not in killed and _holds_open(proc.pid, str(path)):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    return thread, killed


def test_a_scene_that_kills_its_actor_ends_as_a_skipped_row_and_resume_runs_it_again(
        ray_session, scene_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gauntlet.platform.report.build import build_report

    db = tmp_path / "scenes"
    shutil.copytree(scene_db, db)
    scene_ids = sorted(pd.read_parquet(db / "scenes.parquet")["scene_id"])
    poison = scene_ids[0]  # the first item sent: its batch-mates are in flight with it
    arrays = (db / "arrays" / f"{poison}.npz").resolve()
    original = _pad(arrays)
    run = tmp_path / "run"
    # One actor, three envs: the first death takes three items with it. Deaths are the killer's
    # alone: a busy machine's slow ping replaces no actor (death is seen on the episode's call).
    args = dict(scenes=db, policy="random", out=run, trials=1, actors=1, envs_per_actor=3, horizon=60,
                write_every=1, max_attempts=3, ping_timeout_s=600)
    stop = threading.Event()
    thread, killed = _kill_every_reader(arrays, stop)
    try:
        summary = run_eval(_cfg(**args))
    finally:
        stop.set()
        thread.join(5)
    log = capsys.readouterr().out
    assert len(killed) == 3, f"the poisoned scene runs exactly max_attempts times: {log}"
    frame = _once(run)
    assert len(frame) == 4 and summary["ran"] == 3 and summary["actors_replaced"] >= 3
    row = frame.loc[poison]
    assert row["skipped"] and row["skip_kind"] == TRANSIENT and row["worker"] == "driver"
    assert row["skip_reason"].startswith("actor_died: its rollout actor died 3 times running it; last: ")
    assert not frame.drop(poison)["skipped"].any(), "its batch-mates were charged once, then ran alone"
    requeued = [int(n) for n in re.findall(r"\[eval\] actor 0 lost .*; re-queued (\d+) item", log)]
    # The first death took the poisoned item's two batch-mates (the fourth item was still in the
    # driver: no more work than actors); after it, the poisoned item ran alone.
    assert requeued[0] == 3 and requeued[1:] == [1, 0], log
    status = EvalStatus.read(run)
    assert (status.skipped, status.skipped_transient) == (1, 1) and summary["problems"] == []
    assert (status.policies["random"]["transient"], status.policies["random"]["permanent"]) == (1, 0)
    report = build_report(run)
    assert report["n_skipped_transient"] == 1 and any("1 transient" in n for n in report["notes"])

    arrays.write_bytes(original)  # the cause is gone: --resume runs the transient skip again
    summary = run_eval(_cfg(**args, resume=True))
    frame = _once(run)
    assert summary["ran"] == 1 and len(frame) == 4 and not frame["skipped"].any()
    assert frame.loc[poison, "steps"] > 0 and frame.loc[poison, "skip_kind"] == ""
    status = EvalStatus.read(run)
    assert status.finished and status.done == status.total == 4 and status.policies["random"]["transient"] == 0


class _ActorsWithoutOneScene(Dispatcher):
    """Rollout actors that are not given one scene: their real `run` raises KeyError for its item,
    before the episode (whose own errors `run` records as skipped rows) begins."""

    missing = ""

    def _new_actor(self) -> Any:
        from gauntlet.platform.eval.rollout_actor import RolloutActor

        given = {k: v for k, v in self.scenes.items() if k != self.missing}
        return RolloutActor.options(num_cpus=self.cfg.actor_cpus, max_restarts=0).remote(
            str(Path(self.cfg.scenes).resolve()), self.targets, given, self.version, self.cfg.envs_per_actor)


def test_an_item_whose_run_raises_is_skipped_and_its_actor_keeps_working(
        ray_session, scene_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    cfg = _cfg(scenes=scene_db, policy="random", out=run, trials=1, actors=1, envs_per_actor=2, horizon=30,
               write_every=1)
    scenes = scene_records(run_scenes(cfg)[1])
    order = sorted(scenes)
    targets, _ = policy_targets(cfg)
    dispatcher = _ActorsWithoutOneScene(cfg, scenes, targets, "v", ResultsStore(run), StatusLine(run, 4, 0))
    dispatcher.missing = order[0]  # the first item sent: a batch-mate is in flight with it
    outcome = dispatcher.run(deque(WorkItem(cfg.effective_run_id, s, "random", 0, 30) for s in order))
    log = capsys.readouterr().out
    # Not a death: the actor was not replaced, nothing was re-queued, and the other items ran on it.
    assert outcome == {"ran": 3, "actors_replaced": 0}, log
    assert " lost " not in log
    frame = _once_of(ResultsStore(run).read())
    row = frame.loc[order[0]]
    assert row["skipped"] and row["skip_kind"] == TRANSIENT and row["worker"] == "driver"
    assert row["skip_reason"].startswith(f"{ACTOR_RAISED}: KeyError: "), row["skip_reason"]
    assert repr(order[0]) in row["skip_reason"]  # the error names the scene
    ran = frame.drop(order[0])
    assert not ran["skipped"].any() and (ran["steps"] > 0).all() and ran["worker"].nunique() == 1


def test_resume_runs_transient_skips_again_and_keeps_permanent_ones(ray_session, scene_db: Path,
                                                                    tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = _cfg(scenes=scene_db, policy="random", out=run, trials=1, actors=1, horizon=30, resume=True)
    prepare_run_dir(cfg)  # RUN/run.json as a first invocation writes it
    scenes = scene_records(run_scenes(cfg)[1])
    a, b, c, d = sorted(scenes)
    item = {s: WorkItem(cfg.effective_run_id, s, "random", 0, 30) for s in scenes}
    store = ResultsStore(run)
    store.write([skipped_row(item[a], scenes[a], UNREACHABLE, "w", "v"),
                 skipped_row(item[b], scenes[b], RESTORE_FAILED, "w", "v")])
    # A part without the skip_kind column: its skip is transient by its reason.
    old = skipped_row(item[c], scenes[c], "TimeoutError: no answer in 120 s", "w", "v")
    pq.write_table(pa.Table.from_pylist([old], schema=arrow_schema()).drop_columns(["skip_kind"]),
                   store.dir / "part-000003.parquet")
    summary = run_eval(cfg)
    assert summary["ran"] == 3 and summary["total"] == 4  # a, c and the missing d
    frame = _once(run)
    assert not frame.loc[[a, c, d], "skipped"].any() and (frame.loc[[a, c, d], "steps"] > 0).all()
    assert (frame.loc[b, "skip_kind"], frame.loc[b, "skip_reason"]) == (PERMANENT, RESTORE_FAILED)
    status = EvalStatus.read(run)
    assert status.policies["random"]["permanent"] == 1 and status.policies["random"]["transient"] == 0
    assert status.problems == []


def test_actors_no_node_can_place_end_the_run_after_the_start_timeout(
        ray_session, scene_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gauntlet.platform.eval.driver import main

    run = tmp_path / "run"
    code = main(["--scenes", str(scene_db), "--policy", "random", "--out", str(run), "--actors", "2",
                 "--actor-resource", "nonexistent", "--start-timeout-s", "4", "--ping-timeout-s", "2"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "no rollout actor has been working for 4 s (--start-timeout-s)" in err
    assert "nonexistent 1" in err and "nonexistent 0 (0 free)" in err  # what they ask, what the cluster has
    assert "no rollout actor is working after" in out  # the notice came first, every ping timeout
    assert not list(run.glob("results/part-*.parquet"))
    deadline = time.monotonic() + 60  # the actors still waiting for placement were killed, not left behind
    while _rollout_actors() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _rollout_actors()


def test_actors_that_fail_to_start_end_the_run_and_buffered_rows_are_kept(
        ray_session, scene_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Mid-run, the scene database goes away and the actor is killed: its replacements fail to start
    (they open the database), the run ends with an error, and the rows it had buffered are written."""
    db = tmp_path / "scenes"
    shutil.copytree(scene_db, db)
    run = tmp_path / "run"
    args = dict(scenes=db, policy="random", out=run, trials=2, actors=1, horizon=200, start_attempts=2,
                write_every=100)  # nothing is written before the run ends
    outcome: dict[str, Any] = {}

    def evaluate() -> None:
        try:
            outcome["summary"] = run_eval(_cfg(**args))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=evaluate)
    thread.start()
    done = 0
    deadline = time.monotonic() + 240
    while thread.is_alive() and time.monotonic() < deadline and done < 2:
        try:
            done = EvalStatus.read(run).done
        except Exception:  # noqa: BLE001 - not written yet
            pass
        time.sleep(0.1)
    assert done >= 2 and not list(run.glob("results/part-*.parquet")), "two rows should be buffered, none written"
    pids = _rollout_pids()
    db.rename(tmp_path / "gone")  # then at once the kill, before the actor restores another scene
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    thread.join(240)
    error = outcome.get("error")
    assert isinstance(error, EvalRunError), outcome
    assert "no rollout actor could be started: each failed 2 times in a row (--start-attempts)" in str(error)
    assert f"{db}: " in str(error)  # the actor's own error, naming the database it could not open
    log = capsys.readouterr().out
    assert "failed to start 2 times in a row" in log and log.count("lost (failed to start:") == 1
    kept = ResultsStore(run).read()
    assert len(kept) >= done and not kept["skipped"].any()

    (tmp_path / "gone").rename(db)
    summary = run_eval(_cfg(**args, resume=True))
    assert summary["ran"] == 8 - len(kept)  # the kept rows are not run again
    assert len(_once(run)) == 8
