"""A LeRobot policy on Gauntlet's batched replica vs the same policy one request at a time, one run.

Both rows serve the same saved LeRobot policy (a randomly initialised ACT or Diffusion by default, or
--pretrained DIR) in the same LeRobot runtime_env, on the same replica code:
(a) one-at-a-time: max_batch_size 1, so every request is its own LeRobot call (what LeRobot's policy
    server and openpi's server do);
(b) batched: max_batch_size C, so concurrent requests share one `predict_action_chunk` call.
C concurrent clients send observations through DeploymentHandles (the path rollout actors use) for
--seconds each. Prints requests/s, p50/p99 latency, mean batch size per row and the ratio (b)/(a).

    .venv/bin/python benchmarks/bench_lerobot_serving.py [--type act|diffusion] [--clients 16] [--seconds 20]

The first run on a machine builds the LeRobot environment (see README: LeRobot policies).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--type", default="act", choices=("act", "diffusion"), help="random policy to build")
    parser.add_argument("--pretrained", default=None, help="a LeRobot pretrained dir instead of a random one")
    parser.add_argument("--image-size", type=int, default=64, help="camera size of the random policy (px)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients C")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement time per row")
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    args = parser.parse_args()

    import ray

    from gauntlet.runtime.ray_session import start_ray

    start_ray("bench_lerobot_serving", log_to_driver=False)  # RAY_ADDRESS, else embedded: loopback, token auth
    path = args.pretrained
    if path is None:
        from gauntlet.policies.lerobot.untrained_checkpoints import save_random_policy

        began = time.perf_counter()
        save = ray.remote(num_cpus=0, runtime_env=runtime_env_for("lerobot"))(save_random_policy)
        path = ray.get(save.remote(args.type, tempfile.mkdtemp(prefix="bench-lerobot-"),
                                   image_size=args.image_size))
        print(f"LeRobot env ready + random {args.type} saved in {time.perf_counter() - began:.0f}s", flush=True)
    serial = _serve_and_measure(path, 1, args.clients, args.seconds, args.replica_cpus)
    batched = _serve_and_measure(path, args.clients, args.clients, args.seconds, args.replica_cpus)
    print(f"\nLeRobot {args.pretrained or args.type}, C = {args.clients} concurrent clients, {args.seconds:.0f}s per row")
    print(f"{'row':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'mean batch':>12}")
    for name, row in (("one-at-a-time", serial), ("batched", batched)):
        print(f"{name:<16}{row['rps']:>10.1f}{row['p50']:>10.1f}{row['p99']:>10.1f}{row['mean_batch']:>12.2f}")
    print(f"\nratio batched / one-at-a-time: {batched['rps'] / serial['rps']:.2f}x requests/s")


if __name__ == "__main__":
    main()
