"""A method recipe: the declarative description of one binarization method."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..spec import Spec

BlockStyle = Literal["basic", "bireal"]
Activation = Literal["relu", "hardtanh", "identity", "rprelu"]
Downsample = Literal["conv", "avgpool_conv", "binary_conv"]
Init = Literal["kaiming_fan_out", "rbnn", "uniform_small", "pytorch"]
Teacher = Literal["none", "optional", "required"]


@dataclass(frozen=True)
class TrainingDefaults:
    """The training hyper-parameters a method's paper or official code uses on ImageNet.

    ``lr`` is for ``batch_size``; the engine scales it linearly for other batch sizes.
    ``schedule`` is ``cos`` (cosine to 0), ``step`` (x0.1 at ``milestones``, in epochs) or
    ``linear`` (linear decay to 0).  ``loss`` names the training objective: ``ce``
    (cross-entropy, with ``label_smoothing``), ``kd`` (ReActNet's distributional loss from a
    teacher only), ``gdc`` (S2-BNN's guided distribution calibration, no labels) or
    ``ce+rbd`` (DIR-Net's cross-entropy plus representation distillation), with
    ``distill_temperature`` (KD/GDC) and ``distill_weight`` (RBD).  ``two_stage`` trains
    ``epochs`` with real-valued weights, then ``epochs`` more with binary weights initialised
    from the first stage (ReActNet).  ``weight_decay`` applies to every parameter
    (``decay_scope="all"``) or to 4-D ones only (``"conv"``: ReActNet's code);
    ``binary_weight_decay`` (None: ``weight_decay``) to latent binary weights, and
    ``second_stage_weight_decay`` (None: ``weight_decay``) replaces both in a two-stage
    recipe's second stage.
    """

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    binary_weight_decay: float | None = None
    decay_scope: Literal["all", "conv"] = "all"
    second_stage_weight_decay: float | None = None
    epochs: int = 100
    batch_size: int = 256
    schedule: Literal["cos", "step", "linear"] = "cos"
    milestones: tuple[int, ...] = ()
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    loss: str = "ce"  # a name of cmim_dense.losses.OBJECTIVES
    distill_temperature: float = 1.0
    distill_weight: float = 1.0
    two_stage: bool = False
    clip_latent_weights: float | None = None


# how this toolkit computes the CMIM loss (engine.config.CMIMSettings): the values each option
# takes, the default first (here, without torch, for the command line's choices)
CMIM_CHOICES = {"embed": ("mlp", "none"), "variant": ("paper", "code"), "bank_dtype": ("float32", "float16"),
                "normalizer": ("running", "crd", "none"), "negatives": ("other-class", "any")}
# Each CMIM setting's flag (--cmim-lambda; cmim_lambda in a YAML file or a job's settings) -> its field
# in CMIMConfig / CMIMSettings, which checkpoints and config.json record: the one place the two meet.
CMIM_FLAGS = {"cmim_lambda": "lam", "cmim_beta": "beta", "cmim_tau": "tau", "cmim_nce_n": "n_nce",
              "cmim_layers": "layers", **{f"cmim_{option}": option for option in CMIM_CHOICES}}
# the CMIM sweeps of Table 3 and Fig. 4 (pipeline/run.py --sweep NAME) -> the flag each sweeps
CMIM_SWEEPS = {"lambda": "cmim_lambda", "n_nce": "cmim_nce_n"}


@dataclass(frozen=True)
class CMIMConfig:
    """Hyper-parameters of the CMIM loss (Shang et al. 2022, Eq. 13-14).

    ``lam`` (lambda) weighs the loss against the task loss, ``beta`` > 1 down-weights
    earlier layers by beta^(K-1-k), ``tau`` is the critic temperature, ``n_nce`` the number
    of negatives per anchor drawn from the memory bank, ``layers`` the tapped sites
    (``stages``, ``blocks`` or ``all``).  Defaults follow the paper's ImageNet setting
    (lambda 0.8 was best in Table 3; 16,384 negatives); beta and tau are not reported in the
    paper, see docs/methods.md.
    """

    lam: float = 0.8
    beta: float = 2.0
    tau: float = 0.1
    n_nce: int = 16384
    layers: Literal["stages", "blocks", "all"] = "stages"

    def __post_init__(self) -> None:
        if not 0 <= self.lam < math.inf:
            raise ValueError(f"CMIM lambda (--cmim-lambda) must be a finite number >= 0, got {self.lam}")
        if not 1 < self.beta < math.inf:
            raise ValueError(f"CMIM beta (--cmim-beta) must be a finite number > 1 (later layers weigh more), "
                             f"got {self.beta}")
        if not 0 < self.tau < math.inf:
            raise ValueError(f"CMIM tau (--cmim-tau) must be a finite number > 0, got {self.tau}")
        if self.n_nce < 1:
            raise ValueError(f"CMIM n_nce must be >= 1, got {self.n_nce}")


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a method: architecture, binarizers and training defaults.

    Architecture fields:

    - ``block``: ``basic`` = two binary 3x3 convs and one shortcut (Layout A: BNN, XNOR-Net,
      CIFAR RBNN/CMIM); ``bireal`` = a real-valued shortcut around every binary conv
      (Layout B: Bi-Real, ReActNet, ImageNet IR-Net/RBNN).
    - ``input_binarizer`` / ``weight_binarizer``: specs of the binarizers of every binary conv
      (None: real-valued, as in the full-precision baseline).
    - ``block_act``: nonlinearity after each residual add (and between the two convs of a
      ``basic`` block); ``stem_act`` after the stem BN.
    - ``downsample``: shortcut on a shape change: real 1x1 conv with stride (``conv``),
      average pool then real 1x1 conv (``avgpool_conv``), or binary 1x1 conv (``binary_conv``).
    - ``head_norm``: BatchNorm1d before the classifier (IR-Net/RBNN code).
    - ``init``: ``kaiming_fan_out`` (torchvision, IR-Net), ``rbnn`` (kaiming, every BN gamma
      1e-8), ``uniform_small`` (binary latent weights U(0, 1e-3): Bi-Real/ReActNet code) or
      ``pytorch`` (PyTorch's layer defaults).
    - ``pad_value``, ``input_scale``: see :class:`~cmim_dense.binary.BinaryConv2d`.
    - ``arch_overrides``: per-architecture replacements of the fields above, e.g. the CIFAR
      layout of a method whose CIFAR code differs from its ImageNet code.
    """

    name: str
    description: str
    paper: str
    code: str
    block: BlockStyle
    input_binarizer: Spec | None
    weight_binarizer: Spec | None
    block_act: Activation
    stem_act: Activation
    downsample: Downsample
    head_norm: bool = False
    init: Init = "kaiming_fan_out"
    pad_value: float = 0.0
    input_scale: bool = False
    teacher: Teacher = "none"
    training: TrainingDefaults = field(default_factory=TrainingDefaults)
    arch_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    cmim: CMIMConfig | None = None

    def __post_init__(self) -> None:
        binary = self.input_binarizer is not None
        if binary and "relu" in (self.block_act, self.stem_act):
            raise ValueError(
                f"recipe {self.name!r}: a ReLU before a sign makes every binary activation +1; "
                "use hardtanh, identity or rprelu"
            )
        if self.downsample == "binary_conv" and not binary:
            raise ValueError(f"recipe {self.name!r}: a binary downsample needs binary convs")

    @property
    def is_binary(self) -> bool:
        return self.input_binarizer is not None or self.weight_binarizer is not None

    def for_arch(self, arch: str) -> "Recipe":
        """The recipe with ``arch_overrides[arch]`` applied (itself when there are none)."""
        overrides = self.arch_overrides.get(arch)
        return dataclasses.replace(self, **overrides) if overrides else self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, stored in every checkpoint's metadata."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Spec):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value
