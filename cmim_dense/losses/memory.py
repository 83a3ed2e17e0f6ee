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

    Negatives follow the official CMIM code (and CRD's data wrapper): drawn **without
    replacement**, never the anchor itself and, once :meth:`set_labels` has given every sample
    its class, never a sample of the anchor's class (the paper's negative term is the
    "inter-class decorrelation" one).  Without labels the draws are label-free, for unlabeled data.

    - ``sample(indices, n)``: ``n`` negatives per anchor, (B, n, dim).
    - ``sample_shared(indices, n)``: ``n`` distinct rows for the whole batch and the (B, n) mask
      of the pairs an anchor must leave out (itself, its class).
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
        self.max_negatives = size - 1  # without labels: every other sample

    def set_labels(self, labels: Tensor) -> None:
        """The class of every sample, for class-aware negatives."""
        if labels.shape != (self.size,):
            raise ValueError(f"need {self.size} labels, got shape {tuple(labels.shape)}")
        self.labels = labels.to(self.values.device)
        # the most negatives every anchor can be given without replacement: the samples outside the
        # largest class (counted once here, not per draw: no host synchronisation on the hot path)
        self.max_negatives = self.size - int(torch.bincount(labels).max())

    def excluded(self, indices: Tensor, rows: Tensor) -> Tensor:
        """Whether row ``rows[b, j]`` may not be a negative of anchor ``indices[b]``: the anchor
        itself or, with labels, a sample of its class."""
        if self.labels is None:
            return rows == indices[:, None]
        return self.labels[rows] == self.labels[indices][:, None]

    def sample(self, indices: Tensor, n: int, chunk_elements: int = 1 << 22) -> Tensor:
        """(B, n, dim) float32 negatives for the anchors ``indices`` (B,), each anchor's drawn
        uniformly without replacement among its allowed rows: the ``n`` smallest of one uniform
        key per row, with the excluded rows' keys set to 2 (anchors in chunks of
        ``chunk_elements`` keys, to bound the memory on a large bank)."""
        if n > self.max_negatives:
            raise ValueError(f"{n} negatives per anchor exceed the {self.max_negatives} allowed rows of this bank")
        indices = indices.to(self.values.device)
        every = torch.arange(self.size, device=indices.device)
        rows = []
        for part in indices.split(max(1, chunk_elements // self.size)):
            keys = torch.rand(part.shape[0], self.size, generator=self.generator, device=indices.device)
            keys = keys.masked_fill(self.excluded(part, every.expand(part.shape[0], -1)), 2.0)
            rows.append(keys.topk(n, dim=1, largest=False).indices)
        return self.values[torch.cat(rows)].float()

    def sample_shared(self, indices: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """``n`` distinct rows shared by the whole batch, (n, dim) float32, and the (B, n) mask of
        the pairs to leave out (the anchor itself, its class: :meth:`excluded`).

        Scoring B anchors against one set is a (B, dim) x (dim, n) product on n gathered rows,
        instead of B x n gathered rows for per-anchor negatives: B times less memory traffic,
        which is what dominates the CMIM term's cost.  Each anchor keeps the drawn rows it is
        allowed, a uniform draw without replacement from its allowed rows of random size.
        """
        if n > self.size:
            raise ValueError(f"{n} shared negatives exceed the bank's {self.size} rows")
        drawn = torch.randperm(self.size, generator=self.generator, device=self.values.device)[:n]
        indices = indices.to(self.values.device)
        return self.values[drawn].float(), self.excluded(indices, drawn.expand(indices.shape[0], -1))

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
