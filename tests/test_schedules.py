import itertools
import math

import pytest

from ddsd.schedules import Capability, Constant, Cosine, Exponential, Linear, Threshold, create_schedule


def _at(schedule, step):
    for _ in range(step):
        schedule.step()
    return schedule.rate


def test_time_schedules_known_values():
    assert Constant(0.3).rate == 0.3
    assert _at(Linear(0.5, 0.1, 10), 0) == 0.5
    assert _at(Linear(0.5, 0.1, 10), 5) == pytest.approx(0.3)
    assert _at(Linear(0.5, 0.1, 10), 50) == pytest.approx(0.1)
    assert _at(Cosine(0.5, 0.1, 10), 5) == pytest.approx(0.3)
    assert _at(Cosine(0.5, 0.1, 10), 2) == pytest.approx(0.1 + 0.4 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    assert _at(Exponential(0.4, 0.1, 10), 5) == pytest.approx(0.2)
    assert _at(Exponential(0.4, 0.1, 10), 10) == pytest.approx(0.1)


def test_capability_rate_goes_down_as_accuracy_goes_up():
    s = Capability(beta=1.0, r_min=0.05, r_max=0.5, momentum=0.5)
    assert s.rate == 0.5 and s.capability is None
    s.step(0.2)
    assert s.capability == pytest.approx(0.2) and s.rate == 0.5
    rates = []
    for acc in (0.6, 0.7, 0.8, 0.9, 0.99, 1.0):
        s.step(acc)
        rates.append(s.rate)
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert rates[-1] < 0.1
    s.step(None)  # no measurement: unchanged
    assert s.rate == rates[-1]
    high = Capability(beta=1.0, r_min=0.05, momentum=0.0)
    high.step(1.0)
    assert high.rate == 0.05


def test_relative_capability_moves_a_low_accuracy_student_off_r_max():
    absolute = Capability(r_max=0.5, momentum=0.0, relative=False)
    relative = Capability(r_max=0.5, momentum=0.0, relative=True)
    for acc in (0.2, 0.3, 0.4):  # mean class accuracy stays below 0.5, as on 11-class CamVid
        absolute.step(acc)
        relative.step(acc)
    assert absolute.rate == 0.5
    assert relative.effective_capability == pytest.approx((0.4 - 0.2) / 0.8)
    assert relative.rate == pytest.approx(0.5 - 0.5 * 0.25)  # a quarter of the initial gap closed
    relative.step(0.8)
    assert relative.rate == pytest.approx(0.5 - 0.5 * (0.8 - 0.2) / 0.8)
    relative.step(0.1)  # worse than at the start: c_rel clamps at 0, the rate at r_max
    assert relative.rate == 0.5
    steep = Capability(r_min=0.1, r_max=0.5, beta=2.0, momentum=0.0, relative=True)
    for acc in (0.2, 0.6):  # half the gap closed, beta 2: the rate is at r_min
        steep.step(acc)
    assert steep.rate == pytest.approx(0.1)
    copy = Capability(r_max=0.5, momentum=0.0, relative=True)
    copy.load_state_dict(relative.state_dict())
    assert copy.rate == relative.rate


def test_capability_ema_formula():
    s = Capability(beta=2.0, r_max=0.9, momentum=0.9, relative=False)
    s.step(0.5)
    s.step(0.8)
    c = 0.9 * 0.5 + 0.1 * 0.8
    assert s.capability == pytest.approx(c)
    assert s.rate == pytest.approx(min(2.0 * (1 - c), 0.9))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Constant(0.2),
        lambda: Linear(0.4, 0.0, 7),
        lambda: Cosine(0.4, 0.0, 7),
        lambda: Exponential(0.4, 0.01, 7),
        lambda: Capability(),
        lambda: Threshold(0.5),
    ],
)
def test_state_round_trip(make):
    a = make()
    for i in range(3):
        a.step(0.5 + 0.1 * i)
    b = make()
    b.load_state_dict(a.state_dict())
    assert b.rate == a.rate and b.num_steps == 3
    a.step(0.9)
    b.step(0.9)
    assert b.rate == a.rate


def test_schedule_errors():
    with pytest.raises(ValueError, match="rate"):
        Constant(1.0)
    with pytest.raises(ValueError, match="r_min"):
        Capability(r_min=0.6, r_max=0.5)
    with pytest.raises(ValueError, match="metric"):
        Capability(metric="iou")
    with pytest.raises(ValueError, match="Exponential"):
        Exponential(0.5, 0.0, 10)
    with pytest.raises(ValueError, match="total_steps"):
        Linear(0.5, 0.0, 0)
    with pytest.raises(ValueError, match="unknown schedule"):
        create_schedule("step")
    with pytest.raises(ValueError, match="cannot load"):
        Constant(0.1).load_state_dict(Capability().state_dict())
    assert isinstance(create_schedule("linear", start=0.5, end=0.0, total_steps=3), Linear)
