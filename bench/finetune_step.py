"""Fine-tuning costs: a training step and evaluation with the frozen backbone in float and on the packed
1-bit kernel, a step with ``--unfreeze``, and NYUD-v2 loading speed.

    python bench/finetune_step.py [--method rbnn] [--backbone CKPT] [--settings main,480x640] [--frames 24]

In one run, on one machine, for each setting (``main``: the main job's DeepLabV3+ at output stride 16,
64 wide, batch 8 of 64x96 crops, evaluated on the built-in 96x128 frames 4 at a time; ``480x640``:
the CMIM paper's DeepLabV3 at output stride 8, 256 wide, on full NYUD-v2 frames, batch 2):

- ``step_seconds``: one SGD step of the head with the backbone frozen, its forward in float
  (``frozen_float``) and on the packed kernel (``frozen_packed``, the default on a CPU), timed in
  alternation, and one step trained end to end (``unfreeze``);
- ``eval_images_per_s``: evaluation forwards (eval mode, no gradients) with the backbone in float and packed;
- then samples/s of reading full 480x640 frames (image, 40-class label, depth) from the prepared
  layout (memory-mapped .npy), against reading the same bytes raw with ``os.pread`` (the
  limit), and against decoding each frame from the v7.3 .mat with h5py (chunk decompression,
  transposes, label mapping), on a synthetic file of ``--frames`` frames in the official layout.

The backbone is ``--method``'s ResNet-18 with random weights unless ``--backbone`` names a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import interleaved_calls, median_seconds, write_record  # noqa: E402

from cmim_dense.data.nyud import NYUDv2  # noqa: E402
from cmim_dense.data.nyud_mat import LabeledMat  # noqa: E402
from cmim_dense.data.nyud_meta import nyud_meta  # noqa: E402
from cmim_dense.data.nyud_prepare import prepare_nyud  # noqa: E402
from cmim_dense.data.synthetic_nyud import make_synthetic_nyud  # noqa: E402
from cmim_dense.dense import create_dense_model, dense_model_from_backbone, freeze_backbone  # noqa: E402
from cmim_dense.engine.optim import backward_step  # noqa: E402


@dataclass(frozen=True)
class Setting:
    """A fine-tuning shape: the head, the training batch and crop, and the evaluation batch and frame size."""

    head: str
    output_stride: int
    decoder_channels: int
    batch: int
    crop: tuple[int, int]
    eval_batch: int
    eval_size: tuple[int, int]


SETTINGS = {
    "main": Setting("deeplabv3plus", 16, 64, 8, (64, 96), 4, (96, 128)),
    "480x640": Setting("deeplabv3", 8, 256, 2, (480, 640), 1, (480, 640)),
    "smoke": Setting("deeplabv3plus", 16, 16, 2, (32, 32), 2, (32, 32)),  # seconds: the script's own test
}


def build(method: str, backbone: str | None, setting: Setting, freeze: bool) -> torch.nn.Module:
    if backbone:
        return dense_model_from_backbone(backbone, 40, setting.head, setting.output_stride, setting.decoder_channels,
                                         freeze=freeze)[0]
    model = create_dense_model("resnet18", method, 40, setting.head, setting.output_stride, setting.decoder_channels)
    return freeze_backbone(model) if freeze else model


def training_step(model: torch.nn.Module, setting: Setting):
    """One SGD step of ``model``'s trainable parameters on a fixed random batch, as a function to time."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    images = torch.randn(setting.batch, 3, *setting.crop)
    labels = torch.randint(0, 40, (setting.batch, *setting.crop))

    def step() -> None:
        model.train()
        backward_step(F.cross_entropy(model(images), labels), optimizer, None)

    return step


def with_packed_backbone(model: torch.nn.Module, packed: bool, work):
    """``work`` with the frozen backbone's forward in float or on the packed kernel."""

    def call() -> None:
        model.encoder.packed_inference = packed
        work()

    return call


def measure(method: str, backbone: str | None, setting: Setting, steps: int) -> dict[str, object]:
    frozen = build(method, backbone, setting, True)
    step = training_step(frozen, setting)
    images = torch.randn(setting.eval_batch, 3, *setting.eval_size)

    @torch.no_grad()
    def evaluate() -> None:
        frozen.eval()
        frozen(images)

    steps_timed = interleaved_calls({name: with_packed_backbone(frozen, name == "frozen_packed", step)
                                     for name in ("frozen_float", "frozen_packed")}, steps)
    evals_timed = interleaved_calls({name: with_packed_backbone(frozen, name == "packed", evaluate)
                                     for name in ("float", "packed")}, 2 * steps)
    step_seconds = {name: statistics.median(times) for name, times in steps_timed.items()}
    step_seconds["unfreeze"] = median_seconds(training_step(build(method, backbone, setting, False), setting), steps)
    eval_rate = {name: setting.eval_batch / statistics.median(times) for name, times in evals_timed.items()}
    return {**asdict(setting), "step_seconds": step_seconds, "eval_images_per_s": eval_rate,
            "speedup": {"frozen_step": step_seconds["frozen_float"] / step_seconds["frozen_packed"],
                        "eval": eval_rate["packed"] / eval_rate["float"]}}


def loading_rates(frames: int, folder: Path) -> dict[str, float]:
    """Samples/s of three ways to get (image, label40, depth) for every training frame."""
    mat, splits = make_synthetic_nyud(folder, train=frames, test=2, height=480, width=640, seed=0)
    root = prepare_nyud(mat, folder / "prepared", splits, progress=False)
    dataset = NYUDv2(root, "train")
    rates = {}
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    rates["prepared layout (np.load mmap)"] = len(dataset) / (time.perf_counter() - start)
    files = [root / "train" / name for name in ("images.npy", "labels40.npy", "depths.npy")]
    handles = [os.open(path, os.O_RDONLY) for path in files]
    sizes = [480 * 640 * 3, 480 * 640, 480 * 640 * 4]
    offsets = [os.path.getsize(path) - size * len(dataset) for path, size in zip(files, sizes)]  # after .npy header
    start = time.perf_counter()
    for index in range(len(dataset)):
        for handle, size, offset in zip(handles, sizes, offsets):
            os.pread(handle, size, offset + index * size)
    rates["same bytes raw (os.pread)"] = len(dataset) / (time.perf_counter() - start)
    for handle in handles:
        os.close(handle)
    meta = nyud_meta()
    start = time.perf_counter()
    with LabeledMat(mat) as labeled:
        for frame in dataset.frames:
            data = labeled.frame(int(frame) - 1)
            meta.train_labels(data["labels"], 40)
    rates["v7.3 .mat via h5py"] = len(dataset) / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="rbnn")
    parser.add_argument("--backbone", help="a pretraining checkpoint (default: random weights of --method)")
    parser.add_argument("--settings", default="main,480x640", help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (evaluations: twice as many)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--json", default="bench/finetune_step.json")
    args = parser.parse_args()
    names = args.settings.split(",")
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        parser.error(f"unknown --settings {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    print(f"{args.method} ResNet-18 backbone, {torch.get_num_threads()} threads")
    results = {}
    for name in names:
        result = results[name] = measure(args.method, args.backbone, SETTINGS[name], args.steps)
        steps, rates = result["step_seconds"], result["eval_images_per_s"]
        print(f"[{name}] {result['head']} OS{result['output_stride']} x{result['decoder_channels']}, batch "
              f"{result['batch']} of {result['crop'][0]}x{result['crop'][1]}: "
              f"step frozen float {steps['frozen_float']:.3f}s, "
              f"frozen packed {steps['frozen_packed']:.3f}s ({result['speedup']['frozen_step']:.2f}x), "
              f"--unfreeze {steps['unfreeze']:.3f}s; evaluation at {result['eval_size'][0]}x{result['eval_size'][1]}: "
              f"float {rates['float']:.1f}, packed {rates['packed']:.1f} images/s ({result['speedup']['eval']:.2f}x)")
    with tempfile.TemporaryDirectory() as tmp:
        rates = loading_rates(args.frames, Path(tmp))
    limit = rates["same bytes raw (os.pread)"]
    for name, rate in rates.items():
        print(f"{name:<32} {rate:9.1f} samples/s  ({rate / limit:.2f}x the raw read)")
    write_record(args.json, {"method": args.method, "backbone": args.backbone, "settings": results,
                             "loading_samples_per_s": rates})


if __name__ == "__main__":
    main()
