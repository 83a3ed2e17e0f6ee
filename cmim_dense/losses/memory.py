"""A momentum memory bank of per-sample representations, for NCE negatives (Wu et al. 2018)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def all_gather_rows(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every DDP rank along dim 0 (``x`` itself without DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())  # supported by gloo (CPU) and nccl alike
    return torch.cat(parts)


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over DDP ranks (``x`` itself without DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


class MemoryBank:
    """``size`` x ``dim`` stored representations, one per training sample.

    - ``sample(indices, n)`` draws ``n`` negatives per anchor uniformly among the *other*
      samples, in one vectorised call: index (i + 1 + U{0..M-2}) mod M is uniform over every
      index but i.  With ``labels`` set, negatives of the anchor's own class are redrawn a few
      times (the official CMIM code's class-aware negatives) without per-class index lists.
    - ``update(indices, values)`` blends in new values with momentum, after gathering them
      from every DDP rank, so all ranks keep identical banks.
    - ``dtype=torch.float16`` halves the memory (an ImageNet bank of 1.28M x 128 takes 328 MB).
    - ``normalize`` keeps rows on the unit sphere (for L2-normalised embeddings).

    The bank lives outside the model (it is not a module buffer), so DDP never broadcasts it.
    """

    def __init__(
        self,
        size: int,
        dim: int,
        momentum: float = 0.5,
        normalize: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        if size < 2:
            raise ValueError(f"a memory bank needs at least 2 samples, got {size}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory momentum must be in [0, 1), got {momentum}")
        self.size, self.dim, self.momentum, self.normalize = size, dim, momentum, normalize
        self.generator = torch.Generator(device=device).manual_seed(seed)
        init = torch.randn(size, dim, generator=self.generator, device=device)
        self.values = (F.normalize(init, dim=1) if normalize else init).to(dtype)
        self.labels: Tensor | None = None

    def set_labels(self, labels: Tensor) -> None:
        """The class of every sample, for class-aware negatives."""
        if labels.shape != (self.size,):
            raise ValueError(f"need {self.size} labels, got shape {tuple(labels.shape)}")
        self.labels = labels.to(self.values.device)

    def sample(self, indices: Tensor, n: int, redraws: int = 10) -> Tensor:
        """(B, n, dim) float32 negatives for the anchors ``indices`` (B,)."""
        indices = indices.to(self.values.device)
        offsets = torch.randint(1, self.size, (indices.shape[0], n), generator=self.generator, device=indices.device)
        negatives = (indices[:, None] + offsets) % self.size
        if self.labels is not None:
            for _ in range(redraws):
                same = self.labels[negatives] == self.labels[indices][:, None]
                if not same.any():
                    break
                fresh = torch.randint(0, self.size, (int(same.sum()),), generator=self.generator, device=indices.device)
                negatives[same] = fresh
        return self.values[negatives].float()

    def sample_shared(self, indices: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """``n`` negatives shared by the whole batch, (n, dim) float32, and the (B, n) mask of the
        pairs where a drawn negative is the anchor itself (to be left out).

        Scoring B anchors against one set is a (B, dim) x (dim, n) product on n gathered rows,
        instead of B x n gathered rows for per-anchor negatives: B times less memory traffic,
        which is what dominates the CMIM term's cost.  Each anchor still sees n uniform draws
        from the bank (minus the rare hit on itself), so the loss has the same expectation.
        """
        drawn = torch.randint(0, self.size, (n,), generator=self.generator, device=self.values.device)
        own = indices.to(self.values.device)[:, None] == drawn[None, :]
        return self.values[drawn].float(), own

    @torch.no_grad()
    def update(self, indices: Tensor, values: Tensor) -> None:
        """bank[i] <- m bank[i] + (1 - m) value (re-normalised when ``normalize``)."""
        indices = all_gather_rows(indices.to(self.values.device))
        values = all_gather_rows(values.detach().to(self.values.device, torch.float32))
        mixed = self.momentum * self.values[indices].float() + (1.0 - self.momentum) * values
        if self.normalize:
            mixed = F.normalize(mixed, dim=1)
        self.values[indices] = mixed.to(self.values.dtype)

    def state_dict(self) -> dict[str, Tensor]:
        return {"values": self.values, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state["values"].shape != self.values.shape:
            raise ValueError(
                f"memory bank shape {tuple(state['values'].shape)} does not match {tuple(self.values.shape)}"
            )
        self.values.copy_(state["values"])
        self.generator.set_state(state["generator"])

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size()
