"""What the dataset-writing sub-commands (`data collect`, `data import-hdf5`) share: their exit path.

Each writes a dataset, then says what it wrote and what to run next; a DatasetError (a bad input or
an unusable result, its message naming the file and what to do) exits 1 with that message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gauntlet.data.dataset_reader import describe, open_dataset
from gauntlet.data.dataset_schema import DatasetError
from gauntlet.runtime.config_args import run_command


def run_dataset_command(prog: str, tag: str, write: Callable[[], Path]) -> int:
    """Runs `write()` (which returns the new dataset's directory) as the command `prog`; its exit status.

    `tag` prefixes the log lines (e.g. "data collect").
    """

    def work() -> int:
        out = write()
        print(f"[{tag}] wrote {describe(open_dataset(out))}", flush=True)
        print(f"[{tag}] next: gauntlet data stats {out}", flush=True)
        return 0

    return run_command(prog, work, {DatasetError: 1})
