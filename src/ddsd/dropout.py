"""Step 3 of the method: dynamic dropout, i.e. which pixels keep their distillation term.

Given difficulties ``d`` and a rate ``r in [0, 1)``, in each scope unit ``U`` (one image for ``per_image``, the
whole batch for ``per_batch``) with ``n = |V_U|`` valid pixels, the ``selection`` decides which are dropped:

* ``hardest`` (this function's default; ``DDSDLoss`` defaults to ``bernoulli`` since round 2): exactly
  ``floor(r n)`` valid pixels with the largest difficulty are dropped, the ``n - floor(r n)`` easiest are kept;
* ``easiest``: the same count, the smallest difficulties dropped (a control);
* ``random``: the same count, a uniformly random subset (a control: is the ranking what helps?);
* ``bernoulli``: the literal "dropout" reading: every valid pixel is dropped independently with probability
  ``p_i = min(1, g(r) x_i)``, ``x_i = (rank_i + 1/2) / n`` its normalised difficulty rank (rank 0 = easiest,
  ties ordered by ``tie_break``), ``g(r) = 2r`` for ``r <= 1/2`` and ``1 / (2(1 - r))`` above; the expected
  dropped share is exactly ``r`` for ``r <= 1/2`` and ``r`` within ``1/(4n)`` above (midpoint rule on the
  kinked line ``min(1, x / (2(1 - r)))``, whose integral over ``[0, 1]`` is ``r``). Redrawn every step.

Ties (equal difficulties): ``tie_break="random"`` (default) orders them by a seeded pseudo-random permutation
of the pixels, redrawn every step (no spatial bias: with ``index``, the legacy rule, the bottom rows of an image
were dropped first among equal difficulties); ``"index"`` by flat pixel index (lower index kept first, flat over
the batch for ``per_batch``). Randomness comes from :func:`ddsd._select.hash_bits` of the pixel index with an
offset derived from ``(seed, counter)``: deterministic, identical on CPU / CUDA / compiled, and resumable by
saving the counter (no ``torch.Generator`` state).

Cost: ``hardest`` / ``easiest`` / ``random`` are O(N): one unique int64 key per pixel (difficulty bits, then
priority bits) and an exact radix select of the k-th key per unit (:func:`ddsd._select.kth_smallest`), then one
comparison; no sort, no host sync, so the rate (a tensor) changes without recompiling a compiled step.
``bernoulli`` needs ranks: in eager with non-negative difficulties only those of the few pixels whose draw
depends on them (:mod:`ddsd._bernoulli`: bins, one histogram, exact ranks of the open draws), otherwise (compiled,
negative difficulties) one sort per unit (O(N log N)); both give the same mask.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.profiler import record_function

from ddsd._bernoulli import PRIORITIES, bernoulli_keep_eager, draw_threshold, draws_at, drop_prob, rate_gain
from ddsd._select import (
    float_key,
    hash_bits,
    index_bits,
    kth_smallest,
    nonneg_float_key,
    row_counts,
    seed_offset,
    smallest_keep_eager,
)

__all__ = [
    "SCOPES",
    "SELECTIONS",
    "TIE_BREAKS",
    "bernoulli_draw_keys",
    "bernoulli_draws",
    "bernoulli_drop_prob",
    "bernoulli_uniforms",
    "check_scope",
    "check_selection",
    "check_tie_break",
    "keep_counts",
    "keep_mask",
    "select_keep",
    "threshold_keep_mask",
    "tie_priorities",
]

SCOPES = ("per_image", "per_batch")
SELECTIONS = ("hardest", "random", "easiest", "bernoulli")
TIE_BREAKS = ("random", "index")
_STREAM_TIES, _STREAM_BERNOULLI = 1, 2


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"{name} must be one of {valid}, got {value!r}")
    return value


def check_scope(scope: str) -> str:
    """Validate a scope name."""
    return _check_choice("scope", scope, SCOPES)


def check_selection(selection: str) -> str:
    """Validate a selection name."""
    return _check_choice("selection", selection, SELECTIONS)


def check_tie_break(tie_break: str) -> str:
    """Validate a tie-break name."""
    return _check_choice("tie_break", tie_break, TIE_BREAKS)


def keep_counts(num_valid: Tensor, rate: float | Tensor) -> Tensor:
    """``|V| - floor(rate * |V|)`` per unit, in float64 arithmetic (as Python's ``math.floor`` would do)."""
    n = num_valid.to(torch.float64)
    r = torch.as_tensor(rate, dtype=torch.float64, device=n.device)
    return (n - torch.floor(r * n)).to(torch.int64)


def bernoulli_drop_prob(rank: Tensor, num_valid: Tensor, rate: float | Tensor) -> Tensor:
    """``p = min(1, g(r) (rank + 1/2) / n)``, ``g(r) = 2r`` (``r <= 1/2``) else ``1 / (2(1 - r))`` (float64).

    ``rank``: 0-based difficulty rank among the unit's ``n`` valid pixels (``[R, N]``), ``num_valid``: ``[R]``.
    """
    return drop_prob(rank, num_valid.unsqueeze(1), rate_gain(rate, rank.device))


def _check_rate(rate: float | Tensor) -> None:
    if isinstance(rate, Tensor):
        if rate.numel() != 1:
            raise ValueError(f"rate must be a scalar, got a tensor of shape {tuple(rate.shape)}")
    value = float(rate)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"rate must be in [0, 1), got {rate!r}")


def keep_mask(
    difficulty: Tensor,
    valid: Tensor,
    rate: float | Tensor,
    scope: str = "per_image",
    *,
    selection: str = "hardest",
    tie_break: str = "random",
    seed: int = 0,
    counter: int | Tensor = 0,
    sync: bool = True,
) -> Tensor:
    """Boolean mask of the pixels whose distillation term is kept.

    Args:
        difficulty: ``[B, H, W]`` float, per-pixel difficulty (no NaN).
        valid: ``[B, H, W]`` bool, True for non-void pixels.
        rate: dropout rate ``r in [0, 1)`` (a Python float or a 0-d tensor).
        scope: ``"per_image"`` (rank within each image) or ``"per_batch"`` (rank over the whole batch).
        selection: ``"hardest" | "random" | "easiest" | "bernoulli"`` (module docstring).
        tie_break: ``"random"`` (seeded random order among equal difficulties) or ``"index"`` (flat index).
        seed, counter: the random stream (same ``(seed, counter)`` -> same mask); a loss advances ``counter``
            once per training step.
        sync: allow host syncs in the selection (faster in eager, the same mask); ``False`` for compiled code.

    Returns:
        ``keep: [B, H, W]`` bool, never True at an invalid pixel; for ``hardest`` per unit exactly
        ``|V| - floor(r |V|)`` True entries, every kept pixel's difficulty ``<=`` every dropped valid pixel's.
    """
    check_scope(scope)
    check_selection(selection)
    check_tie_break(tie_break)
    if difficulty.dim() != 3:
        raise ValueError(f"difficulty must be [B, H, W], got shape {tuple(difficulty.shape)}")
    if valid.shape != difficulty.shape or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be a bool tensor of the difficulty's shape {tuple(difficulty.shape)}, "
            f"got {valid.dtype} {tuple(valid.shape)}"
        )
    _check_rate(rate)
    counter = torch.as_tensor(counter, dtype=torch.int64, device=difficulty.device)
    return select_keep(difficulty, valid, rate, scope, selection, tie_break, seed, counter, allow_sync=sync)


def _row_offsets(rows: int, seed: int, counter: Tensor | None, stream: int, device) -> Tensor:
    c = torch.zeros((), dtype=torch.int64, device=device) if counter is None else counter
    return (seed_offset(seed, c, stream) + 0x61C88647 * torch.arange(rows, device=device)).unsqueeze(1)


def tie_priorities(
    rows: int, n: int, tie_break: str, seed: int = 0, counter: Tensor | None = None, device=None
) -> Tensor:
    """``[R, n]`` int64 priorities, distinct within each row, in ``[0, 2^m)`` (``m = index_bits(n)``): the
    flat index (``"index"``) or a seeded pseudo-random permutation of it (``"random"``): one keyed hash
    permutation ``P`` of ``0..n-1`` per step, and per row ``P xor k_r`` with a per-row key (xor with a constant
    is a bijection of ``[0, 2^m)``, so rows stay distinct; one hash over ``n``, not ``R n``, values).
    Pixels of equal difficulty are ranked by this priority (smaller = easier = kept first)."""
    base, row_keys = _priority_parts(rows, n, tie_break, seed, counter, device)
    return base.expand(rows, n) if row_keys is None else base ^ row_keys


def _priority_parts(rows: int, n: int, tie_break: str, seed: int, counter: Tensor | None, device):
    """:func:`tie_priorities` as ``(base [1, n], row_keys [R, 1] or None)``: priority ``= base xor row_key``."""
    if tie_break == "index":
        return torch.arange(n, device=device, dtype=torch.int64).unsqueeze(0), None
    return _tie_parts(rows, n, seed, counter, device)


def _tie_parts(rows: int, n: int, seed: int, counter: Tensor | None, device) -> tuple[Tensor, Tensor | None]:
    """The random priorities as ``base [1, n]`` (one keyed permutation) and ``row_keys [R, 1]`` (None for R = 1):
    priority ``= base xor row_key``."""
    m = index_bits(n)
    idx = torch.arange(n, device=device, dtype=torch.int64).unsqueeze(0)
    offsets = _row_offsets(rows, seed, counter, _STREAM_TIES, device)  # [R, 1]
    base = hash_bits(idx, offsets[:1], m)
    return base, (None if rows == 1 else hash_bits(torch.zeros_like(offsets), offsets, m))


def bernoulli_draws(rows: int, n: int, seed: int = 0, counter: Tensor | None = None, device=None) -> Tensor:
    """``[R, n]`` int64 32-bit draws ``U`` (a keyed hash of the pixel index, a stream of its own)."""
    idx = torch.arange(n, device=device, dtype=torch.int64).unsqueeze(0)
    return draws_at(idx, bernoulli_draw_keys(rows, seed, counter, device))


def bernoulli_draw_keys(rows: int, seed: int = 0, counter: Tensor | None = None, device=None) -> Tensor:
    """``[R, 1]`` int64 keys of the units' draws: pixel ``(r, c)`` draws ``draws_at(c, keys[r])``."""
    return _row_offsets(rows, seed, counter, _STREAM_BERNOULLI, device)


def bernoulli_uniforms(rows: int, n: int, seed: int = 0, counter: Tensor | None = None, device=None) -> Tensor:
    """``[R, n]`` float64 uniforms ``u = (U + 1/2) 2^-32`` in ``(0, 1)`` of the draws :func:`bernoulli_draws`."""
    return (bernoulli_draws(rows, n, seed, counter, device).to(torch.float64) + 0.5) * 2.0**-32


def select_keep(
    difficulty: Tensor,
    valid: Tensor,
    rate: float | Tensor,
    scope: str,
    selection: str = "hardest",
    tie_break: str = "index",
    seed: int = 0,
    counter: Tensor | None = None,
    nonneg: bool = False,
    allow_sync: bool = False,
) -> Tensor:
    """:func:`keep_mask` without argument checks, for hot paths. ``nonneg=True`` promises difficulties ``>= 0``
    (a 31-bit key: sometimes one radix pass fewer). With ``allow_sync=False`` no host sync (compiles with
    fullgraph); ``True`` lets the selection finish on the few remaining candidates (same result, faster in
    eager: :func:`ddsd._select.kth_smallest`)."""
    rows = 1 if scope == "per_batch" else difficulty.shape[0]
    d = difficulty.detach().reshape(rows, -1)
    v = valid.reshape(rows, -1)
    n = d.shape[1]
    m = index_bits(n)
    if allow_sync and nonneg and selection == "hardest" and d.dtype == torch.float32:
        keep = smallest_keep_eager(
            d.contiguous(), v, keep_counts(row_counts(v), rate),
            lambda: tie_priorities(rows, n, tie_break, seed, counter, d.device),
        )
        return keep.reshape(difficulty.shape)
    if allow_sync and nonneg and selection == "bernoulli" and d.dtype == torch.float32:
        with record_function(PRIORITIES):  # eager only (host syncs): a profiler label is free
            keys = bernoulli_draw_keys(rows, seed, counter, d.device)
            parts, counts = _priority_parts(rows, n, tie_break, seed, counter, d.device), row_counts(v)
        keep = bernoulli_keep_eager(d.contiguous(), v, counts, rate, keys, parts, m)
        return keep.reshape(difficulty.shape)
    if selection == "random":
        keys, bits = tie_priorities(rows, n, "random", seed, counter, d.device).masked_fill(~v, 1 << m), m + 1
    else:
        keys, dbits = (nonneg_float_key(d), 31) if nonneg else (float_key(d), 32)
        if selection == "easiest":
            keys.neg_().add_((1 << dbits) - 1)
        # key = difficulty bits, then the tie priority (base xor row key: the xor acts on the low m bits only)
        keys.bitwise_left_shift_(m)
        if tie_break == "index":
            keys.bitwise_or_(torch.arange(n, device=d.device))
        else:
            base, row_keys = _tie_parts(rows, n, seed, counter, d.device)
            keys.bitwise_or_(base)
            if row_keys is not None:
                keys.bitwise_xor_(row_keys)
        bits = dbits + m
        keys.masked_fill_(~v, (1 << bits) - 1)  # invalid pixels rank after every valid one
    n_valid = torch.count_nonzero(v, dim=1)  # (a bool .sum() would first copy the mask to int64)
    if selection == "bernoulli":
        order = keys.argsort(dim=1)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=d.device).expand(rows, n))
        draws = bernoulli_draws(rows, n, seed, counter, d.device)  # u >= p  <=>  U >= ceil(p 2^32 - 1/2)
        keep = v & (draws >= draw_threshold(bernoulli_drop_prob(rank, n_valid, rate)))
    else:
        k = keep_counts(n_valid, rate)
        keep = keys <= kth_smallest(keys, k, bits, allow_sync=allow_sync).unsqueeze(1)
    return keep.reshape(difficulty.shape)


def threshold_keep_mask(difficulty: Tensor, valid: Tensor, tau: float | Tensor) -> Tensor:
    """Keep the valid pixels with ``d_i <= tau`` (the ``threshold`` schedule): ``[B, H, W]`` bool."""
    return valid & (difficulty.detach() <= tau)
