"""The compiled XNOR-popcount convolution (xnor_conv.cpp): built on first use (:mod:`.build`), called per layer
(:mod:`.kernel`)."""

from .build import NativeKernelWarning, NativeLibrary, native_library
from .kernel import ConvGeometry, PackedBits, cpu_isa, xnor_conv2d_native

__all__ = ["ConvGeometry", "NativeKernelWarning", "NativeLibrary", "PackedBits", "cpu_isa", "native_library",
           "xnor_conv2d_native"]
