"""``LossCDF``: Figure 4 of Lin et al. (2017) from the current detector's outputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.nn import functional as F
from typing_extensions import override

from ..losses import SigmoidFocalLoss
from ..mixin import find_focal_losses
from ._common import ValidationCounter

__all__ = ["GAMMAS", "LossCDF", "focal_loss_of_samples", "hardest_share", "normalized_loss_cdf"]

GAMMAS = (0.0, 0.5, 1.0, 2.0)
"""The γ values of the paper's figure."""
_PLOT_POINTS = 1000


def focal_loss_of_samples(z: Tensor, gamma: float) -> Tensor:
    """FL = -(1-p_t)^γ log p_t of binary samples with signed logits ``z`` (p_t = σ(z)).

    ``z`` is the logit for a positive sample and minus the logit for a negative one, so
    that p_t = σ(z) is the probability of the right answer. No α: a constant factor within
    the positives (or the negatives) cancels in the normalised loss. Computed in log space,
    finite for every γ >= 0 and logit.

    Example:
        >>> import torch
        >>> p_t = torch.tensor([0.9, 0.1])
        >>> z = torch.log(p_t / (1 - p_t))
        >>> focal_loss_of_samples(z, 0.0), focal_loss_of_samples(z, 2.0)
        (tensor([0.1054, 2.3026]), tensor([0.0011, 1.8651]))
    """
    return torch.exp(gamma * F.logsigmoid(-z)) * -F.logsigmoid(z)


def normalized_loss_cdf(losses: Tensor) -> tuple[Tensor, Tensor]:
    """The cumulative distribution of the normalised loss (Lin et al. 2017, Fig. 4).

    The losses are sorted from lowest to highest and normalised to sum to one; point i is
    (fraction of samples up to i, share of the total loss they carry). A curve that stays
    low and rises at the right end means a few hard samples carry most of the loss. All-zero
    losses give the diagonal (every sample carries the same, nothing).

    Returns:
        ``(fraction, cumulative)``, float64 tensors of the samples' count, both ending at 1.

    Example:
        >>> import torch
        >>> fraction, cumulative = normalized_loss_cdf(torch.tensor([2.0, 1.0, 1.0, 0.0]))
        >>> fraction.tolist(), cumulative.tolist()
        ([0.25, 0.5, 0.75, 1.0], [0.0, 0.25, 0.5, 1.0])
    """
    values = losses.detach().flatten().double()
    if values.numel() == 0:
        raise ValueError("normalized_loss_cdf needs at least one loss value")
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError("normalized_loss_cdf takes finite, non-negative losses")
    n = values.numel()
    fraction = torch.arange(1, n + 1, dtype=torch.float64) / n
    total = values.sum()
    if total == 0:
        return fraction, fraction.clone()
    return fraction, values.sort().values.cumsum(0) / total


def hardest_share(losses: Tensor, fraction: float) -> float:
    """The share of the total loss carried by the hardest ``fraction`` of the samples.

    Example:
        >>> import torch
        >>> hardest_share(torch.tensor([2.0, 1.0, 1.0, 0.0]), 0.25)
        0.5
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    values = losses.detach().flatten().double()
    total = float(values.sum())
    if total == 0.0:
        return fraction
    k = max(1, round(fraction * values.numel()))
    return float(values.topk(k).values.sum()) / total


class LossCDF(ValidationCounter):
    """Draw the paper's Figure 4 for the current model: where the loss budget goes.

    For γ in ``gammas`` (the paper's 0, 0.5, 1, 2) it computes the focal loss of every
    positive and every negative sample the classification loss sees, sorts each group,
    normalises it to sum to one and plots the cumulative sum against the fraction of
    samples (:func:`normalized_loss_cdf`), positives and negatives side by side. A sample is
    one (anchor, class) entry of the sigmoid loss: positive where the target is 1, negative
    elsewhere; RetinaNet's anchors between the IoU thresholds are left out, as the loss
    leaves them out. The legend gives the share of the loss on the hardest 10 %. At γ=2 the
    negatives' curve hugs zero and rises at the end: the loss goes to a few hard negatives.

    Where the samples come from: on the first ``num_batches`` batches of every
    ``every_n_validations``-th validation, :meth:`collect` runs the torchvision ``RetinaNet`` / ``FCOS``
    inside the module (one built with :func:`~lightning_focal.detection.with_focal_loss`,
    or the app's :class:`~lightning_focal.models.DenseDetector`) through its loss path on the
    batch, with gradients off and every layer in eval mode, and a forward hook on its focal
    loss takes the logits and targets. That is a second forward pass of those batches.
    Any other model can feed :meth:`add` itself. Samples are kept as a uniform random
    subset of at most ``max_samples`` per group (bottom-k of random keys, from a generator
    of its own: the training's random stream is untouched), so memory stays bounded.

    At the end of validation rank 0 writes
    ``<output_dir>/loss_cdf-epoch<E>-step<S>.png`` (default ``output_dir``:
    ``<trainer.log_dir>/loss_cdf``) and gives it to every logger with ``log_image``
    (``WandbLogger``) as ``val/loss_cdf``. Under DDP every rank runs the pass (the loss may
    average its normaliser across ranks) and rank 0 draws its own share of the batches.
    Batches are ``(images, targets)``; override :meth:`unpack_batch` for another layout.
    It counts validations, not epochs, so it draws whatever ``check_val_every_n_epoch`` or
    ``val_check_interval`` the trainer has; the count is kept in the checkpoint.

    Args:
        gammas: the γ values to draw.
        num_batches: validation batches sampled per due epoch.
        max_samples: most samples kept per group (positives, negatives).
        every_n_validations: draw at every n-th validation (1: at each; the sanity check is
            skipped).
        output_dir: where the PNGs go.
        seed: of the subsampling generator.

    Example:
        >>> import torch
        >>> cdf = LossCDF(gammas=(0.0, 2.0))
        >>> logits = torch.tensor([[[3.0, -4.0], [-1.0, 0.5], [-6.0, -2.0]]])
        >>> targets = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]])
        >>> cdf.add(logits, targets)
        >>> cdf.num_samples
        {'positives': 2, 'negatives': 4}
        >>> round(cdf.summary(hardest=0.25)["negatives/gamma=2.0"], 3)
        0.943
    """

    def __init__(
        self,
        gammas: Sequence[float] = GAMMAS,
        num_batches: int = 4,
        max_samples: int = 1_000_000,
        every_n_validations: int = 1,
        output_dir: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(every_n_validations)
        gammas = tuple(float(g) for g in gammas)
        if not gammas or any(not math.isfinite(g) or g < 0 for g in gammas):
            raise ValueError(f"gammas must be one or more finite values >= 0, got {gammas}")
        for name, value in (
            ("num_batches", num_batches),
            ("max_samples", max_samples),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value}")
        self.gammas = gammas
        self.num_batches = int(num_batches)
        self.max_samples = int(max_samples)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.seed = seed
        self.saved: list[Path] = []
        self._directory: Path | None = None
        self._generators: dict[torch.device, torch.Generator] = {}
        self.reset()

    # -- samples --------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the samples collected so far."""
        self._samples = {group: torch.empty(0) for group in ("positives", "negatives")}
        self._keys = {group: torch.empty(0) for group in ("positives", "negatives")}

    @property
    def num_samples(self) -> dict[str, int]:
        """Samples held per group."""
        return {group: int(values.numel()) for group, values in self._samples.items()}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    @torch.no_grad()
    def add(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> None:
        """Take the samples of one call of a sigmoid focal loss.

        Args:
            logits: ``(..., C)`` logits, e.g. ``(N, anchors, C)``.
            target: same shape, 1 for a positive sample (> 0.5 counts as positive).
            weight: optional mask or weight broadcastable to ``logits``, or ``(N, anchors)``;
                samples of weight 0 (ignored anchors) are left out.
        """
        if target.shape != logits.shape:
            raise ValueError(
                f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
            )
        x = logits.detach().float()
        positive = target.detach() > 0.5
        keep = torch.ones_like(positive)
        if weight is not None:
            w = weight.detach()
            if w.dim() == x.dim() - 1:
                w = w.unsqueeze(-1)
            keep = (w > 0).expand(x.shape)
        z = torch.where(positive, x, -x)
        for group, mask in (("positives", positive & keep), ("negatives", ~positive & keep)):
            self._merge(group, z[mask])

    def _merge(self, group: str, values: Tensor) -> None:
        # bottom-k of uniform keys over everything seen: a uniform sample without replacement,
        # the same whatever the batches' sizes; cut on the device before moving to the CPU
        if values.numel() == 0:
            return
        keys = torch.rand(
            values.numel(), generator=self._generator(values.device), device=values.device
        )
        if values.numel() > self.max_samples:
            keys, index = keys.topk(self.max_samples, largest=False)
            values = values[index]
        values = torch.cat([self._samples[group], values.cpu()])
        keys = torch.cat([self._keys[group], keys.cpu()])
        if values.numel() > self.max_samples:
            keys, index = keys.topk(self.max_samples, largest=False)
            values = values[index]
        self._samples[group], self._keys[group] = values, keys

    # -- running a detector ---------------------------------------------------------------

    def unpack_batch(self, batch: Any) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        """Images and targets of a batch, as torchvision's detectors take them.

        The default reads ``(images, targets)``: images a ``(B, 3, H, W)`` tensor or a list of
        ``(3, H, W)`` tensors, targets a list of dicts with ``"boxes"`` and ``"labels"``.
        Override it for another batch layout.
        """
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(
                "LossCDF expects (images, targets) batches; override LossCDF.unpack_batch "
                f"for batches of type {type(batch).__name__}"
            )
        images, targets = batch[0], batch[1]
        images = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
        targets = list(targets)
        if not all(isinstance(t, dict) and "boxes" in t and "labels" in t for t in targets):
            raise TypeError(
                "LossCDF expects targets as dicts with 'boxes' and 'labels'; override "
                "LossCDF.unpack_batch for another layout"
            )
        return images, targets

    @torch.no_grad()
    def collect(self, module: nn.Module, batch: Any) -> None:
        """Run the detector inside ``module`` through its loss on ``batch`` and take the samples.

        Every layer is put in eval mode (no BatchNorm statistics or loss EMA change) and only
        the detector's own ``training`` flag is set, which makes torchvision's ``RetinaNet`` /
        ``FCOS`` match the anchors and compute the loss; all flags are restored afterwards.
        """
        from torchvision.models.detection import FCOS, RetinaNet

        detector = next((m for m in module.modules() if isinstance(m, (RetinaNet, FCOS))), None)
        if detector is None:
            raise TypeError(
                f"LossCDF.collect runs a torchvision RetinaNet or FCOS, and "
                f"{type(module).__name__} holds none; for another model call "
                "LossCDF.add(logits, target, weight) with its classification loss's inputs"
            )
        losses = [
            loss
            for loss in find_focal_losses(detector).values()
            if isinstance(loss, SigmoidFocalLoss)
        ]
        if not losses:
            raise MisconfigurationException(
                f"LossCDF found no sigmoid focal loss in the {type(detector).__name__}; give it "
                "one with lightning_focal.detection.with_focal_loss(model, loss)"
            )
        images, targets = self.unpack_batch(batch)
        modes = {m: m.training for m in detector.modules()}
        handles = [loss.register_forward_hook(self._hook, with_kwargs=True) for loss in losses]
        try:
            detector.eval()
            detector.training = True
            detector(images, targets)
        finally:
            for handle in handles:
                handle.remove()
            for m, mode in modes.items():
                m.training = mode

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
        self.add(args[0], args[1], kwargs.get("weight"))

    # -- results --------------------------------------------------------------------------

    def curves(self) -> dict[str, dict[float, tuple[Tensor, Tensor]]]:
        """``{group: {γ: (fraction, cumulative)}}`` of the samples held (groups with any)."""
        return {
            group: {g: normalized_loss_cdf(focal_loss_of_samples(z, g)) for g in self.gammas}
            for group, z in self._samples.items()
            if z.numel()
        }

    def summary(self, hardest: float = 0.1) -> dict[str, float]:
        """``{"<group>/gamma=<γ>": share of the loss on the hardest ``hardest`` fraction}``."""
        return {
            f"{group}/gamma={g}": hardest_share(focal_loss_of_samples(z, g), hardest)
            for group, z in self._samples.items()
            if z.numel()
            for g in self.gammas
        }

    def draw(self, path: str | Path, title: str | None = None) -> Path:
        """Write the figure of the samples held to ``path`` (PNG) and return the path."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        curves = self.curves()
        if not curves:
            raise ValueError("LossCDF has no samples to draw: add() or collect() some first")
        share = self.summary(0.1)
        counts = self.num_samples
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
        for ax, group in zip(axes, ("positives", "negatives")):
            ax.set_title(f"{group} ({counts[group]:,} samples)")
            ax.set_xlabel(f"fraction of {group}")
            ax.set_ylabel("cumulative normalised loss")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            for gamma, (fraction, cumulative) in curves.get(group, {}).items():
                index = torch.linspace(0, fraction.numel() - 1, min(_PLOT_POINTS, fraction.numel()))
                index = index.round().long()
                ax.plot(
                    torch.cat([torch.zeros(1, dtype=torch.float64), fraction[index]]).numpy(),
                    torch.cat([torch.zeros(1, dtype=torch.float64), cumulative[index]]).numpy(),
                    label=f"γ={gamma:g}  (hardest 10 %: {share[f'{group}/gamma={gamma}']:.0%})",
                )
            ax.legend(loc="upper left", fontsize=8)
        if title:
            fig.suptitle(title)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    # -- hooks ----------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts: resolve it here, where every rank calls it
        self._directory = self.output_dir or (
            Path(trainer.log_dir or trainer.default_root_dir) / "loss_cdf"
        )

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self.reset()

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx == 0 and batch_idx < self.num_batches and self._due(trainer):
            self.collect(pl_module, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            not trainer.is_global_zero
            or not self._due(trainer)
            or not any(self.num_samples.values())
        ):
            return
        directory = self._directory or Path(trainer.default_root_dir) / "loss_cdf"
        path = self.draw(
            directory
            / f"loss_cdf-epoch{trainer.current_epoch:03d}-step{trainer.global_step:06d}.png",
            title=f"normalised loss CDF, epoch {trainer.current_epoch}, step {trainer.global_step}",
        )
        self.saved.append(path)
        for logger in trainer.loggers:
            if callable(getattr(logger, "log_image", None)):  # WandbLogger
                logger.log_image(key="val/loss_cdf", images=[str(path)], step=trainer.global_step)
        self.reset()
