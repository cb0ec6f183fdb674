"""Triton's readiness, asked over its HTTP API (stdlib only, proxies bypassed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

# A loopback check must never go through an HTTP(S)_PROXY from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _status(url: str, timeout_s: float, data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with _opener.open(url, data=data, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (OSError, ValueError):  # refused (not listening yet), reset, timeout
        return 0, b""


def models_ready(host: str, port: int, models: Sequence[str], timeout_s: float = 1.0) -> bool:
    """Whether every model in `models` answers ready."""
    return all(_status(f"http://{host}:{port}/v2/models/{m}/ready", timeout_s)[0] == 200
               for m in models)


def repository_index(host: str, port: int, timeout_s: float = 2.0) -> list[dict[str, Any]]:
    """Triton's model repository index (name, version, state, reason); [] if unreachable."""
    code, body = _status(f"http://{host}:{port}/v2/repository/index", timeout_s, data=b"{}")
    if code != 200:
        return []
    try:
        index = json.loads(body)
    except ValueError:
        return []
    return index if isinstance(index, list) else []
