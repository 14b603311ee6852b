import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddsd import pixel_difficulty, teacher_probs, virtual_teacher
from tests.reference import ref_difficulty, ref_virtual_teacher


def _target(bsz=2, k=4, h=5, w=6, void=0.2):
    y = torch.randint(0, k, (bsz, h, w))
    y[torch.rand(bsz, h, w) < void] = 255
    return y


@pytest.mark.parametrize("k,a", [(2, 0.9), (4, 0.7), (11, 1.0), (3, 0.34)])
def test_virtual_teacher_matches_reference(k, a):
    y = _target(k=k)
    pt = virtual_teacher(y, k, a)
    assert pt.shape == (2, k, 5, 6)
    torch.testing.assert_close(pt.double(), ref_virtual_teacher(y, k, a))
    valid = y != 255
    assert (pt.argmax(1)[valid] == y[valid]).all()
    torch.testing.assert_close(pt.sum(1), torch.ones(2, 5, 6))


def test_virtual_teacher_one_hot_and_errors():
    y = torch.tensor([[[0, 1], [2, 255]]])
    pt = virtual_teacher(y, 3, 1.0)
    assert pt[0, :, 0, 1].tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="confidence"):
        virtual_teacher(y, 3, 1 / 3)
    with pytest.raises(ValueError, match="confidence"):
        virtual_teacher(y, 2, 0.4)
    with pytest.raises(ValueError, match="value 5"):
        virtual_teacher(torch.tensor([[[5]]]), 3, 0.9)


def test_teacher_probs_resizes_without_grad():
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    p = teacher_probs(z, (8, 12), temperature=2.0)
    assert p.shape == (2, 3, 8, 12) and not p.requires_grad
    torch.testing.assert_close(p.sum(1), torch.ones(2, 8, 12))
    same = teacher_probs(z, (4, 4), temperature=2.0)
    torch.testing.assert_close(same, torch.softmax(z.detach() / 2.0, 1))


@pytest.mark.parametrize("kind", ["one_sided_kl", "kl", "target_gap", "l1"])
@pytest.mark.parametrize("t", [1.0, 2.5])
def test_difficulty_matches_reference(kind, t):
    y = _target(k=3)
    z = torch.randn(2, 3, 5, 6, requires_grad=True)
    pt = virtual_teacher(y, 3, 0.8)
    d = pixel_difficulty(z, pt, y, kind=kind, temperature=t)
    assert d.shape == (2, 5, 6) and not d.requires_grad and (d >= 0).all()
    torch.testing.assert_close(d.double(), ref_difficulty(z.detach(), pt, y, kind, t), atol=1e-5, rtol=1e-5)


def test_difficulty_network_teacher_without_target():
    z, zt = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    pt = torch.softmax(zt, 1)
    for kind in ("one_sided_kl", "kl", "target_gap", "l1"):
        d = pixel_difficulty(z, pt, None, kind=kind)
        torch.testing.assert_close(d.double(), ref_difficulty(z, pt, None, kind), atol=1e-5, rtol=1e-5)


def test_difficulty_errors():
    z = torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match="kind"):
        pixel_difficulty(z, torch.softmax(z, 1), kind="bogus")
    with pytest.raises(ValueError, match="shape"):
        pixel_difficulty(z, torch.rand(1, 3, 3, 3))
    with pytest.raises(TypeError, match="floating"):
        pixel_difficulty(z.long(), torch.softmax(z, 1))


def _margin_logits(margin, k, others=None):
    """Logits ``[1, K, 1, 1]`` of one pixel with target 0: ``z_0 = margin + max(others)``, others fixed."""
    others = torch.zeros(k - 1, dtype=torch.float64) if others is None else others
    return torch.cat([(margin + others.max()).view(1), others]).view(1, k, 1, 1)


def test_one_sided_kl_vs_kl_the_issue_example():
    # a = 0.9, T = 1, K = 2: kl scores a confidently right pixel (margin 8) as harder than a boundary pixel
    y = torch.zeros(1, 1, 1, dtype=torch.long)
    pt = virtual_teacher(y, 2, 0.9).double()
    kl = [float(pixel_difficulty(_margin_logits(m, 2), pt, y, "kl")) for m in (8.0, 0.0)]
    one = [float(pixel_difficulty(_margin_logits(m, 2), pt, y, "one_sided_kl")) for m in (8.0, 0.0)]
    assert kl[0] == pytest.approx(0.475, abs=1e-3) and kl[1] == pytest.approx(0.368, abs=1e-3)
    assert kl[0] > kl[1], "kl is not monotone in the student's error"
    assert one[0] == 0.0 and one[1] == pytest.approx(kl[1])


@settings(max_examples=150, deadline=None)
@given(
    k=st.integers(2, 12),
    a_frac=st.floats(0.0, 1.0),
    t=st.floats(0.25, 8.0),
    m1=st.floats(-20.0, 20.0),
    m2=st.floats(-20.0, 20.0),
    seed=st.integers(0, 1000),
)
def test_one_sided_kl_is_monotone_in_the_error(k, a_frac, t, m1, m2, seed):
    """Raising the target logit (other logits fixed, so the student's error shrinks) never raises d."""
    a = 1.0 / k + (1.0 - 1.0 / k) * max(a_frac, 1e-3)  # a in (1/K, 1]
    y = torch.zeros(1, 1, 1, dtype=torch.long)
    pt = virtual_teacher(y, k, a).double()
    others = torch.randn(k - 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    lo, hi = min(m1, m2), max(m1, m2)
    d_lo, d_hi = (
        float(pixel_difficulty(_margin_logits(m, k, others), pt, y, "one_sided_kl", temperature=t)) for m in (lo, hi)
    )
    assert d_hi <= d_lo + 1e-9
    assert d_lo >= 0.0 and math.isfinite(d_lo)
