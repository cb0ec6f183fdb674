"""The try-it page (gateway/http/static/) in a real headless Chromium, against the real gateway's
HTTP port and the real embedded Triton: what the page shows must be what gRPC answers for the
same images, labels and template, to the precision shown; the API's errors reach the user."""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from tests.support import imagegen
from tests.support.browser import chromium
from tests.support.gateway_harness import InProcessGateway, running_gateway

pytestmark = [pytest.mark.triton, pytest.mark.asyncio(loop_scope="session")]

TOKEN = "webpage-test-token"
WAIT_MS = 30_000
# Small, so that one test image can be over the HTTP body limit (4/3 of it) at little cost.
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
# One per line, so a label may hold a comma.
LABELS = ["a cat", "a dog", "red, green and blue", "a car", "naïve café"]
TEMPLATE = "a picture of {}"
QUERY = "a colourful street"


@functools.cache
def images() -> dict[str, bytes]:
    """A photo far larger than the model's input (the server resizes it) and a small RGBA PNG."""
    return {"street.jpg": imagegen.photo_jpeg(2000, 1500, seed=3), "logo.png": imagegen.png_rgba()}


def oversized_png() -> bytes:
    """Noise, which PNG cannot compress: its base64 is over the body limit."""
    noise = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    assert len(buffer.getvalue()) > MAX_MESSAGE_BYTES
    return buffer.getvalue()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(embedded_triton, tiny_checkpoint) -> AsyncIterator[InProcessGateway]:
    async with running_gateway(tiny_checkpoint, embedded_triton.grpc_url, http_port=0,
                               auth_token=TOKEN, max_message_bytes=MAX_MESSAGE_BYTES,
                               ready_timeout_s=60) as gw:
        yield gw


@pytest.fixture(scope="module")
def base_url(gateway: InProcessGateway) -> str:
    bound = gateway.server.bound
    assert bound is not None and bound.http_port is not None
    return f"http://127.0.0.1:{bound.http_port}/"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser():
    async with chromium() as b:
        yield b


@dataclass
class PageLog:
    """What the page did besides what it shows: the URLs it requested, its script errors."""

    requested: list[str] = field(default_factory=list)
    script_errors: list[str] = field(default_factory=list)


@pytest.fixture
def log() -> PageLog:
    return PageLog()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser, base_url, log: PageLog):
    """The page, freshly loaded in a phone-sized window of its own, recording into ``log``."""
    context = await browser.new_context(viewport={"width": 375, "height": 800})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("request", lambda r: log.requested.append(r.url))
    page.on("pageerror", lambda e: log.script_errors.append(str(e)))
    await page.goto(base_url)
    yield page
    await context.close()


def _files(named: dict[str, bytes]) -> list[dict[str, object]]:
    return [{"name": name, "mimeType": "image/png" if name.endswith(".png") else "image/jpeg",
             "buffer": data} for name, data in named.items()]


def _assert_shown(shown: str, exact: float, what: str) -> None:
    """``shown`` is ``exact`` rounded to the digits shown (half a unit of the last one). The
    page asks for one image per request and gRPC got both in one: float32 results may differ
    in the last bits between batch sizes, which may round the other way at a digit's edge."""
    tolerance = 0.5 * 10.0 ** Decimal(shown).as_tuple().exponent + 1e-5 * abs(exact)
    assert abs(float(shown) - exact) <= tolerance, (what, shown, exact)


async def _enter_token(page) -> None:
    from playwright.async_api import expect

    await page.fill("#token", TOKEN)
    await page.press("#token", "Enter")
    await expect(page.locator("#model-info")).to_contain_text("Model ")


async def _drop(page, name: str, data: bytes) -> None:
    """Drops a file on the drop zone as a drag from the desktop would (a DragEvent whose
    DataTransfer holds the file)."""
    await page.locator("#dropzone").evaluate(
        """(zone, [name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/png" }));
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true,
                                                         dataTransfer: transfer }));
            }
        }""", [name, base64.b64encode(data).decode()])


async def _rows(list_locator) -> list[tuple[str, str]]:
    return [tuple(r) for r in await list_locator.locator(".bar-row").evaluate_all(
        "rows => rows.map(r => [r.querySelector('.label').textContent.trim(),"
        " r.querySelector('.probability').textContent.trim()])")]


async def test_page_shows_the_grpc_classify_and_score_results(page, log, gateway, base_url):
    from playwright.async_api import expect

    async with gateway.client(token=TOKEN) as client:
        info = await client.model_info()
        expected = await client.classify(list(images().values()), LABELS, prompt_template=TEMPLATE)
        scores = await client.score(list(images().values()), [QUERY])

    # Header: the model, and the random-weights warning exactly when the server says so.
    await expect(page.locator("#model-info")).to_contain_text("bearer token")
    await _enter_token(page)
    await expect(page.locator("#model-info")).to_contain_text(info.model_id)
    await expect(page.locator("#model-form")).to_be_hidden()  # one model: nothing to choose
    warning = expect(page.locator("#random-warning"))
    await (warning.to_be_visible() if info.random_weights else warning.to_be_hidden())

    await page.set_input_files("#file-input", files=_files(images()))
    await expect(page.locator("#previews > li")).to_have_count(len(images()))
    await page.fill("#labels", "\n".join(LABELS))
    await page.fill("#template", TEMPLATE)
    await page.click("#classify")

    cards = page.locator("#results > li")
    await expect(cards).to_have_count(len(images()))
    await expect(page.locator("#results [aria-busy]")).to_have_count(0)
    await expect(page.locator("#error")).to_be_hidden()
    for i, (name, want) in enumerate(zip(images(), expected, strict=True)):
        card = cards.nth(i)
        await expect(card.locator("figcaption")).to_have_text(name)
        rows = await _rows(card)
        assert [label for label, _ in rows] == [s.label for s in want], name
        for (label, shown), score in zip(rows, want, strict=True):
            _assert_shown(shown, score.probability, f"{name} / {label}")

    # Search among the images: ranked as gRPC Score ranks them, with its numbers.
    await page.fill("#query", QUERY)
    await page.click("#search")
    matches = page.locator("#matches")
    await expect(matches.locator(".bar-row")).to_have_count(len(images()))
    probabilities = scores.probabilities[:, 0]
    ranked = sorted(range(len(images())), key=lambda i: -probabilities[i])
    rows = await _rows(matches)
    assert [name for name, _ in rows] == [list(images())[i] for i in ranked]
    for (name, shown), i in zip(rows, ranked, strict=True):
        _assert_shown(shown, float(probabilities[i]), name)

    # Everything came from this server (no CDN, nothing outside), nothing in the page failed,
    # and a phone-sized screen needs no sideways scrolling.
    outside = [u for u in log.requested
               if not u.startswith((base_url, "blob:", "data:"))]
    assert outside == []
    assert log.script_errors == []
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


async def test_page_takes_dropped_files_and_shows_the_api_errors(page, log, base_url):
    from playwright.async_api import expect

    async def api_error(body: dict[str, object], token: str | None) -> str:
        """The message the JSON API itself answers for this body."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await page.request.post(base_url + "v1/classify", data=body, headers=headers)
        assert not response.ok
        return (await response.json())["error"]["message"]

    def image(data: bytes) -> dict[str, str]:
        return {"data": base64.b64encode(data).decode()}

    logo = images()["logo.png"]
    await _drop(page, "logo.png", logo)
    await expect(page.locator("#previews > li")).to_have_count(1)

    # No token yet: the server refuses, and the page says why.
    await page.fill("#labels", "a cat, a dog")
    await page.click("#classify")
    error = page.locator("#error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text(
        await api_error({"images": [image(logo)], "labels": ["a cat", "a dog"]}, None))

    # With the token, but no labels: the API's own message, shown once.
    await _enter_token(page)
    await page.fill("#labels", " , ")
    await page.click("#classify")
    await expect(error).to_contain_text(
        await api_error({"images": [image(logo)], "labels": []}, TOKEN))
    await expect(page.locator("#results .bar-row")).to_have_count(0)

    # A file over the body limit fails on its own card, with the API's message; the others work.
    big = oversized_png()
    await page.set_input_files("#file-input", files=_files({"noise.png": big}))
    await page.fill("#labels", "a cat, a dog")
    await page.click("#classify")
    cards = page.locator("#results > li")
    await expect(cards).to_have_count(2)
    await expect(page.locator("#results [aria-busy]")).to_have_count(0)
    await expect(error).to_be_hidden()
    await expect(cards.nth(0).locator(".bar-row")).to_have_count(2)
    await expect(cards.nth(1).locator(".card-error")).to_contain_text(
        await api_error({"images": [image(big)], "labels": ["a cat", "a dog"]}, TOKEN))
    assert log.script_errors == []
