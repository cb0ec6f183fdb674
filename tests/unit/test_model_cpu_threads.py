"""The towers' CPU thread setup (`_cpu_threads` in model.py), without Triton: what it hands
torch, what it refuses. The real-Triton check is tests/real_triton/test_triton_cpu_threads.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.support.python_backend import _module

TOWERS = ("siglip_vision", "siglip_text")


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("tower", TOWERS)
def test_threads_setting_reaches_torch(tower, monkeypatch, restore_threads):
    module = _module(tower)
    interop: list[int] = []
    monkeypatch.setattr(torch, "set_num_interop_threads", interop.append)
    target = 1 if torch.get_num_threads() != 1 else 2
    monkeypatch.setenv("SIGLIP_TRITON_CPU_THREADS", str(target))
    monkeypatch.setenv("SIGLIP_TRITON_CPU_INTEROP_THREADS", "3")
    intra, _ = module._cpu_threads()
    assert intra == torch.get_num_threads() == target
    assert interop == [3]


@pytest.mark.parametrize("tower", TOWERS)
def test_unset_leaves_torch_alone(tower, monkeypatch):
    module = _module(tower)
    monkeypatch.delenv("SIGLIP_TRITON_CPU_THREADS", raising=False)
    monkeypatch.delenv("SIGLIP_TRITON_CPU_INTEROP_THREADS", raising=False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: pytest.fail("set_num_threads"))
    monkeypatch.setattr(torch, "set_num_interop_threads", lambda n: pytest.fail("interop"))
    assert module._cpu_threads() == (torch.get_num_threads(), torch.get_num_interop_threads())


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_nonsense_fails_the_load(value, monkeypatch, restore_threads):
    module = _module("siglip_vision")
    monkeypatch.setenv("SIGLIP_TRITON_CPU_THREADS", value)
    with pytest.raises(ValueError, match="SIGLIP_TRITON_CPU_THREADS"):
        module._cpu_threads()


def test_interop_pool_already_started_is_logged_not_fatal(monkeypatch, capsys):
    module = _module("siglip_text")

    def started(n: int) -> None:
        raise RuntimeError("cannot set number of interop threads after parallel work started")

    monkeypatch.delenv("SIGLIP_TRITON_CPU_THREADS", raising=False)
    monkeypatch.setenv("SIGLIP_TRITON_CPU_INTEROP_THREADS", "2")
    monkeypatch.setattr(torch, "set_num_interop_threads", started)
    module._cpu_threads()
    assert "SIGLIP_TRITON_CPU_INTEROP_THREADS=2 not applied" in capsys.readouterr().out
