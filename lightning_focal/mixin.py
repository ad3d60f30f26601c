"""``FocalLossMixin``: focal loss for an existing LightningModule in three changed lines."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from .losses import FocalLossBase, SoftmaxFocalLoss

__all__ = ["FocalLossMixin", "find_focal_bias_layers", "find_focal_losses"]


def find_focal_losses(module: nn.Module) -> dict[str, FocalLossBase]:
    """Every focal-loss module inside ``module``, by its dotted name.

    Example:
        >>> from torch import nn
        >>> from lightning_focal import SigmoidFocalLoss, SoftmaxFocalLoss
        >>> net = nn.ModuleDict({"cls": SigmoidFocalLoss(), "aux": SoftmaxFocalLoss()})
        >>> sorted(find_focal_losses(net))
        ['aux', 'cls']
    """
    return {name: m for name, m in module.named_modules() if isinstance(m, FocalLossBase)}


def find_focal_bias_layers(module: nn.Module) -> list[nn.Module]:
    """The final classification layers that submodules of ``module`` declare for the prior bias.

    A submodule declares them with a ``focal_bias_layers()`` method, as the detection heads
    that :func:`lightning_focal.detection.with_focal_loss` attaches a loss to do (their
    ``cls_logits`` conv). ``module`` itself is not asked.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Head(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.cls_logits = nn.Linear(4, 2)
        ...     def focal_bias_layers(self):
        ...         return [self.cls_logits]
        >>> net = nn.Sequential(nn.Linear(4, 4), Head())
        >>> [type(m).__name__ for m in find_focal_bias_layers(net)]
        ['Linear']
    """
    layers: list[nn.Module] = []
    for child in module.modules():
        declare = getattr(child, "focal_bias_layers", None)
        if child is not module and callable(declare):
            layers.extend(m for m in declare() if not any(m is seen for seen in layers))
    return layers


class FocalLossMixin:
    """Adds focal loss, its diagnostics and callback hooks to a ``LightningModule``.

    Put it first among the bases, call :meth:`configure_focal_loss` in ``__init__`` and
    call the returned loss (also reachable as ``self.<name>``, default ``self.focal_loss``)
    where ``F.cross_entropy`` was. It never overrides ``training_step`` or the optimiser,
    adds no callbacks and no hyperparameters: the loss is built by your ``__init__`` (so
    ``load_from_checkpoint`` and LightningCLI rebuild it from your own arguments) and its γ
    and α travel in the state dict. Pass :class:`~lightning_focal.callbacks.GammaWarmup` and
    friends to the ``Trainer`` yourself. A checkpoint saved before the mixin was added still
    loads (``load_from_checkpoint``, ``Trainer.fit(ckpt_path=...)``): the loss keeps the γ
    and α your ``__init__`` built, with one warning.

    On logging steps of training (``Trainer(log_every_n_steps=...)``) each configured loss
    logs ``focal/modulating`` (mean (1-p_t)^γ), ``focal/easy_fraction`` (p_t > 0.5) and,
    for sigmoid losses, ``focal/num_positives``, ``focal/p_positives`` and
    ``focal/p_negatives`` — computed in cache-sized chunks of the batch, nothing on other
    steps. γ is logged by whatever sets it (``GammaWarmup``, ``CalibrationGamma``). With
    several losses the keys become ``focal/<name>/...``.

    Example:
        >>> import torch
        >>> import lightning as L
        >>> from lightning_focal import FocalLossMixin, SoftmaxFocalLoss
        >>> class Classifier(FocalLossMixin, L.LightningModule):
        ...     def __init__(self, gamma: float = 2.0):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(4, 3)
        ...         self.configure_focal_loss(SoftmaxFocalLoss(gamma=gamma), bias_layer="net")
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return self.focal_loss(self.net(x), y)
        >>> model = Classifier()
        >>> float(model.focal_loss.gamma), [type(m).__name__ for m in model.focal_bias_layers()]
        (2.0, ['Linear'])
    """

    def configure_focal_loss(
        self,
        loss: FocalLossBase | None = None,
        *,
        name: str = "focal_loss",
        bias_layer: str | Sequence[str] | None = None,
        diagnostics: bool = True,
    ) -> FocalLossBase:
        """Register ``loss`` (default ``SoftmaxFocalLoss()``) as ``self.<name>`` and return it.

        A loss that already lives in the module (in a detection head, say) is registered
        where it is, not attached a second time.

        Args:
            loss: a :class:`~lightning_focal.SoftmaxFocalLoss`,
                :class:`~lightning_focal.SigmoidFocalLoss` or
                :class:`~lightning_focal.DenseFocalLoss`.
            name: attribute name; call it again with another name for a second head.
            bias_layer: dotted name(s) of the final classification layer(s), whose bias
                :class:`~lightning_focal.callbacks.FocalBiasInit` sets.
            diagnostics: log the modulation statistics on logging steps.
        """
        loss = SoftmaxFocalLoss() if loss is None else loss
        if not isinstance(loss, FocalLossBase):
            raise TypeError(
                f"configure_focal_loss takes a focal-loss module (SoftmaxFocalLoss, "
                f"SigmoidFocalLoss, DenseFocalLoss), got {type(loss).__name__}"
            )
        if not any(m is loss for m in self.modules()):  # type: ignore[attr-defined]
            setattr(self, name, loss)
        self._focal_loss_names = [*getattr(self, "_focal_loss_names", []), name]
        layers = [bias_layer] if isinstance(bias_layer, str) else list(bias_layer or [])
        self._focal_bias_layer_names = [*getattr(self, "_focal_bias_layer_names", []), *layers]
        if diagnostics:
            loss.register_forward_hook(partial(self._focal_loss_hook, name), with_kwargs=True)
        return loss

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fill γ/α buffers that the checkpoint lacks (saved before the mixin) with the current ones.

        Runs after ``super().on_load_checkpoint``, so a base class that migrates old keys goes
        first; whatever is still missing keeps the value the module was constructed with, and
        one warning names those keys.
        """
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        state_dict = checkpoint.get("state_dict")
        if state_dict is None:
            return
        missing = {}
        for name, loss in find_focal_losses(self).items():  # type: ignore[arg-type]
            for buffer_name, buffer in loss.named_buffers(recurse=False):
                key = f"{name}.{buffer_name}"
                if buffer_name not in loss._non_persistent_buffers_set and key not in state_dict:
                    missing[key] = buffer.detach().clone()
        if not missing:
            return
        state_dict.update(missing)
        rank_zero_warn(
            f"The checkpoint has no {sorted(missing)} (saved before the focal loss was added?): "
            "the loss keeps the γ/α it was constructed with."
        )

    def focal_bias_layers(self) -> list[nn.Module]:
        """The final classification layers whose bias gets the prior; override for custom heads.

        The layers named by ``bias_layer=`` in :meth:`configure_focal_loss`; without any, those
        that submodules declare (:func:`find_focal_bias_layers`: the ``cls_logits`` of a
        detector given to :func:`~lightning_focal.detection.with_focal_loss`).
        """
        names = getattr(self, "_focal_bias_layer_names", [])
        if not names:
            return find_focal_bias_layers(self)  # type: ignore[arg-type]
        return [self.get_submodule(n) for n in names]  # type: ignore[attr-defined]

    def _focal_loss_hook(
        self, name: str, module: FocalLossBase, args: tuple, kwargs: dict, output: Tensor
    ) -> None:
        trainer = getattr(self, "_trainer", None)
        if not module.training or trainer is None or not trainer.training or len(args) < 2:
            return
        if not trainer._logger_connector.should_update_logs:
            return
        logits, target = args[0], args[1]
        stats = module.statistics(logits, target, kwargs.get("weight"))
        prefix = "focal" if len(self._focal_loss_names) == 1 else f"focal/{name}"
        normalizer = getattr(module, "last_normalizer", None)
        if normalizer is not None:
            stats["normalizer"] = normalizer.float()
        batch_size = int(logits.shape[0]) if logits.dim() > 0 else 1
        log: Any = self.log  # type: ignore[attr-defined]
        for key, value in stats.items():
            log(
                f"{prefix}/{key}",
                value.float(),
                on_step=True,
                on_epoch=False,
                batch_size=batch_size,
            )
