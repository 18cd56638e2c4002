"""LeRobot's `select_action` for many episodes at once: the per-episode state of stateful policies.

`select_action` keeps its state on the policy instance, for the one episode it runs (`reset()` at
every env reset). Two policies keep more than an action queue a chunk could stand in for:

- Diffusion with `n_obs_steps` > 1: every step's observation enters queues `n_obs_steps` deep (the
  first one repeated to fill them), and when its action queue is empty a chunk is predicted from the
  stacked history and its `n_action_steps` actions are queued;
- ACT with `temporal_ensemble_coeff`: a chunk every step, averaged online with the overlapping
  actions of the episode's earlier chunks (`ACTTemporalEnsembler`).

A replica serves many episodes in each batch, so `EpisodeStepper` keeps that state per `episode_id`
in a bounded LRU (`max_episodes`, least recently asked evicted first) and steps every row of a batch
as `select_action` would step its own episode, with ONE batched model call for the rows that need
one (Diffusion: the rows whose action queue ran out; ACT: all). Since the history takes every step's
observation, the wire carries one request per env step (metadata `chunk_len` 1) and each answer is
the one action `select_action` returns at that step. A row without an id is an episode's first step
that is not kept. Each row reports how many calls of its episode this replica has answered
(EPISODE_CALLS_KEY): a client whose own count differs knows the state was lost (evicted, another or
a restarted replica) and restarts the episode. State changes only once a batch has succeeded.

Runs where LeRobot is importable (a LeRobot replica), like policy.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gauntlet.policies.episode_store import EpisodeStore


@dataclass
class _Episode:
    """What `select_action` keeps for one episode between steps."""

    # Diffusion: LeRobot's `_queues` (observation.state / observation.images / observation.environment_state
    # histories of (1, ...) normalised tensors, `action`: queued (1, D) normalised actions); ACT: empty.
    queues: dict[str, deque] = field(default_factory=dict)
    # ACT: the ensembler's `ensembled_actions` (1, n, D) and `ensembled_actions_count` (n, 1); None
    # before the episode's first step.
    ensemble: tuple[Any, Any] | None = None
    calls: int = 0  # requests of this episode answered (what EPISODE_CALLS_KEY reports)

    def copy(self) -> _Episode:
        """A copy a batch may advance without touching this one (tensors are replaced, never written)."""
        return _Episode({k: deque(q, maxlen=q.maxlen) for k, q in self.queues.items()}, self.ensemble, self.calls)


class EpisodeStepper:
    """`select_action` of one loaded LeRobot policy, for every episode of a batch at once."""

    def __init__(self, model: Any, max_episodes: int, noise: Callable[[int], Any]):
        self.model = model  # the LeRobot PreTrainedPolicy (ACT with a temporal ensembler, or Diffusion)
        self.config = model.config
        self.noise = noise  # count -> (count, horizon, D) initial diffusion noise, as the chunk path draws it
        self.store: EpisodeStore[_Episode] = EpisodeStore(max_episodes)  # `reset()` there forgets them all

    def step(self, model_in: dict[str, Any], ids: list[str], finish: Callable[[Any], Any]) -> tuple[Any, list[int]]:
        """One env step of every row: `model_in` is the preprocessed batch (B rows), `ids` its episode
        ids. Returns (finish((B, D) normalised actions), each row's episode calls: 0 without an id).
        `finish` (the postprocessor) runs before the state is stored, so a batch that fails anywhere
        leaves every episode as it was."""
        with self.store.lock:  # a batch steps alone
            episodes = [self._checkout(eid) for eid in ids]
            if self.config.type == "act":
                actions = self._act_step(model_in, episodes)
            else:
                actions = self._diffusion_step(model_in, episodes)
            out = finish(actions)
            return out, self._commit(ids, episodes)

    def _checkout(self, episode_id: str) -> _Episode:
        held = self.store.get(episode_id)
        return held.copy() if held is not None else _Episode()

    def _commit(self, ids: list[str], episodes: list[_Episode]) -> list[int]:
        calls = [0] * len(ids)
        for i, (eid, episode) in enumerate(zip(ids, episodes, strict=True)):
            if not eid:
                continue
            episode.calls += 1
            calls[i] = episode.calls
            self.store.put(eid, episode)
        return calls

    def _act_step(self, model_in: dict[str, Any], episodes: list[_Episode]) -> Any:
        """ACT's select_action with temporal ensembling: a chunk for every row (one batched call), then
        LeRobot's own ensembler update per episode, on a copy of that episode's running average."""
        import torch

        chunks = self.model.predict_action_chunk(model_in)  # (B, chunk_size, D)
        ensembler = self.model.temporal_ensembler
        actions = []
        for i, episode in enumerate(episodes):
            if episode.ensemble is None:
                ensembler.reset()
            else:
                ensembler.ensembled_actions = episode.ensemble[0].clone()  # update() writes in place
                ensembler.ensembled_actions_count = episode.ensemble[1].clone()
            actions.append(ensembler.update(chunks[i:i + 1]))  # (1, D)
            episode.ensemble = (ensembler.ensembled_actions, ensembler.ensembled_actions_count)
        ensembler.reset()
        return torch.cat(actions)  # (B, D)

    def _diffusion_step(self, model_in: dict[str, Any], episodes: list[_Episode]) -> Any:
        """Diffusion's select_action: each row's observation enters its episode's history; the rows
        whose action queue is empty get a chunk from one batched call on their stacked histories."""
        import torch
        from lerobot.policies.utils import populate_queues
        from lerobot.utils.constants import ACTION, OBS_IMAGES

        obs = {k: v for k, v in model_in.items() if k != ACTION}  # the preprocessor adds `action: None`
        if self.config.image_features:
            obs[OBS_IMAGES] = torch.stack([obs[key] for key in self.config.image_features], dim=-4)
        self.model.reset()  # a fresh instance's queues: the keys and depths of an episode's state
        history = [k for k in self.model._queues if k != ACTION and k in obs]
        for i, episode in enumerate(episodes):
            if not episode.queues:
                episode.queues = {k: deque(maxlen=q.maxlen) for k, q in self.model._queues.items()}
            # A copy of the row: a view would keep the whole batch alive for as long as the episode.
            populate_queues(episode.queues, {k: obs[k][i:i + 1].clone() for k in history})
        need = [i for i, episode in enumerate(episodes) if not episode.queues[ACTION]]
        if need:
            # predict_action_chunk stacks the queues it holds ((k, n_obs_steps, ...) per key): hand it
            # the needing rows' histories, concatenated row by row at each history position.
            merged = {k: deque((torch.cat(step) for step in zip(*(episodes[i].queues[k] for i in need), strict=True)),
                               maxlen=self.config.n_obs_steps) for k in history}
            self.model._queues = {**merged, ACTION: deque(maxlen=self.config.n_action_steps)}
            chunks = self.model.predict_action_chunk({k: obs[k][need] for k in history},
                                                     noise=self.noise(len(need)))  # (k, n_action_steps, D)
            self.model.reset()
            for j, i in enumerate(need):
                episodes[i].queues[ACTION].extend(chunks[j:j + 1].transpose(0, 1))  # n_action_steps x (1, D)
        return torch.cat([episode.queues[ACTION].popleft() for episode in episodes])  # (B, D)
