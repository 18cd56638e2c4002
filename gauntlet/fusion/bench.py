"""Fusion speed claims, each against its naive baseline in the same run, on a ~3,000-spot slide.

1. qformer: one batched forward over all spots (neighbour tokens padded, key padding mask) vs a
   Python loop calling the same module once per spot on its unpadded tokens. Target >= 20x.
2. staig's image edge weights (drop probabilities from image-embedding distance): one gather + norm
   over all kNN edges vs a Python double loop over spots and their neighbours. Target >= 100x.
Both pairs are checked to produce the same numbers before their times are compared. Exit status 0
when both targets are met, 1 when one is missed.

    .venv/bin/python benchmarks/bench_fusion_speed.py [--spots 3000] [--threads 1]
    .venv/bin/python -m gauntlet.fusion.bench [--spots 3000] [--threads 1]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from gauntlet.fusion.methods.base import FusionConfig
from gauntlet.fusion.methods.qformer import make_qformer
from gauntlet.fusion.spatial_graph import image_edge_drop_probabilities, knn_edges, neighbour_tokens
from gauntlet.fusion.synthetic import SyntheticConfig, make_synthetic_slide
from gauntlet.runtime.config_args import option, parse_config, require_at_least, run_command

PROG = "bench_fusion_speed"
QFORMER_TARGET = 20.0  # batched qformer forward vs the per-spot loop
EDGE_WEIGHTS_TARGET = 100.0  # vectorised staig edge weights vs the Python double loop


@dataclass(frozen=True)
class BenchConfig:
    """Flags of the fusion speed benchmark."""

    # approximate spots of the synthetic slide (rounded to a full grid)
    spots: int = option(3000, help="approximate spots of the synthetic slide")
    # width of the synthetic image embedding
    image_dim: int = option(64, help="image embedding width")
    # torch threads; one keeps the comparison fair on a shared machine
    threads: int = option(1, help="torch threads (1: fair on a shared machine)")
    # timed repeats of each fast path (the baselines run a fraction of them)
    repeats: int = option(10, help="timed repeats of the fast path")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "spots", "image_dim", "threads", "repeats")


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(median seconds over `repeats` calls, last result)."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def bench_qformer(slide, config: FusionConfig, repeats: int) -> tuple[float, float, float]:
    expr = torch.as_tensor(slide.expression)
    image = torch.as_tensor(slide.image)
    index, padding, offset = (torch.as_tensor(a) for a in neighbour_tokens(
        slide.coords, config.token_radius_spacings, config.max_tokens))
    torch.manual_seed(0)
    model = make_qformer(expr.shape[1], image.shape[1], config).eval()
    lengths = (~padding).sum(dim=1).tolist()  # real tokens per spot; padding sits at the end
    with torch.no_grad():

        def batched() -> torch.Tensor:
            return model(model.embed_spots(expr, image), index, offset, padding)  # (N, out)

        def per_spot_loop() -> torch.Tensor:
            # the natural per-spot code: take this spot's neighbourhood, embed it, run the module
            rows = []
            for i, length in enumerate(lengths):
                neighbours = index[i, :length]
                spots = model.embed_spots(expr[neighbours], image[neighbours])  # (L_i, d)
                rows.append(model(spots, torch.arange(length).unsqueeze(0), offset[i : i + 1, :length]))  # (1, out)
            return torch.cat(rows)

        batched()  # warm-up (allocator, kernels)
        t_batched, out_batched = timed(batched, repeats)
        t_loop, out_loop = timed(per_spot_loop, max(1, repeats // 3))
    max_diff = float((out_batched - out_loop).abs().max())
    return t_batched, t_loop, max_diff


def edge_weights_loop(image: np.ndarray, neighbours: list[np.ndarray], p_min: float, p_max: float) -> np.ndarray:
    """The naive baseline: per spot, per neighbour, one distance; then the same min-max scaling."""
    dists = []
    for i in range(len(neighbours)):
        for j in neighbours[i]:
            dists.append(float(np.linalg.norm(image[i] - image[j])))
    lo, hi = min(dists), max(dists)
    return np.array([p_min + (p_max - p_min) * (d - lo) / max(hi - lo, 1e-12) for d in dists])


def bench_edge_weights(slide, config: FusionConfig, repeats: int) -> tuple[float, float, float, int]:
    edges = knn_edges(slide.coords, config.knn)  # (2, E), sorted by source spot
    image_np = slide.image.astype(np.float32)
    image = torch.as_tensor(image_np)
    edges_t = torch.as_tensor(edges)
    starts = np.searchsorted(edges[0], np.arange(slide.n_spots + 1))
    neighbours = [edges[1, starts[i] : starts[i + 1]] for i in range(slide.n_spots)]  # adjacency lists

    def vectorised() -> torch.Tensor:
        return image_edge_drop_probabilities(image, edges_t, config.edge_drop_min, config.edge_drop_max)

    vectorised()
    t_vec, out_vec = timed(vectorised, repeats)
    t_loop, out_loop = timed(
        lambda: edge_weights_loop(image_np, neighbours, config.edge_drop_min, config.edge_drop_max),
        max(1, repeats // 5),
    )
    max_diff = float(np.abs(out_vec.numpy() - out_loop).max())
    return t_vec, t_loop, max_diff, edges.shape[1]


def run(config: BenchConfig) -> int:
    """Runs both claims and prints the table; 0 when both targets are met, 1 otherwise."""
    torch.set_num_threads(config.threads)
    slide = make_synthetic_slide(SyntheticConfig(n_spots=config.spots, image_dim=config.image_dim, seed=0))
    fusion = FusionConfig()
    print(f"slide: {slide.n_spots} spots, {slide.expression.shape[1]} genes, image dim {slide.image.shape[1]}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU", flush=True)

    q_batched, q_loop, q_diff = bench_qformer(slide, fusion, config.repeats)
    e_vec, e_loop, e_diff, n_edges = bench_edge_weights(slide, fusion, config.repeats)

    rows = [
        ("qformer forward", f"batched + padding mask ({slide.n_spots} spots)", "per-spot loop", q_batched, q_loop,
         QFORMER_TARGET, q_diff),
        ("staig edge weights", f"vectorised ({n_edges} edges)", "Python double loop", e_vec, e_loop,
         EDGE_WEIGHTS_TARGET, e_diff),
    ]
    print(f"\n{'claim':<20} {'fast path':<36} {'baseline':<20} {'fast ms':>9} {'base ms':>10} {'ratio':>8} "
          f"{'target':>7} {'max |diff|':>11}", flush=True)
    for name, fast, base, t_fast, t_base, target, diff in rows:
        ratio = t_base / t_fast
        verdict = "ok" if ratio >= target else "BELOW"
        print(f"{name:<20} {fast:<36} {base:<20} {t_fast * 1e3:>9.2f} {t_base * 1e3:>10.1f} {ratio:>7.0f}x "
              f"{'>=' + format(target, '.0f') + 'x':>7} {diff:>11.2e}  {verdict}", flush=True)
    ok = all(t_base / t_fast >= target for _, _, _, t_fast, t_base, target, _ in rows)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    config = parse_config(BenchConfig, argv, PROG, __doc__.split("\n\n")[0])
    return run_command(PROG, lambda: run(config), {})


if __name__ == "__main__":
    sys.exit(main())
