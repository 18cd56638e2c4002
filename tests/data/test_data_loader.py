"""Training loader: action windows and padding at episode ends, sharding, reproducible shuffling,
the memory budget, images, and clean shutdown."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from gauntlet.data.loader import DatasetLoader, LoaderConfig, LoaderError, make_loader

LENGTHS = [5, 3, 7, 1, 4]  # includes a one-frame episode


def _all_batches(loader: DatasetLoader) -> list[dict[str, np.ndarray]]:
    with loader:
        return list(loader)


def _decode_episode(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(episode, frame) of each action value written by `known_action` (episode * 1000 + frame)."""
    return np.floor_divide(actions, 1000).astype(int), np.mod(actions, 1000).astype(int)


def test_windows_pad_by_repeating_the_last_action(make_dataset) -> None:
    root, written = make_dataset(LENGTHS)
    batches = _all_batches(make_loader(root, batch_size=1, chunk_len=4, shuffle=False, drop_last=False))
    assert len(batches) == sum(LENGTHS)
    seen = []
    for b in batches:
        ep, t = int(b["episode_index"][0]), int(b["frame_index"][0])
        n = LENGTHS[ep]
        want_frames = np.minimum(np.arange(t, t + 4), n - 1)
        np.testing.assert_array_equal(b["actions"][0], written["actions"][ep][want_frames])
        np.testing.assert_array_equal(b["action_is_pad"][0], np.arange(t, t + 4) >= n)
        np.testing.assert_array_equal(b["observation/state"][0], written["states"][ep][t])
        assert b["prompt"][0] == written["prompts"][ep]
        seen.append((ep, t))
    assert seen == [(e, t) for e, n in enumerate(LENGTHS) for t in range(n)]
    # Spelled out for episode 1 (3 frames, values 1000, 1001, 1002), last frame, and the 1-frame episode 3:
    last = next(b for b in batches if (b["episode_index"][0], b["frame_index"][0]) == (1, 2))
    assert last["actions"][0, :, 0].tolist() == [1002.0, 1002.0, 1002.0, 1002.0]
    assert last["action_is_pad"][0].tolist() == [False, True, True, True]
    second_last = next(b for b in batches if (b["episode_index"][0], b["frame_index"][0]) == (1, 1))
    assert second_last["actions"][0, :, 0].tolist() == [1001.0, 1002.0, 1002.0, 1002.0]
    assert second_last["action_is_pad"][0].tolist() == [False, False, True, True]
    single = next(b for b in batches if b["episode_index"][0] == 3)
    assert single["actions"][0, :, 0].tolist() == [3000.0] * 4
    assert single["action_is_pad"][0].tolist() == [False, True, True, True]


def test_batches_have_the_policy_key_format_and_never_cross_episodes(make_dataset) -> None:
    root, _ = make_dataset(LENGTHS)
    batches = _all_batches(make_loader(root, batch_size=4, chunk_len=6, shuffle=True, seed=3, drop_last=False,
                                       num_workers=3, prefetch_depth=2))
    b = batches[0]
    assert b["observation/state"].shape == (4, 8) and b["observation/state"].dtype == np.float32
    assert b["actions"].shape == (4, 6, 7) and b["actions"].dtype == np.float32
    assert b["action_is_pad"].shape == (4, 6) and b["action_is_pad"].dtype == bool
    assert b["prompt"].shape == (4,) and b["prompt"].dtype.kind == "U"
    assert b["episode_index"].dtype == np.int64 and b["frame_index"].dtype == np.int64
    assert "observation/image" not in b
    for b in batches:
        ep, frame = _decode_episode(b["actions"][..., 0])
        np.testing.assert_array_equal(ep, np.broadcast_to(b["episode_index"][:, None], ep.shape))
        assert np.all(frame >= b["frame_index"][:, None])
        np.testing.assert_array_equal(frame[:, 0], b["frame_index"])


def test_shards_are_disjoint_and_cover_the_split(make_dataset) -> None:
    root, _ = make_dataset(LENGTHS)
    keys = []
    for rank in range(3):
        loader = make_loader(root, batch_size=2, chunk_len=2, shard_index=rank, num_shards=3, drop_last=False, seed=7)
        keys.append({(int(e), int(f)) for b in _all_batches(loader)
                     for e, f in zip(b["episode_index"], b["frame_index"], strict=True)})
    assert sum(len(k) for k in keys) == sum(LENGTHS)
    assert set().union(*keys) == {(e, t) for e, n in enumerate(LENGTHS) for t in range(n)}
    # drop_last: every rank gets the same number of batches (what data-parallel steps need)
    counts = [len(make_loader(root, batch_size=2, shard_index=r, num_shards=3)) for r in range(3)]
    assert counts == [3, 3, 3]


def test_shuffling_is_reproducible_and_reshuffles_every_epoch(make_dataset) -> None:
    root, _ = make_dataset(LENGTHS)

    def order(**kw) -> list[tuple[int, int]]:
        loader = make_loader(root, batch_size=4, drop_last=False, **kw)
        return [(int(e), int(f)) for b in _all_batches(loader)
                for e, f in zip(b["episode_index"], b["frame_index"], strict=True)]

    a, b = order(seed=11, epochs=2), order(seed=11, epochs=2, num_workers=4, prefetch_depth=1)
    assert a == b  # same seed, same batches, whatever the thread count
    n = sum(LENGTHS)
    first, second = a[:n], a[n:]
    assert sorted(first) == sorted(second) == sorted(set(first))  # each epoch: every frame exactly once
    assert first != second
    assert order(seed=12) != first
    assert order(shuffle=False) == sorted(first)


def test_infinite_epochs_and_counters(make_dataset) -> None:
    root, _ = make_dataset(LENGTHS)
    with make_loader(root, batch_size=4, epochs=0) as loader:
        got = list(itertools.islice(loader, 20))  # 5 batches per epoch: 4 epochs
        assert len(got) == 20 and len(loader) == 5
        assert loader.samples_yielded == 80 and loader.batches_yielded == 20
        assert loader.samples_per_second > 0
        assert set(loader.counters()) >= {"samples_per_second", "wait_s", "assemble_s", "cache_bytes"}


def test_memory_budget_and_config_errors_name_the_field(make_dataset) -> None:
    root, _ = make_dataset([20, 20], image_size=64)
    with pytest.raises(LoaderError, match=r"memory_budget_mb=1 is too small.*prefetch_depth=8"):
        make_loader(root, batch_size=64, prefetch_depth=8, memory_budget_mb=1, drop_last=False)
    with pytest.raises(LoaderError, match="batch_size must be >= 1"):
        LoaderConfig(batch_size=0)
    with pytest.raises(LoaderError, match=r"shard_index must be in \[0, num_shards=2\)"):
        LoaderConfig(shard_index=2, num_shards=2)
    with pytest.raises(LoaderError, match=r"batch_size=64 is larger than shard 0's 40 frames"):
        make_loader(root, batch_size=64)
    with pytest.raises(LoaderError, match=r"cameras: unknown camera 'top'"):
        LoaderConfig(cameras=("top",))


def test_images_decode_to_the_requested_shape(make_dataset) -> None:
    root, written = make_dataset([6, 5], image_size=16)
    batches = _all_batches(make_loader(root, batch_size=3, chunk_len=2, decode_workers=3, drop_last=False))
    for b in batches:
        assert b["observation/image"].shape == (len(b["frame_index"]), 16, 16, 3)
        assert b["observation/image"].dtype == np.uint8
        for i, (e, f) in enumerate(zip(b["episode_index"], b["frame_index"], strict=True)):
            np.testing.assert_array_equal(b["observation/image"][i], written["images"][e]["agentview"][f])
            np.testing.assert_array_equal(b["observation/wrist_image"][i], written["images"][e]["wrist"][f])
    import cv2

    small = _all_batches(make_loader(root, batch_size=4, image_size=8, cameras=("wrist",), decode_workers=1))
    b = small[0]
    assert "observation/image" not in b and b["observation/wrist_image"].shape == (4, 8, 8, 3)
    e, f = int(b["episode_index"][0]), int(b["frame_index"][0])
    want = cv2.resize(written["images"][e]["wrist"][f], (8, 8), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(b["observation/wrist_image"][0], want)
    none = _all_batches(make_loader(root, batch_size=4, cameras=()))
    assert "observation/wrist_image" not in none[0]


def _loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("loader-")]


def test_close_leaves_no_threads(make_dataset) -> None:
    root, _ = make_dataset([30, 30], image_size=8)
    before = set(threading.enumerate())
    loader = make_loader(root, batch_size=4, num_workers=3, decode_workers=3, prefetch_depth=4, epochs=0)
    it = iter(loader)
    next(it)
    next(it)
    assert len(_loader_threads()) >= 2  # workers are running and prefetching
    loader.close()
    assert _loader_threads() == [] and set(threading.enumerate()) <= before
    with pytest.raises(RuntimeError, match="closed"):
        next(iter(loader))
    # A consumer that stops early inside `with` leaves nothing behind either.
    with make_loader(root, batch_size=4, num_workers=2, decode_workers=2) as loader:
        for _ in loader:
            break
    assert _loader_threads() == []


def test_start_batch_resumes_the_same_sequence(make_dataset) -> None:
    """A resumed run starts mid-epoch with exactly the batches an uninterrupted run draws there."""
    root, _ = make_dataset([9, 7, 11, 5])
    with make_loader(root, batch_size=4, chunk_len=3, epochs=3, seed=5) as full:
        whole = [b["frame_index"].tolist() + b["episode_index"].tolist() for b in full]
    per_epoch = len(whole) // 3
    with make_loader(root, batch_size=4, chunk_len=3, epochs=3, seed=5) as part:
        tail = [b["frame_index"].tolist() + b["episode_index"].tolist() for b in part.iter_batches(1, 2)]
    assert tail == whole[per_epoch + 2:]
    with make_loader(root, batch_size=4, chunk_len=3, epochs=3, seed=5) as bad, pytest.raises(LoaderError, match="start_batch"):
        next(bad.iter_batches(0, per_epoch))
