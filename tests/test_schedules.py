"""Tests of the stateless γ schedules: exact values, endpoints, broadcasting and validation."""

from __future__ import annotations

import dataclasses
import itertools
import math
import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_focal.schedules import (
    ConstantGamma,
    CosineRamp,
    ExponentialRamp,
    GammaSchedule,
    LinearRamp,
    MultiStepGamma,
    SequentialGamma,
)

RAMPS = [LinearRamp, CosineRamp, ExponentialRamp]


# Exact values, hand-computed (the irrational ones with mpmath at 30 digits).


def test_constant_gamma_values() -> None:
    schedule = ConstantGamma(1.5)
    assert [schedule(step) for step in (0, 1, 10**9)] == [1.5, 1.5, 1.5]
    assert ConstantGamma()(0) == 2.0
    assert ConstantGamma([0.5, 3])(7) == [0.5, 3.0]


def test_linear_warmup_values_with_delay() -> None:
    schedule = LinearRamp(start=0.0, end=2.0, steps=100, delay=10)
    expected = {0: 0.0, 9: 0.0, 10: 0.0, 35: 0.5, 60: 1.0, 85: 1.5, 110: 2.0, 111: 2.0, 10**6: 2.0}
    assert {step: schedule(step) for step in expected} == pytest.approx(expected, abs=1e-12)


def test_linear_warmup_fraction_uses_total_steps() -> None:
    schedule = LinearRamp(start=1.0, end=3.0, fraction=0.1)
    # 10% of 1000 steps is a 100-step ramp; of 200 steps, a 20-step ramp.
    assert schedule(50, total_steps=1000) == pytest.approx(2.0)
    assert schedule(100, total_steps=1000) == 3.0
    assert schedule(10, total_steps=200) == pytest.approx(2.0)
    assert schedule(20, total_steps=200) == 3.0


def test_fraction_length_rounds_half_up_and_is_at_least_one() -> None:
    # Without a delay the span is the ramp length.
    assert LinearRamp(fraction=0.25).span(total_steps=10) == 3
    assert LinearRamp(fraction=0.24).span(total_steps=10) == 2
    assert LinearRamp(fraction=0.07).span(total_steps=100) == 7
    assert LinearRamp(fraction=0.01).span(total_steps=10) == 1
    assert LinearRamp(steps=42).span() == 42
    # A 3-step ramp, so one step is a third of the way.
    assert LinearRamp(start=0.0, end=3.0, fraction=0.25)(1, total_steps=10) == pytest.approx(1.0)


def test_linear_warmup_fraction_with_delay() -> None:
    schedule = LinearRamp(start=0.0, end=4.0, fraction=0.5, delay=5)
    assert schedule(5, total_steps=20) == 0.0
    assert schedule(10, total_steps=20) == pytest.approx(2.0)
    assert schedule(15, total_steps=20) == 4.0


def test_cosine_warmup_values() -> None:
    schedule = CosineRamp(start=0.0, end=2.0, steps=100)
    assert schedule(0) == 0.0
    assert schedule(25) == pytest.approx(0.292893218813452475599, rel=1e-12)
    assert schedule(50) == pytest.approx(1.0, rel=1e-12)
    assert schedule(75) == pytest.approx(1.707106781186547524401, rel=1e-12)
    assert schedule(100) == 2.0
    delayed = CosineRamp(start=1.0, end=3.0, steps=10, delay=4)
    assert delayed(4) == 1.0
    assert delayed(7) == pytest.approx(1.412214747707526870831, rel=1e-12)
    assert delayed(14) == 3.0


def test_exponential_warmup_values() -> None:
    schedule = ExponentialRamp(start=0.0, end=2.0, steps=100, rate=5.0)
    assert schedule(0) == 0.0
    assert schedule(25) == pytest.approx(1.436670616750427610265, rel=1e-12)
    assert schedule(50) == pytest.approx(1.848283639957512897613, rel=1e-12)
    assert schedule(100) == 2.0
    # The default rate is 5.
    assert ExponentialRamp(start=0.0, end=2.0, steps=100)(50) == schedule(50)
    # A gentler rate stays closer to the straight line (1.0 at halfway).
    assert ExponentialRamp(start=0.0, end=2.0, steps=100, rate=0.01)(50) == pytest.approx(
        1.0, abs=0.01
    )


def test_anneal_when_start_is_above_end() -> None:
    assert LinearRamp(start=3.0, end=1.0, steps=4)(1) == pytest.approx(2.5)
    assert CosineRamp(start=2.0, end=1.0, steps=200)(100) == pytest.approx(1.5)
    anneal = ExponentialRamp(start=2.0, end=0.0, steps=100)
    assert anneal(50) == pytest.approx(2.0 - 1.848283639957512897613, rel=1e-12)
    assert anneal(100) == 0.0


def test_multistep_values() -> None:
    schedule = MultiStepGamma(values=[0.0, 1.0, 2.5], milestones=[10, 20])
    expected = {0: 0.0, 9: 0.0, 10: 1.0, 19: 1.0, 20: 2.5, 10**6: 2.5}
    assert {step: schedule(step) for step in expected} == expected
    assert MultiStepGamma(values=[4.0], milestones=[])(123) == 4.0


def test_sequential_sees_steps_relative_to_its_segment() -> None:
    schedule = SequentialGamma(
        [ConstantGamma(0.5), LinearRamp(start=0.0, end=2.0, steps=10)], milestones=[100]
    )
    assert schedule(99) == 0.5
    assert schedule(100) == 0.0
    # Relative step 5 of a 10-step ramp; an absolute step would already be past the ramp.
    assert schedule(105) == pytest.approx(1.0)
    assert schedule(110) == 2.0


def test_sequential_warmup_hold_anneal() -> None:
    schedule = SequentialGamma(
        [
            LinearRamp(start=0.0, end=2.0, steps=100),
            ConstantGamma(2.0),
            CosineRamp(start=2.0, end=1.0, steps=200),
        ],
        milestones=[100, 500],
    )
    expected = {0: 0.0, 25: 0.5, 100: 2.0, 300: 2.0, 500: 2.0, 550: 1.853553390593273762200}
    expected |= {600: 1.5, 700: 1.0, 5000: 1.0}
    assert {step: schedule(step) for step in expected} == pytest.approx(expected, rel=1e-12)


def test_sequential_passes_total_steps_to_fraction_pieces() -> None:
    schedule = SequentialGamma(
        [ConstantGamma(1.0), LinearRamp(start=0.0, end=2.0, fraction=0.1)], milestones=[50]
    )
    # 10% of the whole run of 1000 steps, counted from the segment start.
    assert schedule(100, total_steps=1000) == pytest.approx(1.0)
    assert schedule(150, total_steps=1000) == 2.0
    assert schedule(10, total_steps=1000) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        schedule(10)
    with pytest.raises(ValueError, match="total_steps"):
        schedule.validate(None)
    schedule.validate(1000)


def test_sequential_nests() -> None:
    inner = SequentialGamma([ConstantGamma(1.0), ConstantGamma(2.0)], milestones=[5])
    outer = SequentialGamma([ConstantGamma(0.0), inner], milestones=[10])
    assert [outer(step) for step in (9, 10, 14, 15)] == [0.0, 1.0, 1.0, 2.0]


# Endpoints and shape.


@pytest.mark.parametrize("ramp", RAMPS)
@pytest.mark.parametrize(("start", "end"), [(0.0, 2.0), (0.3, 0.7), (5.0, 1.0)])
def test_ramp_endpoints(ramp: type, start: float, end: float) -> None:
    schedule = ramp(start=start, end=end, steps=37, delay=13)
    assert schedule(0) == start
    assert schedule(13) == start
    assert schedule(14) != start
    assert schedule(49) != end
    assert schedule(50) == end
    assert schedule(51) == end
    assert schedule(10**7) == end


@pytest.mark.parametrize("ramp", RAMPS)
def test_ramp_endpoints_with_fraction(ramp: type) -> None:
    schedule = ramp(start=0.25, end=3.0, fraction=0.2, delay=7)
    assert schedule(7, total_steps=500) == 0.25
    assert schedule(106, total_steps=500) != 3.0
    assert schedule(107, total_steps=500) == 3.0
    assert schedule(499, total_steps=500) == 3.0


@pytest.mark.parametrize("ramp", RAMPS)
def test_ramp_is_monotonic(ramp: type) -> None:
    rising = ramp(start=0.0, end=2.0, steps=200, delay=20)
    values = [rising(step) for step in range(260)]
    assert all(a < b for a, b in itertools.pairwise(values[20:221]))
    assert all(a <= b for a, b in itertools.pairwise(values))
    falling = ramp(start=2.0, end=0.5, steps=200)
    values = [falling(step) for step in range(220)]
    assert all(a > b for a, b in itertools.pairwise(values[:201]))


def test_cosine_and_exponential_differ_from_linear() -> None:
    linear = LinearRamp(start=0.0, end=2.0, steps=100)(25)
    assert CosineRamp(start=0.0, end=2.0, steps=100)(25) < linear
    assert ExponentialRamp(start=0.0, end=2.0, steps=100)(25) > linear


# Per-class values.


def test_per_class_broadcasts_scalar_against_list() -> None:
    schedule = LinearRamp(start=0.0, end=[1.0, 3.0], steps=10)
    assert schedule.num_classes == 2
    assert schedule(0) == [0.0, 0.0]
    assert schedule(5) == pytest.approx([0.5, 1.5])
    assert schedule(10) == [1.0, 3.0]
    both = CosineRamp(start=[2.0, 0.0, 1.0], end=[0.0, 2.0, 1.0], steps=10)
    assert both(5) == pytest.approx([1.0, 1.0, 1.0])
    assert LinearRamp(steps=10).num_classes is None
    assert isinstance(LinearRamp(steps=10)(5), float)


def test_per_class_multistep_broadcasts_scalars() -> None:
    schedule = MultiStepGamma(values=[[1.0, 2.0], 3.0], milestones=[5])
    assert schedule.num_classes == 2
    assert schedule(4) == [1.0, 2.0]
    assert schedule(5) == [3.0, 3.0]


def test_per_class_sequential_broadcasts_scalar_pieces() -> None:
    schedule = SequentialGamma([ConstantGamma(1.0), ConstantGamma([2.0, 4.0])], milestones=[3])
    assert schedule.num_classes == 2
    assert schedule(0) == [1.0, 1.0]
    assert schedule(3) == [2.0, 4.0]


def test_returned_lists_are_copies() -> None:
    for schedule in (
        ConstantGamma([1.0, 2.0]),
        LinearRamp(start=[0.0, 1.0], end=[1.0, 2.0], steps=4),
        MultiStepGamma(values=[[1.0, 2.0]], milestones=[]),
        SequentialGamma([ConstantGamma([1.0, 2.0]), ConstantGamma(3.0)], milestones=[2]),
    ):
        first = schedule(0)
        first[0] = 99.0
        assert schedule(0)[0] != 99.0


def test_accepts_tuples_and_arrays() -> None:
    # Anything with `tolist()` (numpy arrays, torch tensors) is read as plain floats.
    numpy = pytest.importorskip("numpy")
    assert ConstantGamma((1, 2))(0) == [1.0, 2.0]
    assert ConstantGamma(numpy.array([0.5, 1.5], dtype=numpy.float32))(0) == [0.5, 1.5]
    assert ConstantGamma(numpy.float64(2.0))(0) == 2.0
    assert ConstantGamma(numpy.array(3.0))(0) == 3.0


@pytest.mark.parametrize(
    "build",
    [
        lambda: ConstantGamma([]),
        lambda: LinearRamp(start=[0.0, 1.0], end=[1.0, 2.0, 3.0], steps=10),
        lambda: CosineRamp(start=[0.0], end=[1.0, 2.0], steps=10),
        lambda: MultiStepGamma(values=[[1.0, 2.0], [1.0, 2.0, 3.0]], milestones=[5]),
        lambda: SequentialGamma([ConstantGamma([1.0]), ConstantGamma([1.0, 2.0])], [5]),
    ],
    ids=["empty", "linear", "cosine", "multistep", "sequential"],
)
def test_per_class_length_mismatch_raises(build) -> None:
    with pytest.raises(ValueError, match=r"same|at least one"):
        build()


# Validation.


@pytest.mark.parametrize(
    ("build", "shown"),
    [
        (lambda: ConstantGamma(-1.0), "-1.0"),
        (lambda: ConstantGamma([1.0, -0.25]), "-0.25"),
        (lambda: LinearRamp(start=-0.5, steps=10), "-0.5"),
        (lambda: CosineRamp(end=[1.0, -2.0], steps=10), "-2.0"),
        (lambda: ExponentialRamp(start=-3, steps=10), "-3"),
        (lambda: MultiStepGamma(values=[1.0, -0.75], milestones=[5]), "-0.75"),
        (lambda: ConstantGamma(float("nan")), "nan"),
        (lambda: ConstantGamma(float("inf")), "inf"),
    ],
)
def test_negative_or_non_finite_gamma_raises_naming_the_value(build, shown: str) -> None:
    with pytest.raises(ValueError, match=r"γ >= 0") as error:
        build()
    assert shown in str(error.value)


@pytest.mark.parametrize("ramp", RAMPS)
def test_steps_and_fraction_are_exclusive(ramp: type) -> None:
    with pytest.raises(ValueError, match="exactly one of `steps` and `fraction`"):
        ramp(start=0.0, end=1.0)
    with pytest.raises(ValueError, match="exactly one of `steps` and `fraction`"):
        ramp(start=0.0, end=1.0, steps=10, fraction=0.5)


@pytest.mark.parametrize("ramp", RAMPS)
def test_fraction_without_total_steps_raises(ramp: type) -> None:
    schedule = ramp(fraction=0.1)
    for total_steps in (None, math.inf):
        with pytest.raises(ValueError, match=r"fraction of training.*total_steps"):
            schedule.validate(total_steps)
        with pytest.raises(ValueError, match=r"fraction of training.*total_steps"):
            schedule(0, total_steps=total_steps)
    schedule.validate(100)


def test_schedules_without_fraction_accept_unknown_total_steps() -> None:
    for schedule in (ConstantGamma(1.0), LinearRamp(steps=5), MultiStepGamma([1.0], [])):
        schedule.validate(None)
        schedule.validate(math.inf)
        schedule.validate(10)
    assert LinearRamp(start=0.0, end=2.0, steps=10)(5, total_steps=math.inf) == pytest.approx(1.0)


@pytest.mark.parametrize("total_steps", [0, -5, 2.5, True])
def test_bad_total_steps_raises(total_steps) -> None:
    with pytest.raises(ValueError, match="total_steps"):
        ConstantGamma(1.0).validate(total_steps)
    with pytest.raises(ValueError, match="total_steps"):
        LinearRamp(steps=3)(0, total_steps=total_steps)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction": 0.0}, r"`fraction` must be in \(0, 1\]"),
        ({"fraction": -0.1}, r"`fraction` must be in \(0, 1\]"),
        ({"fraction": 1.5}, r"`fraction` must be in \(0, 1\]"),
        ({"steps": 0}, "`steps` must be >= 1"),
        ({"steps": -3}, "`steps` must be >= 1"),
        ({"steps": 10, "delay": -1}, "`delay` must be >= 0"),
    ],
)
@pytest.mark.parametrize("ramp", RAMPS)
def test_bad_ramp_lengths_raise(ramp: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ramp(**kwargs)


def test_fraction_of_one_is_allowed() -> None:
    assert LinearRamp(start=0.0, end=1.0, fraction=1.0)(5, total_steps=10) == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs", [{"steps": 2.5}, {"steps": 10, "delay": 1.0}, {"steps": True}])
def test_non_integer_lengths_raise(kwargs: dict) -> None:
    with pytest.raises(TypeError, match="must be an int"):
        LinearRamp(**kwargs)


@pytest.mark.parametrize("rate", [0.0, -1.0, math.inf])
def test_bad_exponential_rate_raises(rate: float) -> None:
    with pytest.raises(ValueError, match="`rate` must be a finite float > 0"):
        ExponentialRamp(steps=10, rate=rate)


def test_negative_step_raises() -> None:
    with pytest.raises(ValueError, match="`step` must be >= 0"):
        LinearRamp(steps=10)(-1)
    with pytest.raises(ValueError, match="`step` must be >= 0"):
        SequentialGamma([ConstantGamma(1.0), ConstantGamma(2.0)], [3])(-1)


def test_non_numeric_gamma_raises() -> None:
    with pytest.raises(TypeError, match="gamma"):
        ConstantGamma("2.0")
    with pytest.raises(TypeError, match=r"gamma\[1\]"):
        ConstantGamma([1.0, "x"])
    with pytest.raises(TypeError, match="gamma"):
        ConstantGamma(None)


@pytest.mark.parametrize("cls", [MultiStepGamma, SequentialGamma])
@pytest.mark.parametrize(
    ("milestones", "message"),
    [
        ([10, 10], "strictly increasing"),
        ([20, 10], "strictly increasing"),
        ([0, 10], r"milestones\[0\]` must be >= 1"),
        ([-5, 10], r"milestones\[0\]` must be >= 1"),
        ([10], "one more entry than `milestones`"),
        ([10, 20, 30], "one more entry than `milestones`"),
    ],
)
def test_bad_milestones_raise(cls: type, milestones: list[int], message: str) -> None:
    segments = [1.0, 2.0, 3.0] if cls is MultiStepGamma else [ConstantGamma(g) for g in (1, 2, 3)]
    with pytest.raises(ValueError, match=message):
        cls(segments, milestones)


def test_sequential_rejects_non_schedules() -> None:
    with pytest.raises(TypeError, match=r"schedules\[1\]"):
        SequentialGamma([ConstantGamma(1.0), 2.0], [5])


def test_schedules_are_frozen_dataclasses() -> None:
    schedule = LinearRamp(start=0.0, end=[1.0, 2.0], steps=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.end = 5.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.num_classes = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        del schedule.steps
    assert schedule(10) == [1.0, 2.0]
    # Per-class values are held as tuples, so they cannot be changed in place either.
    assert schedule.end == (1.0, 2.0)
    with pytest.raises(TypeError):
        schedule.end[0] = 5.0  # type: ignore[index]
    assert dataclasses.is_dataclass(schedule)
    assert [f.name for f in dataclasses.fields(schedule)] == [
        "start",
        "end",
        "steps",
        "fraction",
        "delay",
    ]


def test_schedules_compare_and_hash_by_value() -> None:
    for build in (
        lambda: ConstantGamma([1, 2]),
        lambda: ExponentialRamp(start=0, end=[1.0, 2.0], fraction=0.5, delay=3, rate=2),
        lambda: MultiStepGamma(values=[0.0, [1.0, 2.0]], milestones=[4]),
        lambda: SequentialGamma([ConstantGamma(1.0), LinearRamp(steps=5)], milestones=[2]),
    ):
        assert build() == build()
        assert hash(build()) == hash(build())
        assert len({build(), build()}) == 1
    # Normalised values compare equal whatever plain type they were given as.
    assert LinearRamp(start=0, end=(1, 2), steps=10) == LinearRamp(0.0, [1.0, 2.0], steps=10)
    assert LinearRamp(steps=10) != CosineRamp(steps=10)
    assert LinearRamp(steps=10) != LinearRamp(steps=11)
    assert repr(LinearRamp(steps=10)) == (
        "LinearRamp(start=0.0, end=2.0, steps=10, fraction=None, delay=0)"
    )
    # replace() goes through the same checks as the constructor.
    assert dataclasses.replace(LinearRamp(steps=10), delay=5).span() == 15
    with pytest.raises(ValueError, match="`delay` must be >= 0"):
        dataclasses.replace(LinearRamp(steps=10), delay=-1)


# span: the step from which γ holds its final value.


@pytest.mark.parametrize("ramp", RAMPS)
def test_ramp_span_is_delay_plus_length(ramp: type) -> None:
    schedule = ramp(start=0.5, end=3.0, steps=40, delay=7)
    assert schedule.span() == schedule.span(total_steps=10) == 47
    assert schedule(46) != 3.0
    assert schedule(47) == 3.0
    by_fraction = ramp(start=0.5, end=3.0, fraction=0.1, delay=7)
    assert by_fraction.span(total_steps=500) == 57
    assert by_fraction(56, total_steps=500) != 3.0
    assert by_fraction(57, total_steps=500) == 3.0
    # A fraction of an unknown run has no span yet.
    assert by_fraction.span() is None
    assert by_fraction.span(total_steps=math.inf) is None


def test_constant_and_multistep_span() -> None:
    assert ConstantGamma(1.0).span() == 0
    assert ConstantGamma([1.0, 2.0]).span(total_steps=100) == 0
    assert MultiStepGamma(values=[0.0, 1.0, 2.0], milestones=[10, 20]).span() == 20
    assert MultiStepGamma(values=[4.0], milestones=[]).span() == 0


def test_sequential_span_is_the_last_milestone_plus_the_last_piece() -> None:
    ramp_hold_anneal = SequentialGamma(
        [LinearRamp(steps=100), ConstantGamma(2.0), CosineRamp(2.0, 1.0, steps=200)],
        milestones=[100, 500],
    )
    assert ramp_hold_anneal.span() == 700
    assert ramp_hold_anneal(699) != 1.0
    assert ramp_hold_anneal(700) == 1.0
    # The first piece's 1000-step ramp is cut off at its milestone; the hold ends the schedule.
    cut = SequentialGamma([LinearRamp(steps=1000), ConstantGamma(2.0)], milestones=[50])
    assert cut.span() == 50
    assert cut(49) != 2.0
    assert cut(50) == 2.0
    # A last piece given as a fraction of the run is offset by the milestone, or unknown.
    by_fraction = SequentialGamma([ConstantGamma(0.0), LinearRamp(fraction=0.1)], [30])
    assert by_fraction.span(total_steps=1000) == 130
    assert by_fraction.span() is None
    nested = SequentialGamma([ConstantGamma(0.0), cut], milestones=[10])
    assert nested.span() == 60
    assert SequentialGamma([MultiStepGamma([1.0, 2.0], [5])], milestones=[]).span() == 5


# Purity: the value depends on the step alone.


def _all_kinds() -> list[GammaSchedule]:
    return [
        ConstantGamma([1.0, 2.0]),
        LinearRamp(start=0.0, end=2.0, steps=50, delay=5),
        CosineRamp(start=[0.0, 1.0], end=2.0, fraction=0.3),
        ExponentialRamp(start=3.0, end=1.0, steps=40, rate=2.0),
        MultiStepGamma(values=[0.0, 1.0, 2.0], milestones=[10, 60]),
        SequentialGamma(
            [LinearRamp(steps=20), ConstantGamma(2.0), CosineRamp(2.0, 1.0, steps=30)],
            milestones=[20, 70],
        ),
    ]


@pytest.mark.parametrize("schedule", _all_kinds(), ids=lambda s: type(s).__name__)
def test_value_is_independent_of_call_order(schedule: GammaSchedule) -> None:
    steps = list(range(120))
    forward = {step: schedule(step, total_steps=100) for step in steps}
    shuffled = steps[:]
    random.Random(0).shuffle(shuffled)
    backward = {step: schedule(step, total_steps=100) for step in reversed(steps)}
    in_random_order = {step: schedule(step, total_steps=100) for step in shuffled}
    assert forward == backward == in_random_order
    # A fresh copy (as a resumed run or another rank would build) agrees at every step.
    twin = pickle.loads(pickle.dumps(schedule))
    assert twin == schedule
    assert {step: twin(step, total_steps=100) for step in shuffled} == forward


@pytest.mark.parametrize("schedule", _all_kinds(), ids=lambda s: type(s).__name__)
def test_value_changes_last_at_the_span(schedule: GammaSchedule) -> None:
    span = schedule.span(total_steps=100)
    final = schedule(span, total_steps=100)
    assert all(schedule(step, total_steps=100) == final for step in range(span, span + 200))
    if span > 0:
        assert schedule(span - 1, total_steps=100) != final


gammas = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(
    ramp=st.sampled_from(RAMPS),
    start=gammas,
    end=gammas,
    steps=st.integers(min_value=1, max_value=1000),
    delay=st.integers(min_value=0, max_value=100),
    step=st.integers(min_value=0, max_value=2000),
    earlier=st.integers(min_value=0, max_value=2000),
)
def test_ramp_values_stay_between_start_and_end(
    ramp: type, start: float, end: float, steps: int, delay: int, step: int, earlier: int
) -> None:
    schedule = ramp(start=start, end=end, steps=steps, delay=delay)
    value = schedule(step)
    assert min(start, end) <= value <= max(start, end)
    # Another step evaluated in between, or a separately built twin, changes nothing.
    schedule(earlier)
    assert schedule(step) == value
    assert ramp(start=start, end=end, steps=steps, delay=delay)(step) == value
    # Monotonic in the direction of the ramp.
    low, high = sorted((step, earlier))
    if start <= end:
        assert schedule(low) <= schedule(high)
    else:
        assert schedule(low) >= schedule(high)


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(gammas, min_size=1, max_size=5),
    gaps=st.lists(st.integers(min_value=1, max_value=50), min_size=4, max_size=4),
    step=st.integers(min_value=0, max_value=300),
)
def test_multistep_value_is_the_segment_value(
    values: list[float], gaps: list[int], step: int
) -> None:
    milestones = [sum(gaps[: i + 1]) for i in range(len(values) - 1)]
    schedule = MultiStepGamma(values=values, milestones=milestones)
    segment = sum(1 for milestone in milestones if milestone <= step)
    assert schedule(step) == values[segment]


# Construction from configs.


def test_build_from_jsonargparse_class_path() -> None:
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--gamma_schedule", type=GammaSchedule)
    config = parser.parse_object(
        {
            "gamma_schedule": {
                "class_path": "lightning_focal.schedules.LinearRamp",
                "init_args": {"start": 0.0, "end": [1.0, 2.0], "fraction": 0.1, "delay": 5},
            }
        }
    )
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    schedule = instantiate(config).gamma_schedule
    assert schedule == LinearRamp(start=0.0, end=[1.0, 2.0], fraction=0.1, delay=5)
    assert schedule(55, total_steps=1000) == pytest.approx([0.5, 1.0])


def test_build_from_hydra_target() -> None:
    pytest.importorskip("hydra")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = OmegaConf.create(
        {
            "_target_": "lightning_focal.schedules.SequentialGamma",
            # Hydra turns dataclass instances inside a ListConfig into DictConfig (hydra#2504);
            # "partial" hands the pieces over in a plain list.
            "_convert_": "partial",
            "schedules": [
                {"_target_": "lightning_focal.schedules.LinearRamp", "steps": 10},
                {"_target_": "lightning_focal.schedules.ConstantGamma", "gamma": [1.0, 3.0]},
            ],
            "milestones": [10],
        }
    )
    schedule = instantiate(node)
    assert schedule == SequentialGamma([LinearRamp(steps=10), ConstantGamma([1.0, 3.0])], [10])
    assert schedule(5) == pytest.approx([1.0, 1.0])
    assert schedule(10) == [1.0, 3.0]


def test_schedules_use_the_losses_gamma_parser() -> None:
    # one γ parser for schedules, policies and losses: the same message everywhere
    with pytest.raises(ValueError, match="`end` must be a finite γ >= 0"):
        LinearRamp(start=0.0, end=-1.0, steps=10)
