"""Envs for episodes: pooled by the configuration a scene needs, reused across episodes, bounded."""

from __future__ import annotations

import json

from gauntlet.envs.env import EnvConfig, GauntletEnv


def env_pool_key(env_config_json: str, fingerprint: str = "") -> str:
    """The pool of envs a scene can run in. A scene restores its whole state, so the placement
    variant (it only draws where objects start at a reset) does not matter to the env replaying it:
    D0 and D1 scenes whose fingerprints (model and dynamics) agree share envs, and an actor meeting
    both builds one set of envs instead of two. Without a fingerprint the whole configuration keys
    the pool (a shared env whose fingerprint differed would skip the scene at restore)."""
    if not fingerprint:
        return env_config_json
    config = json.loads(env_config_json)
    config.pop("variant", None)
    return f"{json.dumps(config, sort_keys=True)}@{fingerprint}"


class EnvCache:
    """Envs by pool (`env_pool_key`), built on first use and reused across episodes.

    Each episode running at the same time holds its own env (an env carries one episode's physics),
    so a pool grows to the most episodes of it that ran at once. `capacity` bounds the envs alive in
    all pools together (an env with its renderer holds a few hundred MB): a new one past it replaces
    the least recently used idle env of another pool (work items come grouped by scene, so that
    one's configuration is usually done). It must be at least the number of episodes run at once;
    None = no bound.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._idle: dict[str, list[GauntletEnv]] = {}
        self._idle_order: list[tuple[str, GauntletEnv]] = []  # least recently released first
        self._pool_of: dict[int, str] = {}  # id(env) -> its pool, for `release`
        self.alive = 0  # envs built and not closed
        self.built = 0  # envs built so far

    def acquire(self, env_config_json: str, fingerprint: str = "") -> GauntletEnv:
        """An idle env of the scene's pool, or a new one of its configuration; hand it back with
        `release`. `fingerprint`: the scene's, if known (lets variants share envs)."""
        pool = env_pool_key(env_config_json, fingerprint)
        idle = self._idle.get(pool)
        if idle:
            env = idle.pop()
            self._idle_order.remove((pool, env))
            return env
        if self.capacity is not None and self.alive >= self.capacity and self._idle_order:
            old_pool, old = self._idle_order.pop(0)
            self._idle[old_pool].remove(old)
            del self._pool_of[id(old)]
            old.close()  # frees its renderer's GL context and buffers
            self.alive -= 1
        env = GauntletEnv(EnvConfig.from_json(env_config_json))
        self._pool_of[id(env)] = pool
        self.alive += 1
        self.built += 1
        return env

    def release(self, env: GauntletEnv) -> None:
        # Whatever state the env is left in does not matter: the next episode restores its scene.
        pool = self._pool_of[id(env)]
        self._idle.setdefault(pool, []).append(env)
        self._idle_order.append((pool, env))
