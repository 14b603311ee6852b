"""DDSDLoss options (selection, tie_break, kd_norm, difficulty, seed) against the loop reference."""

import math

import pytest
import torch

from ddsd.dropout import bernoulli_uniforms, tie_priorities
from ddsd.schedules import Capability, Constant
from tests.reference import hardest_loss as DDSDLoss  # the reference selects the hardest pixels
from tests.reference import ref_loss


def _batch(bsz=2, k=3, h=4, w=5, void=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(bsz, k, h, w, generator=g)
    y = torch.randint(0, k, (bsz, h, w), generator=g)
    y[torch.rand(bsz, h, w, generator=g) < void] = 255
    return z, y


def _streams(shape, scope, tie_break, seed, counter):
    b, _, h, w = shape
    rows, n = (1, b * h * w) if scope == "per_batch" else (b, h * w)
    c = torch.tensor(counter)
    pri = tie_priorities(rows, n, tie_break, seed, c)
    return pri, tie_priorities(rows, n, "random", seed, c), bernoulli_uniforms(rows, n, seed, c)


@pytest.mark.parametrize("selection", ["hardest", "easiest", "random", "bernoulli"])
@pytest.mark.parametrize("tie_break", ["random", "index"])
@pytest.mark.parametrize("kd_norm", ["kept", "valid"])
@pytest.mark.parametrize("scope", ["per_image", "per_batch"])
@pytest.mark.parametrize("rate", [0.3, 0.7])
def test_loss_options_match_reference(selection, tie_break, kd_norm, scope, rate):
    z, y = _batch()
    crit = DDSDLoss(3, confidence=0.8, temperature=2.0, kd_weight=0.7, schedule=Constant(rate), scope=scope,
                    selection=selection, tie_break=tie_break, kd_norm=kd_norm, seed=5)
    for counter in range(2):  # the second call uses the next draw
        pri, rand_pri, uni = _streams(z.shape, scope, tie_break, 5, counter)
        expected, keep = ref_loss(
            z, y, 3, 0.8, rate, t=2.0, kd_weight=0.7, scope=scope, kind="one_sided_kl", kd_norm=kd_norm,
            selection=selection, priority=rand_pri if selection == "random" else pri, uniforms=uni,
        )
        _, got_keep = crit.pixel_maps(z, y)
        assert torch.equal(got_keep, keep)
        out = crit(z, y)
        torch.testing.assert_close(out.loss.double(), torch.as_tensor(expected).double(), rtol=1e-5, atol=1e-6)
        valid = y != 255
        assert out.stats["kept_fraction"] == pytest.approx(int(keep.sum()) / int(valid.sum()))


@pytest.mark.parametrize("difficulty", ["one_sided_kl", "kl", "target_gap", "l1"])
def test_constant_difficulty_ties_index_drops_last_indices(difficulty):
    # a student equal to the teacher at every pixel: every difficulty is 0, all pixels tie
    k, a = 3, 0.8
    y = torch.randint(0, k, (2, 6, 5))
    b = (1 - a) / (k - 1)
    z = torch.full((2, k, 6, 5), math.log(b)).scatter_(1, y.unsqueeze(1), math.log(a))
    crit = DDSDLoss(k, confidence=a, temperature=1.0, difficulty=difficulty, schedule=0.4, tie_break="index")
    d, keep = crit.pixel_maps(z, y)
    assert d.abs().max() < 1e-5
    n_keep = 30 - math.floor(0.4 * 30)
    expected = (torch.arange(30) < n_keep).view(6, 5)
    assert torch.equal(keep, expected.expand(2, 6, 5))


def test_random_tie_break_has_no_row_bias():
    h, w, steps, rate = 16, 16, 200, 0.25
    crit = DDSDLoss(2, schedule=rate, difficulty="target_gap")  # tie_break="random" is the default
    z = torch.zeros(4, 2, h, w)
    z[:, 0] = 10.0
    y = torch.zeros(4, h, w, dtype=torch.long)  # every pixel right beyond a: all difficulties 0
    dropped_per_row = torch.zeros(h)
    masks = set()
    for _ in range(steps):
        _, keep = crit.pixel_maps(z, y)
        assert int((~keep).sum()) == 4 * math.floor(rate * h * w)
        dropped_per_row += (~keep).sum((0, 2)).float()
        masks.add(keep.numpy().tobytes())
        crit(z, y)  # training-mode forward: advances the draw
    share = dropped_per_row / (steps * 4 * w)  # per row, expected rate
    assert (share - rate).abs().max() < 0.05, share
    assert share[-4:].mean() < rate + 0.03, "the bottom rows are not preferentially dropped"
    assert len(masks) == steps, "redrawn every step"


def test_random_tie_break_is_reproducible_and_resumes_bit_identical():
    z, y = _batch(bsz=2, k=2, h=8, w=8, void=0.1)
    z = z.round()  # coarse logits: many equal difficulties
    kw = {"schedule": Capability(momentum=0.5), "selection": "bernoulli", "seed": 3}
    a, b = DDSDLoss(2, **kw), DDSDLoss(2, **kw)
    for _ in range(3):
        torch.testing.assert_close(a(z, y).loss, b(z, y).loss, rtol=0, atol=0)
        a.step()
        b.step()
    resumed = DDSDLoss(2, schedule=Capability(momentum=0.5), selection="bernoulli", seed=3)
    resumed.load_state_dict(a.state_dict())
    assert int(resumed._draws) == 3
    for _ in range(3):
        out_a, out_r = a(z, y), resumed(z, y)
        assert torch.equal(a.pixel_maps(z, y)[1], resumed.pixel_maps(z, y)[1])
        assert out_a.loss.item() == out_r.loss.item()
        a.step()
        resumed.step()
    other = DDSDLoss(2, schedule=Capability(momentum=0.5), selection="bernoulli", seed=4)
    assert not torch.equal(other.pixel_maps(z, y)[1], a.pixel_maps(z, y)[1])


def test_state_dict_without_draws_loads():
    crit = DDSDLoss(2, schedule=0.3)
    state = crit.state_dict()
    extra = next(k for k in state if k.endswith("_extra_state"))
    state[extra] = {"schedule": state[extra]["schedule"]}  # a checkpoint from before the draw counter
    crit._draws.fill_(7)
    crit.load_state_dict(state)
    assert int(crit._draws) == 0


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.8])
def test_bernoulli_expected_share_and_difficulty_order(rate):
    z, y = _batch(bsz=2, k=3, h=64, w=64, void=0.1, seed=1)
    crit = DDSDLoss(3, schedule=rate, selection="bernoulli", difficulty="kl")
    shares, hard_drop, easy_drop = [], 0.0, 0.0
    for _ in range(20):
        d, keep = crit.pixel_maps(z, y)
        crit(z, y)
        valid = y != 255
        shares.append(1 - float(keep.sum()) / float(valid.sum()))
        q = d[valid].quantile(torch.tensor([0.25, 0.75]))
        hard_drop += float((~keep & valid & (d > q[1])).sum())
        easy_drop += float((~keep & valid & (d < q[0])).sum())
    mean_share = sum(shares) / len(shares)
    # n ~ 7400 valid pixels, 20 draws: the standard error of the mean share is < 0.002
    assert mean_share == pytest.approx(rate, abs=0.01)
    assert len(set(shares)) > 1, "redrawn every step"
    assert hard_drop > easy_drop


def test_kd_norm_valid_is_kept_times_kept_fraction():
    z, y = _batch(h=6, w=6)
    kept = DDSDLoss(3, schedule=0.5, kd_norm="kept", kd_weight=1.0)
    valid = DDSDLoss(3, schedule=0.5, kd_norm="valid", kd_weight=1.0)
    ok, ov = kept(z, y), valid(z, y)
    assert ov.stats["kd"] == pytest.approx(ok.stats["kd"] * ok.stats["kept_fraction"], rel=1e-5)
    assert ov.stats["ce"] == pytest.approx(ok.stats["ce"])


def test_option_errors():
    with pytest.raises(ValueError, match="selection"):
        DDSDLoss(3, selection="top")
    with pytest.raises(ValueError, match="tie_break"):
        DDSDLoss(3, tie_break="raster")
    with pytest.raises(ValueError, match="kd_norm"):
        DDSDLoss(3, kd_norm="all")
    from ddsd.schedules import Threshold

    with pytest.raises(ValueError, match="threshold"):
        DDSDLoss(3, schedule=Threshold(0.5), selection="random")


@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": 1.0},
        {"temperature": 3.0, "kd_norm": "valid"},
        {"temperature": 2.0, "ce_on_dropped": False, "selection": "bernoulli"},
        {"confidence": 1.0, "temperature": 1.0},
        {"confidence": 1.0, "temperature": 2.5, "kd_weight": 0.0},
    ],
)
@pytest.mark.parametrize("teacher", [False, True])
def test_gradient_matches_autograd_of_reference(kw, teacher):
    """The one-pass analytic gradient equals autograd through the loop reference (virtual and network teacher)."""
    z, y = _batch(bsz=2, k=4, h=4, w=5, seed=3)
    zt = torch.randn(2, 4, 4, 5, generator=torch.Generator().manual_seed(4)) if teacher else None
    opts = {"confidence": 0.8, "kd_weight": 0.7, "schedule": Constant(0.4), "seed": 1, **kw}
    crit = DDSDLoss(4, **opts)
    pri, _, uni = _streams(z.shape, "per_image", "random", 1, 0)
    zz = z.clone().requires_grad_(True)
    crit(zz, y, zt).loss.backward()
    zr = z.double().requires_grad_(True)
    expected, _ = ref_loss(
        zr, y, 4, opts["confidence"], 0.4, t=opts["temperature"], kd_weight=opts["kd_weight"], teacher_logits=zt,
        ce_on_dropped=kw.get("ce_on_dropped", True), kind="one_sided_kl", kd_norm=kw.get("kd_norm", "kept"),
        selection=kw.get("selection", "hardest"), priority=pri, uniforms=uni,
    )
    expected.backward()
    torch.testing.assert_close(zz.grad.double(), zr.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("selection,teacher", [("hardest", False), ("bernoulli", True)])
def test_fullgraph_compile_model_and_loss_no_recompile(selection, teacher):
    """check_inputs=False: model + DDSDLoss compile with fullgraph=True (no graph break, no host sync), one graph
    while the rate changes, and the compiled step reproduces eager (same masks: the hash is deterministic)."""
    import torch._dynamo

    from ddsd.schedules import Linear

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 3, padding=1)
    kw = {"schedule": Linear(0.5, 0.1, 4), "selection": selection, "temperature": 2.0, "check_inputs": False}
    comp_crit, eager_crit = DDSDLoss(3, **kw), DDSDLoss(3, **{**kw, "schedule": Linear(0.5, 0.1, 4)})
    x = torch.randn(2, 3, 12, 12)
    y = torch.randint(0, 3, (2, 12, 12))
    y[:, :2] = 255
    zt = torch.randn(2, 3, 6, 6) if teacher else None

    def step(crit, x, y, zt):
        out = crit(model(x), y, zt)
        return out.loss, out.tensors

    compiled = torch.compile(step, fullgraph=True)
    for _ in range(4):
        loss_c, stats_c = compiled(comp_crit, x, y, zt)
        loss_e, stats_e = step(eager_crit, x, y, zt)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        assert float(stats_c["kept_fraction"]) == float(stats_e["kept_fraction"])
        gc = torch.autograd.grad(loss_c, model.weight)[0]
        ge = torch.autograd.grad(loss_e, model.weight)[0]
        torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-6)
        comp_crit.step()
        eager_crit.step()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
