"""Write and read 1-bit exports: bit-packed binary weights in a safetensors file (docs/export.md).

An export is the state dict of the model after :func:`pack_model`: every binary-weight
:class:`~cmim_dense.binary.BinaryConv2d` becomes a :class:`PackedBinaryConv2d`
(``<layer>.weight_bits`` uint8 + ``<layer>.weight_scale`` float32), everything else (stem,
BN, shortcuts, classifier, learnable activation shifts) keeps its float tensors.  The file's
metadata holds the checkpoint's ``meta`` as JSON, so a backbone or a fine-tuned dense model (its
meta names a task) is rebuilt from the file alone; any other model by passing its skeleton.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
from torch import Tensor, nn

from ..checkpoint_io import checkpoint_role, tensor_checksum, write_atomic
from ..cli import first_line
from ..dense.loading import dense_skeleton
from ..models import create_model
from ..models.loading import require_meta
from ..packed import PackedBinaryConv2d, fuse_epilogues, pack_model, set_packed
from ..packed.bits import packed_length

FORMAT = "cmim-dense-1bit"
FORMAT_VERSION = "1"
BIT_CONVENTION = ("weight_bits: uint8 (C_out, kh, kw, ceil(C_in/8)), packed along C_in, LSB first, "
                  "bit 1 = +1, bit 0 = -1; weight = weight_scale[o] * (+-1)")


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote: file size against the model's own FP32 state dict."""

    path: Path
    packed_layers: int
    binary_weights: int
    file_bytes: int
    float_bytes: int

    @property
    def ratio(self) -> float:
        return self.float_bytes / self.file_bytes


def export_model(model: nn.Module, path: str | Path, meta: dict[str, Any]) -> ExportReport:
    """Write ``model`` (left unchanged) as a 1-bit export with ``meta`` in the metadata.

    ``meta`` is the checkpoint's meta (for a backbone it needs ``arch``, ``method`` and
    ``num_classes``; ``output_stride`` is honoured when present).  The file is written
    atomically.  ``float_bytes`` is the size of ``model.state_dict()`` as float safetensors.
    """
    packed = copy.deepcopy(model).eval()
    names = pack_model(packed)
    layers = [packed_layer_info(name, packed.get_submodule(name)) for name in names]
    tensors = _tensors(packed)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "convention": BIT_CONVENTION,
        "meta": _to_json(meta),
        "packed_layers": json.dumps(layers),
        "crc32": str(tensor_checksum(dict(sorted(tensors.items())))),
    }
    data = safetensors.torch.save(tensors, metadata)
    write_atomic(path, lambda handle: handle.write(data))
    float_bytes = len(safetensors.torch.save(_tensors(model)))
    binary_weights = sum(math.prod(layer["shape"]) for layer in layers)
    return ExportReport(Path(path), len(names), binary_weights, len(data), float_bytes)


def read_export(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and the parsed metadata (``meta``, ``packed_layers``, ...) of an export."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"export {path} does not exist")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a safetensors file ({first_line(error)})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cmim-dense 1-bit export (metadata format is {metadata.get('format')!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has export format version {metadata.get('format_version')}; "
                         f"this cmim-dense reads version {FORMAT_VERSION}")
    if "crc32" in metadata and str(tensor_checksum(dict(sorted(tensors.items())))) != metadata["crc32"]:
        raise ValueError(f"{path} is corrupted: its tensors no longer match the checksum written with them; "
                         "export the checkpoint again")
    parsed = {**metadata, "meta": json.loads(metadata["meta"]), "packed_layers": json.loads(metadata["packed_layers"])}
    return tensors, parsed


def load_exported(path: str | Path, model: nn.Module | None = None,
                  packed: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an exported model in eval mode; returns ``(model, meta)``.

    Without ``model`` the network is built from the file's ``meta``: a fine-tuned dense model's
    skeleton when it names a task, else the backbone (``create_model(arch, method, num_classes,
    output_stride, real_weights)``); otherwise ``model`` is a freshly
    built training-time skeleton of the exported network (e.g. a DeepLab model), whose
    binary convs are packed and whose tensors are then all replaced by the file's.
    ``packed=True`` switches on the XNOR-popcount forward (:func:`set_packed`) and fuses the
    BatchNorms (and signs) that follow packed convs into their epilogues (:func:`fuse_epilogues`).
    """
    tensors, metadata = read_export(path)
    meta = metadata["meta"]
    if model is None and checkpoint_role(meta) == "dense":
        model = dense_skeleton(meta)
    elif model is None:
        require_meta(meta, ("arch", "method", "num_classes"), path, hint="not a backbone: pass the model skeleton")
        model = create_model(meta["arch"], meta["method"], num_classes=meta["num_classes"],
                             output_stride=meta.get("output_stride"), real_weights=meta.get("real_weights", False))
    pack_model(model, pack=False)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        detail = " ".join(line.strip() for line in str(error).strip().splitlines()[:2])
        raise ValueError(f"{path} does not fit the model: {detail}") from None
    model.eval()
    if packed:
        set_packed(model)
        fuse_epilogues(model)
    return model, meta


def _to_json(meta: dict[str, Any]) -> str:
    try:
        return json.dumps(meta, sort_keys=True)
    except TypeError as error:
        raise ValueError(f"the model's meta cannot be stored as JSON ({error})") from None


def _tensors(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().contiguous() for key, value in model.state_dict().items()}


def packed_layer_info(name: str, conv: PackedBinaryConv2d) -> dict[str, Any]:
    """The JSON description of one packed layer written into an export's metadata."""
    return {
        "name": name,
        "shape": [conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size],
        "bytes_per_row": packed_length(conv.in_channels // conv.groups),
        "stride": list(conv.stride),
        "padding": list(conv.padding),
        "dilation": list(conv.dilation),
        "groups": conv.groups,
        "pad_value": conv.pad_value,
        "input_scale": conv.input_scale,
        "bias": conv.bias is not None,
        "input_pre": type(conv.input_binarizer.pre).__name__ if conv.input_binarizer is not None else None,
    }
