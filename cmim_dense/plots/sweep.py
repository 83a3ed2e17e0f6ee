"""Read a CMIM hyper-parameter sweep (the paper's Table 3 / Fig. 4e-f) from pretraining run folders.

Each run's ``best.pt`` meta holds its method, best top-1 and the resolved configuration,
whose ``cmim`` entry (None without CMIM) holds ``lam`` and ``n_nce``.  Runs without CMIM
are the baselines of their method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..checkpoint_io import load_checkpoint_as
from ..methods import CMIM_FLAGS, CMIM_SWEEPS
from ..models.loading import require_meta
from .common import Skipped, discover_files

CHECKPOINT_FILE = "best.pt"
SWEEP_PARAMS = {name: CMIM_FLAGS[flag] for name, flag in CMIM_SWEEPS.items()}  # sweep -> key in config["cmim"]


@dataclass(frozen=True)
class SweepRun:
    """One pretraining run: its method, best top-1 (%) and swept value (None: a run without CMIM)."""

    path: Path
    method: str
    top1: float
    value: float | None
    config: dict[str, Any]


def read_sweep_run(path: Path, param: str) -> SweepRun:
    """One run's point; a ValueError says in one line why the checkpoint does not fit."""
    meta = require_meta(load_checkpoint_as(path, "backbone")["meta"], ("top1",), path)
    if not isinstance(meta["config"], dict):
        raise ValueError("meta holds no configuration (not written by pretrain/run.py?)")
    cmim = meta["config"].get("cmim")
    key = SWEEP_PARAMS[param]
    if cmim is not None and key not in cmim:
        raise ValueError(f"the CMIM settings lack {key!r}")
    return SweepRun(path, meta["method"], 100.0 * float(meta["top1"]), None if cmim is None else float(cmim[key]),
                    meta["config"])


def load_sweep(inputs: Sequence[str | Path], param: str) -> tuple[list[SweepRun], list[Skipped]]:
    """Every run that ``inputs`` name (folders are searched for best.pt), one per (method, value).

    Unreadable checkpoints and repeats of a (method, value) already read are skipped and reported.
    """
    if param not in SWEEP_PARAMS:
        raise ValueError(f"unknown sweep parameter {param!r}; valid: {', '.join(SWEEP_PARAMS)}")
    files, skipped = discover_files(inputs, CHECKPOINT_FILE)
    runs: dict[tuple[str, float | None], SweepRun] = {}
    for path in sorted(files):
        try:
            run = read_sweep_run(path, param)
        except (ValueError, FileNotFoundError) as error:
            skipped.append(Skipped(str(path), str(error).removeprefix(f"{path} ")))
            continue
        first = runs.setdefault((run.method, run.value), run)
        if first is not run:
            what = "no CMIM" if run.value is None else f"{param} {run.value:g}"
            skipped.append(Skipped(str(path), f"repeats {run.method} with {what} of {first.path}"))
    return sorted(runs.values(), key=lambda r: (r.method, -1.0 if r.value is None else r.value)), skipped


def varying_settings(runs: Sequence[SweepRun], param: str) -> list[str]:
    """Notes on settings other than the swept one that differ within a method's line."""
    notes = []
    for method in sorted({r.method for r in runs}):
        line = [_flat(r.config, SWEEP_PARAMS[param]) for r in runs if r.method == method and r.value is not None]
        differing = sorted({key for flat in line for key in flat if any(f.get(key) != flat.get(key) for f in line)})
        if differing:
            notes.append(f"{method}: runs also differ in {', '.join(differing)}")
    return notes


def _flat(config: dict[str, Any], swept: str) -> dict[str, Any]:
    """The configuration with CMIM keys as ``cmim.KEY``, without the swept key."""
    flat = {key: value for key, value in config.items() if key != "cmim"}
    flat.update({f"cmim.{key}": value for key, value in (config.get("cmim") or {}).items() if key != swept})
    return flat
