"""The report's video gallery: recorded episodes grouped by task and error type, one row per scene,
one column per policy, so the same scene is watched side by side across policies.

Reads RUN/videos.json (written by the eval driver, see `platform/eval/video.py`). Videos are embedded
as data URIs, like the plots, so the page stays one self-contained file; past `EMBED_LIMIT_BYTES` of
video they are linked relative to the report directory (RUN/report/) instead.
"""

from __future__ import annotations

import base64
from html import escape as esc
from pathlib import Path
from typing import Any

EMBED_LIMIT_BYTES = 32 * 2**20  # more video than this is linked, not embedded, to keep the page loadable


def gallery_html(videos: list[dict[str, Any]], policies: list[str], run_dir: Path | str) -> str:
    """The gallery section ('' when nothing was recorded)."""
    videos = [v for v in videos if (Path(run_dir) / v["path"]).is_file()]
    if not videos:
        return ""
    embed = sum((Path(run_dir) / v["path"]).stat().st_size for v in videos) <= EMBED_LIMIT_BYTES
    by_cell: dict[tuple[str, str], dict[tuple[str, int], dict[str, dict[str, Any]]]] = {}
    for v in videos:
        scenes = by_cell.setdefault((v["task"], v["error_type"]), {})
        scenes.setdefault((v["scene_id"], int(v["trial"])), {})[v["policy"]] = v
    columns = [p for p in policies if any(v["policy"] == p for v in videos)]
    columns += sorted({v["policy"] for v in videos} - set(columns))
    parts = ["<h2>Rollout videos</h2><p>Recorded episodes (<code>--record-video</code>), per task and error "
             "type; each row is one scene, each column a policy. A red caption marks the injected error on the "
             "first frames (the scene starts just after it played out); a green frame marks the step the task "
             "was solved.</p>"]
    for (task, error_type), scenes in sorted(by_cell.items()):
        parts.append(f"<h3>{esc(task)} &middot; {esc(error_type or 'none')}</h3>")
        parts.append('<table class="gallery"><tr><th>scene</th>'
                     + "".join(f"<th>{esc(p)}</th>" for p in columns) + "</tr>")
        for (scene_id, trial), cells in sorted(scenes.items()):
            row = [f"<td>{esc(scene_id)}<br>trial {trial}</td>"]
            for policy in columns:
                v = cells.get(policy)
                row.append(_video_cell(v, Path(run_dir), embed) if v else "<td>&ndash;</td>")
            parts.append("<tr>" + "".join(row) + "</tr>")
        parts.append("</table>")
    return "\n".join(parts)


def _video_cell(v: dict[str, Any], run_dir: Path, embed: bool) -> str:
    outcome = (f'<span class="ok">solved at step {v["recovery_step"]}</span>' if v["success"]
               else f'<span class="fail">not solved in {v["steps"]} steps</span>')
    if embed:
        src = "data:video/mp4;base64," + base64.b64encode((run_dir / v["path"]).read_bytes()).decode("ascii")
    else:
        src = esc("../" + v["path"])
    return (f'<td><video src="{src}" controls muted loop preload="metadata" width="320"></video>'
            f"<br>{outcome}</td>")
