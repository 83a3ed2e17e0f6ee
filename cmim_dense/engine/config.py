"""Pretraining configuration: every flag resolved against the method's recipe."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml

from ..cli import first_line
from ..data.cifar import find_cifar
from ..methods import CMIM_CHOICES, CMIM_FLAGS, CMIMConfig, Recipe, get_recipe, has_cmim
from ..losses import OBJECTIVES
from ..models.resnet import ARCHS
from .optim import OPTIMIZERS, SCHEDULES
from .run_state import build_config, result_fields, result_settings, volatile

SYNTHETIC_DEFAULTS = {"epochs": 8, "batch_size": 64, "image_size": 48, "cmim_nce_n": 256}


@dataclass(frozen=True)
class CMIMSettings:
    """The CMIM loss of one run: the paper's hyper-parameters (:class:`~cmim_dense.methods.CMIMConfig`,
    Eq. 13-14) and how this toolkit computes it: the projection (``embed``), the paper's loss or
    the official code's (``variant``), the memory bank's dtype, the critic's normaliser and
    where negatives come from (``other-class``: other classes only, as the official code;
    ``any``: label-free, for unlabeled data)."""

    lam: float
    beta: float
    tau: float
    n_nce: int
    layers: str
    embed: str = CMIM_CHOICES["embed"][0]  # each option's default is its first choice
    variant: str = CMIM_CHOICES["variant"][0]
    bank_dtype: str = CMIM_CHOICES["bank_dtype"][0]
    normalizer: str = CMIM_CHOICES["normalizer"][0]
    negatives: str = CMIM_CHOICES["negatives"][0]

    @property
    def loss_config(self) -> CMIMConfig:
        return CMIMConfig(self.lam, self.beta, self.tau, self.n_nce, self.layers)


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """A fully resolved pretraining run (every value explicit, stored in the checkpoints)."""

    method: str
    arch: str = "resnet18"
    data: str = "synthetic"
    out: str = volatile()
    epochs: int
    batch_size: int
    image_size: int
    lr: float
    optimizer: str
    weight_decay: float
    binary_weight_decay: float | None
    decay_scope: str
    second_stage_weight_decay: float | None
    schedule: str
    warmup_epochs: float
    milestones: tuple[float, ...]
    label_smoothing: float
    cmim: CMIMSettings | None = None
    teacher: str | None = None
    stage: int = 0
    init_from: str | None = volatile(None)
    amp: bool = False
    channels_last: bool = False
    compile: bool = volatile(False)  # torch.compile the training network: the same run, compiled or not
    synthetic_samples: int = 2000
    synthetic_val_samples: int | None = None  # None: a quarter of synthetic_samples
    seed: int = 0
    workers: int = volatile(0)
    max_steps: int | None = None
    eval_every: int = 1  # validate every N epochs and after the last
    save_every: int = volatile(1)  # write last.pt every N epochs and after the last
    progress_bar: bool = volatile(True)
    log_every: float = volatile(30.0)  # seconds between progress lines where no bar is drawn; 0: none
    resume: bool = volatile(False)

    def settings(self) -> dict[str, Any]:
        """The values that define the run's result (what ``--resume`` must match; ``config.json``)."""
        return result_settings(self)

    @cached_property
    def recipe(self) -> Recipe:
        """The method's recipe with this run's CMIM settings: resolved once per configuration,
        and what the model is built from (so a checkpoint's recipe records the lambda used)."""
        return get_recipe(self.method, self.cmim.loss_config if self.cmim else None)


def resolve_config(method: str, overrides: dict[str, Any]) -> PretrainConfig:
    """Fill every unset value from the method's recipe (``overrides``: flag values, None for unset).

    The recipe's schedule shape is kept when the budget changes: warm-up and step
    milestones are scaled by epochs / recipe epochs, and the learning rate by
    batch size / recipe batch size (linear scaling rule) unless ``lr`` is given.
    Everything the recipe does not decide takes :class:`PretrainConfig`'s defaults.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    stray = sorted(key for key in given if key in CMIM_FLAGS)
    if stray and not has_cmim(method):
        flags = ", ".join("--" + key.replace("_", "-") for key in stray)
        with_cmim = f"use --method {method}+cmim, or " if get_recipe(method).is_binary else ""
        raise ValueError(f"{flags} only apply to a method with CMIM: {with_cmim}drop them")
    values = {FLAG_FIELDS.get(key, key): value for key, value in given.items() if key not in CMIM_FLAGS}
    data = values.setdefault("data", PretrainConfig.data)
    samples = int(values.get("synthetic_samples", PretrainConfig.synthetic_samples))
    recipe = get_recipe(method, cmim_config(given, data, samples) if has_cmim(method) else None)
    config = build_config(PretrainConfig, {**recipe_schedule(recipe, values), **values, "method": recipe.name,
                                           "cmim": cmim_settings(recipe, given)})
    validate(config)
    return config


def recipe_schedule(recipe: Recipe, given: dict[str, Any]) -> dict[str, Any]:
    """The values a run takes from its method's recipe, for its ``given`` data and budget."""
    train, data = recipe.training, given["data"]
    defaults = SYNTHETIC_DEFAULTS if data == "synthetic" else {
        "epochs": train.epochs, "batch_size": train.batch_size, "image_size": 32 if find_cifar(data) else 224}
    epochs, batch_size = int(given.get("epochs", defaults["epochs"])), int(given.get("batch_size", defaults["batch_size"]))
    budget = epochs / train.epochs
    decay = "weight_decay" not in given  # the recipe's weight decay comes with its scope and per-stage values
    return {"out": f"runs/pretrain/{recipe.name}", "epochs": epochs, "batch_size": batch_size,
            "image_size": defaults["image_size"], "lr": train.lr * batch_size / train.batch_size,
            "optimizer": train.optimizer, "weight_decay": train.weight_decay,
            "binary_weight_decay": train.binary_weight_decay if decay else None,
            "decay_scope": train.decay_scope if decay else "all",
            "second_stage_weight_decay": train.second_stage_weight_decay if decay else None,
            "schedule": train.schedule, "warmup_epochs": train.warmup_epochs * budget,
            "milestones": tuple(m * budget for m in train.milestones), "label_smoothing": train.label_smoothing,
            **({} if data == "synthetic" else {"workers": min(4, os.cpu_count() or 1)})}


def cmim_settings(recipe: Recipe, given: dict[str, Any]) -> CMIMSettings | None:
    """The run's CMIM settings: the recipe's hyper-parameters and the ``--cmim-*`` choices given."""
    if recipe.cmim is None:
        return None
    choices = {CMIM_FLAGS[flag]: value for flag, value in given.items() if CMIM_FLAGS.get(flag) in CMIM_CHOICES}
    return CMIMSettings(**dataclasses.asdict(recipe.cmim), **choices)


def read_config_file(path: str | Path, allowed: set[str]) -> dict[str, Any]:
    """The mapping in a YAML file, or a JSON one (``.json``: a run's config.json, whose numbers such
    as 1e-05 YAML 1.1 would read as text), keys with - or _; keys outside ``allowed`` are errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        values = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text()) or {}
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML ({first_line(error)})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of flag names to values")
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown keys {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}")
    return values


# the flags whose PretrainConfig field has another name (the rest are spelled alike; CMIM's: CMIM_FLAGS)
FLAG_FIELDS = {"warmup": "warmup_epochs"}


def pretrain_config(flags: dict[str, Any], config_file: str | Path | None = None) -> PretrainConfig:
    """The run of ``pretrain/run.py``: its ``flags`` (None: not given) over ``config_file``, either a
    YAML of flag values (``configs/``), resolved against the method's recipe, or a run's own
    ``config.json``, which recreates that run (a given flag then replaces its value one for one)."""
    given = {key: value for key, value in flags.items() if value is not None}
    if config_file is None:
        return resolve_config(given.pop("method", "irnet"), given)
    recorded = result_fields(PretrainConfig)
    values = read_config_file(config_file, set(flags) | recorded)
    if not set(values) - set(flags):  # flag values only: a YAML config
        values.update(given)
        return resolve_config(values.pop("method", "irnet"), values)
    if set(values) != recorded:
        raise ValueError(f"{config_file} is neither a YAML of flags nor a run's config.json as written (it lacks "
                         f"{', '.join(sorted(recorded - set(values))) or 'nothing'} and mixes in "
                         f"{', '.join(sorted(set(values) - recorded)) or 'nothing'})")
    return config_from_run_settings(values, given, Path(config_file))


def config_from_run_settings(settings: dict[str, Any], flags: dict[str, Any], path: Path) -> PretrainConfig:
    """The configuration a run's ``config.json`` (:meth:`PretrainConfig.settings`) records, with
    ``flags`` replacing its values.  A stage's file of a two-stage recipe recreates the whole run from
    the first stage's values (the second stage's are derived from them)."""
    if flags.get("method", settings["method"]) != settings["method"]:
        raise ValueError(f"--method {flags['method']} differs from the run's {settings['method']} in {path}; "
                         "a run's config.json recreates its own method")
    if settings["stage"] == 2:
        first = path.parent / "stage1" / "config.json"
        if not first.is_file():
            raise ValueError(f"{path} is the second stage of a two-stage run and {first} is missing; recreate the "
                             "run from the first stage's config.json")
        settings = read_config_file(first, set(settings))
    values = dict(settings)
    cmim = values.pop("cmim")
    cmim_changes = {CMIM_FLAGS[key]: value for key, value in flags.items() if key in CMIM_FLAGS}
    if cmim_changes and cmim is None:
        raise ValueError(f"--cmim flags only apply to a method with CMIM; {path} records {settings['method']}")
    replaced = {FLAG_FIELDS.get(key, key): value for key, value in flags.items()
                if key not in CMIM_FLAGS and key != "method"}
    config = build_config(PretrainConfig, {**values, "stage": 0, "out": f"runs/pretrain/{values['method']}", **replaced,
                                           "cmim": None if cmim is None else CMIMSettings(**{**cmim, **cmim_changes})})
    validate(config)
    return config


def cmim_config(given: dict[str, Any], data: str, synthetic_samples: int) -> CMIMConfig:
    """CMIM hyper-parameters from the ``cmim_*`` flags given, :class:`CMIMConfig`'s defaults (the paper's)
    for the rest.  The built-in data defaults to 256 negatives or a quarter of its training samples,
    whichever is fewer (N well below M, as the paper's 16,384 of ImageNet's 1.28M and the official
    code's 4,096 of CIFAR's 50,000)."""
    fields = {field.name for field in dataclasses.fields(CMIMConfig)}
    values = {CMIM_FLAGS[flag]: value for flag, value in given.items() if CMIM_FLAGS.get(flag) in fields}
    if data == "synthetic":
        values.setdefault("n_nce", min(SYNTHETIC_DEFAULTS["cmim_nce_n"], synthetic_samples // 4))
    return build_config(CMIMConfig, values)


FLOAT32_MAX = float(torch.finfo(torch.float32).max)
SEED_RANGE = 2**32  # numpy's and the data order's seeds: 0 .. 2**32 - 1


def require_finite(values: dict[str, Any], flags: dict[str, str] | None = None) -> None:
    """A one-line error for the first number among ``values`` (field names as keys; ``flags`` maps a
    field to its flag where they differ) that is NaN, infinite, or beyond float32 (the optimizers
    apply it to float32 tensors: --lr 1e39 overflowed there)."""
    for name, value in values.items():
        if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
            flag = (flags or {}).get(name, name).replace('_', '-')
            raise ValueError(f"--{flag} must be a finite number of at most {FLOAT32_MAX:.3g} in size, got {value}")


def require_seed(seed: int) -> None:
    if not 0 <= seed < SEED_RANGE:
        raise ValueError(f"--seed must be between 0 and {SEED_RANGE - 1}, got {seed}")


def validate(config: PretrainConfig) -> None:
    """One-line errors for values out of range and for objectives not available here."""
    recipe = config.recipe
    require_finite(dataclasses.asdict(config), {"warmup_epochs": "warmup"})  # CMIMConfig checked the CMIM values
    require_seed(config.seed)
    checks = [
        (config.epochs >= 1, f"--epochs must be >= 1, got {config.epochs}"),
        (config.batch_size >= 2, f"--batch-size must be >= 2 (BatchNorm), got {config.batch_size}"),
        (config.image_size >= 16, f"--image-size must be >= 16, got {config.image_size}"),
        (config.lr > 0, f"--lr must be > 0, got {config.lr}"),
        (config.weight_decay >= 0, f"--weight-decay must be >= 0, got {config.weight_decay}"),
        (config.warmup_epochs >= 0, f"--warmup must be >= 0, got {config.warmup_epochs}"),
        (config.workers >= 0, f"--workers must be >= 0, got {config.workers}"),
        (config.synthetic_samples >= 20, f"--synthetic-samples must be >= 20, got {config.synthetic_samples}"),
        (config.synthetic_val_samples is None or config.synthetic_val_samples >= 5,
         f"--synthetic-val-samples must be >= 5, got {config.synthetic_val_samples}"),
        (config.max_steps is None or config.max_steps >= 1, f"--max-steps must be >= 1, got {config.max_steps}"),
        (config.eval_every >= 1, f"--eval-every must be >= 1, got {config.eval_every}"),
        (config.save_every >= 1, f"--save-every must be >= 1, got {config.save_every}"),
        (config.log_every >= 0, f"--log-every must be >= 0 seconds, got {config.log_every}"),
        (config.arch in ARCHS, f"--arch must be one of {', '.join(ARCHS)}, got {config.arch!r}"),
        (config.optimizer in OPTIMIZERS,
         f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}"),
        (config.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {config.schedule!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if config.amp and not torch.cuda.is_available():
        raise ValueError("--amp needs a CUDA device (binary training on CPU runs in float32); drop --amp")
    if recipe.teacher == "required" and config.teacher is None:
        raise ValueError(
            f"method {recipe.name!r} trains from a full-precision teacher ({recipe.training.loss} loss): pass "
            "--teacher PATH (a torchvision/timm ResNet state dict, or last.pt of pretrain/run.py --method fp)"
        )
    OBJECTIVES.get(recipe.training.loss)  # a recipe naming an unregistered objective fails here, in one line
    cmim = config.cmim
    if cmim is not None:
        for option, valid in CMIM_CHOICES.items():
            value = getattr(cmim, option)
            if value not in valid:
                raise ValueError(f"--cmim-{option.replace('_', '-')} must be one of {', '.join(valid)}, got {value!r}")
        if cmim.variant == "code" and config.teacher is None:
            raise ValueError("--cmim-variant code contrasts with a full-precision network: pass --teacher PATH")
