"""The fusion benchmark: spatial-omics fusion methods, their data (slides, embedding caches), metrics,
the `gauntlet sweep fusion` job (sweep, sweep_report) and the speed benchmark (bench).

It stands apart from the robot side: it imports only itself, `gauntlet.runtime` and the generic sweep
skeleton (`gauntlet.platform.sweeps.job`, `tune_progress`), and nothing but the CLI's lazy dispatch
names it (tests/fusion/test_import_graph.py checks both)."""
