"""Training-step time and peak memory of every recipe against full precision, and the cost of CMIM.

    python bench/train_step.py [--batch 32] [--image-size 64] [--steps 5] [--json bench/train_step.json]
                               [--compile irnet,rbnn]

In one run, on one machine: one optimizer step (forward + backward + SGD update; cross-entropy
for every recipe, so a distilling recipe's teacher forward is not included; CMIM adds its
heads, memory bank and NCE term) of binary ResNet-18 for each recipe,
timed as the median of ``--steps`` steps after two warm-up steps (and as images/s, batch / step
time), relative to the FP ResNet-18 step; ``X+cmim`` relative to ``X``; peak memory of each (a fresh process per recipe: peak RSS on
CPU, ``max_memory_allocated`` on CUDA).  Then the CMIM memory bank's size for ImageNet.  Targets
(issue #6): CMIM overhead <= 1.15x, binary step <= 1.5x the FP step.

``--compile RUNS`` also times, for each of those runs, the step with the network under
``torch.compile`` (TorchInductor, as ``--compile`` trains) against the eager step, both built
afresh and timed in alternation (``--steps`` rounds after the compiled step's two warm-up steps,
which compile it: RBNN has two programs, with and without its rotations' re-fit), and records the
warm-up time, both medians and the median of the per-round ratios (issue #23).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import interleaved_calls, median_seconds, seconds_of_one_call, write_record  # noqa: E402

from cmim_dense import create_model  # noqa: E402
from cmim_dense.engine.optim import backward_step  # noqa: E402
from cmim_dense.engine.pretrain_run import build_cmim_loss  # noqa: E402
from cmim_dense.losses.cmim import SIDES  # noqa: E402
from cmim_dense.engine.config import resolve_config  # noqa: E402
from cmim_dense.methods import base_method, has_cmim  # noqa: E402
from cmim_dense.models import collect_taps  # noqa: E402

METHODS = ("fp", "bnn", "xnor", "bireal", "irnet", "rbnn", "reactnet", "dirnet")
CMIM_METHODS = ("bnn", "irnet", "rbnn")
IMAGENET = 1_281_167


def make_step(method: str, batch: int, size: int, device: torch.device, amp: bool,
              compiled: bool = False) -> Callable[[], None]:
    """One optimizer step of ``method`` (cross-entropy; the CMIM term for +cmim) on a fresh model, the
    network under ``torch.compile`` when ``compiled`` (the CMIM loss stays eager, as in training)."""
    torch.manual_seed(0)
    model = create_model("resnet18", method, num_classes=1000).to(device).train()
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    cmim = None
    trained = [model]
    if has_cmim(method):
        config = resolve_config(method, {"out": "/tmp/unused", "cmim_nce_n": 4096})
        dataset = torch.utils.data.TensorDataset(torch.zeros(8192, 1))  # its length sizes the banks
        dataset.targets = [i % 1000 for i in range(8192)]  # the classes the negatives avoid
        cmim = build_cmim_loss(config.cmim, model, None, dataset, config.image_size, device, config.seed)
        trained.append(cmim)
    sites = cmim.sites if cmim is not None else []
    params = [p for m in trained for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    network = torch.compile(model) if compiled else model
    steps_taken = 0

    def step() -> None:
        nonlocal steps_taken
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            with collect_taps(model, sites) if sites else nullcontext({}) as taps:
                loss = F.cross_entropy(network(images), labels)
            if cmim is not None:
                indices = torch.arange(steps_taken * batch, (steps_taken + 1) * batch, device=device) % 8192
                loss = loss + cmim(taps, indices, [], None).total
        backward_step(loss, optimizer, scaler)
        steps_taken += 1

    return step


def step_seconds(method: str, batch: int, size: int, steps: int, device: torch.device, amp: bool) -> float:
    """Median seconds of one optimizer step of ``method`` (cross-entropy; the CMIM term for +cmim)."""
    return median_seconds(make_step(method, batch, size, device, amp), steps, warmup=2)


def compiled_against_eager(method: str, batch: int, size: int, steps: int, device: torch.device,
                           amp: bool) -> dict[str, float]:
    """The step of ``method`` under ``torch.compile`` (TorchInductor) against eager, on two fresh
    models: seconds of the compiled step's two warm-up steps (compilation included), then
    ``steps`` rounds of one eager and one compiled step in alternation."""
    eager, compiled = make_step(method, batch, size, device, amp), make_step(method, batch, size, device, amp, True)
    warmup = seconds_of_one_call(compiled) + seconds_of_one_call(compiled)
    eager()
    eager()
    times = interleaved_calls({"eager": eager, "compiled": compiled}, steps, warmup=0)
    return {"warmup_seconds": warmup, "eager_seconds": statistics.median(times["eager"]),
            "compiled_seconds": statistics.median(times["compiled"]),
            "speedup": statistics.median(e / c for e, c in zip(times["eager"], times["compiled"]))}


def peak_memory_mb(method: str, batch: int, size: int, device: str, amp: bool) -> float:
    """Peak training memory of ``method`` (model, optimizer state, activations of three steps),
    measured in a fresh process: CUDA's max_memory_allocated, or on CPU the peak resident set
    above the process's resident size after imports (Linux /proc)."""
    result = subprocess.run([sys.executable, __file__, "--measure-memory", method, "--batch", str(batch),
                             "--image-size", str(size), "--device", device] + (["--amp"] if amp else []),
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def resident_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak since the last reset) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def bank_megabytes(sites: int, dim: int = 128) -> dict[str, float]:
    """The paper variant's banks for ImageNet: one (1.28M x dim) bank per tapped site and side (a_B, a_F)."""
    banks = sites * len(SIDES)
    return {dtype: IMAGENET * dim * banks * width / 2**20 for dtype, width in (("float32", 4), ("float16", 2))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--compile", default="", metavar="RUNS",
                        help="comma-separated runs (e.g. irnet,rbnn) whose step is also timed compiled against eager")
    parser.add_argument("--json", default="bench/train_step.json")
    parser.add_argument("--measure-memory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.measure_memory:
        if device.type == "cuda":
            step_seconds(args.measure_memory, args.batch, args.image_size, 1, device, args.amp)
            print(torch.cuda.max_memory_allocated() / 2**20)
            return
        baseline = resident_mb("VmRSS")  # after imports: the interpreter, torch and its libraries
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        step_seconds(args.measure_memory, args.batch, args.image_size, 1, device, args.amp)
        print(resident_mb("VmHWM") - baseline)
        return
    methods = args.methods.split(",")
    runs = methods + [f"{m}+cmim" for m in CMIM_METHODS if m in methods]
    print(f"device {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"batch {args.batch}, {args.image_size}x{args.image_size}, amp {args.amp}")
    seconds = {run: step_seconds(run, args.batch, args.image_size, args.steps, device, args.amp) for run in runs}
    memory = {run: peak_memory_mb(run, args.batch, args.image_size, args.device, args.amp) for run in runs} \
        if args.memory else {}
    print(f"{'method':<12} {'step ms':>9} {'img/s':>8} {'vs fp':>7} {'vs base':>8} {'peak MB':>9}")
    for run in runs:
        base = base_method(run)
        versus_base = f"{seconds[run] / seconds[base]:.2f}x" if has_cmim(run) else ""
        print(f"{run:<12} {1000 * seconds[run]:9.1f} {args.batch / seconds[run]:8.1f} "
              f"{seconds[run] / seconds['fp']:6.2f}x {versus_base:>8} {memory.get(run, float('nan')):9.0f}")
    compiled = {run: compiled_against_eager(run, args.batch, args.image_size, args.steps, device, args.amp)
                for run in args.compile.split(",") if run}
    for run, timing in compiled.items():
        print(f"{run:<12} torch.compile: step {1000 * timing['compiled_seconds']:.1f} ms against eager "
              f"{1000 * timing['eager_seconds']:.1f} ms ({timing['speedup']:.2f}x, median of {args.steps} "
              f"alternating rounds); the two warm-up steps that compile it: {timing['warmup_seconds']:.1f} s")
    banks = bank_megabytes(sites=4)
    print(f"CMIM memory banks for ImageNet ({IMAGENET:,} samples, 4 sites x 2 sides x 128-d): "
          f"{banks['float32']:,.0f} MB float32, {banks['float16']:,.0f} MB float16")
    write_record(args.json, {"device": str(device), "batch": args.batch, "image_size": args.image_size,
                             "amp": args.amp, "step_seconds": seconds,
                             "images_per_second": {run: args.batch / t for run, t in seconds.items()},
                             "peak_memory_mb": memory,
                             **({"compiled": compiled} if compiled else {}),
                             "imagenet_bank_mb": banks})


if __name__ == "__main__":
    main()
