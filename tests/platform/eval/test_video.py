"""--record-video: real episodes on real actors, MP4s decoded back, the report's gallery, and the
choice of episodes to replay so that a group's videos show both outcomes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import pandas as pd
import pytest

from gauntlet.platform.eval.config import EvalConfig
from gauntlet.platform.eval.driver import run_eval
from gauntlet.platform.eval.video import VIDEO_INDEX, read_videos, replay_items
from gauntlet.platform.report.build import REPORT_DIR, write_report


@pytest.fixture(scope="module")
def scene_db(tmp_path_factory: pytest.TempPathFactory, generate_scenes) -> Path:
    return generate_scenes(tmp_path_factory.mktemp("video") / "scenes", variants="D0,D1",
                           error_types="none,drop,object_push", workers=1)


def _decode(path: Path) -> tuple[list, dict]:
    with av.open(io.BytesIO(path.read_bytes())) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        return frames, json.loads(container.metadata["comment"])


def test_recorded_episodes_decode_with_their_frames_and_are_in_the_report(ray_session, scene_db: Path,
                                                                         tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = EvalConfig(scenes=str(scene_db), policy=("scripted", "random"), out=str(run), horizon=40, actors=1,
                     envs_per_actor=2, record_video=1, video_error_types=("none", "drop"), video_stride=3,
                     video_size=64, video_cameras=("agentview", "robot0_eye_in_hand"))
    run_eval(cfg)
    results = pd.read_parquet(run / "results.parquet")
    videos = read_videos(run)
    # One per policy x error type asked for (the first scene by id: the same scene for both policies) ...
    firsts = {(v["policy"], v["error_type"]): v["scene_id"] for v in videos}
    assert {k[1] for k in firsts} == {"none", "drop"} and {k[0] for k in firsts} == {"scripted", "random"}
    for error_type in ("none", "drop"):
        assert firsts[("scripted", error_type)] == firsts[("random", error_type)]
    # ... plus replays where a group's results hold the outcome its videos lack.
    for v in videos:
        row = results[(results.scene_id == v["scene_id"]) & (results.policy == v["policy"])].iloc[0]
        assert v["success"] == bool(row["success"]) and v["steps"] == int(row["steps"])
        frames, meta = _decode(run / v["path"])
        # Frame 0, every 3rd step, the solving step and the last step; two 64 px cameras side by side.
        expected = sorted({0, *range(0, v["steps"] + 1, 3), v["steps"]}
                          | ({v["recovery_step"]} if v["success"] else set()))
        assert meta["frame_steps"] == expected and len(frames) == len(expected) == v["frames"]
        assert frames[0].shape == (64, 128, 3)
        assert meta["recovery_step"] == (int(row["recovery_step"]) if v["success"] else -1)
    assert len({v["path"] for v in videos}) == len(videos) == len(json.loads((run / VIDEO_INDEX).read_text())["videos"])
    # Unrecorded episodes rendered nothing for video: only the chosen scenes have files.
    assert len(list((run / "videos").rglob("*.mp4"))) == len(videos)

    paths = write_report(run, html=True)
    page = Path(paths["html"]).read_text()
    assert "Rollout videos" in page and page.count("data:video/mp4;base64,") == len(videos)
    assert (run / REPORT_DIR).is_dir()


def test_replay_picks_the_missing_outcome_per_group(tmp_path: Path) -> None:
    cfg = EvalConfig(scenes="db", policy=("a",), out=str(tmp_path), record_video=1, horizon=50)
    rows = [  # policy a, lift/drop: s1 solved (recorded), s2 failed, s3 failed; lift/push: only failures
        ("s1", "drop", True, False), ("s2", "drop", False, False), ("s3", "drop", False, False),
        ("s4", "push", False, False), ("s5", "push", False, True),
    ]
    results = pd.DataFrame([{"scene_id": s, "policy": "a", "task": "lift", "error_type": e, "trial": 0,
                             "success": ok, "skipped": skipped} for s, e, ok, skipped in rows])
    (tmp_path / VIDEO_INDEX).write_text(json.dumps({"videos": [
        {"path": "x.mp4", "policy": "a", "task": "lift", "error_type": "drop", "scene_id": "s1", "trial": 0,
         "success": True},
        {"path": "y.mp4", "policy": "a", "task": "lift", "error_type": "push", "scene_id": "s4", "trial": 0,
         "success": False}]}))
    items = list(replay_items(cfg, results, tmp_path))
    # drop: the first failure (s2) is replayed; push has no success among episodes that ran.
    assert [(i.scene_id, i.policy, i.trial, i.horizon) for i in items] == [("s2", "a", 0, 50)]
    assert items[0].video is not None and items[0].video.size == cfg.video_size


def test_policy_tasks_skips_other_tasks_with_the_reason(ray_session, scene_db: Path, tmp_path: Path) -> None:
    from gauntlet.platform.eval.config import EvalConfigError

    with pytest.raises(EvalConfigError, match="unknown task 'lfit'"):
        run_eval(EvalConfig(scenes=str(scene_db), policy=("scripted",), out=str(tmp_path / "bad"),
                            policy_tasks=("scripted=lfit",)))
    assert not (tmp_path / "bad").exists()
    run = tmp_path / "run"
    run_eval(EvalConfig(scenes=str(scene_db), policy=("scripted", "random"), out=str(run), horizon=5,
                        actors=1, policy_tasks=("random=stack",), limit=2))
    results = pd.read_parquet(run / "results.parquet")
    scripted, random_ = results[results.policy == "scripted"], results[results.policy == "random"]
    assert not scripted["skipped"].any() and len(scripted) == 2  # the lift DB: random is for stack only
    assert random_["skipped"].all() and (random_["skip_reason"] == "policy_tasks: random is evaluated on stack only").all()
