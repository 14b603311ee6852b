import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddsd import keep_mask
from tests.reference import ref_keep_mask


@pytest.mark.parametrize("scope", ["per_image", "per_batch"])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_keep_mask_matches_reference_with_ties(scope, rate):
    d = torch.randint(0, 4, (3, 5, 7)).float()  # many ties
    valid = torch.rand(3, 5, 7) > 0.3
    valid[2] = False  # an all-void image
    got = keep_mask(d, valid, rate, scope)
    assert got.dtype == torch.bool
    assert torch.equal(got, ref_keep_mask(d, valid, rate, scope))


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
    keep = keep_mask(d, valid, rate, scope)
    assert not (keep & ~valid).any(), "an invalid pixel was kept"
    units = [(keep[n], valid[n], d[n]) for n in range(b)] if scope == "per_image" else [(keep, valid, d)]
    for k_u, v_u, d_u in units:
        n_valid = int(v_u.sum())
        assert int(k_u.sum()) == n_valid - math.floor(rate * n_valid)
        dropped = v_u & ~k_u
        if k_u.any() and dropped.any():
            assert d_u[k_u].max() <= d_u[dropped].min()
