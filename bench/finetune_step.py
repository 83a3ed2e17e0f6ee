"""Fine-tuning costs: step time with the backbone frozen vs ``--unfreeze``, and NYUD-v2 loading speed.

    python bench/finetune_step.py [--backbone CKPT] [--batch 8] [--crop 240x320] [--frames 24]

In one run, on one machine:

- one optimizer step of DeepLabV3 (output stride 8, 256-wide head) over a binary ResNet-18
  (``--method``, default rbnn, random weights unless ``--backbone``), frozen as the paper does
  vs trained end to end, at the same batch and crop;
- samples/s of reading full 480x640 frames (image, 40-class label, depth) from the prepared
  layout (memory-mapped .npy), against reading the same bytes raw with ``os.pread`` (the
  limit), and against decoding each frame from the v7.3 .mat with h5py (chunk decompression,
  transposes, label mapping), on a synthetic file of ``--frames`` frames in the official layout.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import median_seconds, write_record  # noqa: E402

from cmim_dense.arguments import image_size  # noqa: E402
from cmim_dense.data.nyud import NYUDv2  # noqa: E402
from cmim_dense.data.nyud_mat import LabeledMat  # noqa: E402
from cmim_dense.data.nyud_meta import nyud_meta  # noqa: E402
from cmim_dense.data.nyud_prepare import prepare_nyud  # noqa: E402
from cmim_dense.data.synthetic_nyud import make_synthetic_nyud  # noqa: E402
from cmim_dense.dense import create_dense_model, dense_model_from_backbone  # noqa: E402
from cmim_dense.engine.optim import backward_step  # noqa: E402


def step_seconds(model: torch.nn.Module, batch: int, crop: tuple[int, int], steps: int) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    images = torch.randn(batch, 3, *crop)
    labels = torch.randint(0, 40, (batch, *crop))
    model.train()

    def step() -> None:
        backward_step(F.cross_entropy(model(images), labels), optimizer, None)

    return median_seconds(step, steps)


def build(method: str, backbone: str | None, freeze: bool) -> torch.nn.Module:
    if backbone:
        return dense_model_from_backbone(backbone, 40, freeze=freeze)[0]
    model = create_dense_model("resnet18", method, 40)
    if freeze:
        model.freeze_encoder()
        model.encoder.eval()
    return model


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
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=image_size, default="240x320", help="HxW")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--json", default="bench/finetune_step.json")
    args = parser.parse_args()
    crop = args.crop
    print(f"DeepLabV3 OS8 over {args.method} ResNet-18, batch {args.batch}, crop {crop[0]}x{crop[1]}, "
          f"{torch.get_num_threads()} threads")
    frozen = step_seconds(build(args.method, args.backbone, True), args.batch, crop, args.steps)
    unfrozen = step_seconds(build(args.method, args.backbone, False), args.batch, crop, args.steps)
    print(f"step frozen {frozen:.3f}s, --unfreeze {unfrozen:.3f}s: frozen is {unfrozen / frozen:.2f}x faster")
    with tempfile.TemporaryDirectory() as tmp:
        rates = loading_rates(args.frames, Path(tmp))
    limit = rates["same bytes raw (os.pread)"]
    for name, rate in rates.items():
        print(f"{name:<32} {rate:9.1f} samples/s  ({rate / limit:.2f}x the raw read)")
    write_record(args.json, {"method": args.method, "batch": args.batch, "crop": list(crop),
                             "step_seconds": {"frozen": frozen, "unfreeze": unfrozen},
                             "loading_samples_per_s": rates})


if __name__ == "__main__":
    main()
