"""Stateless γ schedules for focal loss.

A schedule maps an optimiser step to a focusing parameter γ. Like timm's schedulers, the value
at step ``t`` is a pure function of ``t`` (and of the total number of steps, when a length is
given as a fraction of training): every DDP rank computes the same γ without communicating, and
a resumed run needs no state beyond ``trainer.global_step`` to continue exactly.

Every γ value a constructor takes may be a scalar or per-class (one γ per class). A per-class
schedule returns ``list[float]``; a scalar given next to a per-class list is broadcast to every
class. Constructors take only plain values (``int``, ``float``, ``list[float]``, ``str``), so a
schedule can be built from LightningCLI YAML (``class_path``/``init_args``) or from a Hydra
``_target_`` node. γ values are parsed by the one γ parser the losses use.

Example:
    >>> schedule = LinearRamp(start=0.0, end=2.0, steps=100)
    >>> [schedule(step) for step in (0, 50, 100, 1000)]
    [0.0, 1.0, 2.0, 2.0]
"""

from __future__ import annotations

import abc
import bisect
import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

from .losses._common import gamma_value, int_value

__all__ = [
    "ConstantGamma",
    "CosineRamp",
    "ExponentialRamp",
    "GammaSchedule",
    "LinearRamp",
    "MultiStepGamma",
    "SequentialGamma",
    "build_schedule",
]


def _num_classes(*values: float | list[float], names: Sequence[str]) -> int | None:
    """Number of classes shared by the per-class values (None when all are scalars)."""
    lengths = {name: len(value) for name, value in zip(names, values) if isinstance(value, list)}
    if len(set(lengths.values())) > 1:
        seen = ", ".join(f"`{name}` has {length}" for name, length in lengths.items())
        raise ValueError(f"per-class γ values must all have the same length: {seen}")
    return next(iter(lengths.values()), None)


def _broadcast(value: float | list[float], num_classes: int | None) -> float | list[float]:
    """Repeat a scalar γ for every class of a per-class schedule; copy lists."""
    if num_classes is None:
        return value
    return list(value) if isinstance(value, list) else [value] * num_classes


def _milestones(milestones: Sequence[int], num_segments: int, segments_name: str) -> list[int]:
    """Check milestones: ints >= 1, strictly increasing, one fewer than the segments."""
    checked = [int_value(m, f"milestones[{i}]", minimum=1) for i, m in enumerate(milestones)]
    if any(later <= earlier for earlier, later in itertools.pairwise(checked)):
        raise ValueError(f"`milestones` must be strictly increasing, got {checked}")
    if num_segments != len(checked) + 1:
        raise ValueError(
            f"`{segments_name}` must have one more entry than `milestones`: "
            f"got {num_segments} {segments_name} and {len(checked)} milestones"
        )
    return checked


def _blend(start: float, end: float, weight: float) -> float:
    """``start + (end - start) * weight``, kept within [min(start, end), max(start, end)]."""
    if weight <= 0.0:
        return start
    if weight >= 1.0:
        return end
    value = start + (end - start) * weight
    # Rounding could step a hair past the end point; γ must never leave the documented range.
    return min(max(value, min(start, end)), max(start, end))


class GammaSchedule(abc.ABC):
    """Base class of γ schedules: γ at an optimiser step, as a pure function of the step.

    Subclasses implement :meth:`__call__` and extend :meth:`validate` when they need
    ``total_steps``. Instances are immutable after construction, so a schedule shared between
    modules, ranks or a resumed run always gives the same value at the same step.

    Example:
        >>> isinstance(ConstantGamma(2.0), GammaSchedule)
        True
    """

    _fields: ClassVar[tuple[str, ...]] = ()
    num_classes: int | None = None
    """Length of the per-class γ this schedule returns, or None when it returns a scalar."""

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen", False):
            raise AttributeError(f"{type(self).__name__} is immutable; build a new schedule")
        super().__setattr__(name, value)

    def _freeze(self) -> None:
        self._frozen = True

    def validate(self, total_steps: int | float | None) -> None:
        """Check that the schedule can be evaluated for a run of ``total_steps`` steps.

        Args:
            total_steps: Number of optimiser steps of the whole run (for example
                ``trainer.estimated_stepping_batches``), ``None`` when unknown. ``math.inf``,
                which Lightning reports for an unbounded run, counts as unknown.

        Raises:
            ValueError: If ``total_steps`` is not a positive int, ``None`` or ``math.inf``, or the
                schedule needs a finite ``total_steps`` and did not get one.

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
        """γ at optimiser step ``step``.

        Args:
            step: 0-based optimiser step (``trainer.global_step``).
            total_steps: Number of optimiser steps of the whole run; needed only by schedules
                given as a fraction of training.

        Returns:
            γ as a float, or one γ per class as a new ``list[float]``.
        """

    def _check_call(self, step: int, total_steps: int | float | None) -> int:
        self.validate(total_steps)
        return int_value(step, "step", minimum=0)

    def __repr__(self) -> str:
        arguments = ", ".join(f"{field}={getattr(self, field)!r}" for field in self._fields)
        return f"{type(self).__name__}({arguments})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __hash__(self) -> int:
        return hash((type(self), repr(self)))


class ConstantGamma(GammaSchedule):
    """The same γ at every step.

    Args:
        gamma: γ >= 0, or one γ per class.

    Example:
        >>> ConstantGamma(2.0)(0), ConstantGamma([1.0, 3.0])(10_000)
        (2.0, [1.0, 3.0])
    """

    _fields = ("gamma",)

    def __init__(self, gamma: float | Sequence[float] = 2.0) -> None:
        self.gamma = gamma_value(gamma, "gamma")
        self.num_classes = _num_classes(self.gamma, names=["gamma"])
        self._freeze()

    def __call__(self, step: int, total_steps: int | float | None = None) -> float | list[float]:
        self._check_call(step, total_steps)
        return _broadcast(self.gamma, self.num_classes)


class _Ramp(GammaSchedule):
    """Shared code of the warmups: ``start`` until ``delay``, a ramp to ``end``, then ``end``.

    The ramp position is ``u = clamp((step - delay) / length, 0, 1)`` and γ is
    ``start + (end - start) * shape(u)`` with ``shape(0) = 0`` and ``shape(1) = 1``. Subclasses
    implement :meth:`shape`. ``start > end`` is allowed and anneals γ down.
    """

    _fields = ("start", "end", "steps", "fraction", "delay")

    def __init__(
        self,
        start: float | Sequence[float] = 0.0,
        end: float | Sequence[float] = 2.0,
        steps: int | None = None,
        fraction: float | None = None,
        delay: int = 0,
    ) -> None:
        self.start = gamma_value(start, "start")
        self.end = gamma_value(end, "end")
        self.num_classes = _num_classes(self.start, self.end, names=["start", "end"])
        if (steps is None) == (fraction is None):
            raise ValueError(
                f"give exactly one of `steps` and `fraction`, got steps={steps!r} and "
                f"fraction={fraction!r}"
            )
        self.steps = None if steps is None else int_value(steps, "steps", minimum=1)
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
                raise TypeError(f"`fraction` must be a float, got {fraction!r}")
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"`fraction` must be in (0, 1], got {fraction!r}")
            fraction = float(fraction)
        self.fraction = fraction
        self.delay = int_value(delay, "delay", minimum=0)
        self._freeze()

    def validate(self, total_steps: int | float | None) -> None:
        super().validate(total_steps)
        if self.fraction is not None and (total_steps is None or total_steps == math.inf):
            raise ValueError(
                f"{type(self).__name__}(...) is given as a fraction of training and needs a "
                f"finite `total_steps`, got {total_steps!r}"
            )

    def length(self, total_steps: int | float | None = None) -> int:
        """Number of steps the ramp takes.

        With ``fraction``, ``fraction * total_steps`` rounded to the nearest step (halves
        round up), and at least 1.

        Example:
            >>> LinearRamp(fraction=0.25).length(total_steps=10)
            3
        """
        self.validate(total_steps)
        return self._length(total_steps)

    def _length(self, total_steps: int | float | None) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.floor(self.fraction * total_steps + 0.5))

    @abc.abstractmethod
    def shape(self, u: float) -> float:
        """Ramp profile on [0, 1], increasing from ``shape(0) = 0`` to ``shape(1) = 1``."""

    def __call__(self, step: int, total_steps: int | float | None = None) -> float | list[float]:
        step = self._check_call(step, total_steps)
        u = min(max((step - self.delay) / self._length(total_steps), 0.0), 1.0)
        weight = self.shape(u)
        if self.num_classes is None:
            return _blend(self.start, self.end, weight)
        starts = _broadcast(self.start, self.num_classes)
        ends = _broadcast(self.end, self.num_classes)
        return [_blend(s, e, weight) for s, e in zip(starts, ends)]


class LinearRamp(_Ramp):
    """γ moves linearly from ``start`` to ``end``, then holds ``end``.

    ``γ(step) = start + (end - start) * u`` with ``u = clamp((step - delay) / length, 0, 1)``.

    Args:
        start: γ before and at ``delay`` (scalar or per-class).
        end: γ from ``delay + length`` on (scalar or per-class). ``start > end`` anneals.
        steps: Ramp length in optimiser steps (>= 1). Give exactly one of ``steps`` and
            ``fraction``.
        fraction: Ramp length as a fraction in (0, 1] of ``total_steps``, which every call
            then needs (for example ``trainer.estimated_stepping_batches``).
        delay: Steps to hold ``start`` before the ramp begins.

    Example:
        >>> warmup = LinearRamp(start=0.0, end=2.0, fraction=0.1, delay=10)
        >>> [warmup(step, total_steps=1000) for step in (0, 10, 60, 110)]
        [0.0, 0.0, 1.0, 2.0]
    """

    def shape(self, u: float) -> float:
        return u


class CosineRamp(_Ramp):
    """γ follows a half cosine from ``start`` to ``end``, then holds ``end``.

    ``γ(step) = start + (end - start) * (1 - cos(π u)) / 2`` with
    ``u = clamp((step - delay) / length, 0, 1)``: slow at both ends, fastest halfway.
    Arguments as :class:`LinearRamp`.

    Example:
        >>> anneal = CosineRamp(start=2.0, end=1.0, steps=200)
        >>> [anneal(step) for step in (0, 100, 200)]
        [2.0, 1.5, 1.0]
    """

    def shape(self, u: float) -> float:
        return (1.0 - math.cos(math.pi * u)) / 2.0


class ExponentialRamp(_Ramp):
    """γ rises fast then levels off towards ``end``, reaching it at the end of the ramp.

    ``γ(step) = start + (end - start) * (1 - exp(-rate u)) / (1 - exp(-rate))`` with
    ``u = clamp((step - delay) / length, 0, 1)``. Other arguments as :class:`LinearRamp`.

    Args:
        start: γ before and at ``delay`` (scalar or per-class).
        end: γ from ``delay + length`` on (scalar or per-class).
        steps: Ramp length in optimiser steps; exactly one of ``steps`` and ``fraction``.
        fraction: Ramp length as a fraction in (0, 1] of ``total_steps``.
        delay: Steps to hold ``start`` before the ramp begins.
        rate: Curvature, > 0; larger rates front-load the ramp, and ``rate -> 0`` tends to
            :class:`LinearRamp`.

    Example:
        >>> warmup = ExponentialRamp(start=0.0, end=2.0, steps=100, rate=5.0)
        >>> round(warmup(50), 6), warmup(100)
        (1.848284, 2.0)
    """

    _fields = (*_Ramp._fields, "rate")

    def __init__(
        self,
        start: float | Sequence[float] = 0.0,
        end: float | Sequence[float] = 2.0,
        steps: int | None = None,
        fraction: float | None = None,
        delay: int = 0,
        rate: float = 5.0,
    ) -> None:
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
            raise TypeError(f"`rate` must be a float, got {rate!r}")
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"`rate` must be a finite float > 0, got {rate!r}")
        self.rate = float(rate)
        super().__init__(start=start, end=end, steps=steps, fraction=fraction, delay=delay)

    def shape(self, u: float) -> float:
        return -math.expm1(-self.rate * u) / -math.expm1(-self.rate)


class MultiStepGamma(GammaSchedule):
    """Piecewise-constant γ: ``values[i]`` from ``milestones[i - 1]`` (inclusive) to ``milestones[i]``.

    Args:
        values: γ of each segment (scalar or per-class); one more than ``milestones``.
        milestones: Steps where the next value starts; ints >= 1, strictly increasing.

    Example:
        >>> schedule = MultiStepGamma(values=[0.0, 1.0, 2.0], milestones=[10, 20])
        >>> [schedule(step) for step in (0, 9, 10, 19, 20, 500)]
        [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    """

    _fields = ("values", "milestones")

    def __init__(
        self, values: Sequence[float | Sequence[float]], milestones: Sequence[int]
    ) -> None:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(f"`values` must be a sequence of γ values, got {values!r}")
        checked = [gamma_value(value, f"values[{i}]") for i, value in enumerate(values)]
        self.num_classes = _num_classes(
            *checked, names=[f"values[{i}]" for i in range(len(checked))]
        )
        self.values = [_broadcast(value, self.num_classes) for value in checked]
        self.milestones = _milestones(milestones, len(self.values), "values")
        self._freeze()

    def __call__(self, step: int, total_steps: int | float | None = None) -> float | list[float]:
        step = self._check_call(step, total_steps)
        value = self.values[bisect.bisect_right(self.milestones, step)]
        return list(value) if isinstance(value, list) else value


class SequentialGamma(GammaSchedule):
    """Schedules run one after another, like ``torch.optim.lr_scheduler.SequentialLR``.

    ``schedules[i]`` is active from ``milestones[i - 1]`` (inclusive) to ``milestones[i]`` and
    sees the step relative to the start of its segment (``step - milestones[i - 1]``), so each
    piece is written as if it started at step 0. ``total_steps`` is passed on unchanged: a
    piece given as a ``fraction`` is a fraction of the whole run. When some pieces are
    per-class, scalar pieces are broadcast to every class.

    Args:
        schedules: The pieces, in order; one more than ``milestones``.
        milestones: Steps where the next piece starts; ints >= 1, strictly increasing.

    Example:
        Warm γ up from 0 to 2 over 100 steps, hold it until step 500, then anneal it to 1
        along a half cosine over 200 steps:

        >>> schedule = SequentialGamma(
        ...     [
        ...         LinearRamp(start=0.0, end=2.0, steps=100),
        ...         ConstantGamma(2.0),
        ...         CosineRamp(start=2.0, end=1.0, steps=200),
        ...     ],
        ...     milestones=[100, 500],
        ... )
        >>> [schedule(step) for step in (0, 50, 100, 499, 500, 600, 700, 10_000)]
        [0.0, 1.0, 2.0, 2.0, 2.0, 1.5, 1.0, 1.0]
    """

    _fields = ("schedules", "milestones")

    def __init__(self, schedules: Sequence[GammaSchedule], milestones: Sequence[int]) -> None:
        for index, schedule in enumerate(schedules):
            if not isinstance(schedule, GammaSchedule):
                raise TypeError(f"`schedules[{index}]` must be a GammaSchedule, got {schedule!r}")
        self.schedules = list(schedules)
        self.milestones = _milestones(milestones, len(self.schedules), "schedules")
        lengths = {s.num_classes for s in self.schedules} - {None}
        if len(lengths) > 1:
            raise ValueError(
                "per-class schedules must all have the same number of classes, got "
                f"{[s.num_classes for s in self.schedules]}"
            )
        self.num_classes = lengths.pop() if lengths else None
        self._freeze()

    def validate(self, total_steps: int | float | None) -> None:
        super().validate(total_steps)
        for schedule in self.schedules:
            schedule.validate(total_steps)

    def __call__(self, step: int, total_steps: int | float | None = None) -> float | list[float]:
        step = self._check_call(step, total_steps)
        index = bisect.bisect_right(self.milestones, step)
        segment_start = self.milestones[index - 1] if index > 0 else 0
        value = self.schedules[index](step - segment_start, total_steps)
        return _broadcast(value, self.num_classes)


_SCHEDULES: dict[str, type[GammaSchedule]] = {
    "constant": ConstantGamma,
    "linear": LinearRamp,
    "cosine": CosineRamp,
    "exponential": ExponentialRamp,
    "multistep": MultiStepGamma,
}


def build_schedule(name: str, **kwargs: Any) -> GammaSchedule:
    """Build a γ schedule from its short name and constructor arguments.

    Args:
        name: One of ``"constant"``, ``"linear"``, ``"cosine"``, ``"exponential"``,
            ``"multistep"``.
        **kwargs: Passed to the schedule's constructor.

    Returns:
        The schedule.

    Raises:
        ValueError: If ``name`` is not a known schedule.

    Example:
        >>> build_schedule("linear", start=0.0, end=2.0, steps=100)
        LinearRamp(start=0.0, end=2.0, steps=100, fraction=None, delay=0)
    """
    if name not in _SCHEDULES:
        raise ValueError(f"unknown γ schedule {name!r}; known schedules: {', '.join(_SCHEDULES)}")
    return _SCHEDULES[name](**kwargs)
