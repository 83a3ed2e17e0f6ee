"""What the benchmark scripts share: timing, a description of the machine, the JSON record."""

from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from cmim_dense.checkpoint_io import write_json
from cmim_dense.export.agreement import agreement


def seconds_of_one_call(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn`` (CUDA is synchronized around it so the time covers the
    queued kernels)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return [seconds_of_one_call(fn) for _ in range(repeats)]


def interleaved_calls(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of one call of each of ``fns`` per round, in turn, for ``rounds`` rounds (after
    ``warmup`` untimed calls of each): the calls of one round share the machine's state, so the
    ratio of two of them round by round is a paired measurement that drift and neighbours disturb less."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(seconds_of_one_call(fn))
    return times


def best_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Best of :func:`timed_calls`: the least-disturbed run, for short kernels."""
    return min(timed_calls(fn, repeats, warmup))


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median of :func:`timed_calls`: for whole training steps, whose time varies from call to call."""
    return statistics.median(timed_calls(fn, repeats, warmup))


# the packed-vs-float check's images: small enough that a sign tie (cmim_dense.export.agreement) is rare in one
CHECK_SIZE = (64, 64)


def packed_check(model: Callable[[torch.Tensor], torch.Tensor], reference: Callable[[torch.Tensor], torch.Tensor],
                 draws: int) -> dict[str, object]:
    """``model`` (packed, fused) against ``reference`` (its float self) on ``draws`` random images of
    :data:`CHECK_SIZE` in one batch: how many agree to 1e-4, and each image's max abs difference."""
    images = torch.randn(draws, 3, *CHECK_SIZE)
    return {"check_input": list(images.shape), **agreement(model, reference, images).record()}


def cpu_info() -> tuple[str, list[str]]:
    """CPU model name and the SIMD/popcount flags that matter to these benchmarks (Linux;
    best effort elsewhere)."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return name, flags
    for line in lines:
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            flags = [f for f in ("popcnt", "avx2", "avx512f", "avx512_vpopcntdq") if f in present]
            break
    return name, flags


def machine() -> dict[str, object]:
    """Where and when a figure was measured: CPU, cores, torch threads, GPU, versions, date."""
    cpu, flags = cpu_info()
    return {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_record(path: str | Path, record: dict[str, object]) -> None:
    """Write ``record`` plus the machine's description as JSON to ``path`` and say so."""
    described = machine()
    write_json(path, {"machine": described, **record})
    print(f"wrote {path} ({described['cpu']}, {described['threads']} threads, torch {described['torch']})")
