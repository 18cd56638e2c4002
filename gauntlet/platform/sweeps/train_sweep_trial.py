"""One trial of `gauntlet sweep train`: the Tune function trainable and the record of its reports.

A trial is one `gauntlet train` run. Each of its Ray Train reports reaches Tune through
`TrialReports` (a `TuneReportCallback`), which numbers it (`report`, its place in the run's report
schedule, what ASHA's rungs count) and appends it to CKPT/train/reports.jsonl. That file, not Tune's
state, is the trial's history: `--resume` starts a fresh Tuner (nothing is unpickled from --out), and
each trial replays its recorded reports to it, so ASHA sees every trial's history again. A finished
trial replays all of them and trains nothing; a started one replays those up to its latest Ray Train
checkpoint and continues from that checkpoint; the sweep's table reads the same file.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from gauntlet.platform.train.config import RAY_RUN_NAME, TrainConfig
from gauntlet.platform.train.reporting import report_steps
from gauntlet.runtime.atomic_files import atomic_write

REPORTS_FILE = "reports.jsonl"  # CKPT/train/reports.jsonl: the trial's reports, one JSON object a line
REPORT = "report"  # a report's place in its run's schedule, from 1: ASHA's time attribute


def read_reports(train_dir: Path) -> list[dict[str, Any]]:
    """The trial's reports in step order, one per step: a report a restarted worker group made again
    (after its checkpoint) replaces the earlier one. [] before the first report."""
    path = Path(train_dir) / REPORTS_FILE
    if not path.is_file():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if isinstance(record, dict) and "step" in record:
            by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def _write_reports(train_dir: Path, records: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(Path(train_dir) / REPORTS_FILE, lambda tmp: Path(tmp).write_text(text))


def _make_callback(cfg: TrainConfig) -> Any:
    from ray.tune.integration.ray_train import TuneReportCallback

    class TrialReports(TuneReportCallback):
        """Numbers each report, records it, then hands it to Tune (runs on Ray Train's controller)."""

        def __init__(self, schedule: list[int], path: str):
            super().__init__()
            self.schedule, self.path = schedule, path

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            first = dict(metrics[0])
            step = int(first.get("step", 0))
            first[REPORT] = sum(1 for s in self.schedule if s <= step)
            record = {k: v for k, v in first.items() if k != "steps"}
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=str) + "\n")
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return TrialReports(report_steps(cfg), str(cfg.train_dir / REPORTS_FILE))


def _replay(records: list[dict[str, Any]]) -> None:
    from ray import tune

    for record in records:
        tune.report(record)


def _checkpoint_step(train_dir: Path) -> int:
    from gauntlet.platform.train.driver import registered_checkpoint_steps

    steps = registered_checkpoint_steps(train_dir)
    return steps[-1] if steps else 0


def train_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: one `gauntlet train` run (see the module docstring for what a resumed
    sweep's trial does)."""
    from gauntlet.platform.train.driver import run_train

    cfg = TrainConfig(**config["point"]["train"])
    history = read_reports(cfg.train_dir)
    summary = cfg.train_dir / "summary.json"
    if summary.is_file():
        # Trained to the end before a killed driver recorded it: its reports again, training nothing.
        if not history:  # a run that recorded no reports (trained outside a sweep): its last one
            last = json.loads(summary.read_text())["metrics"]
            history = [{**{k: v for k, v in last.items() if k != "steps"}, REPORT: len(report_steps(cfg))}]
            _write_reports(cfg.train_dir, history)
        _replay(history)
        return
    started = (cfg.train_dir / "run.json").is_file()
    if started and not (cfg.train_dir / RAY_RUN_NAME).is_dir():
        shutil.rmtree(cfg.train_dir)  # stopped before Ray Train wrote anything: start over
        started, history = False, []
    if started:
        # Ray Train continues from its latest checkpoint: the reports after it are made again.
        upto = _checkpoint_step(cfg.train_dir)
        history = [r for r in history if int(r["step"]) <= upto]
        _write_reports(cfg.train_dir, history)
        _replay(history)
    run_train(dataclasses.replace(cfg, resume=started), callbacks=[_make_callback(cfg)])
