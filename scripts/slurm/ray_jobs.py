"""The waiting and job submission of `ray_on_slurm.sh`, where a shell loop would be fragile.

    ray_jobs.py wait-port HOST:PORT WAIT_S                  the head's GCS accepts connections
    ray_jobs.py wait-nodes HOST:PORT N WAIT_S               N nodes are alive in the cluster
    ray_jobs.py submit DASHBOARD_URL CWD WAIT_S -- CMD... [-- CMD...]

`submit` runs each command as a Ray job (entrypoint `cd CWD && CMD`), streams its log to stdout, and
stops at the first that does not succeed (exit 1). Ray's job API answers before the head's dashboard
agent is ready ("No available agent"), so a submission is retried until WAIT_S has passed. Token auth
comes from the environment (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH), as for every Ray client.
"""

from __future__ import annotations

import asyncio
import shlex
import socket
import sys
import time

NOT_READY = "No available agent"  # the job API's answer while the head's agent is starting


def log(message: str) -> None:
    print(f"[slurm] {message}", file=sys.stderr, flush=True)


def wait_port(address: str, wait_s: float) -> int:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return 0
        except OSError:
            time.sleep(1)
    log(f"the head's GCS at {address} did not come up in {wait_s:.0f} s; see node0.log")
    return 1


def wait_nodes(address: str, want: int, wait_s: float) -> int:
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        deadline = time.monotonic() + wait_s
        while (alive := sum(n["Alive"] for n in ray.nodes())) < want and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        ray.shutdown()
    log(f"{alive}/{want} nodes alive")
    if alive < want:
        log(f"only {alive} of {want} nodes joined in {wait_s:.0f} s; see node*.log")
        return 1
    return 0


def split_commands(args: list[str]) -> list[list[str]]:
    """["--", "a", "b", "--", "c"] -> [["a", "b"], ["c"]] (empty commands dropped)."""
    commands: list[list[str]] = []
    for arg in args:
        if arg == "--":
            commands.append([])
        elif not commands:
            raise SystemExit(f"expected -- before {arg!r}")
        else:
            commands[-1].append(arg)
    return [c for c in commands if c]


def submit_one(client, entrypoint: str, wait_s: float) -> str:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint)
        except RuntimeError as exc:
            if NOT_READY not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(3)


async def stream_logs(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def submit(dashboard: str, cwd: str, wait_s: float, args: list[str]) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard)
    for command in split_commands(args):
        log(f"job: {shlex.join(command)}")
        job_id = submit_one(client, f"cd {shlex.quote(cwd)} && {shlex.join(command)}", wait_s)
        asyncio.run(stream_logs(client, job_id))
        while not (status := client.get_job_status(job_id)).is_terminal():
            time.sleep(1)
        log(f"job {job_id}: {status.value}")
        if status != JobStatus.SUCCEEDED:
            return 1
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["wait-port"] and len(argv) == 3:
        return wait_port(argv[1], float(argv[2]))
    if argv[:1] == ["wait-nodes"] and len(argv) == 4:
        return wait_nodes(argv[1], int(argv[2]), float(argv[3]))
    if argv[:1] == ["submit"] and len(argv) >= 5:
        return submit(argv[1], argv[2], float(argv[3]), argv[4:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
