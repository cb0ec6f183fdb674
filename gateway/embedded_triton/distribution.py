"""Where the Triton server from the nvidia-pytriton wheel lives, and how to run it.

Owns: locating `tritonserver`, the python backend and the backend stub built for this
interpreter inside the wheel (without importing `pytriton`, which pulls gevent); preparing
a backend directory once in a cache dir (the python backend wants its stub next to it); and
the environment the server and its stubs need (libpython, the wheel's bundled libraries, and
this interpreter's `bin` first on PATH so the stub's embedded Python finds our packages).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

STUB_NAME = "triton_python_backend_stub"


class TritonNotInstalled(RuntimeError):
    """The nvidia-pytriton wheel, or the part of it we need, is missing."""


@dataclass(frozen=True)
class TritonDistribution:
    server: Path  # the tritonserver binary
    backend_dir: Path  # pass as --backend-directory; holds python/ with the stub
    lib_dirs: tuple[Path, ...]  # prepended to LD_LIBRARY_PATH

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        """`base` plus what tritonserver and the backend stub need to start."""
        env = dict(base)
        libs = [str(p) for p in self.lib_dirs]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        # The stub embeds libpython and finds its prefix by searching PATH for `python3`:
        # our interpreter's bin must come first or it runs without this venv's packages.
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
        return env


def _wheel_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalled(
            "the nvidia-pytriton wheel is not installed (pip install 'siglip-gateway[triton]'), "
            "or set SIGLIP_TRITON_URL to use an external Triton")
    return Path(next(iter(spec.submodule_search_locations)))


def _default_cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "siglip-gateway" / "triton"


def _fallback_cache_root() -> Path:
    # Read-only home (e.g. a container with readOnlyRootFilesystem): a private dir in /tmp.
    root = Path(tempfile.gettempdir()) / f"siglip-gateway-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    st = root.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise TritonNotInstalled(f"{root} is not a private directory of this user")
    return root / "triton"


def _fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        digest.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def _same(src: Path, dst: Path) -> bool:
    return dst.is_file() and dst.stat().st_size == src.stat().st_size


def _prepare_backend_dir(sources: list[Path], stub: Path, root: Path) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    target = root / f"backends-py{version}-{_fingerprint([*sources, stub])}"
    wanted = [(src, target / "python" / src.name) for src in (*sources, stub)]
    if all(_same(src, dst) for src, dst in wanted):
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Built aside and renamed into place: several processes may prepare it at the same time.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        (staging / "python").mkdir()
        for src, dst in wanted:
            shutil.copy2(src, staging / "python" / dst.name)
        try:
            staging.rename(target)
        except OSError:
            if not all(_same(src, dst) for src, dst in wanted):  # not a concurrent winner
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def locate(cache_dir: Path | None = None) -> TritonDistribution:
    """The wheel's server, with a backend directory prepared for this interpreter (idempotent)."""
    wheel = _wheel_root() / "tritonserver"
    server = wheel / "bin" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = wheel / "python_backend_stubs" / version / STUB_NAME
    backend = wheel / "backends" / "python"
    sources = sorted(p for p in backend.glob("*") if p.is_file()) if backend.is_dir() else []
    for needed in (server, stub):
        if not needed.is_file():
            raise TritonNotInstalled(f"{needed} is missing from the nvidia-pytriton wheel "
                                     f"(Python {version} supported?)")
    if not any(p.name == "libtriton_python.so" for p in sources):
        raise TritonNotInstalled(f"no python backend in {backend}")

    if cache_dir is not None:
        backend_dir = _prepare_backend_dir(sources, stub, cache_dir)
    else:
        try:
            backend_dir = _prepare_backend_dir(sources, stub, _default_cache_root())
        except OSError:
            backend_dir = _prepare_backend_dir(sources, stub, _fallback_cache_root())

    lib_dirs = []
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and Path(libdir).is_dir():  # this interpreter's libpython, not the system's
        lib_dirs.append(Path(libdir))
    bundled = wheel.parent.parent / "nvidia_pytriton.libs"
    if bundled.is_dir():
        lib_dirs.append(bundled)
    return TritonDistribution(server=server, backend_dir=backend_dir, lib_dirs=tuple(lib_dirs))
