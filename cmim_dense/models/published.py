"""The published layouts of ImageNet ResNet-18/34 checkpoints and their maps onto this package's names.

Each :class:`SourceLayout` renames (and where needed reshapes) one repository's state dict into
the state dict of ``create_model(arch, method)``.  The architectures are the same networks; only
the names differ (docs/backbones.md has every map and the measured agreement of the logits):

- ``torchvision`` / ``timm``: a full-precision ResNet, the same names as ``create_model(arch, "fp")``.
- ``irnet`` (htqin/IR-Net): ours apart from ``bn2`` (the BatchNorm1d before ``fc``, here
  ``head_norm``) and ``bn3`` (declared, never used in forward: dropped).
- ``rbnn`` (lmbxmu/RBNN): as IR-Net, plus per binary conv ``R1``, ``R2`` (the bi-rotation),
  ``rotate`` (theta) and ``alpha`` (the learnable scale, stored (C, 1, 1)).
- ``bireal`` (liuzechun/Bi-Real-net): 16 or 32 single-conv blocks ``layer{s}.{i}`` where this
  package has ``layer{s}.{i // 2}.conv{i % 2 + 1}``; the binary weight stored flat (N, 1).
- ``reactnet`` (liuzechun/ReActNet, resnet/): as Bi-Real, plus ``move0`` (RSign's shift) and
  ``move1`` / ``prelu`` / ``move2`` (RPReLU's input shift, slope and output shift).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..registry import Registry

State = dict[str, Tensor]

# blocks per stage -> architecture: two-conv blocks (ours, torchvision, IR-Net, RBNN) and the
# single-conv blocks of Bi-Real and ReActNet (each two-conv block is two of those)
TWO_CONV_DEPTHS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}
ONE_CONV_DEPTHS = {(4, 4, 4, 4): "resnet18", (6, 8, 12, 6): "resnet34"}


@dataclass(frozen=True)
class SourceLayout:
    """One published checkpoint layout: the method its network is, how to recognise it, how to
    rename its state dict, and the blocks per stage of each architecture it comes in."""

    name: str
    method: str
    description: str
    marker: re.Pattern[str]  # a key only this layout has (names the layout of a mistaken --format)
    depths: dict[tuple[int, ...], str]
    rename: Callable[[State], State]


LAYOUTS: Registry[SourceLayout] = Registry("checkpoint format")

_BLOCK_KEY = re.compile(r"^layer(\d)\.(\d+)\.(.+)$")


def blocks_per_stage(state: State) -> tuple[int, ...]:
    """How many blocks each of ``layer1``..``layer4`` holds (0 where a stage is absent)."""
    counts = [0, 0, 0, 0]
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match and 1 <= int(match.group(1)) <= 4:
            stage = int(match.group(1)) - 1
            counts[stage] = max(counts[stage], int(match.group(2)) + 1)
    return tuple(counts)


def _head_norm(state: State) -> State:
    """IR-Net's and RBNN's ``bn2`` (BatchNorm1d before fc) -> ``head_norm``; the unused ``bn3`` dropped."""
    renamed = {}
    for key, value in state.items():
        if key.startswith("bn3."):
            continue
        renamed["head_norm." + key[4:] if key.startswith("bn2.") else key] = value
    return renamed


_RBNN_PARAMETERS = {"R1": "weight_binarizer.r1", "R2": "weight_binarizer.r2", "rotate": "weight_binarizer.theta",
                    "alpha": "weight_binarizer.scale"}


def _rbnn(state: State) -> State:
    """RBNN: the IR-Net names, then each binary conv's R1, R2, theta and alpha (theta and alpha as
    (C, 1, 1, 1)), with the rotation's ``updated_at`` marker at -1 (re-fitted on the first
    training forward, as RBNN re-fits at the start of every epoch)."""
    renamed = {}
    for key, value in _head_norm(state).items():
        prefix, _, leaf = key.rpartition(".")
        if leaf in _RBNN_PARAMETERS and _BLOCK_KEY.match(key):
            if leaf in ("rotate", "alpha"):
                value = value.reshape(value.shape[0], 1, 1, 1)
            renamed[f"{prefix}.{_RBNN_PARAMETERS[leaf]}"] = value
            if leaf == "R1":
                renamed[f"{prefix}.weight_binarizer.updated_at"] = torch.tensor(-1.0)
        else:
            renamed[key] = value
    return renamed


# Bi-Real/ReActNet single-conv block members -> (module of the two-conv block, its member);
# "{k}" is 1 for even single-conv blocks and 2 for odd ones
_SINGLE_CONV_MEMBERS = {
    "binary_conv.weights": "conv{k}.weight",
    "binary_conv.weight": "conv{k}.weight",  # ReActNet step 1: a real-valued nn.Conv2d
    "bn1": "bn{k}",
    "move0.bias": "conv{k}.input_binarizer.pre.bias",
    "move1.bias": "act{k}.shift_in.bias",
    "prelu.weight": "act{k}.prelu.weight",
    "move2.bias": "act{k}.shift_out.bias",
    "downsample": "downsample",
}


def _single_conv_blocks(state: State) -> State:
    """Bi-Real / ReActNet: block ``layer{s}.{i}`` -> member ``{i % 2 + 1}`` of ``layer{s}.{i // 2}``;
    the flat (N, 1) binary weight reshaped to (C_out, C_in, 3, 3) with C_out from the block's BN."""
    renamed = {}
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if not match:
            renamed[key] = value
            continue
        stage, index, member = match.groups()
        prefix = next((p for p in _SINGLE_CONV_MEMBERS if member == p or member.startswith(p + ".")), None)
        if prefix is None:
            renamed[key] = value  # left for the strict load to name
            continue
        target, rest = _SINGLE_CONV_MEMBERS[prefix], member[len(prefix):]
        block, k = int(index) // 2, int(index) % 2 + 1
        if target == "downsample" and k == 2:
            raise ValueError(f"{key}: a shortcut projection on an odd single-conv block has no place in a "
                             "Bi-Real ResNet")
        if prefix == "binary_conv.weights":
            out_channels = state[f"layer{stage}.{index}.bn1.weight"].shape[0]
            value = value.reshape(out_channels, -1, 3, 3)
        renamed[f"layer{stage}.{block}.{target.format(k=k)}{rest}"] = value
    return renamed


def _same_names(state: State) -> State:
    return dict(state)


def detect_layout(state: State) -> str | None:
    """The layout whose marker key ``state`` holds, the most specific first (None: none fits)."""
    for name in ("rbnn", "reactnet", "bireal", "irnet", "torchvision"):
        if any(LAYOUTS.get(name).marker.search(key) for key in state):
            return name
    return None


LAYOUTS.add("torchvision", SourceLayout(
    "torchvision", "fp", "a torchvision ResNet-18/34 state dict (resnet18-*.pth)",
    re.compile(r"^layer1\.0\.conv1\.weight$"), TWO_CONV_DEPTHS, _same_names))
LAYOUTS.add("timm", SourceLayout(
    "timm", "fp", "a timm ResNet-18/34 state dict (.pth or .safetensors)",
    re.compile(r"^layer1\.0\.conv1\.weight$"), TWO_CONV_DEPTHS, _same_names))
LAYOUTS.add("irnet", SourceLayout(
    "irnet", "irnet", "an IR-Net ImageNet ResNet-18/34 (htqin/IR-Net, ImageNet/ResNet*/1w1a)",
    re.compile(r"^bn2\.running_var$"), TWO_CONV_DEPTHS, _head_norm))
LAYOUTS.add("rbnn", SourceLayout(
    "rbnn", "rbnn", "an RBNN ImageNet ResNet-18/34 checkpoint (lmbxmu/RBNN, imagenet/main.py)",
    re.compile(r"\.R1$"), TWO_CONV_DEPTHS, _rbnn))
LAYOUTS.add("bireal", SourceLayout(
    "bireal", "bireal", "a Bi-Real Net 18/34 checkpoint (liuzechun/Bi-Real-net, pytorch_implementation)",
    re.compile(r"\.binary_conv\.weights$"), ONE_CONV_DEPTHS, _single_conv_blocks))
LAYOUTS.add("reactnet", SourceLayout(
    "reactnet", "reactnet", "a ReActNet-18/34 checkpoint (liuzechun/ReActNet, resnet/; step 1 or 2)",
    re.compile(r"\.move0\.bias$"), ONE_CONV_DEPTHS, _single_conv_blocks))
