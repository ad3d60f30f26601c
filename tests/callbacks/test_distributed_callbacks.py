"""GammaWarmup and ClassBalancedAlpha under ddp_spawn with 2 CPU processes (gloo)."""

from __future__ import annotations

import pytest
import torch
from _trainer_utils import fast_trainer
from lightning.pytorch.callbacks import Callback

from lightning_focal.callbacks import ClassBalancedAlpha, GammaWarmup
from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule
from lightning_focal.schedules import LinearRamp

COUNTS = (96, 24, 8)


class RankSpread(Callback):
    """Logs the min and max over ranks of γ and α, so equality across ranks is observable."""

    def on_train_batch_end(self, trainer, pl_module, *args):
        loss = pl_module.focal_loss
        for name, value in [("gamma", loss.gamma.float().mean())] + [
            (f"alpha{c}", a) for c, a in enumerate(loss.alpha.tolist())
        ]:
            value = torch.as_tensor(value, dtype=torch.float32)
            pl_module.log(
                f"spread/{name}_min", value, sync_dist=True, reduce_fx="min", on_step=True
            )
            pl_module.log(
                f"spread/{name}_max", value, sync_dist=True, reduce_fx="max", on_step=True
            )


def run(tmp_path, strategy, devices):
    callbacks = [
        GammaWarmup(LinearRamp(start=0.0, end=2.0, steps=10)),
        # No class_counts() hook: the counts come from one pass, summed across ranks.
        ClassBalancedAlpha(method="inverse"),
        RankSpread(),
    ]
    trainer = fast_trainer(
        tmp_path,
        max_steps=3,
        strategy=strategy,
        devices=devices,
        callbacks=callbacks,
        deterministic=False,
    )
    trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS, expose_counts=False))
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.timeout(300)
def test_ddp_spawn_gives_the_same_gamma_and_alpha_as_one_process(tmp_path):
    single = run(tmp_path / "single", "auto", 1)
    spawned = run(tmp_path / "ddp", "ddp_spawn", 2)
    # Same schedule value at the same optimiser step (3 steps each, whatever the batch split).
    assert spawned["focal/gamma"] == pytest.approx(single["focal/gamma"]) == pytest.approx(0.4)
    w = torch.tensor([1 / 96, 1 / 24, 1 / 8])
    expected = (w * 3 / w.sum()).tolist()
    for c in range(3):
        assert spawned[f"focal/alpha/{c}"] == pytest.approx(single[f"focal/alpha/{c}"], rel=1e-6)
        assert spawned[f"focal/alpha/{c}"] == pytest.approx(expected[c], rel=1e-6)
        assert spawned[f"spread/alpha{c}_min"] == spawned[f"spread/alpha{c}_max"]
    assert spawned["spread/gamma_min"] == spawned["spread/gamma_max"]
