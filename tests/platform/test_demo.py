"""`gauntlet demo`, scaled down (two tasks, one error type, a short BC-RNN fit), end to end on the
session's Ray: what its report holds (three policies, nominal vs recovery, skipped tasks, videos)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import pandas as pd
import pytest

from gauntlet.platform.demo import main as demo


@pytest.mark.slow
def test_the_demo_report_shows_oracle_untrained_and_trained_policies_with_videos(ray_session,
                                                                                tmp_path: Path) -> None:
    from ray import serve

    serve.shutdown()  # another test's Serve app must not hold the ports
    out = tmp_path / "demo"
    assert demo(["--out", str(out), "--tasks", "lift", "stack", "--error-types", "drop", "--train-demos", "6",
                 "--train-steps", "60", "--horizon", "150", "--video-error-types", "none", "drop"]) == 0
    run = out / "run"
    results = pd.read_parquet(run / "results.parquet")
    # 2 tasks x 2 variants x (drop + nominal) = 8 scenes, for 3 policies.
    assert len(results) == 24 and set(results["policy"]) == {"scripted", "vla", "bc_rnn"}
    assert set(results["error_type"]) == {"drop", "none"} and set(results["category"]) >= {"nominal"}
    scripted = results[results.policy == "scripted"]
    assert not scripted["skipped"].any() and scripted["success"].all()  # the oracle solves every scene
    bc = results[results.policy == "bc_rnn"]
    assert not bc[bc.task == "lift"]["skipped"].any()  # trained on lift: it runs there ...
    on_stack = bc[bc.task == "stack"]  # ... and is recorded as skipped elsewhere, with the reason
    assert on_stack["skipped"].all() and on_stack["skip_reason"].str.startswith("policy_tasks:").all()
    assert (out / "bc_rnn_lift" / "config.json").is_file()

    report = run / "report"
    gap = pd.read_csv(report / "recovery_gap.csv")
    assert {"scripted", "vla", "bc_rnn"} <= set(gap["policy"])
    by_policy = pd.read_csv(report / "by_policy.csv")
    assert by_policy.set_index("policy").loc["bc_rnn", "skipped"] == 4
    videos = json.loads((run / "videos.json").read_text())["videos"]
    # lift x {none, drop} per policy (the trained task), every file a real H.264 video
    assert {(v["policy"], v["error_type"]) for v in videos} >= {
        (p, e) for p in ("scripted", "vla", "bc_rnn") for e in ("none", "drop")}
    assert {v["task"] for v in videos} == {"lift"}
    for v in videos:
        with av.open(io.BytesIO((run / v["path"]).read_bytes())) as container:
            assert sum(1 for _ in container.decode(video=0)) == v["frames"]
    page = (report / "report.html").read_text()
    assert "Nominal vs recovery success" in page and "Rollout videos" in page
    assert page.count("data:video/mp4;base64,") == len(videos)
    assert "bc_rnn" in page and "policy_tasks: bc_rnn is evaluated on lift only" in page
