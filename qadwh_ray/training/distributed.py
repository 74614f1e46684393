"""The global batch over ``torch.distributed``: gather across ranks, local part keeps its gradient.

Used inside Ray Train workers (the process group is already up there) and by
the plain torch.distributed test; the core never sees the process group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


class TorchDistributedGather:
    def __init__(self) -> None:
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()

    def _sizes(self, n: int, device: torch.device) -> list[int]:
        local = torch.tensor([n], device=device)
        sizes = [torch.zeros_like(local) for _ in range(self.world_size)]
        dist.all_gather(sizes, local)
        return [int(s) for s in sizes]

    def all_gather(self, t: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Concatenate ``t`` over ranks (ranks may hold different row counts)."""
        sizes = self._sizes(t.shape[0], t.device)
        longest = max(sizes)
        padded = t
        if t.shape[0] < longest:
            padded = torch.cat([t, t.new_zeros((longest - t.shape[0],) + t.shape[1:])])
        if t.requires_grad:
            parts = list(dist_fn.all_gather(padded))  # backward sums gradients back to their owner
        else:
            parts = [torch.empty_like(padded) for _ in range(self.world_size)]
            dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sum(sizes[: self.rank])

    def all_reduce_sum(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return float(t)
