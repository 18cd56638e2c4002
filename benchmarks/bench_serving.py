"""Serial policy server vs Gauntlet's batched Serve deployment, same model, same machine, one run.

(a) serial: an openpi-style server in its own process (the `websockets` library + msgpack-numpy, as
    openpi's `serve_policy.py`), running `policy.infer` on one request at a time in its event loop;
(b) Gauntlet: the same policy on Gauntlet's batched replica, reached over the same WebSocket protocol
    through Serve's proxy ("gauntlet" rows), on the replica's own WebSocket port (`--ws-port`,
    "direct" rows), and through DeploymentHandles, the in-cluster path rollout actors use
    ("handle" rows).

Part 1 (no-op, `random` policy): what each path adds per request at C = 1, next to the bare server
of (a) and a bare Serve handle call (a deployment whose method returns at once): p50 latency and
"added ms" = p50 minus the bare baseline of its kind; the paths take turns, so a neighbour's load
lands on all alike.
Part 2: C concurrent clients (C in --clients), each a real connection sending observations and
waiting for actions: requests/s, p50/p99 latency, mean batch size, both servers' own inference time,
the replica's queue wait and commonest batch sizes, and the ratios (b)/(a). The rows take turns
(--rounds), and Ray's workers run at the serial server's nice value (--ray-worker-niceness).
Last, the issue's targets, met or missed, from this run.

    .venv/bin/python benchmarks/bench_serving.py [--policy vla] [--vla-size small] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import time
from collections import Counter
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from gauntlet.policies import msgpack_numpy  # noqa: E402

HTTP_PORT, GRPC_PORT, SERIAL_PORT, DIRECT_PORT = 18766, 19766, 18765, 18767


def make_obs(meta: dict, rng: np.random.Generator) -> dict:
    obs: dict = {}
    for key, field in meta["observation_spec"].items():
        if field["dtype"] == "str":
            obs[key] = "pick up the red cube"
        elif field["dtype"] == "uint8":
            obs[key] = rng.integers(0, 255, size=field["shape"], dtype=np.uint8)
        else:
            shape = [s if s > 0 else 10 for s in field["shape"]]
            obs[key] = rng.normal(size=shape).astype(field["dtype"])
    obs.setdefault("prompt", "pick up the red cube")
    return obs


def policy_kwargs(policy: str, vla_size: str) -> dict:
    return {"config_name": vla_size} if policy == "vla" else {}


def serial_server(policy_name: str, kwargs: dict, port: int, ready: Any) -> None:
    """openpi-style: each connection's handler calls infer synchronously, so requests serialise."""
    import websockets.asyncio.server as wss

    from gauntlet.policies.base import stack_observations
    from gauntlet.policies.registry import make_policy

    policy = make_policy(policy_name, **kwargs)
    if hasattr(policy, "warmup"):
        policy.warmup(1)

    async def handler(ws) -> None:
        await ws.send(msgpack_numpy.packb(policy.metadata.to_dict()))
        async for message in ws:
            obs = msgpack_numpy.unpackb(message)
            start = time.perf_counter()
            out = policy.infer(stack_observations([obs]))  # blocks the loop: one at a time
            infer_ms = (time.perf_counter() - start) * 1e3
            await ws.send(msgpack_numpy.packb({"actions": np.asarray(out["actions"][0]),
                                               "server_timing": {"infer_ms": infer_ms}}))

    async def main() -> None:
        async with wss.serve(handler, "127.0.0.1", port, compression=None, max_size=None):
            ready.set()
            await asyncio.Future()

    asyncio.run(main())


def start_serial(policy_name: str, kwargs: dict) -> Any:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=serial_server, args=(policy_name, kwargs, SERIAL_PORT, ready), daemon=True)
    proc.start()
    if not ready.wait(300):
        raise RuntimeError("the serial server did not start")
    return proc


async def drive(url: str, clients: int, seconds: float, obs: dict,
                infer_ms: list[float] | None = None) -> tuple[int, list[float]]:
    """C WebSocket clients for `seconds`: (requests answered, latencies in ms). The serial server's
    own inference times go to `infer_ms` when given."""
    import websockets.asyncio.client as wsc

    latencies: list[float] = []
    count = 0
    deadline = time.perf_counter() + seconds
    payload = msgpack_numpy.packb(obs)

    async def one_client() -> None:
        nonlocal count
        async with wsc.connect(url, compression=None, max_size=None) as ws:
            await ws.recv()  # metadata
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                await ws.send(payload)
                reply = await ws.recv()
                if isinstance(reply, str):
                    raise RuntimeError(reply)
                latencies.append((time.perf_counter() - t) * 1e3)
                if infer_ms is not None:
                    infer_ms.append(msgpack_numpy.unpackb(reply)["server_timing"]["infer_ms"])
                count += 1

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return count, latencies


async def drive_handle(handle: Any, clients: int, seconds: float, obs: dict) -> tuple[int, list[float]]:
    """C concurrent callers of `handle.infer`, as rollout actors call it."""
    lat: list[float] = []
    count = 0
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            out = await handle.infer.remote(obs)
            if "error" in out:
                raise RuntimeError(out["error"])
            lat.append((time.perf_counter() - t) * 1e3)
            count += 1

    await asyncio.gather(*(one() for _ in range(clients)))
    return count, lat


def row(label: str, clients: int, count: int, lat: list[float], seconds: float, batch: float | None) -> dict:
    return {"server": label, "clients": clients, "req_s": count / seconds,
            "p50_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if lat else float("nan"), "mean_batch": batch}


# ------------------------------------------------------------------------------ part 1: no-op


def _latencies(calls: dict[str, Any], requests: int, rounds: int = 10) -> dict[str, list[float]]:
    """C = 1 latencies per path, the paths taking turns (`rounds` of requests/rounds each), so a
    neighbour's load on this shared machine lands on every path alike."""
    lat: dict[str, list[float]] = {label: [] for label in calls}
    for call in calls.values():
        for _ in range(max(10, requests // 10)):  # warm-up: connections, routing tables, caches
            call()
    for _ in range(rounds):
        for label, call in calls.items():
            for _ in range(max(1, requests // rounds)):
                t = time.perf_counter()
                call()
                lat[label].append((time.perf_counter() - t) * 1e3)
    return lat


def _noop_calls(obs: dict, handle: Any, bare_handle: Any, actor: Any) -> dict[str, Any]:
    """path label -> a callable doing one request on it (C = 1, blocking)."""
    import httpx
    import ray
    from websockets.sync.client import connect

    from gauntlet.deployments.grpc_client import PolicyGrpcClient

    payload = msgpack_numpy.packb(obs)
    http = httpx.Client(timeout=30)
    grpc_client = PolicyGrpcClient(f"127.0.0.1:{GRPC_PORT}")
    sockets = {}

    def ws_call(url: str) -> Any:
        if url not in sockets:
            sockets[url] = connect(url, compression=None, max_size=None)
            sockets[url].recv()  # metadata frame
        def call() -> None:
            sockets[url].send(payload)
            if isinstance(sockets[url].recv(), str):
                raise RuntimeError("error frame")
        return call

    def http_call() -> None:
        r = http.post(f"http://127.0.0.1:{HTTP_PORT}/v1/policies/random/infer", content=payload,
                      headers={"content-type": "application/msgpack"})
        r.raise_for_status()

    return {
        "bare websockets server (openpi-style)": ws_call(f"ws://127.0.0.1:{SERIAL_PORT}"),
        "plain Ray actor call": lambda: ray.get(actor.infer.remote(obs)),
        "bare Serve handle call": lambda: bare_handle.infer.remote(obs).result(),
        "Gauntlet DeploymentHandle": lambda: handle.infer.remote(obs).result(),
        "Gauntlet HTTP (msgpack)": http_call,
        "Gauntlet WebSocket": ws_call(f"ws://127.0.0.1:{HTTP_PORT}/v1/policies/random/ws"),
        "Gauntlet WebSocket, replica's own port": ws_call(f"ws://127.0.0.1:{DIRECT_PORT}"),
        "Gauntlet gRPC": lambda: grpc_client.infer("random", obs),
    }


class _NoOp:
    """The floor of a Serve call: a deployment (or actor) whose `infer` returns at once."""

    def __init__(self) -> None:
        self.actions = np.zeros((8, 7), np.float32)

    async def infer(self, obs: Any, adapter: str | None = None) -> dict:
        return {"actions": self.actions}


def noop_table(requests: int) -> list[tuple[str, float, float, float]]:
    """(path, p50 ms, mean ms, added ms) at C = 1 with the no-op `random` policy."""
    import ray
    from ray import serve

    from gauntlet.deployments.app import APP_NAME, PolicyServing, build_app, deployment_name
    from gauntlet.policies.random_policy import RandomPolicy
    from gauntlet.policies.registry import PolicyRef

    obs = make_obs(RandomPolicy().metadata.to_dict(), np.random.default_rng(0))
    serial = start_serial("random", {})
    serve.run(build_app([PolicyServing(PolicyRef("random"), num_cpus=0)], ws_port=DIRECT_PORT), name=APP_NAME,
              route_prefix="/")
    bare = serve.run(serve.deployment(_NoOp, name="noop", ray_actor_options={"num_cpus": 0}).bind(),
                     name="noop", route_prefix=None)
    actor = ray.remote(num_cpus=0)(_NoOp).remote()
    handle = serve.get_deployment_handle(deployment_name("random"), app_name=APP_NAME)
    measured = _latencies(_noop_calls(obs, handle, bare, actor), requests)
    serial.terminate()
    serve.delete("noop")
    serve.delete(APP_NAME)
    ray.kill(actor)
    p50 = {label: float(np.percentile(lat, 50)) for label, lat in measured.items()}
    base_net, base_handle = p50["bare websockets server (openpi-style)"], p50["bare Serve handle call"]
    table = []
    for label, lat in measured.items():
        base = base_handle if label == "Gauntlet DeploymentHandle" else base_net
        table.append((label, p50[label], float(np.mean(lat)), p50[label] - base))
    return table


def print_noop(table: list[tuple[str, float, float, float]]) -> None:
    print("\nno-op policy (random), C = 1: added ms per request = p50 - p50 of the bare baseline "
          "(the handle path against a bare Serve handle call, network paths against the bare server)")
    print(f"{'path':<40}{'p50 ms':>10}{'mean ms':>10}{'added ms':>10}")
    for label, p50, mean, added in table:
        shown = "" if label.startswith(("bare", "plain")) else f"{added:10.2f}"
        print(f"{label:<40}{p50:>10.2f}{mean:>10.2f}{shown:>10}")


# -------------------------------------------------------------------------- part 2: the model


def ceiling(policy_name: str, kwargs: dict, obs: dict, seconds: float) -> dict[int, float]:
    """The ceiling any server can reach here: in-process infer, no network, B=1 vs B=16."""
    from gauntlet.policies.base import stack_observations
    from gauntlet.policies.registry import make_policy

    policy = make_policy(policy_name, **kwargs)
    if hasattr(policy, "warmup"):
        policy.warmup(16)
    out = {}
    for b in (1, 16):
        batch = stack_observations([obs] * b)
        policy.infer(batch)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < min(seconds, 3.0):
            policy.infer(batch)
            n += b
        out[b] = n / (time.perf_counter() - t)
    return out


def model_rows(args: argparse.Namespace, obs: dict, clients: list[int]) -> list[dict]:
    """Every (server, C) row, measured in `--rounds` turns of seconds/rounds each, the rows taking
    turns (both servers stay up, idle when not driven), so a neighbour's load lands on all alike."""
    from ray import serve

    from gauntlet.deployments.app import APP_NAME, PolicyServing, build_app, deployment_name
    from gauntlet.policies.registry import PolicyRef

    kwargs = policy_kwargs(args.policy, args.vla_size)
    serial = start_serial(args.policy, kwargs)
    env_vars = dict(item.partition("=")[::2] for item in args.replica_env)
    spec = PolicyServing(PolicyRef(args.policy), max_batch_size=args.max_batch_size,
                         batch_wait_timeout_s=args.batch_wait_timeout_s, policy_kwargs=kwargs,
                         num_cpus=1, num_gpus=args.num_gpus, runtime_env={"env_vars": env_vars} if env_vars else None)
    serve.run(build_app([spec], ws_port=DIRECT_PORT), name=APP_NAME, route_prefix="/")
    handle = serve.get_deployment_handle(deployment_name(args.policy), app_name=APP_NAME)
    url = f"ws://127.0.0.1:{HTTP_PORT}/v1/policies/{args.policy}/ws"
    serial_infer_ms: dict[int, list[float]] = {c: [] for c in clients}
    drivers = {"serial": lambda c, t: drive(f"ws://127.0.0.1:{SERIAL_PORT}", c, t, obs, serial_infer_ms.get(c)),
               "gauntlet": lambda c, t: drive(url, c, t, obs),
               "direct": lambda c, t: drive(f"ws://127.0.0.1:{DIRECT_PORT}", c, t, obs),
               "handle": lambda c, t: drive_handle(handle, c, t, obs)}
    for run in drivers.values():
        asyncio.run(run(4, 1.0))  # warm-up: connections, routing
    for times in serial_infer_ms.values():
        times.clear()
    seconds = args.seconds / args.rounds
    acc = {(label, c): _Acc() for c in clients for label in drivers}
    for _ in range(args.rounds):
        for c in clients:
            for label, run in drivers.items():
                handle.reset_stats.remote().result()
                began = time.perf_counter()
                count, lat = asyncio.run(run(c, seconds))
                acc[(label, c)].wall_s += time.perf_counter() - began  # connect to last reply
                acc[(label, c)].add(count, lat, None if label == "serial" else handle.get_stats.remote().result())
    serial.terminate()
    serve.delete(APP_NAME)
    for c, times in serial_infer_ms.items():
        acc[("serial", c)].infer_ms_sum, acc[("serial", c)].serial_batches = sum(times), len(times)
    return [acc[key].row(*key) for key in acc]


class _Acc:
    """One (server, C) row over its rounds: requests, latencies and the replica's own statistics."""

    def __init__(self) -> None:
        self.count, self.lat, self.sizes = 0, [], Counter()
        self.infer_ms_sum = self.queue_ms_sum = 0.0
        self.serial_batches = 0  # the serial server's requests (its batches of one)
        self.wall_s = 0.0  # the turns' wall time: every client finishes the request in flight at the deadline

    def add(self, count: int, lat: list[float], stats: dict | None) -> None:
        self.count += count
        self.lat += lat
        if stats:
            self.sizes.update({int(k): v for k, v in stats["batch_sizes"].items()})
            self.infer_ms_sum += stats["mean_inference_ms"] * stats["batches"]
            served = sum(int(k) * v for k, v in stats["batch_sizes"].items())
            self.queue_ms_sum += stats["mean_queue_wait_ms"] * served

    def row(self, label: str, clients: int) -> dict:
        batches, served = sum(self.sizes.values()), sum(k * v for k, v in self.sizes.items())
        out = row(label, clients, self.count, self.lat, self.wall_s, served / batches if batches else 1.0)
        batches = batches or self.serial_batches
        out["infer_ms"] = self.infer_ms_sum / batches if batches else float("nan")
        out["queue_ms"] = self.queue_ms_sum / served if served else float("nan")
        out["sizes"] = " ".join(f"{k}x{v}" for k, v in self.sizes.most_common(4))
        return out


def print_model(args: argparse.Namespace, results: list[dict], ceil: dict[int, float]) -> None:
    print(f"\npolicy={args.policy}{'/' + args.vla_size if args.policy == 'vla' else ''} "
          f"max_batch_size={args.max_batch_size} batch_wait_timeout_s={args.batch_wait_timeout_s} "
          f"seconds/row={args.seconds} rounds={args.rounds} ray_worker_niceness={args.ray_worker_niceness}", flush=True)
    print(f"{'server':<10}{'C':>4}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'mean batch':>12}"
          f"{'infer ms':>10}{'queue ms':>10}  commonest batch sizes (replica's record)")
    order = ["serial", "gauntlet", "direct", "handle"]
    for r in sorted(results, key=lambda r: (order.index(r["server"]), r["clients"])):
        print(f"{r['server']:<10}{r['clients']:>4}{r['req_s']:>10.1f}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}"
              f"{r['mean_batch']:>12.2f}{r.get('infer_ms', float('nan')):>10.1f}{r.get('queue_ms', float('nan')):>10.1f}"
              f"  {r.get('sizes', '')}")
    print(f"in-process ceiling: B=1 {ceil[1]:.1f} obs/s, B=16 {ceil[16]:.1f} obs/s "
          f"({ceil[16] / ceil[1]:.2f}x from batching alone)", flush=True)
    pick = {(r["server"], r["clients"]): r["req_s"] for r in results}
    for c in sorted({r["clients"] for r in results}):
        if ("serial", c) in pick:
            print(f"(b)/(a) at C={c}: {pick[('gauntlet', c)] / pick[('serial', c)]:.2f}x over WebSocket via the proxy, "
                  f"{pick[('direct', c)] / pick[('serial', c)]:.2f}x on the replica's own port, "
                  f"{pick[('handle', c)] / pick[('serial', c)]:.2f}x through DeploymentHandles", flush=True)


def print_targets(noop: list[tuple[str, float, float, float]], results: list[dict]) -> None:
    """The issue's targets, measured in this run: met or missed, with the number."""
    lines = []
    added = {label: a for label, _, _, a in noop}
    if "Gauntlet DeploymentHandle" in added:
        a = added["Gauntlet DeploymentHandle"]
        lines.append(f"handle path within 1 ms of a bare Serve handle call: {a:+.2f} ms "
                     f"({'met' if a <= 1.0 else 'MISSED'})")
    pick = {(r["server"], r["clients"]): r["req_s"] for r in results}
    for c, goal in ((1, 0.9), (16, 1.1)):
        for server, how in (("direct", "on the replica's own port"), ("gauntlet", "via Serve's proxy")):
            if ("serial", c) in pick and (server, c) in pick:
                ratio = pick[(server, c)] / pick[("serial", c)]
                lines.append(f"WebSocket ({how}) >= {goal}x the serial server at C={c}: {ratio:.2f}x "
                             f"({'met' if ratio >= goal else 'MISSED'})")
    if lines:
        print("\ntargets:\n  " + "\n  ".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="vla")
    parser.add_argument("--vla-size", default="tiny")
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement time per row")
    parser.add_argument("--rounds", type=int, default=4, help="turns the rows take (each runs seconds/rounds)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.004)
    parser.add_argument("--num-gpus", type=float, default=0.0)
    parser.add_argument("--noop-requests", type=int, default=400, help="requests per no-op path (0: skip part 1)")
    parser.add_argument("--skip-model", action="store_true", help="part 1 only")
    parser.add_argument("--ray-worker-niceness", type=int, default=0,
                        help="nice value of Ray's workers (Ray's own default is 15): the replica and the proxy then "
                             "run at the serial server's priority, so a neighbour's load on a shared machine "
                             "cannot take CPU from one side only")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every process (experiments)")
    parser.add_argument("--replica-env", action="append", default=[], help="KEY=VALUE for the replica only")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from gauntlet.deployments.app import GRPC_SERVICER
    from gauntlet.deployments.grpc_bind import runtime_env
    from gauntlet.policies.registry import make_policy

    kwargs = policy_kwargs(args.policy, args.vla_size)
    obs = make_obs(make_policy(args.policy, **kwargs).metadata.to_dict(), np.random.default_rng(0))
    ceil = {} if args.skip_model else ceiling(args.policy, kwargs, obs, args.seconds)
    # address="local": never join a cluster another process left on this machine.
    os.environ["RAY_worker_niceness"] = str(args.ray_worker_niceness)  # read by the raylet ray.init starts
    env = runtime_env()
    for item in args.env:
        key, _, value = item.partition("=")
        env["env_vars"][key] = os.environ[key] = value
    from gauntlet.runtime.ray_session import init_local_ray

    init_local_ray("bench_serving", runtime_env=env, log_to_driver=False)  # loopback listeners, token auth
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=HTTP_PORT),
                grpc_options=gRPCOptions(port=GRPC_PORT, grpc_servicer_functions=[GRPC_SERVICER]))
    noop = noop_table(args.noop_requests) if args.noop_requests else []
    results = [] if args.skip_model else model_rows(args, obs, clients)
    serve.shutdown()
    ray.shutdown()
    if noop:
        print_noop(noop)
    if results:
        print_model(args, results, ceil)
    print_targets(noop, results)


if __name__ == "__main__":
    main()
