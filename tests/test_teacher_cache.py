"""CachedTeacher: cached logits equal the teacher's, the teacher runs only on unseen images, and a run that
uses the cache trains exactly like one that does not."""

import json

import pytest
import torch
from torch import nn

from ddsd.config import RunConfig, apply_overrides
from ddsd.engine import load_checkpoint, train
from ddsd.engine.rundir import read_metrics
from ddsd.models import CachedTeacher, FrozenTeacher, file_fingerprint


class Counting(nn.Module):
    """A tiny conv net that records how many images it was called on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.conv(x)


def _cached(tmp_path, fingerprint="w1"):
    net = Counting()
    return net, CachedTeacher(FrozenTeacher(net), tmp_path / "cache", fingerprint)


def test_hits_return_the_teachers_logits_without_running_it(tmp_path):
    net, t = _cached(tmp_path)
    x = torch.randn(4, 3, 8, 10)
    ref = FrozenTeacher(net)(x, size=(16, 20))
    net.calls.clear()
    first = t(x, size=(16, 20))
    assert net.calls == [4] and (t.hits, t.misses) == (0, 4)
    torch.testing.assert_close(first, ref, rtol=0, atol=0)
    again = t(x, size=(16, 20))
    assert net.calls == [4] and (t.hits, t.misses) == (4, 4)  # not called again
    torch.testing.assert_close(again, ref, rtol=0, atol=0)
    assert not again.requires_grad and again.shape == (4, 2, 16, 20)
    # a batch mixing seen images (in another order) and a new one: only the new one reaches the teacher
    new = torch.randn(1, 3, 8, 10)
    mixed = t(torch.cat([x[2:3], new, x[0:1]]), size=(16, 20))
    assert net.calls == [4, 1]
    torch.testing.assert_close(mixed[0], ref[2], rtol=0, atol=0)
    torch.testing.assert_close(mixed[2], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(mixed[1:2], FrozenTeacher(net)(new, size=(16, 20)), rtol=1e-6, atol=1e-6)
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave no temporaries


def test_key_depends_on_image_size_and_teacher(tmp_path):
    net, t = _cached(tmp_path)
    x = torch.randn(2, 3, 8, 8)
    t(x)
    t(x, size=(4, 4))  # another output size: another entry
    x2 = x.clone()
    x2[0, 0, 0, 0] += 1e-3  # one value changed: a miss for that image only
    t(x2)
    assert net.calls == [2, 2, 1]
    net_b, other = _cached(tmp_path, fingerprint="w2")  # other weights, same folder: never served t's logits
    other(x)
    assert net_b.calls == [2]
    with pytest.raises(ValueError, match="fingerprint"):
        CachedTeacher(FrozenTeacher(net), tmp_path / "c", "")


def test_unreadable_entry_is_recomputed_with_a_warning(tmp_path):
    net, t = _cached(tmp_path)
    x = torch.randn(1, 3, 8, 8)
    ref = t(x)
    (entry,) = (tmp_path / "cache").rglob("*.pt")
    entry.write_bytes(b"not a tensor")
    with pytest.warns(UserWarning, match="unreadable"):
        out = t(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert net.calls == [1, 1]
    torch.testing.assert_close(t(x), ref, rtol=0, atol=0)  # rewritten: a hit again
    assert net.calls == [1, 1]


def test_file_fingerprint(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 2_999_999 + b"y")
    assert file_fingerprint(a) != file_fingerprint(b) and file_fingerprint(a) == file_fingerprint(a)


def _cfg(out, method, **extra) -> RunConfig:
    overrides = [
        f"out={json.dumps(str(out))}", f"method.name={method}", "train.epochs=2", "data.name=procedural_binary",
        "data.size=[32, 32]", "data.batch_size=16", "train.progress=false", "train.threads=1", "data.eval_splits=[]",
    ] + [f"{k}={json.dumps(v)}" for k, v in extra.items()]
    return apply_overrides(RunConfig(), overrides)


def test_training_with_the_cache_equals_training_without(tmp_path):
    train(_cfg(tmp_path / "teacher", "ce"))
    ckpt = str(tmp_path / "teacher/checkpoints/best.pt")
    cache = str(tmp_path / "cache")
    plain = train(_cfg(tmp_path / "plain", "kd", teacher=ckpt))
    first = train(_cfg(tmp_path / "first", "kd", teacher=ckpt, **{"train.teacher_cache": cache}))
    assert first["teacher_cache"]["hits"] == 0 and first["teacher_cache"]["misses"] > 0
    # the same data seed with another method: augmentation is a function of (seed, epoch, index), so every
    # training image the teacher sees was seen by the first run
    second = train(_cfg(tmp_path / "second", "ddsd", teacher=ckpt, **{"train.teacher_cache": cache}))
    assert second["teacher_cache"] == {"dir": cache, "hits": first["teacher_cache"]["misses"], "misses": 0}
    again = train(_cfg(tmp_path / "again", "kd", teacher=ckpt, **{"train.teacher_cache": cache}))
    assert again["teacher_cache"]["misses"] == 0
    for run in ("first", "again"):  # cached or not, hit or miss: the same training
        a = load_checkpoint(tmp_path / "plain/checkpoints/last.pt")
        b = load_checkpoint(tmp_path / run / "checkpoints/last.pt")
        for k in a["model"]:
            torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
        la = [r["train_loss"] for r in read_metrics(tmp_path / "plain/metrics.csv")]
        lb = [r["train_loss"] for r in read_metrics(tmp_path / run / "metrics.csv")]
        assert la == lb
    assert plain["fbeta_max"] == again["fbeta_max"]


def test_cache_without_a_teacher_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="teacher_cache"):
        train(_cfg(tmp_path / "x", "kd", **{"train.teacher_cache": str(tmp_path / "c")}))


def test_channels_last_run_with_a_cached_teacher(tmp_path):
    train(_cfg(tmp_path / "teacher", "ce", **{"model.name": "unet_small"}))
    ckpt = str(tmp_path / "teacher/checkpoints/best.pt")
    extra = {"teacher": ckpt, "train.teacher_cache": str(tmp_path / "c"), "train.channels_last": True}
    a = train(_cfg(tmp_path / "a", "ddsd", **extra))
    b = train(_cfg(tmp_path / "b", "ddsd", **extra))
    assert b["teacher_cache"]["misses"] == 0 and a["fbeta_max"] == b["fbeta_max"]


def test_teacher_precision_is_part_of_the_cache_key(tmp_path):
    train(_cfg(tmp_path / "teacher", "ce"))
    ckpt = str(tmp_path / "teacher/checkpoints/best.pt")
    cache = str(tmp_path / "c")
    a = train(_cfg(tmp_path / "a", "kd", teacher=ckpt, **{"train.teacher_cache": cache, "train.teacher_amp": "bf16",
                                                          "train.teacher_channels_last": True}))
    b = train(_cfg(tmp_path / "b", "kd", teacher=ckpt, **{"train.teacher_cache": cache}))  # fp32: other logits
    assert a["teacher_cache"]["misses"] > 0 and b["teacher_cache"]["hits"] == 0
    assert a["fbeta_max"] != b["fbeta_max"] or a["mae"] != b["mae"]
