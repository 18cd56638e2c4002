"""`gauntlet eval` / `python -m gauntlet.platform.eval`: policies x scenes x trials on Ray.

Pre-flight first (fingerprints: mismatched scenes are written as skipped and never sent), then
rollout actors pull work items from this driver one at a time, so a slow scene never idles the
others. Finished episodes go to the results store in small batches; `--resume` runs only the keys
that are missing. A dead actor is replaced and its in-flight items go back to the queue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gauntlet.platform.eval.status import RUN_MANIFEST, SERVING_STATS_FILE, STATUS_FILE
from gauntlet.runtime.config_args import as_tuple, option, parse_config

SCENE_FILTERS = ("tasks", "variants", "error_types", "categories")  # EvalConfig fields that select scenes


class EvalConfigError(ValueError):
    """Bad input found before any work starts."""


@dataclass(frozen=True)
class EvalConfig:
    """Evaluates policies over a scene database on Ray (RAY_ADDRESS, else an embedded local Ray)."""

    scenes: str = option(help="scene database directory")
    policy: tuple[str, ...] = option(help="NAME[=CHECKPOINT] (deployed on Serve by this job; vla=BASE@ADAPTER_DIR "
                                          "for a LoRA adapter on that base), "
                                          "remote=URL (ws:// or http:// endpoint), or serve=NAME "
                                          "(an already running `gauntlet serve` app); repeatable")
    out: str = option(help="run directory (results, status, report)")
    trials: int = option(1, help="trials per scene and policy")
    actors: int = option(2, help="rollout actors")
    horizon: int = option(300, help="steps per episode")
    resume: bool = option(False, help="continue the run in --out: only missing episodes run")
    tasks: tuple[str, ...] = option((), help="only these tasks")
    variants: tuple[str, ...] = option((), help="only these variants")
    error_types: tuple[str, ...] = option((), help="only these error types")
    categories: tuple[str, ...] = option((), help="only these categories")
    limit: int = option(0, help="at most this many scenes (0 = all), after filtering, in id order")
    max_batch_size: int = option(32, help="Serve batch size for deployed policies")
    batch_wait_timeout_s: float = option(0.005, help="Serve batch wait for deployed policies")
    replicas: int = option(1, help="Serve replicas per deployed policy")
    vla_size: str = option("tiny", help="VLA preset for `vla` without a checkpoint")
    actor_cpus: float = option(1.0, help="CPUs reserved per rollout actor")
    actor_resource: str = option("", help="custom Ray resource each actor needs one unit of "
                                          "(pins rollouts to the nodes that offer it)")
    write_every: int = option(8, help="episodes per results part file")
    ping_timeout_s: float = option(30.0, help="an actor that does not answer a liveness ping for this "
                                              "long is treated as dead and its items re-queued")
    run_id: str = option("", help="run id (default: derived from the run directory name)")

    def __post_init__(self) -> None:
        for name in SCENE_FILTERS:
            object.__setattr__(self, name, as_tuple(getattr(self, name)))
        for name in ("trials", "actors", "horizon", "write_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.policy:
            raise ValueError("policy: name at least one policy")

    @property
    def effective_run_id(self) -> str:
        return self.run_id or Path(self.out).resolve().name

    def identity(self) -> dict[str, Any]:
        """What must match for --resume to continue a run (not actors, batch knobs, etc.)."""
        keys = ("scenes", "policy", "trials", "horizon", "tasks", "variants", "error_types", "categories",
                "limit", "vla_size")
        out = {k: getattr(self, k) for k in keys}
        for name in SCENE_FILTERS:  # recorded as the comma-joined text earlier runs wrote
            out[name] = ",".join(out[name])
        out["scenes"] = str(Path(self.scenes).resolve())
        out["policy"] = list(self.policy)
        out["run_id"] = self.effective_run_id
        return out


def code_version() -> str:
    from gauntlet import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def select_scenes(cfg: EvalConfig) -> Any:
    """The filtered metadata frame (with compatibility columns). Raises EvalConfigError early."""
    from gauntlet.envs.errors import GauntletEnvError
    from gauntlet.envs.scene_check import compatibility
    from gauntlet.envs.scene_db import SceneDB

    try:
        db = SceneDB.open(cfg.scenes)
        frame = db.metadata()
    except GauntletEnvError as exc:
        raise EvalConfigError(str(exc)) from None
    if frame.empty:
        raise EvalConfigError(f"{cfg.scenes}: the scene database is empty")
    for column, wanted in (("task", cfg.tasks), ("variant", cfg.variants), ("error_type", cfg.error_types),
                           ("category", cfg.categories)):
        values = set(wanted)
        if values:
            unknown = values - set(frame[column])
            if unknown == values:
                raise EvalConfigError(f"--{column.replace('_', '-')}s {sorted(values)} select no scenes "
                                      f"(database has {sorted(set(frame[column]))})")
            frame = frame[frame[column].isin(values)]
    if frame.empty:
        raise EvalConfigError("the filters select no scenes")
    frame = frame.sort_values("scene_id")
    if cfg.limit:
        frame = frame.head(cfg.limit)
    sub = _SubsetDB(db, frame)
    return db, compatibility(sub)


class _SubsetDB:
    """A SceneDB view restricted to some rows (so pre-flight only builds the envs it needs)."""

    def __init__(self, db: Any, frame: Any):
        self._db = db
        self._frame = frame.reset_index(drop=True)
        self.root = db.root

    def metadata(self) -> Any:
        return self._frame

    def arrays_path(self, scene_id: str) -> Path:
        return self._db.arrays_path(scene_id)


def policy_targets(cfg: EvalConfig, app: str) -> tuple[list, list]:
    """(targets for the actors, serving specs this job must deploy).

    `vla=BASE@ADAPTER_DIR` evaluates a LoRA adapter: the base is deployed once, with the adapter's
    parent directory as its adapters directory, and requests name the adapter (Serve multiplexing),
    so `--policy vla=BASE --policy vla=BASE@adapters/d1` compares a base and its fine-tune on one
    replica. The adapter's label is `vla@d1`.
    """
    from dataclasses import replace

    from gauntlet.deployments.app import specs_from_names
    from gauntlet.platform.eval.sources import PolicyTarget
    from gauntlet.policies.registry import PolicyRef

    targets, seen = [], set()
    deploy: dict[str, Any] = {}  # policy name -> spec (one deployment per policy name)
    for text in cfg.policy:
        kind, _, rest = text.partition("=")
        if kind == "remote":
            if not rest.startswith(("ws://", "wss://", "http://", "https://")):
                raise EvalConfigError(f"remote={rest!r}: give a ws:// or http:// URL")
            label = f"remote:{rest}"
            targets.append(PolicyTarget(label=label, kind="remote", url=rest))
        elif kind == "serve":
            name, _, adapter = rest.partition("@")
            PolicyRef.parse(name)
            label = rest
            targets.append(PolicyTarget(label=label, kind="serve", app="gauntlet", deployment=f"policy-{name}",
                                        adapter=adapter))
        else:
            base_text, _, adapter_path = text.partition("@")
            try:
                spec = specs_from_names([base_text], replicas=cfg.replicas, max_batch_size=cfg.max_batch_size,
                                        batch_wait_timeout_s=cfg.batch_wait_timeout_s, vla_size=cfg.vla_size)[0]
            except ValueError as exc:
                raise EvalConfigError(str(exc)) from None
            if spec.ref.checkpoint and not Path(spec.ref.checkpoint).exists():
                raise EvalConfigError(f"{text}: checkpoint {spec.ref.checkpoint} does not exist")
            adapter = ""
            if adapter_path:
                adapter_dir = Path(adapter_path).resolve()
                if spec.ref.name != "vla":
                    raise EvalConfigError(f"{text}: adapters are for the vla policy")
                if not (adapter_dir / "config.json").is_file():
                    raise EvalConfigError(f"{text}: {adapter_path} is not an adapter checkpoint directory")
                adapter = adapter_dir.name
                spec = replace(spec, adapters_dir=str(adapter_dir.parent))
            previous = deploy.get(spec.ref.name)
            if previous is not None:
                if previous.ref != spec.ref:
                    raise EvalConfigError(f"{text}: policy {spec.ref.name!r} is already deployed from "
                                          f"{previous.ref.checkpoint or 'a fresh preset'}; one base per policy name")
                if spec.adapters_dir and previous.adapters_dir and spec.adapters_dir != previous.adapters_dir:
                    raise EvalConfigError(f"{text}: adapters of one base must share a parent directory "
                                          f"({previous.adapters_dir} vs {spec.adapters_dir})")
                spec = replace(previous, adapters_dir=previous.adapters_dir or spec.adapters_dir)
            deploy[spec.ref.name] = spec
            label = f"{spec.ref.name}@{adapter}" if adapter else spec.ref.name
            targets.append(PolicyTarget(label=label, kind="serve", app=app, deployment=f"policy-{spec.ref.name}",
                                        adapter=adapter))
        if label in seen:
            raise EvalConfigError(f"policy {label!r} is named twice")
        seen.add(label)
    return targets, list(deploy.values())


def prepare_run_dir(cfg: EvalConfig) -> Path:
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


class StatusLine:
    """One unbuffered progress line per update, mirrored into RUN/status.json."""

    def __init__(self, run_dir: Path, total: int, already: int):
        self.path = run_dir / STATUS_FILE
        self.total = total
        self.done = already
        self.started_with = already
        self.skipped = 0
        self.successes = 0
        self.ran = 0
        self.start = time.monotonic()
        self._last = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.done += 1
        if row["skipped"]:
            self.skipped += 1
        else:
            self.ran += 1
            self.successes += int(row["success"])

    def emit(self, force: bool = False, state: str = "running") -> None:
        now = time.monotonic()
        changed = self.done != getattr(self, "_last_done", -1)
        if not force and (now - self._last < 2.0 or (not changed and now - self._last < 30.0)):
            return
        self._last = now
        self._last_done = self.done
        elapsed = now - self.start
        new = self.done - self.started_with
        rate = new / elapsed * 60 if elapsed > 0 else 0.0
        eta_s = (self.total - self.done) / (rate / 60) if rate > 0 else float("inf")
        sr = self.successes / self.ran if self.ran else float("nan")
        from gauntlet.runtime.progress import format_duration

        message = (f"[eval] {self.done}/{self.total} episodes, {self.skipped} skipped, success {sr:.1%} so far, "
                   f"{rate:.1f} episodes/min, ETA {format_duration(eta_s)}")
        print(message, flush=True)
        status = {"state": state, "done": self.done, "total": self.total, "skipped": self.skipped,
                  "success_rate": None if sr != sr else sr, "episodes_per_min": rate,
                  "eta_s": None if eta_s == float("inf") else eta_s, "elapsed_s": elapsed}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=2))
        os.replace(tmp, self.path)


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """The whole evaluation; returns a summary. Raises EvalConfigError before any work on bad input."""
    import ray

    from gauntlet.platform.eval.episode import WorkItem, skipped_row
    from gauntlet.platform.eval.results import ResultsStore
    from gauntlet.runtime.ray_session import start_ray

    db, frame = select_scenes(cfg)
    app = "gauntlet-eval"
    targets, deploy = policy_targets(cfg, app)
    run_dir = prepare_run_dir(cfg)
    run_id = cfg.effective_run_id
    version = code_version()
    store = ResultsStore(run_dir)
    done = store.done_keys()
    scenes = {r["scene_id"]: {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
              for r in frame.to_dict("records")}
    pending: deque = deque()
    skip_rows = []
    total = 0
    for scene_id, scene in scenes.items():
        for target in targets:
            for trial in range(cfg.trials):
                item = WorkItem(run_id, scene_id, target.label, trial, cfg.horizon)
                total += 1
                if item.key in done:
                    continue
                if not scene["compatible"]:
                    skip_rows.append(skipped_row(item, scene, scene["incompatible_reason"], "driver", version))
                else:
                    pending.append(item)
    status = StatusLine(run_dir, total, len(done))
    if skip_rows:
        store.write(skip_rows)
        for row in skip_rows:
            status.add(row)
        print(f"[eval] pre-flight: {len(skip_rows)} episodes skipped (scenes incompatible with this code)", flush=True)
    message = (f"[eval] run {run_id}: {len(scenes)} scenes x {len(targets)} policies x {cfg.trials} trials = {total} "
               f"episodes; {len(done)} already done, {len(pending)} to run on {cfg.actors} actors")
    print(message, flush=True)
    status.emit(force=True)
    if not pending:
        store.compact()
        status.emit(force=True, state="finished")
        return {"run_dir": str(run_dir), "total": total, "ran": 0, "skipped": len(skip_rows)}

    cpus = max(os.cpu_count() or 1, int(cfg.actors * cfg.actor_cpus) + len(deploy))
    owns_ray = start_ray("eval", num_cpus=cpus, log_to_driver=False)
    try:
        if deploy:
            from ray import serve

            from gauntlet.deployments.app import build_app

            print(f"[eval] deploying {', '.join(s.ref.name for s in deploy)} on Serve", flush=True)
            serve.run(build_app([_eval_spec(s) for s in deploy]), name=app, route_prefix=None)
        summary = _drive(cfg, db, scenes, targets, pending, store, status, version, run_dir)
        if deploy:
            # What the replicas saw (batch sizes etc.): the evidence that actors shared batches.
            summary["serving"] = {s.ref.name: serve.get_deployment_handle(f"policy-{s.ref.name}", app_name=app)
                                  .get_stats.remote().result() for s in deploy}
            (run_dir / SERVING_STATS_FILE).write_text(json.dumps(summary["serving"], indent=2))
        return summary
    finally:
        if deploy:
            from ray import serve

            try:
                serve.delete(app)
            except Exception as exc:  # noqa: BLE001 - never hide the error that got us here
                print(f"[eval] could not delete Serve app {app!r}: {exc}", file=sys.stderr, flush=True)
        if owns_ray:
            ray.shutdown()


def _eval_spec(spec: Any) -> Any:
    from dataclasses import replace

    return replace(spec, num_cpus=0.5)


def _drive(cfg: EvalConfig, db: Any, scenes: dict, targets: list, pending: deque, store: Any,
           status: StatusLine, version: str, run_dir: Path) -> dict[str, Any]:
    import ray

    from gauntlet.platform.eval.rollout_actor import RolloutActor

    shared_scenes = {k: v for k, v in scenes.items()}

    def new_actor() -> Any:
        resources = {cfg.actor_resource: 1} if cfg.actor_resource else None
        return RolloutActor.options(num_cpus=cfg.actor_cpus, max_restarts=0, resources=resources).remote(
            str(Path(cfg.scenes).resolve()), targets, shared_scenes, version)

    actors = {i: new_actor() for i in range(min(cfg.actors, len(pending)))}
    status.start = time.monotonic()  # rates from the first dispatch, not from Ray/Serve start-up
    in_flight: dict[Any, tuple[int, Any]] = {}  # ObjectRef -> (actor slot, item)
    starting = {slot: actor.ready.remote() for slot, actor in actors.items()}  # slot -> ready ping
    pings: dict[int, tuple[Any, float]] = {}  # busy slot -> (outstanding liveness ping, sent at)
    buffer: list[dict] = []
    ran = replaced = 0
    last_ping = time.monotonic()

    def fill() -> None:
        """Gives every started, idle actor its next item (work is pulled, one item per actor)."""
        busy = {s for s, _ in in_flight.values()}
        for slot, actor in actors.items():
            if pending and slot not in busy and slot not in starting:
                item = pending.popleft()
                in_flight[actor.run.remote(item)] = (slot, item)

    def replace(slot: int, why: str) -> None:
        nonlocal replaced
        # The actor (or its node) is gone: its items go back to the queue, the slot gets a new actor,
        # which receives work only once it has answered a ping (it may wait for resources).
        lost = [ref for ref, (s, _) in in_flight.items() if s == slot]
        for ref in lost:
            pending.appendleft(in_flight.pop(ref)[1])
        replaced += 1
        pings.pop(slot, None)
        print(f"[eval] actor {slot} lost ({why}); re-queued {len(lost)} item(s), starting a replacement", flush=True)
        try:
            ray.kill(actors[slot], no_restart=True)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        actors[slot] = new_actor()
        starting[slot] = actors[slot].ready.remote()

    while in_flight or pending:
        for slot, ref in list(starting.items()):
            done, _ = ray.wait([ref], timeout=0)
            if done:
                del starting[slot]
                try:
                    ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - could not even start: try again
                    replace(slot, f"failed to start: {type(exc).__name__}")
        fill()
        if not in_flight:
            time.sleep(0.5)  # every actor is still starting
            continue
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=2.0)
        for ref in ready:
            if ref not in in_flight:
                continue
            slot, item = in_flight[ref]
            try:
                row = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError) as exc:
                replace(slot, type(exc).__name__)
                continue
            in_flight.pop(ref)
            buffer.append(row)
            status.add(row)
            ran += 1
            if len(buffer) >= cfg.write_every:
                store.write(buffer)
                buffer = []
        now = time.monotonic()
        if now - last_ping > cfg.ping_timeout_s / 3:
            # Liveness: a node can vanish without its tasks failing promptly; a ping that stays
            # unanswered for ping_timeout_s marks the actor dead.
            last_ping = now
            for slot in {s for s, _ in in_flight.values()}:
                ref, sent = pings.get(slot, (None, now))
                if ref is None:
                    pings[slot] = (actors[slot].ready.remote(), now)
                    continue
                done, _ = ray.wait([ref], timeout=0)
                if done:
                    try:
                        ray.get(ref)
                        pings.pop(slot)
                    except Exception as exc:  # noqa: BLE001
                        replace(slot, f"ping failed: {type(exc).__name__}")
                elif now - sent > cfg.ping_timeout_s:
                    replace(slot, f"no answer to a ping for {cfg.ping_timeout_s:.0f} s")
        status.emit()
    store.write(buffer)
    store.compact()
    status.emit(force=True, state="finished")
    for actor in actors.values():
        ray.kill(actor)
    return {"run_dir": str(run_dir), "total": status.total, "ran": ran, "skipped": status.skipped,
            "actors_replaced": replaced, "success_rate": status.successes / status.ran if status.ran else None}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(EvalConfig, argv, prog="gauntlet eval", description=EvalConfig.__doc__)
    try:
        summary = run_eval(cfg)
    except (EvalConfigError, ValueError) as exc:  # ValueError: e.g. UnknownPolicyError from parsing
        print(f"gauntlet eval: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"[eval] finished: {json.dumps(summary)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
