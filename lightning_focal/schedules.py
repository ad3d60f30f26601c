"""Stateless γ schedules for focal loss.

γ at optimiser step ``t`` is a pure function of ``t`` (and of the run's length, for a ramp given
as a fraction of it), as in timm's schedulers: every DDP rank computes the same γ without
communicating, and a resumed run needs nothing but ``trainer.global_step`` to continue exactly.
A γ is a scalar or per-class; a per-class schedule returns a new ``list[float]`` and repeats its
scalars for every class. Schedules are frozen dataclasses of plain values, so LightningCLI YAML
and Hydra ``_target_`` nodes build them, and they are hashable, comparable and picklable.

Example:
    >>> schedule = LinearRamp(start=0.0, end=2.0, steps=100)
    >>> [schedule(step) for step in (0, 50, 100, 1000)], schedule.span()
    ([0.0, 1.0, 2.0, 2.0], 100)
"""

from __future__ import annotations

import abc
import bisect
import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .losses._common import gamma_value, int_value

__all__ = [
    "ConstantGamma",
    "CosineRamp",
    "ExponentialRamp",
    "GammaSchedule",
    "LinearRamp",
    "MultiStepGamma",
    "SequentialGamma",
]


def _set(schedule: GammaSchedule, **values: Any) -> None:
    """Store normalised values on a frozen dataclass (from ``__post_init__`` only)."""
    for name, value in values.items():
        object.__setattr__(schedule, name, value)


def _gammas(**values: Any) -> list[float | tuple[float, ...]]:
    """γ values parsed by ``gamma_value``; if any is per-class, all become tuples of one length."""
    gammas = {name: gamma_value(value, name) for name, value in values.items()}
    lengths = {name: len(gamma) for name, gamma in gammas.items() if isinstance(gamma, list)}
    if len(set(lengths.values())) > 1:
        seen = ", ".join(f"`{name}` has {length}" for name, length in lengths.items())
        raise ValueError(f"per-class γ values must all have the same length: {seen}")
    if not lengths:
        return list(gammas.values())
    n = next(iter(lengths.values()))
    return [tuple(g) if isinstance(g, list) else (g,) * n for g in gammas.values()]


def _milestones(milestones: Sequence[int], segments: int, name: str) -> tuple[int, ...]:
    """Milestones as ints >= 1, strictly increasing, one fewer than the segments."""
    checked = tuple(int_value(m, f"milestones[{i}]", minimum=1) for i, m in enumerate(milestones))
    if any(later <= earlier for earlier, later in itertools.pairwise(checked)):
        raise ValueError(f"`milestones` must be strictly increasing, got {list(checked)}")
    if segments != len(checked) + 1:
        raise ValueError(
            f"`{name}` must have one more entry than `milestones`: "
            f"got {segments} {name} and {len(checked)} milestones"
        )
    return checked


def _float(value: Any, name: str, valid: Callable[[float], bool], rule: str) -> float:
    """``value`` as a float (not a bool) that is ``valid``; the error states ``rule``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a float, got {value!r}")
    if not valid(value):
        raise ValueError(f"`{name}` must be {rule}, got {value!r}")
    return float(value)


def _blend(start: float, end: float, weight: float) -> float:
    """``start + (end - start) * weight``, exactly ``start``/``end`` at weight 0/1, never past."""
    if weight <= 0.0 or weight >= 1.0:
        return start if weight <= 0.0 else end
    return min(max(start + (end - start) * weight, min(start, end)), max(start, end))


class GammaSchedule(abc.ABC):
    """Base class of γ schedules, frozen dataclasses: γ at a step as a pure function of the step.

    Example:
        >>> isinstance(ConstantGamma(2.0), GammaSchedule)
        True
    """

    num_classes: int | None = None
    """Length of the per-class γ this schedule returns, or None when it returns a scalar."""

    def validate(self, total_steps: int | float | None) -> None:
        """Raise ``ValueError`` unless the schedule can run ``total_steps`` optimiser steps: a
        positive int, or ``None``/``math.inf`` (unknown), which a ``fraction`` ramp cannot use.

        Example:
            >>> LinearRamp(fraction=0.1).validate(total_steps=None)
            Traceback (most recent call last):
              ...
            ValueError: LinearRamp(...) is given as a fraction of training and needs a finite `total_steps`, got None
        """
        if total_steps is None or total_steps == math.inf:
            return
        if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral):
            raise ValueError(
                f"`total_steps` must be a positive int, None or math.inf, got {total_steps!r}"
            )
        if total_steps < 1:
            raise ValueError(f"`total_steps` must be >= 1, got {total_steps}")

    @abc.abstractmethod
    def __call__(self, step: int, total_steps: int | float | None = None) -> float | list[float]:
        """γ at the 0-based optimiser step ``step`` (``trainer.global_step``) of a run of
        ``total_steps`` steps (needed only by ramps given as a fraction of training)."""

    @abc.abstractmethod
    def span(self, total_steps: int | float | None = None) -> int | None:
        """The last step at which γ still changes (γ holds its final value from there on), or
        None when that depends on a ``total_steps`` not given. A ``fraction`` ramp's length is
        ``fraction * total_steps`` rounded half up, and at least 1.

        Example:
            >>> LinearRamp(steps=100, delay=20).span(), LinearRamp(fraction=0.25).span(10)
            (120, 3)
        """

    def _step(self, step: int, total_steps: int | float | None) -> int:
        self.validate(total_steps)
        return int_value(step, "step", minimum=0)


@dataclass(frozen=True)
class ConstantGamma(GammaSchedule):
    """The same γ (>= 0, or one γ per class) at every step.

    Example:
        >>> ConstantGamma(2.0)(0), ConstantGamma([1.0, 3.0])(10_000)
        (2.0, [1.0, 3.0])
    """

    gamma: float | Sequence[float] = 2.0

    def __post_init__(self) -> None:
        (gamma,) = _gammas(gamma=self.gamma)
        _set(self, gamma=gamma, num_classes=len(gamma) if isinstance(gamma, tuple) else None)

    def __call__(self, step: int, total_steps: int | float | None = None) -> float | list[float]:
        self._step(step, total_steps)
        return list(self.gamma) if self.num_classes else self.gamma

    def span(self, total_steps: int | float | None = None) -> int | None:
        return 0


@dataclass(frozen=True)
class _Ramp(GammaSchedule):
    """``start`` until ``delay``, then ``start + (end - start) * shape(u)`` with
    ``u = clamp((step - delay) / length, 0, 1)``, then ``end``; ``start > end`` anneals γ down."""

    start: float | Sequence[float] = 0.0
    end: float | Sequence[float] = 2.0
    steps: int | None = None
    fraction: float | None = None
    delay: int = 0

    def __post_init__(self) -> None:
        start, end = _gammas(start=self.start, end=self.end)
        steps, fraction = self.steps, self.fraction
        if (steps is None) == (fraction is None):
            raise ValueError(
                f"give exactly one of `steps` and `fraction`, got steps={steps!r} and "
                f"fraction={fraction!r}"
            )
        if fraction is not None:
            fraction = _float(fraction, "fraction", lambda f: 0 < f <= 1, "in (0, 1]")
        if steps is not None:
            steps = int_value(steps, "steps", minimum=1)
        delay = int_value(self.delay, "delay", minimum=0)
        num_classes = len(start) if isinstance(start, tuple) else None
        _set(self, start=start, end=end, steps=steps, fraction=fraction, delay=delay)
        _set(self, num_classes=num_classes)

    def validate(self, total_steps: int | float | None) -> None:
        super().validate(total_steps)
        if self.fraction is not None and total_steps in (None, math.inf):
            raise ValueError(
                f"{type(self).__name__}(...) is given as a fraction of training and needs a "
                f"finite `total_steps`, got {total_steps!r}"
            )

    def _length(self, total_steps: int | float | None) -> int:
        # A fraction of the run, rounded half up, and at least one step.
        self.validate(total_steps)
        if self.steps is not None:
            return self.steps
        return max(1, math.floor(self.fraction * total_steps + 0.5))

    def span(self, total_steps: int | float | None = None) -> int | None:
        if self.fraction is not None and total_steps in (None, math.inf):
            return None
        return self.delay + self._length(total_steps)

    @abc.abstractmethod
    def shape(self, u: float) -> float:
        """Ramp profile on [0, 1], increasing from ``shape(0) = 0`` to ``shape(1) = 1``."""

    def __call__(self, step: int, total_steps: int | float | None = None) -> float | list[float]:
        step = self._step(step, total_steps)
        weight = self.shape(min(max((step - self.delay) / self._length(total_steps), 0.0), 1.0))
        if self.num_classes is None:
            return _blend(self.start, self.end, weight)
        return [_blend(s, e, weight) for s, e in zip(self.start, self.end)]


@dataclass(frozen=True)
class LinearRamp(_Ramp):
    """γ moves linearly from ``start`` to ``end`` (``shape(u) = u``), then holds ``end``.

    Args:
        start: γ before and at ``delay`` (scalar or per-class).
        end: γ from ``delay + length`` on (scalar or per-class); ``start > end`` anneals.
        steps: Ramp length in optimiser steps (>= 1); give exactly one of ``steps`` and
            ``fraction``.
        fraction: Ramp length as a fraction in (0, 1] of ``total_steps``, which every call
            then needs (for example ``trainer.estimated_stepping_batches``).
        delay: Steps to hold ``start`` before the ramp begins.

    Example:
        >>> ramp = LinearRamp(start=0.0, end=2.0, fraction=0.1, delay=10)
        >>> [ramp(step, total_steps=1000) for step in (0, 10, 60, 110)], ramp.span(1000)
        ([0.0, 0.0, 1.0, 2.0], 110)
    """

    def shape(self, u: float) -> float:
        return u


@dataclass(frozen=True)
class CosineRamp(_Ramp):
    """γ follows a half cosine from ``start`` to ``end`` (``shape(u) = (1 - cos(π u)) / 2``):
    slow at both ends, fastest halfway. Arguments as :class:`LinearRamp`.

    Example:
        >>> anneal = CosineRamp(start=2.0, end=1.0, steps=200)
        >>> [anneal(step) for step in (0, 100, 200)]
        [2.0, 1.5, 1.0]
    """

    def shape(self, u: float) -> float:
        return (1.0 - math.cos(math.pi * u)) / 2.0


@dataclass(frozen=True)
class ExponentialRamp(_Ramp):
    """γ moves fast, then levels off, reaching ``end`` at the end of the ramp:
    ``shape(u) = (1 - exp(-rate u)) / (1 - exp(-rate))``. Arguments as :class:`LinearRamp`, and
    ``rate`` > 0: larger rates front-load the ramp; ``rate -> 0`` tends to :class:`LinearRamp`.

    Example:
        >>> ramp = ExponentialRamp(start=0.0, end=2.0, steps=100, rate=5.0)
        >>> round(ramp(50), 6), ramp(100)
        (1.848284, 2.0)
    """

    rate: float = 5.0

    def __post_init__(self) -> None:
        _set(self, rate=_float(self.rate, "rate", lambda r: 0 < r < math.inf, "a finite float > 0"))
        super().__post_init__()

    def shape(self, u: float) -> float:
        return math.expm1(-self.rate * u) / math.expm1(-self.rate)


@dataclass(frozen=True)
class MultiStepGamma(GammaSchedule):
    """Piecewise-constant γ: ``values[i]`` (scalar or per-class) from ``milestones[i - 1]``
    (inclusive) to ``milestones[i]``; milestones are ints >= 1, strictly increasing.

    Example:
        >>> schedule = MultiStepGamma(values=[0.0, 1.0, 2.0], milestones=[10, 20])
        >>> [schedule(step) for step in (0, 9, 10, 19, 20, 500)], schedule.span()
        ([0.0, 0.0, 1.0, 1.0, 2.0, 2.0], 20)
    """

    values: Sequence[float | Sequence[float]]
    milestones: Sequence[int]

    def __post_init__(self) -> None:
        if isinstance(self.values, (str, bytes)) or not isinstance(self.values, Sequence):
            raise TypeError(f"`values` must be a sequence of γ values, got {self.values!r}")
        values = tuple(_gammas(**{f"values[{i}]": v for i, v in enumerate(self.values)}))
        milestones = _milestones(self.milestones, len(values), "values")
        num_classes = len(values[0]) if isinstance(values[0], tuple) else None
        _set(self, values=values, milestones=milestones, num_classes=num_classes)

    def __call__(self, step: int, total_steps: int | float | None = None) -> float | list[float]:
        value = self.values[bisect.bisect_right(self.milestones, self._step(step, total_steps))]
        return list(value) if self.num_classes else value

    def span(self, total_steps: int | float | None = None) -> int | None:
        return self.milestones[-1] if self.milestones else 0


@dataclass(frozen=True)
class SequentialGamma(GammaSchedule):
    """Schedules run one after another, like ``torch.optim.lr_scheduler.SequentialLR``.

    ``schedules[i]`` runs from ``milestones[i - 1]`` (inclusive) to ``milestones[i]`` and sees
    the step relative to the start of its segment; ``total_steps`` is passed on unchanged, so a
    ``fraction`` is of the whole run. Scalar pieces are repeated for every class of per-class ones.
    A Hydra node needs ``_convert_: partial``: Hydra turns dataclasses in a list into DictConfig.

    Example:
        Ramp γ up over 100 steps, hold it to step 500, anneal it over 200 steps:

        >>> ramp, anneal = LinearRamp(0.0, 2.0, steps=100), CosineRamp(2.0, 1.0, steps=200)
        >>> schedule = SequentialGamma([ramp, ConstantGamma(2.0), anneal], milestones=[100, 500])
        >>> [schedule(step) for step in (0, 50, 100, 499, 500, 600, 700)], schedule.span()
        ([0.0, 1.0, 2.0, 2.0, 2.0, 1.5, 1.0], 700)
    """

    schedules: Sequence[GammaSchedule]
    milestones: Sequence[int]

    def __post_init__(self) -> None:
        for index, schedule in enumerate(self.schedules):
            if not isinstance(schedule, GammaSchedule):
                raise TypeError(f"`schedules[{index}]` must be a GammaSchedule, got {schedule!r}")
        schedules = tuple(self.schedules)
        lengths = [schedule.num_classes for schedule in schedules]
        if len(set(lengths) - {None}) > 1:
            raise ValueError(
                f"per-class pieces must have the same number of classes, got {lengths}"
            )
        milestones = _milestones(self.milestones, len(schedules), "schedules")
        num_classes = max(lengths, key=lambda n: n or 0)
        _set(self, schedules=schedules, milestones=milestones, num_classes=num_classes)

    def validate(self, total_steps: int | float | None) -> None:
        super().validate(total_steps)
        for schedule in self.schedules:
            schedule.validate(total_steps)

    def __call__(self, step: int, total_steps: int | float | None = None) -> float | list[float]:
        step = self._step(step, total_steps)
        index = bisect.bisect_right(self.milestones, step)
        segment_start = self.milestones[index - 1] if index > 0 else 0
        value = self.schedules[index](step - segment_start, total_steps)
        if self.num_classes and not isinstance(value, list):
            return [value] * self.num_classes
        return value

    def span(self, total_steps: int | float | None = None) -> int | None:
        # Earlier pieces are cut off at their milestones: the last piece decides.
        last = self.schedules[-1].span(total_steps)
        return None if last is None else (self.milestones[-1] if self.milestones else 0) + last
