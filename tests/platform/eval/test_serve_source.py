"""The rollout actors' Serve client on real Serve: requests asked in one loop turn leave as one
`infer_many` call, and an answer that is not an action chunk fails its own episode only (it must
never leave its round-mates, or the actor's next rounds, waiting forever)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from gauntlet.platform.eval.episode import PolicyUnavailableError
from gauntlet.platform.eval.sources import ServeSource

APP = "malformed-answers"
STATE = "observation/state"


class _OddReplica:
    """Answers a round with one chunk, one map without actions and one None, and counts the calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def metadata(self) -> dict[str, Any]:
        from gauntlet.policies.random_policy import RandomPolicy

        return RandomPolicy().metadata.to_dict()

    async def infer_many(self, observations: list, adapter: str | None = None) -> list:
        self.calls.append(len(observations))
        return [{"actions": np.zeros((8, 7), np.float32)}, {"no": "actions"}, None][: len(observations)]

    def sizes(self) -> list[int]:
        return self.calls


@pytest.fixture(scope="module")
def odd_app(ray_session):
    import sys

    from ray import cloudpickle, serve
    from ray.serve.config import HTTPOptions

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test replica lives in this module
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=18341))
    handle = serve.run(serve.deployment(_OddReplica, name="odd", ray_actor_options={"num_cpus": 0}).bind(),
                       name=APP, route_prefix=None)
    yield handle
    serve.delete(APP)


def test_a_round_is_one_call_and_a_malformed_answer_fails_only_its_own_request(odd_app) -> None:
    source = ServeSource(APP, "odd", retry_s=5.0)

    async def one_round() -> list[Any]:
        asks = [source.next_chunk_async({STATE: np.full(8, i, np.float32)}) for i in range(3)]
        return await asyncio.wait_for(asyncio.gather(*asks, return_exceptions=True), 30)

    first, missing, none = asyncio.run(one_round())
    assert isinstance(first, np.ndarray) and first.shape == (8, 7)
    assert isinstance(missing, PolicyUnavailableError) and "malformed answer" in str(missing)
    assert isinstance(none, PolicyUnavailableError)
    assert odd_app.sizes.remote().result() == [3]  # the three asks left as one call
