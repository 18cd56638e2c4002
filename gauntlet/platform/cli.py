"""The `gauntlet` console script: one entry point, sub-commands dispatched lazily.

Each sub-command lives in its own module with `main(argv) -> int`, so it is also runnable as
`python -m MODULE ...` (what `ray job submit` needs). Modules are imported only when their command
runs, which keeps `gauntlet --help` fast and free of JAX/torch/robosuite imports.
"""

from __future__ import annotations

import importlib
import sys

from gauntlet.runtime.config_args import run_command

# (words, module, one-line summary): the one list of sub-commands; `gauntlet --help` and dispatch read it.
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("demo",), "gauntlet.platform.demo", "run the main job on an embedded local Ray"),
    (("scenes", "generate"), "gauntlet.envs.scenes_cli", "build an error-recovery scene database"),
    (("scenes", "check"), "gauntlet.envs.scenes_cli", "pre-flight: which scenes match the current code"),
    (("scenes", "show"), "gauntlet.envs.scenes_cli", "print one scene's metadata"),
    (("scenes", "harvest"), "gauntlet.platform.eval.harvest", "failure scenes from a policy's own rollouts"),
    (("serve",), "gauntlet.deployments.serve_cli", "serve policies on Ray Serve (HTTP, gRPC, WebSocket)"),
    (("eval",), "gauntlet.platform.eval.driver", "evaluate policies over a scene database"),
    (("report",), "gauntlet.platform.report.build", "turn an evaluation run into tables, plots and HTML"),
    (("report", "compare"), "gauntlet.platform.report.compare", "paired comparison of two runs (McNemar, interval)"),
    (("data", "collect"), "gauntlet.data.collect", "record scripted-expert demonstrations"),
    (("data", "import-hdf5"), "gauntlet.data.import_hdf5", "import robomimic/MimicGen HDF5 demos"),
    (("data", "export-lerobot"), "gauntlet.data.lerobot_export", "export a dataset in LeRobot's v3.0 format"),
    (("data", "import-lerobot"), "gauntlet.data.lerobot_import", "import a LeRobot v3.0 dataset"),
    (("data", "stats"), "gauntlet.data.stats", "normalisation statistics of a dataset"),
    (("data", "merge"), "gauntlet.data.merge", "concatenate datasets (e.g. nominal + recovery demonstrations)"),
    (("train",), "gauntlet.platform.train.driver", "fine-tune a policy on Ray Train (LoRA or full)"),
    (("sweep", "fusion"), "gauntlet.fusion.sweep", "Ray Tune sweep over fusion methods"),
    (("sweep", "throughput"), "gauntlet.platform.sweeps.throughput", "Ray Tune throughput sweep"),
    (("sweep", "train"), "gauntlet.platform.sweeps.train_sweep", "Ray Tune over training configs, ASHA on val loss"),
]


def _usage() -> str:
    lines = ["usage: gauntlet COMMAND [ARGS...]", "", "commands:"]
    for words, _, summary in COMMANDS:
        lines.append(f"  {' '.join(words):<20} {summary}")
    lines.append("")
    lines.append("Run `gauntlet COMMAND --help` for a command's flags.")
    return "\n".join(lines)


class UnknownCommandError(ValueError):
    """Words that name no sub-command; the message lists them all."""


def _dispatch(argv: list[str]) -> int:
    """Runs the sub-command `argv` starts with; its exit status."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(), flush=True)
        return 0
    # Longest match first so `scenes generate` wins over a hypothetical `scenes`.
    for words, module, _ in sorted(COMMANDS, key=lambda c: -len(c[0])):
        if tuple(argv[: len(words)]) == words:
            mod = importlib.import_module(module)
            rest = argv[len(words):]
            if module == "gauntlet.envs.scenes_cli":
                rest = [words[1], *rest]  # scenes_cli dispatches its own verbs
            return int(mod.main(rest) or 0)
    raise UnknownCommandError(f"unknown command {' '.join(argv[:2])!r}\n\n{_usage()}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command("gauntlet", lambda: _dispatch(argv), {UnknownCommandError: 2})


if __name__ == "__main__":
    sys.exit(main())
