import pytest
import torch

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


@pytest.mark.parametrize("kind", ["kl", "target_gap", "l1"])
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
    for kind in ("kl", "target_gap", "l1"):
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
