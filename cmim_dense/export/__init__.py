"""1-bit export: bit-packed binary weights in safetensors, and an XNOR-popcount inference path.

``python -m cmim_dense.export CKPT --out model.safetensors``; layout in docs/export.md.
"""

from .export import ExportReport, export_model, load_exported, pack_model, read_export, set_packed
from .fuse import fuse_epilogues
from .packed import PackedBinaryConv2d, xnor_conv2d

__all__ = ["ExportReport", "PackedBinaryConv2d", "export_model", "fuse_epilogues", "load_exported", "pack_model",
           "read_export", "set_packed", "xnor_conv2d"]
