"""Experiment tracking: `--report-to tensorboard|wandb|none` on `gauntlet train`, `eval` and `sweep`.

One contract, `Tracker`: `log_config(dict)` once, `log_scalars(step, {tag: number})` as work goes on,
`log_table(name, rows)` for final tables, `close()`. `open_tracker(report_to, run_dir, ...)` picks the
implementation by name and imports its library only then, so `none` (the default) costs nothing and
a missing library is an error only for whoever asked for it. The logs live in the run directory:

- tensorboard: RUN_DIR/tensorboard/ (tensorboardX's writer; view with `tensorboard --logdir RUN_DIR`)
- wandb:       RUN_DIR/wandb/ (W&B's own run files). `WANDB_MODE` is honoured as W&B honours it; when
  it is unset and no API key is configured (`WANDB_API_KEY` or a netrc entry for the W&B host) the run
  is logged offline rather than failing on a login prompt, and `wandb sync` uploads it later.
  `WANDB_PROJECT` names the project (default "gauntlet").

Each entry point owns one tracker in its driver process (one writer per run, whatever the number of
workers or trials): values that are not finite numbers are left out of scalars, never an error.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

REPORT_TO = ("none", "tensorboard", "wandb")  # the --report-to choices
REPORT_TO_HELP = ("experiment tracking: tensorboard (RUN/tensorboard/), wandb (RUN/wandb/; offline when "
                  "WANDB_MODE=offline or no API key is configured) or none")
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
DEFAULT_WANDB_PROJECT = "gauntlet"


class TrackingError(ValueError):
    """The tracker asked for cannot start (its library is missing): a bad configuration, found before any
    work; the message says what to install."""


class Tracker(Protocol):
    """Where an entry point sends what researchers watch (see the module docstring)."""

    kind: str  # one of REPORT_TO

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def log_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: ...

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def close(self) -> None: ...


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of `values` as floats (bools, strings, None, NaN and inf are left out)."""
    out = {}
    for key, value in values.items():
        if value is None or isinstance(value, bool | str | bytes):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    return out


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with "/"-joined keys: {"knobs": {"actors": 2}} -> {"knobs/actors": 2}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


def _plain(value: Any) -> Any:
    """A table cell as JSON/markdown can hold it (NumPy scalars unwrapped, the rest as text)."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


class NullTracker:
    """--report-to none: every call does nothing."""

    kind = "none"

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def log_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        pass

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    """Event files in RUN_DIR/tensorboard/: scalars as scalars, config and tables as markdown text."""

    kind = "tensorboard"

    def __init__(self, run_dir: Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as exc:
            raise TrackingError(f"--report-to tensorboard needs tensorboardX ({exc}): pip install tensorboardX") from None
        self.logdir = Path(run_dir) / TENSORBOARD_DIR
        self._writer = SummaryWriter(logdir=str(self.logdir))
        self._tables = 0

    def log_config(self, config: Mapping[str, Any]) -> None:
        text = json.dumps({k: _plain(v) for k, v in flatten(config).items()}, indent=2, sort_keys=True)
        self._writer.add_text("config", f"```\n{text}\n```", global_step=0)
        self._writer.flush()

    def log_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for tag, value in numeric(scalars).items():
            self._writer.add_scalar(tag, value, global_step=int(step))
        # Flushed per call (a few scalars every few seconds): a run that dies keeps what it logged.
        self._writer.flush()

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(_plain(row.get(c, ""))) for c in columns) + " |" for row in rows]
        self._writer.add_text(name, "\n".join(lines), global_step=self._tables)
        self._tables += 1
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def wandb_mode() -> str:
    """WANDB_MODE when set; else online with an API key configured, offline without one."""
    mode = os.environ.get("WANDB_MODE", "").strip()
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        found = netrc.netrc().authenticators(host)
    except (OSError, netrc.NetrcParseError):
        found = None
    return "online" if found else "offline"


class WandbTracker:
    """A W&B run whose files live in RUN_DIR/wandb/ (see the module docstring for online/offline)."""

    kind = "wandb"

    def __init__(self, run_dir: Path, name: str, job_type: str):
        try:
            import wandb
        except ImportError as exc:
            raise TrackingError(f"--report-to wandb needs wandb ({exc}): pip install wandb") from None
        self._wandb = wandb
        self.mode = wandb_mode()
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        # console="off": the job's own unbuffered log stays the log; W&B gets the numbers, not stdout.
        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", DEFAULT_WANDB_PROJECT), name=name,
                               job_type=job_type, dir=str(run_dir), mode=self.mode, reinit="create_new",
                               settings=wandb.Settings(console="off", silent=True))
        self.run_path = Path(self._run.dir).parent  # RUN_DIR/wandb/<offline-run-...|run-...>
        self._step = 0
        self._closed = False

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._run.config.update({k: _plain(v) for k, v in flatten(config).items()}, allow_val_change=True)

    def log_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = numeric(scalars)
        # W&B drops a step lower than one already logged; callers log non-decreasing steps.
        self._step = max(self._step, int(step))
        if values:
            self._run.log(values, step=self._step)

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        data = [[_plain(row.get(c)) for c in columns] for row in rows]
        self._run.log({name: self._wandb.Table(columns=columns, data=data)}, step=self._step)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._run.finish()
        # finish() returns once the run is marked done, but W&B's service may still be writing the run's
        # local transaction log; teardown waits for it, so an offline run is complete (and `wandb sync`
        # sees everything) when close() returns. Each entry point holds one run, so nothing else is cut.
        self._wandb.teardown()
        if self.mode == "offline":
            print(f"[track] W&B run logged offline in {self.run_path}; upload it with `wandb sync {self.run_path}`",
                  flush=True)


def open_tracker(report_to: str, run_dir: Path | str, *, name: str, job_type: str,
                 config: Mapping[str, Any] | None = None) -> Tracker:
    """The tracker `report_to` names, logging into `run_dir`, with `config` logged when given.

    `name` names the run (W&B's run name), `job_type` what made it (train, eval, sweep-fusion, ...).
    Raises ValueError for an unknown name, TrackingError when its library is missing.
    """
    if report_to not in REPORT_TO:
        raise ValueError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    tracker: Tracker
    if report_to == "none":
        return NullTracker()
    if report_to == "tensorboard":
        tracker = TensorBoardTracker(Path(run_dir))
        where = f"{tracker.logdir} (view: tensorboard --logdir {tracker.logdir})"
    else:
        tracker = WandbTracker(Path(run_dir), name, job_type)
        where = f"{tracker.run_path} (W&B {tracker.mode})"
    print(f"[track] {job_type}: logging to {where}", flush=True)
    if config:
        tracker.log_config(config)
    return tracker


def read_tensorboard(logdir: Path | str) -> dict[str, Any]:
    """A TensorBoard log directory read back: {"scalars": {tag: [(step, value), ...]}, "texts": {tag:
    [str, ...]}}, through TensorBoard's own reader (for tests and notebooks; needs `tensorboard`)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags.get("scalars", [])}
    texts = {}
    for tag in tags.get("tensors", []):  # text summaries arrive as string tensors
        texts[tag.removesuffix("/text_summary")] = [
            b"".join(e.tensor_proto.string_val).decode("utf-8") for e in acc.Tensors(tag)]
    return {"scalars": scalars, "texts": texts}
