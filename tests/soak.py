"""A soak run in miniature (issue #25): seeded faults at random moments of pretraining, fine-tuning
and NYUD-v2 preparation, each followed by checks that nothing is lost or mixed.

    python tests/soak.py --iterations 50 --seed 0 --root /tmp/soak

Each iteration starts one of the three commands (continuing its job: ``--resume`` once a
``last.pt`` exists, ``--force`` over a prepared set) and injects one fault at a seeded moment: a
SIGKILL, a Ctrl-C (SIGINT), a write that fails (a file-size limit: every write past it fails with
EFBIG, as a full disk fails with ENOSPC), or none.  After each, the job's folder must hold a
complete state, old or new, never a mix: every checkpoint reads back with its checksum, a
pretraining's metrics.jsonl covers its last.pt, a prepared set is either absent or complete and
readable; a Ctrl-C or a failed write must have said so in one line.  A job that runs to its end
must equal an uninterrupted reference run bit for bit, and then starts over in a new folder.
Not part of the pytest suite (it runs for minutes by design); its last result is in tests/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cmim_dense.checkpoint_io import load_checkpoint  # noqa: E402
from cmim_dense.data.nyud import NYUDv2  # noqa: E402
from cmim_dense.data.nyud_prepare import is_prepared  # noqa: E402
from cmim_dense.data.synthetic_nyud import make_synthetic_nyud  # noqa: E402

FAULTS = ("kill", "interrupt", "write-failure", "none")
ARRAYS = ("images", "depths", "raw_depths", "labels40", "labels13", "normals")


@dataclass
class Job:
    """One command and the folder it works in; ``number`` counts the folders it has finished."""

    kind: str
    command: list[str]
    reference: Path
    end: int = 0  # the last epoch (pretraining) or iteration (fine-tuning)
    number: int = 0
    seconds: float = 1.0  # the reference run's wall time: faults land within it

    def folder(self, root: Path) -> Path:
        return root / f"{self.kind}{self.number}"


def run(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"reference run failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def make_jobs(root: Path, env: dict[str, str]) -> list[Job]:
    """The three commands, each run once without faults as its reference."""
    python = sys.executable
    data = root / "fixtures"
    mat, splits = make_synthetic_nyud(data, 24, 8, 96, 128, seed=0)
    backbone = data / "backbone"
    run([python, str(ROOT / "pretrain" / "run.py"), "--method", "fp", "--epochs", "1", "--synthetic-samples", "64",
         "--batch-size", "16", "--image-size", "32", "--no-progress", "--out", str(backbone)], env)
    jobs = [
        Job("pretrain", [python, str(ROOT / "pretrain" / "run.py"), "--method", "irnet+cmim", "--epochs", "4",
                         "--synthetic-samples", "96", "--batch-size", "16", "--image-size", "32", "--cmim-nce-n", "8",
                         "--no-progress"], root / "reference" / "pretrain", end=4),
        Job("finetune", [python, str(ROOT / "finetune" / "nyud.py"), "--task", "seg", "--backbone",
                         str(backbone / "best.pt"), "--iters", "30", "--save-every", "3", "--output-stride", "16",
                         "--decoder-channels", "16", "--batch-size", "4", "--no-progress"], root / "reference" / "finetune",
            end=30),
        Job("prepare", [python, str(ROOT / "datasets" / "prepare_nyud.py"), "--mat", str(mat), "--splits", str(splits),
                        "--no-progress"], root / "reference" / "prepare"),
    ]
    for job in jobs:
        job.seconds = run([*job.command, "--out", str(job.reference)], env)
        print(f"reference {job.kind}: {job.seconds:.1f} s", flush=True)
    return jobs


def child_setup(limit: int | None):
    """A child's pre-exec: SIGINT at its default (a soak started in the background inherits it
    ignored) and, with ``limit``, files that may grow to ``limit`` bytes (a write past it fails with EFBIG)."""

    def apply() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def inject(job: Job, out: Path, fault: str, rng: random.Random, env: dict[str, str]) -> tuple[int, str]:
    """Run ``job`` in ``out`` once with ``fault``; returns (exit code, stderr)."""
    extra = ["--resume"] if job.kind != "prepare" and (out / "last.pt").exists() else []
    extra += ["--force"] if job.kind == "prepare" and out.exists() else []
    limit = rng.randint(2_000, 60_000_000) if fault == "write-failure" else None
    process = subprocess.Popen([*job.command, "--out", str(out), *extra], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=child_setup(limit))
    if fault in ("kill", "interrupt"):
        try:
            process.wait(timeout=rng.uniform(0.3, 1.2 * job.seconds))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL if fault == "kill" else signal.SIGINT)
    _, stderr = process.communicate()
    return process.returncode, stderr


def check_folder(job: Job, out: Path) -> list[str]:
    """What is wrong with ``out`` after a fault: a torn checkpoint, metrics behind last.pt, a
    prepared set that is neither absent nor complete."""
    problems = []
    if job.kind == "prepare":
        if out.exists():
            if not is_prepared(out):
                return [f"{out} exists but is not a complete prepared set"]
            for split in ("train", "test"):
                dataset = NYUDv2(out, split, normals=True)
                for key in ("image", "label", "depth", "normals"):
                    np.asarray(dataset.array(key)).sum(dtype=np.float64)  # every byte readable
        return problems
    epoch = None
    for name in ("last.pt", "best.pt"):
        if (out / name).exists():
            try:
                meta = load_checkpoint(out / name)["meta"]
            except ValueError as error:
                problems.append(f"{out / name} does not read back: {error}")
                continue
            if name == "last.pt":
                epoch = meta.get("epoch", meta.get("iteration"))
    if job.kind == "pretrain" and epoch is not None:
        lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
        records = [json.loads(line) for line in lines]
        if len(records) < epoch:
            problems.append(f"{out}/metrics.jsonl has {len(records)} epochs, last.pt {epoch}")
    return problems


def finished(job: Job, out: Path) -> bool:
    if job.kind == "prepare":
        return is_prepared(out)
    done = out / ("best.pt" if job.kind == "pretrain" else "metrics.json")
    if not (done.exists() and (out / "last.pt").exists()):
        return False
    meta = load_checkpoint(out / "last.pt")["meta"]
    return meta.get("epoch", meta.get("iteration")) == job.end


def equals_reference(job: Job, out: Path) -> list[str]:
    """A finished job against its uninterrupted reference: the same weights (and banks), metrics, arrays."""
    if job.kind == "prepare":
        return [f"{out}/{split}/{name}.npy differs from the reference" for split in ("train", "test") for name in ARRAYS
                if not np.array_equal(np.load(out / split / f"{name}.npy"), np.load(job.reference / split / f"{name}.npy"))]
    a, b = load_checkpoint(job.reference / "last.pt"), load_checkpoint(out / "last.pt")
    problems = [f"{out}/last.pt {key} differs" for key, value in a["model"].items() if not torch.equal(value, b["model"][key])]
    if job.kind == "finetune" and json.loads((out / "metrics.json").read_text())["miou"] != \
            json.loads((job.reference / "metrics.json").read_text())["miou"]:
        problems.append(f"{out}/metrics.json mIoU differs")
    return problems


def soak(root: Path, iterations: int, seed: int) -> int:
    env = {**os.environ, "CMIM_DENSE_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    shutil.rmtree(root, ignore_errors=True)
    jobs = make_jobs(root, env)
    rng = random.Random(seed)
    problems: list[str] = []
    counts: dict[str, int] = {}
    completed = 0
    start = time.perf_counter()
    for iteration in range(1, iterations + 1):
        job, fault = rng.choice(jobs), rng.choice(FAULTS)
        out = job.folder(root)
        code, stderr = inject(job, out, fault, rng, env)
        found = check_folder(job, out)
        said = stderr.strip().splitlines()
        if code != 0 and fault in ("interrupt", "write-failure") and code != -signal.SIGINT and len(said) != 1:
            found.append(f"{job.kind} after {fault} exited {code} with {len(said)} lines on stderr: {said[-3:]}")
        if fault == "none" and code != 0:
            found.append(f"{job.kind} without a fault exited {code}: {said[-3:]}")
        if code == 0 and finished(job, out):
            found += equals_reference(job, out)
            job.number += 1
            completed += 1
        counts[f"{job.kind}/{fault}"] = counts.get(f"{job.kind}/{fault}", 0) + 1
        print(f"[{iteration}/{iterations}] {job.kind} {fault}: exit {code}"
              + (f"; PROBLEMS: {found}" if found else ""), flush=True)
        problems += found
    print(f"{iterations} faults in {time.perf_counter() - start:.0f} s ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); "
          f"{completed} jobs ran to their end and equalled their references; {len(problems)} problems")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="runs/soak", help="working folder (deleted first)")
    args = parser.parse_args()
    return soak(Path(args.root), args.iterations, args.seed)


if __name__ == "__main__":
    sys.exit(main())
