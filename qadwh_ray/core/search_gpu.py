"""Exact weighted-Hamming top-k in torch (CUDA when present; the same code runs on CPU tensors).

The linear form of the canonical distance (:mod:`qadwh_ray.core.hamming`): with integer (snapped) weights ``W`` and the
query bits ``q``, ``D(q, x) = sum_k W_k q_k + sum_k W_k (1 - 2 q_k) x_k``, one
float64 matrix product of the query coefficients against the database bits,
unpacked on the device chunk by chunk (the device keeps only packed codes).
Every term and every partial sum is an integer of magnitude below ``2**53``,
so float64 arithmetic is exact in any summation order (cuBLAS blocking, FMA
included) and the integers equal the CPU path's.

Selection is exact under ``(distance, position)`` — positions are in id
order, so this is ``(distance, id)``: per chunk, every item strictly below
the k-th smallest value plus the first (lowest-position) items equal to it;
then a stable sort by distance, and a running merge across chunks (earlier
chunks hold lower positions, so a stable sort of the concatenation keeps the
order).
"""

from __future__ import annotations

import numpy as np

#: (query, item) cells per chunk of the distance matrix, and database bits per chunk.
CELLS_PER_CHUNK = 1 << 25
BITS_PER_CHUNK = 1 << 24


class TorchSearcher:
    """Packed codes on a torch device, searched with the linear form."""

    def __init__(self, codes: np.ndarray, device: str = "cuda"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.device_name = device
        self.codes = torch.from_numpy(np.ascontiguousarray(codes)).to(self.device)
        self.n, self.nbytes = codes.shape
        self.nbits = 8 * self.nbytes
        self._shifts = torch.arange(8, device=self.device, dtype=torch.uint8)

    def _unpack(self, codes):
        """``(m, nbytes)`` uint8 -> ``(m, nbits)`` float64 0/1, little-endian within each byte."""
        bits = (codes.unsqueeze(-1) >> self._shifts) & 1
        return bits.reshape(codes.shape[0], -1).to(self.torch.float64)

    def topk(self, query_codes: np.ndarray, w_int: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Integer distances and positions ``(nq, k)`` of the exact top ``k <= n`` per query."""
        nq = query_codes.shape[0]
        if not 1 <= k <= self.n:
            raise ValueError(f"k must be in [1, {self.n}], got {k}")
        q_chunk = max(1, CELLS_PER_CHUNK // self.n)
        out_d = np.empty((nq, k), dtype=np.int64)
        out_p = np.empty((nq, k), dtype=np.int64)
        for q0 in range(0, nq, q_chunk):
            q1 = min(q0 + q_chunk, nq)
            d, p = self._topk_block(query_codes[q0:q1], w_int[q0:q1], k)
            out_d[q0:q1] = d.cpu().numpy()
            out_p[q0:q1] = p.cpu().numpy()
        return out_d, out_p

    def _topk_block(self, query_codes, w_int, k):
        torch = self.torch
        nq = query_codes.shape[0]
        qbits = self._unpack(torch.from_numpy(np.ascontiguousarray(query_codes)).to(self.device))
        wf = torch.from_numpy(np.ascontiguousarray(w_int)).to(self.device, torch.float64)
        coef = wf * (1.0 - 2.0 * qbits)  # (nq, nbits), integers
        const = (wf * qbits).sum(dim=1, keepdim=True)  # (nq, 1), integers
        chunk = max(k, min(CELLS_PER_CHUNK // nq, BITS_PER_CHUNK // self.nbits))
        best_d = best_p = None
        for c0 in range(0, self.n, chunk):
            c1 = min(c0 + chunk, self.n)
            bits = self._unpack(self.codes[c0:c1])
            dist = torch.addmm(const, coef, bits.T).to(torch.int64)  # exact integers
            d, p = select_topk(dist, min(k, c1 - c0))
            p = p + c0
            if best_d is None:
                best_d, best_p = d, p
            else:
                cat_d = torch.cat([best_d, d], dim=1)
                cat_p = torch.cat([best_p, p], dim=1)
                order = torch.sort(cat_d, dim=1, stable=True).indices[:, :k]
                best_d = torch.gather(cat_d, 1, order)
                best_p = torch.gather(cat_p, 1, order)
        return best_d, best_p


def select_topk(dist, k: int):
    """Exact top ``k`` of each row of an int64 matrix under ``(value, column)`` order.

    Returns ``(values, columns)``, each ``(rows, k)``, sorted by ``(value, column)``.
    """
    import torch

    rows = dist.shape[0]
    kth = torch.topk(dist, k, dim=1, largest=False, sorted=True).values[:, -1:]
    less = dist < kth
    n_less = less.sum(dim=1, keepdim=True)
    equal = dist == kth
    rank = torch.cumsum(equal.to(torch.int64), dim=1)
    take = less | (equal & (rank <= (k - n_less)))
    cols = take.nonzero()[:, 1].reshape(rows, k)  # row-major: ascending columns per row
    vals = torch.gather(dist, 1, cols)
    order = torch.sort(vals, dim=1, stable=True).indices
    return torch.gather(vals, 1, order), torch.gather(cols, 1, order)
