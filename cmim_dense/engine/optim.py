"""Optimizers and learning-rate schedules from a recipe's training defaults."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..binary import BinaryConv2d
from ..registry import Registry


def parameter_groups(model: nn.Module, weight_decay: float, binary_weight_decay: float | None,
                     decay_scope: str = "all") -> list[dict]:
    """Parameter groups with their weight decay.

    Latent binary weights get ``binary_weight_decay`` (e.g. 0 for Bi-Real, whose decay would
    flip signs; None: ``weight_decay``).  The other parameters get ``weight_decay`` when
    ``decay_scope`` is ``all``; with ``conv`` only 4-D ones do (convolution kernels and
    per-channel (1, C, 1, 1) shifts: ReActNet's rule), BatchNorm, PReLU slopes, linear
    layers and biases get none.  Empty groups are left out.
    """
    if decay_scope not in ("all", "conv"):
        raise ValueError(f"unknown weight-decay scope {decay_scope!r}; valid: all, conv")
    binary_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, BinaryConv2d) and m.binary_weights
    }
    trained = [p for p in model.parameters() if p.requires_grad]
    binary = [p for p in trained if id(p) in binary_ids]
    decayed = [p for p in trained if id(p) not in binary_ids and (decay_scope == "all" or p.dim() == 4)]
    undecayed = [p for p in trained if id(p) not in binary_ids and not (decay_scope == "all" or p.dim() == 4)]
    groups = [
        {"params": binary, "weight_decay": weight_decay if binary_weight_decay is None else binary_weight_decay},
        {"params": decayed, "weight_decay": weight_decay},
        {"params": undecayed, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    binary_weight_decay: float | None = None,
    momentum: float = 0.9,
    nesterov: bool = False,
    decay_scope: str = "all",
) -> torch.optim.Optimizer:
    build = OPTIMIZERS.get(name)
    return build(parameter_groups(model, weight_decay, binary_weight_decay, decay_scope), lr, momentum, nesterov)


OptimizerBuilder = Callable[[list[dict], float, float, bool], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerBuilder] = Registry("optimizer")
OPTIMIZERS.add("sgd", lambda groups, lr, momentum, nesterov: torch.optim.SGD(groups, lr=lr, momentum=momentum,
                                                                             nesterov=nesterov))
OPTIMIZERS.add("adam", lambda groups, lr, momentum, nesterov: torch.optim.Adam(groups, lr=lr))  # its own betas


def lr_factor(step: int, total: int, schedule: str, warmup: int = 0, milestones: tuple[int, ...] = ()) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` of ``total``.

    Linear warm-up over ``warmup`` steps, then ``cos`` (cosine to 0), ``linear`` (to 0) or
    ``step`` (x0.1 at each milestone, in steps).
    """
    decay = SCHEDULES.get(schedule)
    if step < warmup:
        return (step + 1) / warmup
    done = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return decay(step, done, milestones)


# schedule name -> factor(step, fraction of the post-warm-up steps done, milestones in steps)
SCHEDULES: Registry[Callable[[int, float, tuple[int, ...]], float]] = Registry("schedule")
SCHEDULES.add("cos", lambda step, done, milestones: 0.5 * (1.0 + math.cos(math.pi * done)))
SCHEDULES.add("linear", lambda step, done, milestones: 1.0 - done)
SCHEDULES.add("step", lambda step, done, milestones: 0.1 ** sum(step >= m for m in milestones))


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Zero the gradients, backpropagate ``loss`` (scaled under AMP) and take one optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def clip_latent_weights(model: nn.Module, bound: float) -> None:
    """BNN's constraint: after each step, clamp latent binary weights to [-bound, bound]."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BinaryConv2d) and module.binary_weights:
                module.weight.clamp_(-bound, bound)
