"""Evaluation: policies x scenes x trials on Ray.

config (the `gauntlet eval` flags) -> scenes (filter + pre-flight) -> targets (the policy grammar) ->
driver (run dir, work plan, Serve deployment) -> dispatch (work queue, actor liveness) ->
rollout_actor -> episode (one episode loop) with sources (how an actor reaches a policy) ->
results (the episode row definition and its Parquet store) and status (RUN/status.json).
`python -m gauntlet.platform.eval` runs `driver.main`.
"""
