"""Every setting has its row in the README's settings table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gateway.config import ENV_PREFIX, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_has_a_row_in_the_readme() -> None:
    rows = {name.strip().strip("`")  # a row may name several: `A`, `B`
            for line in README.read_text().splitlines() if line.startswith(f"| `{ENV_PREFIX}")
            for name in line.split("|")[1].split(",")}
    variables = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    assert variables - rows == set()
