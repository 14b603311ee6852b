import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from ddsd import keep_mask
from ddsd._select import float_key, hash_bits, index_bits, kth_smallest
from ddsd.dropout import bernoulli_drop_prob, bernoulli_uniforms, tie_priorities
from tests.reference import ref_keep_mask


@pytest.mark.parametrize("scope", ["per_image", "per_batch"])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("selection", ["hardest", "easiest", "random", "bernoulli"])
@pytest.mark.parametrize("tie_break", ["index", "random"])
def test_keep_mask_matches_reference_with_ties(scope, rate, selection, tie_break):
    d = torch.randint(0, 4, (3, 5, 7)).float() - 1.5  # many ties, negative values too
    valid = torch.rand(3, 5, 7) > 0.3
    valid[2] = False  # an all-void image
    got = keep_mask(d, valid, rate, scope, selection=selection, tie_break=tie_break, seed=9, counter=4)
    assert got.dtype == torch.bool
    nosync = keep_mask(d, valid, rate, scope, selection=selection, tie_break=tie_break, seed=9, counter=4, sync=False)
    assert torch.equal(got, nosync)
    rows, n = (1, 105) if scope == "per_batch" else (3, 35)
    c = torch.tensor(4)
    pri = tie_priorities(rows, n, "random" if selection == "random" else tie_break, 9, c)
    expected = ref_keep_mask(d, valid, rate, scope, selection, pri, bernoulli_uniforms(rows, n, 9, c))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("m", [1, 3, 8, 17])
def test_hash_is_a_seeded_permutation(m):
    idx = torch.arange(1 << m)
    perms = [hash_bits(idx, torch.tensor(s), m) for s in (0, 1, 2**31 + 5)]
    for p in perms:
        assert torch.equal(p.sort().values, idx)
    if m >= 8:
        assert not torch.equal(perms[0], perms[1]) and not torch.equal(perms[1], perms[2])
        shift = (perms[1] - perms[0]) % (1 << m)
        assert len(shift.unique()) > 1, "a new seed must not be a cyclic shift of the old order"


def test_float_key_is_order_preserving():
    x = torch.tensor([-float("inf"), -3.0, -1e-30, -0.0, 0.0, 1e-38, 1.0, 2.0, float("inf")])
    k = float_key(x)
    assert (k[1:] >= k[:-1]).all() and k[3] == k[4] and (k[:3] < k[3]).all() and (k[5:] > k[4]).all()
    assert k.min() >= 0 and k.max() < 2**32
    r = torch.randn(1000)
    assert torch.equal(float_key(r).argsort(), r.argsort())


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 3), n=st.integers(1, 300), bits=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_kth_smallest_matches_sort(rows, n, bits, seed):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randint(0, 2 ** min(bits, 8), (rows, n), generator=g) << max(0, bits - 8)  # ties too
    k = torch.randint(0, n + 1, (rows,), generator=g)
    for sync in (False, True):
        got = kth_smallest(keys, k, bits, allow_sync=sync)
        for r in range(rows):
            want = -1 if int(k[r]) == 0 else int(keys[r].sort().values[int(k[r]) - 1])
            assert int(got[r]) == want


def test_keep_mask_small_shapes_and_tensor_rate():
    assert keep_mask(torch.zeros(1, 1, 1), torch.ones(1, 1, 1, dtype=torch.bool), 0.5).all()
    d = torch.tensor([[[0.3, 0.1, 0.2]]])
    assert keep_mask(d, torch.ones_like(d, dtype=torch.bool), torch.tensor(0.34)).tolist() == [
        [[False, True, True]]
    ]


def test_keep_mask_errors():
    d = torch.rand(1, 2, 2)
    v = torch.ones(1, 2, 2, dtype=torch.bool)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="rate"):
            keep_mask(d, v, bad)
    with pytest.raises(ValueError, match="scope"):
        keep_mask(d, v, 0.1, scope="global")
    with pytest.raises(ValueError, match="valid"):
        keep_mask(d, v.long(), 0.1)
    with pytest.raises(ValueError, match="selection"):
        keep_mask(d, v, 0.1, selection="best")
    with pytest.raises(ValueError, match="tie_break"):
        keep_mask(d, v, 0.1, tie_break="first")


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 3),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    rate=st.floats(0.0, 0.999),
    scope=st.sampled_from(["per_image", "per_batch"]),
    levels=st.integers(1, 5),
    seed=st.integers(0, 10_000),
)
def test_keep_mask_properties(b, h, w, rate, scope, levels, seed):
    g = torch.Generator().manual_seed(seed)
    d = torch.randint(0, levels, (b, h, w), generator=g).float()
    valid = torch.rand(b, h, w, generator=g) > 0.25
    keep = keep_mask(d, valid, rate, scope, seed=seed)
    assert not (keep & ~valid).any(), "an invalid pixel was kept"
    units = [(keep[n], valid[n], d[n]) for n in range(b)] if scope == "per_image" else [(keep, valid, d)]
    for k_u, v_u, d_u in units:
        n_valid = int(v_u.sum())
        assert int(k_u.sum()) == n_valid - math.floor(rate * n_valid)
        dropped = v_u & ~k_u
        if k_u.any() and dropped.any():
            assert d_u[k_u].max() <= d_u[dropped].min()


def test_bernoulli_expected_count():
    """Sum of the drop probabilities = r n exactly for r <= 1/2, within 1/4 pixel above."""
    rates = torch.linspace(0.0, 0.999, 400, dtype=torch.float64)
    for n in range(1, 301):
        p = bernoulli_drop_prob(torch.arange(n).unsqueeze(0), torch.tensor([n]), rates.unsqueeze(1))  # [400, n]
        err = (p.sum(1) - rates * n).abs()
        assert err.max() <= 0.25 + 1e-9
        assert err[rates <= 0.5].max() <= 1e-9 * n
        assert (p >= 0).all() and (p <= 1).all() and (p.diff(dim=1) >= 0).all()


@pytest.mark.parametrize("levels", [None, 3])
@pytest.mark.parametrize("scope", ["per_image", "per_batch"])
def test_sync_free_and_compacting_selection_agree_on_large_inputs(levels, scope):
    """The eager shortcut (gather the few candidates left after one radix pass) and the sync-free passes give
    the same mask, with spread difficulties (shortcut taken) and with massive ties (radix passes)."""
    g = torch.Generator().manual_seed(1)
    shape = (3, 60, 70)
    d = torch.rand(shape, generator=g) if levels is None else torch.randint(0, levels, shape, generator=g).float()
    valid = torch.rand(3, 60, 70, generator=g) > 0.1
    for rate in (0.05, 0.3, 0.77):
        a = keep_mask(d, valid, rate, scope, seed=2, sync=True)
        b = keep_mask(d, valid, rate, scope, seed=2, sync=False)
        assert torch.equal(a, b)
        n = valid.sum((1, 2)) if scope == "per_image" else valid.sum().view(1)
        kept = a.sum((1, 2)) if scope == "per_image" else a.sum().view(1)
        assert kept.tolist() == (n - (rate * n).floor().long()).tolist()


@pytest.mark.parametrize("scope", ["per_image", "per_batch"])
@pytest.mark.parametrize("tie_break", ["random", "index"])
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.75])
@pytest.mark.parametrize("levels", [3, 50, 0])
@pytest.mark.parametrize("selection", ["hardest", "bernoulli"])
def test_eager_selection_equals_sync_free_and_reference(scope, tie_break, rate, levels, selection):
    """The eager selections on d's float bits (allow_sync, non-negative difficulties: ``hardest`` by histogram
    and kthvalue, ``bernoulli`` by bins and exact ranks of the open draws only) keep the same pixels as the
    sync-free paths (radix select / sort on the composite keys) and as the loop reference, with heavy ties (a few
    difficulty levels, a large zero class, -0.0), void pixels and an all-void image."""
    from ddsd.dropout import select_keep

    g = torch.Generator().manual_seed(levels + int(100 * rate))
    d = torch.rand(3, 17, 23, generator=g)
    if levels:
        d = (d * levels).floor() / levels  # ties; levels=3: a third of the pixels at 0
    d[0, 0, :5] = -0.0
    d[1, 2:4] = 1e-30  # tiny values share the lowest buckets
    valid = torch.rand(3, 17, 23, generator=g) > 0.15
    valid[2] = False
    d[~valid] = 7.0  # arbitrary values at void pixels are never kept
    c = torch.tensor(5)
    fast = select_keep(d, valid, rate, scope, selection, tie_break, 3, c, nonneg=True, allow_sync=True)
    radix = select_keep(d, valid, rate, scope, selection, tie_break, 3, c, nonneg=True, allow_sync=False)
    assert torch.equal(fast, radix)
    rows, n = (3, 17 * 23) if scope == "per_image" else (1, 3 * 17 * 23)
    pri = tie_priorities(rows, n, tie_break, 3, c)
    uniforms = bernoulli_uniforms(rows, n, 3, c)
    assert torch.equal(fast, ref_keep_mask(d.clamp(min=0.0), valid, rate, scope, selection, pri, uniforms))


@pytest.mark.parametrize("scope", ["per_image", "per_batch"])
@pytest.mark.parametrize("tie_break", ["random", "index"])
def test_bernoulli_bins_resolve_open_draws_exactly_on_large_inputs(scope, tie_break, monkeypatch):
    """Images of 128 x 96 with a 40 % zero class, a block of equal non-zero difficulties and spread values: the
    binned selection needs exact ranks for open draws in zero bins and in difficulty bins (both seen), and its
    mask equals the sorting implementation's at rates on both sides of 1/2 (clipped probabilities)."""
    import ddsd._bernoulli as bern
    from ddsd.dropout import select_keep

    seen: list[Tensor] = []
    original = bern._position_in_bin

    def spy(*args):
        seen.append(args[4].clone())  # the open pixels' bin indices (row * (nbins + 1) + bin)
        return original(*args)

    monkeypatch.setattr(bern, "_position_in_bin", spy)
    g = torch.Generator().manual_seed(7)
    d = torch.exp(torch.randn(3, 128, 96, generator=g) * 2 - 3)
    d[torch.rand(d.shape, generator=g) < 0.4] = 0.0
    d[:, 10:30, 10:40] = 0.125  # a tie group inside one difficulty bin
    valid = torch.rand(d.shape, generator=g) > 0.05
    for step, rate in enumerate((0.02, 0.3, 0.5, 0.8)):
        c = torch.tensor(step)
        fast = select_keep(d, valid, rate, scope, "bernoulli", tie_break, 1, c, nonneg=True, allow_sync=True)
        slow = select_keep(d, valid, rate, scope, "bernoulli", tie_break, 1, c, nonneg=True, allow_sync=False)
        assert torch.equal(fast, slow)
    n = d[0].numel() if scope == "per_image" else d.numel()
    w, z = bern._widths(n, index_bits(n))
    local = torch.cat(seen) % ((1 << z) + (1 << w) + 1)  # -> bin within its unit
    assert (local < (1 << z)).any() and (local >= (1 << z)).any()  # open draws among the zeros and elsewhere


def test_draw_threshold_is_the_float_comparison():
    """``(U + 1/2) 2^-32 >= p  <=>  U >= ceil(p 2^32 - 1/2)`` for draws next to every threshold and p in [0, 1]."""
    from ddsd._bernoulli import draw_threshold

    g = torch.Generator().manual_seed(0)
    p = torch.cat([torch.rand(2000, generator=g, dtype=torch.float64), torch.tensor([0.0, 1.0, 2.0**-33, 0.5]),
                   (torch.randint(0, 2**32, (200,), generator=g).double() + 0.5) * 2.0**-32])  # p equal to a draw
    t = draw_threshold(p)
    for delta in (-2, -1, 0, 1):
        u_int = (t + delta).clamp(0, 2**32 - 1)
        assert torch.equal(u_int >= t, (u_int.double() + 0.5) * 2.0**-32 >= p)
