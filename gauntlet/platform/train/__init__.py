"""Training on Ray Train: config, pre-flight checks, memory plan, driver, one worker loop, state IO.

`python -m gauntlet.platform.train ...` runs the `gauntlet train` command.
"""
