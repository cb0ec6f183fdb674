"""The try-it page with two served models, in a real headless Chromium (tests/support/browser.py)
against the HTTP API over two in-process engines (tests/support/two_models.py; no Triton): the
model selector lists both, describes the chosen one, and the page's requests go to it.
(With one model the selector stays hidden: tests/real_triton/test_webpage.py.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.support import imagegen
from tests.support.browser import chromium
from tests.support.two_models import (
    BASE,
    LARGE,
    LARGE_CHECKPOINT,
    TwoModels,
    http_serving,
    two_models,
)

pytestmark = pytest.mark.timeout(120)

WAIT_MS = 30_000


@pytest_asyncio.fixture(scope="module")
async def served(tiny_checkpoint) -> AsyncIterator[tuple[str, TwoModels]]:
    with two_models(tiny_checkpoint) as models:
        async with http_serving(models) as url:
            yield url, models


async def test_the_selector_picks_the_model_the_page_asks(served):
    from playwright.async_api import expect

    url, models = served
    bodies: list[dict] = []
    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": 375, "height": 800})
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: bodies.append(json.loads(r.post_data))
                if r.method == "POST" else None)
        await page.goto(url + "/")

        selector = page.locator("#model")
        await expect(page.locator("#model-form")).to_be_visible()
        await expect(selector.locator("option")).to_have_count(2)
        assert await selector.locator("option").evaluate_all(
            "options => options.map(o => o.value)") == [BASE, LARGE]
        await expect(selector).to_have_value(BASE)  # the default comes first, selected
        await expect(page.locator("#model-info")).to_contain_text(str(models.checkpoint))

        await selector.select_option(LARGE)
        await expect(page.locator("#model-info")).to_contain_text(LARGE_CHECKPOINT)
        await expect(page.locator("#model-info")).to_contain_text(
            f"embeddings of {models.dim(LARGE)}")
        await expect(selector).to_have_value(LARGE)

        before = {name: b.image_rows for name, b in models.backends.items()}
        await page.set_input_files("#file-input", files=[{
            "name": "street.jpg", "mimeType": "image/jpeg",
            "buffer": imagegen.photo_jpeg(64, 48, seed=3)}])
        await page.fill("#labels", "a cat, a dog")
        await page.click("#classify")
        await expect(page.locator("#results .bar-row")).to_have_count(2)
        await page.fill("#query", "a street")
        await page.click("#search")
        await expect(page.locator("#matches .bar-row")).to_have_count(1)
        await expect(page.locator("#error")).to_be_hidden()
        await expect(page.locator("#search-error")).to_be_hidden()
        await context.close()
    assert [b.get("model") for b in bodies] == [LARGE, LARGE]  # classify, then score
    assert models.backends[LARGE].image_rows == before[LARGE] + 2
    assert models.backends[BASE].image_rows == before[BASE]
    assert errors == []
