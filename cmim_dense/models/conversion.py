"""Published ImageNet checkpoints -> self-describing cmim-dense backbone checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..binary import BinaryConv2d
from ..checkpoint_io import checkpoint_as, checkpoint_role, read_weights, save_atomic
from ..data.classification import IMAGENET_MEAN, IMAGENET_STD
from .factory import create_model
from .loading import load_strict, model_from_checkpoint
from .published import LAYOUTS, SourceLayout, State, blocks_per_stage, detect_layout
from .resnet import BinaryResNet

# where each repository's training script keeps the best validation top-1 (in per cent)
REPORTED_TOP1_KEYS = ("best_prec1", "best_top1_acc", "best_acc1")


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert_checkpoint` wrote and found."""

    path: Path
    meta: dict[str, Any]
    zero_weights: int  # weights whose binarizer's sign input is exactly 0 (sign(0) = +1 here, 0 in torch.sign)
    binary_weights: int


def read_file(path: str | Path) -> Any:
    """A ``.safetensors`` file's tensors, or a torch file read without unpickling code."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return read_weights(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None


def plain_number(value: Any) -> float | int | None:
    """An int, a float or a one-element tensor (Bi-Real's best_top1_acc) as a Python number, else None."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        return value.item()
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_source(path: str | Path, contents: Any = None) -> tuple[State, dict[str, Any]]:
    """The state dict inside a published file (``.pth``/``.pth.tar``/``.safetensors``) with
    DataParallel's ``module.`` prefix removed, and the file's top-level entries that are plain
    numbers (epoch, best top-1); ``contents``: what :func:`read_file` already read from it."""
    obj = read_file(path) if contents is None else contents
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if checkpoint_role(obj.get("meta")) is not None:
        raise ValueError(f"{path} is already a cmim-dense checkpoint: use it as it is")
    extras = {key: number for key, number in ((key, plain_number(value)) for key, value in obj.items())
              if number is not None}
    state = obj.get("state_dict", obj)
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors (looked at the file and its 'state_dict')")
    return {key.removeprefix("module."): value for key, value in state.items()}, extras


def infer_arch(state: State, layout: SourceLayout, source: str) -> str:
    """resnet18 or resnet34 from the blocks per stage, refusing other depths and CIFAR stems in one line."""
    if any(key.endswith(".conv3.weight") for key in state):
        raise ValueError(f"{source} is a bottleneck ResNet (50/101/152); only ResNet-18/34 convert")
    stem = state.get("conv1.weight")
    if stem is None:
        raise ValueError(f"{source} has no conv1.weight: not a ResNet state dict")
    if stem.shape[-1] != 7:
        raise ValueError(f"{source} has a {stem.shape[-1]}x{stem.shape[-1]} stem (a CIFAR network); "
                         "only the ImageNet ResNet-18/34 layouts convert")
    blocks = blocks_per_stage(state)
    if blocks not in layout.depths:
        valid = ", ".join(f"{arch} {list(depth)}" for depth, arch in layout.depths.items())
        raise ValueError(f"{source} has {list(blocks)} blocks per stage; a {layout.name} file of {valid} was expected")
    return layout.depths[blocks]


def count_zero_weights(model: BinaryResNet) -> tuple[int, int]:
    """(exactly-zero, all) values that the weight binarizers' sign receives (the latent weight for
    Bi-Real/ReActNet, the centred one for IR-Net, RBNN's rotated w3): torch.sign maps 0 to 0 where
    this package's sign gives +1, the one deliberate difference from the official forward."""
    zeros = total = 0

    def count(module: torch.nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal zeros, total
        zeros += int((inputs[0] == 0).sum())
        total += inputs[0].numel()

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BinaryConv2d) and module.binary_weights:
                handle = module.weight_binarizer.sign.register_forward_hook(count)
                module.effective_weight()
                handle.remove()
    return zeros, total


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_checkpoint(source: str | Path, fmt: str, real_weights: bool = False, contents: Any = None
                         ) -> tuple[dict[str, Any], Conversion]:
    """The published checkpoint ``source`` of layout ``fmt`` as a backbone checkpoint in memory:
    the state dict renamed, loaded strictly into ``create_model(arch, method)``, with a meta
    describing it (method, arch, classes, ImageNet normalisation, source file and its SHA-256, the
    top-1 the file reports), and what the conversion found.

    ``real_weights``: a ReActNet step-1 file (binary activations, real-valued weights: the same
    names and shapes as step 2, so it must be said); ``contents``: the file as :func:`read_file` already
    read it (it is then only read again for its SHA-256)."""
    source = Path(source)
    layout = LAYOUTS.get(fmt)
    state, extras = read_source(source, contents)
    found = detect_layout(state)
    compatible = {layout.name} | ({"torchvision", "timm"} if layout.method == "fp" else set())
    if found is not None and found not in compatible:
        alias = "torchvision or timm" if found == "torchvision" else found
        raise ValueError(f"{source} is laid out as {alias}, not {fmt}: use --format {found}")
    arch = infer_arch(state, layout, str(source))
    if "fc.weight" not in state:
        raise ValueError(f"{source} has no fc.weight: a classifier backbone checkpoint was expected")
    num_classes = state["fc.weight"].shape[0]
    model = create_model(arch, layout.method, num_classes=num_classes, real_weights=real_weights)
    load_strict(model, layout.rename(state), f"{source} ({fmt})")
    zeros, total = count_zero_weights(model.eval())  # eval: RBNN re-fits its rotations on a training forward
    reported = next((float(extras[key]) for key in REPORTED_TOP1_KEYS if key in extras), None)
    meta = {
        "method": layout.method,
        "arch": arch,
        "num_classes": num_classes,
        "top1": None if reported is None else reported / 100.0,
        "data": "ImageNet (converted; not evaluated here)",
        "image_size": 224,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "real_weights": real_weights,
        "recipe": model.recipe.to_dict(),
        "converted_from": {"format": fmt, "file": source.name, "sha256": file_digest(source), **extras},
    }
    return {"model": model.state_dict(), "meta": meta}, Conversion(source, meta, zeros, total)


def convert_checkpoint(source: str | Path, fmt: str, out: str | Path, real_weights: bool = False) -> Conversion:
    """:func:`converted_checkpoint` written atomically to ``out``."""
    checkpoint, conversion = converted_checkpoint(source, fmt, real_weights)
    save_atomic(checkpoint, out)  # creates out's folder
    return dataclasses.replace(conversion, path=Path(out))


def backbone_checkpoint(path: str | Path) -> dict[str, Any]:
    """A backbone checkpoint: one of this package's (pretrained or converted), or a torchvision or
    timm ResNet-18/34 state dict converted in memory (the FP backbone from ImageNet weights)."""
    obj = read_file(path)  # read once: the checks and the conversion below take what it read
    if isinstance(obj, dict) and checkpoint_role(obj.get("meta")) is not None:
        return checkpoint_as(obj, "backbone", path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    found = detect_layout({key.removeprefix("module."): value for key, value in state.items()}) \
        if isinstance(state, dict) else None
    if found == "torchvision":
        return converted_checkpoint(path, "torchvision", contents=obj)[0]
    hint = f"convert it first: python -m cmim_dense.convert --format {found} {path} --out BACKBONE.pt" if found \
        else "expected a checkpoint of pretrain/run.py, one of python -m cmim_dense.convert, or a torchvision/timm ResNet"
    raise ValueError(f"{path} is not a backbone checkpoint; {hint}")


def load_backbone(path: str | Path) -> BinaryResNet:
    """The classifier network of any backbone checkpoint (pretrain/run.py's best.pt / last.pt, a
    published file converted by ``python -m cmim_dense.convert``, or a torchvision/timm ResNet
    state dict), in eval mode: ``model(x)`` gives logits, ``model.forward_features(x)`` the five
    feature maps of a dense head."""
    return model_from_checkpoint(backbone_checkpoint(path), str(path)).eval()
