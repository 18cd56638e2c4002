"""Serial policy server vs Gauntlet's batched Serve deployment, same model, same machine, one run.

(a) serial: an openpi-style WebSocket server that runs `policy.infer` on one request at a time in
    its event loop (today's usual set-up);
(b) Gauntlet: the same policy behind Ray Serve's `@serve.batch` replica, reached over the same
    WebSocket protocol through Serve's proxy ("gauntlet" rows), and through DeploymentHandles, the
    in-cluster path rollout actors use ("handle" rows).
Both are driven by C concurrent clients (C in --clients), each a real WebSocket connection sending
observations and waiting for actions. Prints requests/s, p50/p99 latency and mean batch size per row,
and the ratio (b)/(a) at C = 16.

    .venv/bin/python benchmarks/bench_serving.py [--policy vla] [--vla-size tiny] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from gauntlet.policies import msgpack_numpy  # noqa: E402


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
    return obs


def serial_server(policy, port: int, ready: threading.Event, stop: threading.Event) -> None:
    """openpi-style: each connection's handler calls infer synchronously, so requests serialise."""
    import websockets.asyncio.server as wss

    from gauntlet.policies.base import stack_observations

    async def handler(ws) -> None:
        await ws.send(msgpack_numpy.packb(policy.metadata.to_dict()))
        async for message in ws:
            obs = msgpack_numpy.unpackb(message)
            out = policy.infer(stack_observations([obs]))  # blocks the loop: one at a time
            await ws.send(msgpack_numpy.packb({"actions": np.asarray(out["actions"][0])}))

    async def main() -> None:
        async with wss.serve(handler, "127.0.0.1", port, compression=None, max_size=None):
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)

    asyncio.run(main())


async def drive(url: str, clients: int, seconds: float, obs: dict) -> tuple[int, list[float]]:
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
                count += 1

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return count, latencies


def row(label: str, clients: int, count: int, lat: list[float], seconds: float, batch: float | None) -> dict:
    return {"server": label, "clients": clients, "req_s": count / seconds,
            "p50_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if lat else float("nan"), "mean_batch": batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", default="vla")
    parser.add_argument("--vla-size", default="tiny")
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement time per row")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.004)
    parser.add_argument("--num-gpus", type=float, default=0.0)
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]

    import ray
    from ray import serve

    from gauntlet.deployments.app import APP_NAME, PolicyServing, deployment_name, start_serve
    from gauntlet.deployments.grpc_bind import runtime_env
    from gauntlet.policies.registry import PolicyRef, make_policy

    kwargs = {"config_name": args.vla_size} if args.policy == "vla" else {}
    policy = make_policy(args.policy, **kwargs)
    if hasattr(policy, "warmup"):
        policy.warmup(1)
    meta = policy.metadata.to_dict()
    obs = make_obs(meta, np.random.default_rng(0))
    results = []

    # The ceiling any server can reach here: in-process infer, no network, B=1 vs B=16.
    from gauntlet.policies.base import stack_observations

    if hasattr(policy, "warmup"):
        policy.warmup(16)
    ceiling = {}
    for b in (1, 16):
        batch = stack_observations([obs] * b)
        policy.infer(batch)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < min(args.seconds, 3.0):
            policy.infer(batch)
            n += b
        ceiling[b] = n / (time.perf_counter() - t)
    print(f"in-process ceiling: B=1 {ceiling[1]:.1f} obs/s, B=16 {ceiling[16]:.1f} obs/s "
          f"({ceiling[16] / ceiling[1]:.2f}x from batching alone)", flush=True)

    stop, ready = threading.Event(), threading.Event()
    port = 18765
    thread = threading.Thread(target=serial_server, args=(policy, port, ready, stop), daemon=True)
    thread.start()
    ready.wait(30)
    for c in clients:
        count, lat = asyncio.run(drive(f"ws://127.0.0.1:{port}", c, args.seconds, obs))
        results.append(row("serial", c, count, lat, args.seconds, 1.0))
        print(f"serial   C={c:<3} {results[-1]['req_s']:8.1f} req/s", flush=True)
    stop.set()
    thread.join(5)
    del policy

    ray.init(include_dashboard=False, log_to_driver=False, runtime_env=runtime_env())
    spec = PolicyServing(PolicyRef(args.policy), max_batch_size=args.max_batch_size,
                         batch_wait_timeout_s=args.batch_wait_timeout_s, policy_kwargs=kwargs,
                         num_cpus=1, num_gpus=args.num_gpus)
    start_serve([spec], http_port=18766, grpc_port=None)
    handle = serve.get_deployment_handle(deployment_name(args.policy), app_name=APP_NAME)
    url = f"ws://127.0.0.1:18766/v1/policies/{args.policy}/ws"
    asyncio.run(drive(url, 4, 1.0, obs))  # connection warm-up
    for c in clients:
        handle.reset_stats.remote().result()
        count, lat = asyncio.run(drive(url, c, args.seconds, obs))
        stats = handle.get_stats.remote().result()
        results.append(row("gauntlet", c, count, lat, args.seconds, stats["mean_batch_size"]))
        print(f"gauntlet C={c:<3} {results[-1]['req_s']:8.1f} req/s", flush=True)
    # (c) the in-cluster path rollout actors use: DeploymentHandle calls, no HTTP proxy in between.
    async def drive_handle(c: int) -> tuple[int, list[float]]:
        lat: list[float] = []
        count = 0
        deadline = time.perf_counter() + args.seconds

        async def one() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                out = await handle.infer.remote(obs)
                if "error" in out:
                    raise RuntimeError(out["error"])
                lat.append((time.perf_counter() - t) * 1e3)
                count += 1

        await asyncio.gather(*(one() for _ in range(c)))
        return count, lat

    for c in clients:
        handle.reset_stats.remote().result()
        count, lat = asyncio.run(drive_handle(c))
        stats = handle.get_stats.remote().result()
        results.append(row("handle", c, count, lat, args.seconds, stats["mean_batch_size"]))
        print(f"handle   C={c:<3} {results[-1]['req_s']:8.1f} req/s", flush=True)
    serve.shutdown()
    ray.shutdown()

    print(f"\npolicy={args.policy}{'/' + args.vla_size if args.policy == 'vla' else ''} "
          f"max_batch_size={args.max_batch_size} batch_wait_timeout_s={args.batch_wait_timeout_s} "
          f"seconds/row={args.seconds}", flush=True)
    print(f"{'server':<10}{'C':>4}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'mean batch':>12}")
    for r in results:
        print(f"{r['server']:<10}{r['clients']:>4}{r['req_s']:>10.1f}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}"
              f"{r['mean_batch']:>12.2f}")
    pick = {(r["server"], r["clients"]): r["req_s"] for r in results}
    print(f"in-process ceiling: B=1 {ceiling[1]:.1f} obs/s, B=16 {ceiling[16]:.1f} obs/s "
          f"({ceiling[16] / ceiling[1]:.2f}x from batching alone)", flush=True)
    if ("gauntlet", 16) in pick and ("serial", 16) in pick:
        print(f"\n(b)/(a) at C=16: {pick[('gauntlet', 16)] / pick[('serial', 16)]:.2f}x over WebSocket, "
              f"{pick[('handle', 16)] / pick[('serial', 16)]:.2f}x through DeploymentHandles", flush=True)


if __name__ == "__main__":
    main()
