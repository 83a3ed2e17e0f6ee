"""Exact t-SNE (van der Maaten & Hinton, 2008) in torch, for up to a few thousand points.

Steps: optional PCA to ``pca_dims``; per-point Gaussian bandwidths found by bisection so that
each conditional distribution has the requested perplexity; symmetrised affinities P; a 2-D
embedding by gradient descent on KL(P || Q) with a Student-t Q, early exaggeration, momentum
and per-coordinate adaptive gains.  Float64 on one CPU thread: the result depends only on the
input and the seed (not on the machine's thread count), and for these sizes one thread is also
the fastest.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

PCA_DIMS = 50
BISECTION_STEPS = 100


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block on one intra-op thread, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pca(x: Tensor, dims: int) -> Tensor:
    """The first ``dims`` principal component scores of the rows of ``x`` (centred)."""
    centred = x - x.mean(dim=0)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    return u[:, :dims] * s[:dims]


def squared_distances(x: Tensor) -> Tensor:
    """(n, n) squared Euclidean distances, exactly zero on the diagonal."""
    norms = (x * x).sum(dim=1)
    distances = (norms[:, None] + norms[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    return distances.fill_diagonal_(0.0)


def conditional_probabilities(distances: Tensor, perplexity: float, tol: float = 1e-6) -> Tensor:
    """Rows p_{j|i} = exp(-beta_i d_ij) / sum_k exp(-beta_i d_ik) (p_{i|i} = 0), with each beta_i
    bisected (on log beta, all rows at once) until the row's perplexity exp(H) matches."""
    n = distances.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=distances.device)
    shifted = distances - distances.masked_fill(~off_diagonal, math.inf).min(dim=1, keepdim=True).values
    target = math.log(perplexity)
    low = torch.full((n, 1), -50.0, dtype=distances.dtype, device=distances.device)
    high = torch.full_like(low, 50.0)
    for _ in range(BISECTION_STEPS):
        log_beta = (low + high) / 2
        probabilities, entropy = _row_distribution(shifted, log_beta.exp(), off_diagonal)
        too_flat = entropy > target  # entropy falls as beta grows
        low = torch.where(too_flat, log_beta, low)
        high = torch.where(too_flat, high, log_beta)
        if (entropy - target).abs().max() < tol:
            break
    return probabilities


def _row_distribution(shifted: Tensor, beta: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's Gaussian distribution over the other points and its entropy (nats)."""
    weights = torch.exp(-beta * shifted) * mask
    total = weights.sum(dim=1, keepdim=True)
    probabilities = weights / total
    entropy = torch.log(total) + beta * (shifted * probabilities).sum(dim=1, keepdim=True)
    return probabilities, entropy.squeeze(1)


def tsne(x: Tensor, perplexity: float = 30.0, iterations: int = 1000, seed: int = 0, pca_dims: int | None = PCA_DIMS,
         early_exaggeration: float = 12.0, exaggeration_iterations: int = 250,
         learning_rate: float | None = None) -> Tensor:
    """A (n, 2) embedding of the rows of ``x`` (n, d).

    ``learning_rate`` defaults to max(n / early_exaggeration / 4, 50) (Belkina et al. 2019).
    Momentum is 0.5 during early exaggeration and 0.8 afterwards.  The start is a seeded
    Gaussian of standard deviation 1e-4.
    """
    x = torch.as_tensor(x).detach().cpu().to(torch.float64).flatten(1)
    n = x.shape[0]
    if not 1.0 < perplexity < n - 1:
        raise ValueError(f"perplexity must be in (1, {n - 1}) for {n} points, got {perplexity}")
    with single_thread():
        return _embed(x, perplexity, iterations, seed, pca_dims, early_exaggeration, exaggeration_iterations,
                      learning_rate)


def _embed(x: Tensor, perplexity: float, iterations: int, seed: int, pca_dims: int | None,
           early_exaggeration: float, exaggeration_iterations: int, learning_rate: float | None) -> Tensor:
    """The body of :func:`tsne` (``x`` is already a float64 (n, d) CPU tensor)."""
    n = x.shape[0]
    if pca_dims is not None and x.shape[1] > pca_dims:
        x = pca(x, pca_dims)
    conditional = conditional_probabilities(squared_distances(x), perplexity)
    p = ((conditional + conditional.T) / (2.0 * n)).clamp_min(1e-12)
    rate = learning_rate or max(n / early_exaggeration / 4.0, 50.0)
    generator = torch.Generator().manual_seed(seed)
    y = 1e-4 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    update = torch.zeros_like(y)
    gains = torch.ones_like(y)
    for step in range(iterations):
        exaggerating = step < exaggeration_iterations
        gradient = _kl_gradient(p * early_exaggeration if exaggerating else p, y)
        same_direction = (gradient > 0) == (update > 0)
        gains = torch.where(same_direction, gains * 0.8, gains + 0.2).clamp_min(0.01)
        update = (0.5 if exaggerating else 0.8) * update - rate * gains * gradient
        y = y + update
        y = y - y.mean(dim=0)
    return y


def _kl_gradient(p: Tensor, y: Tensor) -> Tensor:
    """d KL(P || Q) / d y for the Student-t (one degree of freedom) similarities Q of ``y``."""
    kernel = 1.0 / (1.0 + squared_distances(y))
    kernel.fill_diagonal_(0.0)
    q = (kernel / kernel.sum()).clamp_min(1e-12)
    weights = (p - q) * kernel
    return 4.0 * (weights.sum(dim=1, keepdim=True) * y - weights @ y)

