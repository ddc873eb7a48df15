"""Low-rank factors of a weight change by SVD: what resize, extract and the SVD merge share.

A delta W [out, in] or [out, in, kh, kw] is flattened to [out, in*kh*kw] and factored as
W ~= up @ down with up = U_r * S_r and down = Vh_r (sd-scripts puts the singular values on
lora_up too). Truncating at rank r leaves a Frobenius error of sqrt(sum of the discarded S^2)
(Eckart-Young), which is what the tools report as the energy kept.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lorasmith.errors import ToolError

DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


@dataclass
class LowRank:
    """A rank-r factorization of one delta: kohya-shaped up/down and the singular values it came from."""

    up: Any  # [out, r] or [out, r, 1, 1]
    down: Any  # [r, in] or [r, in, kh, kw]
    singular_values: Any  # all of them, float32, largest first
    rank: int

    @property
    def energy_kept(self) -> float:
        """Share of the squared Frobenius norm the kept singular values carry (1.0 = lossless)."""
        squared = self.singular_values.double() ** 2
        total = float(squared.sum())
        return 1.0 if total == 0 else float(squared[: self.rank].sum()) / total

    @property
    def discarded_norm(self) -> float:
        """The Frobenius norm of what the truncation drops: the error of up @ down against the delta."""
        return float((self.singular_values[self.rank:].double() ** 2).sum().sqrt())


def svd(delta: Any) -> tuple[Any, Any, Any]:
    """(U, S, Vh) of the delta flattened to 2-d, in float32."""
    import torch

    matrix = delta.float().flatten(1)
    return torch.linalg.svd(matrix, full_matrices=False)


def product_svd(up: Any, down: Any) -> tuple[Any, Any, Any]:
    """(U, S, Vh) of up @ down (both flattened to 2-d) without forming the product.

    A LoRA delta has rank at most r, so a QR of each factor and the SVD of the small
    r x r core give the same singular values and vectors as a full SVD (whose remaining
    values are zero), at a cost linear in the layer's width instead of cubic. Computed in
    float64 (cheap at this size) and returned in float32. up may carry several LoRAs' factors
    side by side (rank r1 + r2 + ...), which is how merges use it.
    """
    import torch

    qa, ra = torch.linalg.qr(up.flatten(1).double())  # up = qa @ ra
    qb, rb = torch.linalg.qr(down.flatten(1).double().T)  # down = rb.T @ qb.T
    core_u, s, core_vh = torch.linalg.svd(ra @ rb.T, full_matrices=False)
    return (qa @ core_u).float(), s.float(), (core_vh @ qb.T).float()


def low_rank(delta: Any, rank: int, clamp_quantile: float | None = None, factors: tuple | None = None,
             shape: tuple[int, ...] | None = None) -> LowRank:
    """The best rank-`rank` factors of `delta` (its SVD may be passed in as `factors`).

    With `factors` (e.g. from `product_svd`) the delta itself is not needed: pass None and
    its `shape` ([out, in] or [out, in, kh, kw]) instead.

    clamp_quantile (sd-scripts' extract option, e.g. 0.99) clips up and down to that quantile
    of their absolute values, which keeps fp16 files free of outliers.
    """
    import torch

    u, s, vh = factors if factors is not None else svd(delta)
    shape = tuple(delta.shape) if shape is None else tuple(shape)
    rank = max(1, min(int(rank), s.shape[0]))
    up = u[:, :rank] * s[:rank]
    down = vh[:rank]
    if clamp_quantile is not None:
        if not 0 < clamp_quantile <= 1:
            raise ToolError(f"--clamp_quantile must be above 0 and at most 1, got {clamp_quantile}")
        limit = torch.quantile(torch.cat([up.flatten(), down.flatten()]).abs(), clamp_quantile)
        up, down = up.clamp(-limit, limit), down.clamp(-limit, limit)
    if len(shape) == 4:
        up = up[:, :, None, None]
        down = down.reshape(rank, *shape[1:])
    return LowRank(up.contiguous(), down.contiguous(), s, rank)


def dynamic_rank(singular_values: Any, method: str, param: float, max_rank: int) -> int:
    """sd-scripts' dynamic ranks: the smallest rank (at most `max_rank`) that keeps

    - sv_ratio: every singular value at least S[0] / param;
    - sv_cumulative: a share `param` of the sum of the singular values;
    - sv_fro: a share `param` of the Frobenius norm (sqrt of the sum of S^2).
    """
    import torch

    s = singular_values.double()
    if float(s[0]) <= 0:
        return 1
    if method == "sv_ratio":
        if param < 1:
            raise ToolError(f"--dynamic_param for sv_ratio is the largest S[0]/S[r] kept, at least 1; got {param}")
        rank = int((s >= s[0] / param).sum())
    elif method in ("sv_cumulative", "sv_fro"):
        if not 0 < param <= 1:
            raise ToolError(f"--dynamic_param for {method} is a share from 0 to 1, got {param}")
        values = s if method == "sv_cumulative" else s ** 2
        target = param if method == "sv_cumulative" else param ** 2
        shares = torch.cumsum(values, 0) / values.sum()
        rank = int((shares < target - 1e-12).sum()) + 1
    else:
        raise ToolError(f"unknown --dynamic_method '{method}'; use one of: {', '.join(DYNAMIC_METHODS)}")
    return max(1, min(rank, max_rank))


@contextmanager
def one_thread():
    """Run many small QR/SVD calls on one thread, then restore the setting (for the shells and tests).

    With a second thread on 2 cores that are busy elsewhere, MKL spends most of its time waiting:
    resizing SD1.5 rank 32 to 8 took 37 s instead of 0.9 s (bench/lora_tools.py).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
