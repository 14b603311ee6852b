"""Method registry: shared KD-family keys, the tfkd overrides, Tf-KD_reg against Yuan et al.'s code."""

import json
from pathlib import Path

import pytest
import torch

from ddsd.baselines import TfKDRegLoss
from ddsd.config import METHODS, MethodConfig, RunConfig, apply_overrides, load_config
from ddsd.loss import DDSDLoss
from ddsd.methods import build_criterion
from tests.reference import ref_tfkd_reg

ROOT = Path(__file__).resolve().parents[1]


def _batch(k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, k, 5, 6, generator=g, dtype=torch.float64).float()
    y = torch.randint(0, k, (2, 5, 6), generator=g)
    y[torch.rand(2, 5, 6, generator=g) < 0.2] = 255
    return z, y


@pytest.mark.parametrize("name", METHODS)
def test_every_method_builds_and_runs(name):
    crit = build_criterion(MethodConfig(name=name), 3, total_steps=10)
    z, y = _batch()
    out = crit(z, y)
    assert torch.isfinite(out.loss)
    crit.step()


def test_kd_family_shares_confidence_temperature_weight():
    m = MethodConfig(confidence=0.95, temperature=3.0, kd_weight=0.5)
    for name in ("kd", "static", "ddsd", "tfkd"):
        crit = build_criterion(m.model_copy(update={"name": name}), 3, total_steps=10)
        assert isinstance(crit, DDSDLoss)
        assert (crit.confidence, crit.temperature, crit.kd_weight) == (0.95, 3.0, 0.5), name
    reg = build_criterion(m.model_copy(update={"name": "tfkd_reg"}), 3, total_steps=10)
    assert isinstance(reg, TfKDRegLoss)
    assert (reg.confidence, reg.temperature, reg.multiplier, reg.alpha) == (0.95, 3.0, 0.5, 0.1)


def test_tfkd_keys_override_for_tfkd_only():
    m = MethodConfig(name="tfkd", tfkd_confidence=0.9, tfkd_temperature=2.0, tfkd_weight=0.25)
    crit = build_criterion(m, 3, total_steps=10)
    assert (crit.confidence, crit.temperature, crit.kd_weight) == (0.9, 2.0, 0.25)
    kd = build_criterion(m.model_copy(update={"name": "kd"}), 3, total_steps=10)
    shared = (m.confidence, m.temperature, m.kd_weight)
    assert (kd.confidence, kd.temperature, kd.kd_weight) == shared == (0.99, 4.0, 0.5)


def test_dropout_options_reach_the_loss():
    m = MethodConfig(name="ddsd", selection="bernoulli", tie_break="index", kd_norm="valid", difficulty="kl")
    crit = build_criterion(m, 3, total_steps=10, seed=7)
    assert (crit.selection, crit.tie_break, crit.kd_norm, crit.difficulty, crit.seed) == (
        "bernoulli", "index", "valid", "kl", 7)
    assert MethodConfig().difficulty == "one_sided_kl" and MethodConfig().tie_break == "random"


@pytest.mark.parametrize(
    "a,t,mult,alpha", [(0.99, 20.0, 100.0, 0.1), (0.9, 1.0, 1.0, 0.5), (0.7, 4.0, 10.0, 0.95), (1.0, 2.0, 1.0, 1.0)]
)
@pytest.mark.parametrize("k", [2, 5])
def test_tfkd_reg_matches_yuan_transcription(a, t, mult, alpha, k):
    z, y = _batch(k=k)
    crit = TfKDRegLoss(k, confidence=a, temperature=t, multiplier=mult, alpha=alpha)
    expected = ref_tfkd_reg(z, y, k, a, t, mult, alpha)
    torch.testing.assert_close(crit(z, y).loss.double(), expected, rtol=1e-5, atol=1e-6)
    z.requires_grad_(True)
    crit(z, y).loss.backward()
    g = z.grad.clone()
    z.grad = None
    ref_tfkd_reg(z, y, k, a, t, mult, alpha).backward()
    torch.testing.assert_close(g, z.grad, rtol=1e-4, atol=1e-6)


def test_tfkd_reg_errors():
    with pytest.raises(ValueError, match="confidence"):
        TfKDRegLoss(3, confidence=0.2)
    with pytest.raises(ValueError, match="alpha"):
        TfKDRegLoss(3, alpha=1.5)


def test_committed_configs_and_tuned_overrides_still_validate():
    for path in sorted((ROOT / "configs").glob("*/*.yaml")):
        if path.parent.name in ("methods", "train", "results"):
            load_config(path)
    tuned = ROOT / "docs" / "results" / "tuned.json"
    if not tuned.is_file():
        pytest.skip("no tuned.json")
    for per_method in json.loads(tuned.read_text()).values():
        for name, entry in per_method.items():
            overrides = [f"{key}={json.dumps(v)}" for key, v in entry["overrides"].items()]
            apply_overrides(RunConfig(method=MethodConfig(name=name)), overrides)
