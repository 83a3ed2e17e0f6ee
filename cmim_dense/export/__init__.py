"""1-bit export: bit-packed binary weights in safetensors, and an XNOR-popcount inference path.

``python -m cmim_dense.export CKPT --out model.safetensors``; layout in docs/export.md.  The names
below are imported on first use, so that the command line's ``--help`` does not load torch.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

__all__ = ["ExportReport", "PackedBinaryConv2d", "export_model", "fuse_epilogues", "load_exported", "pack_model",
           "read_export", "set_packed", "xnor_conv2d"]

__getattr__ = lazy_attributes(__name__, {
    **dict.fromkeys(("ExportReport", "export_model", "load_exported", "read_export"), "export"),
    **dict.fromkeys(("PackedBinaryConv2d", "fuse_epilogues", "pack_model", "set_packed", "xnor_conv2d"),
                    ".packed")})  # the sibling package cmim_dense.packed
