"""The focal callbacks composed from ``_target_`` YAML as lightning-hydra-template does it.

``instantiate_callbacks`` below does what the template's ``src/utils/instantiators.py`` does:
walk the ``callbacks`` DictConfig and ``hydra.utils.instantiate`` every node that has a
``_target_``; a node set to ``null`` (``callbacks.x=null`` on the command line) is skipped.
"""

from __future__ import annotations

import pytest
import torch
from _trainer_utils import fast_trainer
from lightning.pytorch.callbacks import Callback

from lightning_focal.callbacks import ClassBalancedAlpha, FocalBiasInit, GammaWarmup
from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule
from lightning_focal.schedules import ConstantGamma, LinearRamp, SequentialGamma

hydra = pytest.importorskip("hydra")
from omegaconf import DictConfig, OmegaConf  # noqa: E402

CALLBACKS = """
# callbacks/focal.yaml: γ warmup, class-balanced α and the prior bias, each a named node
gamma_warmup:
  _target_: lightning_focal.callbacks.GammaWarmup
  schedule:
    _target_: lightning_focal.schedules.LinearRamp
    start: 0.0
    end: 2.0
    steps: 8
class_balanced_alpha:
  _target_: lightning_focal.callbacks.ClassBalancedAlpha
  method: inverse
focal_bias_init:
  _target_: lightning_focal.callbacks.FocalBiasInit
  prior: 0.01
"""

SEQUENTIAL_SCHEDULE = """
_target_: lightning_focal.schedules.SequentialGamma
_convert_: partial  # Hydra would hand the pieces over as DictConfig inside a ListConfig
schedules:
  - {_target_: lightning_focal.schedules.LinearRamp, start: 0.0, end: 2.0, steps: 4}
  - {_target_: lightning_focal.schedules.ConstantGamma, gamma: 1.0}
milestones: [4]
"""


def instantiate_callbacks(callbacks_cfg: DictConfig) -> list[Callback]:
    """lightning-hydra-template's ``instantiate_callbacks``, without its logging."""
    callbacks: list[Callback] = []
    if not callbacks_cfg:
        return callbacks
    if not isinstance(callbacks_cfg, DictConfig):
        raise TypeError("Callbacks config must be a DictConfig!")
    for _, cb_conf in callbacks_cfg.items():
        if isinstance(cb_conf, DictConfig) and "_target_" in cb_conf:
            callbacks.append(hydra.utils.instantiate(cb_conf))
    return callbacks


def test_callbacks_from_target_nodes_fit(tmp_path):
    callbacks = instantiate_callbacks(OmegaConf.create(CALLBACKS))
    assert [type(c) for c in callbacks] == [GammaWarmup, ClassBalancedAlpha, FocalBiasInit]
    assert callbacks[0].schedule == LinearRamp(start=0.0, end=2.0, steps=8)

    model = BoringFocalClassifier(sigmoid=True)
    trainer = fast_trainer(tmp_path, max_steps=6, callbacks=callbacks)
    trainer.fit(model, ImbalancedBlobsDataModule())
    assert trainer.global_step == 6
    assert float(model.focal_loss.gamma) == pytest.approx(1.25)  # γ at step 5 of 8
    weights = 1 / torch.tensor([96.0, 24.0, 8.0])
    weights = weights * 3 / weights.sum()
    assert model.focal_loss.alpha.tolist() == pytest.approx((weights / (1 + weights)).tolist())
    assert (model.net[2].bias < -4.0).all()  # near -log(99), a few steps after FocalBiasInit


def test_overrides_switch_off_a_node_and_swap_the_schedule(tmp_path):
    config = OmegaConf.create(CALLBACKS)
    # `callbacks.focal_bias_init=null` on the command line
    config = OmegaConf.merge(config, OmegaConf.from_dotlist(["focal_bias_init=null"]))
    # a schedule group swapped for another: the node is replaced, not merged key by key
    config.gamma_warmup.schedule = OmegaConf.create(SEQUENTIAL_SCHEDULE)
    callbacks = instantiate_callbacks(config)
    assert [type(c) for c in callbacks] == [GammaWarmup, ClassBalancedAlpha]
    expected = SequentialGamma([LinearRamp(start=0.0, end=2.0, steps=4), ConstantGamma(1.0)], [4])
    assert callbacks[0].schedule == expected

    model = BoringFocalClassifier(sigmoid=True)
    trainer = fast_trainer(tmp_path, max_steps=3, callbacks=callbacks)
    trainer.fit(model, ImbalancedBlobsDataModule())
    assert float(model.focal_loss.gamma) == pytest.approx(1.0)  # step 2 of the 4-step ramp
    assert (model.net[2].bias.abs() < 1.0).all()  # no prior bias: FocalBiasInit is off
