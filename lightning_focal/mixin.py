"""``FocalLossMixin``: focal loss for an existing LightningModule in three changed lines."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn

from .losses import FocalLoss, SampleDependentGamma
from .losses.diagnostics import focal_diagnostics

__all__ = ["FocalLossMixin", "find_focal_losses"]


def find_focal_losses(module: nn.Module) -> dict[str, FocalLoss]:
    """Every :class:`FocalLoss` inside ``module``, by its dotted name.

    Example:
        >>> from torch import nn
        >>> from lightning_focal import FocalLoss
        >>> net = nn.ModuleDict({"cls": FocalLoss("sigmoid"), "aux": FocalLoss()})
        >>> sorted(find_focal_losses(net))
        ['aux', 'cls']
    """
    return {name: m for name, m in module.named_modules() if isinstance(m, FocalLoss)}


def _gamma_hparam(gamma: Any) -> Any:
    if isinstance(gamma, SampleDependentGamma):
        return {"thresholds": list(gamma.thresholds), "gammas": list(gamma.gammas)}
    if isinstance(gamma, Tensor):
        return gamma.tolist()
    return list(gamma) if isinstance(gamma, Sequence) else float(gamma)


class FocalLossMixin:
    """Adds focal loss, its diagnostics and callback hooks to a ``LightningModule``.

    Put it first among the bases, call :meth:`configure_focal_loss` in ``__init__`` and
    call the returned loss (also reachable as ``self.<name>``, default ``self.focal_loss``)
    where ``F.cross_entropy`` was. It never overrides ``training_step`` or the optimiser and
    adds no callbacks: pass :class:`~lightning_focal.callbacks.GammaWarmup` and friends to
    the ``Trainer`` yourself. The loss settings are stored in ``self.hparams["focal_loss"]``.

    While training, each call of a configured loss logs on the step ``focal/gamma`` (mean
    over classes for per-class γ), ``focal/modulating`` (mean (1-p_t)^γ),
    ``focal/easy_fraction`` (p_t > 0.5) and, for sigmoid losses, ``focal/num_positives``,
    ``focal/p_positives`` and ``focal/p_negatives``. With several losses the keys become
    ``focal/<name>/...``.

    Example:
        >>> import torch
        >>> import lightning as L
        >>> from lightning_focal import FocalLossMixin
        >>> class Classifier(FocalLossMixin, L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(4, 3)
        ...         self.configure_focal_loss("softmax", gamma=2.0, bias_layer="net")
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return self.focal_loss(self.net(x), y)
        >>> model = Classifier()
        >>> model.hparams["focal_loss"]["gamma"]
        2.0
        >>> [type(m).__name__ for m in model.focal_bias_layers()]
        ['Linear']
    """

    def configure_focal_loss(
        self,
        mode: str = "softmax",
        gamma: float | Sequence[float] | Tensor | SampleDependentGamma = 2.0,
        alpha: float | Sequence[float] | Tensor | None = None,
        *,
        reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        poly1: float = 0.0,
        num_classes: int | None = None,
        name: str = "focal_loss",
        bias_layer: str | Sequence[str] | None = None,
        diagnostics: bool = True,
    ) -> FocalLoss:
        """Create a :class:`FocalLoss`, register it as ``self.<name>`` and return it.

        Args:
            mode, gamma, alpha, reduction, ignore_index, label_smoothing, poly1,
                num_classes: as for :class:`FocalLoss`.
            name: attribute name; call it several times with different names for several
                heads.
            bias_layer: dotted name(s) of the final classification layer(s), whose bias
                :class:`~lightning_focal.callbacks.FocalBiasInit` sets.
            diagnostics: log the modulation statistics on every training step.
        """
        loss = FocalLoss(
            mode,
            gamma,
            alpha,
            reduction,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            poly1=poly1,
            num_classes=num_classes,
        )
        setattr(self, name, loss)
        settings = {
            "mode": mode,
            "gamma": _gamma_hparam(gamma),
            "alpha": None if alpha is None else _gamma_hparam(alpha),
            "reduction": reduction,
            "ignore_index": ignore_index,
            "label_smoothing": label_smoothing,
            "poly1": poly1,
            "num_classes": num_classes,
        }
        self.register_focal_loss(
            loss, name=name, settings=settings, bias_layer=bias_layer, diagnostics=diagnostics
        )
        return loss

    def register_focal_loss(
        self,
        loss: FocalLoss,
        *,
        name: str = "focal_loss",
        settings: dict[str, Any] | None = None,
        bias_layer: str | Sequence[str] | None = None,
        diagnostics: bool = True,
    ) -> FocalLoss:
        """Register a :class:`FocalLoss` that already lives in the module (e.g. in a detection head).

        Records ``settings`` in the hyperparameters (``hparams["focal_loss"]``, or
        ``hparams["focal_losses"][name]``), remembers the bias layer(s) for
        :class:`~lightning_focal.callbacks.FocalBiasInit` and hooks up the step diagnostics.
        :meth:`configure_focal_loss` is this plus building the loss.
        """
        self._focal_loss_names = [*getattr(self, "_focal_loss_names", []), name]
        hparams = self.hparams  # type: ignore[attr-defined]
        if settings is not None:
            if name == "focal_loss":
                hparams["focal_loss"] = settings
            else:
                hparams.setdefault("focal_losses", {})[name] = settings
        layers = [bias_layer] if isinstance(bias_layer, str) else list(bias_layer or [])
        self._focal_bias_layer_names = [*getattr(self, "_focal_bias_layer_names", []), *layers]
        if diagnostics:
            self._focal_logs_gamma = True
            loss.register_forward_hook(partial(self._focal_loss_hook, name), with_kwargs=True)
        return loss

    def focal_losses(self) -> dict[str, FocalLoss]:
        """The focal losses of this module by dotted name (what the callbacks update)."""
        return find_focal_losses(self)  # type: ignore[arg-type]

    def focal_bias_layers(self) -> list[nn.Module]:
        """The final classification layers whose bias gets the prior; override for custom heads."""
        return [self.get_submodule(n) for n in getattr(self, "_focal_bias_layer_names", [])]  # type: ignore[attr-defined]

    def _focal_loss_hook(
        self, name: str, module: FocalLoss, args: tuple, kwargs: dict, output: Tensor
    ) -> None:
        trainer = getattr(self, "_trainer", None)
        if not module.training or trainer is None or not trainer.training:
            return
        if len(args) < 2:
            return
        logits, target = args[0], args[1]
        policy = None
        if module.gamma_policy is not None:
            policy = (tuple(module.gamma_policy.thresholds), tuple(module.gamma_policy.gammas))
        stats = focal_diagnostics(
            module.mode,
            logits,
            target,
            module.gamma,
            policy=policy,
            ignore_index=module.ignore_index,
            weight=kwargs.get("weight"),
        )
        prefix = "focal" if len(self._focal_loss_names) == 1 else f"focal/{name}"
        if hasattr(module, "last_normalizer"):
            stats["normalizer"] = module.last_normalizer.float()
        if module.gamma is not None:
            stats["gamma"] = module.gamma.detach().float().mean()
        batch_size = int(logits.shape[0]) if logits.dim() > 0 else 1
        for key, value in stats.items():
            self.log(f"{prefix}/{key}", value, on_step=True, on_epoch=False, batch_size=batch_size)  # type: ignore[attr-defined]
