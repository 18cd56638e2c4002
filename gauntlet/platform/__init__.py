"""The products built on Ray: evaluation (eval/), reports (report/), training (train/), sweeps
(sweeps/), plus the `gauntlet` console script (cli.py) and the demo (demo.py)."""
