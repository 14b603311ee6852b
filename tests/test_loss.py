import math

import pytest
import torch
import torch.nn.functional as F

from ddsd.schedules import Capability, Constant, Linear, Threshold
from tests.reference import hardest_loss as DDSDLoss  # the reference selects the hardest pixels
from tests.reference import ref_loss


def _batch(bsz=2, k=3, h=4, w=5, void=0.2, dtype=torch.float32):
    z = torch.randn(bsz, k, h, w, dtype=dtype)
    y = torch.randint(0, k, (bsz, h, w))
    y[torch.rand(bsz, h, w) < void] = 255
    return z, y


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.7])
@pytest.mark.parametrize("scope", ["per_image", "per_batch"])
@pytest.mark.parametrize("kind", ["one_sided_kl", "kl", "target_gap", "l1"])
def test_loss_matches_reference_virtual_teacher(rate, scope, kind):
    z, y = _batch()
    crit = DDSDLoss(3, confidence=0.8, difficulty=kind, scope=scope, schedule=Constant(rate), tie_break="index",
                    temperature=1.0, kd_weight=1.0)
    expected, keep = ref_loss(z, y, 3, 0.8, rate, t=1.0, kd_weight=1.0, scope=scope, kind=kind)
    out = crit(z, y)
    torch.testing.assert_close(
        out.loss.double(), torch.as_tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6
    )
    valid = y != 255
    assert out.stats["kept_fraction"] == pytest.approx(int(keep.sum()) / int(valid.sum()))


@pytest.mark.parametrize("t,weight,ce_on_dropped", [(1.0, 1.0, True), (2.0, 0.5, True), (3.0, 2.0, False)])
@pytest.mark.parametrize("kind", ["one_sided_kl", "kl", "target_gap", "l1"])
def test_loss_matches_reference_network_teacher(t, weight, ce_on_dropped, kind):
    z, y = _batch(k=4)
    zt = torch.randn(2, 4, 2, 3)  # another resolution: resized bilinearly
    zt_up = F.interpolate(zt, size=(4, 5), mode="bilinear", align_corners=False)
    crit = DDSDLoss(4, temperature=t, kd_weight=weight, schedule=0.4, ce_on_dropped=ce_on_dropped, difficulty=kind,
                    tie_break="index")
    expected, _ = ref_loss(
        z, y, 4, 0.9, 0.4, t=t, kd_weight=weight, teacher_logits=zt_up, ce_on_dropped=ce_on_dropped, kind=kind
    )
    torch.testing.assert_close(
        crit(z, y, zt).loss.double(), torch.as_tensor(expected).double(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_virtual_closed_form_equals_materialised_teacher(t):
    z, y = _batch(k=5, h=6, w=6)
    from ddsd import virtual_teacher

    crit = DDSDLoss(5, confidence=0.75, temperature=t, kd_weight=1.0, schedule=0.0)
    pt = virtual_teacher(y, 5, 0.75)
    # the same loss through the network-teacher path with log-probabilities log(pt) as "logits" (T=1 there)
    crit_net = DDSDLoss(5, temperature=1.0, kd_weight=1.0, schedule=0.0)
    if t == 1.0:
        torch.testing.assert_close(crit(z, y).loss, crit_net(z, y, pt.log()).loss, rtol=1e-5, atol=1e-6)
    expected, _ = ref_loss(z, y, 5, 0.75, 0.0, t=t, kd_weight=1.0)
    torch.testing.assert_close(
        crit(z, y).loss.double(), torch.as_tensor(expected).double(), rtol=1e-5, atol=1e-6
    )


def test_one_hot_rate_zero_is_twice_ce():
    z, y = _batch(k=4)
    out = DDSDLoss(4, confidence=1.0, temperature=1.0, kd_weight=1.0, schedule=0.0)(z, y)
    torch.testing.assert_close(out.loss, 2 * F.cross_entropy(z, y, ignore_index=255))


def test_rate_zero_is_plain_pixel_kd():
    z, y = _batch(k=3, void=0.0)
    out = DDSDLoss(3, confidence=0.9, temperature=1.0, kd_weight=1.0, schedule=0.0)(z, y)
    pt = torch.full((2, 3, 4, 5), 0.05).scatter_(1, y.unsqueeze(1), 0.9)
    kd = F.kl_div(F.log_softmax(z, 1), pt, reduction="none").sum(1).mean()
    torch.testing.assert_close(out.loss, F.cross_entropy(z, y) + kd)
    assert out.stats["kept_fraction"] == 1.0


def test_all_void_and_tiny_shapes_are_finite():
    z = torch.randn(1, 2, 1, 1, requires_grad=True)
    y = torch.full((1, 1, 1), 255)
    out = DDSDLoss(2)(z, y)
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.isfinite(z.grad).all()
    z2, y2 = _batch(bsz=1, k=2, h=1, w=7, void=0.0)
    assert torch.isfinite(DDSDLoss(2)(z2, y2).loss)


def test_kd_term_zero_not_nan_when_nothing_kept():
    z, y = _batch(k=3, void=0.0)
    crit = DDSDLoss(3, schedule=Threshold(-0.0))
    z = z * 0 + torch.tensor([5.0, -5.0, -5.0]).view(1, 3, 1, 1)  # far from every non-zero target
    y[:] = 1
    out = crit(z, y)
    assert out.stats["kd"] == 0.0 and out.stats["kept_fraction"] == 0.0
    assert math.isfinite(out.loss.item())


def test_gradcheck_float64():
    z, y = _batch(bsz=1, k=3, h=3, w=3, dtype=torch.float64)
    z.requires_grad_(True)
    zt = torch.randn(1, 3, 3, 3, dtype=torch.float64)
    crit = DDSDLoss(3, temperature=2.0, kd_weight=0.7, schedule=0.3)
    for teacher in (None, zt):
        # the keep mask is piecewise constant; gradcheck's small perturbations do not cross a rank boundary
        assert torch.autograd.gradcheck(
            lambda x, t=teacher: crit._forward(x, y, t).loss, (z,), eps=1e-6, atol=1e-5
        )


def test_dropped_pixels_get_no_kd_gradient_and_teacher_none():
    z, y = _batch(bsz=1, k=3, h=4, w=4, void=0.0)
    z.requires_grad_(True)
    zt = torch.randn(1, 3, 4, 4, requires_grad=True)
    crit = DDSDLoss(3, kd_weight=1.0, schedule=0.5, ce_on_dropped=False, difficulty="kl")
    out = crit(z, y, zt)
    out.loss.backward()
    assert zt.grad is None
    g = z.grad.abs().sum(1)[0]
    kept = g > 0
    assert int(kept.sum()) == 8, "only the kept half of the pixels receives gradient"


def test_bf16_autocast_cpu_close_to_fp32():
    z, y = _batch(k=3, h=8, w=8)
    crit = DDSDLoss(3, schedule=0.2)
    ref = crit(z, y).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = crit(z.bfloat16(), y).loss
    assert out.dtype == torch.float32 and torch.isfinite(out)
    torch.testing.assert_close(out, ref, rtol=3e-2, atol=3e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_amp_close_to_fp32(dtype):
    z, y = _batch(k=11, h=32, w=32)
    z, y = z.cuda(), y.cuda()
    crit = DDSDLoss(11, schedule=0.3).cuda()
    ref = crit(z, y).loss
    with torch.autocast("cuda", dtype=dtype):
        out = crit(z.to(dtype), y).loss
    assert torch.isfinite(out)
    torch.testing.assert_close(out, ref, rtol=3e-2, atol=3e-2)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    z, y = _batch(k=3, h=8, w=8)
    crit = DDSDLoss(3, schedule=Linear(0.5, 0.1, 4))
    compiled = torch.compile(crit)
    for _ in range(3):  # the rate changes each step; read from a buffer, so no recompilation per value
        eager = crit(z, y)
        comp = compiled(z, y)
        torch.testing.assert_close(comp.loss, eager.loss)
        assert comp.stats["rate"] == pytest.approx(eager.stats["rate"])
        crit.step()


def test_step_feeds_capability_and_state_round_trip():
    crit = DDSDLoss(2, schedule=Capability(momentum=0.0, r_max=0.9, relative=False))
    y = torch.zeros(1, 4, 4, dtype=torch.long)
    y[:, :, :1] = 1
    z = torch.zeros(1, 2, 4, 4)
    z[:, 0] = 1.0  # predicts class 0 everywhere: pixel acc 0.75, mean class acc 0.5
    crit(z, y)
    crit.step()
    assert crit.schedule.capability == pytest.approx(0.5) and crit.rate == pytest.approx(0.5)
    pix = DDSDLoss(2, schedule=Capability(momentum=0.0, metric="pixel_acc", relative=False))
    pix(z, y)
    pix.step()
    assert pix.schedule.capability == pytest.approx(0.75)
    fresh = DDSDLoss(2, schedule=Capability(momentum=0.0, r_max=0.9, relative=False))
    fresh.load_state_dict(crit.state_dict())
    assert fresh.rate == crit.rate and fresh(z, y).stats["rate"] == pytest.approx(0.5)
    crit.eval()
    crit(z * -1, y)  # eval mode: not counted
    crit.step()
    assert crit.schedule.capability == pytest.approx(0.5)


def test_threshold_schedule_reports_measured_rate():
    z, y = _batch(k=3, void=0.0)
    crit = DDSDLoss(3, confidence=0.9, temperature=1.0, schedule=Threshold(1.0), difficulty="kl")
    out = crit(z, y)
    d = F.kl_div(
        F.log_softmax(z, 1), torch.full_like(z, 0.05).scatter_(1, y.unsqueeze(1), 0.9), reduction="none"
    ).sum(1)
    assert out.stats["kept_fraction"] == pytest.approx(float((d <= 1.0).float().mean()))
    crit.step()
    assert crit.rate == pytest.approx(1 - out.stats["kept_fraction"])


def test_bad_input_errors():
    crit = DDSDLoss(3)
    z, y = _batch()
    with pytest.raises(ValueError, match="4-D"):
        crit(z[0], y)
    with pytest.raises(TypeError, match="floating"):
        crit(z.long(), y)
    with pytest.raises(ValueError, match="target shape"):
        crit(z, y[:, :3])
    bad = y.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match="value 7"):
        crit(z, bad)
    with pytest.raises(TypeError, match="integer"):
        crit(z, y.float())
    with pytest.raises(ValueError, match="teacher_logits has 4 classes"):
        crit(z, y, torch.randn(2, 4, 4, 5))
    with pytest.raises(ValueError, match="num_classes=3"):
        crit(torch.randn(2, 4, 4, 5), y)
    nan = z.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        crit(nan, y)
    with pytest.raises(ValueError, match="rate"):
        DDSDLoss(3, schedule=1.0)
    with pytest.raises(ValueError, match="difficulty kind"):
        DDSDLoss(3, difficulty="entropy")
    with pytest.raises(ValueError, match="scope"):
        DDSDLoss(3, scope="global")
    with pytest.raises(ValueError, match="confidence"):
        DDSDLoss(4, confidence=0.2)
    unchecked = DDSDLoss(3, check_inputs=False)
    assert torch.isnan(unchecked(nan, y).loss)


def _binary_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    z = (3 * torch.randn(3, 2, 12, 10)).requires_grad_(True)
    y = torch.randint(0, 2, (3, 12, 10))
    y[torch.rand(3, 12, 10) < 0.1] = 255
    return z, y


def _fast_and_general(make_crit, z: torch.Tensor, y: torch.Tensor) -> list[tuple]:
    """(loss, grad, stats, difficulty, keep) of the K = 2 fast path and of the general path, in that order."""
    got = []
    for fast in (True, False):
        crit = make_crit()
        crit._binary_fast = fast
        z.grad = None
        out = crit(z, y)
        out.loss.backward()
        got.append((out.loss.detach(), z.grad.clone(), out.stats, *crit.pixel_maps(z, y)))
    return got


@pytest.mark.parametrize("kind", ["one_sided_kl", "kl", "target_gap", "l1"])
@pytest.mark.parametrize("t,rate,scope,ce_on_dropped,kd_norm", [
    (1.0, 0.0, "per_image", True, "kept"), (4.0, 0.3, "per_image", True, "kept"),
    (2.0, 0.5, "per_batch", False, "valid"), (4.0, 0.7, "per_batch", True, "kept"),
])
def test_binary_fast_path_equals_general_path(kind, t, rate, scope, ce_on_dropped, kd_norm):
    """K = 2 with the virtual teacher runs on the margin z_y - z_other ([B, H, W]); the general [B, K, H, W] path
    gives the same loss, gradient, statistics, difficulty and mask (up to float rounding), and the reference."""
    z, y = _binary_batch(1)
    (loss, grad, stats, d, keep), (loss_g, grad_g, stats_g, d_g, keep_g) = _fast_and_general(
        lambda: DDSDLoss(2, confidence=0.9, temperature=t, difficulty=kind, scope=scope, schedule=Constant(rate),
                         ce_on_dropped=ce_on_dropped, kd_norm=kd_norm), z, y)
    torch.testing.assert_close(loss, loss_g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, grad_g, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(d, d_g, rtol=1e-5, atol=1e-6)
    assert torch.equal(keep, keep_g)
    assert stats == pytest.approx(stats_g, rel=1e-5, abs=1e-6, nan_ok=True)
    if ce_on_dropped and kd_norm == "kept":
        crit = DDSDLoss(2, confidence=0.9, temperature=t, kd_weight=0.5, difficulty=kind, scope=scope,
                        schedule=Constant(rate), tie_break="index")
        expected, _ = ref_loss(z.detach(), y, 2, 0.9, rate, t=t, kd_weight=0.5, scope=scope, kind=kind)
        torch.testing.assert_close(crit(z, y).loss.double(), torch.as_tensor(expected).double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("selection", ["bernoulli", "random", "easiest"])
def test_binary_fast_path_equals_general_path_for_every_selection(selection):
    """The library's default selection (bernoulli) and the controls draw the same pixels on the K = 2 path."""
    z, y = _binary_batch(3)
    (loss, grad, _, _, keep), (loss_g, grad_g, _, _, keep_g) = _fast_and_general(
        lambda: DDSDLoss(2, schedule=Constant(0.3), selection=selection, seed=7), z, y)
    assert torch.equal(keep, keep_g) and 0 < int(keep.sum()) < int((y != 255).sum())
    torch.testing.assert_close(loss, loss_g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, grad_g, rtol=1e-5, atol=1e-7)


def test_binary_fast_path_gradcheck():
    torch.manual_seed(2)
    z = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 2, (2, 4, 5))
    y[0, 0, :2] = 255
    crit = DDSDLoss(2, confidence=0.8, temperature=2.0, schedule=0.0)
    assert crit._binary_path(None)
    assert torch.autograd.gradcheck(lambda x: crit._forward(x, y, None).loss, (z,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("bad", [2, -1, 254])
def test_binary_fast_path_rejects_bad_target_values(bad):
    z, y = _batch(k=2)
    y[0, 1, 2] = bad
    with pytest.raises(ValueError, match=f"target holds value {bad}"):
        DDSDLoss(2)(z, y)
    with pytest.raises(ValueError, match=f"target holds value {bad}"):
        DDSDLoss(2).pixel_maps(z, y)
    y[0, 1, 2] = 255
    assert torch.isfinite(DDSDLoss(2)(z, y).loss)


def test_binary_fast_path_fullgraph_compile_matches_eager():
    z, y = _batch(k=2, h=8, w=8)
    z.requires_grad_(True)
    crit = DDSDLoss(2, schedule=Linear(0.5, 0.1, 4), check_inputs=False)
    compiled = torch.compile(lambda a, b: crit(a, b).loss, fullgraph=True)
    for _ in range(2):
        eager = crit(z, y).loss
        (grad,) = torch.autograd.grad(eager, z)
        comp = compiled(z, y)
        (comp_grad,) = torch.autograd.grad(comp, z)
        torch.testing.assert_close(comp, eager)
        torch.testing.assert_close(comp_grad, grad)
        crit.step()


@pytest.mark.parametrize("confidence", [0.8, 1.0])
def test_virtual_t_not_one_without_log_q_equals_stored_log_q(confidence):
    """At T != 1 the virtual-teacher terms come from logsumexp(z / T) (no [B, K, H, W] log q) and the backward
    recomputes q image by image: the same terms as from a stored log_softmax(z / T), and a correct gradient."""
    from ddsd._pixel_loss import pixel_terms
    from ddsd.teacher import virtual_teacher_values

    z, y = _batch(bsz=3, k=4, h=5, w=6)
    y0 = y.clamp(0, 3).unsqueeze(1)
    virtual = virtual_teacher_values(confidence, 4)
    lean = pixel_terms(z, y0, 3.0, virtual, None, keep_log_q=False)
    full = pixel_terms(z, y0, 3.0, virtual, None, keep_log_q=True)
    assert lean.log_q is None and lean.lse_t is not None
    torch.testing.assert_close(lean.lq_y, full.lq_y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lean.kl, full.kl, rtol=1e-5, atol=1e-6)
    z64 = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    y64 = torch.randint(0, 3, (2, 3, 4))
    crit = DDSDLoss(3, confidence=confidence, temperature=2.5, kd_weight=0.7, schedule=0.3)
    assert torch.autograd.gradcheck(lambda x: crit._forward(x, y64, None).loss, (z64,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("t", [2.0, 3.0, 4.0])
def test_virtual_integer_t_one_exp_path_equals_log_softmax_path(t):
    """Integer T in {2, 3, 4} (eager, batch > 1): exp(z - max) = u^T with u = exp((z - max) / T), one exp in
    the forward and none in the backward: the same terms and gradient as the log-softmax path up to float
    rounding, also with logits 100 apart (terms that underflow)."""
    from ddsd._pixel_loss import pixel_terms, weighted_loss
    from ddsd.teacher import virtual_teacher_values

    z, y = _batch(bsz=3, k=5, h=6, w=7)
    z[0, 2] += 100.0
    y0 = y.clamp(0, 4).unsqueeze(1)
    virtual = virtual_teacher_values(0.9, 5)
    fast = pixel_terms(z, y0, t, virtual, None, keep_log_q=False)
    slow = pixel_terms(z, y0, t, virtual, None, keep_log_q=True)
    assert fast.zmax is not None and fast.log_p is None and slow.zmax is None
    for name in ("lp_y", "kl", "lq_y"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.lp_max, slow.log_p.amax(1), rtol=1e-5, atol=1e-5)
    alpha, gamma = torch.rand(3, 6, 7), torch.rand(3, 6, 7)
    grads = []
    for terms in (fast, slow):
        zz = z.clone().requires_grad_(True)
        weighted_loss(zz, torch.zeros(()), terms, y0, alpha, gamma, 2.0, t, virtual).backward()
        grads.append(zz.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    z64 = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    y64 = torch.randint(0, 3, (2, 3, 4))
    crit = DDSDLoss(3, confidence=0.8, temperature=t, kd_weight=0.7, schedule=0.3)
    assert torch.autograd.gradcheck(lambda x: crit._forward(x, y64, None).loss, (z64,), eps=1e-6, atol=1e-5)
