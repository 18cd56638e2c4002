"""Training on Ray Train: config, pre-flight checks, memory plan, driver, the registry of trainable
policy families (recipes), one worker loop with a JAX and a torch backend, state IO, reporting.

`python -m gauntlet.platform.train ...` runs the `gauntlet train` command.
"""
