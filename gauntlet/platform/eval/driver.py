"""`gauntlet eval` / `python -m gauntlet.platform.eval`: policies x scenes x trials on Ray.

Pre-flight first (fingerprints: mismatched scenes are written as skipped and never sent), then the
policies this job serves are deployed and the dispatcher runs the remaining work items on rollout
actors. `--resume` runs the keys that are missing from the results store and those skipped for a
transient reason. The run directory is locked for the whole run: a second `gauntlet eval` on it is
refused at once, naming the process that holds it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.deployments.app import EVAL_APP, deployment_name
from gauntlet.deployments.batcher import default_max_queued
from gauntlet.platform.eval.config import EvalConfig, EvalConfigError, EvalRunError
from gauntlet.platform.eval.dispatch import QUEUED_PER_ACTOR, EpisodeWatch
from gauntlet.platform.eval.episode import WorkItem
from gauntlet.platform.eval.results import DRIVER_WORKER, PERMANENT, ResultsStore, skipped_row
from gauntlet.platform.eval.scenes import run_scenes, scene_records
from gauntlet.platform.eval.status import RUN_MANIFEST, StatusLine, policy_outcomes, write_serving_stats
from gauntlet.platform.eval.targets import PolicyTarget, policy_targets, policy_tasks
from gauntlet.platform.eval.video import mark_recorded
from gauntlet.runtime.atomic_files import DirLock, DirLockedError
from gauntlet.runtime.config_args import parse_config, run_command
from gauntlet.runtime.tracking import open_tracker

if TYPE_CHECKING:
    import pandas as pd

    from gauntlet.deployments.app import PolicyServing

__all__ = ["EvalConfig", "EvalConfigError", "EvalRunError", "main", "run_eval"]  # the driver's public face

SERVE_REPLICA_CPUS = 0.5  # CPUs reserved per deployed replica: batching replicas mostly wait on actors


def code_version() -> str:
    """gauntlet's version, plus the git commit when run from a checkout (the results column)."""
    from gauntlet import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def prepare_run_dir(cfg: EvalConfig) -> Path:
    """RUN created with its manifest, or an existing RUN checked for `--resume` (same identity)."""
    from gauntlet.runtime.run_identity import RunIdentityError, check_resume, write_run_manifest

    run_dir = Path(cfg.out)
    manifest = run_dir / RUN_MANIFEST
    identity = cfg.identity()
    if manifest.exists():
        if not cfg.resume:
            raise EvalConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
        try:
            check_resume(manifest, identity, str(run_dir))
        except RunIdentityError as exc:
            raise EvalConfigError(str(exc)) from None
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_manifest(manifest, identity, asdict(cfg))
    return run_dir


@dataclass
class WorkPlan:
    """Every episode of the run, sorted into done, skipped at pre-flight and to run."""

    total: int = 0  # scenes x policies x trials
    done: int = 0  # already in the results store (a resumed run)
    pending: deque[WorkItem] = field(default_factory=deque)  # to run on the actors
    skip_rows: list[dict[str, Any]] = field(default_factory=list)  # incompatible scenes, recorded unrun


def plan_work(cfg: EvalConfig, scenes: dict[str, dict[str, Any]], targets: list[PolicyTarget],
              done_keys: set[tuple], version: str) -> WorkPlan:
    plan = WorkPlan(done=len(done_keys))
    only = policy_tasks(cfg, targets)
    for scene_id, scene in scenes.items():
        for target in targets:
            reason = "" if scene["compatible"] else scene["incompatible_reason"]
            if not reason and target.label in only and scene["task"] not in only[target.label]:
                reason = f"policy_tasks: {target.label} is evaluated on {', '.join(sorted(only[target.label]))} only"
            for trial in range(cfg.trials):
                item = WorkItem(cfg.effective_run_id, scene_id, target.label, trial, cfg.horizon)
                plan.total += 1
                if item.key in done_keys:
                    continue
                if reason:
                    # Decided from the scene and the flags alone: the same run would skip it again.
                    plan.skip_rows.append(skipped_row(item, scene, reason, DRIVER_WORKER, version, kind=PERMANENT))
                else:
                    plan.pending.append(item)
    return plan


def run_eval(cfg: EvalConfig, watch: EpisodeWatch | None = None) -> dict[str, Any]:
    """The whole evaluation; returns a summary. Raises EvalConfigError before any work on bad input
    (or when another process holds the run directory), EvalRunError when the run cannot go on.
    `watch`: watch every episode (e.g. `scenes harvest`); the rows are written as ever."""
    _, frame = run_scenes(cfg)
    targets, deploy = policy_targets(cfg)
    policy_tasks(cfg, targets)  # a bad --policy-tasks is refused before any work
    probe_remotes(targets, frame)
    lock = lock_run_dir(Path(cfg.out))
    try:
        return _run(cfg, frame, targets, deploy, watch)
    finally:
        lock.release()


def lock_run_dir(run_dir: Path) -> DirLock:
    """RUN's lock, held for the whole run (also while it waits for actors): two processes writing one
    run (two `--resume`) would number their parts alike and overwrite each other's rows."""
    try:
        return DirLock(run_dir).acquire()
    except DirLockedError as exc:
        raise EvalConfigError(f"{exc}: another `gauntlet eval` is writing this run; wait for it to end or "
                              "stop it, then --resume") from None


def _run(cfg: EvalConfig, frame: pd.DataFrame, targets: list[PolicyTarget],
         deploy: list[PolicyServing], watch: EpisodeWatch | None = None) -> dict[str, Any]:
    """run_eval once the run directory is locked."""
    import ray

    from gauntlet.runtime.ray_session import start_ray

    run_dir = prepare_run_dir(cfg)
    store = ResultsStore(run_dir)
    version = code_version()
    plan, scenes, status = _start_run(cfg, frame, targets, store, version)
    summary = {"run_dir": str(run_dir), "total": plan.total, "ran": 0, "skipped": len(plan.skip_rows),
               "skipped_transient": 0}  # pre-flight skips are permanent
    if not plan.pending:
        return _finish(store, status, summary)
    cpus = max(os.cpu_count() or 1, int(cfg.actors * cfg.actor_cpus) + len(deploy))
    owns_ray = start_ray("eval", num_cpus=cpus, log_to_driver=False)
    try:
        _deploy(deploy, cfg)
        from gauntlet.platform.eval.dispatch import Dispatcher

        pending = deque(replace(item, watch=watch.spec) for item in plan.pending) if watch else plan.pending
        outcome = Dispatcher(cfg, scenes, targets, version, store, status,
                             sink=watch.sink if watch else None, stop=watch.enough if watch else None).run(pending)
        _record_missing_outcomes(cfg, scenes, targets, version, store, status)
        summary.update(outcome, skipped=status.skipped, skipped_transient=status.transient,
                       success_rate=status.success_rate)
        if deploy:
            # What the replicas saw (batch sizes etc.): the evidence that actors shared batches.
            summary["serving"] = _serving_stats(deploy)
            write_serving_stats(run_dir, summary["serving"])
        return _finish(store, status, summary)
    finally:
        status.close()  # --report-to's tracker, also when the run fails
        if deploy:
            _undeploy()
        if owns_ray:
            ray.shutdown()


def probe_remotes(targets: list[PolicyTarget], frame: pd.DataFrame) -> None:
    """Every remote target answers one request before any episode counts: an unreachable server (past
    its retry budget), a refusal, or an answer that is not a chunk of the environment's actions stops
    the run here, before anything is written, with EvalConfigError naming the server and what it sent."""
    from gauntlet.envs.tasks import get_task
    from gauntlet.platform.eval.openpi import RemoteAnswerError, RemoteContractError, probe
    from gauntlet.policies.remote import RemotePolicyError

    prompt = get_task(str(frame["task"].iloc[0])).instruction  # what the first episodes will send
    for target in targets:
        if target.kind != "remote" or target.remote is None:
            continue
        print(f"[eval] probing {target.url} (retry budget {target.remote.connect_s:.0f} s)", flush=True)
        try:
            contract = probe(target.url, target.remote, prompt)
        except (RemotePolicyError, RemoteContractError, RemoteAnswerError) as exc:
            raise EvalConfigError(f"{target.label}: {exc}") from None
        sent = ", ".join(f"{k} {list(v.shape)}" for k, v in contract.spec.items())
        origin = "its declared spec" if contract.declared else "no spec declared: openpi's LIBERO keys"
        replan = f"; replanning every {target.replan_steps} steps" if target.replan_steps else ""
        print(f"[eval] {target.label}: {origin} ({sent}); actions (H, {contract.action_dim}){replan}", flush=True)


def _record_missing_outcomes(cfg: EvalConfig, scenes: dict[str, dict[str, Any]], targets: list[PolicyTarget],
                              version: str, store: ResultsStore, status: StatusLine) -> None:
    """--record-video: replays, with recording, an episode of each outcome a group's videos lack."""
    if not cfg.record_video:
        return
    from gauntlet.platform.eval.dispatch import Dispatcher
    from gauntlet.platform.eval.video import replay_items

    items = replay_items(cfg, store.read(), Path(cfg.out))
    if items:
        print(f"[eval] recording {len(items)} more episode(s) so each group's videos show both outcomes",
              flush=True)
        Dispatcher(cfg, scenes, targets, version, store, status, replay=True).run(items)


def _finish(store: ResultsStore, status: StatusLine, summary: dict[str, Any]) -> dict[str, Any]:
    """Folds the results, writes the final status with its per-policy summary; `problems` in the
    summary name every policy without a usable result (the command then exits 1)."""
    store.compact()
    final = status.finish(policy_outcomes(store.read()))
    summary["problems"] = final.problems
    return summary


def _start_run(cfg: EvalConfig, frame: pd.DataFrame, targets: list[PolicyTarget], store: ResultsStore,
               version: str) -> tuple[WorkPlan, dict[str, dict[str, Any]], StatusLine]:
    """Plans the run, records the pre-flight skips and prints what is about to happen."""
    scenes = scene_records(frame)
    plan = plan_work(cfg, scenes, targets, store.done_keys(), version)
    recorded = mark_recorded(cfg, scenes, plan.pending)
    tracker = open_tracker(cfg.report_to, cfg.out, name=cfg.effective_run_id, job_type="eval", config=asdict(cfg))
    status = StatusLine(Path(cfg.out), plan.total, plan.done, tracker)
    if plan.skip_rows:
        store.write(plan.skip_rows)
        for row in plan.skip_rows:
            status.add(row)
        print(f"[eval] pre-flight: {len(plan.skip_rows)} episodes skipped (scenes incompatible with this code)",
              flush=True)
    print(f"[eval] run {cfg.effective_run_id}: {len(scenes)} scenes x {len(targets)} policies x {cfg.trials} "
          f"trials = {plan.total} episodes; {plan.done} already done, {len(plan.pending)} to run on "
          f"{cfg.actors} actors x {cfg.envs_per_actor} envs", flush=True)
    if recorded:
        print(f"[eval] recording {recorded} episode(s) as video ({Path(cfg.out) / 'videos'})", flush=True)
    local = [t.label for t in targets if t.kind == "local"]
    if local:  # no Serve replica, hence no `serving` stats, for these
        print(f"[eval] {', '.join(local)}: in-process in each rollout actor (deploy=NAME serves it instead)",
              flush=True)
    status.emit(force=True)
    return plan, scenes, status


def eval_outstanding(cfg: EvalConfig) -> int:
    """The most observations this eval's own actors can have waiting at one replica of a policy.

    An actor holds envs_per_actor + QUEUED_PER_ACTOR items, and each item asks for one chunk at a time
    (an episode waits for its answer before it asks again); all of them may reach one replica (one
    replica, or session affinity for a policy with per-episode memory). Counting the item that waits
    for a seat keeps the bound true however seats hand over."""
    return cfg.actors * (cfg.envs_per_actor + QUEUED_PER_ACTOR)


def deployed_specs(deploy: list[PolicyServing], cfg: EvalConfig) -> list[PolicyServing]:
    """The serving specs as this eval deploys them: SERVE_REPLICA_CPUS each, and a replica queue
    (`max_queued`) that holds everything the eval's actors can send at once. The app is reached
    only by these actors, so a full queue could only turn away the eval's own requests: a large eval
    (16 actors x 8 envs) past the batcher's default bound would spend its retry budget backing off
    and skip episodes as `PolicyUnavailableError` where a longer queue just waits."""
    need = eval_outstanding(cfg)
    return [replace(s, num_cpus=SERVE_REPLICA_CPUS,
                    max_queued=max(s.max_queued or default_max_queued(s.max_batch_size), need)) for s in deploy]


def _deploy(deploy: list[PolicyServing], cfg: EvalConfig) -> None:
    if not deploy:
        return
    from ray import serve

    from gauntlet.deployments.app import build_app

    print(f"[eval] deploying {', '.join(s.ref.name for s in deploy)} on Serve", flush=True)
    serve.run(build_app(deployed_specs(deploy, cfg)), name=EVAL_APP, route_prefix=None)


def _serving_stats(deploy: list[PolicyServing]) -> dict[str, dict[str, Any]]:
    from ray import serve

    return {s.ref.name: serve.get_deployment_handle(deployment_name(s.ref.name), app_name=EVAL_APP)
            .get_stats.remote().result() for s in deploy}


def _undeploy() -> None:
    from ray import serve

    try:
        serve.delete(EVAL_APP)
    except Exception as exc:  # noqa: BLE001 - never hide the error that got us here
        print(f"[eval] could not delete Serve app {EVAL_APP!r}: {exc}", file=sys.stderr, flush=True)


class UnusableResultsError(RuntimeError):
    """The run finished but some policy's results cannot be used (its PROBLEM lines say why)."""


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalConfig, argv, prog="gauntlet eval", description=EvalConfig.__doc__)

    def work() -> None:
        summary = run_eval(cfg)
        print(f"[eval] finished: {json.dumps(summary)}", flush=True)
        if summary["problems"]:
            raise UnusableResultsError(f"{len(summary['problems'])} policy result(s) unusable; see the PROBLEM "
                                       f"lines above and {Path(cfg.out) / 'status.json'}")

    # ValueError: e.g. an unknown policy name; EvalRunError: the run could not go on.
    return run_command("gauntlet eval", work, {UnusableResultsError: 1, EvalConfigError: 2, ValueError: 2,
                                               EvalRunError: 2})


if __name__ == "__main__":
    sys.exit(main())
