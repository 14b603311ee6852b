"""The ``bernoulli`` selection without a sort: exact difficulty ranks only where a pixel's draw needs them.

Pixel ``i`` of a unit with ``n`` valid pixels is dropped when ``u_i < p(j_i)``, ``p(j) = min(1, g (j + 1/2) / n)``
non-decreasing in its 0-based rank ``j_i`` by ``(difficulty, tie priority)`` (:mod:`ddsd.dropout`). A sort
(``O(n log n)``) gives every rank, but a draw needs its pixel's rank only when ``u_i`` falls between the smallest
and the largest probability that rank can have:

1. **Bins of the sort key.** Every valid pixel goes to a bin of its key ``(difficulty, priority)``: the exact zeros
   (the one-sided difficulty is 0 wherever the student already reaches the teacher: often a large tie group) by
   the top ``z`` bits of their priority, the other pixels by their difficulty's float bits ``k``: ``2^w`` bins of
   equal width over ``[k_min, k_max]`` of the batch (float bits grow about like the logarithm of the value, so the
   bins are about equally wide in relative terms, and narrow when the difficulties are concentrated). Bins follow
   the key's order, so one histogram per unit gives every bin's first rank ``lo`` and size ``s``:
   ``lo <= j_i <= lo + s - 1``.
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
from torch.profiler import record_function

from ddsd._select import hash_bits

#: labels of the selection's stages in ``torch.profiler`` traces (``python benchmarks/loss_overhead.py --profile``)
PRIORITIES, _BINS, _THRESHOLDS, _DRAWS, _OPEN = (
    f"ddsd::bernoulli::{x}" for x in ("priorities", "bins", "thresholds", "draws", "open_ranks")
)

__all__ = ["bernoulli_keep_eager", "draw_threshold", "draws_at", "drop_prob", "rate_gain"]


def drop_prob(rank: Tensor, num_valid: Tensor, g: Tensor) -> Tensor:
    """``min(1, g (rank + 1/2) / n)`` in float64, elementwise (``rank`` and ``num_valid`` broadcast together)."""
    x = rank.to(torch.float64, copy=True).add_(0.5)  # in place where shapes allow (the same values, fewer buffers)
    n = num_valid.to(torch.float64).clamp(min=1)
    x = x.div_(n) if torch.broadcast_shapes(x.shape, n.shape) == x.shape else x / n
    x = x.mul_(g) if torch.broadcast_shapes(x.shape, g.shape) == x.shape else g * x
    return x.clamp_(max=1.0)


def rate_gain(rate: float | Tensor, device=None) -> Tensor:
    """``g(r) = 2r`` for ``r <= 1/2``, ``1 / (2(1 - r))`` above (float64 0-d tensor)."""
    r = torch.as_tensor(rate, dtype=torch.float64, device=device)
    return torch.where(r <= 0.5, 2.0 * r, 0.5 / (1.0 - r))


def draws_at(index: Tensor, keys: Tensor) -> Tensor:
    """The 32-bit draws ``U`` (int64) of pixels at flat ``index`` in units keyed by ``keys`` (broadcast together):
    ``hash_bits(index, key, 32)``; ``u = (U + 1/2) 2^-32``. The one definition of the ``bernoulli`` draws."""
    return hash_bits(index, keys, 32)


def draw_threshold(p: Tensor) -> Tensor:
    """``ceil(p 2^32 - 1/2)`` as int64: a 32-bit draw ``U`` keeps its pixel (``(U + 1/2) 2^-32 >= p``) iff
    ``U >=`` this."""
    return p.mul(2.0**32).sub_(0.5).ceil_().to(torch.int64)


def _widths(n: int, m: int) -> tuple[int, int]:
    """Bits of the difficulty bins (``w``) and of the zeros' priority bins (``z``) for units of ``n`` pixels:
    about ``n / 8`` and ``n / 16`` bins, ``w`` in [8, 16], ``z`` in [0, m] (fewer bins: smaller tables, more open
    draws; measured on one CPU thread for 4 x 65536 pixels, n / 8 was faster than n / 2)."""
    bits = max(1, (int(n) - 1).bit_length())
    return max(8, min(16, bits - 3)), max(0, min(m, bits - 4))


def bernoulli_keep_eager(
    d: Tensor,
    valid: Tensor,
    num_valid: Tensor,
    rate: float | Tensor,
    draw_keys: Tensor,
    priority: tuple[Tensor, Tensor | None],
    m: int,
) -> Tensor:
    """Keep mask ``[R, n]`` (bool) of the ``bernoulli`` selection, identical to ranking every pixel.

    Args:
        d: ``[R, n]`` float32 difficulties ``>= 0`` (``-0.0`` counts as ``+0.0``), no NaN; one row per unit.
        valid: ``[R, n]`` bool; ``num_valid``: ``[R]`` int64, its row counts.
        rate: ``r in [0, 1)``; ``draw_keys``: ``[R, 1]`` int64 keys of the rows' 32-bit draws: pixel ``(r, c)``
            draws ``U = draws_at(c, draw_keys[r])`` (:func:`ddsd.dropout.bernoulli_draws`), computed image by
            image here.
        priority: the tie priorities (distinct within a row, in ``[0, 2^m)``) as ``(base [1, n], row_keys [R, 1]
            or None)``: pixel ``(r, c)`` has ``base[c] xor row_keys[r]`` (:func:`ddsd.dropout.tie_priorities`).
        m: the priorities' bit width.
    """
    rows, n = d.shape
    w, z = _widths(n, m)
    stride = (1 << z) + (1 << w) + 1  # the zeros' priority bins, then the difficulty bins (key order), + a guard
    g = rate_gain(rate, d.device)
    with record_function(_BINS):
        b, key, k_low, shift = _bins(d, valid, priority, m, w, z, stride)
    with record_function(_THRESHOLDS):
        lo_tab, table = _thresholds(b, rows, stride, num_valid, g)
    with record_function(_DRAWS):
        keep, open_ = _sure_draws(b, table, draw_keys)
    with record_function(_OPEN):
        r_idx, c_idx = open_.nonzero(as_tuple=True)  # host sync
        if r_idx.numel() == 0:
            return keep
        bins = b[r_idx, c_idx].to(torch.int64)  # their k
        rank = lo_tab.view(-1)[bins + 1] + _position_in_bin(key, priority, b, rows * stride, bins, r_idx, c_idx, k_low,
                                                             shift, m)
        keep[r_idx, c_idx] = (draws_at(c_idx, draw_keys[r_idx, 0])
                              >= draw_threshold(drop_prob(rank, num_valid[r_idx], g)))
    return keep


def _bins(d: Tensor, valid: Tensor, priority: tuple[Tensor, Tensor | None], m: int, w: int, z: int, stride: int):
    """Every pixel's index ``k = r S + bin`` as ``b`` ``[R, n]`` int32 (``S = stride``; void pixels: ``R S``),
    with the keys (``[R, n]`` int32 float bits) and the difficulty bins' ``k_low`` and ``shift``."""
    rows = d.shape[0]
    key = d.view(torch.int32)  # IEEE bits of a non-negative float grow with its value; -0.0 (and only it) is < 0
    k_min, k_max = (int(x) for x in torch.aminmax(key))  # host syncs from here on
    # positive keys: bin 2^z + ((k - k_low) >> shift) < nbins, k_low <= every positive key, k_max >> shift < 2^w
    zero = key <= 0 if k_min <= 0 else None  # the zeros (+0.0 and -0.0)
    k_low = k_min if zero is None else min(int(key.masked_fill(zero, torch.iinfo(torch.int32).max).min()), k_max)
    shift = max(0, (k_max - k_low).bit_length() - w)
    b = (key - k_low).bitwise_right_shift_(shift).add_(1 << z)
    if zero is not None:
        base, row_keys = priority
        top = (base >> (m - z)).to(torch.int32)
        b = torch.where(zero, top if row_keys is None else top ^ (row_keys >> (m - z)).to(torch.int32), b)
        del zero
    # one index k = r S + bin (S = nbins + 1; void pixels: R S) serves the histogram and both threshold lookups
    if rows > 1:
        b += torch.arange(rows, dtype=torch.int32, device=d.device).unsqueeze(1) * stride
    b.masked_fill_(~valid, rows * stride)
    return b, key, k_low, shift


def _thresholds(b: Tensor, rows: int, stride: int, num_valid: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """``lo_tab`` ``[R, S]`` (each slot's first rank) and the threshold table ``[R S + 2]`` int64 of the slots
    ``b``: ``table[k + 1] = F(last rank of the pixel's bin)``, ``table[k] = F(lo - 1)``, ``F`` =
    :func:`draw_threshold` of :func:`drop_prob`."""
    k = b.view(-1)
    # slot r S + 1 + j holds bin j of row r, slot r S an empty guard (its threshold F(-1) <= 0 drops nothing)
    counts = torch.bincount(k, minlength=rows * stride)[: rows * stride - 1]
    hist = torch.cat([counts.new_zeros(1), counts]).view(rows, stride)
    lo_tab = hist.cumsum(1).sub_(hist)  # first rank of each slot's bin
    never = torch.full((2,), 1 << 40, dtype=torch.int64, device=b.device)  # void pixels: neither kept nor open
    # table[k + 1] = F(last rank of the pixel's bin), table[k] = F(last rank of the bin before) = F(lo - 1) <= F(lo)
    table = torch.cat([draw_threshold(drop_prob(lo_tab + hist - 1, num_valid.unsqueeze(1), g)).view(-1), never])
    return lo_tab, table


def _sure_draws(b: Tensor, table: Tensor, draw_keys: Tensor) -> tuple[Tensor, Tensor]:
    """``(keep, open)`` ``[R, n]`` bool: kept whatever the rank in the bin, and undecided by the bin alone."""
    rows, n = b.shape
    keep = torch.empty(rows, n, dtype=torch.bool, device=b.device)
    open_ = torch.empty_like(keep)
    idx = torch.arange(n, device=b.device)
    buf = torch.empty(n, dtype=torch.int64, device=b.device)
    for r in range(rows):  # image by image: the [n] temporaries are reused (fresh [R, n] ones cost page faults)
        u = draws_at(idx, draw_keys[r])  # the row's 32-bit draws U
        torch.ge(u, torch.index_select(table[1:], 0, b[r], out=buf), out=keep[r])  # kept whatever the rank
        torch.ge(u, torch.index_select(table, 0, b[r], out=buf), out=open_[r])  # dropped below, whatever the rank
    open_ &= keep.logical_not()  # (void pixels: never kept, never open)
    return keep, open_


def _position_in_bin(key: Tensor, priority: tuple[Tensor, Tensor | None], b: Tensor, void: int, bins: Tensor,
                     r_idx: Tensor, c_idx: Tensor, k_low: int, shift: int, m: int) -> Tensor:
    """For the pixels ``(r_idx, c_idx)`` (bin indices ``bins``), the number of valid pixels of their bin with a
    smaller key: the members of those bins are gathered and sorted by one int64 ``id << (shift + m) | offset << m
    | priority`` (``id``: the bin's rank among the open bins; ``offset``: the key minus the bin's lowest key, 0
    for the zeros). ``b``: ``[R, n]`` int32 bin index of every pixel (``void`` at void pixels)."""
    opened = torch.unique(bins)  # sorted
    low = shift + m
    if (opened.numel() - 1).bit_length() + low > 62:
        raise RuntimeError(f"bernoulli selection: {opened.numel()} open bins do not fit one int64 key")
    active = torch.zeros(void + 1, dtype=torch.bool, device=key.device)
    active[opened] = True
    base, row_keys = priority

    def sort_key(r: Tensor, c: Tensor, first: Tensor) -> Tensor:  # first: the key of the bin's start
        k = key[r, c].to(torch.int64)
        offset = torch.where(k > 0, (k - k_low) & ((1 << shift) - 1), 0)  # key minus the bin's lowest key (0: zeros)
        prio = base[0, c] if row_keys is None else base[0, c] ^ row_keys[r, 0]
        return first | (offset << m) | prio

    mr, mc = active.index_select(0, b.view(-1)).view(b.shape).nonzero(as_tuple=True)
    ordered = sort_key(mr, mc, torch.searchsorted(opened, b[mr, mc].to(torch.int64)) << low).sort().values
    first = torch.searchsorted(opened, bins) << low
    return torch.searchsorted(ordered, sort_key(r_idx, c_idx, first)) - torch.searchsorted(ordered, first)
