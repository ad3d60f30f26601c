"""``DenseFocalLoss``: the classification loss of dense detectors (RetinaNet, FCOS)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ._base import AlphaArg, GammaArg
from ._common import compute_dtype
from .sigmoid_focal import SigmoidFocalLoss, _check_inputs, _sigmoid_focal_loss

__all__ = ["NORMALIZATIONS", "DenseFocalLoss"]

NORMALIZATIONS = ("batch", "per_image", "mean")


class DenseFocalLoss(SigmoidFocalLoss):
    """Sigmoid focal loss over anchors, summed and divided by the number of positive anchors.

    Logits and one-hot targets are class-last, ``(N, anchors, C)``; an optional ``weight``
    of shape ``(N, anchors)`` (or broadcastable to the logits) drops ignored anchors (the
    band between the matcher's IoU thresholds). An anchor is positive when any class target
    is > 0. Being a :class:`SigmoidFocalLoss`, γ and α are buffers that the callbacks
    (``GammaWarmup``, ``ClassBalancedAlpha``) schedule in place.

    Normalisation:

    * ``"batch"`` (detectron2, torchvision FCOS): the summed loss over the batch divided by
      the number of positive anchors, averaged over DDP ranks when a process group is
      initialised (``sync=True``; DDP already averages the gradients over ranks), optionally
      smoothed by an exponential moving average (``ema_momentum``, detectron2 uses 0.9),
      and clamped to >= 1.
    * ``"per_image"`` (torchvision RetinaNet): each image's summed loss divided by
      max(1, its positives), averaged over images. With α=0.25, γ=2 this equals
      ``RetinaNetClassificationHead.compute_loss``.
    * ``"mean"``: the mean over every unmasked (anchor, class) element — plain averaged
      BCE when γ=0, the "everything is background" failure that the normalisation by
      positives exists to fix; for baselines.

    Args:
        gamma, alpha, poly1, num_classes: as for :class:`SigmoidFocalLoss` (``alpha`` defaults to
            RetinaNet's 0.25; ``None`` switches it off).
        normalization: ``"batch"``, ``"per_image"`` or ``"mean"``.
        sync: average the batch normaliser across DDP ranks.
        ema_momentum: ``None`` or m in [0, 1): normaliser <- m·normaliser + (1-m)·positives.

    Example:
        >>> import torch
        >>> loss = DenseFocalLoss(normalization="batch")
        >>> logits = torch.full((1, 4, 2), -4.0)
        >>> targets = torch.zeros(1, 4, 2); targets[0, 0, 1] = 1.0
        >>> round(float(loss(logits, targets)), 4), int(loss.last_num_positives)
        (0.9688, 1)
    """

    def __init__(
        self,
        gamma: GammaArg = 2.0,
        alpha: AlphaArg = 0.25,
        *,
        normalization: str = "batch",
        sync: bool = True,
        ema_momentum: float | None = None,
        poly1: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(gamma, alpha, "sum", poly1=poly1, num_classes=num_classes)
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}"
            )
        if ema_momentum is not None and not 0.0 <= ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum}")
        if ema_momentum is not None and normalization != "batch":
            raise ValueError("ema_momentum applies to normalization='batch'")
        self.normalization = normalization
        self.sync = sync
        self.ema_momentum = ema_momentum
        self.register_buffer("normalizer_ema", torch.tensor(-1.0))
        self.last_num_positives = torch.tensor(0.0)
        self.last_normalizer = torch.tensor(1.0)

    def _batch_normalizer(self, num_pos: Tensor) -> Tensor:
        if (
            self.sync
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            num_pos = num_pos.clone()
            dist.all_reduce(num_pos, op=dist.ReduceOp.SUM)
            num_pos = num_pos / dist.get_world_size()
        if self.ema_momentum is not None:
            with torch.no_grad():
                m = self.ema_momentum
                ema = self.normalizer_ema.to(num_pos.dtype)
                value = torch.where(ema < 0, num_pos, m * ema + (1.0 - m) * num_pos)
                if self.training:
                    self.normalizer_ema.copy_(value)
                num_pos = value
        return num_pos.clamp_min(1.0)

    def statistics(
        self, logits: Tensor, target: Tensor, weight: Tensor | None = None
    ) -> dict[str, Tensor]:
        """:meth:`SigmoidFocalLoss.statistics` plus the dense regime of the batch.

        Adds ``anchors_per_image`` (anchors or locations of an image, ignored ones
        included), ``positives_per_image`` (anchors with a positive target and a non-zero
        weight, averaged over the images) and ``positive_fraction`` (their ratio): the
        imbalance the loss faces, which the mixin logs as ``focal/...`` with the rest.

        Example:
            >>> import torch
            >>> targets = torch.zeros(2, 1000, 3); targets[0, :3, 0] = 1.0; targets[1, 0, 2] = 1.0
            >>> stats = DenseFocalLoss().statistics(torch.zeros(2, 1000, 3), targets)
            >>> [round(float(stats[k]), 4) for k in ("anchors_per_image", "positives_per_image", "positive_fraction")]
            [1000.0, 2.0, 0.002]
        """
        stats = super().statistics(logits, target, weight)
        if logits.dim() != 3:
            return stats
        positive = (target.detach() > 0.5).any(dim=-1)
        if weight is not None:
            w = weight.detach()
            w = w.squeeze(-1) if w.dim() == 3 and w.shape[-1] == 1 else w
            if w.dim() == 2:
                positive = positive & (w > 0)
        anchors = float(logits.shape[1])
        per_image = positive.sum(dtype=torch.float32) / max(1, logits.shape[0])
        stats["anchors_per_image"] = torch.tensor(anchors)
        stats["positives_per_image"] = per_image
        stats["positive_fraction"] = per_image / max(anchors, 1.0)
        return stats

    def forward(  # type: ignore[override]
        self,
        input: Tensor,
        target: Tensor,
        *,
        weight: Tensor | None = None,
        normalizer: float | Tensor | None = None,
    ) -> Tensor:
        """Loss of ``(N, anchors, C)`` logits; ``normalizer`` overrides the positive count."""
        if input.dim() != 3:
            raise ValueError(
                f"DenseFocalLoss expects (N, anchors, C) logits, got shape {tuple(input.shape)}"
            )
        _check_inputs(input, target)
        if weight is not None and weight.dim() == 2:
            weight = weight.unsqueeze(-1)
        positive = (target > 0).any(dim=-1)
        if weight is not None and weight.shape[-1] == 1:
            positive = positive & (weight.squeeze(-1) > 0)
        per_image = positive.sum(dim=1).to(torch.float32)
        self.last_num_positives = per_image.sum().detach()
        gamma, alpha = self._buffers_for(input)
        policy = self.gamma_policy.as_tuple() if self.gamma_policy is not None else None
        reduction = "sum"
        if normalizer is not None:  # given by the caller: overrides the normalization
            self.last_normalizer = torch.as_tensor(normalizer, dtype=torch.float32).detach()
        elif self.normalization == "mean":
            self.last_normalizer = torch.tensor(float(input[..., 0].numel()))
            reduction = "mean"
        elif self.normalization == "per_image":
            # in the loss's compute dtype: 1/(n·N) rounded to float32 is off by ~1e-8 in float64
            counts = per_image.to(compute_dtype(input.dtype)).clamp_min(1.0)
            scale = 1.0 / (counts * input.shape[0])
            scale = scale.view(-1, 1, 1)
            weight = scale if weight is None else weight.to(scale.dtype) * scale
            self.last_normalizer = per_image.clamp_min(1.0).mean().detach()
        else:
            normalizer = self._batch_normalizer(per_image.sum())
            self.last_normalizer = normalizer.detach()
        return _sigmoid_focal_loss(
            input, target, gamma, policy, alpha, reduction, weight, normalizer, self.poly1
        )
