"""A backbone's or a dense model's accounting as tables, against its full-precision twin: the
reports of ``python -m cmim_dense.summary`` (:mod:`cmim_dense.summary`; convention in docs/accounting.md)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from .accounting import Accounting, Totals, count_model
from .checkpoint_io import load_checkpoint_as, write_json
from .dense import HEADS, create_dense_model
from .models import create_model, model_from_checkpoint
from .models.resnet import BinaryResNet


def build_model(args: argparse.Namespace) -> tuple[BinaryResNet, tuple[int, int]]:
    """The backbone to count and the input size it was trained at (224 for a fresh ``--method`` one)."""
    if args.checkpoint is not None:
        checkpoint = load_checkpoint_as(args.checkpoint, "backbone")
        size = checkpoint["meta"].get("image_size") or 224
        return model_from_checkpoint(checkpoint, str(args.checkpoint), output_stride=args.output_stride), (size, size)
    model = create_model(args.arch, args.method, num_classes=args.classes or 1000, output_stride=args.output_stride)
    return model, (224, 224)


@dataclass(frozen=True)
class Summary:
    """A backbone's accounting and the totals of its full-precision twin at the same input size."""

    model: dict[str, Any]
    accounting: Accounting
    fp: Totals

    @property
    def storage_ratio(self) -> float:
        return self.fp.bits / self.accounting.totals().bits

    @property
    def ops_ratio(self) -> float:
        return self.fp.ops / self.accounting.totals().ops

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, **self.accounting.to_dict(),
                "fp_baseline": {"method": "fp", "arch": self.model["arch"], "totals": self.fp.to_dict()},
                "ratios": {"storage": self.storage_ratio, "ops": self.ops_ratio}}


def summarize(model: BinaryResNet, image_size: tuple[int, int]) -> Summary:
    """Count ``model`` and its full-precision twin (same arch, classes, output stride) on a 3 x H x W input."""
    shape = (3, *image_size)
    fp = create_model(model.arch, "fp", num_classes=model.num_classes, output_stride=model.output_stride)
    info = {"method": model.recipe.name, "arch": model.arch, "num_classes": model.num_classes,
            "output_stride": model.output_stride}
    return Summary(info, count_model(model, shape), count_model(fp, shape).totals())


def format_table(accounting: Accounting) -> str:
    """The per-layer table (one row per conv/linear or other parameter-owning module)."""
    header = ("layer", "type", "output", "real params", "binary params", "bits", "BOPs", "FLOPs")
    rows = [header]
    for layer in accounting.layers:
        shape = "x".join(map(str, layer.output_shape)) if layer.output_shape else "-"
        t = layer.totals
        rows.append((layer.name, layer.kind, shape, f"{t.real_params:,}", f"{t.binary_params:,}", f"{t.bits:,}",
                     f"{t.bops:,}", f"{t.flops:,}"))
    return _align(rows, left=3)


def format_totals(summary: Summary) -> str:
    """Totals against the FP twin, with the storage and OPs ratios."""
    ours, fp = summary.accounting.totals(), summary.fp
    size = "x".join(map(str, summary.accounting.input_shape))
    rows = [
        (f"per {size} image", summary.model["method"], f"fp {summary.model['arch']}", ""),
        ("real-valued parameters", f"{ours.real_params:,}", f"{fp.real_params:,}", ""),
        ("binary parameters", f"{ours.binary_params:,}", f"{fp.binary_params:,}", ""),
        ("storage (Mbit)", f"{ours.bits / 1e6:.2f}", f"{fp.bits / 1e6:.2f}", f"{summary.storage_ratio:.2f}x smaller"),
        ("BOPs (binary MACs)", f"{ours.bops:.3e}", f"{fp.bops:.3e}", ""),
        ("FLOPs (real MACs)", f"{ours.flops:.3e}", f"{fp.flops:.3e}", ""),
        ("OPs = BOPs/64 + FLOPs", f"{ours.ops:.3e}", f"{fp.ops:.3e}", f"{summary.ops_ratio:.2f}x fewer"),
        ("binary share of MACs", f"{100 * ours.binary_mac_ratio:.1f}%", f"{100 * fp.binary_mac_ratio:.1f}%", ""),
    ]
    return _align(rows, left=1)


def _align(rows: list[tuple[str, ...]], left: int) -> str:
    """Columns padded to their widest cell: the first ``left`` left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows)
    return "\n".join(line.rstrip() for line in lines)


DENSE_PARTS = {"backbone": ["encoder."], "head": ["decoder.", "segmentation_head."]}


def dense_parts(method: str, arch: str, head: str, output_stride: int, image_size: tuple[int, int],
                classes: int = 40, decoder_channels: int = 256, binary_head: str | None = None) -> dict[str, Totals]:
    """Backbone and head totals of the dense model (``head`` of dense.HEADS, binarized by the ``binary_head``
    method's recipe if given) over (arch, method) for one image."""
    model = create_dense_model(arch, method, classes, head, output_stride, decoder_channels, binary_head=binary_head)
    return count_model(model.eval(), (3, *image_size)).parts(DENSE_PARTS)


def format_parts(parts: dict[str, Totals]) -> str:
    total = sum(parts.values(), Totals())
    rows = [("part", "binary params", "real params", "storage (Mbit)", "BOPs", "FLOPs", "OPs", "share of OPs")]
    for name, t in {**parts, "total": total}.items():
        rows.append((name, f"{t.binary_params:,}", f"{t.real_params:,}", f"{t.bits / 1e6:.1f}", f"{t.bops:.3e}",
                     f"{t.flops:.3e}", f"{t.ops:.3e}", f"{100 * t.ops / total.ops:.0f}%"))
    return _align(rows, left=1)


def report_dense(args: argparse.Namespace) -> None:
    """``--head``: the dense model's backbone and head counted apart (default 480x640, the head's
    smallest output stride)."""
    if args.checkpoint:
        meta = load_checkpoint_as(args.checkpoint, "backbone")["meta"]
    else:
        meta = {"method": args.method, "arch": args.arch}
    size = args.image_size or (480, 640)
    stride = args.output_stride or HEADS.get(args.head).output_strides[0]
    classes = args.classes or 40
    parts = dense_parts(meta["method"], meta["arch"], args.head, stride, size, classes, args.decoder_channels)
    print(f"{args.head} ({args.decoder_channels} wide) over {meta['arch']} {meta['method']}, output stride {stride}, "
          f"{size[0]}x{size[1]}, {classes} outputs")
    print(format_parts(parts))
    if args.json:
        write_json(args.json, {name: t.to_dict() for name, t in parts.items()})


def report_backbone(args: argparse.Namespace) -> None:
    """The backbone's per-layer table and its totals against the full-precision twin at ``--image-size``
    (default: the size it was trained at)."""
    model, trained_size = build_model(args)
    summary = summarize(model, args.image_size or trained_size)
    print(format_table(summary.accounting))
    print()
    print(format_totals(summary))
    if args.json:
        write_json(args.json, summary.to_dict())
        print(f"\nwrote {args.json}")
