"""The app's models build their optimiser and step-interval scheduler from partials the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["optimizers_from"]


def optimizers_from(
    parameters: Iterable[torch.nn.Parameter],
    optimizer_factory: Callable[..., torch.optim.Optimizer] | None,
    scheduler_factory: Callable[..., Any] | None,
) -> Any:
    """``configure_optimizers``' return value: the optimiser, with the scheduler stepped per step.

    A ``OneCycleLR`` whose warm-up or annealing phase is shorter than one step
    (``pct_start * total_steps <= 1``) makes torch divide by zero while it is built; that is
    refused with the config keys to change.

    Example:
        >>> from functools import partial
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> one_cycle = partial(
        ...     torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=10, pct_start=0.1
        ... )
        >>> optimizers_from([w], partial(torch.optim.SGD, lr=0.1), one_cycle)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the lr scheduler could not be built (...): ... raise model.scheduler.pct_start, ...
    """
    factory = optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=1e-3))
    optimizer = factory(parameters)
    if scheduler_factory is None:
        return optimizer
    try:
        scheduler = scheduler_factory(optimizer)
    except ZeroDivisionError as err:
        raise ValueError(
            f"the lr scheduler could not be built ({type(err).__name__}: {err}): OneCycleLR needs "
            "pct_start * total_steps > 1; raise model.scheduler.pct_start, lengthen the run "
            "(trainer.max_steps) or set model.scheduler=null"
        ) from err
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
