"""Why the embedded Triton did not start: `TritonStartupError` and how its message is made.

Owns the checks made before starting (checkpoint) and the explanation of a failed start from
what tritonserver wrote (a model that failed to load, a port in use, an exit) or, when it is
up but not ready, from its repository index.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.core.model_meta import names_a_path
from gateway.embedded_triton.tritonlog import TritonLog


class TritonStartupError(RuntimeError):
    """Triton did not get its models ready. `reason` is one of: checkpoint, repository,
    install, port_in_use, model_load, exited, timeout. `log_tail`: Triton's last lines."""

    def __init__(self, reason: str, message: str, log_tail: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.log_tail = list(log_tail)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def checkpoint_problem(model: str) -> str | None:
    """Why `model` cannot be a checkpoint, or None (a hub id is left to the models to load)."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            return f"checkpoint {model} is not a model directory (no config.json)"
        return None
    return f"checkpoint directory {model} does not exist" if names_a_path(model) else None


def explain(log: TritonLog, returncode: int | None, models: Sequence[str], checkpoint: str,
            waited_s: float, index: Sequence[Mapping[str, Any]] = ()) -> TritonStartupError:
    """The error for a run that exited (`returncode`) or was not ready in time (None)."""
    tail = log.tail(40)
    if log.service_failures:
        detail = "; ".join(f"{svc}: {why}" for svc, why in log.service_failures.items())
        return TritonStartupError("port_in_use" if "in use" in detail else "exited",
                                  f"Triton could not open its ports ({detail})", tail)
    failed = {m: why for m, why in log.load_failures.items() if m in models}
    if failed:
        detail = "; ".join(f"model {m!r} failed to load: {why}" for m, why in failed.items())
        return TritonStartupError("model_load", f"{detail} (checkpoint {checkpoint})", tail)
    errors = " | ".join(log.errors()) or "no error in its log"
    if returncode is not None:
        return TritonStartupError(
            "exited", f"tritonserver exited ({describe_exit(returncode)}) before "
            f"{', '.join(models)} were ready: {errors}", tail)
    pending = [m for m in models if m not in log.loaded]
    states = {entry.get("name"): f"{entry.get('state')} {entry.get('reason') or ''}".strip()
              for entry in index}
    if states:  # Triton is up: it knows why a model is not ready
        errors = "; ".join(f"{m}: {states.get(m, 'not in repository')}" for m in pending)
    return TritonStartupError(
        "timeout", f"{', '.join(pending) or 'Triton endpoints'} not ready after "
        f"{waited_s:.0f} s (startup_timeout_s): {errors}", tail)
