"""CMIM: Contrastive Mutual Information Maximization (Shang et al., ECCV 2022, Eq. 9-14)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..binary import binary_sign
from ..methods.recipe import CMIMConfig
from ..models.taps import Tap
from .memory import MemoryBank, all_reduce_mean


def critic_logits(a_f: Tensor, tau: float) -> Tensor:
    """The N x N matrix <sgn(a_F^i), a_F^j> / tau for latent activations ``a_f`` of shape (N, D).

    Eq. 12: with a_B = sgn(a_F), the critic's exponent for the pair (i, j) is the inner
    product of sample i's binary activation with sample j's latent one; on the diagonal it
    equals ||a_F^i||_1 / tau (Eq. 11).
    """
    return binary_sign(a_f) @ a_f.T / tau


def nce_loss(positive: Tensor, negatives: Tensor, noise: float) -> Tensor:
    """Negative of Eq. 13, averaged over anchors.

    With the critic h(s) = e^s / (e^s + N/M) (Eq. 10) and ``noise`` = N/M:
    loss = -mean_i [ log h(s_ii) + sum_{j in negatives} log(1 - h(s_ij)) ],
    computed in log space (``positive``: (B,), ``negatives``: (B, n) critic exponents).
    """
    log_noise = math.log(noise)
    noise_t = positive.new_tensor(log_noise)
    log_h_pos = positive - torch.logaddexp(positive, noise_t)
    log_not_h_neg = log_noise - torch.logaddexp(negatives, noise_t)
    return -(log_h_pos + log_not_h_neg.sum(dim=1)).mean()


def crd_log_z(scores: Tensor, dataset_size: int) -> Tensor:
    """log Z for CRD's normaliser Z = M mean(exp(s)) over a batch of critic exponents (DDP-averaged)."""
    flat = scores.detach().flatten()
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


class EmbeddingHead(nn.Module):
    """The "additional MLP module": global average pool, Linear-ReLU-Linear, L2 normalisation."""

    def __init__(self, channels: int, dim: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.mlp(x.mean(dim=(2, 3))), dim=1)


@dataclass
class CMIMOutput:
    """The weighted total (Eq. 14) and, per tapped site, detached diagnostics: ``loss``
    (L_NCE^k before weighting), ``positive`` and ``negative`` (mean critic h of the positive
    pairs and of the negatives, Eq. 10) and ``log_z`` (the normaliser, 0 without one)."""

    total: Tensor
    per_layer: dict[str, dict[str, Tensor]]


class CMIMLoss(nn.Module):
    """lambda * sum_{k=1..K} L_NCE^k / beta^(K-1-k) over the K tapped sites (Eq. 13-14).

    For each site the anchor is the binary activation a_B^i, the positive the latent a_F^i of
    the same sample, and the negatives ``n_nce`` latents of other samples drawn from a
    momentum memory bank of size M = data set size (noise ratio N/M in the critic, Eq. 10).

    ``embed`` chooses the representation the critic compares:

    - ``"mlp"`` (default): a trained :class:`EmbeddingHead` (pool, MLP, L2) maps a_B and a_F to
      128-d unit vectors, critic <e(a_B^i), e(a_F^j)> / tau.  This is the paper's "additional
      MLP module" and the only choice whose bank fits ImageNet (M = 1.28M).
    - ``"none"``: Eq. 12 exactly, on the flattened activations, <a_B^i, a_F^j> / tau.  The bank
      then stores full activations, so use it for small inputs.

    ``normalizer`` divides exp(s) by CRD's Z = M mean(exp(s)), so that a typical negative has
    h ~ 1/(N+1):

    - ``"running"`` (default): Z is a running mean over batches (``z_momentum``, saved with the
      loss).  The bank starts as random unit vectors and fills with real embeddings, which in
      a young network all point the same way; a Z frozen on the random first batch then puts
      every negative at h ~ 1 and the summed negative term grows without bound (we measured
      the CMIM term rising 50x over 8 epochs on the built-in data).  A running Z follows the
      scores, so the term stays of order log(N).
    - ``"crd"``: Z estimated on the first batch and then fixed, as CRD and the official code do.
    - ``"none"``: Eq. 10 literally, where every one of the N negatives of an untrained network
      has h ~ 1/(1 + N/M) and the negative term, summed over N, swamps the positive one.
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
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if embed not in ("mlp", "none"):
            raise ValueError(f"CMIM embed must be 'mlp' or 'none', got {embed!r}")
        if normalizer not in ("running", "crd", "none"):
            raise ValueError(f"CMIM normalizer must be 'running', 'crd' or 'none', got {normalizer!r}")
        if not 0.0 <= z_momentum < 1.0:
            raise ValueError(f"CMIM z_momentum must be in [0, 1), got {z_momentum}")
        if embed == "none" and site_dims is None:
            raise ValueError("CMIM embed='none' needs site_dims (flattened activation size per site)")
        self.config, self.embed, self.normalizer, self.z_momentum = config, embed, normalizer, z_momentum
        self.shared_negatives = shared_negatives
        self.sites = list(site_channels)
        self.dataset_size = dataset_size
        self.register_buffer("log_z", torch.full((len(self.sites),), float("nan")))
        self.weights = layer_weights(len(self.sites), config.beta)
        self.noise = config.n_nce / dataset_size
        self.heads = nn.ModuleDict()
        self.banks: dict[str, MemoryBank] = {}
        for k, (site, channels) in enumerate(site_channels.items()):
            key = site.replace(".", "_")
            dim = embed_dim if embed == "mlp" else site_dims[site]
            if embed == "mlp":
                self.heads[key] = EmbeddingHead(channels, embed_dim)
            self.banks[site] = MemoryBank(
                dataset_size, dim, momentum, normalize=embed == "mlp", dtype=bank_dtype, device=device, seed=seed + k
            )

    def represent(self, site: str, tap: Tap) -> tuple[Tensor, Tensor]:
        """(anchor, latent) representations of one site: (e(a_B), e(a_F)) or flattened (a_B, a_F)."""
        if self.embed == "mlp":
            head = self.heads[site.replace(".", "_")]
            return head(tap.binary), head(tap.latent)
        return tap.binary.flatten(1), tap.latent.flatten(1)

    def forward(self, taps: dict[str, Tap], indices: Tensor) -> CMIMOutput:
        total = None
        per_layer: dict[str, dict[str, Tensor]] = {}
        for k, (site, weight) in enumerate(zip(self.sites, self.weights)):
            anchor, latent = self.represent(site, taps[site])
            bank = self.banks[site]
            positive = (anchor * latent).sum(dim=1).float() / self.config.tau
            if self.shared_negatives:
                negatives, own = bank.sample_shared(indices, self.config.n_nce)
                scores = (anchor.float() @ negatives.T / self.config.tau).masked_fill(own, float("-inf"))
            else:
                negatives = bank.sample(indices, self.config.n_nce)
                scores = torch.einsum("bd,bnd->bn", anchor.float(), negatives) / self.config.tau
            log_z = positive.new_zeros(())
            if self.normalizer != "none":
                log_z = self._log_z(k, positive, scores)
                positive, scores = positive - log_z, scores - log_z
            loss = nce_loss(positive, scores, self.noise)
            bank.update(indices, latent)
            with torch.no_grad():
                negative_h = critic(scores, self.noise)
                if self.shared_negatives:  # the anchors' own draws are left out of the mean
                    negative_h = negative_h.masked_select(~own)
                per_layer[site] = {"loss": loss.detach(), "positive": critic(positive, self.noise).mean(),
                                   "negative": negative_h.mean(), "log_z": log_z.detach().clone()}
            total = weight * loss if total is None else total + weight * loss
        assert total is not None
        return CMIMOutput(self.config.lam * total, per_layer)

    def _log_z(self, k: int, positive: Tensor, scores: Tensor) -> Tensor:
        """log Z: the first batch's estimate, then fixed ("crd") or a running mean ("running")."""
        old = self.log_z[k]
        if self.normalizer == "running":  # decided on the device: no host synchronisation per step
            batch = crd_log_z(torch.cat([positive[:, None], scores], dim=1), self.dataset_size)
            self.log_z[k] = torch.where(torch.isnan(old), batch, running_log_mean(old, batch, self.z_momentum))
        elif torch.isnan(old):  # "crd": measured once (with a collective under DDP), then fixed
            self.log_z[k] = crd_log_z(torch.cat([positive[:, None], scores], dim=1), self.dataset_size)
        return self.log_z[k]

    def bank_state(self) -> dict[str, dict[str, Tensor]]:
        return {site: bank.state_dict() for site, bank in self.banks.items()}

    def load_bank_state(self, state: dict[str, dict[str, Tensor]]) -> None:
        for site, bank in self.banks.items():
            bank.load_state_dict(state[site])
