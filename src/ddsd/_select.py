"""Sync-free building blocks of the pixel selection: order-preserving integer keys, a counter-based hash
(seeded random order without a ``torch.Generator``) and an exact k-th smallest by radix (histogram) select.

Everything here is batched tensor code with static shapes: no host sync, no data-dependent Python value, so
``torch.compile(fullgraph=True)`` traces it and a new rate or seed (tensors) never recompiles.

* :func:`float_key`: ``float32 -> int64`` in ``[0, 2^32)``, strictly monotone (``-0.0`` counts as ``+0.0``).
* :func:`hash_bits`: a keyed bijection of ``[0, 2^m)`` (two rounds of xor a key, multiply by an odd constant
  mod ``2^m``, xorshift; multipliers below ``2^31`` so that int64 products never overflow); 8 integer ops per
  pixel.
  Applied to flat pixel indices it gives distinct, seeded pseudo-random priorities (a random permutation).
* :func:`kth_smallest`: per row of an int64 key matrix ``[R, n]`` (keys in ``[0, 2^bits)``) and a per-row
  rank ``k`` (tensor, ``1 <= k <= n``), the k-th smallest key, exactly, in ``ceil(bits / digit)`` passes (digit
  ``log2(n) - 3`` bits, 8 to 16); each pass is one fixed-size histogram (``scatter_add_``) of a
  digit of the keys that still share the found prefix, one
  cumulative sum over the bins and one binary search. O(n) per pass, no sort.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "DIGIT_BITS",
    "float_key",
    "hash_bits",
    "index_bits",
    "kth_smallest",
    "nonneg_float_key",
    "row_counts",
    "seed_offset",
    "smallest_keep_eager",
]

DIGIT_BITS = 16
_M1, _M2 = 0x45D9F3B, 0x2C1B3C6D  # odd, < 2^31: (x < 2^32) * M < 2^63, no int64 overflow
_MASK32 = (1 << 32) - 1


def index_bits(n: int) -> int:
    """Bits ``m >= 1`` such that every flat index ``0..n-1`` fits in ``[0, 2^m)`` (a static shape fact)."""
    return max(1, (int(n) - 1).bit_length())


def float_key(x: Tensor) -> Tensor:
    """Order-preserving ``int64`` key in ``[0, 2^32)`` of a float32 tensor: ``x < y  <=>  key(x) < key(y)``.

    Positive floats' IEEE bits grow with the value; negative ones shrink, so they are mirrored below ``2^31``.
    ``-0.0`` is mapped like ``+0.0`` (``x + 0.0``). NaN gets a key above ``+inf`` (callers pass no NaN).
    """
    bits = (x.float() + 0.0).view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits + (1 << 31), -1 - bits)


def _mix(x: Tensor, m: int) -> Tensor:
    """Bijection of ``[0, 2^m)``: xorshift / odd multiply mod ``2^m`` rounds (each step is invertible)."""
    mask = (1 << m) - 1
    s = max(1, m // 2)
    x = x ^ (x >> s)
    x = (x * _M1) & mask
    x = x ^ (x >> max(1, s - 1))
    x = (x * _M2) & mask
    return x ^ (x >> s)


def seed_offset(seed: int, counter: Tensor, stream: int) -> Tensor:
    """A 32-bit offset per (seed, counter, stream): ``0-d int64`` tensor computed on the counter's device."""
    base = (int(seed) * 0x9E3779B1 + int(stream) * 0x632BE5AB) & _MASK32
    return _mix((counter.to(torch.int64) * 2654435761 + base) & _MASK32, 32)


def nonneg_float_key(x: Tensor) -> Tensor:
    """Order-preserving ``int64`` key in ``[0, 2^31)`` of a float32 tensor that is ``>= 0`` (clamped): the IEEE
    bits of a non-negative float grow with its value. One bit and two integer ops fewer than :func:`float_key`."""
    return x.float().view(torch.int32).to(torch.int64).clamp_(min=0)  # -0.0 (and any negative) -> key of +0.0


def hash_bits(index: Tensor, offset: Tensor, m: int) -> Tensor:
    """Seeded pseudo-random priorities, a bijection of ``[0, 2^m)`` keyed by ``offset``: two rounds of
    ``x <- xorshift((x xor key_j) * M_j mod 2^m)`` with two keys drawn from the offset (keys enter by xor before
    a non-linear step: a plain added key would make every seed's order a cyclic shift of one pattern).
    ``index``: int64 in ``[0, 2^m)``; ``offset``: int64 tensor broadcastable to it (``[R, 1]``: one per row)."""
    mask = (1 << m) - 1
    s = max(1, m // 2)
    k1 = _mix(offset & _MASK32, 32) & mask
    k2 = _mix((offset ^ 0x5BD1E995) & _MASK32, 32) & mask
    x = torch.bitwise_xor(index, k1)  # the only [R, n] allocation besides two shift temporaries
    x.mul_(_M1).bitwise_and_(mask)
    x.bitwise_xor_(x >> s)
    x.bitwise_xor_(k2).mul_(_M2).bitwise_and_(mask)
    return x.bitwise_xor_(x >> max(1, s - 1))


def _widths(bits: int, n: int) -> list[int]:
    """Digit widths, most significant first: at most ``min(2^DIGIT_BITS, ~n / 8)`` bins per row (at least
    ``2^8``), so the histogram and its cumulative sum stay small next to the keys, and as few passes as those
    widths allow (on one CPU thread 12- to 17-bit digits measured within noise of each other for 65k-173k
    pixels per image)."""
    digit = max(8, min(DIGIT_BITS, index_bits(n) - 3))
    passes = -(-int(bits) // digit)
    base, extra = divmod(int(bits), passes)
    return [base + 1] * extra + [base] * (passes - extra)


def kth_smallest(keys: Tensor, k: Tensor, bits: int, allow_sync: bool = False) -> Tensor:
    """The ``k[r]``-th smallest (1-based) key of each row ``r`` of ``keys``, exactly, by radix select.

    Args:
        keys: ``[R, n]`` int64, every value in ``[0, 2^bits)``.
        k: ``[R]`` int64 ranks; rows with ``k <= 0`` return ``-1`` (below every key), ``k > n`` is not allowed.
        bits: static key width, ``1 <= bits <= 62``.
        allow_sync: after the first pass, when every row's remaining candidates (the keys in the bucket that
            holds the k-th) are at most ``n / 8``, gather them (``nonzero``: host syncs, dynamic shapes, so eager
            only) and sort them instead of the remaining passes; the same result, faster when the difficulties
            are spread (typically a few percent of the pixels remain), the radix passes otherwise.

    Returns:
        ``[R]`` int64 thresholds ``t`` with ``#{keys[r] <= t} >= k[r]`` and ``#{keys[r] < t} < k[r]``; with
        distinct keys ``keys[r] <= t`` holds for exactly ``k[r]`` entries.

    One int64 and two bool ``[R, n]`` work buffers are allocated once and reused by every pass (on CPU a fresh
    large tensor costs its page faults, more than the arithmetic).
    """
    rows, n = keys.shape
    rem = k.clamp(min=1).to(torch.int64).unsqueeze(1)
    prefix = torch.zeros(rows, 1, dtype=torch.int64, device=keys.device)
    x = torch.empty_like(keys)
    off, above = (torch.empty(keys.shape, dtype=torch.bool, device=keys.device) for _ in range(2))
    ones = torch.ones(1, dtype=torch.int64, device=keys.device).expand(keys.numel())  # stride 0: no allocation
    top = int(bits)
    for width in _widths(bits, n):
        shift = top - width
        nbins = 1 << width
        torch.bitwise_right_shift(keys, shift, out=x)  # prefix bits found so far, then this pass's digit
        if top < bits:
            # only keys in [prefix << top, (prefix + 1) << top) are still candidates; the others go to a dump bin
            torch.lt(keys, prefix << top, out=off)
            off.logical_or_(torch.ge(keys, (prefix + 1) << top, out=above))
            x.bitwise_and_(nbins - 1)
        if rows > 1:
            x.add_(torch.arange(rows, device=keys.device).unsqueeze(1) * nbins)
        if top < bits:
            x.masked_fill_(off, rows * nbins)
        # fixed-size histogram (bincount's output size would be data-dependent, and it scans for min / max)
        hist = torch.zeros(rows * nbins + 1, dtype=torch.int64, device=keys.device)
        hist.scatter_add_(0, x.reshape(-1), ones)
        cum = hist[: rows * nbins].view(rows, nbins).cumsum(1)
        bucket = torch.searchsorted(cum, rem)  # [R, 1]: first bin whose cumulative count reaches rem
        below = torch.where(bucket > 0, cum.gather(1, (bucket - 1).clamp(min=0)), 0)
        rem = rem - below
        prefix = (prefix << width) | bucket
        top = shift
        if allow_sync and shift > 0:
            in_bucket = hist[: rows * nbins].view(rows, nbins).gather(1, bucket.clamp(max=nbins - 1))
            if int(in_bucket.max()) <= n // 8:  # host sync: eager only
                return torch.where(k > 0, _kth_among(keys, prefix << shift, shift, rem, in_bucket), -1)
    return torch.where(k > 0, prefix.squeeze(1), -1)


def _kth_among(keys: Tensor, low: Tensor, shift: int, rem: Tensor, counts: Tensor) -> Tensor:
    """The ``rem``-th smallest of each row's keys in ``[low, low + 2^shift)`` (``counts`` of them): the
    candidates are gathered into a ``[R, max count]`` matrix (padded with the largest int64) and sorted."""
    rows = keys.shape[0]
    cand = (keys >= low) & (keys < low + (1 << shift))
    r_idx, c_idx = cand.nonzero(as_tuple=True)
    width = max(1, int(counts.max()))
    start = counts.reshape(-1).cumsum(0) - counts.reshape(-1)  # first flat position of each row's candidates
    pos = torch.arange(r_idx.numel(), device=keys.device) - start[r_idx]
    packed = torch.full((rows, width), torch.iinfo(torch.int64).max, dtype=torch.int64, device=keys.device)
    packed[r_idx, pos] = keys[r_idx, c_idx]
    return packed.sort(1).values.gather(1, (rem - 1).clamp(0, width - 1)).squeeze(1)


def row_counts(mask: Tensor) -> Tensor:
    """``[R]`` int64 number of True entries per row of a bool ``[R, n]`` mask: for a few rows one
    ``count_nonzero`` per row (``count_nonzero(dim=1)`` first converts the whole mask to int64)."""
    if mask.shape[0] > 8:
        return torch.count_nonzero(mask, dim=1)
    return torch.stack([torch.count_nonzero(row) for row in mask])


def smallest_keep_eager(d: Tensor, valid: Tensor, k: Tensor, priorities: Callable[[], Tensor]) -> Tensor:
    """Eager (host syncs) keep mask of the ``k[r]`` valid entries of each row of ``d`` with the smallest values,
    ties ordered by ``priorities()`` (``[R, n]`` int64, distinct per row; smaller kept first, only built when a
    tie straddles the threshold): the same mask as :func:`kth_smallest` on the keys ``(bits(d) << m) | priority``
    at a fraction of the cost, working on ``d``'s float32 bits (no ``[R, n]`` int64 keys).

    ``d``: contiguous float32 ``[R, n]``, ``>= 0`` (``-0.0`` counts as ``+0.0``), no NaN; ``valid``: bool
    ``[R, n]``; ``k``: ``[R]`` int64 with ``0 <= k[r] <= #valid in row r``. One histogram of the top bits
    (exponent and a few mantissa bits: ``int32``, ``bincount``), then per row the candidates in the bucket that
    holds the k-th value (``masked_select``) and their ``kthvalue``; ``d <= threshold`` gives the mask, and only
    rows where more than ``k`` entries equal or fall below the threshold are resolved by the priorities.
    """
    rows, n = d.shape
    width = max(8, min(DIGIT_BITS, index_bits(n) - 3))
    nbins = 1 << width
    idx = torch.bitwise_right_shift(d.view(torch.int32), 31 - width).clamp_(min=0)  # bucket of the top bits
    if rows > 1:
        idx.add_(torch.arange(rows, dtype=torch.int32, device=d.device).unsqueeze(1) * nbins)
    idx.masked_fill_(~valid, rows * nbins)  # invalid entries: a dump bin after every row's bins
    cum = torch.bincount(idx.view(-1), minlength=rows * nbins + 1)[: rows * nbins].view(rows, nbins).cumsum(1)
    rank = k.clamp(min=1).unsqueeze(1)
    bucket = torch.searchsorted(cum, rank).clamp_(max=nbins - 1)  # [R, 1]: the bin holding the k-th value
    rank = rank - torch.where(bucket > 0, cum.gather(1, (bucket - 1).clamp(min=0)), 0)
    if rows > 1:
        bucket += torch.arange(rows, device=d.device).unsqueeze(1) * nbins
    cand = idx == bucket.to(torch.int32)  # (an int64 operand would promote, i.e. copy, the int32 buckets)
    thresholds = []
    for r, (kr, rr) in enumerate(zip(k.tolist(), rank.view(-1).tolist(), strict=True)):
        values = d[r].masked_select(cand[r]) if kr > 0 else d.new_empty(0)
        thresholds.append(values.kthvalue(rr).values if kr > 0 else d.new_tensor(float("-inf")))
    thr = torch.stack(thresholds).unsqueeze(1)
    keep = valid & (d <= thr)
    over = (row_counts(keep) > k).tolist()
    if any(over):  # a tie at the threshold: keep the tied entries with the smallest priorities
        prio = priorities()
        below = valid & (d < thr)
        need = (k - row_counts(below)).tolist()
        for r in (r for r, o in enumerate(over) if o):
            tie = valid[r] & (d[r] == thr[r])
            cut = prio[r].masked_select(tie).kthvalue(need[r]).values
            keep[r] = below[r] | (tie & (prio[r] <= cut))
    return keep
