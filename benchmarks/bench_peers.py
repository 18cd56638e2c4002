"""Gauntlet's serving next to its peers' servers: the same model, the same machine, one run.

Serving rows (C concurrent clients, each sending one observation and waiting for its action chunk):
  vla-eval  allenai's vla-eval `PredictModelServer` with `predict_batch` (`max_batch_size`, `max_wait_time`),
            driven by vla-eval's own client (`vla_eval.connection.Connection`: HELLO, EPISODE_START, then
            `act` per observation; WebSocket + msgpack, images sent raw so neither side pays for PNG);
  serial    an openpi-style server (one `infer` at a time in its event loop; bench_serving's);
  gauntlet  Gauntlet's batched replica over WebSocket through Serve's proxy;
  direct    the same replica on its own WebSocket port;
  handle    the same replica through DeploymentHandles (how rollout actors call it);
  grpc      the same replica through Serve's gRPC proxy (grpc.aio clients).
Every (server, C) row is measured in --rounds turns, the rows taking turns, so a neighbour's load lands on
all alike. Each row: req/s (requests answered / wall time of its turns, connect to last reply), p50/p99 ms,
mean batch (batch-weighted: requests / batches), each server's own inference ms per batch; every ratio
against vla-eval, the serial server and the in-process row. The in-process row is the model's `infer` in
this process, no network, at B = min(C, --max-batch-size) (B = 16 at C = 64), taking its turn with the
others: what the cores allow at that C.
The issue's serving targets follow, met or missed, from this run. Last, the eval rows (`lerobot-eval` vs
`gauntlet eval`, from benchmarks/peers_eval.py; --skip-eval leaves them out).

    .venv/bin/python benchmarks/bench_peers.py [--quick] [--vla-size small] [--clients 1,16,64] [--skip-eval]
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
from bench_serving import (  # noqa: E402  (benchmarks/ is sys.path[0] when run as a script)
    DIRECT_PORT,
    GRPC_PORT,
    HTTP_PORT,
    SERIAL_PORT,
    _Acc,
    drive,
    drive_handle,
    make_obs,
    policy_kwargs,
    start_serial,
)

VLA_EVAL_PORT = 18768
SERVERS = ("vla-eval", "serial", "gauntlet", "direct", "handle", "grpc", "in-process")  # print order


# ----------------------------------------------------------------------------- vla-eval's server


def vla_eval_server(policy_name: str, kwargs: dict, port: int, max_batch_size: int, max_wait_time: float,
                    ready: Any) -> None:
    """The policy behind vla-eval's `PredictModelServer.predict_batch`, served by vla-eval's own `serve_async`.
    Each reply carries its batch's size and inference ms, so the client can tell how the server batched."""
    import logging

    import anyio
    from vla_eval.model_servers.predict import PredictModelServer
    from vla_eval.model_servers.serve import serve_async

    from gauntlet.policies.base import stack_observations
    from gauntlet.policies.registry import make_policy

    logging.getLogger("vla_eval").setLevel(logging.ERROR)  # its backpressure warnings at C = 64 are expected
    policy = make_policy(policy_name, **kwargs)
    if hasattr(policy, "warmup"):
        policy.warmup(max_batch_size)

    class BatchedPolicyServer(PredictModelServer):
        def predict_batch(self, obs_batch: list[dict], ctx_batch: list) -> list[dict]:
            start = time.perf_counter()
            actions = np.asarray(policy.infer(stack_observations(obs_batch))["actions"])  # (B, H, D)
            infer_ms = (time.perf_counter() - start) * 1e3
            return [{"actions": a, "batch": len(obs_batch), "infer_ms": infer_ms} for a in actions]

    server = BatchedPolicyServer(max_batch_size=max_batch_size, max_wait_time=max_wait_time)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(serve_async, server, "127.0.0.1", port)
            ready.set()

    anyio.run(main)


def start_vla_eval(policy_name: str, kwargs: dict, max_batch_size: int, max_wait_time: float) -> Any:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=vla_eval_server, daemon=True,
                       args=(policy_name, kwargs, VLA_EVAL_PORT, max_batch_size, max_wait_time, ready))
    proc.start()
    deadline = time.monotonic() + 300
    while not ready.wait(1.0):
        if not proc.is_alive() or time.monotonic() > deadline:
            proc.terminate()
            raise RuntimeError(f"vla-eval's server did not start (exit code {proc.exitcode}; its error is above)")
    return proc


async def drive_vla_eval(url: str, clients: int, seconds: float, obs: dict,
                         replies: list[tuple[int, float]]) -> tuple[int, list[float]]:
    """C of vla-eval's own clients for `seconds`: (requests answered, latencies in ms); each reply's
    (batch size, inference ms) goes to `replies`."""
    from vla_eval.connection import Connection
    from vla_eval.protocol.numpy_codec import set_image_format

    set_image_format("raw")  # the same bytes on the wire as msgpack-numpy; its default (PNG) costs CPU
    latencies: list[float] = []
    count = 0
    deadline = time.perf_counter() + seconds

    async def one_client() -> None:
        nonlocal count
        async with Connection(url) as conn:  # connects and exchanges HELLO
            await conn.start_episode({})
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                reply = await conn.act(obs)
                latencies.append((time.perf_counter() - t) * 1e3)
                replies.append((int(reply["batch"]), float(reply["infer_ms"])))
                count += 1

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return count, latencies


def vla_eval_stats(replies: list[tuple[int, float]]) -> dict:
    """vla-eval's replies -> the replica's stats shape (`_Acc.add`): a batch of b sends b replies."""
    per_size = Counter(b for b, _ in replies)
    batches = {b: max(1, round(n / b)) for b, n in per_size.items()}
    n_batches = sum(batches.values())
    infer_sum = sum(ms / b for b, ms in replies)  # each batch's ms, counted once over its b replies
    return {"batch_sizes": batches, "batches": n_batches, "mean_inference_ms": infer_sum / n_batches,
            "mean_queue_wait_ms": float("nan")}  # vla-eval does not report its queue wait


# ------------------------------------------------------------------------------------ gRPC rows


async def drive_grpc(target: str, policy: str, clients: int, seconds: float, obs: dict) -> tuple[int, list[float]]:
    """C concurrent gRPC callers (grpc.aio, one channel) of Serve's gRPC proxy."""
    import grpc

    from gauntlet.deployments.app import APP_NAME
    from gauntlet.deployments.proto import policy_pb2, policy_pb2_grpc
    from gauntlet.deployments.tensors import to_tensor
    from gauntlet.keys import PROMPT_KEY

    tensors = {k: to_tensor(np.asarray(v), policy_pb2.Tensor) for k, v in obs.items() if k != PROMPT_KEY}
    request = policy_pb2.InferRequest(policy=policy, observation=tensors, prompt=str(obs.get(PROMPT_KEY, "")))
    metadata = (("application", APP_NAME),)
    latencies: list[float] = []
    count = 0
    deadline = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(target) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)

        async def one() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                await stub.Infer(request, metadata=metadata, timeout=60)
                latencies.append((time.perf_counter() - t) * 1e3)
                count += 1

        await asyncio.gather(*(one() for _ in range(clients)))
    return count, latencies


# ------------------------------------------------------------------------------- in-process row


async def drive_in_process(policy: Any, batch_size: int, seconds: float, obs: dict) -> tuple[int, list[float]]:
    """`policy.infer` on batches of `batch_size` in this process for `seconds`: (observations, ms per batch)."""
    from gauntlet.policies.base import stack_observations

    batch = stack_observations([obs] * batch_size)  # (B, ...) per key
    latencies: list[float] = []
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        policy.infer(batch)
        latencies.append((time.perf_counter() - t) * 1e3)
        count += batch_size
    return count, latencies


def in_process_stats(batch_size: int, latencies: list[float]) -> dict:
    """The in-process turn in the replica's stats shape (`_Acc.add`)."""
    return {"batch_sizes": {batch_size: len(latencies)}, "batches": len(latencies),
            "mean_inference_ms": float(np.mean(latencies)) if latencies else 0.0, "mean_queue_wait_ms": 0.0}


# ----------------------------------------------------------------------------------- CPU time


def serve_pids() -> dict[str, list[int]]:
    """This run's Serve replica and proxy processes (Ray titles its workers `ray::<actor class>`); only
    this process's descendants, so another Ray on the machine is never counted."""
    import psutil

    out: dict[str, list[int]] = {"replica": [], "proxy": []}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::ServeReplica:"):
            out["replica"].append(proc.pid)
        elif title.startswith("ray::ProxyActor"):
            out["proxy"].append(proc.pid)
    return out


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (every thread)."""
    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


# ----------------------------------------------------------------------------- the serving rows


def serving_rows(args: argparse.Namespace, policy: Any, obs: dict, clients: list[int]) -> list[dict]:
    """Every (server, C) row: every server up at once (idle when not driven), then the turns."""
    from ray import serve

    from gauntlet.deployments.app import APP_NAME, PolicyServing, build_app, deployment_name
    from gauntlet.policies.registry import PolicyRef

    kwargs = policy_kwargs(args.policy, args.vla_size)
    serial = start_serial(args.policy, kwargs)
    peer = start_vla_eval(args.policy, kwargs, args.max_batch_size, args.batch_wait_s)
    spec = PolicyServing(PolicyRef(args.policy), max_batch_size=args.max_batch_size,
                         batch_wait_timeout_s=args.batch_wait_s, policy_kwargs=kwargs, num_cpus=1)
    serve.run(build_app([spec], ws_port=DIRECT_PORT), name=APP_NAME, route_prefix="/")
    handle = serve.get_deployment_handle(deployment_name(args.policy), app_name=APP_NAME)
    serial_ms: list[float] = []
    replies: list[tuple[int, float]] = []
    drivers = {
        "vla-eval": lambda c, t: drive_vla_eval(f"ws://127.0.0.1:{VLA_EVAL_PORT}", c, t, obs, replies),
        "serial": lambda c, t: drive(f"ws://127.0.0.1:{SERIAL_PORT}", c, t, obs, serial_ms),
        "gauntlet": lambda c, t: drive(f"ws://127.0.0.1:{HTTP_PORT}/v1/policies/{args.policy}/ws", c, t, obs),
        "direct": lambda c, t: drive(f"ws://127.0.0.1:{DIRECT_PORT}", c, t, obs),
        "handle": lambda c, t: drive_handle(handle, c, t, obs),
        "grpc": lambda c, t: drive_grpc(f"127.0.0.1:{GRPC_PORT}", args.policy, c, t, obs),
        "in-process": lambda c, t: drive_in_process(policy, min(c, args.max_batch_size), t, obs),
    }
    try:
        for run in drivers.values():
            asyncio.run(run(4, args.warmup_s))  # connections, routing tables, the first batches
        ray_pids = serve_pids()
        pids = {label: ray_pids["replica"] for label in drivers}
        pids.update({"vla-eval": [peer.pid], "serial": [serial.pid], "in-process": []})
        pids["proxy"] = ray_pids["proxy"]

        def stats(label: str, c: int, lat: list[float]) -> dict | None:
            """The turn's batching record, in the replica's stats shape (`_Acc.add`); serial: None."""
            if label == "vla-eval":
                return vla_eval_stats(replies) if replies else None
            if label == "in-process":
                return in_process_stats(min(c, args.max_batch_size), lat)
            return None if label == "serial" else handle.get_stats.remote().result()

        def reset() -> None:
            handle.reset_stats.remote().result()
            serial_ms.clear()
            replies.clear()

        rows = take_turns(args, drivers, clients, pids, reset, stats, serial_ms)
    finally:
        serial.terminate()
        peer.terminate()
        serve.delete(APP_NAME)
    return rows


def take_turns(args: argparse.Namespace, drivers: dict[str, Any], clients: list[int], pids: dict[str, list[int]],
               reset: Any, stats: Any, serial_ms: list[float]) -> list[dict]:
    """`--rounds` rounds; in each, every (server, C) row runs seconds/rounds, so a neighbour's load lands
    on all alike. `pids`: each server's processes, and Serve's proxy under "proxy"."""
    acc = {(label, c): _Acc() for c in clients for label in drivers}
    cpu = {key: np.zeros(3) for key in acc}  # CPU s: (this process: clients; the server; Serve's proxy)
    for _ in range(args.rounds):
        for c in clients:
            for label, run in drivers.items():
                reset()
                before = np.array([time.process_time(), cpu_s(pids[label]), cpu_s(pids["proxy"])])
                start = time.perf_counter()
                count, lat = asyncio.run(run(c, args.seconds / args.rounds))
                # Connect to last reply: the requests in flight at the deadline (up to a p99 latency at
                # C = 64) are answered after it, so dividing by the turn's seconds would overstate the rate.
                acc[(label, c)].wall_s += time.perf_counter() - start
                cpu[(label, c)] += np.array([time.process_time(), cpu_s(pids[label]), cpu_s(pids["proxy"])]) - before
                acc[(label, c)].add(count, lat, stats(label, c, lat))
                if label == "serial":
                    acc[(label, c)].infer_ms_sum += sum(serial_ms)
                    acc[(label, c)].serial_batches += len(serial_ms)
    rows = []
    for key in acc:
        rows.append(acc[key].row(*key))
        rows[-1]["cpu_ms"] = cpu[key] * 1e3 / max(acc[key].count, 1)  # per request: clients, server, proxy
    return rows


def print_serving(args: argparse.Namespace, rows: list[dict]) -> None:
    print(f"\npolicy={args.policy}{'/' + args.vla_size if args.policy == 'vla' else ''} "
          f"max_batch_size={args.max_batch_size} wait={args.batch_wait_s * 1e3:.0f} ms (both batched servers) "
          f"seconds/row={args.seconds} rounds={args.rounds}", flush=True)
    print(f"{'server':<10}{'C':>4}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}{'infer ms':>10}"
          f"{'x vla-eval':>11}{'x serial':>10}{'of in-proc':>11}  {'CPU ms/req: cli/srv/proxy':<26}"
          "commonest batch sizes")
    pick = {(r["server"], r["clients"]): r for r in rows}
    for r in sorted(rows, key=lambda r: (r["clients"], SERVERS.index(r["server"]))):
        peer, serial, alone = (pick[(s, r["clients"])]["req_s"] for s in ("vla-eval", "serial", "in-process"))
        print(f"{r['server']:<10}{r['clients']:>4}{r['req_s']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
              f"{r['mean_batch']:>7.2f}{r['infer_ms']:>10.1f}{r['req_s'] / max(peer, 1e-9):>10.2f}x"
              f"{r['req_s'] / max(serial, 1e-9):>9.2f}x{r['req_s'] / max(alone, 1e-9):>10.0%}  "
              f"{'/'.join(f'{v:.1f}' for v in r['cpu_ms']):<26}{r['sizes']}")
    print("(in-process: p50/p99 are ms per batch; its req/s counts observations. CPU ms/req: user + system CPU "
          "per answered request of this process (clients; the in-process model), the server's process(es) (the "
          "replica for Gauntlet's rows) and Serve's proxy, every thread counted; idle servers use almost none)",
          flush=True)


def print_targets(rows: list[dict]) -> None:
    """The issue's serving targets, measured in this run: met or missed, with the number."""
    pick = {(r["server"], r["clients"]): r for r in rows}
    lines = []
    for server, c, goal in (("direct", 1, 1.2), ("direct", 16, 1.2), ("direct", 64, 1.0), ("gauntlet", 16, 1.1)):
        if (server, c) not in pick:
            continue
        mine, peer = pick[(server, c)], pick[("vla-eval", c)]
        ratio = mine["req_s"] / peer["req_s"]
        ok = ratio >= goal
        text = f"{server} (replica's own port) " if server == "direct" else "gauntlet (WebSocket via Serve's proxy) "
        text += f">= {goal}x vla-eval at C={c}: {ratio:.3f}x"
        if c == 64:
            no_worse = mine["p99_ms"] <= peer["p99_ms"]
            ok = ok and no_worse
            text += f", p99 {mine['p99_ms']:.1f} vs {peer['p99_ms']:.1f} ms ({'no worse' if no_worse else 'worse'})"
        lines.append(f"{text} ({'met' if ok else 'MISSED'})")
    if lines:
        print("\nserving targets:\n  " + "\n  ".join(lines), flush=True)


# ---------------------------------------------------------------------------------------- eval


def eval_module() -> Any | None:
    """benchmarks/peers_eval.py (lerobot-eval vs gauntlet eval), or None where this checkout lacks it."""
    try:
        import peers_eval
    except ModuleNotFoundError as exc:
        if exc.name != "peers_eval":
            raise
        return None
    return peers_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     conflict_handler="resolve")  # peers_eval declares --quick too: one flag
    evals = eval_module()
    if evals is not None:
        evals.add_eval_args(parser)
    parser.add_argument("--quick", action="store_true",
                        help="every row briefly (serving: 2 s turns; eval: peers_eval's quick): a few minutes in all")
    parser.add_argument("--policy", default="vla")
    parser.add_argument("--vla-size", default="small")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--seconds", type=float, default=9.0, help="measurement time per serving row")
    parser.add_argument("--rounds", type=int, default=3, help="turns the rows take (each runs seconds/rounds)")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="each server's warm-up at C=4")
    parser.add_argument("--max-batch-size", type=int, default=16, help="both batched servers")
    parser.add_argument("--batch-wait-s", type=float, default=0.005,
                        help="both batched servers: vla-eval's max_wait_time, the replica's batch_wait_timeout_s")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--skip-eval", action="store_true", help="leave out the lerobot-eval vs gauntlet eval rows")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.warmup_s = 4.0, 2, 0.5
    clients = [int(c) for c in args.clients.split(",")]
    if not args.skip_serving:
        run_serving(args, clients)
    if args.skip_eval:
        return
    if evals is None:
        print("\neval rows: benchmarks/peers_eval.py is not in this checkout (they need it)", flush=True)
        return
    evals.print_eval_rows(evals.eval_rows(args))


def run_serving(args: argparse.Namespace, clients: list[int]) -> None:
    try:
        import vla_eval  # noqa: F401  (the peer: fail here, before minutes of start-up)
    except ModuleNotFoundError:
        raise SystemExit("bench_peers needs vla-eval (the dev extra): scripts/install.sh, or "
                         ".venv/bin/pip install 'vla-eval==0.8.0'") from None
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from gauntlet.deployments.app import GRPC_SERVICER
    from gauntlet.deployments.grpc_bind import runtime_env
    from gauntlet.policies.registry import make_policy
    from gauntlet.runtime.ray_session import init_local_ray

    policy = make_policy(args.policy, **policy_kwargs(args.policy, args.vla_size))  # the in-process row's
    if hasattr(policy, "warmup"):
        policy.warmup(args.max_batch_size)
    obs = make_obs(policy.metadata.to_dict(), np.random.default_rng(0))
    # Ray's workers at the peers' priority (Ray's own default is 15), so load from a neighbour on a shared
    # machine cannot take CPU from one side only.
    os.environ["RAY_worker_niceness"] = "0"
    init_local_ray("bench_peers", runtime_env=runtime_env(), log_to_driver=False)  # loopback, token auth
    serve.start(http_options=HTTPOptions(host="127.0.0.1", port=HTTP_PORT),
                grpc_options=gRPCOptions(port=GRPC_PORT, grpc_servicer_functions=[GRPC_SERVICER]))
    try:
        rows = serving_rows(args, policy, obs, clients)
    finally:
        serve.shutdown()
        ray.shutdown()
    print_serving(args, rows)
    print_targets(rows)


if __name__ == "__main__":
    main()
