"""What a training run saves besides its weights, and how it checks what it continues from:
resumable state, the settings ``--resume`` must match, optimizer state, divergence errors."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..checkpoint_io import CHECKPOINT_ROLES, checkpoint_role, load_checkpoint


def resumable_state(out: str | Path, resume: bool, role: str) -> dict[str, Any] | None:
    """The checkpoint a run in ``out`` continues from: ``out/last.pt`` with ``--resume``, None
    when there is none.  A run already in ``out`` is never overwritten without ``--resume``, and
    one that writes ``role`` (a key of :data:`CHECKPOINT_ROLES`) continues only a file of it."""
    last = Path(out) / "last.pt"
    if not last.exists():
        return None
    if not resume:
        raise ValueError(f"{last} exists; add --resume to continue that run or choose another --out")
    state = load_checkpoint(last)
    found = checkpoint_role(state["meta"])
    if found != role:
        what = CHECKPOINT_ROLES[found][0] if found else "a checkpoint whose meta names neither a task nor an arch"
        raise ValueError(f"--resume found {last}, {what}, where this command writes {CHECKPOINT_ROLES[role][0]}; "
                         "choose another --out")
    return state


def volatile(default: Any = dataclasses.MISSING) -> Any:
    """A configuration field that does not define the run's result (where it writes, how it reports,
    how it is run): :func:`result_settings` and a run's ``config.json`` leave it out."""
    return dataclasses.field(default=default, metadata={"volatile": True})


def result_fields(config_class: type) -> set[str]:
    """The names of a configuration dataclass's fields that define the run's result."""
    return {f.name for f in dataclasses.fields(config_class) if not f.metadata.get("volatile")}


C = TypeVar("C")


def build_config(config_class: type[C], values: dict[str, Any]) -> C:
    """``config_class`` (a configuration dataclass) from flag, YAML or JSON values: lists become the
    tuples a field declares, numbers the field's int or float (YAML 1.1 reads 1e-3 as text); fields
    not given take the dataclass's defaults, the only defaults there are.  Unknown names: one line."""
    hints = typing.get_type_hints(config_class)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown settings {', '.join(unknown)}; valid: {', '.join(sorted(hints))}")
    converted = {}
    for key, value in values.items():
        try:
            converted[key] = _as_declared(hints[key], value)
        except ValueError:
            raise ValueError(f"--{key.replace('_', '-')} must be a number, got {value!r}") from None
    return config_class(**converted)


def _as_declared(hint: Any, value: Any) -> Any:
    """``value`` as the type ``hint`` declares, where a JSON or YAML value may differ from it."""
    if value is None or isinstance(value, bool):
        return value
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)]
        if len(kinds) != 1:
            return value
        hint = kinds[0]
    kind = typing.get_origin(hint) or hint
    if kind is tuple and isinstance(value, list):
        return tuple(value)
    if kind in (int, float) and isinstance(value, (int, float, str)):
        return kind(value)
    return value


def result_settings(config: Any) -> dict[str, Any]:
    """A configuration dataclass's values that define the run's result (what ``--resume`` must
    match): every field not declared :func:`volatile`, tuples as lists (as JSON reads them back)."""
    values = dataclasses.asdict(config)
    kept = result_fields(type(config))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if k in kept}


def require_same_settings(saved: dict[str, Any], current: dict[str, Any], path: str | Path) -> None:
    """``--resume`` continues only the run that wrote ``path``: every result-defining setting must match."""
    changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in current.items() if saved.get(k) != v]
    if changed:
        raise ValueError(f"--resume found {path} from a run with other settings ({'; '.join(changed)}); "
                         "rerun the original command or choose another --out")


def optimization_state(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any) -> dict[str, Any]:
    """What a checkpoint needs besides the model to continue training: optimizer, lr schedule, AMP scaler."""
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {}}


def restore_optimization(state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any) -> None:
    """The inverse of :func:`optimization_state` (a run without AMP ignores a saved scaler, and vice versa)."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])


def all_finite(model: torch.nn.Module) -> bool:
    """Every floating-point parameter and buffer of ``model`` is finite (checked before a save)."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def divergence(event: str, out: Path, continue_with: str) -> FloatingPointError:
    """The one-line error of a diverged run.  Runs save only finite states (:func:`all_finite`),
    so ``out/last.pt``, when there is one, is the last finite one; ``continue_with`` says how to
    go on from it (``{last}`` is replaced by its path)."""
    last = out / "last.pt"
    if not last.is_file():
        return FloatingPointError(f"{event}; nothing was saved before it: rerun with a lower --lr")
    return FloatingPointError(f"{event}; nothing of it was saved and {last} is the last finite state: "
                              + continue_with.format(last=last))
