"""Ray Tune sweeps: the one sweep-job skeleton (job), trial progress lines, search modes, the RAM floor and
the throughput sweep. The fusion sweep is `gauntlet.fusion.sweep`, built on the same skeleton."""
