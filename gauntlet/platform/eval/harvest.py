"""`gauntlet scenes harvest`: failure scenes from a policy's own rollouts.

The policy (any eval TARGET) runs on the given scenes (nominal ones by default) as an ordinary eval
run (`run_eval`: pre-flight, rollout actors, results in `--run`), with every episode watched by the
online detectors (`envs/harvest.py`, the episode's step watch). Each failure it catches comes back
with its row and becomes a scene of `--into` as it arrives: origin `harvested`, error type the
classifiers' majority label (or `unlabelled`), provenance (policy target, checkpoint digest, source
scene, trial, step), the fingerprint of the env it ran in, and the oracle's verdict from a replay of
the captured state. A capture whose objects lie where those of a scene already harvested from the
same source episode lie (`same_place`) is a duplicate and is dropped, also across harvests into one
database. The result is an ordinary scene database: it replays, pre-flights and evaluates like any.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.envs.harvest import HarvestOptions, same_place
from gauntlet.envs.injectors import NOMINAL
from gauntlet.envs.online_detectors import DetectorConfig
from gauntlet.envs.scene_db import HARVESTED, SCENE_ID_MAX_CHARS, UNLABELLED, SceneDB, SceneRecord
from gauntlet.platform.eval.config import EvalConfig, EvalConfigError, EvalRunError
from gauntlet.platform.eval.dispatch import EpisodeWatch
from gauntlet.platform.eval.episode import WorkItem
from gauntlet.platform.eval.targets import PolicyTarget
from gauntlet.runtime.atomic_files import DirLock, DirLockedError
from gauntlet.runtime.config_args import as_tuple, option, parse_config, require_at_least, run_command

if TYPE_CHECKING:
    import pandas as pd

    from gauntlet.deployments.app import PolicyServing

PROG = "gauntlet scenes harvest"


@dataclass(frozen=True)
class HarvestConfig:
    """Runs a policy on scenes and keeps the failures it makes as new scenes (origin: harvested)."""

    scenes: str = option(help="scene database whose scenes the policy starts from")
    policy: str = option(help="the policy, as eval's --policy TARGET (NAME[=CHECKPOINT], deploy=, vla=BASE@ADAPTER, "
                              "lerobot=DIR, serve=NAME, remote=URL)")
    into: str = option(help="scene database the harvested scenes are added to (created if missing)")
    run: str = option("", help="eval run directory of the rollouts (results, status); default: INTO-rollouts")
    trials: int = option(1, help="episodes per source scene")
    horizon: int = option(200, help="steps per episode")
    after_steps: int = option(5, help="steps the episode goes on after a detection before its state is captured")
    tasks: tuple[str, ...] = option((), help="only source scenes of these tasks")
    error_types: tuple[str, ...] = option((NOMINAL,), help="source scenes of these error types (`none`: nominal)")
    actors: int = option(2, help="rollout actors")
    max_scenes: int = option(0, help="stop after this many scenes: no further episode is started, those "
                                     "running finish and are recorded in --run (0 = no limit)")
    resume: bool = option(False, help="finish the harvest whose rollouts are in --run (same flags): only "
                                      "the episodes without a row run; scenes already in --into stay once")
    no_progress_steps: int = option(DetectorConfig.no_progress_steps,
                                    help="steps without progress after which the no_progress detector fires")
    dedup_m: float = option(HarvestOptions.dedup_m, help="captures of one source episode whose object and target "
                                                         "positions agree within this many metres are one")
    recovery_horizon: int = option(HarvestOptions.recovery_horizon,
                                   help="steps the scripted oracle gets to recover from a harvested scene")

    def __post_init__(self) -> None:
        for name in ("tasks", "error_types"):
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        require_at_least(self, 1, "trials", "horizon", "actors", "no_progress_steps", "recovery_horizon",
                         as_flags=True)
        require_at_least(self, 0, "after_steps", "max_scenes", as_flags=True)

    @property
    def run_dir(self) -> str:
        return self.run or f"{Path(self.into).resolve()}-rollouts"

    def eval_config(self) -> EvalConfig:
        return EvalConfig(scenes=self.scenes, policy=(self.policy,), out=self.run_dir, trials=self.trials,
                          actors=self.actors, horizon=self.horizon, tasks=self.tasks, error_types=self.error_types,
                          resume=self.resume)

    def options(self) -> HarvestOptions:
        return HarvestOptions(after_steps=self.after_steps, dedup_m=self.dedup_m,
                              recovery_horizon=self.recovery_horizon,
                              detectors=DetectorConfig(no_progress_steps=self.no_progress_steps))


def checkpoint_digest(target: PolicyTarget, deploy: list[PolicyServing]) -> str:
    """The provenance of a target's weights, from eval's own parse of its --policy TARGET: the base
    checkpoint's fingerprint, and for BASE@ADAPTER `BASE_DIGEST@ADAPTER_DIGEST` ("" for a preset base).
    "" for targets whose weights this job does not load (a preset, a running app, a remote server)."""
    from gauntlet.deployments.app import EVAL_APP, deployment_name

    if target.kind != "serve" or target.app != EVAL_APP:
        return ""
    spec = next(s for s in deploy if deployment_name(s.ref.name) == target.deployment)
    base = _fingerprint(spec.ref.checkpoint or "")
    return f"{base}@{_fingerprint(str(Path(spec.adapters_dir) / target.adapter))}" if target.adapter else base


def _fingerprint(path: str) -> str:
    from gauntlet.policies.checkpoints import CheckpointError, read_manifest

    try:
        return str(read_manifest(path)["fingerprint"]) if path else ""
    except CheckpointError:
        return ""


def harvested_id(source_id: str, tag: str, trial: int, step: int, taken: set[str]) -> str:
    """A new scene id naming its source episode and step, unique in `taken`, within SCENE_ID_MAX_CHARS:
    a source id too long to fit is cut and ends with its own hash, so ids of long sources stay distinct."""
    tail = f"-h{tag}-t{trial}-s{step:04d}"
    room = SCENE_ID_MAX_CHARS - len(tail) - 4  # 4: the "-N" of a repeat
    if len(source_id) > room:
        source_id = f"{source_id[:room - 13]}-{hashlib.sha256(source_id.encode()).hexdigest()[:12]}"
    scene_id, n = f"{source_id}{tail}", 1
    while scene_id in taken:  # the same step of the same episode again, its objects elsewhere
        n += 1
        scene_id = f"{source_id}{tail}-{n}"
    return scene_id


class HarvestSink:
    """Receives each episode's captures in the driver and adds the new ones to `into`, one write per episode.
    It keeps the ids and the earlier captures per source episode in memory (the harvest holds `into`'s lock)."""

    def __init__(self, cfg: HarvestConfig, into: SceneDB, sources: dict[str, dict[str, Any]], digest: str):
        self.cfg, self.db, self.sources, self.digest = cfg, into, sources, digest
        self.options = cfg.options()
        self.tag = hashlib.sha256(cfg.policy.encode()).hexdigest()[:8]  # the target, in scene ids
        self.added: Counter[str] = Counter()  # error type -> scenes added
        self.duplicates = 0
        self.over_limit = 0  # captures not added because --max-scenes was reached
        frame = into.metadata()
        self.taken = set(frame["scene_id"])
        self.earlier: dict[tuple[str, int], list[str]] = {}  # (source scene, trial) -> this target's scenes
        mine = frame[frame["policy_target"] == cfg.policy]
        for sid, source, trial in zip(mine["scene_id"], mine["source_scene_id"], mine["source_trial"], strict=True):
            self.earlier.setdefault((source, int(trial)), []).append(sid)

    def enough(self) -> bool:
        """--max-scenes reached: the driver sends no further episode."""
        return bool(self.cfg.max_scenes) and sum(self.added.values()) >= self.cfg.max_scenes

    def __call__(self, item: WorkItem, payloads: list[dict[str, Any]]) -> None:
        room = self.cfg.max_scenes - sum(self.added.values()) if self.cfg.max_scenes else len(payloads)
        records: list[SceneRecord] = []
        for payload in payloads:
            if len(records) >= room:
                self.over_limit += 1
            elif self._duplicate(item, payload["arrays"]):
                self.duplicates += 1
            else:
                records.append(SceneRecord(row=self._row(item, payload["fields"]), arrays=payload["arrays"]))
                self.taken.add(records[-1].row["scene_id"])
        try:
            self.db.add(records)
        except BaseException:
            self.taken.difference_update(r.row["scene_id"] for r in records)
            raise
        for record in records:
            row = record.row
            self.earlier.setdefault((item.scene_id, item.trial), []).append(row["scene_id"])
            self.added[row["error_type"]] += 1
            print(f"[harvest] {row['scene_id']}: {row['error_type']} (detected by "
                  f"{', '.join(json.loads(row['injection_params'])['detectors'])}; recoverable "
                  f"{row['recoverable']}); {sum(self.added.values())} scene(s) so far", flush=True)

    def _duplicate(self, item: WorkItem, arrays: dict[str, Any]) -> bool:
        """Whether a scene harvested from the same source episode has its objects in the same place."""
        same = self.earlier.get((item.scene_id, item.trial), [])
        return any(same_place(arrays, self.db.load_arrays(sid), self.options) for sid in same)

    def _row(self, item: WorkItem, fields: dict[str, Any]) -> dict[str, Any]:
        from gauntlet import __version__
        from gauntlet.envs.injectors import SPECS
        from gauntlet.envs.scene_db import SCHEMA_VERSION

        source = self.sources[item.scene_id]
        label = fields["error_type"]
        return {
            **fields, "scene_id": harvested_id(item.scene_id, self.tag, item.trial, fields["source_step"], self.taken),
            "task": source["task"], "variant": source["variant"],
            "category": SPECS[label].category if label in SPECS else UNLABELLED, "phase": "",
            "magnitude": 0.0, "magnitude_unit": "", "seed": int(source["seed"]),
            "env_config": source["env_config"], "schema_version": SCHEMA_VERSION, "gauntlet_version": __version__,
            "origin": HARVESTED, "policy_target": self.cfg.policy, "policy_digest": self.digest,
            "source_scene_id": item.scene_id, "source_trial": item.trial,
        }


class HarvestConfigError(ValueError):
    """Bad input found before any rollout; the message names the flag."""


def run_harvest(cfg: HarvestConfig) -> dict[str, Any]:
    """The harvest; returns a summary. HarvestConfigError before any work on bad input (or when another
    harvest is adding to --into: `into` is locked for the whole harvest, as SceneDB.add rewrites its table)."""
    from gauntlet.envs.env_errors import GauntletEnvError
    from gauntlet.platform.eval.status import RUN_MANIFEST
    from gauntlet.platform.eval.targets import policy_targets

    ecfg = cfg.eval_config()
    try:
        sources = SceneDB.open(cfg.scenes).metadata()
    except GauntletEnvError as exc:
        raise HarvestConfigError(f"--scenes: {exc}") from None
    if sources.empty:
        raise HarvestConfigError(f"--scenes {cfg.scenes}: the scene database is empty")
    if Path(cfg.into).resolve() == Path(cfg.scenes).resolve():
        raise HarvestConfigError("--into must be another scene database than --scenes")
    if (Path(cfg.run_dir) / RUN_MANIFEST).exists() and not cfg.resume:
        raise HarvestConfigError(f"--run {cfg.run_dir} already holds a run; choose another --run, or pass "
                                 "--resume to finish it")
    try:
        targets, deploy = policy_targets(ecfg)
    except ValueError as exc:
        raise HarvestConfigError(f"--policy {cfg.policy}: {exc}") from None
    try:
        into = SceneDB.create(cfg.into)
        lock = DirLock(cfg.into).acquire()
    except GauntletEnvError as exc:
        raise HarvestConfigError(f"--into: {exc}") from None
    except DirLockedError as exc:
        raise HarvestConfigError(f"--into: {exc}: another harvest is adding to it; wait for it to end") from None
    try:
        return _harvest(cfg, ecfg, into, sources, checkpoint_digest(targets[0], deploy))
    finally:
        lock.release()


def _harvest(cfg: HarvestConfig, ecfg: EvalConfig, into: SceneDB, sources: pd.DataFrame, digest: str) -> dict[str, Any]:
    """run_harvest once `into` is locked."""
    from gauntlet.platform.eval.driver import run_eval

    sink = HarvestSink(cfg, into, {r["scene_id"]: r for r in sources.to_dict("records")}, digest)
    print(f"[harvest] {cfg.policy} on {cfg.scenes} (error types {', '.join(cfg.error_types)}) into {cfg.into}; "
          f"rollouts in {cfg.run_dir}", flush=True)
    summary = run_eval(ecfg, EpisodeWatch(spec=cfg.options(), sink=sink, enough=sink.enough))
    return {"harvested": sum(sink.added.values()), "by_error_type": dict(sink.added),
            "duplicates": sink.duplicates, "over_limit": sink.over_limit,
            "not_run": summary.get("not_sent", 0), "sink_errors": summary.get("sink_errors", 0),
            "scenes_in_db": len(into), "run": summary}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(HarvestConfig, argv, prog=PROG, description=HarvestConfig.__doc__)

    def work() -> None:
        summary = run_harvest(cfg)
        print(f"[harvest] finished: {json.dumps(summary, default=str)}", flush=True)

    return run_command(PROG, work, {HarvestConfigError: 2, EvalConfigError: 2, ValueError: 2, EvalRunError: 2})


if __name__ == "__main__":
    sys.exit(main())
