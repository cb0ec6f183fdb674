"""Session-wide fixtures: a tiny random checkpoint made once per test session, and one
embedded Triton serving it (shared by every test marked `triton`, with its OpenTelemetry
tracing on for requests that carry a trace context), and the rendered Kubernetes overlays."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from tests.support.k8s_render import OVERLAYS, Obj, render

if TYPE_CHECKING:
    from gateway.embedded_triton.launcher import EmbeddedTriton
    from tests.support.otlp import OtlpHttpReceiver


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SigLIP checkpoint (config, safetensors, SentencePiece tokenizer, processor)."""
    from siglip_tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def family_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """name -> a tiny random checkpoint of that family (tests/support/families.py), each made
    once per session, on first use."""
    from siglip_tools.checkpoint_files import GemmaConversionError
    from tests.support.families import make

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            try:
                made[name] = make(tmp_path_factory.mktemp(f"ckpt-{name}"), name)
            except GemmaConversionError as exc:  # transformers 5.x: see the message
                pytest.skip(str(exc))
        return made[name]

    return get


@pytest.fixture(scope="session")
def triton_traces() -> Iterator[OtlpHttpReceiver]:
    """Where the session's embedded Triton exports its OpenTelemetry spans (OTLP/HTTP)."""
    from tests.support.otlp import OtlpHttpReceiver

    receiver = OtlpHttpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture(scope="session")
def embedded_triton(tiny_checkpoint: Path, triton_traces: OtlpHttpReceiver,
                    ) -> Iterator[EmbeddedTriton]:
    """ONE real Triton (the repository's model_repository/, the tiny checkpoint) for the whole
    session: starting one costs 30 s to minutes on a small busy CPU machine (each model's
    stub imports torch and transformers). Don't stop or kill it; tests that need to, start
    their own. Its start-up timeout stays within pytest's 300 s per-test timeout. Its tracing
    (SIGLIP_TRITON_TRACE_CONFIG's recommended value, rate=0) traces only requests that carry a
    W3C trace context, so other tests' requests are not traced."""
    from gateway.embedded_triton.launcher import EmbeddedTriton, trace_args

    trace_config = ("mode=opentelemetry rate=0 level=TIMESTAMPS count=-1 "
                    f"opentelemetry,url={triton_traces.url} opentelemetry,bsp_schedule_delay=100")
    triton = EmbeddedTriton(model=str(tiny_checkpoint), startup_timeout_s=270,
                            logger=logging.getLogger("tests.embedded_triton"),
                            extra_args=trace_args(trace_config))
    triton.start()
    try:
        yield triton
    finally:
        triton.stop(grace_s=5)


@pytest.fixture(scope="session")
def two_model_triton_factory() -> Iterator[Callable[[Mapping[str, Path]], EmbeddedTriton]]:
    """``factory({name: checkpoint, ...})``: ONE embedded Triton serving several models (a
    repository generated for them, every model with its decoder), started on first use and
    shared by every module asking for the same models. Stopped at the end of the session."""
    from gateway.embedded_triton.launcher import EmbeddedTriton

    started: dict[tuple[tuple[str, str], ...], EmbeddedTriton] = {}

    def get(checkpoints: Mapping[str, Path]) -> EmbeddedTriton:
        key = tuple((name, str(path)) for name, path in checkpoints.items())
        if key not in started:
            triton = EmbeddedTriton(served=key, with_decoder=True, startup_timeout_s=540,
                                    logger=logging.getLogger("tests.two_model_triton"))
            triton.start()
            started[key] = triton
        return started[key]

    try:
        yield get
    finally:
        for triton in started.values():
            repository = triton.model_repository
            triton.stop(grace_s=5)
            assert not repository.exists(), "the generated repository outlived stop()"


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    """Each Kubernetes overlay in turn (k8s/overlays/*)."""
    return request.param


@pytest.fixture
def docs(overlay: str) -> list[Obj]:
    """The overlay's manifests as rendered by `kubectl kustomize`."""
    return render(overlay)


@pytest_asyncio.fixture(scope="module")
async def fake(tiny_checkpoint: Path):
    """A fake Triton (tests/support/fake_triton.py) per test module, with the tiny checkpoint's
    embedding size: exact delays and errors for the fault tests."""
    from tests.support.fake_triton import FakeTriton
    from tests.support.gateway_harness import embedding_dim

    async with FakeTriton(embedding_dim(tiny_checkpoint)) as fake:
        yield fake
