"""Fusion speed claims (batched qformer >= 20x, vectorised staig edge weights >= 100x), each against its
naive baseline in the same run; the benchmark is `gauntlet.fusion.bench` (docs/fusion.md).

    .venv/bin/python benchmarks/bench_fusion_speed.py [--spots 3000] [--threads 1] [--repeats 10]
"""

from __future__ import annotations

import sys

from gauntlet.fusion.bench import main

if __name__ == "__main__":
    sys.exit(main())
