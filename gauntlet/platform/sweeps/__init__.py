"""Ray Tune sweeps: search modes, the RAM floor, fusion-method sweeps and throughput sweeps."""
