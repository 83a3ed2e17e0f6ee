"""Compute and storage accounting of (binary) networks, following the BNN papers' convention.

Counted by one forward pass (batch 1, eval mode, no gradients) with hooks on the actual
modules, so any ``nn.Module`` works: a binary ResNet, or a DeepLab network over one.

Convention (XNOR-Net; Bi-Real Net; ReActNet; BiBench's speed-up ratio; docs/accounting.md):

- A multiply-accumulate (MAC) of a ``Conv2d`` is ``C_out H_out W_out (C_in / groups) kh kw``
  per image, of a ``Linear`` ``out_features`` times ``in_features`` per input row.
- A MAC of a :class:`~cmim_dense.binary.BinaryConv2d` whose inputs *and* weights are binary
  is a binary operation (BOP); every other MAC is a FLOP (the papers' "FLOPs" are MACs).
  XNOR-Net's K map adds ``H_out W_out kh kw`` FLOPs (its box filter).
- ``OPs = BOPs / 64 + FLOPs`` (64 binary operations per 64-bit XNOR-popcount instruction).
- BatchNorm, activations, poolings, residual additions, interpolation and the
  elementwise parts of binarizers are not counted, as in the published tables.
- Storage counts parameters: 1 bit per weight of a binary-weight convolution, 32 bits per
  every other parameter (BN affine, biases, learnable scales and shifts).  Buffers (BN
  running statistics, RBNN rotations) are not parameters and are not counted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .binary import BinaryConv2d

REAL_BITS = 32
BOPS_PER_OP = 64


@dataclass(frozen=True)
class Totals:
    """Sums over a set of layers; ``ops`` and ``bits`` follow the module docstring."""

    real_params: int = 0
    binary_params: int = 0
    bops: int = 0
    flops: int = 0

    @property
    def bits(self) -> int:
        return self.binary_params + REAL_BITS * self.real_params

    @property
    def ops(self) -> float:
        return self.bops / BOPS_PER_OP + self.flops

    @property
    def binary_mac_ratio(self) -> float:
        """Share of MACs that are binary (larq's "ratio of MACs that are binarized")."""
        macs = self.bops + self.flops
        return self.bops / macs if macs else 0.0

    def __add__(self, other: "Totals") -> "Totals":
        return Totals(self.real_params + other.real_params, self.binary_params + other.binary_params,
                      self.bops + other.bops, self.flops + other.flops)

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "bits": self.bits, "ops": self.ops, "binary_mac_ratio": self.binary_mac_ratio}


@dataclass(frozen=True)
class LayerCount:
    """One row: a conv/linear (with the parameters of its sub-modules) or another module owning parameters."""

    name: str
    kind: str
    output_shape: tuple[int, ...] | None
    totals: Totals

    def to_dict(self) -> dict[str, object]:
        shape = list(self.output_shape) if self.output_shape is not None else None
        return {"name": self.name, "kind": self.kind, "output_shape": shape, **self.totals.to_dict()}


@dataclass(frozen=True)
class Accounting:
    """Per-layer counts of one model at one input size (per image)."""

    input_shape: tuple[int, ...]
    layers: list[LayerCount]

    def totals(self, prefixes: Sequence[str] | None = None) -> Totals:
        """Sums over all layers, or over those whose name starts with one of ``prefixes``."""
        chosen = self.layers if prefixes is None else [
            layer for layer in self.layers if any(layer.name.startswith(p) for p in prefixes)]
        return sum((layer.totals for layer in chosen), Totals())

    def parts(self, groups: Mapping[str, Sequence[str]]) -> dict[str, Totals]:
        """Totals per named part, e.g. ``{"backbone": ["encoder."], "head": ["decoder.", "segmentation_head."]}``.

        Raises if a layer falls in no part or in two, so the parts always add up to the total.
        """
        for layer in self.layers:
            owners = [part for part, prefixes in groups.items() if any(layer.name.startswith(p) for p in prefixes)]
            if len(owners) != 1:
                where = "no part" if not owners else f"parts {', '.join(owners)}"
                raise ValueError(f"layer {layer.name!r} falls in {where}; the parts must cover each layer once")
        return {part: self.totals(prefixes) for part, prefixes in groups.items()}

    def to_dict(self) -> dict[str, object]:
        return {"input_shape": list(self.input_shape), "layers": [layer.to_dict() for layer in self.layers],
                "totals": self.totals().to_dict()}


def conv_macs(module: nn.Conv2d, output: Tensor) -> int:
    """``C_out H_out W_out (C_in / groups) kh kw`` for one image."""
    per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return output[0].numel() * per_output


def linear_macs(module: nn.Linear, output: Tensor) -> int:
    """``out_features in_features`` per input row, for one image."""
    return output[0].numel() * module.in_features


def binary_weight_count(module: nn.Module) -> int:
    """Weights stored at 1 bit: those of a binary-weight ``BinaryConv2d`` (0 for anything else)."""
    if isinstance(module, BinaryConv2d) and module.binary_weights:
        kh, kw = module.kernel_size
        return module.out_channels * (module.in_channels // module.groups) * kh * kw
    return 0


def _ops(module: nn.Module, output: Tensor) -> Totals:
    if isinstance(module, nn.Linear):
        return Totals(flops=linear_macs(module, output))
    macs = conv_macs(module, output)
    if isinstance(module, BinaryConv2d):
        extra = output[0, 0].numel() * math.prod(module.kernel_size) if module.input_scale else 0
        if module.binary_inputs and module.binary_weights:
            return Totals(bops=macs, flops=extra)
        return Totals(flops=macs + extra)
    return Totals(flops=macs)


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The rows: every conv/linear, and every other module owning parameters outside a conv/linear."""
    units: list[tuple[str, nn.Module]] = []
    inside: tuple[str, ...] = ()
    for name, module in model.named_modules():
        if inside and any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            units.append((name, module))
            inside += (f"{name}.",)
        elif any(True for _ in module.parameters(recurse=False)):
            units.append((name, module))
    return units


def count_model(model: nn.Module, input_shape: Sequence[int]) -> Accounting:
    """Count ``model`` on one input of ``input_shape`` = (C, H, W) (or any per-sample shape).

    Runs one forward in eval mode without gradients (the model's mode is restored).  Every
    parameter of the model is attributed to exactly one row; a module called several times
    has its operations summed.
    """
    units = _units(model)
    ops: dict[str, Totals] = {name: Totals() for name, _ in units}
    shapes: dict[str, tuple[int, ...]] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], object], None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: object) -> None:
            if not isinstance(output, Tensor):
                return
            shapes[name] = tuple(output.shape[1:])
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                ops[name] = ops[name] + _ops(module, output)
        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in units]
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        like = parameter if parameter is not None else torch.zeros(())
        with torch.no_grad():
            model(like.new_zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    seen: set[int] = set()
    layers = []
    for name, module in units:
        binary = binary_weight_count(module)
        real = 0
        # a conv/linear owns all parameters below it (binarizer shifts and scales), others only their own
        for pname, param in module.named_parameters(recurse=isinstance(module, (nn.Conv2d, nn.Linear))):
            if id(param) in seen:
                continue
            seen.add(id(param))
            real += 0 if (binary and pname == "weight") else param.numel()
        layers.append(LayerCount(name, type(module).__name__, shapes.get(name),
                                 ops[name] + Totals(real_params=real, binary_params=binary)))
    return Accounting(tuple(input_shape), layers)
