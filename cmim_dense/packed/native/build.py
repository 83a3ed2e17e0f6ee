"""Compile ``xnor_conv.cpp`` into a shared library on first use, cache it, and load it with ctypes.

Nothing is downloaded: the source ships with the package and is built with the machine's own C++
compiler (``$CXX``, else ``c++``/``g++``).  The library is cached in the ``native`` folder of
:func:`cmim_dense.cache.cache_root` under a name keyed on the source, the compiler's identity,
the flags, the platform and the OpenMP runtime; it is written to a temporary name and renamed into
place, so concurrent builds never leave a partial file.

The kernel's OpenMP loops run on torch's own OpenMP runtime: the library is linked against the
runtime file torch has loaded (its bundled ``libgomp``, possibly renamed by the wheel, or Intel's
``libiomp5``), so kernel and torch ops share one thread team instead of two teams spinning
against each other on the same cores.  Where that file cannot be found (no ``/proc``), the
compiler's own ``-fopenmp`` runtime is linked.  ``CMIM_DENSE_NATIVE=0`` disables it.  When the library cannot be
built or loaded, one warning line says why and callers use the pure-PyTorch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ...cache import cache_root

SOURCE = Path(__file__).with_name("xnor_conv.cpp")
FLAGS = ("-O3", "-std=c++17", "-fPIC", "-fopenmp")  # compiling; linking adds -shared and the runtime
BUILD_TIMEOUT_S = 300


class NativeKernelWarning(RuntimeWarning):
    """The compiled XNOR-popcount kernel is unavailable; the pure-PyTorch packed path is used instead."""


@dataclass(frozen=True)
class NativeLibrary:
    """A loaded kernel library, where it lives, and how long building it took (None: found in the cache)."""

    lib: ctypes.CDLL
    path: Path
    build_seconds: float | None


def native_library() -> NativeLibrary | None:
    """The kernel library, built if needed; None (after one warning) when it cannot be had.

    The answer is remembered per value of ``CMIM_DENSE_NATIVE``, ``CXX`` and the cache folder
    (this runs on every packed forward, so it only reads the environment).
    """
    environ = os.environ
    return _load(environ.get("CMIM_DENSE_NATIVE", "1"), environ.get("CXX"), cache_root(environ) / "native")


@functools.cache
def _load(enabled: str, cxx: str | None, folder: Path) -> NativeLibrary | None:
    if enabled.strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        return build_library(folder, cxx)
    except (OSError, subprocess.SubprocessError, RuntimeError) as error:
        message = " ".join(str(error).split())[:300]
        warnings.warn(f"cmim_dense: native XNOR kernel unavailable ({message}); using the pure-PyTorch packed path",
                      NativeKernelWarning, stacklevel=3)
        return None


def _compiler(cxx: str | None) -> str:
    candidates = [cxx] if cxx else ["c++", "g++", "clang++"]
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(f"no C++ compiler found (tried {', '.join(candidates)}; set CXX)")


def torch_openmp_runtime() -> Path | None:
    """The OpenMP runtime library torch loaded into this process (read from ``/proc/self/maps``): the one in
    torch's own ``lib`` folder where the wheel bundles it, else the first one mapped (a conda torch's);
    None where the map cannot be read or holds none.  Other packages may map runtimes of their own
    (OpenCV's wheel does), hence the preference."""
    import torch  # the runtime is the one torch loaded: make sure it has

    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return None
    runtimes = [Path(line.split()[-1]) for line in maps.read_text().splitlines() if "/" in line]
    runtimes = [path for path in dict.fromkeys(runtimes)
                if path.name.startswith(("libgomp", "libiomp")) and ".so" in path.name]
    bundled = [path for path in runtimes if path.parent == Path(torch.__file__).parent / "lib"]
    return (bundled or runtimes or [None])[0]


def _link_flags(runtime: Path | None) -> list[str]:
    """The link step's flags: torch's OpenMP runtime by its path (found again beside it at load time), or
    the compiler's ``-fopenmp`` runtime."""
    if runtime is None:
        return ["-shared", "-fopenmp"]
    return ["-shared", str(runtime), f"-Wl,-rpath,{runtime.parent}"]


def _library_name(compiler: str, runtime: Path | None) -> str:
    """``xnor_conv-<key>.so``, the key hashing the source, the compiler's path and version, flags, platform
    and OpenMP runtime."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30, check=False)
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), compiler.encode(), version.stdout.encode(), " ".join(FLAGS).encode(),
                 platform.machine().encode(), sys.platform.encode(), str(runtime).encode()):
        key.update(part)
        key.update(b"\0")
    return f"xnor_conv-{key.hexdigest()[:16]}.so"


def _run(compiler: str, arguments: list[str]) -> None:
    """One compiler call; a failure raises with the compiler's first line of complaint."""
    result = subprocess.run([compiler, *arguments], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                            check=False)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[0]
        raise RuntimeError(f"{Path(compiler).name} failed: {detail}")


def build_library(directory: Path, cxx: str | None = None) -> NativeLibrary:
    """Load the library cached in ``directory``, compiling it there first if it is missing (raises on failure)."""
    compiler = _compiler(cxx)
    runtime = torch_openmp_runtime()
    path = directory / _library_name(compiler, runtime)
    seconds = None
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            start = time.perf_counter()
            _run(compiler, [*FLAGS, "-c", str(SOURCE), "-o", f"{tmp}.o"])
            _run(compiler, [f"{tmp}.o", *_link_flags(runtime), "-o", tmp])
            seconds = time.perf_counter() - start
            os.replace(tmp, path)
        finally:
            for leftover in (tmp, f"{tmp}.o"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
    lib = ctypes.CDLL(str(path))
    lib.xnor_cpu_isa.restype = ctypes.c_int64
    lib.xnor_conv2d.restype, lib.xnor_conv2d.argtypes = ctypes.c_int64, [ctypes.c_void_p]
    lib.xnor_popcount_rate.restype, lib.xnor_popcount_rate.argtypes = ctypes.c_double, [ctypes.c_int64] * 3
    return NativeLibrary(lib, path, seconds)
