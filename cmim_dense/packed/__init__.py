"""Binary convolutions stored as packed bits and run by an XNOR-popcount kernel: the layer
(:mod:`.conv`), bit packing (:mod:`.bits`), the convolution in plain PyTorch (:mod:`.xnor`), the
compiled kernel (:mod:`.native`), BatchNorm and sign fused into it (:mod:`.fuse`), and whole models
on it (:mod:`.model`).  Used by the 1-bit export and by frozen backbones during fine-tuning and
evaluation on a CPU."""

from .conv import PackedBinaryConv2d
from .fuse import fuse_epilogues
from .model import PackedInference, pack_model, packed_inference_copy, runs_on_the_kernel, set_packed
from .xnor import xnor_conv2d

__all__ = ["PackedBinaryConv2d", "PackedInference", "fuse_epilogues", "pack_model", "packed_inference_copy",
           "runs_on_the_kernel", "set_packed", "xnor_conv2d"]
