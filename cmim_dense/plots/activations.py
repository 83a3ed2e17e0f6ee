"""Activations of a pretrained backbone on held-out images, and their class-sorted correlations.

Sites: ``layer1``..``layer4`` take the binary activation a_B = sign(a_F) at the input of the
last binary conv of that stage (the CMIM ``stages`` taps); any name from ``tap_sites()``
selects that conv's input; ``pooled`` takes the real-valued pooled features the classifier sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from ..models import checkpoint_with_data, collect_taps, model_from_checkpoint, select_sites
from ..models.resnet import BinaryResNet

POOLED = "pooled"
STAGE_SITES = ("layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class Activations:
    """Flattened activations (n, d) of ``n`` images, their classes, and where they came from."""

    features: Tensor
    labels: Tensor
    class_names: tuple[str, ...]
    site: str
    method: str
    source: str
    top1: float | None = None  # the checkpoint's validation top-1, a fraction


def resolve_site(model: BinaryResNet, site: str) -> str:
    """``layerK`` -> the tap name of stage K's last binary conv; a tap name or ``pooled`` as is."""
    if site == POOLED:
        return site
    if site in STAGE_SITES:
        return select_sites(model, "stages")[STAGE_SITES.index(site)]
    return select_sites(model, [site])[0]


@torch.no_grad()
def extract_activations(checkpoint_path: str, site: str = "layer4", samples: int = 500, data: str | None = None,
                        batch_size: int = 100) -> Activations:
    """Run a pretraining checkpoint on ``samples`` validation images of ``data`` (default: the data
    it was trained on; the built-in synthetic set is generated with exactly ``samples`` validation
    images, others are sub-sampled evenly) and return the activations at ``site``."""
    if samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}")
    checkpoint, dataset = checkpoint_with_data(checkpoint_path, data, 4 * samples)
    model = model_from_checkpoint(checkpoint, str(checkpoint_path)).eval()
    name = resolve_site(model, site)
    count = min(samples, len(dataset.val))
    indices = torch.linspace(0, len(dataset.val) - 1, count).round().long().unique().tolist()
    loader = DataLoader(Subset(dataset.val, indices), batch_size=batch_size)
    features, labels = [], []
    for images, targets in loader:
        if name == POOLED:
            features.append(model.penultimate(model.forward_features(images)[-1]))
        else:
            with collect_taps(model, [name]) as taps:
                model(images)
            features.append(taps[name].binary.flatten(1))
        labels.append(targets)
    names = tuple(getattr(dataset.val, "classes", None) or (str(k) for k in range(dataset.num_classes)))
    label = "pooled features" if name == POOLED else site if site == name else f"{site} ({name})"
    meta = checkpoint["meta"]
    return Activations(torch.cat(features), torch.cat(labels), names, label, meta["method"], str(checkpoint_path),
                       meta.get("top1"))


def class_sorted_correlation(features: Tensor, labels: Tensor, kind: str = "pearson") -> tuple[Tensor, Tensor]:
    """The (n, n) correlation of the samples sorted by class (stable), and the sorted labels.

    ``pearson`` centres each sample's activation vector before the cosine; ``cosine`` does not.
    A constant vector (zero norm after centring) correlates 0 with everything, 1 with itself.
    """
    if kind not in ("pearson", "cosine"):
        raise ValueError(f"correlation kind must be pearson or cosine, got {kind!r}")
    order = torch.sort(labels, stable=True).indices
    x = features[order].to(torch.float64).flatten(1)
    if kind == "pearson":
        x = x - x.mean(dim=1, keepdim=True)
    norms = x.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, x / norms.clamp_min(1e-300), torch.zeros_like(x))
    correlation = unit @ unit.T
    correlation.fill_diagonal_(1.0)
    return correlation.clamp(-1.0, 1.0), labels[order]
