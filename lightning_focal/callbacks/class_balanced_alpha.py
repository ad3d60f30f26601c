"""``ClassBalancedAlpha``: per-class α (and logit-adjustment priors) of every focal loss from
the training class counts, from the first step or deferred (DRW)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import IterableDataset
from typing_extensions import override

from ..data.class_counts import counts_from_targets
from ..losses import FocalLossBase
from ..losses.class_weights import METHODS, class_balanced_weights
from ._common import require_focal_losses

__all__ = ["ClassBalancedAlpha"]

CountsArg = Sequence[int] | Tensor | Mapping[str, Sequence[int] | Tensor]

_HOW_TO_GIVE_COUNTS = (
    "implement `class_counts()` on the datamodule (see lightning_focal.data."
    "ClassCountsProvider) or pass `ClassBalancedAlpha(counts=[...])`; with several focal "
    "losses, give a dict {loss name: [...]} in either place"
)


def _counts_list(value: Any, where: str) -> list[int]:
    """One set of per-class counts as a list of non-negative ints (the one parser)."""
    counts = torch.as_tensor(value)
    if counts.dim() != 1 or counts.numel() == 0 or counts.is_floating_point():
        raise ValueError(
            f"{where} must be a non-empty 1-D list of integer counts, got shape "
            f"{tuple(counts.shape)} and dtype {counts.dtype}"
        )
    if bool((counts < 0).any()):
        raise ValueError(f"{where} must be non-negative, got {counts.tolist()}")
    return counts.long().tolist()


def _parse_counts(value: Any, where: str) -> list[int] | dict[str, list[int]]:
    """Counts for every loss (a list) or per loss name (a dict of lists)."""
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"{where} must name at least one focal loss, got an empty dict")
        return {str(k): _counts_list(v, f"{where}[{k!r}]") for k, v in value.items()}
    return _counts_list(value, where)


def _own_num_classes(loss: FocalLossBase) -> int | None:
    """The classes a loss can tell by itself: ``num_classes`` or its per-class α/γ length."""
    if loss.num_classes is not None:
        return loss.num_classes
    for buf in (loss.alpha, loss.gamma):
        if buf is not None and buf.dim() == 1:
            return buf.numel()
    return None


class ClassBalancedAlpha(Callback):
    """Set per-class α of every focal loss from the class counts of the training data.

    Counts come, in this order, from the ``counts`` argument, from
    ``trainer.datamodule.class_counts()`` (the documented cheap hook, see
    :class:`lightning_focal.data.ClassCountsProvider`), from the training dataset's
    ``class_counts()`` or ``targets``, else from one bounded pass (``len(loader)`` batches,
    a fresh iterator) over the training dataloader, with per-rank counts summed across DDP
    ranks. That pass is made only for a map-style dataset with a length: the training
    stream is never consumed, so for an ``IterableDataset`` (which may be endless or
    readable only once) the callback raises and asks for the counts instead.

    Several focal losses (heads) each get α for their own classes. Counts given as a list
    (or a tensor from ``class_counts()``, or counted from targets) serve every loss and must
    match each loss's number of classes (its ``num_classes``, or the length of its per-class
    α or γ). Counts given as a dict ``{loss name: counts}``, in ``counts=`` or returned by
    ``class_counts()``, are matched by the loss's dotted attribute name (as
    :func:`lightning_focal.mixin.find_focal_losses` reports it, e.g. ``"focal_loss"``); a
    loss with no entry, an entry naming no loss, or a length that differs from the loss's
    classes is refused with a message saying which.

    Weights follow :func:`~lightning_focal.losses.class_balanced_weights` (they sum to C);
    softmax losses take them as α, sigmoid losses as α_c = w_c/(1+w_c). The counts and
    weights per loss are kept in the checkpoint, so a resumed run does not count again, and
    logged as ``focal/alpha/<c>`` (``focal/<name>/alpha/<c>`` with several losses).

    **Deferred re-weighting** (DRW, Cao et al. 2019): with ``start`` > 0 the losses train with
    their own α (usually none) until optimiser step ``start`` (an int) or the fraction
    ``start`` of the run's steps (a float in (0, 1), of ``trainer.estimated_stepping_batches``),
    and with the class-balanced α from then on. The switch is a function of the global step,
    so it is the same on every DDP rank and a resumed run switches at the same step (a
    resume with a longer run moves a fractional switch that has not happened yet; one that
    has stays on). A switch at or after the run's last step is refused.

    **Logit adjustment**: a :class:`~lightning_focal.SoftmaxFocalLoss` with a
    ``logit_adjustment`` and no ``class_priors`` gets the class frequencies as its priors
    (``priors=True``) at the start of training. With ``alpha=False`` the callback sets only
    those priors (logit-adjusted loss without class-balanced α).

    Args:
        method: ``"effective_number"`` (Cui et al. 2019), ``"inverse"`` or ``"inverse_sqrt"``.
        beta: β of the effective number, in [0, 1).
        num_classes: number of classes of a loss that cannot tell its own, when the module
            and datamodule have no ``num_classes`` attribute either.
        target_index: where the target sits in a batch for the counting pass (index or key).
        ignore_index: class index skipped while counting.
        counts: per-class training counts, for every loss (a list) or per loss name (a dict
            of lists); the way to use a streamed (``IterableDataset``) training set.
        alpha: set the class-balanced α (``False``: only the logit-adjustment priors).
        priors: fill ``class_priors`` of logit-adjusted losses that have none.
        start: the optimiser step (int) or fraction of the run (float in (0, 1)) at which α
            switches on; 0: from the first step.

    Example:
        >>> import lightning as L
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_focal import SigmoidFocalLoss, SoftmaxFocalLoss
        >>> from lightning_focal.callbacks import ClassBalancedAlpha
        >>> class TwoHeads(L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(4, 3 + 5)
        ...         self.species_loss = SoftmaxFocalLoss(num_classes=3)
        ...         self.tags_loss = SigmoidFocalLoss(num_classes=5)
        ...     def training_step(self, batch, batch_idx):
        ...         x, species, tags = batch
        ...         out = self.net(x)
        ...         return self.species_loss(out[:, :3], species) + self.tags_loss(out[:, 3:], tags)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> callback = ClassBalancedAlpha(
        ...     method="inverse", counts={"species_loss": [6, 3, 1], "tags_loss": [4, 4, 2, 2, 1]}
        ... )
        >>> data = TensorDataset(torch.randn(10, 4), torch.randint(0, 3, (10,)), torch.rand(10, 5))
        >>> model = TwoHeads()
        >>> L.Trainer(
        ...     max_steps=1, callbacks=[callback], logger=False, enable_checkpointing=False,
        ...     enable_progress_bar=False, enable_model_summary=False,
        ... ).fit(model, DataLoader(data, batch_size=5))
        >>> model.species_loss.alpha
        tensor([0.3333, 0.6667, 2.0000])
        >>> model.tags_loss.alpha
        tensor([0.3333, 0.3333, 0.5000, 0.5000, 0.6667])
    """

    def __init__(
        self,
        method: str = "effective_number",
        beta: float = 0.999,
        num_classes: int | None = None,
        target_index: int | str = 1,
        ignore_index: int = -100,
        counts: CountsArg | None = None,
        alpha: bool = True,
        priors: bool = True,
        start: int | float = 0,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if isinstance(start, bool) or not isinstance(start, (int, float)):
            raise TypeError(f"start must be a step (int) or a fraction (float), got {start!r}")
        if isinstance(start, float) and not (0.0 <= start < 1.0 and math.isfinite(start)):
            raise ValueError(
                f"start={start}: a fraction of the run must be in [0, 1); give a step count as "
                "an int"
            )
        if isinstance(start, int) and start < 0:
            raise ValueError(f"start must be a step >= 0, got {start}")
        if not alpha and start:
            raise ValueError("start defers α, but alpha=False sets no α: drop one of them")
        self.alpha = bool(alpha)
        self.priors = bool(priors)
        self.start = start
        self.method = method
        self.beta = beta
        self.num_classes = num_classes
        self.target_index = target_index
        self.ignore_index = ignore_index
        self.given_counts = None if counts is None else _parse_counts(counts, "counts")
        # Resolved per loss name; kept in the checkpoint.
        self.counts: dict[str, list[int]] | None = None
        self.weights: dict[str, list[float]] | None = None
        self.source: str | None = None
        # the global step at which α was switched on (None: not yet); kept in the checkpoint
        self.switched_at: int | None = None
        self._start_step = 0

    # -- counting -----------------------------------------------------------------------

    def _declared_counts(
        self, trainer: pl.Trainer
    ) -> tuple[list[int] | dict[str, list[int]], str] | None:
        """Counts that someone declared (no data read): argument, then the hooks."""
        if self.given_counts is not None:
            return self.given_counts, "counts="
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and callable(getattr(datamodule, "class_counts", None)):
            where = "datamodule.class_counts()"
            return _parse_counts(datamodule.class_counts(), where), where
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if dataset is not None and callable(getattr(dataset, "class_counts", None)):
            where = "dataset.class_counts()"
            return _parse_counts(dataset.class_counts(), where), where
        return None

    def _pass_counts(self, trainer: pl.Trainer, num_classes: int) -> Tensor:
        loader = trainer.train_dataloader
        self._require_countable(loader)
        counts = torch.zeros(num_classes, dtype=torch.int64)
        # A fresh iterator, bounded by the loader's length: the fit makes its own afterwards.
        for batch in itertools.islice(iter(loader), len(loader)):
            try:
                target = batch[self.target_index]
            except (KeyError, IndexError, TypeError) as err:
                raise MisconfigurationException(
                    f"ClassBalancedAlpha: cannot read the target at target_index="
                    f"{self.target_index!r} of a training batch ({type(batch).__name__})"
                ) from err
            counts += counts_from_targets(target, num_classes, ignore_index=self.ignore_index)
        return counts

    @staticmethod
    def _require_countable(loader: Any) -> None:
        """Refuse a pass over anything but a finite map-style dataset's loader."""
        dataset = getattr(loader, "dataset", None)
        if loader is None:
            problem = "the trainer has no training dataloader"
        elif dataset is None:
            problem = f"the training dataloader ({type(loader).__name__}) has no `dataset`"
        elif isinstance(dataset, IterableDataset):
            problem = (
                f"the training dataset ({type(dataset).__name__}) is an IterableDataset, which "
                "may be endless or readable only once"
            )
        else:
            try:
                len(dataset), len(loader)
                return
            except TypeError:
                problem = f"the training data ({type(dataset).__name__}) has no length"
        raise MisconfigurationException(
            f"ClassBalancedAlpha will not count classes by reading the training data: "
            f"{problem}. Give the counts instead: {_HOW_TO_GIVE_COUNTS}"
        )

    def _shared_num_classes(
        self, pl_module: pl.LightningModule, losses: Mapping[str, FocalLossBase]
    ) -> int | None:
        """The one number of classes of all the losses; refuses losses that differ."""
        known = {name: n for name, loss in losses.items() if (n := _own_num_classes(loss))}
        if len(set(known.values())) > 1:
            sizes = ", ".join(f"{name}: {n}" for name, n in known.items())
            raise MisconfigurationException(
                f"ClassBalancedAlpha: the focal losses have different numbers of classes "
                f"({sizes}), so one set of counts cannot serve them all; give counts per loss "
                f"as a dict keyed by loss name: {_HOW_TO_GIVE_COUNTS}"
            )
        if known:
            return next(iter(known.values()))
        if self.num_classes is not None:
            return self.num_classes
        for source in (pl_module, getattr(pl_module.trainer, "datamodule", None)):
            value = getattr(source, "num_classes", None)
            if isinstance(value, int):
                return value
        return None

    def compute_counts(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, Tensor]:
        """Global per-class training counts of each focal loss (the same on every rank)."""
        losses = require_focal_losses(pl_module, "ClassBalancedAlpha")
        declared = self._declared_counts(trainer)
        if declared is not None:
            counts, self.source = declared
            by_loss = self._match(counts, losses)
            return {name: torch.tensor(c, dtype=torch.int64) for name, c in by_loss.items()}
        num_classes = self._shared_num_classes(pl_module, losses)
        if num_classes is None:
            raise MisconfigurationException(
                "ClassBalancedAlpha cannot tell the number of classes: pass num_classes=, or "
                "give the loss num_classes=, or give the module or datamodule a `num_classes` "
                "attribute"
            )
        targets = getattr(getattr(trainer.train_dataloader, "dataset", None), "targets", None)
        if targets is not None:
            self.source = "dataset.targets"
            total = counts_from_targets(targets, num_classes, ignore_index=self.ignore_index)
        else:
            self.source = "one pass over the training dataloader"
            local = self._pass_counts(trainer, num_classes).to(pl_module.device)
            total = trainer.strategy.reduce(local, reduce_op="sum").cpu().long()
        return {name: total for name in losses}

    def _match(
        self, counts: list[int] | dict[str, list[int]], losses: Mapping[str, FocalLossBase]
    ) -> dict[str, list[int]]:
        """Declared counts for each loss, by name for a dict, shared for a list."""
        if isinstance(counts, dict):
            unknown = sorted(set(counts) - set(losses))
            missing = sorted(set(losses) - set(counts))
            if unknown or missing:
                problem = (
                    f"no counts for {', '.join(map(repr, missing))}"
                    if missing
                    else f"counts for {', '.join(map(repr, unknown))} match no focal loss"
                )
                raise MisconfigurationException(
                    f"ClassBalancedAlpha: {problem} (counts from {self.source} name "
                    f"{sorted(counts)}; the focal losses are {sorted(losses)})"
                )
            by_loss = {name: counts[name] for name in losses}
        else:
            by_loss = {name: counts for name in losses}
        for name, loss in losses.items():
            n = _own_num_classes(loss)
            if n is not None and len(by_loss[name]) != n:
                raise MisconfigurationException(
                    f"ClassBalancedAlpha: {len(by_loss[name])} counts from {self.source}, but "
                    f"the focal loss {name!r} has {n} classes"
                    + ("" if isinstance(counts, dict) else f"; {_HOW_TO_GIVE_COUNTS}")
                )
        return by_loss

    # -- hooks ---------------------------------------------------------------------------

    @staticmethod
    def _unadjusted(losses: Mapping[str, FocalLossBase]) -> dict[str, FocalLossBase]:
        """The losses with a logit adjustment and no class priors yet."""
        return {
            name: loss
            for name, loss in losses.items()
            if getattr(loss, "logit_adjustment", 0.0) and loss.class_priors is None
        }

    @override
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the validation loss of a logit-adjusted loss needs its priors before training starts
        losses = require_focal_losses(pl_module, "ClassBalancedAlpha")
        if not (self.priors and self._unadjusted(losses)):
            return
        if self.weights is None and self._declared_counts(trainer) is None:
            raise MisconfigurationException(
                "ClassBalancedAlpha counts the classes when training starts, after the sanity "
                "check, but the logit-adjusted loss needs its class priors for the sanity "
                f"check's loss: {_HOW_TO_GIVE_COUNTS}, or set loss.class_priors, or "
                "Trainer(num_sanity_val_steps=0)"
            )
        self._count(trainer, pl_module, losses)
        self._fill_priors(losses)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        losses = require_focal_losses(pl_module, "ClassBalancedAlpha")
        adjusted = [n for n, loss in losses.items() if getattr(loss, "logit_adjustment", 0.0)]
        if not self.alpha and not (self.priors and adjusted):
            raise MisconfigurationException(
                "ClassBalancedAlpha(alpha=False) has nothing to set: no focal loss has a "
                "logit_adjustment whose class priors it could fill (set loss.logit_adjustment, "
                "or alpha=True for class-balanced α)"
            )
        self._count(trainer, pl_module, losses)
        if self.priors:
            self._fill_priors(losses)
        if not self.alpha:
            return
        self._start_step = self._resolve_start(trainer)
        if self.switched_at is not None or trainer.global_step >= self._start_step:
            self._switch_on(trainer, pl_module, losses)

    def _count(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        losses: Mapping[str, FocalLossBase],
    ) -> None:
        """Counts and weights per loss, unless known (an earlier hook, a checkpoint)."""
        if isinstance(self.weights, list):  # a checkpoint from before per-loss counts
            self.weights = {name: self.weights for name in losses}
            self.counts = {name: self.counts for name in losses} if self.counts else None
        if self.weights is None or set(self.weights) != set(losses):
            counts = self.compute_counts(trainer, pl_module)
            self.counts = {name: c.tolist() for name, c in counts.items()}
            self.weights = {
                name: class_balanced_weights(c, self.method, self.beta).tolist()
                for name, c in counts.items()
            }
            for name in losses:
                rank_zero_info(
                    f"ClassBalancedAlpha ({self.method}, from {self.source}), {name}: counts "
                    f"{self.counts[name]}"
                    + (
                        f" -> weights {[round(w, 4) for w in self.weights[name]]}"
                        if self.alpha
                        else ""
                    )
                )

    def _fill_priors(self, losses: Mapping[str, FocalLossBase]) -> None:
        """Class frequencies as the priors of the logit-adjusted losses that have none."""
        for name, loss in self._unadjusted(losses).items():
            counts = (self.counts or {}).get(name)
            if counts is None:
                raise MisconfigurationException(
                    f"ClassBalancedAlpha: no class counts for the logit-adjusted loss {name!r} "
                    "(resumed from a checkpoint without them): set loss.class_priors"
                )
            if 0 in counts:
                raise MisconfigurationException(
                    f"ClassBalancedAlpha: class {counts.index(0)} has no training samples, so "
                    f"its prior is 0 and log π is -inf for the logit-adjusted loss {name!r}: "
                    "set loss.class_priors (e.g. counts + 1)"
                )
            loss.class_priors = torch.tensor(counts, dtype=torch.float64)

    def _resolve_start(self, trainer: pl.Trainer) -> int:
        """The optimiser step at which α switches on; refuses one the run never reaches."""
        if not self.start:
            return 0
        total = trainer.estimated_stepping_batches
        finite = 0 < total < math.inf
        if isinstance(self.start, float):
            if not finite:
                raise MisconfigurationException(
                    f"ClassBalancedAlpha(start={self.start}) is a fraction of the run, but the "
                    "run has no finite length: set trainer.max_steps, or give start as a step"
                )
            step = round(self.start * total)
        else:
            step = self.start
        if finite and step >= total and self.switched_at is None:
            raise MisconfigurationException(
                f"ClassBalancedAlpha(start={self.start}) switches α on at step {step}, but the "
                f"run ends at step {int(total)}: α would never be used. Lower start "
                "(callbacks.class_balanced_alpha.start) or raise trainer.max_steps"
            )
        return step

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.alpha and self.switched_at is None and trainer.global_step >= self._start_step:
            losses = require_focal_losses(pl_module, "ClassBalancedAlpha")
            self._switch_on(trainer, pl_module, losses)

    def _switch_on(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        losses: Mapping[str, FocalLossBase],
    ) -> None:
        assert self.weights is not None
        if self.switched_at is None:
            self.switched_at = trainer.global_step
            if self.start:
                rank_zero_info(f"ClassBalancedAlpha: α on from step {self.switched_at} (DRW)")
        for name, loss in losses.items():
            weights = torch.tensor(self.weights[name], dtype=torch.float32)
            loss.alpha = loss.alpha_from_class_weights(weights)
            prefix = "focal" if len(losses) == 1 else f"focal/{name}"
            self._log(trainer, pl_module, prefix, loss.alpha, (self.counts or {}).get(name, []))

    def _log(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prefix: str,
        alpha: Tensor,
        counts: Sequence[int],
    ) -> None:
        for c, value in enumerate(alpha.tolist()):
            # α is equal on every rank (the counts were summed across ranks), so the mean
            # that sync_dist takes at epoch end is α itself; without it Lightning warns per class
            pl_module.log(
                f"{prefix}/alpha/{c}",
                value,
                on_step=False,
                on_epoch=True,
                batch_size=1,
                sync_dist=True,
            )
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if type(logger).__name__ == "WandbLogger":
                    import wandb

                    table = wandb.Table(
                        data=[
                            [str(c), a, n] for c, (a, n) in enumerate(zip(alpha.tolist(), counts))
                        ],
                        columns=["class", "alpha", "count"],
                    )
                    logger.experiment.log(
                        {
                            f"{prefix}/alpha": wandb.plot.bar(
                                table, "class", "alpha", title="class-balanced α"
                            )
                        }
                    )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "beta": self.beta,
            "counts": self.counts,
            "weights": self.weights,
            "source": self.source,
            "switched_at": self.switched_at,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counts = state_dict.get("counts")
        self.weights = state_dict.get("weights")
        self.source = state_dict.get("source")
        self.switched_at = state_dict.get("switched_at")
