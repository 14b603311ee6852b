"""The ``bernoulli`` selection without a sort: exact difficulty ranks only where a pixel's draw needs them.

Pixel ``i`` of a unit with ``n`` valid pixels is dropped when ``u_i < p(j_i)``, ``p(j) = min(1, g (j + 1/2) / n)``
non-decreasing in its 0-based rank ``j_i`` by ``(difficulty, tie priority)`` (:mod:`ddsd.dropout`). A sort
(``O(n log n)``) gives every rank, but a draw needs its pixel's rank only when ``u_i`` falls between the smallest
and the largest probability that rank can have:

1. **Bins of the sort key.** Every valid pixel goes to a bin of its key ``(difficulty, priority)``: the exact zeros
   (the one-sided difficulty is 0 wherever the student already reaches the teacher: often a large tie group) by
   the top ``z`` bits of their priority, the other pixels by the top ``w`` bits of their difficulty's float bits
   (``w = 16``: 8 exponent and 8 mantissa bits, bins ~0.4 % wide; fewer for small units). Bins follow the key's
   order, so one histogram per unit gives every bin's first rank ``lo`` and size ``s``: ``lo <= j_i <= lo + s - 1``.
2. **Sure draws.** ``u_i < p(lo)`` drops and ``u_i >= p(lo + s - 1)`` keeps whatever ``j_i`` is. Only the other
   pixels are *open*: a share of about ``g s / n`` of each bin (a few per image when difficulties are spread).
3. **Exact ranks of the open pixels**: the members of the bins that hold an open pixel are gathered and sorted by
   ``(bin, key, priority)`` -- normally a few hundred values -- and a pixel's rank is its bin's ``lo`` plus its
   position in its bin.

The comparisons run on the integer draws: with ``u = (U + 1/2) 2^-32`` (:func:`ddsd.dropout.bernoulli_uniforms`),
``u >= p  <=>  U >= ceil(p 2^32 - 1/2)``, exactly (scaling by ``2^32`` and subtracting ``1/2`` are exact in float64
for ``p <= 1``). ``p`` is computed as the sorting implementation does and is monotone in ``j`` in float64 too
(correctly rounded division and product of non-decreasing operands), so the mask is that implementation's, bit for
bit. Eager only (``nonzero`` and the open count are host syncs and dynamic shapes); compiled code sorts.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bernoulli_keep_eager", "draw_threshold", "drop_prob", "rate_gain"]


def drop_prob(rank: Tensor, num_valid: Tensor, g: Tensor) -> Tensor:
    """``min(1, g (rank + 1/2) / n)`` in float64, elementwise (``rank`` and ``num_valid`` broadcast together)."""
    x = (rank.to(torch.float64) + 0.5) / num_valid.to(torch.float64).clamp(min=1)
    return (g * x).clamp(max=1.0)


def rate_gain(rate: float | Tensor, device=None) -> Tensor:
    """``g(r) = 2r`` for ``r <= 1/2``, ``1 / (2(1 - r))`` above (float64 0-d tensor)."""
    r = torch.as_tensor(rate, dtype=torch.float64, device=device)
    return torch.where(r <= 0.5, 2.0 * r, 0.5 / (1.0 - r))


def draw_threshold(p: Tensor) -> Tensor:
    """``ceil(p 2^32 - 1/2)`` as int64: a 32-bit draw ``U`` keeps its pixel (``(U + 1/2) 2^-32 >= p``) iff
    ``U >=`` this."""
    return torch.ceil(p * 2.0**32 - 0.5).to(torch.int64)


def _widths(n: int, m: int) -> tuple[int, int]:
    """Bits of the difficulty bins (``w``) and of the zeros' priority bins (``z``) for units of ``n`` pixels:
    about ``n / 2`` and ``n / 16`` bins, ``w`` in [8, 16], ``z`` in [0, m]."""
    bits = max(1, (int(n) - 1).bit_length())
    return max(8, min(16, bits - 1)), max(0, min(m, bits - 4))


def bernoulli_keep_eager(
    d: Tensor,
    valid: Tensor,
    num_valid: Tensor,
    rate: float | Tensor,
    draws: Tensor,
    priority: tuple[Tensor, Tensor | None],
    m: int,
) -> Tensor:
    """Keep mask ``[R, n]`` (bool) of the ``bernoulli`` selection, identical to ranking every pixel.

    Args:
        d: ``[R, n]`` float32 difficulties ``>= 0`` (``-0.0`` counts as ``+0.0``), no NaN; one row per unit.
        valid: ``[R, n]`` bool; ``num_valid``: ``[R]`` int64, its row counts.
        rate: ``r in [0, 1)``; ``draws``: ``[R, n]`` int64 32-bit draws ``U`` (``u = (U + 1/2) 2^-32``).
        priority: the tie priorities (distinct within a row, in ``[0, 2^m)``) as ``(base [1, n], row_keys [R, 1]
            or None)``: pixel ``(r, c)`` has ``base[c] xor row_keys[r]`` (:func:`ddsd.dropout.tie_priorities`).
        m: the priorities' bit width.
    """
    rows, n = d.shape
    w, z = _widths(n, m)
    shift = 31 - w
    nbins = (1 << z) + (1 << w)  # the zeros' priority bins, then the difficulty bins (key order)
    g = rate_gain(rate, d.device)
    key = d.view(torch.int32).clamp(min=0)  # IEEE bits of a non-negative float grow with its value
    # a key k > 0 goes to bin 2^z + floor((k - 1) / 2^shift) (< nbins for k < 2^31); a zero to its priority's top bits
    b = (key - 1).bitwise_right_shift_(shift).add_(1 << z)  # (zeros: 2^z - 1 here)
    base, row_keys = priority
    top = (base >> (m - z)).to(torch.int32)
    b = torch.where(key == 0, top if row_keys is None else top ^ (row_keys >> (m - z)).to(torch.int32), b)
    if rows > 1:
        b += torch.arange(rows, dtype=torch.int32, device=d.device).unsqueeze(1) * nbins  # global bin ids
    b.masked_fill_(~valid, rows * nbins)  # void pixels: a dump bin after every row's bins
    flat = b.view(-1)
    hist = torch.bincount(flat, minlength=rows * nbins + 1)[: rows * nbins].view(rows, nbins)
    lo_tab = hist.cumsum(1).sub_(hist)  # first rank of each bin
    nv = num_valid.unsqueeze(1)
    never = torch.full((1,), 1 << 40, dtype=torch.int64, device=d.device)  # the dump bin: no draw reaches it

    def thresholds(rank: Tensor) -> Tensor:  # [R, n] per-pixel draw thresholds of a per-bin rank table
        return torch.cat([draw_threshold(drop_prob(rank, nv, g)).view(-1), never]).index_select(0, flat).view(rows, n)

    t_hi = thresholds(lo_tab + hist - 1)  # draws >= t_hi: kept for sure
    keep = valid & (draws >= t_hi)
    open_ = draws < t_hi
    open_ &= draws >= thresholds(lo_tab)  # draws below: dropped for sure (void pixels: never open)
    if not bool(open_.any()):  # host sync
        return keep
    r_idx, c_idx = open_.nonzero(as_tuple=True)
    bins = b[r_idx, c_idx].to(torch.int64)  # global bins
    rank = lo_tab.view(-1)[bins] + _position_in_bin(key, valid, priority, b, rows * nbins, bins, r_idx, c_idx,
                                                      shift, m)
    keep[r_idx, c_idx] = draws[r_idx, c_idx] >= draw_threshold(drop_prob(rank, num_valid[r_idx], g))
    return keep


def _position_in_bin(key: Tensor, valid: Tensor, priority: tuple[Tensor, Tensor | None], b: Tensor, total: int,
                     bins: Tensor, r_idx: Tensor, c_idx: Tensor, shift: int, m: int) -> Tensor:
    """For the pixels ``(r_idx, c_idx)`` (global bins ``bins``), the number of valid pixels of their bin with a
    smaller key: the members of those bins are gathered and sorted by one int64 ``id << (shift + m) | offset << m
    | priority`` (``id``: the bin numbered densely among the open ones; ``offset``: the key minus the bin's lowest
    key, 0 for the zeros). ``b``: ``[R, n]`` int32 global bin of every pixel (``total`` = the dump bin)."""
    active = torch.zeros(total + 1, dtype=torch.bool, device=key.device)
    active[bins] = True
    dense = active.cumsum(0).sub_(1)  # id of each open bin, 0 .. (#open bins - 1)
    low = shift + m
    if int(dense[-1]).bit_length() + low > 62:
        raise RuntimeError(f"bernoulli selection: {int(dense[-1]) + 1} open bins do not fit one int64 key")
    base, row_keys = priority

    def sort_key(r: Tensor, c: Tensor, bin_: Tensor) -> Tensor:
        k = key[r, c].to(torch.int64)
        offset = torch.where(k > 0, (k - 1) & ((1 << shift) - 1), 0)  # key minus the bin's lowest key
        prio = base[0, c] if row_keys is None else base[0, c] ^ row_keys[r, 0]
        return (dense[bin_] << low) | (offset << m) | prio

    mr, mc = active.index_select(0, b.view(-1)).view(b.shape).nonzero(as_tuple=True)
    ordered = sort_key(mr, mc, b[mr, mc].to(torch.int64)).sort().values
    pos = torch.searchsorted(ordered, sort_key(r_idx, c_idx, bins))
    return pos - torch.searchsorted(ordered, dense[bins] << low)
