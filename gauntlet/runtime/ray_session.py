"""Starting or joining Ray, the same way for every entry point.

`RAY_ADDRESS` set: join that cluster (its listeners and its auth are the cluster's own choice). Unset:
start an embedded local Ray with `address="local"`, so a stray cluster that a `ray start` left on this
machine is never joined by accident, and harden it (`init_local_ray`):

- Loopback only. Ray binds each of its servers from the node IP: GCS, raylet (node manager and object
  manager), every worker's and driver's gRPC server, the dashboard agent (HTTP and gRPC), the runtime-env
  agent and the metrics exporter all listen on 127.0.0.1 when the node IP is 127.0.0.1, and on every
  interface otherwise. Ray turns a requested 127.0.0.1 into the host's routable address unless it
  believes it runs where clusters are off (its Windows/macOS rule), so the embedded start switches that
  rule on for this process and its children (`use_loopback_node_ip`) and then checks the node IP.
  Serve's own wildcard binds (the gRPC proxy, a replica's inter-deployment gRPC server) are rewritten
  in every worker by the setup hook in `gauntlet.deployments.grpc_bind`.
- Token auth on (`RAY_AUTH_MODE=token`, Ray's switch; children inherit it), with the token file private:
  created 0600 when missing, tightened to 0600 (one line on stderr) when others could read it. Ray itself
  writes `~/.ray/auth_token` with the process umask (usually 0644), so refusing such a file would stop
  every user whose Ray made one; tightening closes the exposure and the line says how to rotate it.

Every worker gets the setup hook and `MUJOCO_GL`, so an actor that renders works the same whichever
entry point started the cluster.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_MUJOCO_GL = "egl"  # CPU rendering through Mesa; a GPU machine may set MUJOCO_GL itself
LOOPBACK_IP = "127.0.0.1"  # the embedded Ray's node IP, and so the address of every listener it opens

# Ray 2.60's token-auth switches (read from the environment by every Ray process; docs: ray-security/token-auth).
AUTH_MODE_ENV = "RAY_AUTH_MODE"  # "token" turns authentication on for every RPC and HTTP entry point
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"  # the token itself; wins over any file
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"  # a token file in place of the default below
DEFAULT_TOKEN_FILE = Path(".ray") / "auth_token"  # under the home directory: Ray's default token file
TOKEN_FILE_MODE = 0o600  # owner read/write only
TOKEN_DIR_MODE = 0o700  # a directory this module creates for the token
# Ray Train 2.60 replaces `print` in its workers with one that logs the line to the root logger and, since
# Ray wraps a worker's sys.stdout, also prints it: every progress line reached the job log twice.
TRAIN_PRINT_PATCH_ENV = "RAY_TRAIN_ENABLE_PRINT_PATCH"


def worker_runtime_env(serve_host: str = "127.0.0.1") -> dict[str, Any]:
    """The runtime_env every Gauntlet job runs its workers with."""
    from gauntlet.deployments.grpc_bind import runtime_env

    env = runtime_env(serve_host)
    env["env_vars"]["MUJOCO_GL"] = os.environ.get("MUJOCO_GL", DEFAULT_MUJOCO_GL)
    env["env_vars"][TRAIN_PRINT_PATCH_ENV] = "0"
    return env


def token_file() -> Path | None:
    """The file Ray reads its token from, or None when `RAY_AUTH_TOKEN` carries the token itself."""
    if os.environ.get(AUTH_TOKEN_ENV):
        return None
    configured = os.environ.get(AUTH_TOKEN_PATH_ENV)
    return Path(configured).expanduser() if configured else Path.home() / DEFAULT_TOKEN_FILE


def _create_token_file(path: Path) -> bool:
    """Puts a new token at `path` unless a file is there already; True when this call made it.

    The token is written to a private temporary file first and hard-linked into place, so no process
    ever reads the file empty or half-written, and two processes starting at once keep one token. The
    temporary file has a fresh random name (mkstemp: created 0600, O_EXCL), so one left behind by a
    killed process never blocks a later start."""
    import tempfile

    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)  # private from birth
    staged = Path(name)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(generate_new_authentication_token())
        os.link(staged, path)
        return True
    except FileExistsError:
        return False
    finally:
        staged.unlink(missing_ok=True)


def ensure_private_token(path: Path, label: str) -> None:
    """Makes `path` a token file only its owner can read: a new random token (mode 0600) when the file
    is missing or empty; an existing one readable by group or others is set to 0600, with one line on
    stderr. Raises PermissionError (naming the file) when it cannot be made private."""
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    path.parent.mkdir(mode=TOKEN_DIR_MODE, parents=True, exist_ok=True)
    if _create_token_file(path):
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        try:
            os.chmod(path, TOKEN_FILE_MODE)
        except PermissionError as err:
            raise PermissionError(f"{path}: Ray's token file is readable by others (mode {mode:04o}) and "
                                  f"cannot be made private ({err.strerror}); fix its owner or mode") from None
        print(f"[{label}] {path}: Ray's token file was readable by others (mode {mode:04o}), now 0600; "
              f"whoever read it can still use it: delete the file to have a new token made",
              file=sys.stderr, flush=True)
    if path.stat().st_size == 0:  # Ray rejects an empty token file: give it a token
        path.write_text(generate_new_authentication_token())


def enable_token_auth(label: str) -> None:
    """Turns Ray's token auth on for this process and the Ray processes it starts, with a private token.

    Raises ValueError when `RAY_AUTH_MODE` asks for another mode: the embedded Ray always uses a token."""
    from ray._private.authentication.authentication_token_setup import _enable_token_auth
    from ray._raylet import AuthenticationTokenLoader

    mode = os.environ.get(AUTH_MODE_ENV, "token")
    if mode.lower() != "token":
        raise ValueError(f"{AUTH_MODE_ENV}={mode}: the embedded Ray always runs with token auth; unset it, "
                         f"or start a cluster yourself and join it with RAY_ADDRESS")
    path = token_file()
    if path is not None:
        ensure_private_token(path, label)
    _enable_token_auth()  # sets RAY_AUTH_MODE=token and refreshes Ray's cached config in this process
    AuthenticationTokenLoader.instance().reset_cache()  # a token file made just now is read afresh


def use_loopback_node_ip() -> None:
    """From now on, Ray in this process and in every process it starts takes this host as local-only:
    a new node's IP, and any 127.0.0.1 address a Ray process is given, stay 127.0.0.1.

    Ray reads the rule from `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` when it is imported, so the variable
    covers the daemons `ray.init` spawns, their workers, and subprocesses that join with RAY_ADDRESS (the
    dashboard agent's job module, a test's CLI run), while the constant covers this already-imported Ray.
    Without it, a daemon given 127.0.0.1:PORT would dial the host's routable address and hang."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def init_local_ray(label: str, *, num_cpus: int | None = None, runtime_env: dict[str, Any] | None = None,
                   log_to_driver: bool = True) -> None:
    """`ray.init` of a new embedded Ray with every listener on 127.0.0.1 and token auth on.

    Raises RuntimeError when Ray came up on another address or without token auth (a Ray upgrade that
    changed either mechanism), after shutting it down."""
    import ray
    from ray._raylet import AuthenticationMode, get_authentication_mode

    enable_token_auth(label)
    use_loopback_node_ip()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
             log_to_driver=log_to_driver)
    node_ip, token = ray.util.get_node_ip_address(), get_authentication_mode() == AuthenticationMode.TOKEN
    if node_ip != LOOPBACK_IP or not token:
        ray.shutdown()
        raise RuntimeError(f"the embedded Ray started on {node_ip} with token auth {'on' if token else 'off'}, "
                           f"expected {LOOPBACK_IP} with it on: this Ray version needs a new hardening")


def start_ray(label: str, *, num_cpus: int | None = None, serve_host: str = "127.0.0.1",
              log_to_driver: bool = True) -> bool:
    """Joins `RAY_ADDRESS` or starts an embedded local Ray; True when this call connected (so the
    caller shuts it down), False when Ray was already up in this process (a test session, a demo).

    `num_cpus` sizes an embedded Ray only (a joined cluster has its own); `label` prefixes the log line.
    """
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    env = worker_runtime_env(serve_host)
    if address:
        print(f"[{label}] connecting to Ray at {address}", file=sys.stderr, flush=True)
        ray.init(address=address, runtime_env=env, log_to_driver=log_to_driver)
    else:
        init_local_ray(label, num_cpus=num_cpus, runtime_env=env, log_to_driver=log_to_driver)
    return True


@contextmanager
def ray_session(label: str, **kwargs: Any) -> Iterator[bool]:
    """`start_ray` for the length of a `with` block; shuts down only a Ray this block started."""
    import ray

    started = start_ray(label, **kwargs)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()
