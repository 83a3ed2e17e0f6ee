"""CMIM: Contrastive Mutual Information Maximization (Shang et al., ECCV 2022, Eq. 9-14)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..binary import binary_sign
from ..methods.recipe import CMIM_CHOICES, CMIMConfig
from ..models.taps import Tap
from .memory import MemoryBank, all_reduce_mean


def critic_logits(a_f: Tensor, tau: float) -> Tensor:
    """The N x N matrix <sgn(a_F^i), a_F^j> / tau for latent activations ``a_f`` of shape (N, D).

    Eq. 12: with a_B = sgn(a_F), the critic's exponent for the pair (i, j) is the inner
    product of sample i's binary activation with sample j's latent one; on the diagonal it
    equals ||a_F^i||_1 / tau (Eq. 11).
    """
    return binary_sign(a_f) @ a_f.T / tau


def nce_loss(positive: Tensor, negatives: Tensor, noise: float, excluded: Tensor | None = None) -> Tensor:
    """Negative of Eq. 13, averaged over anchors.

    With the critic h(s) = e^s / (e^s + N/M) (Eq. 10) and ``noise`` = N/M:
    loss = -mean_i [ log h(s_ii) + N E_j log(1 - h(s_ij)) ],
    computed in log space (``positive``: (B,), ``negatives``: (B, N) critic exponents).  The
    expectation over negatives is their mean, over the pairs ``excluded`` (B, N) leaves in when
    given (shared draws that hit the anchor or its class), so N E_j is the plain sum otherwise.
    """
    log_noise = math.log(noise)
    noise_t = positive.new_tensor(log_noise)
    log_h_pos = positive - torch.logaddexp(positive, noise_t)
    log_not_h_neg = log_noise - torch.logaddexp(negatives, noise_t)
    if excluded is None:
        negative_term = log_not_h_neg.sum(dim=1)
    else:
        kept = (~excluded).sum(dim=1).clamp(min=1)
        negative_term = log_not_h_neg.masked_fill(excluded, 0.0).sum(dim=1) * (negatives.shape[1] / kept)
    return -(log_h_pos + negative_term).mean()


def crd_log_z(scores: Tensor, dataset_size: int) -> Tensor:
    """log Z for CRD's normaliser Z = M mean(exp(s)) over a batch of critic exponents (DDP-averaged);
    entries of -inf (pairs left out) are not counted."""
    flat = scores.detach().flatten()
    flat = flat[flat > float("-inf")]
    return all_reduce_mean(torch.logsumexp(flat, 0) - math.log(flat.numel()) + math.log(dataset_size))


def running_log_mean(log_old: Tensor, log_new: Tensor, momentum: float) -> Tensor:
    """log(m e^old + (1 - m) e^new): a running mean of a positive quantity kept in log space."""
    return torch.logaddexp(log_old + math.log(momentum), log_new + math.log1p(-momentum)) if momentum > 0 else log_new


def critic(scores: Tensor, noise: float) -> Tensor:
    """Eq. 10's h(s) = e^s / (e^s + N/M) for critic exponents ``scores`` (``noise`` = N/M)."""
    return torch.sigmoid(scores - math.log(noise))


def layer_weights(num_layers: int, beta: float) -> list[float]:
    """Eq. 14's weights 1 / beta^(K-1-k) for the tapped layers k = 1..K, shallowest first: the
    deepest layer (k = K) weighs beta, the one before it 1 (K = 4, beta = 2: 1/4, 1/2, 1, 2)."""
    return [beta ** -(num_layers - 1 - k) for k in range(1, num_layers + 1)]


def unit_rms(x: Tensor) -> Tensor:
    """``x`` divided by its root mean square (one number for the whole batch), differentiated
    as ``x`` itself.

    A positive rescale changes no sign, so a_B and I(a_B; a_F) are the same for a_F and a_F / r:
    the critic then reads a latent of any scale (RBNN's BatchNorm gamma starts at 1e-8), and the
    backward pass skips the rescale, as the taps do for a recipe's own rescale, so the loss
    reaches a_F at a_F's own scale instead of multiplied by 1 / r."""
    scale = x.detach().pow(2).mean().sqrt().clamp_min(torch.finfo(x.dtype).tiny)
    return x + (x / scale - x).detach()


def standardize_over_batch(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Each column of ``x`` (B, C) centred over the batch and scaled to unit variance.

    The overall scale is removed by :func:`unit_rms` (so a uniformly tiny activation is read
    like any other and its gradient is not blown up), then each channel is divided by its
    relative standard deviation, as the official code's BatchNorm1d before its embedding does;
    the centring makes the result blind to a per-channel shift (a BatchNorm's beta).
    """
    relative = unit_rms(x - x.mean(dim=0, keepdim=True))
    return relative * torch.rsqrt(relative.pow(2).mean(dim=0, keepdim=True) + eps)


class EmbeddingHead(nn.Module):
    """The paper's "additional MLP module" for one side of one site: global average pool,
    standardisation over the batch (:func:`standardize_over_batch`, as the official code's
    BatchNorm1d before its embedding), Linear-ReLU-Linear, L2 normalisation."""

    def __init__(self, channels: int, dim: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.mlp(standardize_over_batch(x.float().mean(dim=(2, 3)))), dim=1)


@dataclass
class CMIMOutput:
    """The weighted total (Eq. 14) and, per tapped site, detached diagnostics: ``loss``
    (L_NCE^k before weighting), ``positive`` and ``negative`` (mean critic h of the positive
    pairs and of the negatives, Eq. 10, over both directions) and ``log_z`` (the normaliser,
    mean of the two directions', 0 without one)."""

    total: Tensor
    per_layer: dict[str, dict[str, Tensor]]


class CMIMTerm(Protocol):
    """What pretraining calls, whichever CMIM variant (``--cmim-variant paper`` :class:`CMIMLoss`, ``code``
    :class:`~cmim_dense.losses.cmim_code.OfficialCMIMLoss`): the weighted term and its per-site
    diagnostics from one step's activations at the term's tap ``sites`` (none for the code's variant),
    the student's and the teacher's (None without one) feature maps, and the samples' dataset indices;
    its memory banks are saved and restored with the run."""

    sites: list[str]

    def __call__(self, taps: dict[str, Tap], indices: Tensor, features: list[Tensor],
                 teacher_features: list[Tensor] | None) -> CMIMOutput: ...

    def bank_state(self) -> dict: ...

    def load_bank_state(self, state: dict) -> None: ...


SIDES = ("binary", "latent")  # a_B and a_F: each side's embedding, bank and direction of contrast


class CMIMLoss(nn.Module):
    """lambda * sum_{k=1..K} L_NCE^k / beta^(K-1-k) over the K tapped sites (Eq. 13-14).

    For each site the pairs (a_B^i, a_F^j) are positive for i = j and negative otherwise
    (Eq. 9-13).  As in CRD and the official code, L_NCE^k is computed in both directions and
    averaged (so it keeps Eq. 13's scale): a_B^i anchored against a_F^i and ``n_nce`` other
    samples' a_F from a momentum memory bank of size M = data set size (noise ratio N/M in the
    critic, Eq. 10), and a_F^i against a_B^i and banked a_B.  Negatives are drawn without
    replacement; with ``labels`` (every training sample's class) from other classes only, as in
    the official code, without them label-free.

    ``embed`` chooses the representation the critic compares:

    - ``"mlp"`` (default): per site and side a trained :class:`EmbeddingHead` (pool, standardise
      over the batch, MLP, L2), e_B for a_B and e_F for a_F as CRD and the official code keep one
      per side, critic <e_B(a_B^i), e_F(a_F^j)> / tau.  This is the paper's "additional MLP
      module" and the only choice whose banks fit ImageNet (M = 1.28M).
    - ``"none"``: Eq. 12 on the flattened activations, <a_B^i, a_F^j / r> / tau with r the
      batch's RMS of a_F (:func:`unit_rms`).  The banks then store full activations, so use it
      for small inputs.

    ``normalizer`` divides exp(s) by CRD's Z = M mean(exp(s)), so that a typical negative has
    h ~ 1/(N+1): ``"running"`` (default) a running mean over batches (``z_momentum``, saved
    with the loss), ``"crd"`` the first batch's estimate kept fixed (CRD, the official code),
    ``"none"`` Eq. 10 literally.  docs/methods.md says why the running one is the default.
    """

    def __init__(
        self,
        site_channels: dict[str, int],
        dataset_size: int,
        config: CMIMConfig,
        embed: str = "mlp",
        embed_dim: int = 128,
        momentum: float = 0.5,
        site_dims: dict[str, int] | None = None,
        bank_dtype: torch.dtype = torch.float32,
        normalizer: str = "running",
        z_momentum: float = 0.9,
        shared_negatives: bool = True,
        labels: Tensor | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__()
        for option, value in (("embed", embed), ("normalizer", normalizer)):
            if value not in CMIM_CHOICES[option]:
                raise ValueError(f"CMIM {option} must be one of {', '.join(CMIM_CHOICES[option])}, got {value!r}")
        if not 0.0 <= z_momentum < 1.0:
            raise ValueError(f"CMIM z_momentum must be in [0, 1), got {z_momentum}")
        if embed == "none" and site_dims is None:
            raise ValueError("CMIM embed='none' needs site_dims (flattened activation size per site)")
        self.config, self.embed, self.normalizer, self.z_momentum = config, embed, normalizer, z_momentum
        self.shared_negatives = shared_negatives
        self.sites = list(site_channels)
        self.dataset_size = dataset_size
        self.register_buffer("log_z", torch.full((len(self.sites), len(SIDES)), float("nan")))
        self.weights = layer_weights(len(self.sites), config.beta)
        self.noise = config.n_nce / dataset_size
        self.heads = nn.ModuleDict()
        self.banks: dict[str, dict[str, MemoryBank]] = {}
        for k, (site, channels) in enumerate(site_channels.items()):
            dim = embed_dim if embed == "mlp" else site_dims[site]
            if embed == "mlp":
                self.heads[site.replace(".", "_")] = nn.ModuleDict(
                    {side: EmbeddingHead(channels, embed_dim) for side in SIDES})
            self.banks[site] = {}
            for j, side in enumerate(SIDES):
                bank = MemoryBank(dataset_size, dim, momentum, normalize=embed == "mlp", dtype=bank_dtype,
                                  device=device, seed=seed + len(SIDES) * k + j)
                if labels is not None:
                    bank.set_labels(labels)
                self.banks[site][side] = bank
        allowed = min(bank.max_negatives for banks in self.banks.values() for bank in banks.values())
        if config.n_nce > allowed:
            pool = f"{allowed} samples of other classes" if labels is not None else f"{allowed} other samples"
            raise ValueError(f"--cmim-nce-n {config.n_nce} asks for more negatives than the {pool} that each of the "
                             f"{dataset_size} training samples has: use --cmim-nce-n {allowed // 2} or fewer (well "
                             "below the data set size)")

    def represent(self, site: str, tap: Tap) -> tuple[Tensor, Tensor]:
        """The (binary, latent) representations of one site: (e_B(a_B), e_F(a_F)) or flattened (a_B, a_F / r)."""
        if self.embed == "mlp":
            heads = self.heads[site.replace(".", "_")]
            return heads["binary"](tap.binary), heads["latent"](tap.latent)
        return tap.binary.flatten(1), unit_rms(tap.latent.flatten(1))

    def contrast(self, slot: tuple[int, int], anchor: Tensor, partner: Tensor, bank: MemoryBank,
                 indices: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 13 for one direction: ``anchor`` (B, D) against its own ``partner`` (the positive)
        and ``n_nce`` negatives from ``bank``; the loss and its detached diagnostics.
        ``slot`` (site, side) names the normaliser."""
        positive = (anchor * partner).sum(dim=1).float() / self.config.tau
        if self.shared_negatives:
            negatives, excluded = bank.sample_shared(indices, self.config.n_nce)
            scores = anchor.float() @ negatives.T / self.config.tau
        else:
            negatives, excluded = bank.sample(indices, self.config.n_nce), None
            scores = torch.einsum("bd,bnd->bn", anchor.float(), negatives) / self.config.tau
        log_z = positive.new_zeros(())
        if self.normalizer != "none":
            kept = scores if excluded is None else scores.masked_fill(excluded, float("-inf"))
            log_z = self._log_z(slot, torch.cat([positive[:, None], kept], dim=1))
            positive, scores = positive - log_z, scores - log_z
        loss = nce_loss(positive, scores, self.noise, excluded)
        with torch.no_grad():
            negative_h = critic(scores, self.noise)
            if excluded is not None:  # the pairs left out are left out of the mean too (no host sync)
                negative_h = negative_h.masked_fill(excluded, 0.0).sum() / (~excluded).sum().clamp(min=1)
            stats = {"positive": critic(positive, self.noise).mean(), "negative": negative_h.mean(),
                     "log_z": log_z.detach().clone()}
        return loss, stats

    def forward(self, taps: dict[str, Tap], indices: Tensor, features: list[Tensor] | None = None,
                teacher_features: list[Tensor] | None = None) -> CMIMOutput:
        """Eq. 14 over ``taps`` (:class:`CMIMTerm`'s call; the feature maps are not read)."""
        total = None
        per_layer: dict[str, dict[str, Tensor]] = {}
        for k, (site, weight) in enumerate(zip(self.sites, self.weights)):
            binary, latent = self.represent(site, taps[site])
            banks = self.banks[site]
            loss_b, stats_b = self.contrast((k, 0), binary, latent, banks["latent"], indices)
            loss_f, stats_f = self.contrast((k, 1), latent, binary, banks["binary"], indices)
            banks["binary"].update(indices, binary)
            banks["latent"].update(indices, latent)
            loss = (loss_b + loss_f) / 2
            per_layer[site] = {"loss": loss.detach(), **{key: (stats_b[key] + stats_f[key]) / 2 for key in stats_b}}
            total = weight * loss if total is None else total + weight * loss
        assert total is not None
        return CMIMOutput(self.config.lam * total, per_layer)

    def _log_z(self, slot: tuple[int, int], scores: Tensor) -> Tensor:
        """log Z of a batch's critic exponents (-inf: pairs left out): the first batch's estimate,
        then fixed ("crd") or a running mean ("running")."""
        old = self.log_z[slot]
        if self.normalizer == "running":  # decided on the device: no host synchronisation per step
            batch = crd_log_z(scores, self.dataset_size)
            self.log_z[slot] = torch.where(torch.isnan(old), batch, running_log_mean(old, batch, self.z_momentum))
        elif torch.isnan(old):  # "crd": measured once (with a collective under DDP), then fixed
            self.log_z[slot] = crd_log_z(scores, self.dataset_size)
        return self.log_z[slot]

    def bank_state(self) -> dict[str, dict[str, dict[str, Tensor]]]:
        return {site: {side: bank.state_dict() for side, bank in banks.items()} for site, banks in self.banks.items()}

    def load_bank_state(self, state: dict[str, dict[str, dict[str, Tensor]]]) -> None:
        for site, banks in self.banks.items():
            for side, bank in banks.items():
                bank.load_state_dict(state[site][side])
