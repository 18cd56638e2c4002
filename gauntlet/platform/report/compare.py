"""`gauntlet report compare RUN_A RUN_B [--out DIR]`: two evaluation runs compared episode by episode.

Two runs of different policies (or one policy before and after a fine-tune) on the same scenes and
seeds hold *paired* outcomes: the same episode start, once per run. The paired test uses that and is
stronger than comparing two independent rates. An episode is the same in both runs when its
PAIR_KEY is: scene id, the scene's seed, trial and the policy's seed. Skipped rows never ran, so they
pair with nothing; they are counted. Runs whose scenes differ are compared on their intersection,
and every row of either run that found no partner is counted as left out.

A run holding several policies: `--policy-a/--policy-b` choose one label on each side; without them,
two runs holding the same labels are compared label by label, and a run with several labels whose
choice is not obvious is an error naming the flag. Policy labels may differ between the runs.

Written into OUT (default RUN_A/report/compare-<RUN_B's name>/):

- compare.csv: per policy pair, overall, per origin and per task x error_type x origin: pairs, the
  four outcome counts (both, a_only, b_only, neither), each side's rate, the paired difference
  A - B with Newcombe's paired interval, and McNemar's exact p (stats.py)
- coverage.csv: per policy pair, each run's rows, skipped rows and rows left out (no partner)
- pairs.csv: every paired episode with both outcomes
- compare.html: the same, one self-contained page
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.platform.report.html import page, table_html
from gauntlet.platform.report.load import ReportInputError, ReportWriteError, load_results
from gauntlet.platform.report.stats import mcnemar_exact, paired_difference_interval
from gauntlet.platform.report.tables import ALL
from gauntlet.runtime.atomic_files import atomic_write
from gauntlet.runtime.config_args import option, parse_config, run_command
from gauntlet.runtime.tracking import REPORT_TO, REPORT_TO_HELP, TrackingError, open_tracker

if TYPE_CHECKING:
    import pandas as pd

PROG = "gauntlet report compare"
PAIR_KEY = ("scene_id", "scene_seed", "trial", "policy_seed")  # the same episode start in both runs
CELL = ("task", "error_type", "origin")  # the finest level the comparison is reported at
OUTCOMES = ("both", "a_only", "b_only", "neither")  # success in A and B, A only, B only, neither
COMPARE_COLUMNS = ["policy_a", "policy_b", *CELL, "pairs", *OUTCOMES, "rate_a", "rate_b", "diff", "diff_ci_low",
                   "diff_ci_high", "mcnemar_p"]
COVERAGE_COLUMNS = ["policy_a", "policy_b", "pairs", *(f"{c}_{side}" for side in "ab"
                                                       for c in ("rows", "skipped", "left_out"))]


class CompareConfigError(ValueError):
    """Bad input: a run that cannot be read, or flags that do not say which policies to compare (the
    message names the run or the flag)."""


@dataclass(frozen=True)
class CompareConfig:
    """Flags of `gauntlet report compare`."""

    # the run whose successes count positive in the difference A - B
    run_a: str = option(help="evaluation run A (RUN directory of `gauntlet eval --out RUN`)", positional=True)
    # the run it is compared with
    run_b: str = option(help="evaluation run B", positional=True)
    # where the files go; empty: RUN_A/report/compare-<RUN_B's name>
    out: str = option("", help="output directory (default: RUN_A/report/compare-<name of RUN_B>)")
    # policy label of run A to compare; empty: the run's only label, or label by label (see the docstring)
    policy_a: str = option("", help="policy label in RUN_A (needed when RUN_A holds several and the runs' "
                                    "labels differ)")
    # policy label of run B to compare
    policy_b: str = option("", help="policy label in RUN_B (needed when RUN_B holds several and the runs' "
                                    "labels differ)")
    # confidence level of the paired intervals
    confidence: float = option(0.95, help="confidence level of the paired intervals")
    # experiment tracker the tables are logged to
    report_to: str = option("none", help=REPORT_TO_HELP.replace("RUN/", "OUT/"), choices=REPORT_TO)

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"--confidence must be in (0, 1), got {self.confidence}")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run_a) / "report" / f"compare-{Path(self.run_b).name}"


def policy_pairs(labels_a: list[str], labels_b: list[str], policy_a: str = "", policy_b: str = "") -> list[
        tuple[str, str]]:
    """Which label of A is compared with which of B (see the module docstring); raises
    CompareConfigError naming the flag when a label is unknown or the choice is ambiguous."""
    for flag, label, labels, run in (("--policy-a", policy_a, labels_a, "RUN_A"),
                                     ("--policy-b", policy_b, labels_b, "RUN_B")):
        if label and label not in labels:
            raise CompareConfigError(f"{flag} {label!r} is not a policy of {run} (it holds {', '.join(labels)})")
    if not policy_a and not policy_b and len(labels_a) > 1 and labels_a == labels_b:
        return [(label, label) for label in labels_a]
    chosen = []
    for flag, label, labels, run in (("--policy-a", policy_a, labels_a, "RUN_A"),
                                     ("--policy-b", policy_b, labels_b, "RUN_B")):
        if not label and len(labels) > 1:
            raise CompareConfigError(f"{run} holds policies {', '.join(labels)}: choose one with {flag}")
        chosen.append(label or labels[0])
    return [(chosen[0], chosen[1])]


def pair_rows(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """(one row per paired episode: PAIR_KEY, CELL (A's scene), success_a, success_b; the coverage
    counts). `a` and `b` are one policy's rows of each run; a key held twice by one run is an error."""
    counts: dict[str, int] = {}
    ran = {}
    for side, rows in (("a", a), ("b", b)):
        done = rows[~rows["skipped"]]
        twice = done[done.duplicated(subset=list(PAIR_KEY), keep=False)]
        if len(twice):
            first = twice.iloc[0]
            raise ReportInputError(
                f"run {side.upper()} holds {len(twice)} rows of policy {first['policy']!r} for the same episodes "
                f"(e.g. scene {first['scene_id']!r} trial {first['trial']}; run ids "
                f"{', '.join(sorted(map(str, twice['run_id'].unique())))}): compare runs with one run id each")
        counts[f"rows_{side}"], counts[f"skipped_{side}"] = len(rows), int(rows["skipped"].sum())
        ran[side] = done[[*PAIR_KEY, *CELL, "success"]].rename(columns={"success": f"success_{side}"})
    pairs = ran["a"].merge(ran["b"].drop(columns=list(CELL)), on=list(PAIR_KEY), how="inner", validate="1:1")
    counts["pairs"] = len(pairs)
    for side in "ab":
        counts[f"left_out_{side}"] = len(ran[side]) - len(pairs)
    return pairs.sort_values(list(PAIR_KEY), kind="stable").reset_index(drop=True), counts


def paired_stats(pairs: pd.DataFrame, confidence: float = 0.95) -> dict[str, Any]:
    """The outcome counts, each side's rate, the paired difference A - B with its interval, McNemar's p."""
    a, b = pairs["success_a"].astype(bool), pairs["success_b"].astype(bool)
    counts = {"both": int((a & b).sum()), "a_only": int((a & ~b).sum()), "b_only": int((~a & b).sum()),
              "neither": int((~a & ~b).sum())}
    n = len(pairs)
    diff, low, high = paired_difference_interval(counts["a_only"], counts["b_only"], counts["both"],
                                                 counts["neither"], confidence)
    return {"pairs": n, **counts,
            "rate_a": (counts["both"] + counts["a_only"]) / n if n else float("nan"),
            "rate_b": (counts["both"] + counts["b_only"]) / n if n else float("nan"),
            "diff": diff, "diff_ci_low": low, "diff_ci_high": high,
            "mcnemar_p": mcnemar_exact(counts["a_only"], counts["b_only"])}


def compare_table(pairs: pd.DataFrame, policy_a: str, policy_b: str, confidence: float = 0.95) -> pd.DataFrame:
    """Overall (task, error_type, origin all `all`), per origin, then per task x error_type x origin."""
    import pandas as pd

    rows = [{"task": ALL, "error_type": ALL, "origin": ALL, **paired_stats(pairs, confidence)}]
    for origin, part in pairs.groupby("origin", sort=True):
        rows.append({"task": ALL, "error_type": ALL, "origin": origin, **paired_stats(part, confidence)})
    for keys, part in pairs.groupby(list(CELL), sort=True):
        rows.append({**dict(zip(CELL, keys, strict=True)), **paired_stats(part, confidence)})
    frame = pd.DataFrame(rows).assign(policy_a=policy_a, policy_b=policy_b)
    return frame[COMPARE_COLUMNS]


def build_comparison(config: CompareConfig) -> dict[str, Any]:
    """Every table of the comparison: {"tables": {"compare", "coverage", "pairs"}, "notes", ...}.
    Raises CompareConfigError (bad flags, or a run that cannot be read) or ReportInputError (nothing pairs)."""
    import pandas as pd

    try:  # a run that is missing or unreadable is bad input, like every other (exit 2)
        a, b = load_results(config.run_a), load_results(config.run_b)
    except ReportInputError as exc:
        raise CompareConfigError(str(exc)) from None
    labels_a, labels_b = sorted(a["policy"].unique()), sorted(b["policy"].unique())
    compared, coverage, paired = [], [], []
    for policy_a, policy_b in policy_pairs(labels_a, labels_b, config.policy_a, config.policy_b):
        pairs, counts = pair_rows(a[a["policy"] == policy_a], b[b["policy"] == policy_b])
        coverage.append({"policy_a": policy_a, "policy_b": policy_b, **counts})
        if len(pairs):
            compared.append(compare_table(pairs, policy_a, policy_b, config.confidence))
            paired.append(pairs.assign(policy_a=policy_a, policy_b=policy_b))
    coverage_frame = pd.DataFrame(coverage)[COVERAGE_COLUMNS]
    if not compared:
        raise ReportInputError(f"no episode of {config.run_a} pairs with one of {config.run_b} (same scene, "
                               f"scene seed, trial and policy seed, both run): {_coverage_text(coverage_frame)}")
    notes = [f"{r.policy_a} vs {r.policy_b}: {_coverage_line(r)}" for r in coverage_frame.itertuples()
             if r.left_out_a or r.left_out_b or r.skipped_a or r.skipped_b]
    return {"run_a": config.run_a, "run_b": config.run_b, "confidence": config.confidence, "notes": notes,
            "tables": {"compare": pd.concat(compared, ignore_index=True), "coverage": coverage_frame,
                       "pairs": pd.concat(paired, ignore_index=True)}}


def _coverage_line(r: Any) -> str:
    return (f"{r.pairs} pairs; left out (no partner that ran): {r.left_out_a} of {r.rows_a} rows of A, "
            f"{r.left_out_b} of {r.rows_b} of B; skipped (excluded): {r.skipped_a} of A, {r.skipped_b} of B")


def _coverage_text(coverage: pd.DataFrame) -> str:
    return "; ".join(f"{r.policy_a} vs {r.policy_b}: {_coverage_line(r)}" for r in coverage.itertuples())


def _fmt(value: float, spec: str = "+.3f") -> str:
    return "n/a" if value != value else format(value, spec)  # NaN is the only value unequal to itself


def format_comparison(result: dict[str, Any]) -> str:
    """The printed table: one line per row of compare.csv, then the coverage and notes."""
    conf = f"{result['confidence']:.0%}"
    header = (f"{'policy A vs B':<28} {'task':<12} {'error_type':<20} {'origin':<10} {'pairs':>5} "
              f"{'A only':>6} {'B only':>6} {'rate A':>6} {'rate B':>6} {'A - B [' + conf + ' CI]':>26} {'p':>7}")
    lines = [f"paired comparison: A = {result['run_a']}, B = {result['run_b']} (McNemar exact p; "
             f"Newcombe's paired {conf} interval)", header, "-" * len(header)]
    for r in result["tables"]["compare"].itertuples():
        ci = f"{_fmt(r.diff)} [{_fmt(r.diff_ci_low)}, {_fmt(r.diff_ci_high)}]"
        lines.append(f"{r.policy_a + ' vs ' + r.policy_b:<28} {r.task:<12} {r.error_type:<20} {r.origin:<10} "
                     f"{r.pairs:>5} {r.a_only:>6} {r.b_only:>6} {_fmt(r.rate_a, '.3f'):>6} "
                     f"{_fmt(r.rate_b, '.3f'):>6} {ci:>26} {_fmt(r.mcnemar_p, '.3g'):>7}")
    lines += ["", "coverage: " + _coverage_text(result["tables"]["coverage"])]
    return "\n".join(lines)


def render_comparison_html(result: dict[str, Any]) -> str:
    """compare.html: the tables and notes on one self-contained page (the report's style)."""
    conf = f"{result['confidence']:.0%}"
    meta = [("run A", result["run_a"]), ("run B", result["run_b"]), ("confidence", conf)]
    sections = [
        ("Paired comparison", f"Episodes paired by scene, scene seed, trial and policy seed. <code>a_only</code>"
                              f" / <code>b_only</code>: pairs only A / only B solved (the discordant pairs); "
                              f"<code>diff</code> = rate A - rate B with Newcombe's paired {conf} interval "
                              "(hybrid score, method 10); <code>mcnemar_p</code>: McNemar's exact two-sided p. "
                              f"<code>{ALL}</code> rows pool the rows below them.",
         result["tables"]["compare"]),
        ("Coverage", "Rows of each run, skipped rows (never ran: excluded) and rows left out (ran, but the other "
                     "run has no episode with the same key that ran).", result["tables"]["coverage"]),
    ]
    return page(f"gauntlet compare: {Path(result['run_a']).name} vs {Path(result['run_b']).name}", meta,
                result["notes"], [(title, text, table_html(frame)) for title, text, frame in sections])


def write_comparison(result: dict[str, Any], out: Path | str) -> dict[str, Path]:
    """compare.csv, coverage.csv, pairs.csv and compare.html into `out`; returns {name: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in result["tables"].items():  # each file whole or not at all, as the HTML
        paths[name] = out / f"{name}.csv"
        atomic_write(paths[name], lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
    paths["html"] = out / "compare.html"
    text = render_comparison_html(result)
    atomic_write(paths["html"], lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return paths


def log_comparison(result: dict[str, Any], config: CompareConfig) -> None:
    """The tables to the tracker --report-to names; the overall row of each policy pair as scalars."""
    tracker = open_tracker(config.report_to, config.out_dir, name=f"compare-{Path(config.run_a).name}-vs-"
                           f"{Path(config.run_b).name}", job_type="report-compare", config=asdict(config))
    try:
        for name in ("compare", "coverage"):
            tracker.log_table(f"compare/{name}", result["tables"][name].to_dict("records"))
        compare = result["tables"]["compare"]
        overall = compare[(compare["task"] == ALL) & (compare["origin"] == ALL)]
        for r in overall.to_dict("records"):
            prefix = f"compare/{r['policy_a']}_vs_{r['policy_b']}"
            tracker.log_scalars(0, {f"{prefix}/{k}": r[k] for k in ("pairs", "diff", "diff_ci_low",
                                                                     "diff_ci_high", "mcnemar_p")})
    finally:
        tracker.close()


def main(argv: list[str] | None = None) -> int:
    config = parse_config(CompareConfig, argv, PROG, __doc__.split("\n\n")[0])

    def work() -> int:
        result = build_comparison(config)
        try:
            paths = write_comparison(result, config.out_dir)
        except OSError as exc:
            raise ReportWriteError(f"cannot write the comparison into {config.out_dir}: {exc}") from exc
        log_comparison(result, config)
        print(format_comparison(result), flush=True)  # its coverage line says what the notes say
        print(f"[report] wrote {len(paths)} files into {config.out_dir}; open {paths['html']}", flush=True)
        return 0

    return run_command(PROG, work, {ReportInputError: 1, ReportWriteError: 1, CompareConfigError: 2,
                                    TrackingError: 2})


if __name__ == "__main__":
    sys.exit(main())
