"""ShmPool against a scripted client: reuse, retirement, budget, refusals, close, no files.

The client records registrations and can refuse an unregister as Triton does while a region is
in use; the regions are real /dev/shm files, so the tests also see what is left on disk.
"""

from __future__ import annotations

import asyncio
import logging
import os

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from gateway.backend.shm import NAME_PREFIX, SHM_DIR, Region, ShmPool
from gateway.config import Settings

MiB = 1024 * 1024
IN_ROW = 256 * 256 * 3
OUT_ROW = 4 * 32


def _error(message: str, code: str) -> InferenceServerException:
    return InferenceServerException(message, status=f"StatusCode.{code}")


class ScriptedClient:
    """What Triton's register/unregister do, plus knobs: ``in_use`` names are refused on
    unregister; ``refuse`` is raised by the next registrations."""

    def __init__(self) -> None:
        self.registered: dict[str, int] = {}
        self.in_use: set[str] = set()
        self.refuse: InferenceServerException | None = None
        self.named_while_registering: list[bool] = []

    async def register_system_shared_memory(self, name, key, byte_size, offset=0, **_):
        self.named_while_registering.append(os.access(SHM_DIR + key, os.F_OK))
        await asyncio.sleep(0)
        if self.refuse is not None:
            raise self.refuse
        assert name not in self.registered
        self.registered[name] = byte_size

    async def unregister_system_shared_memory(self, name="", **_):
        await asyncio.sleep(0)
        if name in self.in_use:
            raise _error(f"Cannot unregister shared memory region '{name}', it is currently "
                         "in use.", "INTERNAL")
        self.registered.pop(name, None)


def _our_files() -> list[str]:
    return [f for f in os.listdir(SHM_DIR) if f.startswith(f"{NAME_PREFIX}-{os.getpid()}-")]


async def _settled(pool: ShmPool, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while pool.retired:
        assert asyncio.get_running_loop().time() < deadline, "retired regions not unregistered"
        await asyncio.sleep(0.01)


async def test_a_region_is_reused_after_an_answered_call_and_sized_by_rows():
    client = ScriptedClient()
    pool = ShmPool(client, max_bytes=64 * MiB)
    region = await pool.checkout(3, IN_ROW, OUT_ROW)
    assert region is not None and region.rows == 4  # power-of-two row classes
    assert region.output_offset >= 3 * IN_ROW and region.output_offset % 64 == 0
    assert client.named_while_registering == [True]
    assert _our_files() == []  # named only while Triton mapped it
    pixels = np.arange(3 * IN_ROW, dtype=np.uint32).astype(np.uint8).reshape(3, 256, 256, 3)
    region.write(pixels)
    pool.release(region, reusable=True)
    again = await pool.checkout(4, IN_ROW, OUT_ROW)
    assert again is region and len(client.registered) == 1
    one = await pool.checkout(1, IN_ROW, OUT_ROW)
    assert one is not None and one.rows == 1 and one is not region
    assert pool.regions == 2 and pool.bytes_held == region.size + one.size
    pool.release(again, reusable=True)
    pool.release(one, reusable=True)
    await pool.close()
    assert client.registered == {} and _our_files() == []


async def test_a_region_whose_call_triton_did_not_answer_is_never_reused():
    """A cancelled call may still run in Triton: its region is unmapped at once and kept in the
    budget until Triton agrees to unregister it (it refuses while the call runs)."""
    client = ScriptedClient()
    pool = ShmPool(client, max_bytes=64 * MiB)
    region = await pool.checkout(64, IN_ROW, OUT_ROW)
    assert region is not None
    size = region.size
    client.in_use.add(region.name)
    pool.release(region, reusable=False)
    assert pool.regions == 0 and pool.retired == 1 and pool.bytes_held == size
    fresh = await pool.checkout(64, IN_ROW, OUT_ROW)
    assert fresh is not None and fresh is not region and fresh.name != region.name
    with pytest.raises(AssertionError):
        region.write(np.zeros((1, 256, 256, 3), np.uint8))  # unmapped here
    await asyncio.sleep(0.2)
    assert region.name in client.registered and pool.retired == 1  # still refused: kept
    client.in_use.clear()  # Triton finished the call
    await _settled(pool)
    assert region.name not in client.registered and pool.bytes_held == fresh.size
    pool.release(fresh, reusable=True)
    await pool.close()


async def test_budget_evicts_idle_regions_then_sends_over_grpc():
    client = ScriptedClient()
    sizes = {}
    for rows in (1, 64):
        probe = Region("probe", rows, IN_ROW, OUT_ROW)
        sizes[rows] = probe.size
        probe.close()
    pool = ShmPool(client, max_bytes=sizes[64] + sizes[1] // 2)
    small = await pool.checkout(1, IN_ROW, OUT_ROW)
    assert small is not None
    pool.release(small, reusable=True)
    large = await pool.checkout(64, IN_ROW, OUT_ROW)  # fits only once the idle one goes
    assert large is not None and pool.regions == 1
    await _settled(pool)
    assert small.name not in client.registered
    assert await pool.checkout(64, IN_ROW, OUT_ROW) is None  # busy budget: gRPC instead
    pool.release(large, reusable=True)
    await pool.close()


async def test_triton_refusing_registration_disables_the_pool_once(caplog):
    client = ScriptedClient()
    client.refuse = _error("Unable to open shared memory region: '/x'", "INTERNAL")
    pool = ShmPool(client, max_bytes=64 * MiB)
    with caplog.at_level(logging.WARNING, logger="gateway.backend.shm"):
        assert await pool.checkout(1, IN_ROW, OUT_ROW) is None
        assert await pool.checkout(1, IN_ROW, OUT_ROW) is None
    assert pool.disabled and len(client.named_while_registering) == 1
    assert len([r for r in caplog.records if "over gRPC" in r.message]) == 1
    assert _our_files() == [] and pool.bytes_held == 0
    await pool.close()


async def test_unreachable_triton_does_not_disable_the_pool():
    client = ScriptedClient()
    client.refuse = _error("failed to connect", "UNAVAILABLE")
    pool = ShmPool(client, max_bytes=64 * MiB)
    assert await pool.checkout(1, IN_ROW, OUT_ROW) is None
    assert not pool.disabled
    client.refuse = None
    region = await pool.checkout(1, IN_ROW, OUT_ROW)
    assert region is not None
    pool.release(region, reusable=True)
    await pool.close()
    assert client.registered == {}


async def test_cancelled_registration_is_cleaned_up():
    client = ScriptedClient()
    pool = ShmPool(client, max_bytes=64 * MiB)
    task = asyncio.ensure_future(pool.checkout(1, IN_ROW, OUT_ROW))
    await asyncio.sleep(0)  # inside register
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _settled(pool)
    assert client.registered == {} and _our_files() == [] and pool.bytes_held == 0
    await pool.close()


async def test_forget_drops_idle_regions_after_a_triton_restart():
    client = ScriptedClient()
    pool = ShmPool(client, max_bytes=64 * MiB)
    region = await pool.checkout(2, IN_ROW, OUT_ROW)
    assert region is not None
    pool.release(region, reusable=True)
    client.registered.clear()  # a new Triton knows nothing
    pool.forget()
    fresh = await pool.checkout(2, IN_ROW, OUT_ROW)
    assert fresh is not None and fresh.name != region.name and fresh.name in client.registered
    pool.release(fresh, reusable=True)
    await pool.close()


async def test_names_are_unique_per_process_and_pool():
    client = ScriptedClient()
    pools = [ShmPool(client, max_bytes=64 * MiB) for _ in range(2)]
    regions = [await p.checkout(1, IN_ROW, OUT_ROW) for p in pools]
    names = [r.name for r in regions if r is not None]
    assert len(set(names)) == 2 and all(f"-{os.getpid()}-" in n for n in names)
    for pool, region in zip(pools, regions, strict=True):
        assert region is not None
        pool.release(region, reusable=True)
        await pool.close()


@pytest.mark.parametrize(("shm", "url", "enabled"), [
    ("auto", "", True), ("auto", "triton:8001", False), ("on", "localhost:8001", True),
    ("off", "", False)])
def test_settings_decide_where_tensors_go(shm, url, enabled):
    settings = Settings.from_env({"SIGLIP_TRITON_SHM": shm, "SIGLIP_TRITON_URL": url})
    assert settings.shm_enabled() is enabled


def test_settings_reject_unknown_shm_mode():
    with pytest.raises(ValueError, match="SIGLIP_TRITON_SHM"):
        Settings.from_env({"SIGLIP_TRITON_SHM": "yes"})
