"""``RunLengthCheck``: refuse a resume whose run length breaks the checkpoint's schedules."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from .gamma_warmup import GammaWarmup

__all__ = ["RunLengthCheck"]


def _total_steps(trainer: pl.Trainer) -> int | None:
    total = trainer.estimated_stepping_batches
    return int(total) if 0 < total < math.inf else None


class RunLengthCheck(Callback):
    """Stop a resumed run early when its length does not fit the schedules it resumes.

    A resume with a larger ``trainer.max_steps`` than the checkpoint was trained for fails
    late or silently: ``OneCycleLR`` restores its old ``total_steps`` from the checkpoint and
    raises "Tried to step 601 times" one step after the old end, and a γ schedule given as a
    fraction of the run (``GammaWarmup``) jumps to the value the new length gives. This
    callback keeps the number of optimiser steps the run was planned for in the checkpoint
    and, when a resumed run starts (``on_train_start``, after every state is restored), raises
    a ``MisconfigurationException`` that names the checkpoint's length if a step-interval
    scheduler with ``total_steps`` would run out before the new end, or a step-based
    ``GammaWarmup`` gives another γ at the resume step. A resume with the same length, or a
    longer one whose schedules do not depend on it, goes on.

    Example:
        >>> from lightning_focal.callbacks import RunLengthCheck
        >>> RunLengthCheck().state_dict()
        {'total_steps': None}
    """

    def __init__(self) -> None:
        self._total_steps: int | None = None
        self._trained_for: int | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"total_steps": self._total_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # kept as this run's too, should it save before on_train_start (a run already done)
        self._trained_for = self._total_steps = state_dict.get("total_steps")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = _total_steps(trainer)
        trained_for, self._trained_for = self._trained_for, None
        self._total_steps = total
        if trained_for is None or total is None or total == trained_for:
            return
        step = trainer.global_step
        problems = []
        for config in trainer.lr_scheduler_configs:
            planned = getattr(config.scheduler, "total_steps", None)
            if config.interval == "step" and isinstance(planned, int) and planned < total:
                problems.append(
                    f"its {type(config.scheduler).__name__} runs for total_steps={planned} "
                    f"(it would fail at step {planned + 1})"
                )
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, GammaWarmup) and callback.interval == "step":
                before, after = callback.schedule(step, trained_for), callback.schedule(step, total)
                if before != after:
                    problems.append(
                        f"γ of {callback.schedule!r} would jump from {before} to {after} at "
                        f"step {step}"
                    )
        if problems:
            raise MisconfigurationException(
                f"Cannot resume {trainer.ckpt_path} with trainer.max_steps={trainer.max_steps} "
                f"({total} steps): the checkpoint was trained for {trained_for} steps, and "
                f"{'; '.join(problems)}. Resume with the same length (trainer.max_steps="
                f"{trained_for}) to finish an interrupted run, or start a new run to train for "
                f"{total} steps."
            )
