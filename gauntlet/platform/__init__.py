"""The Ray runtime: evaluation, results, reports, training and sweeps, and the `gauntlet` CLI."""
