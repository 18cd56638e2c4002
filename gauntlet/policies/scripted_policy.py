"""The scripted oracle as a Policy: privileged, and it plans by simulation.

The envs' experts read the simulator directly (contacts, controller state), which a policy behind a
network cannot. So the oracle's observation carries the env's full captured state
(`observation/sim_state`, a map of arrays exactly as `GauntletEnv.get_state()` returns it). The
policy restores that state into a mirror env of the same task, lets the expert act there for H steps,
and returns those H actions as the chunk. Restores are exact (tests prove it step by step), so the
chunk is what the expert would have done in the caller's env. The expert's own short memory (grasp
timers) lives per `episode_id`; without one, each call starts a fresh expert. Each answer says, per
row, how many calls of its episode this oracle has answered (`episode_calls`, 0 without an id), so a
client sees when that memory was lost (evicted, or another or a restarted replica answered).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from gauntlet.keys import (
    ACTION_DIM,
    ACTIONS_KEY,
    EPISODE_CALLS_KEY,
    EPISODE_ID_KEY,
    PROMPT_KEY,
    SIM_STATE_KEY,
    STATE_DIM,
    STATE_KEY,
    TASK_KEY,
)
from gauntlet.policies.base import FieldSpec, PolicyMetadata

MAX_EPISODES = 4096  # experts kept in memory (least recently used dropped first)


class ScriptedPolicy:
    def __init__(self, chunk_len: int = 8, seed: int = 0, image_size: int = 32):
        self.chunk_len = int(chunk_len)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self._mirrors: dict[str, Any] = {}
        # (task, episode id) -> [expert, calls answered for that episode]
        self._experts: OrderedDict[tuple[str, str], list[Any]] = OrderedDict()
        self.metadata = PolicyMetadata(
            name="scripted", version="1", action_dim=ACTION_DIM, chunk_len=self.chunk_len,
            observation_spec={
                STATE_KEY: FieldSpec((STATE_DIM,), "float32"),
                SIM_STATE_KEY: FieldSpec((), "state_dict"),
                PROMPT_KEY: FieldSpec((), "str"),
            },
            needs_images=False, privileged=True, episode_memory=True,
            extra={"plans_by_simulation": True},
        )

    def _task_of(self, prompt: str, task: str | None) -> str:
        from gauntlet.envs.tasks import TASKS, get_task

        if task:
            return get_task(task).name
        for spec in TASKS.values():
            if spec.instruction == prompt:
                return spec.name
        raise ValueError(f"prompt {prompt!r} names no known task; send a `task` key")

    def _mirror(self, task: str) -> Any:
        if task not in self._mirrors:
            from gauntlet.envs.env import make_env

            self._mirrors[task] = make_env(task, "D0", image_size=self.image_size)
        return self._mirrors[task]

    def _expert(self, task: str, episode: str, env: Any) -> tuple[Any, int]:
        """The episode's expert and the calls of the episode answered so far, this one included
        (a fresh expert and 0 without an id)."""
        from gauntlet.envs.experts import make_expert

        if not episode:
            return make_expert(env, seed=self.seed), 0
        key = (task, episode)
        entry = self._experts.pop(key, None) or [make_expert(env, seed=self.seed), 0]
        entry[1] += 1
        self._experts[key] = entry
        while len(self._experts) > MAX_EPISODES:
            self._experts.popitem(last=False)
        return entry[0], entry[1]

    def act_chunk(self, task: str, state: dict[str, np.ndarray], episode: str = "") -> tuple[np.ndarray, int]:
        """((H, 7), calls): the expert's next H actions from `state`, found by simulating them, and
        the episode's `episode_calls`."""
        env = self._mirror(task)
        env.set_state({k: np.asarray(v) for k, v in state.items()})
        expert, calls = self._expert(task, episode, env)
        actions = np.zeros((self.chunk_len, ACTION_DIM), np.float32)
        for t in range(self.chunk_len):
            actions[t] = expert.act()
            env.step(actions[t])
        return actions, calls

    def infer(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        states = batch[SIM_STATE_KEY]
        b = len(states)
        prompts = batch.get(PROMPT_KEY, [""] * b)
        tasks = batch.get(TASK_KEY, [""] * b)
        episodes = batch.get(EPISODE_ID_KEY, [""] * b)
        answers = [self.act_chunk(self._task_of(str(prompts[i]), str(tasks[i]) or None), states[i], str(episodes[i]))
                   for i in range(b)]
        return {ACTIONS_KEY: np.stack([chunk for chunk, _ in answers]),  # (B, H, 7)
                EPISODE_CALLS_KEY: np.array([calls for _, calls in answers], np.int64)}

    def reset(self) -> None:
        self._experts.clear()
