"""A LeRobot policy on Gauntlet's batched replica vs the same policy one request at a time, per family.

Both rows serve the same saved LeRobot policy (randomly initialised ACT, Diffusion, SmolVLA, pi0 or
pi0.5 at the small sizes of untrained_checkpoints.py / vla_checkpoints.py, or --pretrained DIR) in the
same LeRobot runtime_env, on the same replica code:
(a) one-at-a-time: max_batch_size 1, so every request is its own LeRobot call (what LeRobot's policy
    server and openpi's server do);
(b) batched: max_batch_size C, so concurrent requests share one `predict_action_chunk` call.
C concurrent clients send observations through DeploymentHandles (the path rollout actors use) for
--seconds each (every client finishes the request it has in flight). Prints requests/s, p50/p99
latency, mean batch size per row and the ratio (b)/(a) per family.

    .venv/bin/python benchmarks/bench_lerobot_serving.py [--families act,diffusion,smolvla,pi0,pi05]
        [--clients 16] [--seconds 20]

A pi0/pi0.5 is 4.0 B parameters whatever its settings (bfloat16, 8.9 GB on disk, ~10 GB of RAM while
built or loaded), so families run one after another and each checkpoint is deleted after its rows.
The first run on a machine builds the LeRobot environment (see docs/lerobot.md).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time

import numpy as np

from gauntlet.policies.registry import PolicyRef, runtime_env_for


def _observation(meta: dict, rng: np.random.Generator) -> dict:
    obs: dict = {}
    for key, field in meta["observation_spec"].items():
        if field["dtype"] == "str":
            obs[key] = "lift the cube"
        elif field["dtype"] == "uint8":
            obs[key] = rng.integers(0, 256, size=field["shape"], dtype=np.uint8)
        else:
            obs[key] = rng.normal(size=field["shape"]).astype(np.float32)
    return obs


def _drive(handle, meta: dict, clients: int, seconds: float) -> dict:
    """C threads, each one request in flight at a time, for `seconds`."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        obs = _observation(meta, rng)
        while time.perf_counter() < stop:
            start = time.perf_counter()
            out = handle.infer.remote(obs).result()
            assert "actions" in out, out
            with lock:
                latencies.append((time.perf_counter() - start) * 1e3)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    stats = handle.get_stats.remote().result()
    sizes = {int(k): v for k, v in stats["batch_sizes"].items()}
    return {"rps": len(latencies) / elapsed, "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99)),
            "mean_batch": sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))}


def _serve_and_measure(path: str, max_batch_size: int, clients: int, seconds: float, cpus: float) -> dict:
    from ray import serve

    from gauntlet.deployments.app import PolicyServing, build_app, deployment_name

    spec = PolicyServing(PolicyRef("lerobot", path), max_batch_size=max_batch_size, batch_wait_timeout_s=0.01,
                         num_cpus=cpus, runtime_env=runtime_env_for("lerobot"))
    app = f"bench-lerobot-{max_batch_size}"
    serve.run(build_app([spec]), name=app, route_prefix=None)
    handle = serve.get_deployment_handle(deployment_name("lerobot"), app_name=app)
    meta = handle.metadata.remote().result()
    _drive(handle, meta, clients, min(3.0, seconds))  # warm-up: first calls allocate
    handle.reset_stats.remote().result()
    row = _drive(handle, meta, clients, seconds)
    serve.delete(app)
    return row


FAMILIES = ("act", "diffusion", "smolvla", "pi0", "pi05")


def _family_rows(ray, family: str, path: str | None, args: argparse.Namespace) -> dict:
    """Builds `family` (unless `path`), measures both rows, deletes what it built."""
    from gauntlet.policies.lerobot.untrained_checkpoints import save_random_policy

    out = None
    if path is None:
        began = time.perf_counter()
        out = tempfile.mkdtemp(prefix=f"bench-lerobot-{family}-")
        # max_calls=1: the building process exits, so a pi0 is not held twice while the replica loads it.
        save = ray.remote(num_cpus=0, max_calls=1, runtime_env=runtime_env_for("lerobot"))(save_random_policy)
        path = ray.get(save.remote(family, out, image_size=args.image_size))
        print(f"[{family}] random checkpoint saved in {time.perf_counter() - began:.0f}s", flush=True)
    try:
        serial = _serve_and_measure(path, 1, args.clients, args.seconds, args.replica_cpus)
        print(f"[{family}] one-at-a-time: {serial['rps']:.2f} req/s", flush=True)
        batched = _serve_and_measure(path, args.clients, args.clients, args.seconds, args.replica_cpus)
        print(f"[{family}] batched: {batched['rps']:.2f} req/s", flush=True)
        return {"one-at-a-time": serial, "batched": batched}
    finally:
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="act,diffusion",
                        help=f"comma-separated random policies to build and measure, of {','.join(FAMILIES)}")
    parser.add_argument("--type", default=None, choices=FAMILIES, help="one family (same as --families TYPE)")
    parser.add_argument("--pretrained", default=None, help="a LeRobot pretrained dir instead of a random one")
    parser.add_argument("--image-size", type=int, default=64, help="camera size of the random policies (px)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients C")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement time per row")
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    args = parser.parse_args()
    families = [args.type] if args.type else [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"--families: unknown {unknown} (known: {','.join(FAMILIES)})")

    import ray

    from gauntlet.runtime.ray_session import start_ray

    start_ray("bench_lerobot_serving", log_to_driver=False)  # RAY_ADDRESS, else embedded: loopback, token auth
    rows = {args.pretrained: _family_rows(ray, "pretrained", args.pretrained, args)} if args.pretrained else \
        {family: _family_rows(ray, family, None, args) for family in families}
    print(f"\nLeRobot serving, C = {args.clients} concurrent clients, {args.seconds:.0f}s per row, "
          f"{args.image_size} px cameras")
    print(f"{'policy':<12}{'row':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'mean batch':>12}")
    for family, pair in rows.items():
        for name, row in pair.items():
            print(f"{family:<12}{name:<16}{row['rps']:>10.2f}{row['p50']:>10.0f}{row['p99']:>10.0f}"
                  f"{row['mean_batch']:>12.2f}")
        print(f"{family:<12}ratio batched / one-at-a-time: {pair['batched']['rps'] / pair['one-at-a-time']['rps']:.2f}x "
              "requests/s", flush=True)


if __name__ == "__main__":
    main()
