"""Export a checkpoint and check that the file alone rebuilds its network (``python -m cmim_dense.export``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint_io import as_checkpoint, checkpoint_as, checkpoint_role, read_weights
from ..dense import dense_model_from_checkpoint
from ..models import model_from_checkpoint
from .agreement import per_image_difference
from .export import export_model, load_exported


def export_and_verify(path: str, out: str, output_stride: int | None = None) -> bool:
    """Export the checkpoint at ``path`` to ``out``, print the sizes, and whether the file alone rebuilds
    identical outputs."""
    if Path(out).resolve() == Path(path).resolve():
        raise ValueError(f"--out {out} is the checkpoint being exported; write the export to another file")
    model, meta, size = exported_network(path, output_stride)
    report = export_model(model, out, meta)
    rebuilt, _ = load_exported(out)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        identical = per_image_difference(model(x), rebuilt(x)).max().item() == 0.0
    identity = meta.get("backbone_meta", meta)
    what = f"{meta['task']} model ({meta['head']}) over " if "task" in meta else ""
    print(f"{what}{identity['method']} {identity['arch']}: packed {report.packed_layers} binary convs "
          f"({report.binary_weights:,} weights at 1 bit)")
    print(f"wrote {report.path}: {report.file_bytes:,} bytes ({report.file_bytes / 2**20:.2f} MiB)")
    print(f"FP32 state dict: {report.float_bytes:,} bytes ({report.float_bytes / 2**20:.2f} MiB); "
          f"export is {report.ratio:.2f}x smaller")
    print(f"round trip at 1x3x{size[0]}x{size[1]}: outputs " + ("identical" if identical else "DIFFER"))
    return identical


def exported_network(path: str, output_stride: int | None = None) -> tuple[torch.nn.Module, dict, tuple[int, int]]:
    """The network of the checkpoint at ``path`` in eval mode, the meta the export records, and the input
    size of the round-trip check (the training crop of a dense model, the pretraining size of a backbone)."""
    contents = read_weights(path)  # read once: its meta says whether it is a dense model or a backbone
    if checkpoint_role(as_checkpoint(contents, path)["meta"]) == "dense":
        if output_stride is not None:
            raise ValueError("--output-stride applies to a backbone; a fine-tuned model keeps the stride it was "
                             "trained at")
        model, meta = dense_model_from_checkpoint(path, contents)
        model.encoder.packed_inference = False  # the round trip compares float forwards, bit for bit
        return model, meta, tuple(meta["config"]["crop"])
    checkpoint = checkpoint_as(contents, "backbone", path)
    model = model_from_checkpoint(checkpoint, str(path), output_stride=output_stride).eval()
    meta = dict(checkpoint["meta"])
    if output_stride is not None:
        meta["output_stride"] = output_stride
    size = meta.get("image_size") or 64
    return model, meta, (size, size)
