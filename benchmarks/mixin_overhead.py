"""What does FocalLossMixin + callbacks (diagnostics on) add to a training step?

Same timm ResNet, same data, same optimiser; one model uses ``F.cross_entropy``, the other
the mixin's focal loss with per-step diagnostics, ``GammaWarmup`` and ``ClassBalancedAlpha``.
Steps are timed with CPU time (``time.thread_time``) around ``on_train_batch_start`` ->
``on_train_batch_end`` (forward, loss, backward, optimiser step, logging, callbacks),
interleaving the two variants over several rounds; medians and their ratio are reported:

    python benchmarks/mixin_overhead.py --model resnet18 --image-size 64 --batch-size 64 --steps 12 --rounds 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from lightning_focal import FocalLossMixin, SoftmaxFocalLoss
from lightning_focal.callbacks import ClassBalancedAlpha, GammaWarmup
from lightning_focal.schedules import LinearRamp


class StepTimer(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.start = time.thread_time()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.thread_time() - self.start)


class CEModel(pl.LightningModule):
    def __init__(self, model: str, num_classes: int) -> None:
        super().__init__()
        import timm

        self.net = timm.create_model(model, pretrained=False, num_classes=num_classes)
        self.num_classes = num_classes

    def compute_loss(self, logits, y):
        return F.cross_entropy(logits, y)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.compute_loss(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class FocalModel(FocalLossMixin, CEModel):
    def __init__(self, model: str, num_classes: int) -> None:
        super().__init__(model, num_classes)
        self.configure_focal_loss(SoftmaxFocalLoss(gamma=2.0, num_classes=num_classes))

    def compute_loss(self, logits, y):
        return self.focal_loss(logits, y)


def fit(variant: str, args, data) -> list[float]:
    torch.manual_seed(0)
    timer = StepTimer()
    callbacks: list[Callback] = [timer]
    if variant == "focal":
        model = FocalModel(args.model, 10)
        callbacks += [
            GammaWarmup(LinearRamp(start=0.0, end=2.0, steps=100)),
            ClassBalancedAlpha(),
        ]
    else:
        model = CEModel(args.model, 10)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        log_every_n_steps=1,
    )
    trainer.fit(model, DataLoader(data, batch_size=args.batch_size, shuffle=True))
    return timer.times[2:]  # drop warm-up steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.batch_size * (args.steps + 1)
    data = TensorDataset(torch.randn(n, 3, args.image_size, args.image_size), torch.arange(n) % 10)
    times: dict[str, list[float]] = {"ce": [], "focal": []}
    for _ in range(args.rounds):
        for variant in ("ce", "focal"):
            times[variant] += fit(variant, args, data)
    ce, focal = statistics.median(times["ce"]), statistics.median(times["focal"])
    print(
        f"{args.model}, {args.image_size}x{args.image_size}, batch {args.batch_size}, {args.threads} thread(s), "
        f"{len(times['ce'])} steps per variant, torch {torch.__version__}"
    )
    print("| variant | median CPU s / step |\n|---|---|")
    print(
        f"| F.cross_entropy | {ce:.4f} |\n| FocalLossMixin + diagnostics + GammaWarmup + ClassBalancedAlpha | {focal:.4f} |"
    )
    print(f"\noverhead: {100 * (focal / ce - 1):+.2f}%")


if __name__ == "__main__":
    main()
