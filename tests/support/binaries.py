"""Programs from Debian's packages that some tests run (scripts/debian_packages.sh installs
them): missing ones skip those tests on a developer's machine and fail them in CI."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str) -> str:
    """The path of ``name``; skips the test when it is missing, unless CI is set (then fails)."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (scripts/debian_packages.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
