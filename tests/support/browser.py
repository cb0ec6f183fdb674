"""A headless Chromium for the web page's tests: Debian's `chromium` (scripts/debian_packages.sh),
driven through Playwright's Python API. Playwright's own browser download is never used, so
nothing is fetched at test time.

Playwright's async API, not Selenium: the tests run the gateway in the same event loop, and a
blocking driver would stall the server it is talking to.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from tests.support.binaries import require_binary

if TYPE_CHECKING:
    from playwright.async_api import Browser

# Without the background-networking flags Chromium keeps trying to reach Google's services,
# which a closed network refuses, and stalls. Playwright gives each launch a new, empty
# --user-data-dir of its own (it refuses one in `args`).
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless; skips (fails under CI) when it is not installed."""
    executable = require_binary("chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=list(CHROMIUM_ARGS), timeout=60_000)
        try:
            yield browser
        finally:
            await browser.close()
