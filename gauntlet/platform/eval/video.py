"""Rollout videos: frames rendered only for the episodes chosen for recording, encoded as H.264 MP4.

An episode picked for recording gets an `EpisodeRecorder`: every `stride` steps it renders the
chosen cameras at the video size (its own renderer, so the policy's observation size and the
unrecorded episodes are untouched), side by side, with an overlay that names the injected error on
the first frames (a scene starts just after its error played out) and marks the step the task was
solved. The MP4 is encoded in memory and travels back with the episode's row, so actors on other
nodes never need the run directory; the driver writes it (`write_video`) and indexes it in
`videos.json`, which the report's gallery reads. The same facts are in the MP4's metadata.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gauntlet.envs.injectors import NOMINAL
from gauntlet.runtime.atomic_files import atomic_write
from gauntlet.runtime.manifests import read_json, write_json

if TYPE_CHECKING:
    import pandas as pd

    from gauntlet.envs.env import GauntletEnv
    from gauntlet.platform.eval.config import EvalConfig
    from gauntlet.platform.eval.episode import WorkItem

VIDEOS_DIR = "videos"  # RUN/videos/<policy>/<task>/<error_type>/<scene_id>_t<trial>.mp4
VIDEO_INDEX = "videos.json"  # RUN/videos.json: one entry per recorded episode (see `video_entry`)
VIDEO_KEY = "_video"  # the row key a recorded episode's MP4 travels under to the driver (popped there)
BANNER_FRAMES = 8  # frames that carry the "error injected" banner at the start
RED, GREEN, WHITE = (220, 40, 40), (40, 200, 60), (255, 255, 255)


@dataclass(frozen=True)
class VideoOptions:
    """What `--record-video N` records (shipped to the actors with each recorded work item)."""

    cameras: tuple[str, ...] = ("agentview",)  # robosuite camera names, side by side (agentview, robot0_eye_in_hand)
    size: int = 160  # height = width of each camera's frame, pixels (even, for H.264's 4:2:0)
    stride: int = 2  # render every this many env steps
    fps: int = 10  # playback frame rate


class EpisodeRecorder:
    """Renders, marks and encodes one episode. Used on the actor's rendering thread only."""

    def __init__(self, env: GauntletEnv, options: VideoOptions, title: str, error_type: str):
        import mujoco

        self.options = options
        self.title = title
        self.error_type = error_type
        self._env = env
        size = options.size
        self._renderer = mujoco.Renderer(env.sim.model._model, height=size, width=size)
        self._frames: list[np.ndarray] = []  # (H, W * cameras, 3) uint8
        self._steps: list[int] = []  # env step each frame shows
        self.recovery_step = -1

    def capture(self, step: int, solved: bool = False, force: bool = False) -> None:
        """Records the current state if `step` falls on the stride, the task was just solved, or `force`."""
        if solved and self.recovery_step < 0:
            self.recovery_step = step
            force = True
        if (step % self.options.stride and not force) or (self._steps and self._steps[-1] == step):
            return
        views = []
        for camera in self.options.cameras:
            self._renderer.update_scene(self._env.sim.data._data, camera=camera)
            views.append(self._renderer.render())
        frame = np.concatenate(views, axis=1)  # (H, W * cameras, 3)
        self._frames.append(self._annotate(frame, step))
        self._steps.append(step)

    def _annotate(self, frame: np.ndarray, step: int) -> np.ndarray:
        import cv2

        frame = np.ascontiguousarray(frame)
        h = frame.shape[0]
        scale = max(h / 320, 0.3)
        cv2.putText(frame, f"{self.title}  t={step}", (4, int(14 * scale * 2)), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, WHITE, 1, cv2.LINE_AA)
        if len(self._frames) < BANNER_FRAMES and self.error_type not in ("", NOMINAL):
            cv2.putText(frame, f"injected: {self.error_type}", (4, h - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, RED, 1,
                        cv2.LINE_AA)
        if self.recovery_step >= 0:
            cv2.rectangle(frame, (0, 0), (frame.shape[1] - 1, h - 1), GREEN, 3)
            cv2.putText(frame, f"solved at t={self.recovery_step}", (4, h - 8), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        GREEN, 1, cv2.LINE_AA)
        return frame

    def finish(self, success: bool, steps: int) -> dict[str, Any]:
        """{"mp4": bytes, "meta": {...}}; frees the renderer. The last state is always in the video."""
        self.capture(steps, force=True)
        self._renderer.close()
        meta = {"title": self.title, "error_type": self.error_type, "success": bool(success),
                "recovery_step": int(self.recovery_step), "steps": int(steps), "frames": len(self._frames),
                "frame_steps": self._steps, "stride": self.options.stride, "fps": self.options.fps,
                "cameras": list(self.options.cameras), "injected_before_frame": 0}
        return {"mp4": encode_mp4(self._frames, self.options.fps, meta), "meta": meta}


    def discard(self) -> None:
        """Frees the renderer without encoding (the episode did not finish)."""
        self._renderer.close()
        self._frames = []


def encode_mp4(frames: list[np.ndarray], fps: int, meta: dict[str, Any]) -> bytes:
    """H.264 (yuv420p, browser-playable) MP4 of `frames`, with `meta` as JSON in its comment tag."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        container.metadata["comment"] = json.dumps(meta)
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        # One thread: encoding runs on the actor's core beside the simulation it must not starve.
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "26", "preset": "veryfast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def video_relpath(policy: str, task: str, error_type: str, scene_id: str, trial: int) -> str:
    """Where a recorded episode's MP4 goes, relative to the run directory (safe file names)."""
    safe = [str(p).replace("/", "_").replace("@", "_").replace("=", "_") for p in (policy, task, error_type or NOMINAL)]
    return f"{VIDEOS_DIR}/{'/'.join(safe)}/{scene_id}_t{trial}.mp4"


def write_video(run_dir: Path, row: dict[str, Any], video: dict[str, Any]) -> dict[str, Any]:
    """Writes the MP4 (atomically) and adds its entry to RUN/videos.json; returns the entry."""
    rel = video_relpath(row["policy"], row["task"], row["error_type"], row["scene_id"], row["trial"])
    path = Path(run_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(video["mp4"]))
    entry = {"path": rel, "policy": row["policy"], "task": row["task"], "variant": row.get("variant", ""),
             "error_type": row["error_type"], "scene_id": row["scene_id"], "trial": int(row["trial"]),
             **{k: video["meta"][k] for k in ("success", "recovery_step", "steps", "frames", "stride", "fps")}}
    index = read_videos(run_dir)
    index = [e for e in index if e["path"] != rel] + [entry]
    write_json(Path(run_dir) / VIDEO_INDEX, {"videos": index}, indent=1)
    return entry


def read_videos(run_dir: Path) -> list[dict[str, Any]]:
    """The entries of RUN/videos.json (empty when nothing was recorded)."""
    path = Path(run_dir) / VIDEO_INDEX
    if not path.is_file():
        return []
    return list(read_json(path, "video index").get("videos", []))


# ------------------------------------------------------------------------ which episodes record
def video_options(cfg: EvalConfig) -> VideoOptions:
    return VideoOptions(cameras=cfg.video_cameras, size=cfg.video_size, stride=cfg.video_stride)


def _wanted(cfg: EvalConfig, task: str, error_type: str) -> bool:
    return ((not cfg.video_tasks or task in cfg.video_tasks)
            and (not cfg.video_error_types or (error_type or NOMINAL) in cfg.video_error_types))


def mark_recorded(cfg: EvalConfig, scenes: dict[str, dict[str, Any]], pending: deque[WorkItem]) -> int:
    """Marks, in place, the items that record: trial 0 of the first `record_video` compatible scenes
    (by id) of each task x error type, for every policy, so the gallery can put policies side by
    side on the same scene. Returns how many items record."""
    if not cfg.record_video:
        return 0
    firsts: dict[tuple[str, str], list[str]] = {}
    for scene_id in sorted(scenes):
        scene = scenes[scene_id]
        if scene.get("compatible", True) and _wanted(cfg, scene["task"], scene["error_type"]):
            firsts.setdefault((scene["task"], scene["error_type"]), []).append(scene_id)
    chosen = {sid for ids in firsts.values() for sid in ids[: cfg.record_video]}
    options = video_options(cfg)
    marked = 0
    for i, item in enumerate(pending):
        if item.scene_id in chosen and item.trial == 0:
            pending[i] = dataclasses.replace(item, video=options)
            marked += 1
    return marked


def replay_items(cfg: EvalConfig, results: pd.DataFrame, run_dir: Path) -> deque[WorkItem]:
    """Episodes to run again with recording, so that each policy x task x error type whose results
    hold both outcomes has a video of each: the first (by scene id, trial) episode of the outcome
    its videos lack."""
    from gauntlet.platform.eval.episode import WorkItem

    recorded: dict[tuple[str, str, str], set[bool]] = {}
    for v in read_videos(run_dir):
        recorded.setdefault((v["policy"], v["task"], v["error_type"]), set()).add(bool(v["success"]))
    items: deque[WorkItem] = deque()
    ran = results[~results["skipped"]].sort_values(["scene_id", "trial"])
    for (policy, task, error_type), group in ran.groupby(["policy", "task", "error_type"], sort=True):
        have = recorded.get((policy, task, error_type), set())
        if not have or len(have) == 2 or not _wanted(cfg, task, error_type):
            continue
        other = group[group["success"] != next(iter(have))]
        if len(other):
            row = other.iloc[0]
            items.append(WorkItem(cfg.effective_run_id, str(row["scene_id"]), str(policy), int(row["trial"]),
                                  cfg.horizon, video=video_options(cfg)))
    return items
