"""LeRobot's video features (codebase v3.0), read with PyAV for `gauntlet data import-lerobot`.

A v3.0 dataset stores each camera of dtype "video" as MP4 files shared by many episodes,
`videos/<key>/chunk-NNN/file-NNN.mp4` (info.json's `video_path`). An episode's row in
`meta/episodes` places it: `videos/<key>/chunk_index`, `.../file_index`, and `.../from_timestamp`,
`.../to_timestamp`, the seconds its frames span in that file. Frame t of the episode is the video
frame shown at `from_timestamp + timestamp[t]` (`timestamp` from the data file).

Source: lerobot 0.6.1, `datasets/dataset_reader.py` (`_query_videos`), `dataset_metadata.py`
(`get_video_file_path`) and `video_utils.py` (`decode_video_frames_pyav`): seek to the keyframe
at or before the first timestamp, decode forward past the last, take the nearest frame to each
query and refuse one farther than `tolerance_s` (LeRobotDataset's default 1e-4 s). PyAV, not
torchcodec: PyAV ships FFmpeg in its wheel (torchcodec needs the system's FFmpeg libraries), is
already Gauntlet's dependency for rollout videos, and is LeRobot's own fallback decoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gauntlet.data.dataset_schema import DatasetError

TIMESTAMP_TOLERANCE_S = 1e-4  # LeRobotDataset's default tolerance_s: a frame must lie this close to its query
SPAN_FIELDS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")


def is_depth_map(feature: Mapping[str, Any]) -> bool:
    """A depth camera (one 12-bit channel; lerobot 0.6's `depth_keys`), not an RGB one."""
    info, video_info = feature.get("info") or {}, feature.get("video_info") or {}
    return bool(info.get("is_depth_map") or info.get("video.is_depth_map") or video_info.get("video.is_depth_map"))


def span_columns(key: str) -> list[str]:
    """The meta/episodes columns that place one video feature's episode (LeRobot's names)."""
    return [f"videos/{key}/{field}" for field in SPAN_FIELDS]


@dataclass(frozen=True)
class VideoSpan:
    """Where one episode of one video feature lies."""

    key: str  # the LeRobot feature, e.g. observation.images.image
    path: Path  # the MP4 file that holds it
    from_timestamp: float  # seconds into the file of the episode's frame 0
    to_timestamp: float  # seconds into the file where the episode ends (exclusive)


def episode_span(root: Path, info: Mapping[str, Any], row: Mapping[str, Any], key: str) -> VideoSpan:
    """One episode's span (`row`: its meta/episodes row, checked to hold `span_columns(key)`)."""
    chunk, file, start, stop = (row[c] for c in span_columns(key))
    rel = info["video_path"].format(video_key=key, chunk_index=int(chunk), file_index=int(file))
    return VideoSpan(key, root / rel, float(start), float(stop))


def _duration_s(container: Any) -> float | None:
    stream = container.streams.video[0]
    if stream.duration is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / 1e6 if container.duration is not None else None  # av.time_base: microseconds


def check_video_file(path: Path, spans: list[tuple[int, VideoSpan]]) -> None:
    """Before any work: the file exists, FFmpeg opens it as video, and every episode placed in it
    (`spans`: (episode_index, span)) lies inside it."""
    import av

    first_ep, first = spans[0]
    if not path.is_file():
        raise DatasetError(path, f"missing: meta/episodes places episode {first_ep} of {first.key!r} in it "
                                 f"(videos/{first.key}/chunk_index, file_index)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(path, f"no video stream (feature {first.key!r})")
            duration = _duration_s(container)
            fps = float(container.streams.video[0].average_rate or 0) or None
    except av.error.FFmpegError as exc:
        raise DatasetError(path, f"cannot be read as video for {first.key!r} ({exc})") from None
    if duration is None:
        return  # the decoder still refuses a frame it cannot find
    slack = 1.0 / fps if fps else TIMESTAMP_TOLERANCE_S  # a muxer may count the last frame's duration or not
    for ep, span in spans:
        if span.from_timestamp < 0 or span.to_timestamp > duration + slack:
            raise DatasetError(path, f"episode {ep}: videos/{span.key}/from_timestamp={span.from_timestamp:g}, "
                                     f"to_timestamp={span.to_timestamp:g} lie outside the file ({duration:g} s)")


def decode_episode(span: VideoSpan, timestamps: np.ndarray, episode: int) -> np.ndarray:
    """The episode's frames (N, H, W, 3) uint8 RGB for its `timestamps` (N,) (the data file's
    `timestamp` column), each the video frame nearest to `from_timestamp + timestamp`, as
    LeRobotDataset returns them."""
    import av

    queries = span.from_timestamp + np.asarray(timestamps, dtype=np.float64)  # (N,)
    if not len(queries):
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    first, last = float(queries.min()), float(queries.max())
    times: list[float] = []
    frames: list[np.ndarray] = []
    try:
        with av.open(str(span.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame-parallel decoding; the frames are the same
            # The keyframe at or before the first query (LeRobot's one-tick margin), then forward.
            container.seek(round(first / stream.time_base) - 1, backward=True, any_frame=False, stream=stream)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                if t < first - TIMESTAMP_TOLERANCE_S:
                    continue  # before the episode: only what the seek landed on
                times.append(t)
                frames.append(frame.to_ndarray(format="rgb24"))  # (H, W, 3)
                if t >= last:
                    break
    except av.error.FFmpegError as exc:
        raise DatasetError(span.path, f"episode {episode}: decoding {span.key!r} failed ({exc})") from None
    if not times:
        raise DatasetError(span.path, f"episode {episode}: no frame of {span.key!r} at or after {first:g} s "
                                      f"(videos/{span.key}/from_timestamp={span.from_timestamp:g})")
    loaded = np.asarray(times)
    nearest = np.abs(queries[:, None] - loaded[None, :]).argmin(axis=1)  # (N,)
    miss = np.abs(loaded[nearest] - queries) >= TIMESTAMP_TOLERANCE_S
    if miss.any():
        i = int(np.flatnonzero(miss)[0])
        raise DatasetError(span.path, f"episode {episode} frame {i}: no frame of {span.key!r} at {queries[i]:.6g} s "
                                      f"(nearest {loaded[nearest[i]]:.6g} s; videos/{span.key}/from_timestamp="
                                      f"{span.from_timestamp:g} + timestamp {float(timestamps[i]):g}; tolerance "
                                      f"{TIMESTAMP_TOLERANCE_S:g} s)")
    return np.stack([frames[j] for j in nearest])
