"""One authentication rule for every protocol: with a key set, a request must carry
`Authorization: Api-Key KEY` (openpi's header) — HTTP on every route but `/healthz`, the WebSocket
before its metadata frame, gRPC in its `authorization` metadata. Keys are compared in constant time.

The key comes from `--api-key-file`, the `GAUNTLET_API_KEY` environment variable or (least safe: it
shows in the process list) `--api-key`; a config file for `serve run` names a file (`api_key_file`),
read where Serve builds the app. With a key set, Serve's own `/-/routes`, `/-/healthz` and gRPC
`ListApplications` / `Healthz` require it too (`proxy_guard`).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from pathlib import Path

API_KEY_ENV = "GAUNTLET_API_KEY"
SCHEME = "Api-Key"
REFUSAL = f"missing or wrong Authorization: {SCHEME} header"


class ApiKeyError(ValueError):
    """The configured key cannot be used (an unreadable or empty key file)."""


def resolve_api_key(key: str | None = None, key_file: str | None = None) -> str | None:
    """The key to require: `key_file`'s first line, else `key`, else $GAUNTLET_API_KEY, else None."""
    if key_file:
        return read_api_key_file(key_file, "--api-key-file")
    return key or os.environ.get(API_KEY_ENV) or None


def read_api_key_file(key_file: str, flag: str) -> str:
    """The first line of `key_file`; ApiKeyError naming `flag` and the file if it cannot be used."""
    try:
        text = Path(key_file).read_text().strip()
    except OSError as exc:
        raise ApiKeyError(f"{flag} {key_file}: cannot read it ({exc.strerror})") from None
    if not text:
        raise ApiKeyError(f"{flag} {key_file}: the file is empty")
    return text.splitlines()[0].strip()


class ApiKeyGuard:
    """Decides whether a request's credentials pass; `allows` is True for everything without a key."""

    def __init__(self, key: str | None):
        self._expected = f"{SCHEME} {key}".encode() if key else None

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def allows(self, authorization: str | None) -> bool:
        if self._expected is None:
            return True
        # compare_digest on bytes: the time taken does not depend on where the strings differ.
        return hmac.compare_digest((authorization or "").encode(), self._expected)

    def allows_grpc(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        """gRPC metadata keys are lower-case; a binary value never matches."""
        values = [v for k, v in (metadata or ()) if k == "authorization" and isinstance(v, str)]
        return self.allows(values[0] if len(values) == 1 else None)
