"""Tensors through system shared memory, against the real embedded Triton.

Exactly the embeddings of gRPC tensors; regions given back after Triton's errors and never
reused after a cancelled call (Triton writes its output later); nothing left in /dev/shm or
in Triton after close or SIGTERM; a SIGKILLed gateway leaves no file (only Triton's mapping); a
restarted Triton gets new registrations; a Triton that cannot open our files means gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from gateway.backend import shm as shm_module
from gateway.backend.shm import NAME_PREFIX, SHM_DIR
from gateway.backend.triton_client import TritonBackend
from gateway.core.errors import BackendRejected, DeadlineExceeded
from tests.support import imagegen
from tests.support.gateway_harness import GatewayProcess, embedding_dim, running_gateway, wait_until

pytestmark = [pytest.mark.triton, pytest.mark.asyncio(loop_scope="session")]
MiB = 1024 * 1024


def _backend(url: str, dim: int, shm: bool) -> TritonBackend:
    return TritonBackend(url, max_message_bytes=64 * MiB, default_timeout_s=60,
                         shm_max_bytes=64 * MiB if shm else None, embedding_dim=dim)


def _pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 256, 256, 3), dtype=np.uint8)


def _ids(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, (n, 64), dtype=np.int64)


def _files(pid: int | None = None) -> list[str]:
    return [f for f in os.listdir(SHM_DIR)
            if f.startswith(f"{NAME_PREFIX}-{pid or os.getpid()}-")]


async def _triton_regions(backend: TritonBackend, pid: int | None = None,
                          pool: shm_module.ShmPool | None = None) -> list[str]:
    """Regions Triton holds for process `pid` (default: this one), or for one pool of it.
    Other tests' gateways in this process have pools of their own."""
    status = await backend._client.get_system_shared_memory_status(as_json=True)
    prefix = f"{NAME_PREFIX}-{pid or os.getpid()}-"
    pool = pool if pool is not None else (None if pid else backend.shm)
    if pool is not None:
        prefix += f"{pool._token}-"
    return [r["name"] for r in status.get("regions", {}).values()
            if r["name"].startswith(prefix)]


async def test_embeddings_through_shm_equal_grpc_exactly(embedded_triton, tiny_checkpoint):
    dim = embedding_dim(tiny_checkpoint)
    via_shm = _backend(embedded_triton.grpc_url, dim, shm=True)
    via_grpc = _backend(embedded_triton.grpc_url, dim, shm=False)
    try:
        for n in (1, 5, 65):  # 65: two chunks, two regions
            pixels = _pixels(n, seed=n)
            got, want = await via_shm.embed_images(pixels), await via_grpc.embed_images(pixels)
            assert got.dtype == np.float32 and got.shape == (n, dim)
            np.testing.assert_array_equal(got, want)
        for n in (1, 7, 300):
            ids = _ids(n, seed=n)
            np.testing.assert_array_equal(await via_shm.embed_texts(ids),
                                          await via_grpc.embed_texts(ids))
        assert via_shm.shm is not None and not via_shm.shm.disabled
        assert via_shm.shm.regions >= 4 and via_shm.shm.retired == 0
        assert len(await _triton_regions(via_shm)) == via_shm.shm.regions
        assert _files() == []
    finally:
        await via_shm.close()
        await via_grpc.close()
    probe = _backend(embedded_triton.grpc_url, dim, shm=False)
    try:
        assert await _triton_regions(probe, pool=via_shm.shm) == []  # close() unregistered them
    finally:
        await probe.close()
    assert _files() == []


async def test_gateway_with_shm_answers_like_gateway_without(embedded_triton, tiny_checkpoint):
    """Over the wire: raw pixels, a JPEG and texts through Embed, shm on vs off."""
    inputs = [imagegen.photo_jpeg(320, 240, seed=3), "a photo of a cat",
              np.random.default_rng(4).integers(0, 256, (40, 30, 3), dtype=np.uint8), "dog"]
    results = {}
    for shm in ("on", "off"):
        async with running_gateway(tiny_checkpoint, embedded_triton.grpc_url,
                                   ready_timeout_s=60, triton_shm=shm) as gw, \
                gw.client() as client:
            results[shm] = await client.embed(inputs, timeout=60)
            backend = gw.server._backend
            assert backend is not None and (backend.shm is not None) == (shm == "on")
            if shm == "on":
                assert backend.shm.regions == 2  # one vision, one text region
    np.testing.assert_array_equal(results["on"], results["off"])


async def test_a_region_is_given_back_after_triton_rejects_the_call(embedded_triton,
                                                                    tiny_checkpoint):
    backend = _backend(embedded_triton.grpc_url, embedding_dim(tiny_checkpoint), shm=True)
    try:
        bad = np.zeros((2, 255, 256, 3), np.uint8)  # Triton's config says 256x256x3
        with pytest.raises(BackendRejected):
            await backend.embed_images(bad)
        assert backend.shm is not None
        assert backend.shm.regions == 1 and backend.shm.retired == 0  # idle, reusable
        with pytest.raises(DeadlineExceeded):
            await backend.embed_images(_pixels(1, 0), deadline=time.monotonic() - 1)
        assert backend.shm.retired == 0
        got = await backend.embed_images(_pixels(2, 1))
        assert got.shape[0] == 2 and backend.shm.retired == 0
    finally:
        await backend.close()
    assert _files() == []


async def test_a_cancelled_calls_region_is_not_reused_while_triton_writes_it(
        embedded_triton, tiny_checkpoint):
    """Triton finishes a cancelled call and writes its output into the region afterwards. The
    next call must not share that region: its embeddings stay exact, and the old region is
    unregistered once Triton lets go of it."""
    dim = embedding_dim(tiny_checkpoint)
    backend = _backend(embedded_triton.grpc_url, dim, shm=True)
    reference = _backend(embedded_triton.grpc_url, dim, shm=False)
    try:
        assert backend.shm is not None
        second = _pixels(64, seed=2)
        want = await reference.embed_images(second)
        await backend.embed_images(_pixels(64, seed=9))  # a registered idle 64-row region
        old = await _triton_regions(backend)
        # Batches ahead of it in Triton's queue (one instance): the call is surely still in
        # Triton when it is cancelled, however fast the machine.
        ahead = [asyncio.ensure_future(reference.embed_images(_pixels(64, seed=10 + i)))
                 for i in range(8)]
        await asyncio.sleep(0.05)
        call = asyncio.ensure_future(backend.embed_images(_pixels(64, seed=1)))
        await asyncio.sleep(0.1)  # sent: in Triton's queue behind the others
        assert not call.done()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert backend.shm.retired == 1 and backend.shm.regions == 0
        await asyncio.gather(*ahead)
        got = await backend.embed_images(second)
        np.testing.assert_array_equal(got, want)
        await wait_until(lambda: backend.shm.retired == 0, 60, what="retired region freed")
        assert not set(old) & set(await _triton_regions(backend))
        # Client deadlines end calls the same way (again with batches queued ahead).
        ahead = [asyncio.ensure_future(reference.embed_images(_pixels(64, seed=20 + i)))
                 for i in range(8)]
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await backend.embed_images(_pixels(64, 3), deadline=time.monotonic() + 0.1)
        assert backend.shm.retired == 1  # Triton still holds the call: not for reuse
        await asyncio.gather(*ahead)
        await wait_until(lambda: backend.shm.retired == 0, 60, what="retired region freed")
    finally:
        await backend.close()
        await reference.close()
    assert _files() == []


async def test_triton_that_cannot_open_our_files_means_grpc(embedded_triton, tiny_checkpoint,
                                                           monkeypatch, caplog):
    """As for a Triton on another host: registration fails, the pool turns itself off (one
    warning), and the calls go over gRPC with the same results."""
    monkeypatch.setattr(shm_module.Region, "link", lambda self: None)
    dim = embedding_dim(tiny_checkpoint)
    backend = _backend(embedded_triton.grpc_url, dim, shm=True)
    reference = _backend(embedded_triton.grpc_url, dim, shm=False)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.backend.shm"):
            for seed in range(3):
                pixels = _pixels(2, seed)
                np.testing.assert_array_equal(await backend.embed_images(pixels),
                                              await reference.embed_images(pixels))
        assert backend.shm is not None and backend.shm.disabled
        assert backend.shm.bytes_held == 0
        assert len([r for r in caplog.records if "Triton refused shared memory" in r.message]) == 1
    finally:
        await backend.close()
        await reference.close()


@contextlib.asynccontextmanager
async def _gateway_holding_regions(triton, checkpoint, log: Path):
    """A gateway process with shared memory on, after one call that registered two regions
    (pixels, token ids), and a gRPC-only backend to look at Triton's registrations."""
    gw = GatewayProcess(checkpoint, triton.grpc_url, log, env={"SIGLIP_TRITON_SHM": "on"})
    await gw.start(timeout_s=60)
    probe = _backend(triton.grpc_url, embedding_dim(checkpoint), shm=False)
    try:
        from gateway.client import SiglipClient
        async with SiglipClient(gw.target) as client:
            await client.embed([np.zeros((8, 8, 3), np.uint8), "a cat"], timeout=60)
        assert len(await _triton_regions(probe, gw.pid)) == 2
        yield gw, probe
    finally:
        gw.kill()
        await probe.close()


async def test_sigkilled_gateway_leaves_no_file_only_tritons_mapping(embedded_triton,
                                                                    tiny_checkpoint, tmp_path):
    async with _gateway_holding_regions(embedded_triton, tiny_checkpoint,
                                        tmp_path / "gw.log") as (gw, probe):
        gw.signal(signal.SIGKILL)
        await gw.wait(10)
        assert _files(gw.pid) == []
        leaked = await _triton_regions(probe, gw.pid)
        assert len(leaked) == 2  # mapped by Triton until unregistered or Triton exits
        for name in leaked:
            await probe._client.unregister_system_shared_memory(name)


async def test_sigtermed_gateway_unregisters_its_regions(embedded_triton, tiny_checkpoint,
                                                         tmp_path):
    async with _gateway_holding_regions(embedded_triton, tiny_checkpoint,
                                        tmp_path / "gw.log") as (gw, probe):
        gw.signal(signal.SIGTERM)
        assert await gw.wait(30) == 0
        assert await _triton_regions(probe, gw.pid) == [] and _files(gw.pid) == []


@pytest.mark.timeout(300)
async def test_restarted_triton_gets_new_registrations(tiny_checkpoint):
    """A restarted Triton knows none of our regions: the first call after the restart registers
    afresh and retries once, with the same results as gRPC tensors."""
    from gateway.embedded_triton.launcher import EmbeddedTriton

    triton = EmbeddedTriton(model=str(tiny_checkpoint), restart_on_exit=True,
                            restart_backoff_s=0.2, startup_timeout_s=240)
    await asyncio.to_thread(triton.start)
    dim = embedding_dim(tiny_checkpoint)
    backend = _backend(triton.grpc_url, dim, shm=True)
    reference = _backend(triton.grpc_url, dim, shm=False)
    try:
        pixels, ids = _pixels(3, 5), _ids(4, 5)
        want_images = await reference.embed_images(pixels)
        want_texts = await reference.embed_texts(ids)
        np.testing.assert_array_equal(await backend.embed_images(pixels), want_images)
        np.testing.assert_array_equal(await backend.embed_texts(ids), want_texts)
        before = set(await _triton_regions(backend))
        assert len(before) == 2
        old_pid = triton.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await wait_until(lambda: triton.pid not in (None, old_pid), 60, what="a new Triton")
        await wait_until(backend.ready, 240, interval_s=0.2, what="restarted Triton ready")
        assert await _triton_regions(backend) == []
        np.testing.assert_array_equal(await backend.embed_images(pixels), want_images)
        np.testing.assert_array_equal(await backend.embed_texts(ids), want_texts)
        after = set(await _triton_regions(backend))
        assert len(after) == 2 and not after & before
        assert backend.shm is not None and not backend.shm.disabled
    finally:
        await backend.close()
        await reference.close()
        await asyncio.to_thread(triton.stop, 5.0)
    assert _files() == []
