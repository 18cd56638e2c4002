"""The report as one self-contained HTML page: tables, notes and the plots embedded as data URIs."""

from __future__ import annotations

import base64
import html as html_lib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gauntlet.platform.report.gallery import gallery_html
from gauntlet.platform.report.load import run_fields
from gauntlet.platform.report.tables import ALL, recovery_gap_display

if TYPE_CHECKING:
    import pandas as pd

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.meta td { text-align: left; } .note { color: #8a4b00; }
.gallery td { text-align: center; vertical-align: top; } .ok { color: #1a7f37; } .fail { color: #b42318; }
"""


def _float_format(value: float) -> str:
    return f"{value:.3g}" if value != 0 and abs(value) < 1e-3 else f"{value:.3f}"


def table_html(frame: pd.DataFrame) -> str:
    """A table in the report's style (NaN as a dash, small numbers in 3 significant digits)."""
    return frame.to_html(index=False, float_format=_float_format, na_rep="–", border=0, escape=True)


def _head(title: str, meta_rows: list[tuple[str, Any]], notes: list[str]) -> list[str]:
    """The page up to its first section: title, the metadata table and the notes."""
    esc = html_lib.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>",
        '<table class="meta">' + "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>"
                                         for k, v in meta_rows) + "</table>",
    ]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f'<li class="note">{esc(n)}</li>' for n in notes) + "</ul>")
    return parts


def page(title: str, meta_rows: list[tuple[str, Any]], notes: list[str], sections: list[tuple[str, str, str]]) -> str:
    """A self-contained page in the report's style: `sections` are (heading, explanation HTML, body HTML)."""
    parts = _head(title, [*meta_rows, ("generated", datetime.now(UTC).isoformat(timespec="seconds"))], notes)
    for heading, text, body in sections:
        parts += [f"<h2>{html_lib.escape(heading)}</h2><p>{text}</p>", body]
    return "\n".join([*parts, "</body></html>"])


def _gap_section(gap: pd.DataFrame, conf: str) -> list[str]:
    """Nominal vs recovery success per policy and task, and the gap between them."""
    head = "<h2>Nominal vs recovery success (the recovery gap)</h2>"
    if gap.empty:
        return [head, "<p>No nominal scenes ran in this run. Generate them with <code>gauntlet scenes generate "
                      "--nominal</code> to see how much of each task a policy can do at all, next to how well it "
                      "recovers.</p>"]
    return [head, f"<p>Success on nominal scenes (the task's start state, nothing injected) next to success on "
                  f"error-recovery scenes, each with its {conf} Wilson interval; the gap is nominal minus recovery, "
                  f"with Newcombe's {conf} interval built from those two. <code>{ALL}</code> pools the tasks, whose "
                  "shares differ between the two sides: read the per-task rows first.</p>",
            table_html(recovery_gap_display(gap))]


def render_html(report: dict[str, Any], plots: list[Path]) -> str:
    """One self-contained page: no external scripts, styles or images (plots are data URIs)."""
    esc = html_lib.escape
    tables, cfg = report["tables"], run_fields(report["run_config"])
    run_id = str(cfg.get("run_id") or ", ".join(report["run_ids"]) or Path(report["run_dir"]).name)
    conf = f"{report['confidence']:.0%}"
    meta_rows = [("run directory", report["run_dir"]), ("episodes recorded", report["n_rows"]),
                 ("episodes skipped", report["n_skipped"]), ("policies", ", ".join(report["policies"])),
                 ("generated", datetime.now(UTC).isoformat(timespec="seconds"))]
    meta_rows += [(f"run.json: {k}", v if isinstance(v, str | int | float | bool) else json.dumps(v))
                  for k, v in cfg.items()]
    parts = _head(f"Evaluation report: {run_id}", meta_rows, report["notes"])
    parts += [
        f"<h2>Success rate per policy</h2><p>Rate over episodes that ran (skipped ones excluded, counted in "
        f"<code>skipped</code>), with {conf} Wilson intervals.</p>", table_html(tables["by_policy"]),
        "<h2>Policies side by side</h2><p>Rate [CI] and episodes that ran, per task and error type; "
        f"<code>{ALL}</code> rows pool the rows above them.</p>", table_html(tables["comparison"]),
        *_gap_section(tables["recovery_gap"], conf),
        "<h2>Plots</h2>",
    ]
    for path in plots:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{esc(path.stem)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{esc(path.name)}</figcaption></figure>")
    parts.append(gallery_html(report.get("videos", []), report["policies"], report["run_dir"]))
    parts += [
        "<h2>Success rate per policy, task, error type and category</h2>", table_html(tables["cells"]),
        "<h2>Per policy and error type</h2>", table_html(tables["by_policy_error_type"]),
        "<h2>Per policy and scene origin</h2><p>Injected scenes (an error played in by an injector), nominal "
        "ones (the task's start state) and harvested ones (a policy's own failure, captured).</p>",
        table_html(tables["by_policy_origin"]),
        "<h2>Per policy and task</h2>", table_html(tables["by_policy_task"]),
        "<h2>Error classifiers</h2><p>Three rule-based classifiers label each scene (each scene counted once). "
        "Agreement: Fleiss' kappa across all three, Cohen's kappa per pair (Landis &amp; Koch wording); "
        "accuracy against the injected error type.</p>",
        table_html(tables["classifier_agreement"]), table_html(tables["classifier_accuracy"]),
        table_html(tables["classifier_accuracy_by_error_type"]),
        "<h2>How well error types are told apart</h2><p>Kruskal&ndash;Wallis test of per-episode success "
        "across error types, per policy: a small p means success depends on the error type; "
        "epsilon-squared (0..1) is the effect size.</p>", table_html(tables["separability"]),
        "</body></html>",
    ]
    return "\n".join(parts)
