"""The towers' CPU threading in a real embedded Triton: what the launcher sets is what torch
runs with in each stub, and OpenMP's wait policy reaches the stubs' environment.

Its own Triton (not the session's), with thread counts that differ from every default on
any machine: intra-op 3, inter-op 2. Each tower reports torch's own counts at load
(`torch.get_num_threads()` after applying the setting) into Triton's log.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient

from gateway.embedded_triton.launcher import INSTANCE_ENV, CpuThreading, EmbeddedTriton

pytestmark = pytest.mark.triton
_REPORT = re.compile(r"(siglip_\w+?)_\d+(?:_\d+)?: CPU instance, torch threads (\d+) intra-op, "
                     r"(\d+) inter-op")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_towers_run_with_the_threads_the_launcher_sets(tiny_checkpoint: Path):
    logger = logging.getLogger("tests.cpu_threads")
    lines = _Lines()
    logger.addHandler(lines)
    logger.setLevel(logging.DEBUG)
    triton = EmbeddedTriton(model=str(tiny_checkpoint), startup_timeout_s=270, logger=logger,
                            cpu_threading=CpuThreading(threads=3, interop_threads=2))
    try:
        triton.start()
        reports = {m.group(1): (int(m.group(2)), int(m.group(3)))
                   for m in map(_REPORT.search, lines.lines) if m}
        assert reports == {"siglip_vision": (3, 2), "siglip_text": (3, 2)}, lines.lines[-40:]

        stubs = [p for p in psutil.Process(triton.pid).children(recursive=True)
                 if p.environ().get(INSTANCE_ENV) == triton.instance_id]
        assert stubs, "no python-backend stub found under tritonserver"
        for stub in stubs:
            env = stub.environ()
            assert env.get("OMP_WAIT_POLICY") == "PASSIVE", stub.cmdline()
            assert env.get("SIGLIP_TRITON_CPU_THREADS") == "3"

        # The towers still serve with these settings.
        with grpcclient.InferenceServerClient(triton.grpc_url) as client:
            pixels = grpcclient.InferInput("pixels", [2, 256, 256, 3], "UINT8")
            pixels.set_data_from_numpy(np.zeros((2, 256, 256, 3), np.uint8))
            result = client.infer("siglip_vision", [pixels], client_timeout=60)
        assert result.as_numpy("image_embeds").shape[0] == 2
    finally:
        triton.stop(grace_s=5)
        logger.removeHandler(lines)
